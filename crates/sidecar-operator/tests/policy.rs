//! The policy reconcile against a mocked API server: revision history as ControllerRevisions,
//! status aggregated from recorded outcomes, written only when it changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use http::Method;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use sidecar_api::{SidecarPolicy, SidecarPolicyStatus};
use sidecar_core::Guardrails;
use sidecar_operator::controller::Error;

/// A harness whose Deployments were all reconciled once (statuses are written only then).
async fn synced(
    policies: Vec<SidecarPolicy>,
    deployments: Vec<k8s_openapi::api::apps::v1::Deployment>,
    revisions: Vec<ControllerRevision>,
) -> Harness {
    let names: Vec<String> = deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    let mut h = Harness::with(
        policies.into_iter().map(|p| DeserializeGuard(Ok(p))).collect(),
        deployments,
        revisions,
        Guardrails::default(),
    );
    for name in names {
        h.reconcile(&name, |handle| async move { handle }).await.unwrap();
    }
    assert!(h.ctx.outcomes_synced());
    h.triggered();
    h
}

#[tokio::test]
async fn the_first_revision_is_stored_then_the_status_written_and_nothing_more() {
    let policies = vec![policy("shipper")];
    let mut h = synced(policies.clone(), vec![stored(&deployment(), &policies)], vec![]).await;
    let hash = sidecar_core::revision::of(&policies[0]);
    let status = h
        .reconcile_policy("shipper", move |mut handle| async move {
            let (request, body, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.uri().path(), REVISIONS_PATH);
            assert_eq!(body["metadata"]["name"], format!("shipper-{hash}"));
            assert_eq!(body["metadata"]["labels"]["sidecar.dev/policy"], "shipper");
            assert_eq!(body["metadata"]["labels"]["sidecar.dev/revision"], hash.as_str());
            let owner = &body["metadata"]["ownerReferences"][0];
            assert_eq!(
                (
                    owner["kind"].as_str(),
                    owner["uid"].as_str(),
                    owner["controller"].as_bool()
                ),
                (Some("SidecarPolicy"), Some("uid-shipper"), Some(true))
            );
            assert_eq!(body["revision"], 1);
            assert_eq!(body["data"]["spec"]["sidecars"][0]["name"], "shipper");
            assert!(
                body["data"]["spec"].get("selector").is_none(),
                "the selector is not content"
            );
            respond(send, &body);

            let (status, _, send) = expect_status(&mut handle).await;
            assert_eq!(status["currentRevision"], hash.as_str());
            assert_eq!(status["matchedDeployments"], 1);
            assert_eq!(status["upToDateDeployments"], 1);
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "True");
            respond(send, &policy("shipper"));
            handle
        })
        .await;
    status.unwrap();

    // Triggered again before the caches show the revision and the status: neither is written
    // twice.
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unchanged_status_is_not_written() {
    let policies = vec![policy("shipper")];
    let deployments = vec![stored(&deployment(), &policies)];
    let mut h = synced(
        policies.clone(),
        deployments.clone(),
        vec![revision_of(&policies[0], 1)],
    )
    .await;
    let written = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let seen = written.clone();
    h.reconcile_policy("shipper", |mut handle| async move {
        let (status, _, send) = expect_status(&mut handle).await;
        *seen.lock().unwrap() = status;
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();

    // The policy as the status write left it: nothing to do.
    let mut with_status = policies[0].clone();
    with_status.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    h.policy_event(Event::Apply(DeserializeGuard(Ok(with_status))));
    assert_eq!(h.triggered(), (vec![], vec![]), "a status write triggers nothing");
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
}

#[tokio::test]
async fn going_back_to_an_earlier_content_renumbers_its_revision() {
    let current = policy("shipper");
    let mut newer = policy("shipper");
    newer.spec.sidecars[0].image = Some("busybox:1.37".into());
    let revisions = vec![revision_of(&current, 1), revision_of(&newer, 2)];
    let mut h = synced(
        vec![current.clone()],
        vec![stored(&deployment(), std::slice::from_ref(&current))],
        revisions,
    )
    .await;
    let hash = sidecar_core::revision::of(&current);
    h.reconcile_policy("shipper", move |mut handle| async move {
        let (request, body, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), format!("{REVISIONS_PATH}/shipper-{hash}"));
        assert_eq!(body, json!({"revision": 3}));
        respond(send, &revision_of(&policy("shipper"), 3));
        let (_, _, send) = expect_status(&mut handle).await;
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn old_revisions_beyond_the_limit_are_deleted_unless_a_deployment_carries_them() {
    let versions: Vec<SidecarPolicy> = (0..4)
        .map(|i| {
            let mut p = policy("shipper");
            p.spec.sidecars[0].image = Some(format!("busybox:1.{i}"));
            p.spec.revision_history_limit = Some(1);
            p
        })
        .collect();
    let revisions: Vec<ControllerRevision> = versions
        .iter()
        .enumerate()
        .map(|(i, p)| revision_of(p, i as i64 + 1))
        .collect();
    // The Deployment still carries the oldest revision: the write of the current one failed.
    let carried = stored(&deployment(), &versions[..1]);
    let current = versions[3].clone();
    let mut h = Harness::with(
        vec![DeserializeGuard(Ok(current.clone()))],
        vec![carried],
        revisions,
        Guardrails::default(),
    );
    let refused = h
        .reconcile("web", |mut handle| async move {
            let (_, send) = expect_apply(&mut handle).await;
            fail(
                send,
                409,
                "Conflict",
                "Apply failed with 1 conflict: conflict with \"kubectl-edit\"",
            );
            let (event, send) = expect_event_create(&mut handle).await;
            assert_eq!(event["reason"], "FieldConflict");
            respond(send, &event);
            handle
        })
        .await;
    assert!(matches!(refused, Err(Error::FieldConflict { .. })));
    let deleted = sidecar_core::revision::of(&versions[1]);
    h.reconcile_policy("shipper", move |mut handle| async move {
        // Kept: the current one (4), one older (3), the carried one (1). Deleted: 2.
        let (request, _, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(
            request.uri().path(),
            format!("{REVISIONS_PATH}/shipper-{deleted}")
        );
        respond(
            send,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
        let (_, _, send) = expect_status(&mut handle).await;
        respond(send, &current);
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_status_write_names_the_policy() {
    let policies = vec![policy("shipper")];
    let mut h = synced(
        policies.clone(),
        vec![stored(&deployment(), &policies)],
        vec![revision_of(&policies[0], 1)],
    )
    .await;
    let error = h
        .reconcile_policy("shipper", |mut handle| async move {
            let (_, _, send) = expect_status(&mut handle).await;
            fail(send, 500, "InternalError", "etcd is gone");
            handle
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::WriteStatus { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("writing the status of SidecarPolicy demo/shipper"),
        "{error}"
    );
}

#[tokio::test]
async fn no_status_is_written_before_every_deployment_was_reconciled() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![deployment(), named("api", "web")]);
    h.triggered();
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
    h.reconcile("web", |mut handle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        respond(send, &stored(&deployment(), &[policy("shipper")]));
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
    assert!(!h.ctx.outcomes_synced());
    let (_, policies_triggered) = h.triggered();
    assert_eq!(policies_triggered, ["shipper"], "its outcome changed");
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_policy_that_conflicts_makes_the_first_ones_status_say_so() {
    // p1 (`shipper`) is applied; p2 (`rival`) injects a sidecar of the same name.
    let first = policy("agent");
    let mut h = synced(
        vec![first.clone()],
        vec![stored(&deployment(), std::slice::from_ref(&first))],
        vec![revision_of(&first, 1)],
    )
    .await;
    let rival = policy_named("rival", "agent");
    h.policy_event(Event::Apply(DeserializeGuard(Ok(rival))));
    let (deployments, policies) = h.triggered();
    assert_eq!(deployments, ["web"], "the Deployment rival selects");
    assert_eq!(policies, ["rival"]);
    // The Deployment is refused now; the Events go out once.
    h.reconcile("web", |mut handle| async move {
        expect_event(&mut handle).await;
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
    let (_, policies) = h.triggered();
    assert_eq!(policies, ["rival", "shipper"], "both policies' status changes");
    h.reconcile_policy("shipper", |mut handle| async move {
        let (status, _, send) = expect_status(&mut handle).await;
        let status: SidecarPolicyStatus = serde_json::from_value(status).unwrap();
        // Policies are applied in order (then by name), so `rival` claims the name first and
        // `shipper`'s claim is the conflicting one; its status names the other party.
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(
            ready.message.contains("SidecarPolicy \"rival\""),
            "{}",
            ready.message
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        );
        respond(send, &policy("agent"));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn progress_is_written_at_most_once_a_second_but_a_new_condition_at_once() {
    use sidecar_core::outcome::{Outcome, State};
    let p = policy("shipper");
    let deployments = vec![named("a", "web"), named("b", "web"), named("c", "web")];
    let mut h = Harness::with(
        vec![DeserializeGuard(Ok(p.clone()))],
        deployments,
        vec![revision_of(&p, 1)],
        Guardrails::default(),
    );
    let revision = sidecar_core::revision::of(&p);
    let outcome = |state| Outcome {
        selected: vec!["shipper".into()],
        carried: vec![("shipper".into(), revision.clone())],
        state,
        held: false,
        progress: sidecar_core::rollout::Progress::Complete,
        warnings: Vec::new(),
    };
    h.ctx.record_outcome("demo", "a", outcome(State::Applied));
    h.ctx.record_outcome("demo", "b", outcome(State::Pending));
    h.ctx.record_outcome("demo", "c", outcome(State::Pending));
    let written = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let seen = written.clone();
    h.reconcile_policy("shipper", |mut handle| async move {
        let (status, _, send) = expect_status(&mut handle).await;
        assert_eq!(
            (
                status["matchedDeployments"].as_i64(),
                status["upToDateDeployments"].as_i64()
            ),
            (Some(3), Some(1))
        );
        *seen.lock().unwrap() = status;
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();
    let mut with_status = p.clone();
    with_status.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    h.policy_event(Event::Apply(DeserializeGuard(Ok(with_status))));

    // One more Deployment done: only the counts change, and the last write was just now.
    h.ctx.record_outcome("demo", "b", outcome(State::Applied));
    let action = h
        .reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
    assert_ne!(
        action,
        kube::runtime::controller::Action::await_change(),
        "it comes back for the progress"
    );

    // The last one: Ready turns True, which is written at once.
    h.ctx.record_outcome("demo", "c", outcome(State::Applied));
    h.reconcile_policy("shipper", |mut handle| async move {
        let (status, _, send) = expect_status(&mut handle).await;
        assert_eq!(status["upToDateDeployments"], 3);
        assert_eq!(status["conditions"][0]["status"], "True");
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_policys_own_warnings_are_a_condition_and_one_warning_event() {
    let mut careless = policy("shipper");
    careless.spec.sidecars[0].startup_probe = None;
    let policies = vec![careless];
    let mut h = synced(policies.clone(), vec![stored(&deployment(), &policies)], vec![]).await;
    h.reconcile_policy("shipper", |mut handle| async move {
        let (request, body, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::POST, "the first revision");
        respond(send, &body);
        let (event, send) = expect_event_create(&mut handle).await;
        assert_eq!(
            (event["reason"].as_str(), event["type"].as_str()),
            (Some("PolicyWarnings"), Some("Warning"))
        );
        assert!(
            event["note"].as_str().unwrap().contains("startupProbe"),
            "{event}"
        );
        assert_eq!(event["regarding"]["kind"], "SidecarPolicy");
        respond(send, &event);
        let (status, _, send) = expect_status(&mut handle).await;
        let conditions = status["conditions"].as_array().unwrap();
        let warnings = conditions.iter().find(|c| c["type"] == "Warnings").unwrap();
        assert_eq!(warnings["reason"], "PolicyWarnings");
        assert_eq!(conditions[0]["status"], "True", "Ready all the same");
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();
    // Nothing new: no second Event, no second write.
    h.reconcile_policy("shipper", |handle| async move { handle })
        .await
        .unwrap();
}
