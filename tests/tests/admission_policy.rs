//! The admission hold's CEL (`deploy/components/admission-hold/admission-policy.yaml`) is a public
//! contract: it decides which new Deployments wait for the operator, and must select exactly the
//! Deployments the operator's own selector code selects (Kubernetes' `LabelSelector` semantics).
//! Its expressions are read from the shipped file and evaluated with kube-cel, as the API server
//! would evaluate them, on a table of selectors and label sets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube_cel::{AdmissionRequest, VapEvaluator, VapExpression};
use serde_json::{Value, json};

mod support {
    pub mod kustomize;
}
use support::kustomize::{deploy_dir, documents};

/// The admission policy's spec, from the shipped file.
fn policy_spec() -> Value {
    spec_in("admission-policy.yaml")
}

/// The ClusterSidecarPolicy admission policy's spec, from the shipped file.
fn cluster_policy_spec() -> Value {
    spec_in("cluster-admission-policy.yaml")
}

fn spec_in(file: &str) -> Value {
    let path = deploy_dir().join("components/admission-hold").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let policy = documents(&text)
        .into_iter()
        .find(|d| d["kind"] == "MutatingAdmissionPolicy")
        .expect("the file holds the MutatingAdmissionPolicy");
    policy["spec"].clone()
}

/// The expression of variable `name`, with the variables it uses written out in place (kube-cel
/// evaluates VAP-style expressions, which bind no `variables`).
fn variable(spec: &Value, name: &str) -> String {
    let mut expression = named(&spec["variables"], name);
    for other in spec["variables"].as_array().unwrap() {
        let other_name = other["name"].as_str().unwrap();
        let reference = format!("variables.{other_name}");
        if other_name != name && expression.contains(&reference) {
            expression = expression.replace(&reference, &format!("({})", variable(spec, other_name)));
        }
    }
    expression
}

fn named(list: &Value, name: &str) -> String {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list}"))["expression"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The annotation keys the expressions name.
const ANNOTATION_KEYS: [&str; 3] = [
    // Also the namespace opt-out label's key.
    "sidecar.dev/inject",
    "sidecar.dev/held-for",
    "sidecar.dev/injected",
];

/// kube-cel escapes every map key as the API server escapes a CRD's property names (`.` as
/// `__dot__`, `/` as `__slash__`, ...); the API server does not escape the keys of a map such as
/// `metadata.annotations`. So that lookups by annotation key behave as on the server, the keys
/// the expressions name are written escaped too. (Label keys in the table below are plain words
/// for the same reason: `e.key`, a value, is never escaped.)
fn as_kube_cel_sees_it(expression: &str) -> String {
    let mut expression = expression.to_owned();
    for key in ANNOTATION_KEYS {
        let escaped = key
            .replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__");
        expression = expression.replace(&format!("'{key}'"), &format!("'{escaped}'"));
    }
    expression
}

/// Evaluates a boolean expression; an evaluation error is a failure (the API server would then
/// ignore the policy: `failurePolicy: Ignore`).
fn holds(expression: &str, evaluator: &VapEvaluator) -> bool {
    let expression = &as_kube_cel_sees_it(expression);
    // kube-cel reports `false` with the message given here, an error with its own.
    const FALSE: &str = "evaluated to false";
    let results = evaluator.evaluate(&[VapExpression {
        expression: expression.to_owned(),
        message: Some(FALSE.to_owned()),
        message_expression: None,
    }]);
    let result = &results[0];
    if let Some(message) = result.message.as_deref() {
        assert_eq!(message, FALSE, "{expression}");
    }
    result.passed
}

fn deployment(labels: &BTreeMap<&str, &str>, annotations: Value, paused: Option<bool>) -> Value {
    let mut spec = json!({"selector": {"matchLabels": {"app": "x"}}, "template": {}});
    if let Some(paused) = paused {
        spec["paused"] = json!(paused);
    }
    let mut metadata = json!({"name": "web", "namespace": "team-a", "annotations": annotations});
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec})
}

fn sidecar_policy(selector: &Value) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "mesh", "namespace": "team-a"},
        "spec": {"selector": selector, "sidecars": [{"name": "proxy", "image": "envoy"}]},
    })
}

fn request(operation: &str) -> AdmissionRequest {
    AdmissionRequest {
        operation: operation.into(),
        ..Default::default()
    }
}

#[test]
fn the_hold_selects_exactly_what_the_engine_selects() {
    let spec = policy_spec();
    let selected = variable(&spec, "selected");
    let selectors = [
        json!({}),
        json!({"matchLabels": {"app": "web"}}),
        json!({"matchLabels": {"app": "web", "tier": "front"}}),
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["back"]}]}),
        json!({"matchExpressions": [{"key": "mesh", "operator": "Exists"}]}),
        json!({"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}),
        json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "NotIn", "values": ["back"]},
                {"key": "mesh", "operator": "Exists"},
            ],
        }),
        json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front"]},
            {"key": "tier", "operator": "NotIn", "values": ["front"]},
        ]}),
        json!({"matchLabels": {"app": ""}}),
    ];
    let label_sets: [&[(&str, &str)]; 8] = [
        &[],
        &[("app", "web")],
        &[("app", "web"), ("tier", "front")],
        &[("app", "web"), ("tier", "back")],
        &[("app", "api"), ("tier", "edge"), ("mesh", "on")],
        &[("app", "web"), ("mesh", ""), ("legacy", "yes")],
        &[("app", ""), ("tier", "front")],
        &[("App", "web"), ("tier", "Front")],
    ];
    let mut checked = 0;
    for selector in &selectors {
        let typed: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
        for labels in label_sets {
            let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
            let owned: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let engine = sidecar_core::selector::matches(&typed, &owned).unwrap();
            let evaluator = VapEvaluator::builder()
                .object(deployment(&labels, json!({}), None))
                .params(sidecar_policy(selector))
                .request(request("CREATE"))
                .build();
            assert_eq!(
                holds(&selected, &evaluator),
                engine,
                "selector {selector} on labels {labels:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, selectors.len() * label_sets.len());
}

/// Evaluates every matchCondition of the policy on a request; all must hold for the hold to
/// apply.
fn conditions_hold(spec: &Value, evaluator: &VapEvaluator) -> bool {
    spec["matchConditions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| holds(c["expression"].as_str().unwrap(), evaluator))
}

#[test]
fn opted_out_paused_and_unchanged_deployments_are_never_held() {
    let spec = policy_spec();
    let labels = BTreeMap::from([("app", "web")]);
    let params = sidecar_policy(&json!({}));
    let create = |annotations: Value, paused: Option<bool>| {
        VapEvaluator::builder()
            .object(deployment(&labels, annotations, paused))
            .params(params.clone())
            .request(request("CREATE"))
            .build()
    };
    assert!(
        conditions_hold(&spec, &create(json!({}), None)),
        "a new Deployment"
    );
    assert!(conditions_hold(&spec, &create(json!({}), Some(false))));
    assert!(
        conditions_hold(&spec, &create(json!({"sidecar.dev/inject": "true"}), None)),
        "only \"false\" opts out"
    );
    // The engine's opt-out and the hold's agree.
    let opted_out = json!({"sidecar.dev/inject": "false"});
    assert!(sidecar_core::opted_out_meta(
        &serde_json::from_value(deployment(&labels, opted_out.clone(), None)["metadata"].clone()).unwrap()
    ));
    assert!(!conditions_hold(&spec, &create(opted_out, None)), "opted out");
    assert!(
        !conditions_hold(&spec, &create(json!({}), Some(true))),
        "its owner created it paused"
    );
    assert!(
        conditions_hold(
            &spec,
            &create(json!({"sidecar.dev/held-for": "logs"}), Some(true))
        ),
        "paused by an earlier policy's hold: this one joins it"
    );

    let record = json!({"sidecar.dev/injected": "{\"version\":1}"});
    let update = |old: Value, new: Value| {
        VapEvaluator::builder()
            .old_object(deployment(&labels, old, None))
            .object(deployment(&labels, new, None))
            .params(params.clone())
            .request(request("UPDATE"))
            .build()
    };
    assert!(
        conditions_hold(&spec, &update(record.clone(), json!({}))),
        "replaced whole: the record is gone"
    );
    assert!(
        !conditions_hold(&spec, &update(record.clone(), record.clone())),
        "an apply keeps the record: no hold"
    );
    assert!(
        !conditions_hold(&spec, &update(json!({}), json!({}))),
        "never injected"
    );
}

#[test]
fn the_hold_names_every_policy_it_waits_for_and_respects_the_opt_out_field() {
    let spec = policy_spec();
    let held_for = variable(&spec, "heldFor");
    let holds_variable = variable(&spec, "holds");
    let labels = BTreeMap::from([("app", "web")]);
    let evaluate = |annotations: Value, policy: Value| {
        VapEvaluator::builder()
            .object(deployment(&labels, annotations, None))
            .params(policy)
            .request(request("CREATE"))
            .build()
    };
    let mut policy = sidecar_policy(&json!({}));
    let first = evaluate(json!({}), policy.clone());
    assert!(holds(&format!("({held_for}) == 'mesh'"), &first));
    let second = evaluate(json!({"sidecar.dev/held-for": "logs"}), policy.clone());
    assert!(holds(&format!("({held_for}) == 'logs,mesh'"), &second));
    assert!(holds(&holds_variable, &first), "holding is the default");
    policy["spec"]["holdNewDeployments"] = json!(false);
    assert!(
        !holds(&holds_variable, &evaluate(json!({}), policy)),
        "holdNewDeployments: false"
    );
}

fn cluster_sidecar_policy(namespace_selector: &Value) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "ClusterSidecarPolicy",
        "metadata": {"name": "mesh"},
        "spec": {
            "namespaceSelector": namespace_selector,
            "selector": {},
            "sidecars": [{"name": "proxy", "image": "envoy"}],
        },
    })
}

fn namespace_object(labels: &BTreeMap<&str, &str>) -> Value {
    let mut metadata = json!({"name": "team-a"});
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
}

#[test]
fn the_cluster_hold_selects_exactly_the_namespaces_the_engine_selects() {
    let spec = cluster_policy_spec();
    let in_namespace = variable(&spec, "inNamespace");
    let selectors = [
        json!({}),
        json!({"matchLabels": {"mesh": "enabled"}}),
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "staging"]}]}),
        json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]}),
        json!({"matchExpressions": [{"key": "mesh", "operator": "Exists"}]}),
        json!({"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}),
    ];
    let label_sets: [&[(&str, &str)]; 6] = [
        &[],
        &[("mesh", "enabled")],
        &[("mesh", "enabled"), ("tier", "prod")],
        &[("tier", "dev"), ("legacy", "yes")],
        &[("mesh", "enabled"), ("sidecar.dev/inject", "false")],
        &[("mesh", "enabled"), ("sidecar.dev/inject", "true")],
    ];
    let none = sidecar_core::cluster::Exclusions::default();
    for selector in &selectors {
        let policy: sidecar_api::ClusterSidecarPolicy =
            serde_json::from_value(cluster_sidecar_policy(selector)).unwrap();
        for labels in label_sets {
            let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
            let mut namespace = sidecar_core::cluster::NamespaceLabels::named("team-a");
            namespace
                .labels
                .extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            let engine = sidecar_core::cluster::selects(&policy, &namespace, &none).unwrap();
            let evaluator = VapEvaluator::builder()
                .object(deployment(&BTreeMap::from([("app", "web")]), json!({}), None))
                .params(cluster_sidecar_policy(selector))
                .namespace_object(namespace_object(&labels))
                .request(request("CREATE"))
                .build();
            assert_eq!(
                holds(&in_namespace, &evaluator),
                engine,
                "namespaceSelector {selector} on namespace labels {labels:?}"
            );
        }
    }
    // Deployments within: the same expression as the namespaced hold.
    assert_eq!(variable(&spec, "selected"), variable(&policy_spec(), "selected"));
}

#[test]
fn the_cluster_hold_names_the_policy_by_its_key() {
    let spec = cluster_policy_spec();
    let held_for = variable(&spec, "heldFor");
    let labels = BTreeMap::from([("app", "web")]);
    let evaluate = |annotations: Value| {
        VapEvaluator::builder()
            .object(deployment(&labels, annotations, None))
            .params(cluster_sidecar_policy(&json!({})))
            .namespace_object(namespace_object(&BTreeMap::new()))
            .request(request("CREATE"))
            .build()
    };
    let key = sidecar_core::cluster::key("mesh");
    assert!(holds(&format!("({held_for}) == '{key}'"), &evaluate(json!({}))));
    assert!(holds(
        &format!("({held_for}) == 'logs,{key}'"),
        &evaluate(json!({"sidecar.dev/held-for": "logs"}))
    ));
}
