//! Reading SidecarPolicies and Deployments from YAML files, with errors that name the file, the
//! document and the field.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sidecar_api::SidecarPolicy;

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
    #[error("{at} is {found}; expected {expected}")]
    WrongKind {
        at: DocumentRef,
        found: String,
        expected: Kind,
    },
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
    #[error(
        "{first} is in namespace {first_namespace:?} but {second} is in namespace {second_namespace:?}; \
         a SidecarPolicy only affects Deployments in its own namespace, so render one namespace at a time"
    )]
    MixedNamespaces {
        first: String,
        first_namespace: String,
        second: String,
        second_namespace: String,
    },
    #[error("SidecarPolicy {name:?} is given twice: {first} and {second}")]
    DuplicatePolicy {
        name: String,
        first: DocumentRef,
        second: DocumentRef,
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

/// Document `index` (1-based) of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentRef {
    pub source: SourceName,
    pub index: usize,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.source, self.index)
    }
}

/// The kinds of object the render command reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SidecarPolicy,
    Deployment,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::SidecarPolicy => "sidecar.dev/v1alpha1",
            Kind::Deployment => "apps/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::SidecarPolicy => "SidecarPolicy",
            Kind::Deployment => "Deployment",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version(), self.name())
    }
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

/// Every object of `kind` in a (possibly multi-document) YAML text. Empty documents are skipped;
/// a document of another kind, an unknown field or a type error is an error.
pub fn parse_all<T: DeserializeOwned>(
    source: &SourceName,
    text: &str,
    kind: Kind,
) -> Result<Vec<Parsed<T>>, InputError> {
    let mut objects = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = DocumentRef {
            source: source.clone(),
            index: i + 1,
        };
        let value = Value::deserialize(document).map_err(|source| InputError::Yaml {
            at: at.clone(),
            source,
        })?;
        if value.is_null() {
            continue;
        }
        let object = parse_document(&at, value, kind)?;
        objects.push(Parsed { at, object });
    }
    if objects.is_empty() {
        return Err(InputError::NothingFound {
            source_name: source.clone(),
            expected: kind,
        });
    }
    Ok(objects)
}

fn parse_document<T: DeserializeOwned>(at: &DocumentRef, value: Value, kind: Kind) -> Result<T, InputError> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let found_kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != kind.api_version() || found_kind != kind.name() {
        let found = match (api_version, found_kind) {
            ("", "") => "not a Kubernetes object (no apiVersion and kind)".to_owned(),
            (version, name) => format!("a {version} {name}"),
        };
        return Err(InputError::WrongKind {
            at: at.clone(),
            found,
            expected: kind,
        });
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        return Err(InputError::Unnamed { at: at.clone(), kind });
    }
    let mut unknown = Vec::new();
    // apiVersion and kind were checked above; the derived CRD type does not read them.
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

/// Puts every object in one namespace: the one that those with a namespace share, or `default`.
/// Returns whether each Deployment had its namespace set, so the output can leave it out again.
pub fn unify_namespaces(
    policies: &mut [Parsed<SidecarPolicy>],
    deployments: &mut [Parsed<Deployment>],
) -> Result<Vec<bool>, InputError> {
    let mut chosen: Option<(String, String)> = None; // (namespace, who set it)
    let described = policies
        .iter()
        .map(|p| {
            (
                describe(&p.at, Kind::SidecarPolicy, p.object.metadata.name.as_deref()),
                p.object.metadata.namespace.clone(),
            )
        })
        .chain(deployments.iter().map(|d| {
            (
                describe(&d.at, Kind::Deployment, d.object.metadata.name.as_deref()),
                d.object.metadata.namespace.clone(),
            )
        }));
    for (who, namespace) in described {
        let Some(namespace) = namespace else { continue };
        match &chosen {
            None => chosen = Some((namespace, who)),
            Some((first_namespace, first)) if *first_namespace != namespace => {
                return Err(InputError::MixedNamespaces {
                    first: first.clone(),
                    first_namespace: first_namespace.clone(),
                    second: who,
                    second_namespace: namespace,
                });
            }
            Some(_) => {}
        }
    }
    let namespace = chosen.map(|(ns, _)| ns).unwrap_or_else(|| "default".to_owned());
    for p in policies.iter_mut() {
        p.object
            .metadata
            .namespace
            .get_or_insert_with(|| namespace.clone());
    }
    let had_namespace = deployments
        .iter()
        .map(|d| d.object.metadata.namespace.is_some())
        .collect();
    for d in deployments.iter_mut() {
        d.object
            .metadata
            .namespace
            .get_or_insert_with(|| namespace.clone());
    }
    Ok(had_namespace)
}

/// Duplicate policy names would make the render depend on file order.
pub fn check_unique_policies(policies: &[Parsed<SidecarPolicy>]) -> Result<(), InputError> {
    for (i, policy) in policies.iter().enumerate() {
        if let Some(earlier) = policies[..i]
            .iter()
            .find(|p| p.object.metadata.name == policy.object.metadata.name)
        {
            return Err(InputError::DuplicatePolicy {
                name: policy.object.metadata.name.clone().unwrap_or_default(),
                first: earlier.at.clone(),
                second: policy.at.clone(),
            });
        }
    }
    Ok(())
}

fn describe(at: &DocumentRef, kind: Kind, name: Option<&str>) -> String {
    format!("{} {:?} ({at})", kind.name(), name.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceName {
        SourceName::new(Path::new("in.yaml"))
    }

    const POLICY: &str = "apiVersion: sidecar.dev/v1alpha1\nkind: SidecarPolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n  sidecars: [{name: s, image: \"b:1\"}]\n";

    #[test]
    fn multi_document_input_skips_empty_documents() {
        let text = format!("---\n{POLICY}---\n---\n{}", POLICY.replace("name: p", "name: q"));
        let parsed: Vec<Parsed<SidecarPolicy>> = parse_all(&source(), &text, Kind::SidecarPolicy).unwrap();
        let names: Vec<_> = parsed
            .iter()
            .map(|p| p.object.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["p", "q"]);
        assert_eq!(
            parsed[1].at.index, 3,
            "document numbers count empty documents too"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = POLICY.replace("  selector: {}", "  selector: {}\n  sidecar: []");
        let err = parse_all::<SidecarPolicy>(&source(), &text, Kind::SidecarPolicy).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in.yaml document 1 (sidecar.dev/v1alpha1 SidecarPolicy \"p\"): unknown field spec.sidecar"
        );
    }

    #[test]
    fn unknown_fields_in_nested_types_have_engine_style_paths() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n      - {name: a, image: x}\n      - {name: b, imagee: x}\n";
        let err = parse_all::<Deployment>(&source(), deployment, Kind::Deployment).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in.yaml document 1 (apps/v1 Deployment \"d\"): unknown field spec.template.spec.containers[1].imagee"
        );

        let probe = POLICY.replace(
            "image: \"b:1\"",
            "image: \"b:1\", startupProbe: {exec: {comand: [x]}}",
        );
        let err = parse_all::<SidecarPolicy>(&source(), &probe, Kind::SidecarPolicy).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("unknown field spec.sidecars[0].startupProbe.exec.comand"),
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
    fn wrong_kinds_are_named() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n";
        let err = parse_all::<SidecarPolicy>(&source(), text, Kind::SidecarPolicy).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in.yaml document 1 is a v1 Service; expected sidecar.dev/v1alpha1 SidecarPolicy"
        );
    }

    #[test]
    fn yaml_errors_carry_the_document() {
        let err = parse_all::<SidecarPolicy>(&source(), "a: [1,\n", Kind::SidecarPolicy).unwrap_err();
        assert!(
            err.to_string().starts_with("in.yaml document 1: invalid YAML"),
            "{err}"
        );
    }

    #[test]
    fn namespaces_are_unified_or_refused() {
        let mut policies: Vec<Parsed<SidecarPolicy>> =
            parse_all(&source(), POLICY, Kind::SidecarPolicy).unwrap();
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: team}\nspec:\n  selector: {}\n  template: {}\n";
        let mut deployments: Vec<Parsed<Deployment>> =
            parse_all(&source(), deployment, Kind::Deployment).unwrap();
        assert_eq!(unify_namespaces(&mut policies, &mut deployments).unwrap(), [true]);
        assert_eq!(policies[0].object.metadata.namespace.as_deref(), Some("team"));

        policies[0].object.metadata.namespace = Some("other".into());
        let err = unify_namespaces(&mut policies, &mut deployments).unwrap_err();
        assert!(matches!(err, InputError::MixedNamespaces { .. }), "{err}");
    }
}
