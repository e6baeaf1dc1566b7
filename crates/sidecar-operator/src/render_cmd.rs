//! `sidecar-operator render`: the engine on files, without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::autoscaling::{self, Autoscaler, AutoscalerIndex, Hpa, Vpa};
use sidecar_core::cluster::NamespaceLabels;
use sidecar_core::{PolicySet, Refusal};
use similar::TextDiff;

use crate::cli::RenderArgs;
use crate::input::{self, Document, Ignored, InputError, Kind, Parsed, SourceName, Sources};

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
        notes: Vec<String>,
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

/// The namespace of documents that name none, without `--namespace`.
const DEFAULT_NAMESPACE: &str = "default";

/// The objects of one render: every policy (from the `--policy` files and the `--deployment`
/// input) and the Deployments to render (from the `--deployment` input), in input order.
#[derive(Debug, Default)]
struct Inputs {
    policies: Vec<Parsed<SidecarPolicy>>,
    cluster_policies: Vec<Parsed<ClusterSidecarPolicy>>,
    deployments: Vec<Parsed<Deployment>>,
    /// Namespace documents, for the labels ClusterSidecarPolicies select.
    namespaces: Vec<Namespace>,
    /// HPAs and VPAs, for the warnings of the sidecars they skew.
    hpas: Vec<HorizontalPodAutoscaler>,
    vpas: Vec<Value>,
    notes: Vec<String>,
}

impl Inputs {
    /// Keeps a document that is not a Deployment to render; returns a Deployment.
    fn keep(&mut self, document: Parsed<Document>) -> Option<Parsed<Deployment>> {
        let at = document.at;
        match document.object {
            Document::SidecarPolicy(policy) => self.policies.push(Parsed { at, object: *policy }),
            Document::ClusterSidecarPolicy(policy) => {
                self.cluster_policies.push(Parsed { at, object: *policy })
            }
            Document::Namespace(namespace) => self.namespaces.push(*namespace),
            Document::HorizontalPodAutoscaler(hpa) => self.hpas.push(*hpa),
            Document::VerticalPodAutoscaler(vpa) => self.vpas.push(*vpa),
            Document::Deployment(deployment) => {
                return Some(Parsed {
                    at,
                    object: *deployment,
                });
            }
        }
        None
    }

    fn policy_count(&self) -> usize {
        self.policies.len() + self.cluster_policies.len()
    }
}

impl Inputs {
    fn read(args: &RenderArgs, stdin: impl Read) -> Result<Inputs, InputError> {
        let mut sources = Sources::new(stdin);
        let mut inputs = Inputs::default();
        for path in &args.policies {
            let (name, text) = sources.read(path)?;
            let split = input::split(&name, &text)?;
            // A file of Namespaces only (their labels for ClusterSidecarPolicies) is fine too.
            let before = inputs.policy_count() + inputs.namespaces.len();
            let mut not_rendered = Vec::new();
            for document in split.documents {
                if let Some(deployment) = inputs.keep(document) {
                    not_rendered.push(deployment.at);
                }
            }
            if inputs.policy_count() + inputs.namespaces.len() == before {
                return Err(InputError::NoPolicyIn { source_name: name });
            }
            inputs.note_ignored(&name, &split.ignored);
            if let Some(first) = not_rendered.first() {
                inputs.notes.push(format!(
                    "{name}: {} not rendered ({first}{}): only the Deployments of --deployment are",
                    count(not_rendered.len(), "Deployment"),
                    if not_rendered.len() > 1 { " and others" } else { "" },
                ));
            }
        }

        let (name, text) = sources.read(&args.deployment)?;
        let split = input::split(&name, &text)?;
        for document in split.documents {
            if let Some(deployment) = inputs.keep(document) {
                inputs.deployments.push(deployment);
            }
        }
        if inputs.deployments.is_empty() {
            return Err(InputError::NothingFound {
                source_name: name,
                expected: Kind::Deployment,
            });
        }
        if inputs.policy_count() == 0 {
            return Err(InputError::NoPolicy);
        }
        inputs.note_ignored(&name, &split.ignored);
        Ok(inputs)
    }

    /// One note per source for the documents render does not read, naming how many of each kind.
    fn note_ignored(&mut self, source: &SourceName, ignored: &[Ignored]) {
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for document in ignored {
            match kinds.iter_mut().find(|(kind, _)| *kind == document.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((&document.kind, 1)),
            }
        }
        if kinds.is_empty() {
            return;
        }
        let kinds: Vec<String> = kinds.into_iter().map(|(kind, n)| format!("{n} {kind}")).collect();
        self.notes.push(format!(
            "{source}: ignored {} of kinds render does not read: {}",
            count(ignored.len(), "document"),
            kinds.join(", ")
        ));
    }
}

/// `1 document`, `3 documents`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub fn run(args: &RenderArgs, stdin: impl Read) -> Result<Outcome, RenderError> {
    let Inputs {
        mut policies,
        cluster_policies,
        mut deployments,
        namespaces,
        hpas,
        vpas,
        mut notes,
    } = Inputs::read(args, stdin)?;

    // Documents without a namespace are in --namespace (or `default`), as with kubectl; the
    // output leaves out again what the input left out.
    let namespace = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let policy_had_namespace: Vec<bool> = policies
        .iter_mut()
        .map(|p| input::place(&mut p.object.metadata, namespace))
        .collect();
    let had_namespace: Vec<bool> = deployments
        .iter_mut()
        .map(|d| input::place(&mut d.object.metadata, namespace))
        .collect();
    let autoscalers = index_autoscalers(&hpas, &vpas, namespace);
    input::check_unique_policies(&policies)?;
    input::check_unique_cluster_policies(&cluster_policies)?;

    // A SidecarPolicy affects only Deployments of its own namespace: one PolicySet each.
    let rendered_namespaces: BTreeSet<&str> = deployments.iter().map(|d| namespace_of(&d.object)).collect();
    for (policy, had_namespace) in policies.iter().zip(policy_had_namespace) {
        let policy_namespace = policy.object.metadata.namespace.as_deref().unwrap_or_default();
        if !rendered_namespaces.contains(policy_namespace) {
            notes.push(format!(
                "SidecarPolicy {:?} ({}) is in namespace {policy_namespace:?}, where no Deployment is given{}",
                policy.object.metadata.name.as_deref().unwrap_or_default(),
                policy.at,
                if had_namespace {
                    ""
                } else {
                    "; --namespace sets the namespace of documents that name none"
                }
            ));
        }
    }
    let mut by_namespace: BTreeMap<String, Vec<SidecarPolicy>> = BTreeMap::new();
    for policy in policies {
        let policy_namespace = policy.object.metadata.namespace.clone().unwrap_or_default();
        by_namespace
            .entry(policy_namespace)
            .or_default()
            .push(policy.object);
    }
    let guardrails = args.guardrails.to_guardrails();
    // ClusterSidecarPolicies select namespaces by their labels: from a Namespace document, or
    // only the name label every namespace carries.
    let cluster_policies: Vec<ClusterSidecarPolicy> =
        cluster_policies.into_iter().map(|p| p.object).collect();
    let labels_of = |namespace: &str| {
        namespaces
            .iter()
            .find(|ns| ns.metadata.name.as_deref() == Some(namespace))
            .map_or_else(
                || NamespaceLabels::named(namespace),
                |ns| NamespaceLabels::of(&ns.metadata),
            )
    };
    if !cluster_policies.is_empty() {
        for namespace in &rendered_namespaces {
            if !namespaces
                .iter()
                .any(|ns| ns.metadata.name.as_deref() == Some(namespace))
            {
                notes.push(format!(
                    "no Namespace document for namespace {namespace:?}: ClusterSidecarPolicies see only its name label"
                ));
            }
        }
    }
    let exclusions = args.exclusions.to_exclusions();
    let sets: BTreeMap<&str, PolicySet> = rendered_namespaces
        .iter()
        .map(|&ns| {
            let own = by_namespace.get(ns).map(Vec::as_slice).unwrap_or_default();
            let set =
                PolicySet::for_namespace(&labels_of(ns), own, &cluster_policies, &exclusions, &guardrails);
            (ns, set)
        })
        .collect();
    let no_policies = PolicySet::new(&[], &guardrails);
    // With Deployments of several namespaces, messages name the namespace too.
    let several = rendered_namespaces.len() > 1;
    let label = |deployment: &Deployment| {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        if several {
            format!("{}/{name}", namespace_of(deployment))
        } else {
            name
        }
    };

    let mut warnings = Vec::new();
    let mut refusals = Vec::new();
    let mut rendered = Vec::new();
    for (parsed, had_namespace) in deployments.iter().zip(had_namespace) {
        let set = sets.get(namespace_of(&parsed.object)).unwrap_or(&no_policies);
        let scaling = autoscalers.of(namespace_of(&parsed.object), &name_of(&parsed.object));
        match set.render_with_autoscalers(&parsed.object, &scaling) {
            Ok(result) => {
                push_unique(&mut warnings, result.warnings.iter().map(ToString::to_string));
                let mut output = result.deployment;
                let mut input = parsed.object.clone();
                if !had_namespace {
                    // The namespace was filled in for the engine; print what the user wrote.
                    output.metadata.namespace = None;
                    input.metadata.namespace = None;
                }
                rendered.push((&parsed.at.source, label(&parsed.object), input, output));
            }
            Err(mut refusal) => {
                push_unique(&mut warnings, refusal.warnings.iter().map(ToString::to_string));
                refusal.deployment = label(&parsed.object);
                refusals.push(refusal);
            }
        }
    }
    if !refusals.is_empty() {
        return Ok(Outcome::Refused {
            refusals,
            warnings,
            notes,
        });
    }

    let mut output = String::new();
    for (i, (file, name, input, rendered)) in rendered.iter().enumerate() {
        let yaml = to_yaml(rendered, name)?;
        if args.diff {
            let before = to_yaml(input, name)?;
            if before == yaml {
                notes.push(format!("Deployment {name:?}: no change"));
                continue;
            }
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

/// The autoscalers of the input, those without a namespace in `namespace`.
fn index_autoscalers(hpas: &[HorizontalPodAutoscaler], vpas: &[Value], namespace: &str) -> AutoscalerIndex {
    let mut index = AutoscalerIndex::default();
    for hpa in hpas {
        let (ns, name) = (hpa.metadata.namespace.as_deref(), hpa.metadata.name.as_deref());
        let ns = ns.filter(|ns| !ns.is_empty()).unwrap_or(namespace);
        let facts = Hpa::of(hpa).map(Autoscaler::Hpa);
        index.apply(autoscaling::Kind::Hpa, ns, name.unwrap_or_default(), facts);
    }
    for vpa in vpas {
        let text = |pointer: &str| vpa.pointer(pointer).and_then(Value::as_str);
        let ns = text("/metadata/namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or(namespace);
        let facts = Vpa::of(vpa).map(Autoscaler::Vpa);
        index.apply(
            autoscaling::Kind::Vpa,
            ns,
            text("/metadata/name").unwrap_or_default(),
            facts,
        );
    }
    index
}

fn name_of(deployment: &Deployment) -> String {
    deployment.metadata.name.clone().unwrap_or_default()
}

fn namespace_of(deployment: &Deployment) -> &str {
    deployment.metadata.namespace.as_deref().unwrap_or_default()
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
