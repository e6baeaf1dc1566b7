//! Staged rollout against a mocked API server: running Deployments keep the revision they carry
//! until the policy reconcile lets them move, at most `maxConcurrent` at a time; a failed rollout
//! stops the policy's rollout with a Warning Event, once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::Event;
use serde_json::json;
use sidecar_api::{Rollout, SidecarPolicy};
use sidecar_core::Guardrails;
use sidecar_core::outcome::State;
use sidecar_core::rollout::Progress;

/// Policy `shipper` at its first content.
fn v1() -> SidecarPolicy {
    policy("shipper")
}

/// Policy `shipper` with a new sidecar image (a new revision), rolled out one at a time.
fn v2() -> SidecarPolicy {
    let mut p = v1();
    p.spec.sidecars[0].image = Some("busybox:1.37".into());
    p.metadata.generation = Some(2);
    p.spec.rollout = Some(Rollout {
        max_concurrent: Some(IntOrString::Int(1)),
        ..Rollout::default()
    });
    p
}

/// Deployment `name` carrying `policy`, one replica, its own rollout complete: it has pods to
/// disturb, so it waits for its turn.
fn running(name: &str, policy: &SidecarPolicy) -> Deployment {
    let mut d = stored(&named(name, "web"), std::slice::from_ref(policy));
    d.spec.replicas = Some(1);
    d.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
        }))
        .unwrap(),
    );
    d
}

fn harness(
    policy: SidecarPolicy,
    deployments: Vec<Deployment>,
    revisions: Vec<ControllerRevision>,
) -> Harness {
    Harness::with(
        vec![DeserializeGuard(Ok(policy))],
        deployments,
        revisions,
        Guardrails::default(),
    )
}

fn carried(h: &Harness, name: &str) -> Vec<(String, String)> {
    h.ctx.outcomes().get("demo", name).unwrap().carried.clone()
}

#[tokio::test]
async fn running_deployments_wait_for_their_turn_one_at_a_time() {
    let (old, new) = (v1(), v2());
    let (r1, r2) = (sidecar_core::revision::of(&old), sidecar_core::revision::of(&new));
    let fleet = ["web", "x", "y"].map(|n| running(n, &old)).to_vec();
    let mut h = harness(
        new.clone(),
        fleet,
        vec![revision_of(&old, 1), revision_of(&new, 2)],
    );
    for name in ["web", "x", "y"] {
        // Rendered against the revision they carry: nothing to write.
        h.reconcile(name, |handle| async move { handle }).await.unwrap();
        assert_eq!(carried(&h, name), [("shipper".to_owned(), r1.clone())]);
        assert_eq!(h.ctx.outcomes().get("demo", name).unwrap().state, State::Applied);
    }
    h.triggered();

    let expected = r2.clone();
    h.reconcile_policy("shipper", |mut handle| async move {
        let (_, body, send) = next(&mut handle).await;
        let status = &body["status"];
        assert_eq!(status["currentRevision"], expected.as_str());
        assert_eq!(status["progress"], "0/3");
        assert_eq!(
            (
                status["rollingDeployments"].as_i64(),
                status["waitingDeployments"].as_i64()
            ),
            (Some(1), Some(2))
        );
        assert_eq!(status["conditions"][0]["reason"], "Progressing");
        // Failed, so that the next status is written at once rather than after the progress
        // interval: the grants stand whatever the status write does.
        fail(send, 500, "InternalError", "try again");
        handle
    })
    .await
    .unwrap_err();
    let (deployments, _) = h.triggered();
    assert_eq!(deployments, ["web"], "one at a time, in name order");

    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body["spec"]["template"]["spec"]["initContainers"][0]["image"],
            "busybox:1.37"
        );
        respond(send, &running("web", &v2()));
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsUpdated");
        handle
    })
    .await
    .unwrap();
    assert_eq!(
        h.ctx.outcomes().get("demo", "web").unwrap().progress,
        Progress::Rolling,
        "rolling from the write on, whatever the cache says yet"
    );
    // x still waits: web takes the one place.
    h.reconcile("x", |handle| async move { handle }).await.unwrap();
    assert_eq!(carried(&h, "x"), [("shipper".to_owned(), r1)]);

    // The cache shows web rolling, then its rollout complete: x's turn.
    let mut rolling = running("web", &new);
    rolling.metadata.generation = Some(3);
    h.deployment_event(Event::Apply(view(&rolling)));
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    h.triggered();
    h.deployment_event(Event::Apply(view(&running("web", &new))));
    let (deployments, _) = h.triggered();
    assert_eq!(deployments, ["web"], "a progress change is a change");
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    let (_, policies) = h.triggered();
    assert_eq!(
        policies,
        ["shipper"],
        "its outcome changed: the policy plans again"
    );
    h.reconcile_policy("shipper", |mut handle| async move {
        let (_, body, send) = next(&mut handle).await;
        assert_eq!(body["status"]["progress"], "1/3");
        respond(send, &v2());
        handle
    })
    .await
    .unwrap();
    assert_eq!(h.triggered().0, ["x"]);
}

#[tokio::test]
async fn a_deployment_with_nothing_running_takes_the_new_revision_at_once() {
    let (old, new) = (v1(), v2());
    let mut idle = running("web", &old);
    idle.status = None;
    let mut h = harness(new, vec![idle], vec![revision_of(&old, 1)]);
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body["spec"]["template"]["spec"]["initContainers"][0]["image"],
            "busybox:1.37"
        );
        respond(send, &stored(&deployment(), &[v2()]));
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_revision_the_cache_does_not_hold_yet_is_waited_for_not_guessed() {
    let (old, new) = (v1(), v2());
    let mut h = harness(new, vec![running("a", &old)], vec![]);
    let action = h.reconcile("a", |handle| async move { handle }).await.unwrap();
    assert_ne!(
        action,
        kube::runtime::controller::Action::await_change(),
        "looked at again"
    );
    assert_eq!(h.ctx.outcomes().get("demo", "a").unwrap().state, State::Pending);

    // Once it is there, the Deployment is planned against it: still nothing to write.
    h.revision_event(Event::Apply(revision_of(&old, 1)));
    h.reconcile("a", |handle| async move { handle }).await.unwrap();
    assert_eq!(h.ctx.outcomes().get("demo", "a").unwrap().state, State::Applied);
}

#[tokio::test]
async fn a_failed_rollout_stops_everyone_and_warns_once() {
    let (old, new) = (v1(), v2());
    let mut failed = running("a", &new);
    failed.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"a-2\" has timed out progressing."}],
        }))
        .unwrap(),
    );
    let fleet = vec![failed, running("b", &old), running("c", &old)];
    let mut h = harness(new, fleet, vec![revision_of(&old, 1), revision_of(&v2(), 2)]);
    for name in ["a", "b", "c"] {
        h.reconcile(name, |handle| async move { handle }).await.unwrap();
    }
    h.triggered();
    let status = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    let seen = status.clone();
    h.reconcile_policy("shipper", |mut handle| async move {
        let (event, send) = expect_event_create(&mut handle).await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("RolloutStopped"), Some("Warning"))
        );
        assert_eq!(event["regarding"]["kind"], "SidecarPolicy");
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("Deployment \"a\" failed") && note.contains("timed out"),
            "{note}"
        );
        respond(send, &event);
        let (_, body, send) = next(&mut handle).await;
        let mut status = body["status"].clone();
        // The merge patch's nulls remove fields: what the server stores.
        status.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        *seen.lock().unwrap() = status;
        respond(send, &v2());
        handle
    })
    .await
    .unwrap();
    assert!(h.triggered().0.is_empty(), "nobody moves");
    let metrics = h.ctx.metrics.encode().unwrap();
    assert!(
        metrics.contains("sidecar_operator_rollouts_stopped 1"),
        "{metrics}"
    );
    let status = status.lock().unwrap().clone();
    assert_eq!(status["failedDeployments"], 1);
    assert_eq!(status["waitingDeployments"], 2);
    let stalled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert_eq!(stalled["reason"], "RolloutStopped");

    // The cache shows that status: planned again, the same stop is not reported again.
    let mut shown = v2();
    shown.status = Some(serde_json::from_value(status).unwrap());
    h.policy_event(Event::Apply(DeserializeGuard(Ok(shown))));
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
    assert!(h.triggered().0.is_empty());
}
