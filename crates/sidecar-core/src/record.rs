//! The bookkeeping annotation: what the operator injected into a Deployment.
//!
//! Removal must never touch what the Deployment's owner wrote, even something of the same shape,
//! so the engine does not guess: it records the names, paths and keys it added in the
//! `sidecar.dev/injected` annotation on the Deployment (not on the pod template, so that the
//! bookkeeping never rolls the pods) and strips exactly those before every render.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use serde::{Deserialize, Serialize};
use sidecar_api::INJECTED_ANNOTATION;

/// The annotation could not be read, so the engine cannot tell what it injected earlier.
#[derive(Debug, thiserror::Error)]
#[error(
    "annotation {INJECTED_ANNOTATION} is not a record this operator understands (was it edited by hand?): {source}"
)]
pub struct RecordError {
    #[source]
    source: serde_json::Error,
}

/// What one render injected. Serialised as compact JSON with sorted keys, so that an unchanged
/// injection always produces the same annotation value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectionRecord {
    /// Policies applied, in injection order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Names of injected init containers and sidecars (`spec.template.spec.initContainers`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub init_containers: BTreeSet<String>,
    /// Names of injected pod volumes.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub volumes: BTreeSet<String>,
    /// Mount paths added, by app container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, BTreeSet<String>>,
    /// Env var names added, by app container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, BTreeSet<String>>,
    /// Pod template label keys added.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pod_labels: BTreeSet<String>,
    /// Pod template annotation keys added.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pod_annotations: BTreeSet<String>,
    /// Whether `shareProcessNamespace` was set by the operator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_process_namespace: bool,
    /// Fingerprint (FNV-1a, hex) of the injected content. Names alone do not show that a policy
    /// changed a sidecar's image or dropped one of its fields; this does, whatever defaults the
    /// API server added to the stored object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

impl InjectionRecord {
    /// The record on `deployment`, if it has one.
    pub fn read(deployment: &Deployment) -> Result<Option<Self>, RecordError> {
        deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED_ANNOTATION))
            .map(|value| serde_json::from_str(value).map_err(|source| RecordError { source }))
            .transpose()
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        // Serialising plain strings, sets and maps cannot fail; fall back to an empty record
        // rather than panic.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Whether nothing was injected.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.init_containers.is_empty()
            && self.volumes.is_empty()
            && self.mounts.is_empty()
            && self.env.is_empty()
            && self.pod_labels.is_empty()
            && self.pod_annotations.is_empty()
            && !self.share_process_namespace
    }

    /// Removes from `deployment` everything this record says was injected, and the record itself.
    /// Lists and maps left empty are removed, as the API server would omit them.
    pub fn strip(&self, deployment: &mut Deployment) {
        remove_key(&mut deployment.metadata.annotations, INJECTED_ANNOTATION);
        let template = &mut deployment.spec.template;
        for key in &self.pod_labels {
            remove_key(&mut template.metadata.get_or_insert_default().labels, key);
        }
        for key in &self.pod_annotations {
            remove_key(&mut template.metadata.get_or_insert_default().annotations, key);
        }
        if template
            .metadata
            .as_ref()
            .is_some_and(|m| m == &Default::default())
        {
            template.metadata = None;
        }
        let Some(pod) = template.spec.as_mut() else {
            return;
        };
        retain(&mut pod.init_containers, |c| {
            !self.init_containers.contains(&c.name)
        });
        retain(&mut pod.volumes, |v| !self.volumes.contains(&v.name));
        if self.share_process_namespace {
            pod.share_process_namespace = None;
        }
        for container in &mut pod.containers {
            if let Some(paths) = self.mounts.get(&container.name) {
                retain(&mut container.volume_mounts, |m| !paths.contains(&m.mount_path));
            }
            if let Some(names) = self.env.get(&container.name) {
                retain(&mut container.env, |e| !names.contains(&e.name));
            }
        }
    }

    /// Writes this record onto `deployment`, or removes the annotation when nothing was injected.
    pub fn write(&self, deployment: &mut Deployment) {
        if self.is_empty() {
            remove_key(&mut deployment.metadata.annotations, INJECTED_ANNOTATION);
        } else {
            deployment
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(INJECTED_ANNOTATION.to_owned(), self.to_annotation());
        }
    }
}

fn retain<T>(list: &mut Option<Vec<T>>, keep: impl FnMut(&T) -> bool) {
    if let Some(items) = list {
        items.retain(keep);
        if items.is_empty() {
            *list = None;
        }
    }
}

fn remove_key(map: &mut Option<BTreeMap<String, String>>, key: &str) {
    if let Some(entries) = map {
        entries.remove(key);
        if entries.is_empty() {
            *map = None;
        }
    }
}
