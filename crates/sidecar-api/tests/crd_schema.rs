//! The CRD the API server gets: identity, printer columns, and the CEL rules evaluated
//! client-side (kube-cel) against valid and invalid policies, so a rule that stops rejecting what
//! it should fails here rather than in a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;

fn schema() -> Value {
    let crd = SidecarPolicy::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn policy(spec: Value) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "p", "namespace": "demo"},
        "spec": spec,
    })
}

fn valid_spec() -> Value {
    json!({
        "selector": {"matchLabels": {"app": "web"}},
        "initContainers": [{"name": "setup", "image": "setup:1"}],
        "sidecars": [{"name": "proxy", "image": "envoy:1.31", "restartPolicy": "Always"}],
        "appContainers": [{"env": [{"name": "X", "value": "1"}]}],
    })
}

/// The messages of every CEL rule `spec` breaks.
fn violations(spec: Value) -> Vec<String> {
    match Validator::new().validate(&schema(), &policy(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn assert_rejected(spec: Value, message_part: &str) {
    let found = violations(spec);
    assert!(
        found.iter().any(|m| m.contains(message_part)),
        "expected a violation mentioning {message_part:?}, got {found:?}"
    );
}

#[test]
fn identity_and_printer_columns() {
    let crd = SidecarPolicy::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("sidecarpolicies.sidecar.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["scp".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for column in ["Matched", "Updated", "Ready", "Age"] {
        assert!(
            columns.contains(&column),
            "missing printer column {column}: {columns:?}"
        );
    }
}

#[test]
fn max_concurrent_is_a_positive_integer_or_a_percentage() {
    let with = |max: Value| {
        let mut spec = valid_spec();
        spec["rollout"] = json!({ "maxConcurrent": max });
        violations(spec)
    };
    for good in [json!(1), json!(25), json!("1%"), json!("10%"), json!("100%")] {
        let found = with(good.clone());
        assert!(found.is_empty(), "{good}: {found:?}");
    }
    for bad in [
        json!(0),
        json!(-3),
        json!("0%"),
        json!("101%"),
        json!("10"),
        json!("05%"),
    ] {
        let found = with(bad.clone());
        assert!(
            found.iter().any(|m| m.contains("maxConcurrent")),
            "{bad}: {found:?}"
        );
    }
}

#[test]
fn a_valid_policy_passes_every_rule() {
    assert_eq!(violations(valid_spec()), Vec::<String>::new());
}

#[test]
fn a_policy_must_inject_a_container() {
    assert_rejected(
        json!({"selector": {}}),
        "at least one entry in spec.sidecars or spec.initContainers",
    );
    assert_rejected(json!({"selector": {}, "sidecars": []}), "at least one entry");
    assert!(
        violations(json!({"selector": {}, "initContainers": [{"name": "i", "image": "i:1"}]})).is_empty()
    );
}

#[test]
fn sidecars_restart_only_always() {
    let mut spec = valid_spec();
    spec["sidecars"][0]["restartPolicy"] = json!("OnFailure");
    assert_rejected(spec, "restartPolicy can only be Always");
}

#[test]
fn init_containers_have_no_restart_policy() {
    let mut spec = valid_spec();
    spec["initContainers"][0]["restartPolicy"] = json!("Always");
    assert_rejected(spec, "restartPolicy must not be set");
}

#[test]
fn names_are_unique_across_sidecars_and_init_containers() {
    let mut spec = valid_spec();
    spec["initContainers"][0]["name"] = json!("proxy");
    assert_rejected(spec, "used both in spec.sidecars and spec.initContainers");
}

#[test]
fn images_are_required() {
    let mut spec = valid_spec();
    spec["sidecars"][0].as_object_mut().unwrap().remove("image");
    assert_rejected(spec, "sidecars: image is required");
    let mut spec = valid_spec();
    spec["initContainers"][0]["image"] = json!("");
    assert_rejected(spec, "initContainers: image is required");
}

#[test]
fn selector_requirements_are_well_formed() {
    let with_expr = |expr: Value| {
        let mut spec = valid_spec();
        spec["selector"] = json!({"matchExpressions": [expr]});
        spec
    };
    assert_rejected(
        with_expr(json!({"key": "a", "operator": "In"})),
        "need at least one value",
    );
    assert_rejected(
        with_expr(json!({"key": "a", "operator": "Exists", "values": ["x"]})),
        "take none",
    );
    assert!(
        violations(with_expr(
            json!({"key": "a", "operator": "NotIn", "values": ["x"]})
        ))
        .is_empty()
    );
    assert!(violations(with_expr(json!({"key": "a", "operator": "DoesNotExist"}))).is_empty());
}

#[test]
fn app_container_entries_add_something() {
    let mut spec = valid_spec();
    spec["appContainers"] = json!([{"containerNames": ["web"]}]);
    assert_rejected(spec, "at least one volume mount or env var");
}

/// Rules the API server enforces without CEL: bounds, name patterns, list-map keys. The CEL cost
/// estimator needs the bounds, so check they are present where the rules read.
#[test]
fn structural_bounds_are_in_the_schema() {
    let schema = schema();
    let spec = &schema["properties"]["spec"]["properties"];
    for (list, max) in [
        ("sidecars", 16),
        ("initContainers", 8),
        ("volumes", 32),
        ("appContainers", 8),
    ] {
        assert_eq!(spec[list]["maxItems"], json!(max), "{list}");
    }
    for list in ["sidecars", "initContainers", "volumes"] {
        assert_eq!(spec[list]["x-kubernetes-list-type"], json!("map"), "{list}");
        assert_eq!(
            spec[list]["x-kubernetes-list-map-keys"],
            json!(["name"]),
            "{list}"
        );
        let name = &spec[list]["items"]["properties"]["name"];
        assert_eq!(name["maxLength"], json!(63), "{list}");
        assert_eq!(
            name["pattern"],
            json!(sidecar_api::schema::DNS_LABEL_PATTERN),
            "{list}"
        );
    }
    // JSONSchemaProps holds bounds as floats.
    assert_eq!(spec["order"]["minimum"].as_f64(), Some(-1000.0));
    assert_eq!(spec["order"]["maximum"].as_f64(), Some(1000.0));
    assert_eq!(spec["placement"]["default"], json!("BeforeAppInitContainers"));
    let operator = &spec["selector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"];
    assert_eq!(operator["enum"], json!(["In", "NotIn", "Exists", "DoesNotExist"]));
    let status = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(status["x-kubernetes-list-map-keys"], json!(["type"]));
}

#[test]
fn names_are_at_most_63_characters() {
    let named = |name: &str| {
        let mut object = policy(valid_spec());
        object["metadata"]["name"] = json!(name);
        Validator::new().validate(&schema(), &object, None)
    };
    assert!(named(&"p".repeat(63)).is_ok());
    let errors = named(&"p".repeat(64)).unwrap_err().into_vec();
    assert!(
        errors.iter().any(|e| e.message.contains("at most 63 characters")),
        "{errors:?}"
    );
}

fn cluster_schema() -> Value {
    let crd = sidecar_api::ClusterSidecarPolicy::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// The messages of every CEL rule a ClusterSidecarPolicy with `spec` breaks.
fn cluster_violations(spec: Value) -> Vec<String> {
    let object = json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "ClusterSidecarPolicy",
        "metadata": {"name": "mesh"},
        "spec": spec,
    });
    match Validator::new().validate(&cluster_schema(), &object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn a_cluster_policy_has_the_policy_rules() {
    let crd = sidecar_api::ClusterSidecarPolicy::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cscp".to_owned()]));

    let mut spec = valid_spec();
    spec["namespaceSelector"] = json!({"matchLabels": {"mesh": "enabled"}});
    assert_eq!(cluster_violations(spec.clone()), Vec::<String>::new());

    // Staged rollouts and revision history work as for a SidecarPolicy.
    let mut staged = spec.clone();
    staged["rollout"] = json!({"maxConcurrent": "10%", "canary": {"selector": {}}});
    staged["revisionHistoryLimit"] = json!(3);
    assert_eq!(cluster_violations(staged.clone()), Vec::<String>::new());
    staged["rollout"] = json!({"maxConcurrent": "0%"});
    let found = cluster_violations(staged);
    assert!(found.iter().any(|m| m.contains("maxConcurrent")), "{found:?}");

    let mut empty = spec.clone();
    empty.as_object_mut().unwrap().remove("sidecars");
    empty.as_object_mut().unwrap().remove("initContainers");
    let found = cluster_violations(empty);
    assert!(
        found.iter().any(|m| m.contains("at least one entry")),
        "{found:?}"
    );

    let mut bad_selector = spec;
    bad_selector["namespaceSelector"] = json!({"matchExpressions": [{"key": "mesh", "operator": "In"}]});
    let found = cluster_violations(bad_selector);
    assert!(
        found.iter().any(|m| m.contains("need at least one value")),
        "{found:?}"
    );
}
