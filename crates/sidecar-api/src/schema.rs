//! Schema refinements for fields whose types come from `k8s-openapi`.
//!
//! The upstream schemas of `Container`, `Volume` and friends carry no bounds, list semantics or
//! name rules. The API server needs bounds to accept the CEL rules (their cost is estimated from
//! `maxItems`/`maxLength`), and users deserve a rejection at admission instead of a broken
//! Deployment later, so each field's schema is generated as usual and then tightened here.

use k8s_openapi::api::core::v1::{Container, EnvVar, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

/// RFC 1123 DNS label: what Kubernetes requires of container and volume names.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Longest DNS label.
pub const DNS_LABEL_MAX: u64 = 63;
/// Upper bounds on list sizes. Generous for real policies; they exist so the API server can bound
/// the cost of the CEL rules.
pub const MAX_SIDECARS: u64 = 16;
pub const MAX_INIT_CONTAINERS: u64 = 8;
pub const MAX_VOLUMES: u64 = 32;
pub const MAX_APP_PATCHES: u64 = 8;
pub const MAX_LIST_ITEMS: u64 = 64;

pub(crate) fn label_selector(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    if let Some(requirement) = pointer(&mut schema, "/properties/matchExpressions") {
        set(requirement, "maxItems", json!(MAX_LIST_ITEMS));
    }
    if let Some(requirement) = pointer(&mut schema, "/properties/matchExpressions/items") {
        add_rule(
            requirement,
            "(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)",
            "matchExpressions: operators In and NotIn need at least one value; Exists and DoesNotExist take none",
        );
    }
    if let Some(operator) = pointer(
        &mut schema,
        "/properties/matchExpressions/items/properties/operator",
    ) {
        set(operator, "enum", json!(["In", "NotIn", "Exists", "DoesNotExist"]));
        set(operator, "maxLength", json!(12));
    }
    if let Some(key) = pointer(&mut schema, "/properties/matchExpressions/items/properties/key") {
        set(key, "maxLength", json!(317));
    }
    if let Some(values) = pointer(
        &mut schema,
        "/properties/matchExpressions/items/properties/values",
    ) {
        set(values, "maxItems", json!(MAX_LIST_ITEMS));
    }
    schema
}

pub(crate) fn max_concurrent(_: &mut SchemaGenerator) -> Schema {
    let mut value = json!({ "x-kubernetes-int-or-string": true });
    add_rule(
        &mut value,
        // No `type()`: an int-or-string value is dynamic, and `string()` reads both; a string
        // without `%` differs from the integer it spells.
        "string(self).endsWith('%') ? string(self).matches('^([1-9][0-9]?|100)%$') : (string(self).matches('^[1-9][0-9]*$') && self == int(string(self)))",
        "maxConcurrent: an integer of at least 1, or a percentage from 1% to 100%",
    );
    Schema::try_from(value).unwrap_or_default()
}

pub(crate) fn sidecars(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = named_list::<Container>(generator, MAX_SIDECARS);
    if let Some(item) = pointer(&mut schema, "/items") {
        add_rule(
            item,
            "!has(self.restartPolicy) || self.restartPolicy == 'Always'",
            "sidecars: restartPolicy can only be Always (the operator sets it); run-to-completion steps belong in spec.initContainers",
        );
        add_rule(
            item,
            "has(self.image) && size(self.image) > 0",
            "sidecars: image is required",
        );
    }
    schema
}

pub(crate) fn init_containers(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = named_list::<Container>(generator, MAX_INIT_CONTAINERS);
    if let Some(item) = pointer(&mut schema, "/items") {
        add_rule(
            item,
            "!has(self.restartPolicy)",
            "initContainers: restartPolicy must not be set; long-running containers belong in spec.sidecars",
        );
        add_rule(
            item,
            "has(self.image) && size(self.image) > 0",
            "initContainers: image is required",
        );
    }
    schema
}

pub(crate) fn volumes(generator: &mut SchemaGenerator) -> Schema {
    named_list::<Volume>(generator, MAX_VOLUMES)
}

pub(crate) fn app_containers(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<crate::AppContainersPatch>>();
    schema.insert("maxItems".to_owned(), json!(MAX_APP_PATCHES));
    if let Some(item) = pointer(&mut schema, "/items") {
        add_rule(
            item,
            "(has(self.volumeMounts) && size(self.volumeMounts) > 0) || (has(self.env) && size(self.env) > 0)",
            "appContainers: each entry must add at least one volume mount or env var",
        );
    }
    schema
}

pub(crate) fn container_names(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("maxItems".to_owned(), json!(MAX_LIST_ITEMS));
    schema.insert("x-kubernetes-list-type".to_owned(), json!("set"));
    if let Some(item) = pointer(&mut schema, "/items") {
        dns_label(item);
    }
    schema
}

pub(crate) fn volume_mounts(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<VolumeMount>>();
    schema.insert("maxItems".to_owned(), json!(MAX_LIST_ITEMS));
    schema.insert("x-kubernetes-list-type".to_owned(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".to_owned(), json!(["mountPath"]));
    schema
}

pub(crate) fn env(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<EnvVar>>();
    schema.insert("maxItems".to_owned(), json!(MAX_LIST_ITEMS));
    schema.insert("x-kubernetes-list-type".to_owned(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".to_owned(), json!(["name"]));
    schema
}

pub(crate) fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".to_owned(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".to_owned(), json!(["type"]));
    schema
}

/// The status: until the operator first writes one, the API server serves this schema's default,
/// `observedGeneration: 0`, so that a policy no one has looked at yet reads as in progress, not
/// as healthy (to kstatus and Argo CD). Its fields get no default: nothing has been counted yet.
pub(crate) fn unobserved_status(schema: &mut Schema) {
    schema.insert("default".to_owned(), json!({ "observedGeneration": 0 }));
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for property in properties.values_mut().filter_map(Value::as_object_mut) {
            property.remove("default");
        }
    }
}

/// A list of objects keyed by a DNS-label `name`: unique names (the API server enforces the list
/// map keys), bounded length.
fn named_list<T: JsonSchema>(generator: &mut SchemaGenerator, max_items: u64) -> Schema {
    let mut schema = generator.subschema_for::<Vec<T>>();
    schema.insert("maxItems".to_owned(), json!(max_items));
    schema.insert("x-kubernetes-list-type".to_owned(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".to_owned(), json!(["name"]));
    if let Some(name) = pointer(&mut schema, "/items/properties/name") {
        dns_label(name);
    }
    schema
}

fn dns_label(value: &mut Value) {
    set(value, "pattern", json!(DNS_LABEL_PATTERN));
    set(value, "maxLength", json!(DNS_LABEL_MAX));
}

fn add_rule(value: &mut Value, rule: &str, message: &str) {
    if let Some(object) = value.as_object_mut() {
        let rules = object
            .entry("x-kubernetes-validations")
            .or_insert_with(|| json!([]));
        if let Some(rules) = rules.as_array_mut() {
            rules.push(json!({ "rule": rule, "message": message }));
        }
    }
}

fn set(value: &mut Value, key: &str, field: Value) {
    if let Some(object) = value.as_object_mut() {
        object.insert(key.to_owned(), field);
    }
}

fn pointer<'a>(schema: &'a mut Schema, path: &str) -> Option<&'a mut Value> {
    schema.pointer_mut(path)
}
