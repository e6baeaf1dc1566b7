//! Reading SidecarPolicies and Deployments from YAML files, with errors that name the file, the
//! document and the field.
//!
//! A source is split into documents (a `v1 List` into its items, nested Lists too), and each
//! document is typed by its apiVersion and kind: a [`Document`] of a kind render reads, or an
//! [`Ignored`] one (the Services, ConfigMaps, ... of `kustomize build` or `helm template`). What
//! each kind means for a render is decided by the render command, not here.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};

/// Why the input could not be used. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {source_name}: {source}")]
    Read {
        source_name: SourceName,
        #[source]
        source: std::io::Error,
    },
    #[error("standard input (-) can be read only once, but it was given for more than one file")]
    StdinTwice,
    #[error("{source_name} is given more than once; give each file once")]
    FileTwice { source_name: SourceName },
    #[error("{at}: invalid YAML: {source}")]
    Yaml {
        at: DocumentRef,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{at} is not a Kubernetes object (it needs an apiVersion and a kind)")]
    NotAnObject { at: DocumentRef },
    #[error("{at} is a {found}; sidecar-operator reads {expected} only")]
    UnsupportedVersion {
        at: DocumentRef,
        found: String,
        expected: Kind,
    },
    #[error("{at} is a v1 List whose items are not a list")]
    BadList { at: DocumentRef },
    #[error("{at} ({kind} {name:?}): unknown field{} {}", if .fields.len() > 1 { "s" } else { "" }, .fields.join(", "))]
    UnknownFields {
        at: DocumentRef,
        kind: Kind,
        name: String,
        fields: Vec<String>,
    },
    #[error("{at} ({kind} {name:?}): {source}")]
    Invalid {
        at: DocumentRef,
        kind: Kind,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{at}: {kind} has no metadata.name")]
    Unnamed { at: DocumentRef, kind: Kind },
    #[error("{source_name} holds no {expected}")]
    NothingFound { source_name: SourceName, expected: Kind },
    #[error("{source_name} holds no SidecarPolicy, ClusterSidecarPolicy or Namespace")]
    NoPolicyIn { source_name: SourceName },
    #[error(
        "no SidecarPolicy or ClusterSidecarPolicy is given: pass --policy FILE, or include policies in the --deployment input"
    )]
    NoPolicy,
    #[error("ClusterSidecarPolicy {name:?} is given twice: {first} and {second}")]
    DuplicateClusterPolicy {
        name: String,
        first: Box<DocumentRef>,
        second: Box<DocumentRef>,
    },
    #[error("SidecarPolicy {name:?} in namespace {namespace:?} is given twice: {first} and {second}")]
    DuplicatePolicy {
        name: String,
        namespace: String,
        // Boxed: two locations would make every InputError this large.
        first: Box<DocumentRef>,
        second: Box<DocumentRef>,
    },
}

/// A file path, or standard input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceName(Option<PathBuf>);

impl SourceName {
    pub fn new(path: &Path) -> Self {
        SourceName((path != Path::new("-")).then(|| path.to_owned()))
    }

    pub fn is_stdin(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("standard input"),
        }
    }
}

/// Document `index` (1-based) of a source, and within a `v1 List` the item (1-based; then the
/// item of a List nested in that one, and so on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRef {
    pub source: SourceName,
    pub index: usize,
    pub items: Vec<usize>,
}

impl DocumentRef {
    fn item(&self, index: usize) -> DocumentRef {
        let mut item = self.clone();
        item.items.push(index);
        item
    }
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.source, self.index)?;
        for (i, item) in self.items.iter().enumerate() {
            write!(f, "{}{item}", if i == 0 { " item " } else { "." })?;
        }
        Ok(())
    }
}

/// The kinds of object the render command reads. Every other kind is [`Ignored`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SidecarPolicy,
    ClusterSidecarPolicy,
    Deployment,
    /// Read for its labels, which ClusterSidecarPolicies select.
    Namespace,
    /// Read for the warnings of the sidecars it counts (autoscaling/v2 only).
    HorizontalPodAutoscaler,
    /// Read for the warnings of the sidecars it would size (a CRD, read as JSON).
    VerticalPodAutoscaler,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::SidecarPolicy,
        Kind::ClusterSidecarPolicy,
        Kind::Deployment,
        Kind::Namespace,
        Kind::HorizontalPodAutoscaler,
        Kind::VerticalPodAutoscaler,
    ];

    fn api_version(self) -> &'static str {
        match self {
            Kind::SidecarPolicy | Kind::ClusterSidecarPolicy => "sidecar.dev/v1alpha1",
            Kind::Deployment => "apps/v1",
            Kind::Namespace => "v1",
            Kind::HorizontalPodAutoscaler => "autoscaling/v2",
            Kind::VerticalPodAutoscaler => "autoscaling.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::SidecarPolicy => "SidecarPolicy",
            Kind::ClusterSidecarPolicy => "ClusterSidecarPolicy",
            Kind::Deployment => "Deployment",
            Kind::Namespace => "Namespace",
            Kind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Kind::VerticalPodAutoscaler => "VerticalPodAutoscaler",
        }
    }

    fn group(self) -> &'static str {
        group(self.api_version())
    }

    /// Read only for warnings: under another version of its API group (an autoscaling/v1 HPA of
    /// an older chart) it is ignored with a note, not an error.
    fn advisory(self) -> bool {
        matches!(self, Kind::HorizontalPodAutoscaler | Kind::VerticalPodAutoscaler)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.name())
    }
}

/// The API group of an apiVersion: `apps` of `apps/v1`, empty for the core group's `v1`.
fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// A document of a kind render reads, as its typed object.
#[derive(Clone, Debug)]
pub enum Document {
    SidecarPolicy(Box<SidecarPolicy>),
    ClusterSidecarPolicy(Box<ClusterSidecarPolicy>),
    Deployment(Box<Deployment>),
    Namespace(Box<Namespace>),
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    /// The object as JSON (there is no typed VPA in k8s-openapi).
    VerticalPodAutoscaler(Box<Value>),
}

/// A document of a kind render does not read, such as a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    pub at: DocumentRef,
    /// apiVersion and kind, as in `v1 Service`.
    pub kind: String,
}

/// A source's documents, typed, in the order they appear.
#[derive(Debug, Default)]
pub struct Split {
    pub documents: Vec<Parsed<Document>>,
    pub ignored: Vec<Ignored>,
}

/// An object read from a document, with where it came from.
#[derive(Clone, Debug)]
pub struct Parsed<T> {
    pub at: DocumentRef,
    pub object: T,
}

/// Reads the sources, allowing standard input at most once.
#[derive(Debug)]
pub struct Sources<R> {
    stdin: Option<R>,
    read: Vec<PathBuf>,
}

impl<R: Read> Sources<R> {
    pub fn new(stdin: R) -> Self {
        Sources {
            stdin: Some(stdin),
            read: Vec::new(),
        }
    }

    pub fn read(&mut self, path: &Path) -> Result<(SourceName, String), InputError> {
        let name = SourceName::new(path);
        let text = if name.is_stdin() {
            let mut stdin = self.stdin.take().ok_or(InputError::StdinTwice)?;
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| InputError::Read {
                    source_name: name.clone(),
                    source,
                })?;
            text
        } else {
            if self.read.iter().any(|earlier| earlier == path) {
                return Err(InputError::FileTwice { source_name: name });
            }
            self.read.push(path.to_owned());
            std::fs::read_to_string(path).map_err(|source| InputError::Read {
                source_name: name.clone(),
                source,
            })?
        };
        Ok((name, text))
    }
}

/// Splits a (possibly multi-document) YAML text into typed documents. Empty documents are
/// skipped; a `v1 List` is replaced by its items. A document of a kind render reads must parse
/// as that kind, without unknown fields; one of that kind under another version of its API group
/// (an `apps/v1beta2 Deployment`) is an error rather than ignored, and so is a document without
/// apiVersion and kind.
pub fn split(source: &SourceName, text: &str) -> Result<Split, InputError> {
    let mut split = Split::default();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = DocumentRef {
            source: source.clone(),
            index: i + 1,
            items: Vec::new(),
        };
        // Through serde_norway's own Value first: it refuses a key given twice in one mapping,
        // as the API server's YAML decoder does; serde_json's Value would keep the last one.
        let value = serde_norway::Value::deserialize(document)
            .and_then(|yaml| serde_json::to_value(yaml).map_err(serde::de::Error::custom))
            .map_err(|source| InputError::Yaml {
                at: at.clone(),
                source,
            })?;
        split.add(at, value)?;
    }
    Ok(split)
}

/// What a document is, by its apiVersion and kind.
enum Class {
    Read(Kind),
    OtherVersion(Kind),
    List,
    Other,
    NotAnObject,
}

fn classify(api_version: &str, kind: &str) -> Class {
    if api_version.is_empty() || kind.is_empty() {
        return Class::NotAnObject;
    }
    if api_version == "v1" && kind == "List" {
        return Class::List;
    }
    match Kind::ALL.into_iter().find(|k| k.name() == kind) {
        Some(k) if k.api_version() == api_version => Class::Read(k),
        Some(k) if k.group() == group(api_version) && !k.advisory() => Class::OtherVersion(k),
        _ => Class::Other,
    }
}

impl Split {
    fn add(&mut self, at: DocumentRef, value: Value) -> Result<(), InputError> {
        if value.is_null() {
            return Ok(());
        }
        let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        match classify(api_version, kind) {
            Class::NotAnObject => Err(InputError::NotAnObject { at }),
            Class::OtherVersion(expected) => Err(InputError::UnsupportedVersion {
                found: format!("{api_version} {kind}"),
                at,
                expected,
            }),
            Class::Other => {
                self.ignored.push(Ignored {
                    kind: format!("{api_version} {kind}"),
                    at,
                });
                Ok(())
            }
            Class::List => {
                let items = match value {
                    Value::Object(mut list) => list.remove("items").unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                let items = match items {
                    Value::Null => Vec::new(),
                    Value::Array(items) => items,
                    _ => return Err(InputError::BadList { at }),
                };
                for (i, item) in items.into_iter().enumerate() {
                    self.add(at.item(i + 1), item)?;
                }
                Ok(())
            }
            Class::Read(kind) => {
                let object = match kind {
                    Kind::SidecarPolicy => Document::SidecarPolicy(Box::new(parse_object(&at, value, kind)?)),
                    Kind::ClusterSidecarPolicy => {
                        Document::ClusterSidecarPolicy(Box::new(parse_object(&at, value, kind)?))
                    }
                    Kind::Deployment => Document::Deployment(Box::new(parse_object(&at, value, kind)?)),
                    Kind::Namespace => Document::Namespace(Box::new(parse_object(&at, value, kind)?)),
                    Kind::HorizontalPodAutoscaler => {
                        Document::HorizontalPodAutoscaler(Box::new(parse_object(&at, value, kind)?))
                    }
                    Kind::VerticalPodAutoscaler => {
                        Document::VerticalPodAutoscaler(Box::new(parse_object(&at, value, kind)?))
                    }
                };
                self.documents.push(Parsed { at, object });
                Ok(())
            }
        }
    }
}

/// A document whose apiVersion and kind are `kind`'s, as that type.
fn parse_object<T: DeserializeOwned>(at: &DocumentRef, value: Value, kind: Kind) -> Result<T, InputError> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err(InputError::Unnamed { at: at.clone(), kind });
    }
    let mut unknown = Vec::new();
    // apiVersion and kind were checked by classify; the derived CRD type does not read them.
    let object = serde_ignored::deserialize(value, |path| {
        let path = field_path(&path);
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })
    .map_err(|source| InputError::Invalid {
        at: at.clone(),
        kind,
        name: name.clone(),
        source,
    })?;
    if !unknown.is_empty() {
        return Err(InputError::UnknownFields {
            at: at.clone(),
            kind,
            name,
            fields: unknown,
        });
    }
    Ok(object)
}

/// A path like `spec.template.spec.containers[0].imagee`, as the engine writes field paths.
/// (serde_ignored's own Display writes `spec.?.template.?.spec.?.containers.?.0.imagee`.)
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

/// Puts an object that names no namespace in `namespace`, as kubectl's `-n` does, and says
/// whether it named one (an empty namespace names none), so that the output can leave it out
/// again.
pub fn place(metadata: &mut ObjectMeta, namespace: &str) -> bool {
    match &metadata.namespace {
        Some(named) if !named.is_empty() => true,
        _ => {
            metadata.namespace = Some(namespace.to_owned());
            false
        }
    }
}

/// Two ClusterSidecarPolicies of the same name would make the render depend on file order.
pub fn check_unique_cluster_policies(policies: &[Parsed<ClusterSidecarPolicy>]) -> Result<(), InputError> {
    for (i, policy) in policies.iter().enumerate() {
        let name = &policy.object.metadata.name;
        if let Some(earlier) = policies[..i].iter().find(|p| &p.object.metadata.name == name) {
            return Err(InputError::DuplicateClusterPolicy {
                name: name.clone().unwrap_or_default(),
                first: Box::new(earlier.at.clone()),
                second: Box::new(policy.at.clone()),
            });
        }
    }
    Ok(())
}

/// Two policies of the same name in one namespace would make the render depend on file order.
/// The namespaces must have been [placed](place) first; the same name in two namespaces is fine.
pub fn check_unique_policies(policies: &[Parsed<SidecarPolicy>]) -> Result<(), InputError> {
    let key = |p: &Parsed<SidecarPolicy>| {
        (
            p.object.metadata.namespace.clone(),
            p.object.metadata.name.clone(),
        )
    };
    for (i, policy) in policies.iter().enumerate() {
        if let Some(earlier) = policies[..i].iter().find(|p| key(p) == key(policy)) {
            let (namespace, name) = key(policy);
            return Err(InputError::DuplicatePolicy {
                name: name.unwrap_or_default(),
                namespace: namespace.unwrap_or_default(),
                first: Box::new(earlier.at.clone()),
                second: Box::new(policy.at.clone()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceName {
        SourceName::new(Path::new("in.yaml"))
    }

    const POLICY: &str = "apiVersion: sidecar.dev/v1alpha1\nkind: SidecarPolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  sidecars: [{name: s, image: \"b:1\"}]\n";
    const DEPLOYMENT: &str =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {}\n  template: {}\n";

    /// Each typed document as `kind name at`, in order.
    fn summary(split: &Split) -> Vec<String> {
        split
            .documents
            .iter()
            .map(|d| match &d.object {
                Document::SidecarPolicy(p) => {
                    format!("policy {} at {}", p.metadata.name.as_deref().unwrap_or("?"), d.at)
                }
                Document::Deployment(x) => format!(
                    "deployment {} at {}",
                    x.metadata.name.as_deref().unwrap_or("?"),
                    d.at
                ),
                Document::ClusterSidecarPolicy(p) => format!(
                    "cluster policy {} at {}",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    d.at
                ),
                Document::Namespace(n) => {
                    format!(
                        "namespace {} at {}",
                        n.metadata.name.as_deref().unwrap_or("?"),
                        d.at
                    )
                }
                Document::HorizontalPodAutoscaler(h) => {
                    format!("hpa {} at {}", h.metadata.name.as_deref().unwrap_or("?"), d.at)
                }
                Document::VerticalPodAutoscaler(v) => format!(
                    "vpa {} at {}",
                    v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?"),
                    d.at
                ),
            })
            .collect()
    }

    #[test]
    fn autoscalers_are_read_and_an_older_hpa_version_is_set_aside_not_refused() {
        let text = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: a}\n\
                    spec: {scaleTargetRef: {kind: Deployment, name: d}, maxReplicas: 2}\n---\n\
                    apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: b}\n---\n\
                    apiVersion: autoscaling.k8s.io/v1\nkind: VerticalPodAutoscaler\nmetadata: {name: c}\n";
        let found = split(&source(), text).unwrap();
        assert_eq!(
            summary(&found),
            ["hpa a at in.yaml document 1", "vpa c at in.yaml document 3"]
        );
        assert_eq!(found.ignored.len(), 1);
        assert_eq!(found.ignored[0].kind, "autoscaling/v1 HorizontalPodAutoscaler");
    }

    fn error(text: &str) -> String {
        split(&source(), text).unwrap_err().to_string()
    }

    #[test]
    fn multi_document_input_skips_empty_documents() {
        let text = format!(
            "---\n{POLICY}---\n# only a comment\n---\n{}",
            POLICY.replace("name: p", "name: q")
        );
        let found = split(&source(), &text).unwrap();
        assert_eq!(
            summary(&found),
            ["policy p at in.yaml document 1", "policy q at in.yaml document 3"],
            "document numbers count empty documents too"
        );
        assert!(found.ignored.is_empty());
    }

    #[test]
    fn other_kinds_are_set_aside_in_order() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n---\n{DEPLOYMENT}---\n\
             apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: x}}\n---\n{POLICY}"
        );
        let found = split(&source(), &text).unwrap();
        assert_eq!(
            summary(&found),
            [
                "deployment d at in.yaml document 2",
                "policy p at in.yaml document 4"
            ]
        );
        let ignored: Vec<String> = found
            .ignored
            .iter()
            .map(|i| format!("{} at {}", i.kind, i.at))
            .collect();
        assert_eq!(
            ignored,
            [
                "v1 Service at in.yaml document 1",
                "apiextensions.k8s.io/v1 CustomResourceDefinition at in.yaml document 3"
            ]
        );
    }

    #[test]
    fn a_kind_of_another_group_is_ignored_but_another_version_is_an_error() {
        let elsewhere = DEPLOYMENT.replace("apps/v1", "example.com/v1");
        let found = split(&source(), &elsewhere).unwrap();
        assert!(found.documents.is_empty());
        assert_eq!(found.ignored[0].kind, "example.com/v1 Deployment");

        assert_eq!(
            error(&DEPLOYMENT.replace("apps/v1", "apps/v1beta2")),
            "in.yaml document 1 is a apps/v1beta2 Deployment; sidecar-operator reads apps/v1 Deployment only"
        );
        assert_eq!(
            error(&POLICY.replace("v1alpha1", "v1")),
            "in.yaml document 1 is a sidecar.dev/v1 SidecarPolicy; sidecar-operator reads sidecar.dev/v1alpha1 SidecarPolicy only"
        );
    }

    #[test]
    fn lists_are_expanded_and_items_are_named() {
        let indent = |text: &str, by: &str| {
            text.lines()
                .enumerate()
                .map(|(i, line)| format!("{}{line}\n", if i == 0 { "- " } else { by }))
                .collect::<String>()
        };
        let stream = |nested: &str| {
            let inner = format!(
                "apiVersion: v1\nkind: List\nitems:\n{}{}",
                indent("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}", "  "),
                indent(nested, "  ")
            );
            format!(
                "{POLICY}---\napiVersion: v1\nkind: List\nitems:\n{}{}",
                indent(DEPLOYMENT, "  "),
                indent(&inner, "  ")
            )
        };
        let nested = DEPLOYMENT.replace("name: d", "name: nested");
        let text = stream(&nested);
        let found = split(&source(), &text).unwrap();
        assert_eq!(
            summary(&found),
            [
                "policy p at in.yaml document 1",
                "deployment d at in.yaml document 2 item 1",
                "deployment nested at in.yaml document 2 item 2.2",
            ]
        );
        assert_eq!(found.ignored[0].at.to_string(), "in.yaml document 2 item 2.1");

        let typo = nested.replace("  selector: {}", "  selector: {}\n  replica: 3");
        assert_eq!(
            error(&stream(&typo)),
            "in.yaml document 2 item 2.2 (apps/v1 Deployment \"nested\"): unknown field spec.replica"
        );
        assert_eq!(
            error("apiVersion: v1\nkind: List\nitems: {a: 1}\n"),
            "in.yaml document 1 is a v1 List whose items are not a list"
        );
        let empty = split(&source(), "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
        assert!(empty.documents.is_empty() && empty.ignored.is_empty());
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = POLICY.replace("  selector: {}", "  selector: {}\n  sidecar: []");
        assert_eq!(
            error(&text),
            "in.yaml document 1 (sidecar.dev/v1alpha1 SidecarPolicy \"p\"): unknown field spec.sidecar"
        );
    }

    #[test]
    fn unknown_fields_in_nested_types_have_engine_style_paths() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n      - {name: a, image: x}\n      - {name: b, imagee: x}\n";
        assert_eq!(
            error(deployment),
            "in.yaml document 1 (apps/v1 Deployment \"d\"): unknown field spec.template.spec.containers[1].imagee"
        );

        let probe = POLICY.replace(
            "image: \"b:1\"",
            "image: \"b:1\", startupProbe: {exec: {comand: [x]}}",
        );
        let err = error(&probe);
        assert!(
            err.ends_with("unknown field spec.sidecars[0].startupProbe.exec.comand"),
            "{err}"
        );
    }

    #[test]
    fn a_file_is_read_once() {
        let mut sources = Sources::new(std::io::empty());
        let path = Path::new("/nonexistent/sidecar-operator/p.yaml");
        assert!(matches!(sources.read(path), Err(InputError::Read { .. })));
        assert!(matches!(sources.read(path), Err(InputError::FileTwice { .. })));
        assert!(sources.read(Path::new("-")).is_ok());
        assert!(matches!(
            sources.read(Path::new("-")),
            Err(InputError::StdinTwice)
        ));
    }

    #[test]
    fn documents_that_are_not_objects_are_named() {
        assert_eq!(
            error("a: 1\n"),
            "in.yaml document 1 is not a Kubernetes object (it needs an apiVersion and a kind)"
        );
        assert_eq!(
            error("kind: Deployment\nmetadata: {name: d}\n"),
            "in.yaml document 1 is not a Kubernetes object (it needs an apiVersion and a kind)"
        );
        assert_eq!(
            error(&POLICY.replace("{name: p}", "{namespace: x}")),
            "in.yaml document 1: sidecar.dev/v1alpha1 SidecarPolicy has no metadata.name"
        );
    }

    #[test]
    fn a_key_given_twice_is_an_error() {
        let err =
            error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1'}\ndata: {y: '2'}\n");
        assert!(err.starts_with("in.yaml document 1: invalid YAML"), "{err}");
        assert!(err.contains(r#"duplicate entry with key "data""#), "{err}");
        // Keys that are numbers or booleans in YAML stay keys, as before.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {1: one, true: yes}\n";
        assert!(split(&source(), text).is_ok());
    }

    #[test]
    fn yaml_errors_carry_the_document() {
        let err = error("a: [1,\n");
        assert!(err.starts_with("in.yaml document 1: invalid YAML"), "{err}");
    }

    #[test]
    fn placing_fills_only_a_missing_namespace() {
        let mut meta = ObjectMeta::default();
        assert!(!place(&mut meta, "team"));
        assert_eq!(meta.namespace.as_deref(), Some("team"));
        assert!(place(&mut meta, "other"), "it has one now");
        assert_eq!(meta.namespace.as_deref(), Some("team"));

        let mut empty = ObjectMeta {
            namespace: Some(String::new()),
            ..ObjectMeta::default()
        };
        assert!(!place(&mut empty, "team"), "an empty namespace is none");
        assert_eq!(empty.namespace.as_deref(), Some("team"));
    }

    #[test]
    fn policy_names_are_unique_per_namespace() {
        let text = format!("{POLICY}---\n{POLICY}");
        let mut policies: Vec<Parsed<SidecarPolicy>> = split(&source(), &text)
            .unwrap()
            .documents
            .into_iter()
            .filter_map(|d| match d.object {
                Document::SidecarPolicy(p) => Some(Parsed { at: d.at, object: *p }),
                _ => None,
            })
            .collect();
        policies[0].object.metadata.namespace = Some("a".into());
        policies[1].object.metadata.namespace = Some("b".into());
        check_unique_policies(&policies).unwrap();

        policies[1].object.metadata.namespace = Some("a".into());
        assert_eq!(
            check_unique_policies(&policies).unwrap_err().to_string(),
            "SidecarPolicy \"p\" in namespace \"a\" is given twice: in.yaml document 1 and in.yaml document 2"
        );
    }
}
