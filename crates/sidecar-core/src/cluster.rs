//! ClusterSidecarPolicies in the engine.
//!
//! A ClusterSidecarPolicy is rendered in each namespace its `namespaceSelector` selects as if it
//! were a SidecarPolicy of that namespace named `ClusterSidecarPolicy/<name>` (its *key*). Every
//! part of the engine (ordering, conflicts, guardrails, the injection record, exact removal)
//! then works across both kinds unchanged, and the record tells them apart: an object name cannot
//! contain `/`, so a key never equals a SidecarPolicy's name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sidecar_api::{CLUSTER_POLICY_PREFIX, ClusterSidecarPolicy, NAMESPACE_INJECT_LABEL, SidecarPolicy};

use crate::problem::{Problem, ProblemKind};
use crate::{selector, validate};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The key of ClusterSidecarPolicy `name`.
pub fn key(name: &str) -> String {
    format!("{CLUSTER_POLICY_PREFIX}{name}")
}

/// The ClusterSidecarPolicy name in `key`, if it is a ClusterSidecarPolicy's key.
pub fn cluster_name(key: &str) -> Option<&str> {
    key.strip_prefix(CLUSTER_POLICY_PREFIX)
}

/// `SidecarPolicy "name"` or `ClusterSidecarPolicy "name"`, for messages.
pub fn describe(key: &str) -> String {
    match cluster_name(key) {
        Some(name) => format!("ClusterSidecarPolicy {name:?}"),
        None => format!("SidecarPolicy {key:?}"),
    }
}

/// The namespaces no ClusterSidecarPolicy ever selects (the operator's `--exclude-namespace`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    namespaces: BTreeSet<String>,
}

impl Exclusions {
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        Exclusions {
            namespaces: namespaces.into_iter().collect(),
        }
    }

    pub fn contains(&self, namespace: &str) -> bool {
        self.namespaces.contains(namespace)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().map(String::as_str)
    }
}

/// A namespace as ClusterSidecarPolicies see it: its name and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceLabels {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceLabels {
    /// A namespace of which only the name is known: it carries the name label the API server
    /// sets on every namespace.
    pub fn named(name: &str) -> Self {
        NamespaceLabels {
            name: name.to_owned(),
            labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]),
        }
    }

    pub fn of(metadata: &ObjectMeta) -> Self {
        let name = metadata.name.clone().unwrap_or_default();
        let mut labels = metadata.labels.clone().unwrap_or_default();
        // Set by the API server since 1.22; an offline Namespace document may lack it.
        labels
            .entry(NAMESPACE_NAME_LABEL.to_owned())
            .or_insert_with(|| name.clone());
        NamespaceLabels { name, labels }
    }

    /// Whether the namespace opted out of every ClusterSidecarPolicy.
    pub fn opted_out(&self) -> bool {
        self.labels
            .get(NAMESPACE_INJECT_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    }
}

/// Whether ClusterSidecarPolicy `policy` applies in `namespace`. `Err` when its
/// namespaceSelector is invalid: it cannot be told, so the caller treats it as selecting the
/// namespace with the problem, which refuses the Deployments it selects there.
pub fn selects(
    policy: &ClusterSidecarPolicy,
    namespace: &NamespaceLabels,
    exclusions: &Exclusions,
) -> Result<bool, Problem> {
    if exclusions.contains(&namespace.name) || namespace.opted_out() {
        return Ok(false);
    }
    selector::matches(&policy.spec.namespace_selector, &namespace.labels).map_err(|e| Problem {
        kind: ProblemKind::Invalid,
        policy: key(policy.metadata.name.as_deref().unwrap_or_default()),
        field: format!("spec.namespaceSelector.{}", e.field()),
        message: e.to_string(),
    })
}

/// `policy` as a SidecarPolicy of `namespace` named by its key, as the engine renders it.
pub fn in_namespace(policy: &ClusterSidecarPolicy, namespace: &str) -> SidecarPolicy {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    SidecarPolicy {
        metadata: ObjectMeta {
            name: Some(key(name)),
            namespace: Some(namespace.to_owned()),
            uid: policy.metadata.uid.clone(),
            generation: policy.metadata.generation,
            ..ObjectMeta::default()
        },
        spec: policy.spec.policy.clone(),
        status: None,
    }
}

/// What is wrong with a ClusterSidecarPolicy beyond its SidecarPolicy spec: an invalid
/// namespaceSelector (the CRD schema rejects most; `render` has no API server to do so), or one
/// naming a label key or value no namespace can carry.
pub fn problems(policy: &ClusterSidecarPolicy) -> Vec<Problem> {
    let key = key(policy.metadata.name.as_deref().unwrap_or_default());
    let mut problems = Vec::new();
    if let Err(e) = selector::validate(&policy.spec.namespace_selector) {
        problems.push(Problem {
            kind: ProblemKind::Invalid,
            policy: key.clone(),
            field: format!("spec.namespaceSelector.{}", e.field()),
            message: e.to_string(),
        });
    }
    problems.extend(validate::selector_label_problems(
        &policy.spec.namespace_selector,
        "spec.namespaceSelector",
        &key,
    ));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use sidecar_api::{ClusterSidecarPolicySpec, SidecarPolicySpec};

    fn policy(namespace_selector: LabelSelector) -> ClusterSidecarPolicy {
        let mut policy = ClusterSidecarPolicy::new(
            "mesh",
            ClusterSidecarPolicySpec {
                namespace_selector,
                policy: serde_json::from_value::<SidecarPolicySpec>(serde_json::json!({
                    "selector": {}, "sidecars": [{"name": "proxy", "image": "proxy:1"}]
                }))
                .unwrap(),
            },
        );
        policy.metadata.uid = Some("u1".into());
        policy
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceLabels {
        let mut ns = NamespaceLabels::named(name);
        ns.labels
            .extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        ns
    }

    #[test]
    fn keys_name_the_kind_and_never_equal_a_policy_name() {
        assert_eq!(key("mesh"), "ClusterSidecarPolicy/mesh");
        assert_eq!(cluster_name("ClusterSidecarPolicy/mesh"), Some("mesh"));
        assert_eq!(cluster_name("mesh"), None);
        assert_eq!(describe("mesh"), "SidecarPolicy \"mesh\"");
        assert_eq!(describe(&key("mesh")), "ClusterSidecarPolicy \"mesh\"");
    }

    #[test]
    fn the_namespace_selector_the_exclusions_and_the_opt_out_label_decide() {
        let mesh = policy(LabelSelector {
            match_labels: Some(BTreeMap::from([("mesh".into(), "enabled".into())])),
            ..LabelSelector::default()
        });
        let none = Exclusions::default();
        assert_eq!(
            selects(&mesh, &namespace("a", &[("mesh", "enabled")]), &none),
            Ok(true)
        );
        assert_eq!(selects(&mesh, &namespace("b", &[]), &none), Ok(false));
        let excluded = Exclusions::new(["a".to_owned()]);
        assert_eq!(
            selects(&mesh, &namespace("a", &[("mesh", "enabled")]), &excluded),
            Ok(false)
        );
        let opted_out = namespace("a", &[("mesh", "enabled"), (NAMESPACE_INJECT_LABEL, "false")]);
        assert_eq!(selects(&mesh, &opted_out, &none), Ok(false));

        let everything = policy(LabelSelector::default());
        assert_eq!(selects(&everything, &namespace("c", &[]), &none), Ok(true));
        let by_name = policy(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.into(),
                operator: "In".into(),
                values: Some(vec!["c".into()]),
            }]),
            ..LabelSelector::default()
        });
        assert_eq!(selects(&by_name, &namespace("c", &[]), &none), Ok(true));
        assert_eq!(selects(&by_name, &namespace("d", &[]), &none), Ok(false));
    }

    #[test]
    fn an_invalid_namespace_selector_is_a_problem_of_the_policy() {
        let bad = policy(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "mesh".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        });
        let problem = selects(&bad, &namespace("a", &[]), &Exclusions::default()).unwrap_err();
        assert_eq!(problem.policy, "ClusterSidecarPolicy/mesh");
        assert!(
            problem.field.starts_with("spec.namespaceSelector."),
            "{problem:?}"
        );
    }

    #[test]
    fn a_namespace_selector_label_no_namespace_can_carry_is_a_problem() {
        let typo = policy(LabelSelector {
            match_labels: Some([("mesh!".to_owned(), "on".to_owned())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "NotIn".into(),
                values: Some(vec!["eu west".into()]),
            }]),
        });
        let fields: Vec<String> = problems(&typo).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                r#"spec.namespaceSelector.matchLabels["mesh!"]"#,
                "spec.namespaceSelector.matchExpressions[0].values[0]",
            ]
        );
        let good = policy(LabelSelector {
            match_labels: Some([("example.com/mesh".to_owned(), "on".to_owned())].into()),
            ..LabelSelector::default()
        });
        assert_eq!(problems(&good), []);
    }

    #[test]
    fn in_a_namespace_it_is_a_policy_of_that_namespace_named_by_its_key() {
        let converted = in_namespace(&policy(LabelSelector::default()), "team-a");
        assert_eq!(
            converted.metadata.name.as_deref(),
            Some("ClusterSidecarPolicy/mesh")
        );
        assert_eq!(converted.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(converted.spec.sidecars[0].name, "proxy");
    }
}
