//! The CustomResourceDefinitions, generated from the Rust types. `crds/sidecarpolicy.yaml` and
//! `crds/clustersidecarpolicy.yaml` are their checked-in output; a test fails when they differ.

use kube::CustomResourceExt;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};

/// The SidecarPolicy CRD as YAML.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&SidecarPolicy::crd())
}

/// The ClusterSidecarPolicy CRD as YAML.
pub fn cluster_crd_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&ClusterSidecarPolicy::crd())
}
