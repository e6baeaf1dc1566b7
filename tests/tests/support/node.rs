//! The test acting as the node. A throwaway control plane has no scheduler and no kubelet, so a
//! Pod that kube-controller-manager creates stays Pending and no Deployment ever becomes
//! Available or completes a rollout. This task stands in for the kubelet: it marks every Pod of a
//! namespace Running and Ready through the status subresource, which is all the ReplicaSet
//! controller reads (a Pod is available once its Ready condition is True, for
//! `minReadySeconds`, 0 here). Pods are never bound to a node: the API server deletes an unbound
//! Pod at once, so a scaled-down ReplicaSet's Pods go away without a kubelet confirming it; one
//! left Terminating all the same is deleted with grace period 0.
//!
//! A Pod with an image tagged `broken` (see `is_broken`) is left Pending, as if its image could
//! not be pulled: its Deployment's rollout never completes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// An image this node cannot run, for the test that rolls out a failing revision.
pub const BROKEN_IMAGE: &str = "proxy:broken";

/// How often the node looks at the namespace's Pods.
const INTERVAL: Duration = Duration::from_millis(150);

/// The node's task; dropping it stops the node.
pub struct Node(tokio::task::JoinHandle<()>);

impl Drop for Node {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts acting as the node for the Pods of `namespace`.
pub fn start_node(client: &Client, namespace: &str) -> Node {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Node(tokio::spawn(async move {
        // Pod IPs, one per Pod this node started; the Deployment controller does not read them,
        // but a Running Pod without one would be a Pod no kubelet reports.
        let mut ips: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            // Errors (a Pod deleted meanwhile, a conflict) are retried on the next look.
            if let Ok(listed) = pods.list(&ListParams::default()).await {
                for pod in &listed.items {
                    let next = u32::try_from(ips.len()).unwrap_or(0) + 1;
                    let ip = *ips.entry(pod.uid().unwrap_or_default()).or_insert(next);
                    let _ = tend(&pods, pod, ip).await;
                }
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }))
}

/// Whether this node cannot run `image`.
pub fn is_broken(image: &str) -> bool {
    image.rsplit_once(':').is_some_and(|(_, tag)| tag == "broken")
}

/// Does for one Pod what a kubelet would have done by now.
async fn tend(pods: &Api<Pod>, pod: &Pod, ip: u32) -> kube::Result<()> {
    let name = pod.name_any();
    if pod.metadata.deletion_timestamp.is_some() {
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await?;
        return Ok(());
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let images = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if is_ready(pod) || images.clone().any(|c| c.image.as_deref().is_some_and(is_broken)) {
        return Ok(());
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let ip = format!("10.244.{}.{}", (ip / 250) % 250, ip % 250 + 1);
    let running = |c: &Container, sidecar: bool| {
        json!({
            "name": c.name, "image": c.image, "imageID": "", "restartCount": 0,
            "ready": sidecar, "started": sidecar,
            "state": if sidecar {
                json!({"running": {"startedAt": now}})
            } else {
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}})
            },
        })
    };
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| running(c, c.restart_policy.as_deref() == Some("Always")))
        .collect();
    let app: Vec<Value> = spec.containers.iter().map(|c| running(c, true)).collect();
    let status = json!({
        "status": {
            "phase": "Running",
            "startTime": now,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                condition("PodScheduled"),
                condition("PodReadyToStartContainers"),
                condition("Initialized"),
                condition("ContainersReady"),
                condition("Ready"),
            ],
            "initContainerStatuses": init,
            "containerStatuses": app,
        },
    });
    let node = PatchParams {
        field_manager: Some("e2e-node".into()),
        ..PatchParams::default()
    };
    pods.patch_status(&name, &node, &Patch::Merge(&status)).await?;
    Ok(())
}

/// Whether the Pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}
