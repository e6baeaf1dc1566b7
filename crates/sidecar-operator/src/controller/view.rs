//! A Deployment as the controller caches it: what decisions read, and nothing else.
//!
//! A full `Deployment` from k8s-openapi is tens of kilobytes in memory once its containers and
//! volumes are decoded (a `Container` is 2.3 KB before its heap parts), and the watch cache holds
//! every Deployment of the cluster. [`DeploymentView`] decodes the Deployment from the watch and
//! keeps its identity, labels and opt-out annotation, and the engine's [`DeploymentFacts`] in
//! their compact text form (about a kilobyte; decoded, with their maps and small strings, they
//! take three or four times that), expanded only when the Deployment is planned, and of its
//! status only where its own rollout stands ([`Progress`]). The rest (the status' counts,
//! `managedFields`, the owner's containers, `last-applied-configuration`) is dropped before it
//! reaches the cache.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use sidecar_api::{HELD_FOR_ANNOTATION, INJECT_ANNOTATION};
use sidecar_core::DeploymentFacts;
use sidecar_core::rollout::{DeploymentState, Progress};
use sidecar_core::selector::LabelSet;

/// The cached form of a Deployment. Its `Deserialize` reads a whole Deployment and keeps only
/// this, so `Api<DeploymentView>` watches Deployments without caching them whole.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentView {
    /// Name, namespace, uid, resourceVersion, generation, and of the annotations only the opt-out
    /// one (`sidecar.dev/inject`) and the admission hold's (`sidecar.dev/held-for`); the labels
    /// are in `labels`, the record in the facts.
    pub metadata: ObjectMeta,
    /// `spec.paused`: a held Deployment is released by unpausing it.
    pub paused: bool,
    /// The Deployment's labels (a `BTreeMap` would take three times the memory).
    pub labels: LabelSet,
    /// [`DeploymentFacts::compact`]; see [`DeploymentView::facts`].
    facts: Box<str>,
    /// Whether it carries a record of something injected (for the `deployments_managed` gauge,
    /// which must not decode every Deployment's facts).
    pub managed: bool,
    /// Where its own rollout stands: a staged policy rollout waits for it.
    pub progress: Progress,
    /// A hash of what decisions read (uid, labels, the opt-out annotation, the facts, the
    /// rollout's progress): equal hashes mean nothing that matters changed (a status update
    /// within a rollout, a new image for the owner's container, someone else's annotation), so
    /// nothing is triggered.
    pub content: u64,
}

impl DeploymentView {
    pub fn of(deployment: &Deployment) -> Self {
        let status = deployment.status.as_ref().map(WireStatus::of);
        Self::with_status(deployment, status.as_ref())
    }

    /// The view of `deployment` (whose own `status` is not read) with `status`.
    fn with_status(deployment: &Deployment, status: Option<&WireStatus>) -> Self {
        let source = &deployment.metadata;
        let annotations: BTreeMap<String, String> = source
            .annotations
            .iter()
            .flatten()
            .filter(|(key, _)| [INJECT_ANNOTATION, HELD_FOR_ANNOTATION].contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let metadata = ObjectMeta {
            name: source.name.clone(),
            namespace: source.namespace.clone(),
            uid: source.uid.clone(),
            resource_version: source.resource_version.clone(),
            generation: source.generation,
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        };
        let labels = source.labels.as_ref().map(LabelSet::from).unwrap_or_default();
        let facts = DeploymentFacts::compact(deployment).into_boxed_str();
        let managed =
            matches!(sidecar_core::InjectionRecord::read(deployment), Ok(Some(record)) if !record.is_empty());
        let paused = deployment.spec.paused.unwrap_or(false);
        let progress = Progress::of(&state(deployment, status));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            &metadata.uid,
            &labels,
            &metadata.annotations,
            paused,
            &facts,
            &progress,
        )
            .hash(&mut hasher);
        DeploymentView {
            metadata,
            paused,
            labels,
            facts,
            managed,
            progress,
            content: hasher.finish(),
        }
    }

    /// What the engine needs to plan this Deployment (decoded from the cached text).
    pub fn facts(&self) -> DeploymentFacts {
        DeploymentFacts::expand(&self.facts)
    }

    /// The metadata the engine plans with: the cached metadata and the labels.
    pub fn planning_metadata(&self) -> ObjectMeta {
        ObjectMeta {
            labels: self.labels.to_map(),
            ..self.metadata.clone()
        }
    }

    /// The SidecarPolicies it is held at admission for, if it is held (see
    /// [`sidecar_core::hold`]).
    pub fn held_for(&self) -> Option<Vec<&str>> {
        sidecar_core::hold::held_for(&self.metadata)
    }

    /// The Deployment's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The Deployment's namespace.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or_default()
    }
}

/// What [`Progress::of`] reads of `deployment`.
fn state(deployment: &Deployment, status: Option<&WireStatus>) -> DeploymentState {
    let progressing = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    DeploymentState {
        generation: deployment.metadata.generation,
        paused: deployment.spec.paused.unwrap_or(false),
        replicas: deployment.spec.replicas,
        observed_generation: status.and_then(|s| s.observed_generation),
        status_replicas: status.and_then(|s| s.replicas),
        updated_replicas: status.and_then(|s| s.updated_replicas),
        available_replicas: status.and_then(|s| s.available_replicas),
        progressing,
    }
}

impl<'de> Deserialize<'de> for DeploymentView {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: wire.metadata.name,
                namespace: wire.metadata.namespace,
                uid: wire.metadata.uid,
                resource_version: wire.metadata.resource_version,
                generation: wire.metadata.generation,
                labels: wire.metadata.labels,
                annotations: wire.metadata.annotations.map(|ours| ours.0),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                paused: wire.spec.paused,
                replicas: wire.spec.replicas,
                template: wire.spec.template,
                ..DeploymentSpec::default()
            },
            status: None,
        };
        Ok(DeploymentView::with_status(&deployment, wire.status.as_ref()))
    }
}

/// What the view reads of a Deployment, as it comes off the wire. Everything else
/// (`managedFields`, the rest of the spec and of the status, annotations that are not the
/// operator's) is skipped while parsing, never decoded: a watch sees every status update of every
/// Deployment.
#[derive(Deserialize)]
struct Wire {
    metadata: WireMeta,
    spec: WireSpec,
    #[serde(default)]
    status: Option<WireStatus>,
}

/// The status counts and the conditions' type, status, reason and message: what judges the
/// rollout's progress (timestamps are not decoded).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    observed_generation: Option<i64>,
    replicas: Option<i32>,
    updated_replicas: Option<i32>,
    available_replicas: Option<i32>,
    #[serde(default)]
    conditions: Vec<WireCondition>,
}

#[derive(Deserialize, Default)]
struct WireCondition {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

impl WireStatus {
    /// The parts of a decoded status the view reads (for [`DeploymentView::of`]).
    fn of(status: &DeploymentStatus) -> Self {
        WireStatus {
            observed_generation: status.observed_generation,
            replicas: status.replicas,
            updated_replicas: status.updated_replicas,
            available_replicas: status.available_replicas,
            conditions: status
                .conditions
                .iter()
                .flatten()
                .map(|c| WireCondition {
                    type_: c.type_.clone().unwrap_or_default(),
                    status: c.status.clone().unwrap_or_default(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<Ours>,
}

#[derive(Deserialize)]
struct WireSpec {
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default)]
    replicas: Option<i32>,
    template: PodTemplateSpec,
}

/// The `sidecar.dev/` annotations of a map; the others (`last-applied-configuration` may be a
/// whole manifest) are skipped.
struct Ours(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Ours {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Ours;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of annotations")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ours, A::Error> {
                let mut ours = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key.starts_with(OUR_PREFIX) {
                        ours.insert(key, map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Ours(ours))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// The operator's annotations.
const OUR_PREFIX: &str = "sidecar.dev/";

impl Resource for DeploymentView {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Deployment")
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("apps")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("apps/v1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("deployments")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(extra_annotation: &str, replicas: i32) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "demo", "uid": "u-1", "resourceVersion": "7", "generation": 2,
                "labels": {"app": "web"},
                "annotations": {
                    INJECT_ANNOTATION: "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a huge\":\"manifest\"}",
                    "deployment.kubernetes.io/revision": extra_annotation,
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}},
            },
            "status": {"replicas": 3, "observedGeneration": 2},
        })
    }

    #[test]
    fn keeps_what_decisions_read_and_drops_the_rest() {
        let view: DeploymentView = serde_json::from_value(deployment("1", 3)).unwrap();
        assert_eq!(view.name(), "web");
        assert_eq!(view.namespace(), "demo");
        assert_eq!(view.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            view.metadata.annotations,
            Some(BTreeMap::from([(
                INJECT_ANNOTATION.to_owned(),
                "true".to_owned()
            )]))
        );
        assert!(view.metadata.managed_fields.is_none());
        let facts = view.facts();
        assert_eq!(facts.owner.containers[0].name, "web");
        assert_eq!(facts.owner.containers[0].ports[0].number, 80);
        let full: Deployment = serde_json::from_value(deployment("1", 3)).unwrap();
        assert_eq!(
            facts,
            DeploymentFacts::of(&full),
            "the cached form holds the same facts"
        );
    }

    #[test]
    fn changes_nothing_reads_keep_the_content_hash() {
        let base: DeploymentView = serde_json::from_value(deployment("1", 3)).unwrap();
        let mut noise = deployment("2", 5);
        noise["metadata"]["resourceVersion"] = json!("8");
        noise["metadata"]["generation"] = json!(3);
        noise["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        noise["status"]["replicas"] = json!(5);
        let noisy: DeploymentView = serde_json::from_value(noise).unwrap();
        assert_eq!(
            noisy.content, base.content,
            "status, replicas, the owner's image and others' annotations"
        );

        let mut relabelled = deployment("1", 3);
        relabelled["metadata"]["labels"]["team"] = json!("a");
        let relabelled: DeploymentView = serde_json::from_value(relabelled).unwrap();
        assert_ne!(relabelled.content, base.content);
        assert_eq!(
            relabelled.planning_metadata().labels,
            Some(
                [
                    ("app".to_owned(), "web".to_owned()),
                    ("team".to_owned(), "a".to_owned())
                ]
                .into()
            )
        );
    }

    #[test]
    fn the_rollout_progress_is_read_from_the_status_and_its_changes_count() {
        let mut rolling = deployment("1", 3);
        rolling["status"] =
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3});
        let rolling: DeploymentView = serde_json::from_value(rolling).unwrap();
        assert_eq!(rolling.progress, Progress::Rolling);
        let mut complete = deployment("1", 3);
        complete["status"] =
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3});
        let complete: DeploymentView = serde_json::from_value(complete).unwrap();
        assert_eq!(complete.progress, Progress::Complete);
        assert_ne!(
            rolling.content, complete.content,
            "a staged rollout waits for this change"
        );
        let mut failed = deployment("1", 3);
        failed["status"] = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}]});
        let failed: DeploymentView = serde_json::from_value(failed).unwrap();
        assert_eq!(failed.progress, Progress::Failed("timed out".into()));
    }
}
