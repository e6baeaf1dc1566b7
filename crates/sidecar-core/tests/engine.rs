//! One test (at least) per engine rule. Each builds a Deployment and policies, renders, and
//! checks the outcome; breaking the rule makes the test fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use sidecar_api::{INJECT_ANNOTATION, INJECTED_ANNOTATION};
use sidecar_core::{Guardrails, InjectionRecord, PolicySet, ProblemKind, matching_policies};

#[test]
fn sidecar_is_injected_as_native_sidecar_with_a_record() {
    let original = web();
    let r = render(&original, &[sidecar_policy("shipper", "shipper")]).unwrap();
    let sidecar = init_containers(&r.deployment)
        .into_iter()
        .find(|c| c.name == "shipper")
        .unwrap();
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some("busybox:1.36"));
    assert_eq!(r.applied(), ["shipper"]);
    let record = InjectionRecord::read(&r.deployment).unwrap().unwrap();
    assert_eq!(record.policy_names().collect::<Vec<_>>(), ["shipper"]);
    let entry = record.entry("shipper").unwrap();
    assert_eq!(
        entry.injected.init_containers.iter().collect::<Vec<_>>(),
        ["shipper"]
    );
    assert_eq!(
        entry.revision,
        sidecar_core::revision::of(&sidecar_policy("shipper", "shipper")),
        "the record names the revision it was rendered from"
    );
    assert!(r.changes(&original));
    // The record lives on the Deployment, not on the pod template: bookkeeping never rolls pods.
    let template_annotations = r
        .deployment
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone();
    assert!(template_annotations.is_none_or(|a| !a.contains_key(INJECTED_ANNOTATION)));
}

#[test]
fn rendering_a_rendered_deployment_changes_nothing() {
    let policies = [sidecar_policy("a", "side-a"), sidecar_policy("b", "side-b")];
    let once = rendered(&web(), &policies);
    let twice = render(&once, &policies).unwrap();
    assert_eq!(twice.deployment, once);
    assert!(!twice.changes(&once));
}

#[test]
fn no_matching_policy_restores_exactly_what_the_owner_wrote() {
    let original = web();
    let mut p = sidecar_policy("full", "shipper");
    p.spec = policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: full, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  initContainers: [{name: setup, image: "setup:1"}]
  sidecars: [{name: shipper, image: "busybox:1.36", volumeMounts: [{name: logs, mountPath: /logs}]}]
  volumes: [{name: logs, emptyDir: {}}]
  appContainers: [{volumeMounts: [{name: logs, mountPath: /var/log/app}], env: [{name: LOG_DIR, value: /var/log/app}]}]
  pod: {shareProcessNamespace: true, labels: {injected: "yes"}, annotations: {prometheus.io/scrape: "true"}}
"#,
    )
    .spec;
    let injected = rendered(&original, &[p]);
    assert_ne!(injected, original);
    assert_eq!(rendered(&injected, &[]), original);
}

#[test]
fn removal_never_touches_owner_fields_of_the_same_shape() {
    // The owner has, in another container, exactly the mount and env var the policy adds to `web`.
    let mut original = web();
    let pod = original.spec.template.spec.as_mut().unwrap();
    let mut worker = pod.containers[0].clone();
    worker.name = "worker".into();
    worker.ports = None;
    worker.volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "cache", "mountPath": "/shared"})).unwrap(),
    ]);
    worker.env = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "SHARED", "value": "1"})).unwrap(),
    ]);
    pod.containers.push(worker);
    let p = policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: p, namespace: demo}
spec:
  selector: {}
  sidecars: [{name: s, image: "busybox:1.36"}]
  appContainers: [{containerNames: [web], volumeMounts: [{name: cache, mountPath: /shared}], env: [{name: SHARED, value: "1"}]}]
"#,
    );
    let injected = rendered(&original, &[p]);
    assert!(
        app(&injected, "web")
            .env
            .unwrap()
            .iter()
            .any(|e| e.name == "SHARED")
    );
    let restored = rendered(&injected, &[]);
    assert_eq!(restored, original);
    assert!(
        app(&restored, "worker")
            .env
            .unwrap()
            .iter()
            .any(|e| e.name == "SHARED")
    );
}

#[test]
fn policy_update_replaces_what_the_previous_version_injected() {
    let v1 = sidecar_policy("p", "old");
    let v2 = sidecar_policy("p", "new");
    let after_v1 = rendered(&web(), &[v1]);
    let after_v2 = rendered(&after_v1, std::slice::from_ref(&v2));
    assert_eq!(init_names(&after_v2), vec!["new", "migrate"]);
    assert_eq!(after_v2, rendered(&web(), &[v2]));
}

#[test]
fn order_then_name_then_list_order_and_placement() {
    let mut late = sidecar_policy("late", "late-side");
    late.spec.order = 10;
    let mut early = sidecar_policy("zz-early", "early-side");
    early.spec.order = -5;
    early.spec.init_containers =
        vec![serde_json::from_value(serde_json::json!({"name": "early-init", "image": "i:1"})).unwrap()];
    let tie_b = sidecar_policy("tie-b", "b-side");
    let tie_a = sidecar_policy("tie-a", "a-side");
    let mut after = sidecar_policy("after", "after-side");
    after.spec.placement = sidecar_api::Placement::AfterAppInitContainers;
    after.spec.order = -100;

    let d = rendered(&web(), &[late, tie_b, after, early, tie_a]);
    assert_eq!(
        init_names(&d),
        vec![
            "early-init",
            "early-side",
            "a-side",
            "b-side",
            "late-side",
            "migrate",
            "after-side"
        ]
    );
    // Sidecars are native sidecars; the policy's own init container runs to completion.
    for c in init_containers(&d) {
        let expected = if c.name.ends_with("-side") {
            Some("Always")
        } else {
            None
        };
        assert_eq!(c.restart_policy.as_deref(), expected, "{}", c.name);
    }
}

#[test]
fn owner_init_containers_keep_their_relative_order() {
    let mut d = web();
    let pod = d.spec.template.spec.as_mut().unwrap();
    let mut second = pod.init_containers.as_ref().unwrap()[0].clone();
    second.name = "wait-db".into();
    pod.init_containers.as_mut().unwrap().push(second);
    let mut after = sidecar_policy("after", "s2");
    after.spec.placement = sidecar_api::Placement::AfterAppInitContainers;
    let r = rendered(&d, &[sidecar_policy("before", "s1"), after]);
    assert_eq!(init_names(&r), vec!["s1", "migrate", "wait-db", "s2"]);
}

#[test]
fn matching_uses_labels_namespace_and_sorts() {
    let mut other_ns = sidecar_policy("other", "o");
    other_ns.metadata.namespace = Some("elsewhere".into());
    let mut not_selected = sidecar_policy("api-only", "x");
    not_selected.spec.selector =
        serde_json::from_value(serde_json::json!({"matchLabels": {"app": "api"}})).unwrap();
    let mut expr = sidecar_policy("expr", "e");
    expr.spec.selector = serde_json::from_value(serde_json::json!({
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}, {"key": "canary", "operator": "DoesNotExist"}]
    }))
    .unwrap();
    let mut everything = sidecar_policy("all", "a");
    everything.spec.selector = Default::default();
    let policies = [other_ns, not_selected, expr, everything];
    let names: Vec<_> = matching_policies(&web(), &policies)
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["all", "expr"]);
    let r = rendered(&web(), &policies);
    assert_eq!(init_names(&r), vec!["a", "e", "migrate"]);
}

#[test]
fn opt_out_gets_nothing_and_loses_what_was_injected() {
    let policies = [sidecar_policy("p", "s")];
    let original = web();
    let injected = rendered(&original, &policies);
    let mut opted = injected.clone();
    opted
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(INJECT_ANNOTATION.into(), "false".into());
    let r = render(&opted, &policies).unwrap();
    assert!(r.applied().is_empty());
    let mut expected = original;
    expected.metadata.annotations = Some([(INJECT_ANNOTATION.to_owned(), "false".to_owned())].into());
    assert_eq!(r.deployment, expected);
    assert!(matching_policies(&opted, &policies).is_empty());
}

#[test]
fn unknown_opt_out_value_is_a_warning() {
    let mut d = web();
    d.metadata.annotations = Some([(INJECT_ANNOTATION.to_owned(), "no".to_owned())].into());
    let r = render(&d, &[sidecar_policy("p", "s")]).unwrap();
    assert_eq!(r.applied(), ["p"], "only \"false\" opts out");
    assert!(
        r.warnings.iter().any(|w| w.field.contains(INJECT_ANNOTATION)),
        "{:?}",
        r.warnings
    );
}

fn assert_conflict(refusal: &sidecar_core::Refusal, policy: &str, field: &str, other_party: &str) {
    let found = refusal
        .problems
        .iter()
        .find(|p| p.policy == policy && p.field == field);
    let Some(problem) = found else {
        panic!(
            "no problem for policy {policy} at {field}; got {:#?}",
            refusal.problems
        );
    };
    assert_eq!(problem.kind, ProblemKind::Conflict);
    assert!(
        problem.message.contains(other_party),
        "{:?} should name {other_party}",
        problem.message
    );
}

#[test]
fn sidecar_named_like_an_app_container_is_a_conflict() {
    let r = refusal(&web(), &[sidecar_policy("p", "web")]);
    assert_conflict(
        &r,
        "p",
        "spec.sidecars[0].name",
        "Deployment \"web\" (spec.template.spec.containers[0])",
    );
}

#[test]
fn sidecar_named_like_an_owner_init_container_is_a_conflict() {
    let r = refusal(&web(), &[sidecar_policy("p", "migrate")]);
    assert_conflict(
        &r,
        "p",
        "spec.sidecars[0].name",
        "spec.template.spec.initContainers[0]",
    );
}

#[test]
fn two_policies_injecting_one_name_is_a_conflict() {
    let r = refusal(
        &web(),
        &[sidecar_policy("a", "proxy"), sidecar_policy("b", "proxy")],
    );
    assert_conflict(
        &r,
        "b",
        "spec.sidecars[0].name",
        "SidecarPolicy \"a\" (spec.sidecars[0].name)",
    );
}

#[test]
fn volume_names_conflict_with_the_deployment_and_other_policies() {
    let with_volume = |name: &str, volume: &str| {
        let mut p = sidecar_policy(name, &format!("{name}-side"));
        p.spec.volumes =
            vec![serde_json::from_value(serde_json::json!({"name": volume, "emptyDir": {}})).unwrap()];
        p
    };
    let r = refusal(&web(), &[with_volume("a", "cache")]);
    assert_conflict(&r, "a", "spec.volumes[0].name", "spec.template.spec.volumes[0]");
    let r = refusal(&web(), &[with_volume("a", "shared"), with_volume("b", "shared")]);
    assert_conflict(&r, "b", "spec.volumes[0].name", "SidecarPolicy \"a\"");
}

fn with_patch(name: &str, patch: serde_json::Value) -> sidecar_api::SidecarPolicy {
    let mut p = sidecar_policy(name, &format!("{name}-side"));
    p.spec.app_containers = vec![serde_json::from_value(patch).unwrap()];
    p
}

#[test]
fn app_mount_path_already_used_is_a_conflict() {
    let patch = serde_json::json!({"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]});
    let r = refusal(&web(), &[with_patch("p", patch.clone())]);
    assert_conflict(
        &r,
        "p",
        "spec.appContainers[0].volumeMounts[0].mountPath",
        "spec.template.spec.containers[0].volumeMounts[0]",
    );
    let other = serde_json::json!({"volumeMounts": [{"name": "cache", "mountPath": "/other"}]});
    let r = refusal(&web(), &[with_patch("a", other.clone()), with_patch("b", other)]);
    assert_conflict(
        &r,
        "b",
        "spec.appContainers[0].volumeMounts[0].mountPath",
        "SidecarPolicy \"a\"",
    );
}

#[test]
fn app_env_var_already_set_is_a_conflict() {
    let r = refusal(
        &web(),
        &[with_patch(
            "p",
            serde_json::json!({"env": [{"name": "MODE", "value": "x"}]}),
        )],
    );
    assert_conflict(
        &r,
        "p",
        "spec.appContainers[0].env[0].name",
        "spec.template.spec.containers[0].env[0]",
    );
}

#[test]
fn mounting_an_undefined_volume_is_refused() {
    let r = refusal(
        &web(),
        &[with_patch(
            "p",
            serde_json::json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        )],
    );
    assert_conflict(
        &r,
        "p",
        "spec.appContainers[0].volumeMounts[0].name",
        "neither this policy nor Deployment \"web\"",
    );
    let mut p = sidecar_policy("q", "s");
    p.spec.sidecars[0].volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "nope", "mountPath": "/x"})).unwrap(),
    ]);
    let r = refusal(&web(), &[p]);
    assert_conflict(
        &r,
        "q",
        "spec.sidecars[0].volumeMounts[0].name",
        "neither this policy",
    );
    // Mounting the Deployment's own volume is fine.
    let ok = with_patch(
        "p",
        serde_json::json!({"volumeMounts": [{"name": "cache", "mountPath": "/more-cache"}]}),
    );
    assert!(render(&web(), &[ok]).is_ok());
}

#[test]
fn port_clash_is_a_conflict() {
    let with_port = |name: &str, port: i32, protocol: Option<&str>| {
        let mut p = sidecar_policy(name, &format!("{name}-side"));
        p.spec.sidecars[0].ports = Some(vec![
            serde_json::from_value(serde_json::json!({"containerPort": port, "protocol": protocol})).unwrap(),
        ]);
        p
    };
    let r = refusal(&web(), &[with_port("p", 80, None)]);
    assert_conflict(
        &r,
        "p",
        "spec.sidecars[0].ports[0].containerPort",
        "spec.template.spec.containers[0].ports[0]",
    );
    let r = refusal(
        &web(),
        &[with_port("a", 9090, None), with_port("b", 9090, Some("TCP"))],
    );
    assert_conflict(
        &r,
        "b",
        "spec.sidecars[0].ports[0].containerPort",
        "SidecarPolicy \"a\"",
    );
    // Another protocol on the same number is no clash.
    assert!(render(&web(), &[with_port("p", 80, Some("UDP"))]).is_ok());
}

#[test]
fn pod_settings_conflict_only_when_different() {
    let with_pod = |name: &str, pod: serde_json::Value| {
        let mut p = sidecar_policy(name, &format!("{name}-side"));
        p.spec.pod = Some(serde_json::from_value(pod).unwrap());
        p
    };
    let r = refusal(
        &web(),
        &[with_pod("p", serde_json::json!({"labels": {"app": "other"}}))],
    );
    assert_conflict(
        &r,
        "p",
        "spec.pod.labels[\"app\"]",
        "spec.template.metadata.labels[\"app\"]",
    );

    let mut d = web();
    d.spec.template.spec.as_mut().unwrap().share_process_namespace = Some(false);
    let r = refusal(
        &d,
        &[with_pod("p", serde_json::json!({"shareProcessNamespace": true}))],
    );
    assert_conflict(
        &r,
        "p",
        "spec.pod.shareProcessNamespace",
        "spec.template.spec.shareProcessNamespace",
    );

    let r = refusal(
        &web(),
        &[
            with_pod("a", serde_json::json!({"annotations": {"x": "1"}})),
            with_pod("b", serde_json::json!({"annotations": {"x": "2"}})),
        ],
    );
    assert_conflict(&r, "b", "spec.pod.annotations[\"x\"]", "SidecarPolicy \"a\"");

    // A label the owner already set to the same value is satisfied, not taken over: removal keeps it.
    let same = with_pod("p", serde_json::json!({"labels": {"app": "web"}}));
    let injected = rendered(&web(), &[same]);
    assert!(
        InjectionRecord::read(&injected)
            .unwrap()
            .unwrap()
            .injected()
            .pod_labels
            .is_empty()
    );
    assert_eq!(rendered(&injected, &[]), web());
}

#[test]
fn one_bad_policy_refuses_the_whole_render() {
    let refusal = refusal(
        &web(),
        &[sidecar_policy("good", "fine"), sidecar_policy("bad", "web")],
    );
    assert_eq!(refusal.deployment, "web");
    assert_eq!(refusal.problems.len(), 1);
    assert!(
        refusal
            .to_string()
            .contains("SidecarPolicy \"bad\" spec.sidecars[0].name"),
        "{refusal}"
    );
}

#[test]
fn guardrails_refuse_privileged_asks_unless_allowed() {
    let p = policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: risky, namespace: demo}
spec:
  selector: {}
  initContainers:
  - name: iptables
    image: "init:1"
    securityContext: {runAsUser: 0, runAsNonRoot: false, capabilities: {add: [NET_ADMIN, CAP_NET_RAW]}}
  sidecars:
  - {name: debug, image: "busybox:1.36", securityContext: {privileged: true}}
  volumes: [{name: host, hostPath: {path: /var/log}}]
"#,
    );
    let refusal = sidecar_core::render(&web(), std::slice::from_ref(&p), &Guardrails::default()).unwrap_err();
    let fields: Vec<_> = refusal
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Refused)
        .map(|p| p.field.as_str())
        .collect();
    for expected in [
        "spec.initContainers[0].securityContext.runAsUser",
        "spec.initContainers[0].securityContext.runAsNonRoot",
        "spec.initContainers[0].securityContext.capabilities.add[0]",
        "spec.initContainers[0].securityContext.capabilities.add[1]",
        "spec.sidecars[0].securityContext.privileged",
        "spec.volumes[0].hostPath",
    ] {
        assert!(fields.contains(&expected), "{expected} not refused: {fields:?}");
    }
    assert!(refusal.problems.iter().all(|p| p.policy == "risky"));

    let mut allowed = Guardrails {
        allow_privileged: true,
        allow_host_path: true,
        allow_run_as_root: true,
        ..Default::default()
    };
    allowed.allow_capability("net_admin");
    let still = sidecar_core::render(&web(), std::slice::from_ref(&p), &allowed).unwrap_err();
    assert_eq!(still.problems.len(), 1, "{still}");
    assert!(
        still.problems[0].message.contains("--allow-capability NET_RAW"),
        "{still}"
    );
    allowed.allow_capability("CAP_NET_RAW");
    assert!(sidecar_core::render(&web(), &[p], &allowed).is_ok());
}

#[test]
fn invalid_policies_are_refused_with_the_field() {
    let cases = [
        (
            "sidecars: [{name: s, image: \"b:1\", restartPolicy: OnFailure}]",
            "spec.sidecars[0].restartPolicy",
        ),
        (
            "initContainers: [{name: i, image: \"b:1\", restartPolicy: Always}]",
            "spec.initContainers[0].restartPolicy",
        ),
        (
            "sidecars: [{name: Bad_Name, image: \"b:1\"}]",
            "spec.sidecars[0].name",
        ),
        ("sidecars: [{name: s}]", "spec.sidecars[0].image"),
        (
            "sidecars: [{name: s, image: \"b:1\"}]\n  initContainers: [{name: s, image: \"b:1\"}]",
            "spec.sidecars[0].name",
        ),
        ("volumes: [{name: v, emptyDir: {}}]", "spec"),
        (
            "order: 5000\n  sidecars: [{name: s, image: \"b:1\"}]",
            "spec.order",
        ),
        (
            "sidecars: [{name: s, image: \"b:1\"}]\n  appContainers: [{containerNames: [web]}]",
            "spec.appContainers[0]",
        ),
        (
            "sidecars: [{name: s, image: \"b:1\"}]\n  pod: {labels: {\"bad key\": x}}",
            "spec.pod.labels[\"bad key\"]",
        ),
    ];
    for (spec, field) in cases {
        let p = policy(&format!(
            "apiVersion: sidecar.dev/v1alpha1\nkind: SidecarPolicy\nmetadata: {{name: p, namespace: demo}}\nspec:\n  selector: {{}}\n  {spec}\n"
        ));
        let refusal = refusal(&web(), &[p]);
        assert!(
            refusal
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::Invalid && p.field == field),
            "{spec}: expected an Invalid problem at {field}, got {:#?}",
            refusal.problems
        );
    }
}

#[test]
fn invalid_selector_refuses_the_render() {
    let mut p = sidecar_policy("p", "s");
    p.spec.selector =
        serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "app", "operator": "In"}]}))
            .unwrap();
    let r = refusal(&web(), &[p]);
    assert_eq!(r.problems[0].field, "spec.selector.matchExpressions[0]");
    assert_eq!(r.problems[0].kind, ProblemKind::Invalid);
}

#[test]
fn a_damaged_record_is_refused_not_guessed() {
    let mut d = rendered(&web(), &[sidecar_policy("p", "s")]);
    d.metadata
        .annotations
        .get_or_insert_default()
        .insert(INJECTED_ANNOTATION.into(), "{not json".into());
    let r = refusal(&d, &[sidecar_policy("p", "s")]);
    assert!(r.problems[0].field.contains(INJECTED_ANNOTATION));
    assert!(r.problems[0].message.contains("edited by hand"));
}

#[test]
fn warnings_flag_likely_mistakes_without_blocking() {
    let p = policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: w, namespace: demo}
spec:
  selector: {}
  sidecars: [{name: s, image: busybox}]
  appContainers: [{containerNames: [missing], env: [{name: X, value: "1"}]}]
"#,
    );
    let r = render(&web(), &[p]).unwrap();
    let fields: Vec<_> = r.warnings.iter().map(|w| w.field.as_str()).collect();
    for expected in [
        "spec.sidecars[0].startupProbe",
        "spec.sidecars[0].resources.requests",
        "spec.sidecars[0].image",
        "spec.appContainers[0].containerNames[0]",
    ] {
        assert!(fields.contains(&expected), "no warning at {expected}: {fields:?}");
    }
    assert!(r.warnings.iter().all(|w| w.policy == "w"));
    // A well-formed sidecar raises none.
    assert!(
        render(&web(), &[sidecar_policy("p", "s")])
            .unwrap()
            .warnings
            .is_empty()
    );
}

/// A Deployment held back in a staged rollout is planned against the revision it carries: a
/// pinned set plans exactly what that revision planned, so a Deployment that carries it needs
/// no write; a policy it does not carry yet is left out.
#[test]
fn a_pinned_set_plans_the_revision_a_deployment_carries() {
    let old = sidecar_policy("mesh", "proxy");
    let mut new = old.clone();
    new.spec.sidecars[0].image = Some("proxy:2".into());
    let other = sidecar_policy("logs", "shipper");
    let guardrails = Guardrails::default();
    let carried = rendered(&web(), &[old.clone(), other.clone()]);
    let facts = sidecar_core::DeploymentFacts::of(&carried);

    let current = PolicySet::new(&[new.clone(), other.clone()], &guardrails);
    let plan = current.plan(&carried.metadata, &facts).unwrap();
    assert!(!plan.is_applied(&facts), "the current revision is a change");

    // Content stored in the revision, read back as the controller does.
    let stored = sidecar_core::revision::content(&old.spec);
    let earlier = sidecar_core::revision::at(&new, &stored).unwrap();
    assert_eq!(
        sidecar_core::revision::of(&earlier),
        sidecar_core::revision::of(&old)
    );
    let pinned = current.pinned(&[("mesh".to_owned(), Some(earlier))], &guardrails);
    let plan = pinned.plan(&carried.metadata, &facts).unwrap();
    assert!(
        plan.is_applied(&facts),
        "pinned to what it carries: nothing to write"
    );

    let waiting = current.pinned(&[("mesh".to_owned(), None)], &guardrails);
    let plan = waiting
        .plan(&web().metadata, &sidecar_core::DeploymentFacts::of(&web()))
        .unwrap();
    assert_eq!(plan.record.policy_names().collect::<Vec<_>>(), ["logs"]);
}
