//! The `render_input` target: the `render` command's input (several YAML documents, `v1 List`s,
//! the output of `kustomize build` or `helm template`), read from standard input.

use std::path::{Path, PathBuf};

use sidecar_operator::cli::{ExclusionArgs, GuardrailArgs, RenderArgs};
use sidecar_operator::input::{self, Document, SourceName};
use sidecar_operator::render_cmd::{self, Outcome};

use crate::{Violation, same};

/// `data` as the `--deployment -` input of `render`: reading it never panics (every problem is
/// an error that names the document), each object read is written back as YAML that reads as
/// the same object, and the whole command never panics; what it prints when it renders is
/// input it reads again.
pub fn check(data: &[u8]) -> Result<(), Violation> {
    // Invalid UTF-8 is an input error of the command too (checked below), but not YAML to split.
    if let Ok(text) = std::str::from_utf8(data) {
        let source = SourceName::new(Path::new("fuzz.yaml"));
        match input::split(&source, text) {
            Ok(split) => {
                for document in &split.documents {
                    reads_back(&source, &document.object)?;
                }
            }
            Err(e) => {
                // The message is what the user sees; building it must not panic either.
                let _ = e.to_string();
            }
        }
    }

    let args = RenderArgs {
        policies: Vec::new(),
        deployment: PathBuf::from("-"),
        namespace: None,
        diff: false,
        exclusions: ExclusionArgs::default(),
        guardrails: GuardrailArgs::default(),
    };
    match render_cmd::run(&args, data) {
        Ok(Outcome::Rendered { output, .. }) => {
            let source = SourceName::new(Path::new("rendered.yaml"));
            input::split(&source, &output)
                .map_err(|e| format!("render printed what it cannot read: {e}\n{output}"))?;
        }
        Ok(Outcome::Refused { refusals, .. }) => {
            let _ = refusals.iter().map(ToString::to_string).count();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    Ok(())
}

/// `document` written as YAML (as render writes Deployments) reads as the same document.
fn reads_back(source: &SourceName, document: &Document) -> Result<(), Violation> {
    let text = match document {
        Document::SidecarPolicy(p) => yaml(p.as_ref()),
        Document::ClusterSidecarPolicy(p) => yaml(p.as_ref()),
        Document::Deployment(d) => yaml(d.as_ref()),
        Document::Namespace(n) => yaml(n.as_ref()),
        Document::HorizontalPodAutoscaler(h) => yaml(h.as_ref()),
        Document::VerticalPodAutoscaler(v) => yaml(v.as_ref()),
    }?;
    let again = input::split(source, &text).map_err(|e| format!("{e}, reading back:\n{text}"))?;
    let [read] = &again.documents[..] else {
        return Err(format!(
            "{} documents read back from:\n{text}",
            again.documents.len()
        ));
    };
    // The typed objects have no common PartialEq; their JSON forms compare the same content.
    let json = |d: &Document| {
        match d {
            Document::SidecarPolicy(p) => serde_json::to_value(p.as_ref()),
            Document::ClusterSidecarPolicy(p) => serde_json::to_value(p.as_ref()),
            Document::Deployment(d) => serde_json::to_value(d.as_ref()),
            Document::Namespace(n) => serde_json::to_value(n.as_ref()),
            Document::HorizontalPodAutoscaler(h) => serde_json::to_value(h.as_ref()),
            Document::VerticalPodAutoscaler(v) => Ok(v.as_ref().clone()),
        }
        .map_err(|e| e.to_string())
    };
    same(
        "a document read back differs",
        &json(&read.object)?,
        &json(document)?,
    )
}

fn yaml<T: serde::Serialize>(object: &T) -> Result<String, Violation> {
    serde_norway::to_string(object).map_err(|e| format!("cannot write as YAML: {e}"))
}
