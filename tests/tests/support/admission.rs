//! What the API server's admission of a custom resource does, offline, worded as the API server
//! words it (Kubernetes 1.36): strict decoding (unknown fields, duplicate keys), the structural
//! OpenAPI schema of the CRD (types, required fields, enums, bounds, lengths, patterns, list
//! keys), the object-name rules, and then, only when all of those pass (as the API server skips
//! them otherwise), the CEL rules, evaluated by kube-cel.
//!
//! Why not a JSON-schema crate: a CRD schema is OpenAPI v3 with Kubernetes' extensions
//! (`x-kubernetes-int-or-string`, `-list-type`, `-list-map-keys`, `-preserve-unknown-fields`,
//! unknown fields refused rather than `additionalProperties: false`), and the corpus pins the
//! API server's own messages, which a generic validator words differently. The end-to-end corpus
//! test sends the same cases to a real API server, which keeps this file honest.

#![allow(dead_code)]

use kube_cel::Validator;
use serde_json::{Value, json};

/// Why the API server would refuse an object, by stage.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Strict decoding: unknown fields, a key twice in a mapping (HTTP 400).
    pub decoding: Vec<String>,
    /// The structural schema and the object-name rules (HTTP 422).
    pub schema: Vec<String>,
    /// The CEL rules (HTTP 422), evaluated only when the stages above found nothing.
    pub cel: Vec<String>,
}

impl Refusals {
    pub fn is_empty(&self) -> bool {
        self.decoding.is_empty() && self.schema.is_empty() && self.cel.is_empty()
    }

    /// Every message, for a failure report.
    pub fn all(&self) -> Vec<&String> {
        self.decoding
            .iter()
            .chain(&self.schema)
            .chain(&self.cel)
            .collect()
    }
}

/// The `openAPIV3Schema` of the checked-in CRD (`crds/`) that serves `kind`, read once.
pub fn crd_schema(kind: &str) -> &'static Value {
    static SCHEMAS: std::sync::OnceLock<[Value; 2]> = std::sync::OnceLock::new();
    let [policy, cluster] = SCHEMAS.get_or_init(|| {
        let read = |file: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crds")
                .join(file);
            let crd: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
        };
        [read("sidecarpolicy.yaml"), read("clustersidecarpolicy.yaml")]
    });
    match kind {
        "SidecarPolicy" => policy,
        "ClusterSidecarPolicy" => cluster,
        other => panic!("no CRD serves kind {other:?}"),
    }
}

/// A YAML decoding error (from `support::corpus`) as the API server's strict decoder words it.
pub fn decoding_error(yaml_error: &str) -> String {
    // serde_norway: `duplicate entry with key "order"`; go-yaml: `key "order" already set in map`.
    match yaml_error
        .split_once("duplicate entry with key ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
    {
        Some(key) => format!("strict decoding error: yaml: unmarshal errors: key {key} already set in map"),
        None => format!("yaml: {yaml_error}"),
    }
}

/// Everything the API server would refuse `object` for, given its CRD's schema.
pub fn admit(schema: &Value, object: &Value) -> Refusals {
    let mut walk = Walk::default();
    walk.value(schema, object, "");
    let mut refusals = Refusals {
        decoding: walk.unknown,
        schema: walk.invalid,
        cel: Vec::new(),
    };
    // The CEL rules are skipped when the schema finds something, not for the name's rules.
    if refusals.is_empty() {
        refusals.cel = cel(schema, object);
    }
    if let Some(problem) = object_name_problem(&object["metadata"]["name"]) {
        refusals.schema.push(problem);
    }
    refusals
}

fn cel(schema: &Value, object: &Value) -> Vec<String> {
    let Err(errors) = Validator::new().validate(schema, object, None) else {
        return Vec::new();
    };
    errors
        .into_vec()
        .into_iter()
        .map(|e| {
            // The API server shows a scalar's value, not an object's or a list's.
            let value = at(object, &e.field_path)
                .filter(|v| !v.is_object() && !v.is_array())
                .map(|v| format!("{v}: "))
                .unwrap_or_default();
            let path = if e.field_path.is_empty() {
                "<nil>"
            } else {
                &e.field_path
            };
            format!("{path}: Invalid value: {value}{}", e.message)
        })
        .collect()
}

/// The value at a path such as `spec.sidecars[0].name`.
fn at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut value = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = part.split_once('[').map_or((part, ""), |(k, i)| (k, i));
        value = value.get(key)?;
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(value)
}

/// `metadata.name` must be a DNS subdomain (the API server's rule for custom resources).
fn object_name_problem(name: &Value) -> Option<String> {
    let name = name.as_str()?;
    let label = |l: &str| {
        let bytes = l.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    if name.len() > 253 {
        return Some(format!(
            "metadata.name: Invalid value: {}: must be no more than 253 characters",
            json!(name)
        ));
    }
    if name.split('.').all(label) {
        return None;
    }
    Some(format!(
        "metadata.name: Invalid value: {}: a lowercase RFC 1123 subdomain must consist of lower case \
         alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
         (e.g. 'example.com', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        json!(name)
    ))
}

#[derive(Default)]
struct Walk {
    unknown: Vec<String>,
    invalid: Vec<String>,
}

impl Walk {
    fn value(&mut self, schema: &Value, value: &Value, path: &str) {
        if !self.has_type(schema, value, path) {
            // Decoding prunes an object against the schema first: where no object belongs,
            // each of its fields is unknown.
            for key in value.as_object().into_iter().flat_map(|map| map.keys()) {
                let field_path = join(path, key);
                self.unknown
                    .push(format!("strict decoding error: unknown field \"{field_path}\""));
            }
            return;
        }
        match value {
            Value::Object(map) => {
                let properties = schema["properties"].as_object();
                let additional = &schema["additionalProperties"];
                let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
                for (key, field) in map {
                    let field_path = join(path, key);
                    // The type and ObjectMeta's fields are the API server's own, not the CRD's.
                    if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    match properties.and_then(|p| p.get(key)) {
                        Some(field_schema) => self.value(field_schema, field, &field_path),
                        None if additional.is_object() => self.value(additional, field, &field_path),
                        None if preserve || *additional == json!(true) => {}
                        None => self
                            .unknown
                            .push(format!("strict decoding error: unknown field \"{field_path}\"")),
                    }
                }
                for required in schema["required"].as_array().into_iter().flatten() {
                    let required = required.as_str().unwrap_or_default();
                    if !map.contains_key(required) {
                        self.invalid
                            .push(format!("{}: Required value", join(path, required)));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(max) = schema["maxItems"].as_u64()
                    && items.len() as u64 > max
                {
                    self.invalid.push(format!(
                        "{path}: Too many: {}: must have at most {max} items",
                        items.len()
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    self.value(&schema["items"], item, &format!("{path}[{i}]"));
                }
                self.unique(schema, items, path);
            }
            Value::String(text) => {
                if let Some(max) = schema["maxLength"].as_u64()
                    && text.chars().count() as u64 > max
                {
                    self.invalid
                        .push(format!("{path}: Too long: may not be more than {max} bytes"));
                }
                if let Some(pattern) = schema["pattern"].as_str()
                    && !regex::Regex::new(pattern).unwrap().is_match(text)
                {
                    self.invalid.push(format!(
                        "{path}: Invalid value: {value}: {path} in body should match '{pattern}'"
                    ));
                }
            }
            Value::Number(number) => {
                let shown = number_text(value);
                if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), number.as_f64())
                    && n > max
                {
                    self.invalid.push(format!(
                        "{path}: Invalid value: {shown}: {path} in body should be less than or equal to {}",
                        number_text(&json!(max))
                    ));
                }
                if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), number.as_f64())
                    && n < min
                {
                    self.invalid.push(format!(
                        "{path}: Invalid value: {shown}: {path} in body should be greater than or equal to {}",
                        number_text(&json!(min))
                    ));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
            self.invalid.push(format!(
                "{path}: Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ));
        }
    }

    /// Whether `value` has the schema's type; records the API server's message when not.
    fn has_type(&mut self, schema: &Value, value: &Value, path: &str) -> bool {
        let actual = match value {
            Value::Null => return true, // pruned or defaulted before validation
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "float64",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let expected = if schema["x-kubernetes-int-or-string"] == json!(true) {
            "integer,string"
        } else {
            match schema["type"].as_str() {
                Some(expected) => expected,
                None => return true,
            }
        };
        let fits = match (expected, actual) {
            ("number", "integer" | "float64") => true,
            ("integer,string", "integer" | "string") => true,
            (expected, actual) => expected == actual,
        };
        if !fits {
            // A fraction where an integer of a format goes is named after the format.
            let expected = match (expected, actual, schema["format"].as_str()) {
                ("integer", "float64", Some(format)) => format,
                _ => expected,
            };
            self.invalid.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
            ));
        }
        fits
    }

    /// `x-kubernetes-list-type: map` (unique by its keys) and `set` (unique items).
    fn unique(&mut self, schema: &Value, items: &[Value], path: &str) {
        let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let identity = |item: &Value| -> Value {
            match schema["x-kubernetes-list-type"].as_str() {
                Some("map") => Value::Object(
                    keys.iter()
                        .filter_map(|k| Some(((*k).to_owned(), item.get(*k)?.clone())))
                        .collect(),
                ),
                _ => item.clone(),
            }
        };
        if !matches!(schema["x-kubernetes-list-type"].as_str(), Some("map" | "set")) {
            return;
        }
        let mut seen: Vec<Value> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let id = identity(item);
            if seen.contains(&id) {
                self.invalid.push(format!("{path}[{i}]: Duplicate value: {id}"));
            } else {
                seen.push(id);
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A number as the API server prints it: integers without a fraction.
fn number_text(value: &Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        _ => value.to_string(),
    }
}
