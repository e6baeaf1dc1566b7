//! The node, played by the harness: the bench cluster has no kubelet (and no scheduler), so
//! without this no pod would ever run and no Deployment with replicas would become Available.
//!
//! For the pods of its namespaces, a background task does the two things a kubelet does that
//! kube-controller-manager waits for:
//!
//! - it marks each new pod Running and Ready through the pod status subresource: phase Running,
//!   the conditions PodScheduled, Initialized, ContainersReady and Ready True (with
//!   lastTransitionTime), a ready status for every container, startTime and a podIP. The
//!   ReplicaSet controller (v1.36) counts a pod that is not terminating as ready when its Ready
//!   condition is True, and as available when it is ready and, with `minReadySeconds: 0` (the
//!   fleet's), at once; nothing else of the status is read for that;
//! - it force-deletes (grace 0) any pod with a deletionTimestamp, since no kubelet finalizes it
//!   and the Deployment controller waits for old pods to go. On kube-apiserver v1.36.2 a pod this
//!   node marked Running is deleted gracefully although no node was ever assigned: a few dozen
//!   per 100-Deployment run get here (the others are gone before their turn: a 404, ignored).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Pods tended at once per namespace: a wave's pods become Ready together, as on real nodes.
const AT_ONCE: usize = 16;

/// What the node did, for the report.
#[derive(Debug, Default)]
struct Counts {
    ready: AtomicUsize,
    deleted: AtomicUsize,
    failed: AtomicUsize,
    /// The last pod IP handed out.
    ip: AtomicU32,
}

#[derive(Clone, Debug)]
pub struct Node {
    counts: Arc<Counts>,
}

impl Node {
    /// Starts tending the pods of `namespaces`, each through its own watch.
    pub fn start(client: &Client, namespaces: &[String]) -> Self {
        let counts = Arc::new(Counts::default());
        for namespace in namespaces {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let counts = counts.clone();
            tokio::spawn(async move {
                watcher::watcher(api.clone(), watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
                    .for_each_concurrent(AT_ONCE, |pod| {
                        let (api, counts) = (api.clone(), counts.clone());
                        async move {
                            if let Ok(pod) = pod {
                                tend(&api, &counts, &pod).await;
                            }
                        }
                    })
                    .await;
            });
        }
        Node { counts }
    }

    /// Pods marked Ready, pods force-deleted, and requests that failed.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} pods marked Ready, {} force-deleted, {} requests failed",
            c.ready.load(Ordering::Relaxed),
            c.deleted.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed)
        )
    }
}

/// Does for one pod what its kubelet would do next, if anything.
async fn tend(api: &Api<Pod>, counts: &Counts, pod: &Pod) {
    let (done, result) = if pod.metadata.deletion_timestamp.is_some() {
        (&counts.deleted, force_delete(api, pod).await)
    } else if is_running_and_ready(pod) {
        return;
    } else {
        let ip = counts.ip.fetch_add(1, Ordering::Relaxed) + 1;
        (&counts.ready, mark_ready(api, pod, ip).await)
    };
    match result {
        Ok(()) => {
            done.fetch_add(1, Ordering::Relaxed);
        }
        // Gone meanwhile: the pod's ReplicaSet was scaled down before it was tended.
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            if counts.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("node: pod {}: {e}", pod.name_any());
            }
        }
    }
}

fn is_running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn force_delete(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    api.delete(&pod.name_any(), &now).await.map(|_| ())
}

async fn mark_ready(api: &Api<Pod>, pod: &Pod, ip: u32) -> Result<(), kube::Error> {
    let now = serde_json::to_value(Time(Timestamp::now())).map_err(kube::Error::SerdeError)?;
    let status = ready_status(pod, &pod_ip(ip), &now);
    api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// Pod IP number `n`, in 10.244.0.0/14.
fn pod_ip(n: u32) -> String {
    let [_, b, c, d] = n.to_be_bytes();
    format!("10.{}.{c}.{d}", 244 + (b & 3))
}

/// The status a kubelet reports once every container of `pod` has started and is ready (a
/// merge patch: it replaces the lists whole).
fn ready_status(pod: &Pod, ip: &str, now: &Value) -> Value {
    let spec = pod.spec.as_ref();
    let containers: Vec<Value> = spec
        .map(|s| s.containers.iter().map(|c| running(c, now)).collect())
        .unwrap_or_default();
    let init: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| cs.iter().map(|c| init_status(c, now)).collect())
        .unwrap_or_default();
    let conditions: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .iter()
        .map(|kind| json!({"type": kind, "status": "True", "lastTransitionTime": now}))
        .collect();
    json!({"status": {
        "phase": "Running",
        "startTime": now,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": conditions,
        "containerStatuses": containers,
        "initContainerStatuses": init,
    }})
}

fn running(c: &Container, now: &Value) -> Value {
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image,
        "ready": true,
        "started": true,
        "restartCount": 0,
        "state": {"running": {"startedAt": now}},
    })
}

/// A sidecar (an init container that restarts always) runs; any other init container has run
/// to completion.
fn init_status(c: &Container, now: &Value) -> Value {
    if c.restart_policy.as_deref() == Some("Always") {
        return running(c, now);
    }
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image,
        "ready": true,
        "started": false,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_distinct_and_valid() {
        assert_eq!(pod_ip(1), "10.244.0.1");
        assert_eq!(pod_ip(256), "10.244.1.0");
        assert_eq!(pod_ip(65_536), "10.245.0.0");
    }

    #[test]
    fn a_ready_status_covers_every_container_and_condition() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "agent", "image": "a:1", "restartPolicy": "Always"},
                    {"name": "setup", "image": "s:1"},
                ],
                "containers": [{"name": "app", "image": "app:1"}],
            },
        }))
        .unwrap_or_default();
        let status = ready_status(&pod, "10.244.0.1", &json!("2026-12-02T00:00:00Z"));
        let status = &status["status"];
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["conditions"].as_array().map(Vec::len), Some(4));
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        assert!(status["initContainerStatuses"][0]["state"]["running"].is_object());
        assert!(status["initContainerStatuses"][1]["state"]["terminated"].is_object());
        assert!(!is_running_and_ready(&pod));
    }
}
