//! The `record` target: the `sidecar.dev/injected` annotation, which anyone who can edit a
//! Deployment can change, and the compact facts the controller's cache keeps and reads back.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, VolumeMount};
use sidecar_api::INJECTED_ANNOTATION;
use sidecar_core::{DeploymentFacts, Guardrails, InjectionRecord, PolicySet};

use crate::{Violation, same};

/// `data` as an annotation value: parsing never panics, and a record that parses is written
/// back as one that parses to the same policies (a first-release record's legacy part is
/// dropped by design: the next write replaces it) and to the same text again. On a Deployment,
/// the facts the controller caches (compact, then expanded) are the facts of the Deployment
/// itself, and stripping the record never panics.
pub fn check(data: &[u8]) -> Result<(), Violation> {
    // Annotation values are strings; the API server accepts nothing else.
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    if let Ok(record) = InjectionRecord::parse(text) {
        let written = record.to_annotation();
        let again = InjectionRecord::parse(&written)
            .map_err(|e| format!("the written record {written:?} does not parse: {e}"))?;
        let expected = InjectionRecord {
            policies: record.policies.clone(),
            legacy: None,
        };
        same("parse(write(record)) != record", &again, &expected)?;
        same(
            "the record is written differently the second time",
            &again.to_annotation(),
            &written,
        )?;
    }

    let deployment = carrying(text);
    let facts = DeploymentFacts::of(&deployment);
    let cached = DeploymentFacts::expand(&DeploymentFacts::compact(&deployment));
    same("expand(compact(d)) != the facts of d", &cached, &facts)?;
    // The cache never holds anything but its own text; this only must not panic.
    let _ = DeploymentFacts::expand(text);
    // Removal of everything: strips what the record lists, or refuses a damaged record.
    let _ = PolicySet::new(&[], &Guardrails::default()).render(&deployment);
    Ok(())
}

/// A Deployment whose names overlap those the seeds' records list, annotated with `record`.
fn carrying(record: &str) -> Deployment {
    let mut deployment = Deployment::default();
    deployment.metadata.name = Some("web".into());
    deployment.metadata.annotations = Some(BTreeMap::from([(
        INJECTED_ANNOTATION.to_owned(),
        record.to_owned(),
    )]));
    let container = |name: &str| Container {
        name: name.into(),
        image: Some("app:1".into()),
        ..Container::default()
    };
    let web = Container {
        env: Some(vec![EnvVar {
            name: "MODE".into(),
            value: Some("prod".into()),
            ..EnvVar::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "logs".into(),
            mount_path: "/logs".into(),
            ..VolumeMount::default()
        }]),
        ..container("web")
    };
    deployment.spec.template.spec = Some(PodSpec {
        containers: vec![web],
        init_containers: Some(vec![container("log-forwarder"), container("migrate")]),
        ..PodSpec::default()
    });
    deployment
}
