//! The objects of a run: namespaces, Deployments that look like real services (two app
//! containers with ports, env, probes, resources and mounts; three volumes; `replicas: 0`, so no
//! node is needed), and a policy that injects one sidecar with a volume and an env var, the shape
//! of the engine benchmark's.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;

use crate::Error;

/// The label every object of a run carries, so the progress watch sees only them.
pub const FLEET_LABEL: &str = "bench.sidecar.dev/fleet";
/// The field manager of the harness's own writes.
pub const OWNER: &str = "sidecar-bench";
/// The policy's name in every namespace.
pub const POLICY: &str = "mesh-agent";
/// The injected sidecar's name; a Deployment whose own container has it is refused.
pub const SIDECAR: &str = "mesh-agent";

const TEAMS: [&str; 5] = ["payments", "search", "identity", "catalog", "checkout"];

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {FLEET_LABEL: "scale"}}})
}

/// Deployment `i` of `namespace`. A `refused` one names its app container like the sidecar.
pub fn deployment(namespace: &str, i: usize, refused: bool) -> Value {
    let name = format!("svc-{i:05}");
    let labels = json!({"app": name, "team": TEAMS[i % TEAMS.len()], FLEET_LABEL: "scale"});
    let container = |cname: &str, port: i32| {
        json!({
            "name": cname,
            "image": format!("registry.example.com/{name}/{cname}:1.{}", i % 7),
            "ports": [{"name": format!("p{port}"), "containerPort": port}],
            "env": [{"name": "SERVICE", "value": name}, {"name": "PORT", "value": port.to_string()}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": port}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "tmp", "mountPath": "/tmp"}],
        })
    };
    let first = if refused { SIDECAR } else { "app" };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "team": TEAMS[i % TEAMS.len()]}},
                "spec": {
                    "containers": [container(first, 8080), container("worker", 8081)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": format!("{name}-config")}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "certs", "secret": {"secretName": format!("{name}-tls")}},
                    ],
                }
            }
        }
    })
}

/// A HorizontalPodAutoscaler for Deployment `i` of `namespace`, at 80% CPU utilization: the
/// operator watches it and warns of the sidecar's share of the pod's requests.
pub fn hpa(namespace: &str, i: usize) -> Value {
    let name = format!("svc-{i:05}");
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": {FLEET_LABEL: "scale"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        }
    })
}

/// The policy of `namespace`, injecting the sidecar at `image`.
pub fn policy(namespace: &str, image: &str) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": POLICY, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {FLEET_LABEL: "scale"}},
            "sidecars": [{
                "name": SIDECAR,
                "image": image,
                "ports": [{"containerPort": 9901}],
                "startupProbe": {"tcpSocket": {"port": 9901}},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                "volumeMounts": [{"name": "mesh-scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "mesh-scratch", "emptyDir": {}}],
            "appContainers": [{"env": [{"name": "MESH_ADMIN_PORT", "value": "9901"}]}],
        }
    })
}

/// The revision a policy of this content gets.
pub fn revision(policy: &Value) -> Result<String, Error> {
    let typed: SidecarPolicy = serde_json::from_value(policy.clone()).map_err(Error::Json)?;
    Ok(sidecar_core::revision::of(&typed))
}

/// Server-side applies `objects` as the harness, `concurrency` at a time.
pub async fn apply_all(client: &Client, objects: Vec<Value>, concurrency: usize) -> Result<(), Error> {
    futures::stream::iter(objects)
        .map(|object| apply(client, object))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

pub async fn apply(client: &Client, object: Value) -> Result<(), Error> {
    let params = PatchParams::apply(OWNER).force();
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
    match object["kind"].as_str() {
        Some("Namespace") => {
            Api::<Namespace>::all(client.clone())
                .patch(&name, &params, &Patch::Apply(&object))
                .await?;
        }
        Some("Deployment") => {
            Api::<Deployment>::namespaced(client.clone(), namespace.as_deref().unwrap_or_default())
                .patch(&name, &params, &Patch::Apply(&object))
                .await?;
        }
        Some("HorizontalPodAutoscaler") => {
            Api::<HorizontalPodAutoscaler>::namespaced(
                client.clone(),
                namespace.as_deref().unwrap_or_default(),
            )
            .patch(&name, &params, &Patch::Apply(&object))
            .await?;
        }
        Some("SidecarPolicy") => {
            Api::<SidecarPolicy>::namespaced(client.clone(), namespace.as_deref().unwrap_or_default())
                .patch(&name, &params, &Patch::Apply(&object))
                .await?;
        }
        other => return Err(Error::Setup(format!("cannot apply a {other:?}"))),
    }
    Ok(())
}

/// What the operator would send for `policy` (none: no policy) to each of `deployments`: the
/// bare client sends exactly this.
pub fn injections(
    deployments: &[Value],
    policy: Option<&Value>,
) -> Result<Vec<(String, String, Value)>, Error> {
    let policies: Vec<SidecarPolicy> = policy
        .map(|p| serde_json::from_value(p.clone()).map_err(Error::Json))
        .transpose()?
        .into_iter()
        .collect();
    let set = sidecar_core::PolicySet::new(&policies, &sidecar_core::Guardrails::default());
    deployments
        .iter()
        .map(|d| {
            let deployment: Deployment = serde_json::from_value(d.clone()).map_err(Error::Json)?;
            let facts = sidecar_core::DeploymentFacts::of(&deployment);
            let plan = set
                .plan(&deployment.metadata, &facts)
                .map_err(|refusal| Error::Setup(refusal.to_string()))?;
            Ok((
                deployment.namespace().unwrap_or_default(),
                deployment.name_any(),
                plan.patch,
            ))
        })
        .collect()
}
