//! What the controller sends with server-side apply: only the fields the operator owns.
//!
//! Sending only these keeps every other field with its owner (a GitOps tool, a person), and a
//! field that the operator stops sending is removed by the API server, which is how removal of a
//! policy's containers happens in a cluster.

use serde_json::{Map, Value, json};
use sidecar_api::INJECTED_ANNOTATION;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::quantity::same_amount;
use crate::record::{Injected, InjectionRecord};
use crate::render::Rendered;

/// The server-side apply configuration of `rendered`: name and namespace, the record annotation,
/// and exactly what the record lists. With nothing injected it is just the name and namespace,
/// which releases everything the operator owned before.
pub fn apply_patch(rendered: &Rendered) -> Value {
    owned_fields(&rendered.deployment, &rendered.record)
}

/// The apply configuration of `deployment` as far as `record` says the operator owns it.
pub(crate) fn owned_fields(deployment: &Deployment, record: &InjectionRecord) -> Value {
    let mut metadata = json!({
        "name": deployment.metadata.name,
        "namespace": deployment.metadata.namespace,
    });
    let mut patch = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
    if record.is_empty() {
        patch["metadata"] = metadata;
        return patch;
    }
    metadata["annotations"] = json!({ INJECTED_ANNOTATION: record.to_annotation() });
    patch["metadata"] = metadata;
    if let Some(spec) = owned_spec(&deployment.spec.template, &record.injected()) {
        patch["spec"] = spec;
    }
    patch
}

/// The `spec` of the apply configuration that owns exactly what `injected` lists in `template`
/// (`None` when that is nothing).
pub(crate) fn owned_spec(template: &PodTemplateSpec, injected: &Injected) -> Option<Value> {
    let mut template_patch = Map::new();
    let template_metadata = template.metadata.as_ref();
    let mut pod_metadata = Map::new();
    let labels = template_metadata.and_then(|m| m.labels.as_ref());
    let picked_labels = pick(labels, &injected.pod_labels);
    if !picked_labels.is_empty() {
        pod_metadata.insert("labels".into(), Value::Object(picked_labels));
    }
    let annotations = template_metadata.and_then(|m| m.annotations.as_ref());
    let picked_annotations = pick(annotations, &injected.pod_annotations);
    if !picked_annotations.is_empty() {
        pod_metadata.insert("annotations".into(), Value::Object(picked_annotations));
    }
    if !pod_metadata.is_empty() {
        template_patch.insert("metadata".into(), Value::Object(pod_metadata));
    }

    let mut pod_patch = Map::new();
    if let Some(pod) = &template.spec {
        let init: Vec<Value> = pod
            .init_containers
            .iter()
            .flatten()
            .filter(|c| injected.init_containers.contains(&c.name))
            .map(to_value)
            .collect();
        if !init.is_empty() {
            pod_patch.insert("initContainers".into(), Value::Array(init));
        }
        let containers: Vec<Value> = pod
            .containers
            .iter()
            .filter_map(|c| {
                let paths = injected.mounts.get(&c.name);
                let names = injected.env.get(&c.name);
                if paths.is_none() && names.is_none() {
                    return None;
                }
                let mut entry = json!({"name": c.name});
                if let Some(paths) = paths {
                    let mounts = c
                        .volume_mounts
                        .iter()
                        .flatten()
                        .filter(|m| paths.contains(&m.mount_path));
                    entry["volumeMounts"] = Value::Array(mounts.map(to_value).collect());
                }
                if let Some(names) = names {
                    let env = c.env.iter().flatten().filter(|e| names.contains(&e.name));
                    entry["env"] = Value::Array(env.map(to_value).collect());
                }
                Some(entry)
            })
            .collect();
        if !containers.is_empty() {
            pod_patch.insert("containers".into(), Value::Array(containers));
        }
        let volumes: Vec<Value> = pod
            .volumes
            .iter()
            .flatten()
            .filter(|v| injected.volumes.contains(&v.name))
            .map(to_value)
            .collect();
        if !volumes.is_empty() {
            pod_patch.insert("volumes".into(), Value::Array(volumes));
        }
        if injected.share_process_namespace {
            pod_patch.insert("shareProcessNamespace".into(), json!(pod.share_process_namespace));
        }
    }
    if !pod_patch.is_empty() {
        template_patch.insert("spec".into(), Value::Object(pod_patch));
    }
    (!template_patch.is_empty()).then(|| json!({ "template": Value::Object(template_patch) }))
}

/// Whether `live` (as stored by the API server, with its defaults) already is what `rendered`
/// asks for: the same record (so the same policies at the same revisions), the init containers
/// in the computed order, and every field the operator would send. The controller writes only
/// when this is false.
pub fn is_up_to_date(live: &Deployment, rendered: &Rendered) -> bool {
    let live_record = InjectionRecord::read(live).ok().flatten().unwrap_or_default();
    live_record == rendered.record
        && init_container_names(live) == init_container_order(rendered)
        && serde_json::to_value(live).is_ok_and(|live| contains(&live, &apply_patch(rendered)))
}

/// The names of the pod's init containers in the order the render computed. After a
/// server-side apply the controller compares the stored order with this one.
pub fn init_container_order(rendered: &Rendered) -> Vec<&str> {
    init_container_names(&rendered.deployment)
}

/// The names of `deployment`'s init containers, in their order.
pub fn init_container_names(deployment: &Deployment) -> Vec<&str> {
    let pod = deployment.spec.template.spec.as_ref();
    pod.and_then(|p| p.init_containers.as_ref())
        .map(|list| list.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default()
}

fn pick(
    map: Option<&std::collections::BTreeMap<String, String>>,
    keys: &std::collections::BTreeSet<String>,
) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| {
            map.and_then(|m| m.get(k))
                .map(|v| (k.clone(), Value::String(v.clone())))
        })
        .collect()
}

pub(crate) fn to_value<T: serde::Serialize>(item: &T) -> Value {
    // Serialising k8s-openapi types to a JSON value cannot fail (no non-string map keys).
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// Whether `live` already carries everything in `patch`: every field the patch sets has the same
/// value in `live`, which may hold more (server defaults, other owners' fields). Lists of
/// objects are matched by their merge key; resource quantities by amount, since the API server
/// stores them in canonical form.
pub fn contains(live: &Value, patch: &Value) -> bool {
    contains_at(live, patch, false)
}

/// `quantity`: the values here are resource quantities (under `requests` or `limits`).
fn contains_at(live: &Value, patch: &Value, quantity: bool) -> bool {
    match (live, patch) {
        (Value::Object(live), Value::Object(patch)) => patch.iter().all(|(k, v)| {
            let quantities = quantity || matches!(k.as_str(), "requests" | "limits");
            live.get(k).is_some_and(|l| match (k.as_str(), l, v) {
                ("sizeLimit", Value::String(l), Value::String(v)) => same_amount(l, v),
                _ => contains_at(l, v, quantities),
            })
        }),
        (Value::Array(live), Value::Array(patch)) => patch.iter().all(|item| match merge_key(item) {
            Some((key, value)) => live
                .iter()
                .any(|l| l.get(key) == Some(value) && contains_at(l, item, false)),
            None => live.contains(item),
        }),
        (Value::String(l), Value::String(p)) if quantity => same_amount(l, p),
        _ => live == patch,
    }
}

fn merge_key(item: &Value) -> Option<(&'static str, &Value)> {
    ["name", "mountPath", "containerPort"]
        .into_iter()
        .find_map(|k| item.get(k).map(|v| (k, v)))
}
