//! The GitOps recipes under `deploy/argocd` and `deploy/flux` (see docs/gitops.md): the Argo CD
//! health check, run for real (Lua 5.1, as Argo CD runs it) against statuses the operator's own
//! status code produces; how kstatus (Flux's health checks) reads those statuses; and the settings
//! of the example Applications and Flux Kustomizations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};
use sidecar_api::{SidecarPolicy, SidecarPolicyStatus, conditions};
use sidecar_core::status::reasons;
use sidecar_core::{Guardrails, PolicySet, ProblemKind, policy_status, render, unsupported_server_status};

mod support {
    pub mod kstatus;
    pub mod kustomize;
}
use support::kstatus::kstatus;
use support::kustomize;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// Every document of the repository's YAML file `path`.
fn documents(path: &str) -> Vec<Value> {
    kustomize::documents(&read(path))
}

fn health_check() -> String {
    read("deploy/argocd/sidecarpolicy-health.lua")
}

/// What Argo CD would show for `policy`: the health check's status and message.
fn health(policy: &Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.globals()
        .set("obj", lua.to_value_with(policy, options).unwrap())
        .unwrap();
    let result: mlua::Table = lua.load(health_check()).eval().unwrap();
    (result.get("status").unwrap(), result.get("message").unwrap())
}

fn example<T: serde::de::DeserializeOwned>(file: &str) -> T {
    serde_norway::from_str(&read(&format!("examples/u1-log-shipping/{file}"))).unwrap()
}

/// The U1 policy at generation 1.
fn policy() -> SidecarPolicy {
    let mut policy: SidecarPolicy = example("policy.yaml");
    policy.metadata.generation = Some(1);
    policy
}

/// `policy` as Argo CD reads it from the cluster, with `status`.
fn live(policy: &SidecarPolicy, status: Option<SidecarPolicyStatus>) -> Value {
    let mut object = serde_json::to_value(policy).unwrap();
    object["status"] = serde_json::to_value(status).unwrap();
    if object["status"].is_null() {
        object.as_object_mut().unwrap().remove("status");
    }
    object
}

fn now() -> Time {
    Time(Timestamp::from_second(1_700_000_000).unwrap())
}

/// The status the operator computes for the first of `policies` with these Deployments.
fn status(policies: &[SidecarPolicy], deployments: &[Deployment]) -> SidecarPolicyStatus {
    let set = PolicySet::new(policies, &Guardrails::default());
    let refs: Vec<&Deployment> = deployments.iter().collect();
    policy_status(&policies[0], &set, &refs, None, &now())
}

fn privileged(mut policy: SidecarPolicy) -> SidecarPolicy {
    policy.spec.sidecars[0].security_context =
        Some(serde_json::from_value(json!({"privileged": true})).unwrap());
    policy
}

fn ready_reason(status: &SidecarPolicyStatus) -> &str {
    &status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap()
        .reason
}

/// The status the API server shows before the operator writes one: the CRD schema's default.
fn crd_default_status() -> Value {
    let crd = &documents("crds/sidecarpolicy.yaml")[0];
    let default = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["default"];
    assert!(!default.is_null(), "the CRD gives status a default");
    default.clone()
}

#[test]
fn the_argocd_cm_patch_carries_the_health_check_verbatim() {
    let patch = &documents("deploy/argocd/argocd-cm-patch.yaml")[0];
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    for kind in ["SidecarPolicy", "ClusterSidecarPolicy"] {
        let key = format!("resource.customizations.health.sidecar.dev_{kind}");
        assert_eq!(
            patch["data"][&key].as_str(),
            Some(health_check().as_str()),
            "{key}"
        );
    }
}

#[test]
fn health_follows_the_status_the_operator_writes() {
    let p = policy();
    let app: Deployment = example("deployment.yaml");
    let injected = render(&app, std::slice::from_ref(&p), &Guardrails::default())
        .unwrap()
        .deployment;
    let mut taken = app.clone();
    let mut clash = taken.spec.template.spec.clone().unwrap();
    clash.init_containers = Some(vec![
        serde_json::from_value(json!({"name": p.spec.sidecars[0].name, "image": "registry.example.com/x:1"}))
            .unwrap(),
    ]);
    taken.spec.template.spec = Some(clash);
    let mut bad = privileged(policy());
    bad.metadata.name = Some("bad".into());
    bad.spec.sidecars[0].name = "other".into();

    // (status, its Ready reason, Argo CD's health, kstatus' verdict)
    let cases = [
        (
            status(std::slice::from_ref(&p), std::slice::from_ref(&app)),
            reasons::PROGRESSING,
            "Progressing",
            "InProgress",
        ),
        (
            status(std::slice::from_ref(&p), &[injected]),
            reasons::UP_TO_DATE,
            "Healthy",
            "Current",
        ),
        (
            status(std::slice::from_ref(&p), &[]),
            reasons::NO_MATCH,
            "Healthy",
            "Current",
        ),
        (
            status(std::slice::from_ref(&p), &[taken]),
            ProblemKind::Conflict.reason(),
            "Degraded",
            "Failed",
        ),
        (
            status(&[privileged(policy())], std::slice::from_ref(&app)),
            ProblemKind::Refused.reason(),
            "Degraded",
            "Failed",
        ),
        (
            status(&[p.clone(), bad], &[app]),
            reasons::BLOCKED,
            "Degraded",
            "Failed",
        ),
        (
            unsupported_server_status(&p, "Kubernetes 1.28 has no native sidecars", None, &now()),
            reasons::UNSUPPORTED_SERVER,
            "Degraded",
            "Failed",
        ),
    ];
    for (status, reason, argo_cd, flux) in cases {
        assert_eq!(
            ready_reason(&status),
            reason,
            "the scenario for {reason} is not what it claims"
        );
        let message = status.conditions[0].message.clone();
        let object = live(&p, Some(status));
        let (health, shown) = health(&object);
        assert_eq!(health, argo_cd, "Argo CD, Ready reason {reason}");
        assert!(
            shown.contains(reason) && shown.contains(&message),
            "{reason}: {shown}"
        );
        assert_eq!(kstatus(&object), flux, "kstatus, Ready reason {reason}");
    }
}

#[test]
fn every_not_ready_reason_but_progressing_is_degraded() {
    let p = policy();
    let kinds = [ProblemKind::Invalid, ProblemKind::Refused, ProblemKind::Conflict];
    let reasons = kinds.iter().map(|k| k.reason()).chain([
        reasons::BLOCKED,
        reasons::UNSUPPORTED_SERVER,
        reasons::PROGRESSING,
        reasons::ROLLOUT_PAUSED,
        reasons::ROLLOUT_STOPPED,
    ]);
    for reason in reasons {
        let mut status = status(std::slice::from_ref(&p), &[]);
        status.conditions[0].status = "False".into();
        status.conditions[0].reason = reason.into();
        let expected = match reason {
            reasons::PROGRESSING => "Progressing",
            reasons::ROLLOUT_PAUSED => "Suspended",
            _ => "Degraded",
        };
        assert_eq!(health(&live(&p, Some(status))).0, expected, "{reason}");
    }
}

/// A staged rollout as the operator's status code reports it: rolling is Progressing (kstatus
/// InProgress), paused is Suspended (kstatus Current: nothing to wait for), stopped on a failure
/// is Degraded (kstatus Failed).
#[test]
fn a_staged_rollout_reads_as_progressing_suspended_or_degraded() {
    use sidecar_core::outcome::Summary;
    use sidecar_core::rollout::{Counts, Phase};
    let mut p = policy();
    let set = PolicySet::new(std::slice::from_ref(&p), &Guardrails::default());
    let counts = Counts {
        updated: 1,
        rolling: 1,
        waiting: 1,
        failed: 0,
    };
    let stopped = Phase::Stopped {
        deployment: "web".into(),
        message: "ProgressDeadlineExceeded: timed out".into(),
    };
    for (phase, paused, argo, flux) in [
        (Phase::Progressing, false, "Progressing", "InProgress"),
        (Phase::Paused, true, "Suspended", "Current"),
        (stopped, false, "Degraded", "Failed"),
    ] {
        p.spec.rollout = Some(sidecar_api::Rollout {
            paused,
            ..Default::default()
        });
        let summary = Summary {
            matched: 3,
            up_to_date: 1,
            rollout: Some((counts, phase.clone())),
            ..Summary::default()
        };
        let status = sidecar_core::status::from_summary(&p, &set, &summary, None, &now());
        let object = live(&p, Some(status));
        assert_eq!(health(&object).0, argo, "{phase:?}");
        assert_eq!(kstatus(&object), flux, "{phase:?}");
    }
}

#[test]
fn a_policy_the_operator_has_not_caught_up_with_is_progressing() {
    let p = policy();
    assert_eq!(health(&live(&p, None)).0, "Progressing", "no status yet");
    let mut unseen = live(&p, None);
    unseen["status"] = crd_default_status();
    assert_eq!(health(&unseen).0, "Progressing", "the CRD's default status");
    assert_eq!(kstatus(&unseen), "InProgress", "the CRD's default status");

    let up_to_date = status(std::slice::from_ref(&p), &[]);
    let mut newer = p.clone();
    newer.metadata.generation = Some(2);
    let (health, message) = health(&live(&newer, Some(up_to_date.clone())));
    assert_eq!(
        health, "Progressing",
        "a status for generation 1 says nothing of generation 2"
    );
    assert!(message.contains("generation 2"), "{message}");
    assert_eq!(kstatus(&live(&newer, Some(up_to_date))), "InProgress");
}

/// `syncOptions` of an Application, as strings.
fn sync_options(application: &Value) -> Vec<&str> {
    application["spec"]["syncPolicy"]["syncOptions"]
        .as_array()
        .map(|options| options.iter().map(|o| o.as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn argocd_applications_sync_server_side_and_never_replace() {
    for file in [
        "sidecar-operator.application.yaml",
        "team-policies.application.yaml",
    ] {
        let application = &documents(&format!("deploy/argocd/{file}"))[0];
        assert_eq!(application["kind"], "Application");
        let options = sync_options(application);
        assert!(options.contains(&"ServerSideApply=true"), "{file}: {options:?}");
        assert!(
            !options.iter().any(|o| o.starts_with("Replace=")),
            "{file}: {options:?}"
        );
    }
    let team = &documents("deploy/argocd/team-policies.application.yaml")[0];
    let compare = team["metadata"]["annotations"]["argocd.argoproj.io/compare-options"].as_str();
    assert_eq!(compare, Some("ServerSideDiff=true"));

    // The operator's Application installs this repository's base, with the base's image renamed.
    let operator = &documents("deploy/argocd/sidecar-operator.application.yaml")[0];
    let path = operator["spec"]["source"]["path"].as_str().unwrap();
    assert!(repo().join(path).join("kustomization.yaml").exists(), "{path}");
    let image = operator["spec"]["source"]["kustomize"]["images"][0]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with("ghcr.io/sidecar-dev/sidecar-operator="),
        "{image}"
    );
    assert!(read("deploy/base/kustomization.yaml").contains("name: ghcr.io/sidecar-dev/sidecar-operator"));
}

#[test]
fn flux_kustomizations_apply_the_base_then_the_policies_without_force() {
    let operator = documents("deploy/flux/sidecar-operator.yaml");
    let policies = documents("deploy/flux/team-policies.yaml");
    let kustomizations: Vec<&Value> = operator
        .iter()
        .chain(&policies)
        .filter(|d| d["kind"] == "Kustomization")
        .collect();
    assert_eq!(kustomizations.len(), 2);
    for kustomization in &kustomizations {
        assert_eq!(kustomization["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        assert_ne!(kustomization["spec"]["force"], true, "force recreates objects");
        assert!(
            kustomization["spec"]["patches"].is_null(),
            "no patches over the operator's fields"
        );
    }
    let install = kustomizations[0];
    let path = install["spec"]["path"].as_str().unwrap();
    assert!(repo().join(path).join("kustomization.yaml").exists(), "{path}");
    assert_eq!(
        install["spec"]["wait"], true,
        "dependents wait for the CRD and the operator"
    );
    let team = kustomizations[1];
    assert_eq!(team["spec"]["dependsOn"][0]["name"], install["metadata"]["name"]);
    assert_eq!(
        team["spec"]["wait"], true,
        "a policy in conflict fails the team's Kustomization"
    );
}
