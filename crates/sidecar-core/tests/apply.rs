//! The server-side apply configuration carries exactly the operator's fields.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use serde_json::json;
use sidecar_api::INJECTED_ANNOTATION;
use sidecar_core::{apply_patch, init_container_order, is_up_to_date};

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

/// The API server adds defaults to what it stores; they must not look like drift.
fn with_server_defaults(
    mut d: k8s_openapi::api::apps::v1::Deployment,
) -> k8s_openapi::api::apps::v1::Deployment {
    let pod = d.spec.template.spec.as_mut().unwrap();
    for c in pod
        .init_containers
        .iter_mut()
        .flatten()
        .chain(pod.containers.iter_mut())
    {
        c.image_pull_policy = Some("IfNotPresent".into());
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    pod.restart_policy = Some("Always".into());
    pod.dns_policy = Some("ClusterFirst".into());
    d
}

#[test]
fn a_stored_deployment_with_server_defaults_is_up_to_date() {
    let policies = [full_policy()];
    let live = with_server_defaults(rendered(&web(), &policies));
    assert!(is_up_to_date(&live, &render(&live, &policies).unwrap()));
}

#[test]
fn content_changes_are_seen_even_when_names_stay() {
    let mut with_args = full_policy();
    with_args.spec.sidecars[0].args = Some(vec!["--verbose".into()]);
    let live = with_server_defaults(rendered(&web(), &[with_args]));
    // The policy drops the args: same names, different content.
    assert!(!is_up_to_date(&live, &render(&live, &[full_policy()]).unwrap()));
}

#[test]
fn drift_in_an_owned_field_and_wrong_order_are_seen() {
    let policies = [full_policy()];
    let mut edited = with_server_defaults(rendered(&web(), &policies));
    edited
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()[0]
        .image = Some("busybox:9".into());
    assert!(!is_up_to_date(&edited, &render(&edited, &policies).unwrap()));

    let mut reordered = with_server_defaults(rendered(&web(), &policies));
    reordered
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()
        .reverse();
    assert!(!is_up_to_date(
        &reordered,
        &render(&reordered, &policies).unwrap()
    ));
}

#[test]
fn an_untouched_deployment_without_policies_is_up_to_date() {
    let live = with_server_defaults(web());
    assert!(is_up_to_date(&live, &render(&live, &[]).unwrap()));
    let injected = with_server_defaults(rendered(&web(), &[full_policy()]));
    assert!(
        !is_up_to_date(&injected, &render(&injected, &[]).unwrap()),
        "removal is a change"
    );
}

#[test]
fn quantities_are_compared_by_amount() {
    use sidecar_core::contains;
    let live = json!({"resources": {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "1"}},
                      "emptyDir": {"sizeLimit": "1Gi"}, "args": ["0.1"]});
    assert!(contains(
        &live,
        &json!({"resources": {"requests": {"cpu": "0.1", "memory": "1024Mi"}, "limits": {"cpu": "1000m"}}})
    ));
    assert!(contains(&live, &json!({"emptyDir": {"sizeLimit": "1024Mi"}})));
    assert!(!contains(
        &live,
        &json!({"resources": {"requests": {"cpu": "0.2"}}})
    ));
    assert!(
        !contains(&live, &json!({"args": ["100m"]})),
        "only resource quantities are amounts"
    );
}
