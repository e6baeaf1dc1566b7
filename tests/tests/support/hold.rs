//! The admission hold's objects (`deploy/components/admission-hold`), applied as shipped.

#![allow(dead_code)]

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;

use super::kustomize::{deploy_dir, documents};

/// Server-side applies every MutatingAdmissionPolicy and binding in the admission-hold
/// component's `file` (the CRD of their params must be established first).
pub async fn apply_hold_file(client: &Client, file: &str) {
    let path = deploy_dir().join("components/admission-hold").join(file);
    for object in documents(&std::fs::read_to_string(path).unwrap()) {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let resource = ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "admissionregistration.k8s.io/v1".into(),
            plural: match kind.as_str() {
                "MutatingAdmissionPolicy" => "mutatingadmissionpolicies".into(),
                _ => format!("{}s", kind.to_lowercase()),
            },
            kind,
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply("sidecar-e2e").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
    }
}

/// The init container names of a ReplicaSet's pod template.
pub fn template_inits(rs: &ReplicaSet) -> Vec<String> {
    rs.spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|p| p.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}
