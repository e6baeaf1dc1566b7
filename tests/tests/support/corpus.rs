//! The bad-policy corpus (`tests/corpus/`): one YAML file per case, each naming the layer that
//! must refuse it and the message it must be refused with. Read by the offline test
//! (`corpus.rs`) and the end-to-end one (`e2e_corpus.rs`); the format is described in
//! `tests/corpus/README.md`.

#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Which part of the system refuses a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// The CRD's OpenAPI schema (types, required fields, enums, bounds, patterns, list keys),
    /// the API server's strict decoding (unknown fields, duplicate keys) and its object-name rules.
    Schema,
    /// The CRD's CEL rules (`x-kubernetes-validations`).
    Cel,
    /// Only the engine: the policy is admitted, and every Deployment it selects is refused.
    Engine,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Schema, Layer::Cel, Layer::Engine];

    /// Its name in a case's header and its directory under `tests/corpus/`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Schema => "schema",
            Layer::Cel => "cel",
            Layer::Engine => "engine",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One case: a bad policy, what else it needs, and the message it must be refused with.
#[derive(Clone, Debug)]
pub struct Case {
    /// Relative to the repository, for messages: `tests/corpus/cel/no-containers.yaml`.
    pub path: String,
    pub layer: Layer,
    /// The message, or a distinctive part of it, that the refusal must contain.
    pub expect: String,
    /// The first document's text as written (what is sent to the API server, byte for byte, so
    /// that duplicate keys and unicode reach it unchanged).
    pub policy_text: String,
    /// Every document, parsed; `Err` when the text does not parse as YAML without duplicate
    /// keys (a schema case about exactly that).
    pub documents: Result<Vec<Value>, String>,
}

impl Case {
    /// The first document: the bad policy.
    pub fn policy(&self) -> Option<&Value> {
        self.documents.as_ref().ok()?.first()
    }

    /// The documents after the first: the Deployments, namespaces and other policies it needs.
    pub fn others(&self) -> &[Value] {
        match &self.documents {
            Ok(documents) if !documents.is_empty() => &documents[1..],
            _ => &[],
        }
    }

    /// The policy's kind, read from the text (which may not parse).
    pub fn kind(&self) -> &str {
        self.policy_text
            .lines()
            .find_map(|line| line.strip_prefix("kind:"))
            .map_or("", str::trim)
    }

    /// The policy's name, read from the text.
    pub fn name(&self) -> String {
        self.policy_text
            .lines()
            .skip_while(|line| !line.starts_with("metadata:"))
            .find_map(|line| line.trim().strip_prefix("name:"))
            .map(|name| name.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    }
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every case, sorted by path; fails the test on a file that is not a well-formed case.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for layer in Layer::ALL {
        let dir = corpus_dir().join(layer.name());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let path = format!(
                "tests/corpus/{}/{}",
                layer.name(),
                file.file_name().unwrap().to_string_lossy()
            );
            assert!(
                path.ends_with(".yaml"),
                "{path}: only .yaml files belong in the corpus"
            );
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
            cases.push(parse(&path, layer, &text));
        }
    }
    cases
}

fn parse(path: &str, layer: Layer, text: &str) -> Case {
    let header = |key: &str| {
        let prefix = format!("# {key}: ");
        text.lines()
            .take_while(|line| line.starts_with('#'))
            .find_map(|line| line.strip_prefix(&prefix))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{path}: the header has no `# {key}:` line"))
    };
    assert_eq!(
        header("layer"),
        layer.name(),
        "{path}: the header's layer must match the directory"
    );
    let expect = header("expect");
    assert!(
        expect.len() >= 12 && expect != "TODO",
        "{path}: `# expect:` must be a distinctive part of the message, not {expect:?}"
    );
    header("why");
    let policy_text = text.split("\n---\n").next().unwrap_or_default().to_owned();
    Case {
        path: path.to_owned(),
        layer,
        expect,
        policy_text,
        documents: documents(text),
    }
}

/// The YAML documents of `text`, refusing a key given twice in one mapping as the API server's
/// YAML decoder does (`serde_json::Value` alone would keep the last one silently).
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let yaml = serde_norway::Value::deserialize(document).map_err(|e| e.to_string())?;
        if yaml.is_null() {
            continue;
        }
        documents.push(serde_json::to_value(yaml).map_err(|e| e.to_string())?);
    }
    Ok(documents)
}
