//! End-to-end: the bad-policy corpus (`tests/corpus/`) against a real API server and a running
//! operator.
//!
//! - `schema` and `cel` cases are sent as written (YAML, strict field validation, as `kubectl
//!   create`) and must be refused at admission with the message their header pins; this is also
//!   what keeps the offline admission in `support::admission` honest.
//! - `engine` cases are admitted; with the operator running (every namespace, default guardrails)
//!   the policy's status conditions must carry the pinned message, and the case's Deployments
//!   must not change at all (generation, spec, `sidecar.dev/` annotations, the operator's field
//!   ownership).
//!
//! How the API server is chosen: see `e2e.rs`. Nothing here asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use sidecar_core::Guardrails;

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod corpus;
    pub mod operator;
    pub mod requests;
}
use support::cluster::{TestNamespace, clean_up, cluster, dump, install_crds, wait_for_quietly};
use support::corpus::{Case, Layer, cases};
use support::operator::{operator_written, start_cluster_wide};
use support::requests::{create_yaml, policy_collection};

#[tokio::test]
async fn schema_and_cel_cases_are_refused_at_admission_with_their_message() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crds(&client).await;
    let ns = TestNamespace::create(&cluster, "corpus-admission").await;
    let mut failures = Vec::new();
    let mut refused = 0;
    for case in cases().iter().filter(|c| c.layer != Layer::Engine) {
        let collection = policy_collection(case.kind(), &ns.name);
        match create_yaml(&client, &collection, &case.policy_text).await {
            Ok(()) => failures.push(format!("{}: admitted", case.path)),
            Err((_, message)) if message.contains(&case.expect) => refused += 1,
            Err((code, message)) => failures.push(format!(
                "{}: expected {:?}, the API server answered {code}: {message}",
                case.path, case.expect
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("e2e_corpus: {refused} schema and CEL cases refused at admission with their message");
}

#[tokio::test]
async fn engine_cases_are_admitted_reported_in_status_and_change_no_deployment() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crds(&client).await;
    let engine: Vec<Case> = cases().into_iter().filter(|c| c.layer == Layer::Engine).collect();
    let _cleanup = ClusterPolicies {
        names: engine
            .iter()
            .flat_map(|c| c.documents.iter().flatten())
            .filter(|d| d["kind"] == "ClusterSidecarPolicy")
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
            .collect(),
        kubeconfig: cluster.shared_kubeconfig.clone(),
    };

    // Everything is in place before the operator starts, so that what the Deployments are now is
    // what they must stay.
    let mut namespaces = Vec::new();
    let mut before = Vec::new();
    for (i, case) in engine.iter().enumerate() {
        let ns = TestNamespace::create(&cluster, &format!("corpus-{i}")).await;
        before.push(set_up(&client, case, &ns.name).await);
        namespaces.push(ns);
    }
    let _operator = start_cluster_wide(&client, Guardrails::default()).await;

    let mut failures = Vec::new();
    for ((case, ns), deployments) in engine.iter().zip(&namespaces).zip(&before) {
        let api = policy_api(&client, case.kind(), &ns.name);
        let name = case.name();
        let reported = wait_for_quietly(|| async {
            let policy = api.get(&name).await.ok()?;
            conditions(&policy.data)
                .iter()
                .any(|(_, message)| message.contains(&case.expect))
                .then_some(())
        })
        .await;
        if !reported {
            let status = api.get(&name).await.map(|p| p.data["status"].clone());
            failures.push(format!(
                "{}: no condition says {:?}; status: {status:?}\n{}",
                case.path,
                case.expect,
                dump(&client, &ns.name).await
            ));
            continue;
        }
        let live = Api::<Deployment>::namespaced(client.clone(), &ns.name);
        for (deployment, written) in deployments {
            let now = operator_written(&live.get(deployment).await.unwrap());
            if &now != written {
                failures.push(format!(
                    "{}: Deployment {deployment} changed:\nbefore {written:#}\nafter {now:#}",
                    case.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!(
        "e2e_corpus: {} engine cases admitted, reported in status, {} Deployments unchanged",
        engine.len(),
        before.iter().map(Vec::len).sum::<usize>()
    );
}

/// The cases' ClusterSidecarPolicies, deleted at the end on a shared cluster (a throwaway
/// control plane goes away whole); namespaced objects go with their namespaces.
struct ClusterPolicies {
    names: Vec<String>,
    kubeconfig: Option<String>,
}

impl Drop for ClusterPolicies {
    fn drop(&mut self) {
        let Some(kubeconfig) = self.kubeconfig.clone() else {
            return;
        };
        let names = std::mem::take(&mut self.names);
        clean_up(kubeconfig, |client| async move {
            let api = policy_api(&client, "ClusterSidecarPolicy", "");
            for name in names {
                let _ = api.delete(&name, &Default::default()).await;
            }
        });
    }
}

/// Creates the case in `namespace`: its bad policy as written (it must be admitted), then the
/// rest. Returns each Deployment's name and what the operator could change of it.
async fn set_up(client: &kube::Client, case: &Case, namespace: &str) -> Vec<(String, Value)> {
    let mut deployments = Vec::new();
    let owner = PatchParams::apply("e2e-corpus");
    for (i, document) in case.documents.as_ref().unwrap().iter().enumerate() {
        let mut document = document.clone();
        let kind = document["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => {
                // The case's namespace labels, on this run's namespace.
                let labels = document["metadata"]["labels"].clone();
                Api::<Namespace>::all(client.clone())
                    .patch(
                        namespace,
                        &owner,
                        &Patch::Apply(json!({
                            "apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": namespace, "labels": labels},
                        })),
                    )
                    .await
                    .unwrap();
                continue;
            }
            "ClusterSidecarPolicy" => confine(&mut document, namespace),
            _ => document["metadata"]["namespace"] = json!(namespace),
        }
        if i == 0 {
            // The policy under test goes in through admission as its author wrote it (a cluster
            // policy confined to this namespace, see `confine`).
            let confined = serde_json::to_string(&document).unwrap();
            let collection = policy_collection(&kind, namespace);
            let text = if kind == "ClusterSidecarPolicy" {
                &confined
            } else {
                &case.policy_text
            };
            if let Err((code, message)) = create_yaml(client, &collection, text).await {
                panic!(
                    "{}: an engine case must be admitted, got {code}: {message}",
                    case.path
                );
            }
            continue;
        }
        let name = document["metadata"]["name"].as_str().unwrap().to_owned();
        if kind == "Deployment" {
            let api = Api::<Deployment>::namespaced(client.clone(), namespace);
            let stored = api.patch(&name, &owner, &Patch::Apply(&document)).await.unwrap();
            deployments.push((name, operator_written(&stored)));
        } else {
            policy_api(client, &kind, namespace)
                .patch(&name, &owner, &Patch::Apply(&document))
                .await
                .unwrap_or_else(|e| panic!("{}: {kind} {name}: {e}", case.path));
        }
    }
    deployments
}

/// A ClusterSidecarPolicy of a case applies to that case's namespace only: the cases share one
/// cluster. (Their names differ from case to case.)
fn confine(policy: &mut Value, namespace: &str) {
    let selector = &mut policy["spec"]["namespaceSelector"];
    if selector["matchLabels"].is_null() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"]["kubernetes.io/metadata.name"] = json!(namespace);
}

fn policy_api(client: &kube::Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("sidecar.dev", "v1alpha1", kind));
    match kind {
        "ClusterSidecarPolicy" => Api::all_with(client.clone(), &resource),
        _ => Api::namespaced_with(client.clone(), namespace, &resource),
    }
}

/// `(type, message)` of each status condition.
fn conditions(object: &Value) -> Vec<(String, String)> {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
