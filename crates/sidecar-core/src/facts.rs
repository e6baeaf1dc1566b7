//! What the engine needs to know of a Deployment, without the Deployment.
//!
//! Planning an injection needs only the names, ports, paths and keys that must stay unique in the
//! owner's pod template; checking that a stored Deployment already carries a plan needs only
//! what the operator owns in it. [`DeploymentFacts`] keeps exactly that, so that the controller
//! can cache thousands of Deployments in a few megabytes (a k8s-openapi `Container` alone is
//! 2.3 KB before its heap parts) and plan against the cache without cloning a Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ContainerPort, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply::owned_spec;
use crate::record::{InjectionRecord, RecordError};

/// Native sidecars are init containers with this restart policy (KEP-753).
pub(crate) const SIDECAR_RESTART_POLICY: &str = "Always";

/// A container port as the API server keys it: number and protocol (TCP when unset).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Port {
    #[serde(rename = "n")]
    pub number: i32,
    #[serde(rename = "p", default = "tcp", skip_serializing_if = "is_tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".to_owned()
}

fn is_tcp(protocol: &String) -> bool {
    protocol == "TCP"
}

impl Port {
    fn of(port: &ContainerPort) -> Self {
        Port {
            number: port.container_port,
            protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
        }
    }
}

/// One of the owner's app containers (`spec.template.spec.containers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppContainerFacts {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Mount paths, in the container's order.
    #[serde(rename = "m", default, skip_serializing_if = "Vec::is_empty")]
    pub mount_paths: Vec<String>,
    /// Env var names, in the container's order.
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// One of the owner's init containers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InitContainerFacts {
    #[serde(rename = "n")]
    pub name: String,
    /// A native sidecar (`restartPolicy: Always`): it runs beside the app, so its ports count.
    #[serde(rename = "s", default, skip_serializing_if = "std::ops::Not::not")]
    pub sidecar: bool,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// The owner's pod template, reduced to what must stay unique in it. (Serialised with short
/// names: the controller caches thousands of these as text.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodFacts {
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<AppContainerFacts>,
    #[serde(rename = "i", default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<InitContainerFacts>,
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral_containers: Vec<String>,
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(rename = "l", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "a", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,
    /// The owner's CPU and memory requests, by resource name, for the autoscaler warnings (see
    /// `crate::autoscaling`).
    #[serde(rename = "r", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Requested>,
}

/// The resources a HorizontalPodAutoscaler's `Resource` metrics measure in practice.
pub const AUTOSCALED_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// What the owner's containers request of one resource, as a HorizontalPodAutoscaler counts it:
/// app containers and native sidecars (plain init containers do not run beside them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requested {
    /// The sum, in thousandths of the unit (millicores; thousandths of a byte).
    #[serde(rename = "t", default)]
    pub total: u64,
    /// The first counted container that requests none: an HPA cannot compute a utilization.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub without: Option<String>,
    /// The pod-level request (`spec.resources.requests`): an HPA measures against it instead.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pod_level: Option<u64>,
}

impl Requested {
    /// What `containers` request of `resource`, with `pod_level` requests if the pod sets them.
    fn of<'c>(
        resource: &str,
        containers: impl Iterator<Item = &'c Container>,
        pod_level: Option<&BTreeMap<String, Quantity>>,
    ) -> Self {
        let mut requested = Requested {
            pod_level: pod_level
                .and_then(|r| r.get(resource))
                .and_then(|q| crate::quantity::milli(&q.0)),
            ..Requested::default()
        };
        for container in containers {
            let request = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| crate::quantity::milli(&q.0));
            match request {
                Some(amount) => requested.total = requested.total.saturating_add(amount),
                None => {
                    requested.without.get_or_insert_with(|| container.name.clone());
                }
            }
        }
        requested
    }
}

impl PodFacts {
    /// The facts of `template` as it is.
    pub fn of(template: &PodTemplateSpec) -> Self {
        Self::without(template, &crate::record::Injected::default())
    }

    /// The facts of `template` without what `injected` lists: the owner's part of it.
    fn without(template: &PodTemplateSpec, injected: &crate::record::Injected) -> Self {
        let metadata = template.metadata.as_ref();
        let without_keys = |map: Option<&BTreeMap<String, String>>,
                            keys: &std::collections::BTreeSet<String>| {
            map.into_iter()
                .flatten()
                .filter(|(k, _)| !keys.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut facts = PodFacts {
            labels: without_keys(metadata.and_then(|m| m.labels.as_ref()), &injected.pod_labels),
            annotations: without_keys(
                metadata.and_then(|m| m.annotations.as_ref()),
                &injected.pod_annotations,
            ),
            ..PodFacts::default()
        };
        let Some(pod) = &template.spec else {
            return facts;
        };
        facts.containers = pod
            .containers
            .iter()
            .map(|c| {
                let paths = injected.mounts.get(&c.name);
                let names = injected.env.get(&c.name);
                AppContainerFacts {
                    name: c.name.clone(),
                    ports: ports(c),
                    mount_paths: c
                        .volume_mounts
                        .iter()
                        .flatten()
                        .filter(|m| !paths.is_some_and(|p| p.contains(&m.mount_path)))
                        .map(|m| m.mount_path.clone())
                        .collect(),
                    env: c
                        .env
                        .iter()
                        .flatten()
                        .filter(|e| !names.is_some_and(|n| n.contains(&e.name)))
                        .map(|e| e.name.clone())
                        .collect(),
                }
            })
            .collect();
        facts.init_containers = pod
            .init_containers
            .iter()
            .flatten()
            .filter(|c| !injected.init_containers.contains(&c.name))
            .map(|c| InitContainerFacts {
                name: c.name.clone(),
                sidecar: c.restart_policy.as_deref() == Some(SIDECAR_RESTART_POLICY),
                ports: ports(c),
            })
            .collect();
        facts.ephemeral_containers = pod
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        facts.volumes = pod
            .volumes
            .iter()
            .flatten()
            .filter(|v| !injected.volumes.contains(&v.name))
            .map(|v| v.name.clone())
            .collect();
        facts.share_process_namespace = pod
            .share_process_namespace
            .filter(|_| !injected.share_process_namespace);
        let native_sidecars = pod.init_containers.iter().flatten().filter(|c| {
            c.restart_policy.as_deref() == Some(SIDECAR_RESTART_POLICY)
                && !injected.init_containers.contains(&c.name)
        });
        let pod_level = pod.resources.as_ref().and_then(|r| r.requests.as_ref());
        let counted: Vec<&Container> = pod.containers.iter().chain(native_sidecars).collect();
        facts.requests = AUTOSCALED_RESOURCES
            .iter()
            .map(|&resource| {
                let requested = Requested::of(resource, counted.iter().copied(), pod_level);
                (resource.to_owned(), requested)
            })
            .collect();
        facts
    }
}

fn ports(container: &Container) -> Vec<Port> {
    container.ports.iter().flatten().map(Port::of).collect()
}

/// What the engine needs of a stored Deployment: its record, the owner's part of its pod
/// template, and what the operator owns in it as the API server stored it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentFacts {
    /// The `sidecar.dev/injected` record, if there is one.
    pub record: Result<Option<InjectionRecord>, RecordError>,
    /// The pod template without what the record lists. Meaningless if the record is unreadable.
    pub owner: PodFacts,
    /// The names of all init containers, in the stored order.
    pub init_order: Vec<String>,
    /// The fields the record says the operator owns, as stored (server defaults included): the
    /// `spec` of the apply configuration that would own exactly them, as compact JSON. Empty
    /// without a record. Kept as text: it is read only to check a plan, and text is the
    /// smallest form to cache.
    pub owned: Box<str>,
}

impl DeploymentFacts {
    /// The policies the Deployment carries, with their revisions, from its record (none when it
    /// has no record or one that does not parse).
    pub fn carried(&self) -> Vec<(String, String)> {
        match &self.record {
            Ok(Some(record)) => record.carried(),
            _ => Vec::new(),
        }
    }

    /// The facts of `deployment`.
    pub fn of(deployment: &Deployment) -> Self {
        Self::of_record(deployment, InjectionRecord::read(deployment))
    }

    /// The facts of `deployment`, whose record annotation reads as `record`.
    fn of_record(deployment: &Deployment, record: Result<Option<InjectionRecord>, RecordError>) -> Self {
        let template = &deployment.spec.template;
        let injected = match &record {
            Ok(Some(record)) => record.injected(),
            _ => crate::record::Injected::default(),
        };
        let owned = match &record {
            Ok(Some(_)) => owned_spec(template, &injected)
                .map(|spec| spec.to_string())
                .unwrap_or_default()
                .into_boxed_str(),
            _ => Box::default(),
        };
        DeploymentFacts {
            owner: PodFacts::without(template, &injected),
            init_order: crate::apply::init_container_names(deployment)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            owned,
            record,
        }
    }

    /// `deployment`'s facts in a compact, self-contained text form: what a cache of thousands of
    /// Deployments keeps, expanded with [`DeploymentFacts::expand`] when a Deployment is planned.
    /// It keeps the record annotation as written (a record of the first release must still read
    /// as one).
    pub fn compact(deployment: &Deployment) -> String {
        let annotation = deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(sidecar_api::INJECTED_ANNOTATION));
        let record = annotation.map(|text| InjectionRecord::parse(text)).transpose();
        let facts = Self::of_record(deployment, record);
        let compact = Compact {
            owner: facts.owner,
            record: annotation.cloned(),
            init_order: facts.init_order,
            owned: facts.owned.into(),
        };
        serde_json::to_string(&compact).unwrap_or_default()
    }

    /// The facts a [`DeploymentFacts::compact`] text holds. Text that does not read (it never
    /// happens: the cache writes it) gives facts whose record is unreadable, so the Deployment is
    /// left alone, never stripped.
    pub fn expand(compact: &str) -> Self {
        match serde_json::from_str::<Compact>(compact) {
            Ok(compact) => DeploymentFacts {
                record: compact.record.as_deref().map(InjectionRecord::parse).transpose(),
                owner: compact.owner,
                init_order: compact.init_order,
                owned: compact.owned.into_boxed_str(),
            },
            Err(e) => DeploymentFacts {
                record: Err(RecordError::new(format!("the cached facts do not read: {e}"))),
                owner: PodFacts::default(),
                init_order: Vec::new(),
                owned: Box::default(),
            },
        }
    }

    /// The stored owned fields, parsed (`Value::Null` when there are none).
    pub(crate) fn owned_value(&self) -> Value {
        if self.owned.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.owned).unwrap_or(Value::Null)
    }
}

/// The text form of [`DeploymentFacts`], short field names because thousands are kept.
#[derive(Serialize, Deserialize)]
struct Compact {
    #[serde(rename = "o")]
    owner: PodFacts,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(rename = "i", default, skip_serializing_if = "Vec::is_empty")]
    init_order: Vec<String>,
    #[serde(rename = "w", default, skip_serializing_if = "String::is_empty")]
    owned: String,
}
