//! The operator run in-process by an e2e test, for one namespace as `sidecar-operator run -n NS`,
//! or for all.

#![allow(dead_code)]

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::Api;
use serde_json::json;
use sidecar_core::Guardrails;
use sidecar_core::cluster::Exclusions;
use sidecar_operator::controller;

/// Guardrails that allow every privileged ask the examples make.
pub fn all_guardrails_off() -> Guardrails {
    let mut g = Guardrails {
        allow_host_path: true,
        allow_run_as_root: true,
        ..Guardrails::default()
    };
    g.allow_capability("NET_ADMIN");
    g.allow_capability("NET_RAW");
    g
}

/// Starts the operator for `namespace`; abort the handle to stop it.
pub async fn start_operator(
    client: &Client,
    namespace: &str,
    guardrails: Guardrails,
) -> tokio::task::JoinHandle<()> {
    start(client, Some(namespace), guardrails).await
}

/// Starts the operator for every namespace (with ClusterSidecarPolicies), as `sidecar-operator
/// run` without `-n`; abort the handle to stop it.
pub async fn start_cluster_wide(client: &Client, guardrails: Guardrails) -> tokio::task::JoinHandle<()> {
    start(client, None, guardrails).await
}

async fn start(
    client: &Client,
    namespace: Option<&str>,
    guardrails: Guardrails,
) -> tokio::task::JoinHandle<()> {
    // The operator's logs go with the test's output (RUST_LOG filters; default info).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let cluster = controller::ClusterOptions {
        exclusions: Exclusions::new(
            controller::DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|&ns| ns.to_owned()),
        ),
        revision_namespace: controller::DEFAULT_REVISION_NAMESPACE.to_owned(),
    };
    let scope = controller::Scope::new(
        client.clone(),
        namespace,
        guardrails,
        Default::default(),
        controller::DEFAULT_CONCURRENCY,
        controller::DEFAULT_MAX_HOLD,
        cluster,
    )
    .await;
    tokio::spawn(scope.run())
}

/// The names of a Deployment's init containers, in order.
pub fn init_names(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// What the operator could have changed in a Deployment: its generation (any spec change), its
/// spec, its `sidecar.dev/` annotations, and the operator's own field-management entries (their
/// time stamps move with every write, even one that changes nothing).
pub fn operator_written(d: &Deployment) -> serde_json::Value {
    let annotations: std::collections::BTreeMap<&String, &String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("sidecar.dev/"))
        .collect();
    let own: Vec<_> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(controller::FIELD_MANAGER))
        .collect();
    json!({
        "generation": d.metadata.generation,
        "spec": d.spec,
        "annotations": annotations,
        "managedFields": own,
    })
}

pub fn managers(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// The operator's Events in `namespace`; other components' (kube-controller-manager's) are left
/// out.
pub async fn operator_events(client: &Client, namespace: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(sidecar_operator::controller::FIELD_MANAGER))
        .collect()
}

/// Every Event write of the operator in `namespace` so far: one per Event created, plus one per
/// repeat patched into an Event's series.
pub async fn event_writes(client: &Client, namespace: &str) -> usize {
    operator_events(client, namespace)
        .await
        .iter()
        .map(|e| {
            e.series
                .as_ref()
                .map_or(1, |s| usize::try_from(s.count).unwrap_or(1))
        })
        .sum()
}
