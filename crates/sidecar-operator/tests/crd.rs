//! `crds/sidecarpolicy.yaml` must be exactly what `sidecar-operator crd` prints.

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
