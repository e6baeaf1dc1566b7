//! The bookkeeping annotation: what the operator injected into a Deployment, policy by policy.
//!
//! Removal must never touch what the Deployment's owner wrote, even something of the same shape,
//! so the engine does not guess: it records the names, paths and keys it added in the
//! `sidecar.dev/injected` annotation on the Deployment (not on the pod template, so that the
//! bookkeeping never rolls the pods) and strips exactly those before every render.
//!
//! The record is versioned. Version 1 has one entry per policy: its name, the revision of the
//! policy it was rendered from, and what it added. Fields this release does not know are
//! ignored, so a replica running an older release still recognises what it owns when a newer
//! one has written the record. Records without a version come from the first release (v0): they
//! list what was injected for all policies together; they are read, used for stripping, and
//! replaced by a version 1 record on the next write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sidecar_api::INJECTED_ANNOTATION;

/// The version this release writes.
pub const RECORD_VERSION: u32 = 1;

/// The annotation could not be read, so the engine cannot tell what it injected earlier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "annotation {INJECTED_ANNOTATION} is not a record this operator understands (was it edited by hand?): {reason}"
)]
pub struct RecordError {
    reason: String,
}

impl RecordError {
    pub(crate) fn new(reason: String) -> Self {
        RecordError { reason }
    }
}

/// What renders injected into one Deployment: one entry per policy, in injection order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct InjectionRecord {
    /// The policies applied, in injection order, each with what it added.
    pub policies: Vec<PolicyEntry>,
    /// What a record of the first release (v0) listed for all its policies together. Such a
    /// record is only ever read: it is stripped like any other, and the next write replaces it.
    pub legacy: Option<Injected>,
}

/// One policy's part of the record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// The SidecarPolicy's name.
    pub name: String,
    /// The revision of the policy this entry was rendered from (see `revision::hash`). Empty for
    /// entries migrated from a v0 record, which did not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// What this policy added.
    #[serde(flatten)]
    pub injected: Injected,
}

/// Names, paths and keys added to a pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Injected {
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
}

impl Injected {
    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self == &Injected::default()
    }

    /// Adds everything `other` lists.
    pub fn extend(&mut self, other: &Injected) {
        self.init_containers.extend(other.init_containers.iter().cloned());
        self.volumes.extend(other.volumes.iter().cloned());
        for (container, paths) in &other.mounts {
            let entry = self.mounts.entry(container.clone()).or_default();
            entry.extend(paths.iter().cloned());
        }
        for (container, names) in &other.env {
            let entry = self.env.entry(container.clone()).or_default();
            entry.extend(names.iter().cloned());
        }
        self.pod_labels.extend(other.pod_labels.iter().cloned());
        self.pod_annotations.extend(other.pod_annotations.iter().cloned());
        self.share_process_namespace |= other.share_process_namespace;
    }
}

/// Version 1 on the wire. Unknown fields are ignored (no `deny_unknown_fields`): a newer
/// release may add some, and this one must still read what it needs.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireV1 {
    version: u32,
    #[serde(default)]
    policies: Vec<PolicyEntry>,
}

/// The first release's record: policy names and what they added together, and a content
/// fingerprint that version 1 replaces with per-policy revisions.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireV0 {
    #[serde(default)]
    policies: Vec<String>,
    #[serde(flatten)]
    injected: Injected,
}

impl InjectionRecord {
    /// The policies this record lists, with their revisions, in injection order.
    pub fn carried(&self) -> Vec<(String, String)> {
        self.policies
            .iter()
            .map(|p| (p.name.clone(), p.revision.clone()))
            .collect()
    }

    /// The record on `deployment`, if it has one.
    pub fn read(deployment: &Deployment) -> Result<Option<Self>, RecordError> {
        deployment
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED_ANNOTATION))
            .map(|value| Self::parse(value))
            .transpose()
    }

    /// Parses an annotation value of any version this release understands.
    pub fn parse(value: &str) -> Result<Self, RecordError> {
        let error = |reason: String| RecordError { reason };
        let json: Value = serde_json::from_str(value).map_err(|e| error(e.to_string()))?;
        if json.get("version").is_some() {
            let wire: WireV1 = serde_json::from_value(json).map_err(|e| error(e.to_string()))?;
            if wire.version == 0 {
                return Err(error("version 0 is never written with a version field".into()));
            }
            Ok(InjectionRecord {
                policies: wire.policies,
                legacy: None,
            })
        } else {
            let wire: WireV0 = serde_json::from_value(json).map_err(|e| error(e.to_string()))?;
            let policies = wire
                .policies
                .into_iter()
                .map(|name| PolicyEntry {
                    name,
                    ..PolicyEntry::default()
                })
                .collect();
            Ok(InjectionRecord {
                policies,
                legacy: Some(wire.injected),
            })
        }
    }

    /// The annotation value (always the current version).
    pub fn to_annotation(&self) -> String {
        let wire = WireV1 {
            version: RECORD_VERSION,
            policies: self.policies.clone(),
        };
        // Serialising plain strings, sets and maps cannot fail; fall back to an empty record
        // rather than panic.
        serde_json::to_string(&wire).unwrap_or_else(|_| format!("{{\"version\":{RECORD_VERSION}}}"))
    }

    /// Whether nothing was injected and no policy applied.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.legacy.as_ref().is_none_or(Injected::is_empty)
    }

    /// Whether this record comes from the first release and must be rewritten.
    pub fn is_legacy(&self) -> bool {
        self.legacy.is_some()
    }

    /// The names of the policies applied, in injection order.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| p.name.as_str())
    }

    /// The entry of policy `name`, if it was applied.
    pub fn entry(&self, name: &str) -> Option<&PolicyEntry> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Everything injected, whichever policy added it.
    pub fn injected(&self) -> Injected {
        let mut all = self.legacy.clone().unwrap_or_default();
        for entry in &self.policies {
            all.extend(&entry.injected);
        }
        all
    }

    /// Removes from `deployment` everything this record says was injected, and the record itself.
    /// Lists and maps left empty are removed, as the API server would omit them.
    pub fn strip(&self, deployment: &mut Deployment) {
        remove_key(&mut deployment.metadata.annotations, INJECTED_ANNOTATION);
        let injected = self.injected();
        let template = &mut deployment.spec.template;
        for key in &injected.pod_labels {
            remove_key(&mut template.metadata.get_or_insert_default().labels, key);
        }
        for key in &injected.pod_annotations {
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
            !injected.init_containers.contains(&c.name)
        });
        retain(&mut pod.volumes, |v| !injected.volumes.contains(&v.name));
        if injected.share_process_namespace {
            pod.share_process_namespace = None;
        }
        for container in &mut pod.containers {
            if let Some(paths) = injected.mounts.get(&container.name) {
                retain(&mut container.volume_mounts, |m| !paths.contains(&m.mount_path));
            }
            if let Some(names) = injected.env.get(&container.name) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_round_trips_and_tolerates_unknown_fields() {
        let record = InjectionRecord {
            policies: vec![PolicyEntry {
                name: "shipper".into(),
                revision: "0123456789".into(),
                injected: Injected {
                    init_containers: ["log-forwarder".to_owned()].into(),
                    mounts: [("web".to_owned(), ["/logs".to_owned()].into())].into(),
                    ..Injected::default()
                },
            }],
            legacy: None,
        };
        let text = record.to_annotation();
        assert_eq!(
            text,
            r#"{"version":1,"policies":[{"name":"shipper","revision":"0123456789","initContainers":["log-forwarder"],"mounts":{"web":["/logs"]}}]}"#
        );
        assert_eq!(InjectionRecord::parse(&text).unwrap(), record);

        // What a newer release might write: a higher version, new fields at every level.
        let newer = r#"{"version":2,"policies":[{"name":"shipper","kind":"SidecarPolicy","revision":"0123456789","initContainers":["log-forwarder"],"mounts":{"web":["/logs"]},"hold":true}],"rollout":{}}"#;
        assert_eq!(InjectionRecord::parse(newer).unwrap(), record);
    }

    #[test]
    fn a_v0_record_is_read_as_legacy() {
        let v0 = r#"{"policies":["a","b"],"initContainers":["x","y"],"volumes":["v"],"fingerprint":"17fc06783358861d"}"#;
        let record = InjectionRecord::parse(v0).unwrap();
        assert!(record.is_legacy());
        assert_eq!(record.policy_names().collect::<Vec<_>>(), ["a", "b"]);
        assert!(
            record
                .policies
                .iter()
                .all(|p| p.revision.is_empty() && p.injected.is_empty())
        );
        let all = record.injected();
        assert_eq!(all.init_containers, ["x".to_owned(), "y".to_owned()].into());
        assert_eq!(all.volumes, ["v".to_owned()].into());
        // Written back, it is a version 1 record without the legacy part.
        assert!(record.to_annotation().starts_with(r#"{"version":1,"#));
    }

    #[test]
    fn damaged_records_are_errors() {
        for bad in [
            "not json",
            r#"{"version":"one"}"#,
            r#"{"version":0}"#,
            r#"{"policies":"a"}"#,
            "[]",
        ] {
            assert!(InjectionRecord::parse(bad).is_err(), "{bad}");
        }
    }
}
