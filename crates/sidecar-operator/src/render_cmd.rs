//! `sidecar-operator render`: the engine on files, without a cluster.

use std::io::Read;

use k8s_openapi::api::apps::v1::Deployment;
use sidecar_api::SidecarPolicy;
use sidecar_core::{PolicySet, Refusal};
use similar::TextDiff;

use crate::cli::RenderArgs;
use crate::input::{self, InputError, Kind, Parsed, Sources};

/// What a render printed, or why it was refused.
#[derive(Debug)]
pub enum Outcome {
    /// Rendered: YAML (or a diff) for standard output, and messages for standard error.
    Rendered {
        output: String,
        warnings: Vec<String>,
        notes: Vec<String>,
    },
    /// At least one Deployment was refused; nothing is printed on standard output.
    Refused {
        refusals: Vec<Refusal>,
        warnings: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot write the rendered Deployment {name:?} as YAML: {source}")]
    Output {
        name: String,
        #[source]
        source: serde_norway::Error,
    },
}

pub fn run(args: &RenderArgs, stdin: impl Read) -> Result<Outcome, RenderError> {
    let mut sources = Sources::new(stdin);
    let mut policies: Vec<Parsed<SidecarPolicy>> = Vec::new();
    for path in &args.policies {
        let (name, text) = sources.read(path)?;
        policies.extend(input::parse_all(&name, &text, Kind::SidecarPolicy)?);
    }
    let (deployment_source, text) = sources.read(&args.deployment)?;
    let mut deployments: Vec<Parsed<Deployment>> =
        input::parse_all(&deployment_source, &text, Kind::Deployment)?;
    input::check_unique_policies(&policies)?;
    let had_namespace = input::unify_namespaces(&mut policies, &mut deployments)?;

    let policies: Vec<SidecarPolicy> = policies.into_iter().map(|p| p.object).collect();
    let set = PolicySet::new(&policies, &args.guardrails.to_guardrails());
    let mut warnings = Vec::new();
    let mut refusals = Vec::new();
    let mut rendered = Vec::new();
    for (parsed, had_namespace) in deployments.iter().zip(had_namespace) {
        match set.render(&parsed.object) {
            Ok(result) => {
                push_unique(&mut warnings, result.warnings.iter().map(ToString::to_string));
                let mut output = result.deployment;
                let mut input = parsed.object.clone();
                if !had_namespace {
                    // The namespace was filled in for the engine; print what the user wrote.
                    output.metadata.namespace = None;
                    input.metadata.namespace = None;
                }
                rendered.push((input, output));
            }
            Err(refusal) => {
                push_unique(&mut warnings, refusal.warnings.iter().map(ToString::to_string));
                refusals.push(refusal);
            }
        }
    }
    if !refusals.is_empty() {
        return Ok(Outcome::Refused { refusals, warnings });
    }

    let mut output = String::new();
    let mut notes = Vec::new();
    for (i, (input, rendered)) in rendered.iter().enumerate() {
        let name = rendered.metadata.name.clone().unwrap_or_default();
        let yaml = to_yaml(rendered, &name)?;
        if args.diff {
            let before = to_yaml(input, &name)?;
            if before == yaml {
                notes.push(format!("Deployment {name:?}: no change"));
                continue;
            }
            let file = &deployment_source;
            let diff = TextDiff::from_lines(&before, &yaml);
            output.push_str(
                &diff
                    .unified_diff()
                    .context_radius(3)
                    .header(
                        &format!("{file} (Deployment {name}, as written)"),
                        &format!("{file} (Deployment {name}, rendered)"),
                    )
                    .to_string(),
            );
        } else {
            if i > 0 {
                output.push_str("---\n");
            }
            output.push_str(&yaml);
        }
    }
    Ok(Outcome::Rendered {
        output,
        warnings,
        notes,
    })
}

fn to_yaml(deployment: &Deployment, name: &str) -> Result<String, RenderError> {
    serde_norway::to_string(deployment).map_err(|source| RenderError::Output {
        name: name.to_owned(),
        source,
    })
}

fn push_unique(list: &mut Vec<String>, items: impl Iterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}
