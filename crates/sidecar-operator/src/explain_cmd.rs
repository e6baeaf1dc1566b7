//! `sidecar-operator explain deployment NAME`: why a Deployment has the sidecars it has. Which
//! policies select it and by which labels, what each injected and at which revision, in which
//! order, whether it is up to date, and what refuses or warns. Read-only; [`explain`] is a pure
//! function of the cluster's state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use sidecar_api::{INJECT_ANNOTATION, NAMESPACE_INJECT_LABEL, SidecarPolicy};
use sidecar_core::cluster::{self, NamespaceLabels};
use sidecar_core::{Injected, InjectionRecord, PolicySet, is_up_to_date, opted_out, selector};

use crate::cluster_state::ClusterState;
use crate::plan_cmd::Options;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("Deployment {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
}

/// The explanation of Deployment `namespace/name` in `state`, as text.
pub fn explain(
    state: &ClusterState,
    namespace: &str,
    name: &str,
    options: &Options,
) -> Result<String, ExplainError> {
    let deployment = state
        .deployments
        .iter()
        .find(|d| {
            d.metadata.namespace.as_deref() == Some(namespace) && d.metadata.name.as_deref() == Some(name)
        })
        .ok_or_else(|| ExplainError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    let labels = deployment.metadata.labels.clone().unwrap_or_default();
    let ns = state.namespace(namespace);
    let set = PolicySet::for_namespace(
        &ns,
        &state.policies,
        state.cluster_policies(),
        &options.exclusions,
        &options.guardrails,
    );
    let record = InjectionRecord::read(deployment);
    let carried = record.as_ref().ok().cloned().flatten().unwrap_or_default();

    let mut out = String::new();
    let _ = writeln!(out, "Deployment {namespace}/{name}");
    let _ = writeln!(out, "  labels: {}", label_list(&labels));
    let _ = writeln!(out, "Namespace {namespace}");
    let _ = writeln!(out, "  labels: {}", label_list(&ns.labels));
    out.push('\n');

    if let Err(e) = &record {
        let _ = writeln!(out, "Its injection record cannot be read: {e}\n");
    }

    let selected = set.matching(deployment);
    if opted_out(deployment) {
        let _ = writeln!(
            out,
            "It opts out (annotation {INJECT_ANNOTATION}: \"false\"): no policy selects it.\n"
        );
    } else if selected.is_empty() {
        out.push_str("No policy selects it.\n\n");
    } else {
        let _ = writeln!(
            out,
            "Selected by {} polic{}, in injection order (spec.order, then ClusterSidecarPolicies before SidecarPolicies, then name):",
            selected.len(),
            if selected.len() == 1 { "y" } else { "ies" }
        );
        for (i, policy) in selected.iter().enumerate() {
            let key = policy.metadata.name.as_deref().unwrap_or_default();
            let _ = writeln!(
                out,
                "{}. {}: order {}, placement {:?}",
                i + 1,
                cluster::describe(key),
                policy.spec.order,
                policy.spec.placement
            );
            if let Some(original) = cluster::cluster_name(key).and_then(|n| {
                state
                    .cluster_policies()
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(n))
            }) {
                let _ = writeln!(
                    out,
                    "   namespaceSelector: {}",
                    why_selected(&original.spec.namespace_selector, &ns.labels)
                );
            }
            let _ = writeln!(
                out,
                "   selector: {}",
                why_selected(&policy.spec.selector, &labels)
            );
            let current = set.revision(key).unwrap_or_default();
            let entry = carried.entry(key);
            let state = match entry.map(|e| e.revision.as_str()) {
                None => "not carried yet: pending".to_owned(),
                Some(r) if r == current => format!("carried {r}: up to date"),
                Some("") => "carried, of a release that did not record revisions: pending".to_owned(),
                Some(r) => format!("carried {r}: pending"),
            };
            let _ = writeln!(out, "   revision: {current} ({state})");
            let injected = entry.map(|e| describe_injected(&e.injected));
            let _ = writeln!(
                out,
                "   injected: {}",
                injected.unwrap_or_else(|| "nothing yet".to_owned())
            );
        }
        out.push('\n');
    }

    let not_selected = not_selected(state, deployment, &ns, &labels, &selected, options);
    if !not_selected.is_empty() && !opted_out(deployment) {
        out.push_str("Not selected:\n");
        for line in not_selected {
            let _ = writeln!(out, "  {line}");
        }
        out.push('\n');
    }

    let gone: Vec<_> = carried
        .policies
        .iter()
        .filter(|e| {
            set.matching(deployment)
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&e.name))
        })
        .collect();
    if !gone.is_empty() {
        out.push_str("Carried but no longer selecting it (the operator removes what they added):\n");
        for entry in gone {
            let revision = if entry.revision.is_empty() {
                String::new()
            } else {
                format!(" at revision {}", entry.revision)
            };
            let _ = writeln!(
                out,
                "  {}{revision}: {}",
                cluster::describe(&entry.name),
                describe_injected(&entry.injected)
            );
        }
        out.push('\n');
    }

    let blocking = state.unreadable.iter().find(|u| match &u.namespace {
        Some(n) => n == namespace,
        None => !options.exclusions.contains(namespace),
    });
    if let Some(unreadable) = blocking {
        let _ = writeln!(
            out,
            "Blocked: {} cannot be read ({}); the operator leaves the Deployment as it is.",
            cluster::describe(&unreadable.key),
            unreadable.error
        );
        return Ok(out);
    }
    let autoscalers = state
        .autoscalers
        .of(namespace, deployment.metadata.name.as_deref().unwrap_or_default());
    match set.render_with_autoscalers(deployment, &autoscalers) {
        Ok(rendered) => {
            if is_up_to_date(deployment, &rendered) {
                out.push_str("Live Deployment: up to date with the current policies.\n");
            } else {
                out.push_str(
                    "Live Deployment: pending; it is not what the current policies render (the operator has not applied them yet, or a staged rollout holds it back).\n",
                );
            }
            if !rendered.warnings.is_empty() {
                out.push_str("Warnings:\n");
                for warning in &rendered.warnings {
                    let _ = writeln!(out, "  {warning}");
                }
            }
        }
        Err(refusal) => {
            out.push_str("Refused by the current policies; the operator leaves the Deployment as it is:\n");
            for problem in &refusal.problems {
                let _ = writeln!(out, "  {problem}");
            }
            if !refusal.warnings.is_empty() {
                out.push_str("Warnings:\n");
                for warning in &refusal.warnings {
                    let _ = writeln!(out, "  {warning}");
                }
            }
        }
    }
    Ok(out)
}

/// One line per policy of the namespace (and ClusterSidecarPolicy) that does not select the
/// Deployment, saying which term fails.
fn not_selected(
    state: &ClusterState,
    deployment: &Deployment,
    ns: &NamespaceLabels,
    labels: &BTreeMap<String, String>,
    selected: &[&SidecarPolicy],
    options: &Options,
) -> Vec<String> {
    let is_selected = |key: &str| selected.iter().any(|p| p.metadata.name.as_deref() == Some(key));
    let namespace = deployment.metadata.namespace.as_deref().unwrap_or_default();
    let mut lines = Vec::new();
    for policy in state.cluster_policies() {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let key = cluster::key(name);
        if is_selected(&key) {
            continue;
        }
        let why = if options.exclusions.contains(namespace) {
            format!("namespace {namespace} is excluded (--exclude-namespace)")
        } else if ns.opted_out() {
            format!("namespace {namespace} opts out (label {NAMESPACE_INJECT_LABEL}=false)")
        } else if selector::matches(&policy.spec.namespace_selector, &ns.labels) != Ok(true) {
            format!(
                "namespaceSelector {}",
                why_not(&policy.spec.namespace_selector, &ns.labels)
            )
        } else {
            format!("selector {}", why_not(&policy.spec.policy.selector, labels))
        };
        lines.push(format!("{}: {why}", cluster::describe(&key)));
    }
    for policy in &state.policies {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        if policy.metadata.namespace.as_deref() != Some(namespace) || is_selected(name) {
            continue;
        }
        lines.push(format!(
            "{}: selector {}",
            cluster::describe(name),
            why_not(&policy.spec.selector, labels)
        ));
    }
    lines
}

/// A selector's terms that hold, each with the label that satisfies it.
fn why_selected(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> String {
    let terms = terms(selector);
    if terms.is_empty() {
        return "{} (selects everything)".to_owned();
    }
    terms
        .iter()
        .map(|t| format!("{} [{}]", t.text, evidence(&t.key, labels)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The terms of a selector that do not hold, with what the labels say; or why it is invalid.
fn why_not(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> String {
    if let Err(e) = selector::validate(selector) {
        return format!("is invalid: {e}");
    }
    let failing: Vec<String> = terms(selector)
        .iter()
        .filter(|t| selector::matches(&t.alone, labels) != Ok(true))
        .map(|t| format!("{} [{}]", t.text, evidence(&t.key, labels)))
        .collect();
    format!("needs {}", failing.join("; "))
}

struct Term {
    key: String,
    text: String,
    /// A selector of this term alone.
    alone: LabelSelector,
}

fn terms(selector: &LabelSelector) -> Vec<Term> {
    let mut terms = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        terms.push(Term {
            key: key.clone(),
            text: format!("{key}={value}"),
            alone: LabelSelector {
                match_labels: Some(BTreeMap::from([(key.clone(), value.clone())])),
                match_expressions: None,
            },
        });
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.clone().unwrap_or_default();
        let text = if values.is_empty() {
            format!("{} {}", requirement.key, requirement.operator)
        } else {
            format!(
                "{} {} ({})",
                requirement.key,
                requirement.operator,
                values.join(", ")
            )
        };
        terms.push(Term {
            key: requirement.key.clone(),
            text,
            alone: LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement::clone(requirement)]),
            },
        });
    }
    terms
}

fn evidence(key: &str, labels: &BTreeMap<String, String>) -> String {
    match labels.get(key) {
        Some(value) => format!("{key}={value}"),
        None => format!("{key} absent"),
    }
}

fn label_list(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `init containers proxy; volumes certs; mounts web: /certs`, or `nothing`.
fn describe_injected(injected: &Injected) -> String {
    let list = |items: &mut dyn Iterator<Item = &String>| items.cloned().collect::<Vec<_>>().join(", ");
    let per_container = |map: &BTreeMap<String, std::collections::BTreeSet<String>>| {
        map.iter()
            .map(|(c, items)| format!("{c}: {}", list(&mut items.iter())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !injected.init_containers.is_empty() {
        parts.push(format!(
            "init containers {}",
            list(&mut injected.init_containers.iter())
        ));
    }
    if !injected.volumes.is_empty() {
        parts.push(format!("volumes {}", list(&mut injected.volumes.iter())));
    }
    if !injected.mounts.is_empty() {
        parts.push(format!("mounts {}", per_container(&injected.mounts)));
    }
    if !injected.env.is_empty() {
        parts.push(format!("env {}", per_container(&injected.env)));
    }
    if !injected.pod_labels.is_empty() {
        parts.push(format!("pod labels {}", list(&mut injected.pod_labels.iter())));
    }
    if !injected.pod_annotations.is_empty() {
        parts.push(format!(
            "pod annotations {}",
            list(&mut injected.pod_annotations.iter())
        ));
    }
    if injected.share_process_namespace {
        parts.push("shareProcessNamespace".to_owned());
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join("; ")
    }
}
