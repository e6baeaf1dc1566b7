//! Builders shared by the engine's tests. Not every test crate uses every builder.
#![allow(dead_code)]

pub mod arbitrary;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use sidecar_api::SidecarPolicy;
use sidecar_core::{Guardrails, Refusal, Rendered};

pub fn deployment(yaml: &str) -> Deployment {
    serde_norway::from_str(yaml).expect("test Deployment parses")
}

pub fn policy(yaml: &str) -> SidecarPolicy {
    serde_norway::from_str(yaml).expect("test SidecarPolicy parses")
}

/// The Deployment `web` (labels app=web) with one app container `web` and one owner init
/// container `migrate`.
pub fn web() -> Deployment {
    deployment(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      initContainers:
      - {name: migrate, image: "migrate:1.0"}
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
        env: [{name: MODE, value: prod}]
        volumeMounts: [{name: cache, mountPath: /cache}]
      volumes:
      - {name: cache, emptyDir: {}}
"#,
    )
}

/// A policy `name` in namespace demo selecting app=web with one well-formed sidecar.
pub fn sidecar_policy(name: &str, sidecar: &str) -> SidecarPolicy {
    policy(&format!(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {{name: {name}, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  sidecars:
  - name: {sidecar}
    image: "busybox:1.36"
    startupProbe: {{exec: {{command: ["true"]}}}}
    resources: {{requests: {{cpu: 10m}}}}
"#
    ))
}

pub fn render(d: &Deployment, policies: &[SidecarPolicy]) -> Result<Rendered, Refusal> {
    sidecar_core::render(d, policies, &Guardrails::default())
}

pub fn rendered(d: &Deployment, policies: &[SidecarPolicy]) -> Deployment {
    match render(d, policies) {
        Ok(r) => r.deployment,
        Err(refusal) => panic!("render refused: {refusal}"),
    }
}

pub fn refusal(d: &Deployment, policies: &[SidecarPolicy]) -> Refusal {
    match render(d, policies) {
        Ok(r) => panic!(
            "render should have been refused, got {:#?}",
            r.deployment.spec.template.spec
        ),
        Err(refusal) => refusal,
    }
}

pub fn init_names(d: &Deployment) -> Vec<String> {
    init_containers(d).iter().map(|c| c.name.clone()).collect()
}

pub fn init_containers(d: &Deployment) -> Vec<Container> {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default()
}

pub fn app(d: &Deployment, name: &str) -> Container {
    let pod = d.spec.template.spec.as_ref().expect("pod spec");
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .expect("app container")
}
