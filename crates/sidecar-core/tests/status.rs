//! SidecarPolicy status: counts, conditions, and stability (no change, no new status).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sidecar_api::{SidecarPolicy, SidecarPolicyStatus};
use sidecar_core::{Guardrails, PolicySet, policy_status};

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

fn status_of(
    policy: &str,
    policies: &[SidecarPolicy],
    deployments: &[k8s_openapi::api::apps::v1::Deployment],
    previous: Option<&SidecarPolicyStatus>,
    now: i64,
) -> SidecarPolicyStatus {
    let set = PolicySet::new(policies, &Guardrails::default());
    let p = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(policy))
        .unwrap();
    let refs: Vec<_> = deployments.iter().collect();
    policy_status(p, &set, &refs, previous, &at(now))
}

fn condition<'s>(
    s: &'s SidecarPolicyStatus,
    type_: &str,
) -> Option<&'s k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

fn ready(s: &SidecarPolicyStatus) -> (String, String) {
    let c = condition(s, "Ready").unwrap();
    (c.status.clone(), c.reason.clone())
}

#[test]
fn no_matching_deployment_is_ready_and_says_so() {
    let mut p = sidecar_policy("p", "s");
    p.spec.selector = serde_json::from_value(serde_json::json!({"matchLabels": {"app": "none"}})).unwrap();
    let s = status_of("p", &[p], &[web()], None, 0);
    assert_eq!((s.matched_deployments, s.up_to_date_deployments), (0, 0));
    assert_eq!(ready(&s), ("True".into(), "NoMatchingDeployments".into()));
}

#[test]
fn counts_follow_the_deployments() {
    let policies = [sidecar_policy("p", "s")];
    let pending = status_of("p", &policies, &[web()], None, 0);
    assert_eq!(
        (pending.matched_deployments, pending.up_to_date_deployments),
        (1, 0)
    );
    assert_eq!(ready(&pending), ("False".into(), "Progressing".into()));

    let done = status_of("p", &policies, &[rendered(&web(), &policies)], None, 0);
    assert_eq!((done.matched_deployments, done.up_to_date_deployments), (1, 1));
    assert_eq!(ready(&done), ("True".into(), "UpToDate".into()));
}

#[test]
fn a_conflict_names_the_deployment_and_field() {
    let s = status_of("p", &[sidecar_policy("p", "web")], &[web()], None, 0);
    assert_eq!(ready(&s), ("False".into(), "Conflict".into()));
    let conflict = condition(&s, "Conflict").unwrap();
    assert_eq!(conflict.status, "True");
    assert!(
        conflict
            .message
            .contains("Deployment \"web\": spec.sidecars[0].name"),
        "{}",
        conflict.message
    );
}

#[test]
fn an_invalid_or_refused_policy_says_why() {
    let mut p = sidecar_policy("p", "s");
    p.spec.sidecars[0].security_context =
        Some(serde_json::from_value(serde_json::json!({"privileged": true})).unwrap());
    let s = status_of("p", &[p], &[web()], None, 0);
    let invalid = condition(&s, "Invalid").unwrap();
    assert_eq!(invalid.reason, "GuardrailRefused");
    assert!(
        invalid.message.contains("--allow-privileged"),
        "{}",
        invalid.message
    );
    assert_eq!(ready(&s).0, "False");
}

#[test]
fn a_deployment_blocked_by_another_policy_is_degraded() {
    let policies = [sidecar_policy("good", "fine"), sidecar_policy("bad", "web")];
    let s = status_of("good", &policies, &[web()], None, 0);
    let degraded = condition(&s, "Degraded").unwrap();
    assert!(
        degraded.message.contains("SidecarPolicy \"bad\""),
        "{}",
        degraded.message
    );
    assert_eq!(ready(&s), ("False".into(), "BlockedByOtherPolicy".into()));
    assert!(
        condition(&s, "Conflict").is_none(),
        "the conflict is not this policy's"
    );
}

#[test]
fn an_unchanged_situation_gives_an_identical_status() {
    let policies = [sidecar_policy("p", "s")];
    let deployments = [rendered(&web(), &policies)];
    let first = status_of("p", &policies, &deployments, None, 100);
    let later = status_of("p", &policies, &deployments, Some(&first), 200);
    assert_eq!(
        later, first,
        "same situation, same status: no write, no timestamp churn"
    );

    let flipped = status_of("p", &policies, &[web()], Some(&first), 300);
    assert_eq!(
        condition(&flipped, "Ready").unwrap().last_transition_time,
        at(300)
    );
}

#[test]
fn observed_generation_is_the_policys() {
    let mut p = sidecar_policy("p", "s");
    p.metadata.generation = Some(4);
    let s = status_of("p", &[p], &[web()], None, 0);
    assert_eq!(s.observed_generation, Some(4));
    assert!(s.conditions.iter().all(|c| c.observed_generation == Some(4)));
}

#[test]
fn native_sidecars_need_1_29() {
    use sidecar_core::supports_native_sidecars;
    for ok in [("1", "29"), ("1", "33"), ("1", "36+"), ("2", "0")] {
        assert!(supports_native_sidecars(ok.0, ok.1).is_ok(), "{ok:?}");
    }
    for old in [("1", "28"), ("1", "27+"), ("1", "x")] {
        let message = supports_native_sidecars(old.0, old.1).unwrap_err();
        assert!(message.contains("1.29") && message.contains(old.1), "{message}");
    }
}

#[test]
fn an_unsupported_server_makes_every_policy_not_ready() {
    let p = sidecar_policy("p", "s");
    let s = sidecar_core::unsupported_server_status(&p, "too old", None, &at(0));
    assert_eq!(ready(&s), ("False".into(), "UnsupportedServer".into()));
    assert_eq!(condition(&s, "Degraded").unwrap().message, "too old");
}

/// The reasons of kstatus' `Reconciling` and `Stalled` conditions, where they hold.
fn kstatus_pair(s: &SidecarPolicyStatus) -> (Option<String>, Option<String>) {
    let holding = |type_| {
        condition(s, type_).map(|c| {
            assert_eq!(c.status, "True", "{type_} is present only when it holds");
            c.reason.clone()
        })
    };
    (holding("Reconciling"), holding("Stalled"))
}

#[test]
fn reconciling_means_wait_and_stalled_means_someone_must_change_something() {
    let policies = [sidecar_policy("p", "s")];
    let pending = status_of("p", &policies, &[web()], None, 0);
    assert_eq!(kstatus_pair(&pending), (Some("Progressing".into()), None));
    let done = status_of("p", &policies, &[rendered(&web(), &policies)], None, 0);
    assert_eq!(kstatus_pair(&done), (None, None));
    let unmatched = status_of("p", &policies, &[], None, 0);
    assert_eq!(kstatus_pair(&unmatched), (None, None));

    let conflict = status_of("p", &[sidecar_policy("p", "web")], &[web()], None, 0);
    assert_eq!(kstatus_pair(&conflict), (None, Some("Conflict".into())));
    let mut refused = sidecar_policy("p", "s");
    refused.spec.sidecars[0].security_context =
        Some(serde_json::from_value(serde_json::json!({"privileged": true})).unwrap());
    let refused = status_of("p", &[refused], &[web()], None, 0);
    assert_eq!(kstatus_pair(&refused), (None, Some("GuardrailRefused".into())));
    let blocked = status_of(
        "good",
        &[sidecar_policy("good", "fine"), sidecar_policy("bad", "web")],
        &[web()],
        None,
        0,
    );
    assert_eq!(
        kstatus_pair(&blocked),
        (None, Some("BlockedByOtherPolicy".into()))
    );
    let unsupported = sidecar_core::unsupported_server_status(&policies[0], "too old", None, &at(0));
    assert_eq!(
        kstatus_pair(&unsupported),
        (None, Some("UnsupportedServer".into()))
    );
    assert_eq!(condition(&unsupported, "Stalled").unwrap().message, "too old");
}

/// The status of `policy` (over one Deployment that does not carry its current revision yet)
/// when the controller's rollout planner reports `phase`.
fn status_in_rollout(
    policy: &SidecarPolicy,
    counts: sidecar_core::rollout::Counts,
    phase: sidecar_core::rollout::Phase,
) -> SidecarPolicyStatus {
    let set = PolicySet::new(std::slice::from_ref(policy), &Guardrails::default());
    let summary = sidecar_core::outcome::Summary {
        matched: 3,
        up_to_date: 1,
        rollout: Some((counts, phase)),
        ..Default::default()
    };
    sidecar_core::status::from_summary(policy, &set, &summary, None, &at(0))
}

#[test]
fn a_stopped_rollout_is_stalled_and_says_how_to_go_on() {
    use sidecar_core::rollout::{Counts, Phase};
    let p = sidecar_policy("p", "s");
    let revision = sidecar_core::revision::of(&p);
    let counts = Counts {
        updated: 1,
        rolling: 0,
        waiting: 2,
        failed: 1,
    };
    let phase = Phase::Stopped {
        deployment: "web".into(),
        message: "ProgressDeadlineExceeded: ReplicaSet \"web-2\" has timed out progressing.".into(),
    };
    let s = status_in_rollout(&p, counts, phase);
    assert_eq!(ready(&s), ("False".into(), "RolloutStopped".into()));
    let stalled = condition(&s, "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "RolloutStopped")
    );
    for part in [
        "Deployment \"web\" failed",
        "timed out",
        "acknowledgedRevision",
        &revision,
        "2 waiting",
    ] {
        assert!(stalled.message.contains(part), "{part}: {}", stalled.message);
    }
    assert!(condition(&s, "Reconciling").is_none());
    assert_eq!((s.failed_deployments, s.waiting_deployments), (1, 2));
    assert_eq!(s.progress.as_deref(), Some("1/3"));
}

#[test]
fn a_paused_rollout_is_neither_reconciling_nor_stalled() {
    use sidecar_core::rollout::{Counts, Phase};
    let mut p = sidecar_policy("p", "s");
    p.spec.rollout = Some(sidecar_api::Rollout {
        paused: true,
        ..Default::default()
    });
    let counts = Counts {
        updated: 1,
        waiting: 2,
        ..Counts::default()
    };
    let s = status_in_rollout(&p, counts, Phase::Paused);
    assert_eq!(ready(&s), ("False".into(), "RolloutPaused".into()));
    assert_eq!(condition(&s, "Paused").unwrap().status, "True");
    assert!(condition(&s, "Reconciling").is_none() && condition(&s, "Stalled").is_none());

    let rolling = Counts {
        updated: 1,
        rolling: 2,
        ..Counts::default()
    };
    p.spec.rollout = None;
    let s = status_in_rollout(&p, rolling, Phase::Progressing);
    assert_eq!(ready(&s), ("False".into(), "Progressing".into()));
    assert!(
        condition(&s, "Reconciling")
            .unwrap()
            .message
            .contains("2 rolling")
    );
    assert!(condition(&s, "Paused").is_none());
    assert_eq!(s.rolling_deployments, 2);
}

#[test]
fn warnings_of_the_policy_are_a_condition_that_never_touches_ready() {
    let policies = [sidecar_policy("p", "s")];
    let clean = status_of("p", &policies, &[rendered(&web(), &policies)], None, 0);
    assert!(condition(&clean, "Warnings").is_none(), "{clean:?}");

    let mut careless = sidecar_policy("p", "s");
    careless.spec.sidecars[0].startup_probe = None;
    careless.spec.sidecars[0].image = Some("busybox".into());
    let policies = [careless];
    let s = status_of("p", &policies, &[rendered(&web(), &policies)], None, 0);
    assert_eq!(ready(&s), ("True".into(), "UpToDate".into()));
    let warnings = condition(&s, "Warnings").unwrap();
    assert_eq!(
        (warnings.status.as_str(), warnings.reason.as_str()),
        ("True", "PolicyWarnings")
    );
    assert!(
        warnings.message.contains("spec.sidecars[0].startupProbe"),
        "{}",
        warnings.message
    );
    assert!(
        warnings.message.contains("spec.sidecars[0].image"),
        "{}",
        warnings.message
    );
    assert!(condition(&s, "Stalled").is_none() && condition(&s, "Reconciling").is_none());
}
