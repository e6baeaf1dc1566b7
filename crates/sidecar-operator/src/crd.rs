//! The CustomResourceDefinition, generated from the Rust types. `crds/sidecarpolicy.yaml` is its
//! checked-in output; a test fails when the two differ.

use kube::CustomResourceExt;
use sidecar_api::SidecarPolicy;

pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&SidecarPolicy::crd())
}
