//! `crds/sidecarpolicy.yaml` and `crds/clustersidecarpolicy.yaml` must be exactly what
//! `sidecar-operator crd` prints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/sidecarpolicy.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/sidecarpolicy.yaml exists");
    let generated = sidecar_operator::crd::crd_yaml().unwrap();
    assert!(
        checked_in == generated,
        "crds/sidecarpolicy.yaml is stale: run `just crd` and commit the result"
    );
}

#[test]
fn crd_parses_as_a_custom_resource_definition() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition =
        serde_norway::from_str(&sidecar_operator::crd::crd_yaml().unwrap()).unwrap();
    assert_eq!(crd.metadata.name.as_deref(), Some("sidecarpolicies.sidecar.dev"));
}

#[test]
fn checked_in_cluster_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/clustersidecarpolicy.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("crds/clustersidecarpolicy.yaml exists");
    let generated = sidecar_operator::crd::cluster_crd_yaml().unwrap();
    assert!(
        checked_in == generated,
        "crds/clustersidecarpolicy.yaml is stale: run `just crd` and commit the result"
    );
}

#[test]
fn cluster_crd_is_cluster_scoped_with_the_policy_fields_inline() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition =
        serde_norway::from_str(&sidecar_operator::crd::cluster_crd_yaml().unwrap()).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("clustersidecarpolicies.sidecar.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let spec = &schema.properties.as_ref().unwrap()["spec"];
    let fields = spec.properties.as_ref().unwrap();
    for field in ["namespaceSelector", "selector", "sidecars", "order", "placement"] {
        assert!(
            fields.contains_key(field),
            "spec.{field} missing: {:?}",
            fields.keys()
        );
    }
    let required = spec.required.clone().unwrap_or_default();
    assert!(required.contains(&"namespaceSelector".to_owned()), "{required:?}");
    assert!(required.contains(&"selector".to_owned()), "{required:?}");
}
