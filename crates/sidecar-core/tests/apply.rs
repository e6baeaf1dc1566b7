//! The server-side apply configuration carries exactly the operator's fields.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use serde_json::json;
use sidecar_api::INJECTED_ANNOTATION;
use sidecar_core::{apply_patch, init_container_order};

fn full_policy() -> sidecar_api::SidecarPolicy {
    policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: full, namespace: demo}
spec:
  selector: {}
  sidecars: [{name: shipper, image: "busybox:1.36", volumeMounts: [{name: logs, mountPath: /logs}]}]
  volumes: [{name: logs, emptyDir: {}}]
  appContainers: [{volumeMounts: [{name: logs, mountPath: /var/log/app}], env: [{name: LOG_DIR, value: /var/log/app}]}]
  pod: {shareProcessNamespace: true, labels: {injected: "yes"}}
"#,
    )
}

#[test]
fn patch_holds_only_what_the_operator_injected() {
    let r = render(&web(), &[full_policy()]).unwrap();
    let patch = apply_patch(&r);
    let record = r.deployment.metadata.annotations.as_ref().unwrap()[INJECTED_ANNOTATION].clone();
    assert_eq!(
        patch,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo", "annotations": {INJECTED_ANNOTATION: record}},
            "spec": {"template": {
                "metadata": {"labels": {"injected": "yes"}},
                "spec": {
                    "initContainers": [{
                        "name": "shipper", "image": "busybox:1.36", "restartPolicy": "Always",
                        "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
                    }],
                    "containers": [{
                        "name": "web",
                        "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app"}],
                        "env": [{"name": "LOG_DIR", "value": "/var/log/app"}],
                    }],
                    "volumes": [{"name": "logs", "emptyDir": {}}],
                    "shareProcessNamespace": true,
                }
            }}
        })
    );
    assert_eq!(
        init_container_order(&r),
        ["shipper", "migrate"],
        "the owner's init container is not sent, but ordered"
    );
}

#[test]
fn patch_without_policies_releases_everything() {
    let injected = rendered(&web(), &[full_policy()]);
    let r = render(&injected, &[]).unwrap();
    assert_eq!(
        apply_patch(&r),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"}})
    );
}

#[test]
fn a_label_the_owner_already_has_is_not_sent() {
    let mut p = full_policy();
    p.spec
        .pod
        .as_mut()
        .unwrap()
        .labels
        .insert("app".into(), "web".into());
    let patch = apply_patch(&render(&web(), &[p]).unwrap());
    assert_eq!(
        patch["spec"]["template"]["metadata"]["labels"],
        json!({"injected": "yes"})
    );
}
