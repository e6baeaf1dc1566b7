//! Requests sent as a user writes them: a policy's YAML text, byte for byte (duplicate keys and
//! unicode included), with strict field validation, as `kubectl create` sends it.

#![allow(dead_code)]

use kube::Client;

/// The collection a policy of `kind` is created in: `namespace`'s for a SidecarPolicy.
pub fn policy_collection(kind: &str, namespace: &str) -> String {
    match kind {
        "ClusterSidecarPolicy" => "/apis/sidecar.dev/v1alpha1/clustersidecarpolicies".to_owned(),
        _ => format!("/apis/sidecar.dev/v1alpha1/namespaces/{namespace}/sidecarpolicies"),
    }
}

/// Creates the object `yaml` holds in `collection`; `Err` with the API server's status code and
/// message when it is refused.
pub async fn create_yaml(client: &Client, collection: &str, yaml: &str) -> Result<(), (u16, String)> {
    let request = http::Request::post(format!("{collection}?fieldValidation=Strict"))
        .header(http::header::CONTENT_TYPE, "application/yaml")
        .body(yaml.as_bytes().to_vec())
        .map_err(|e| (0, e.to_string()))?;
    match client.request_text(request).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err((status.code, status.message.clone())),
        Err(other) => Err((0, other.to_string())),
    }
}
