//! The Deployment reconcile against a mocked API server: what it writes, what it records, and
//! what it leaves alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use http::{Method, Response};
use kube::client::Body;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::json;
use sidecar_api::{INJECT_ANNOTATION, INJECTED_ANNOTATION};
use sidecar_core::Guardrails;
use sidecar_core::outcome::State;
use sidecar_operator::controller::{Caches, Context, Error, GuardedPolicy, Triggers};
use tower_test::mock::SendResponse;

#[tokio::test]
async fn injects_with_server_side_apply_of_only_the_owned_fields() {
    let mut h = Harness::new(vec![policy("shipper")], vec![deployment()]);
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        let init = &body["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(
            init.as_array().unwrap().len(),
            1,
            "only the injected container is sent: {init}"
        );
        assert_eq!(init[0]["name"], "shipper");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert!(
            body["spec"]["template"]["spec"].get("containers").is_none(),
            "app containers untouched"
        );
        let record = body["metadata"]["annotations"][INJECTED_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(
            record.starts_with(r#"{"version":1,"policies":[{"name":"shipper","revision":""#),
            "{record}"
        );
        respond(send, &stored(&deployment(), &[policy("shipper")]));
        assert_eq!(
            expect_event(&mut handle).await,
            ("SidecarsInjected".into(), "Normal".into(), "Deployment".into())
        );
        handle
    })
    .await
    .unwrap();
    let outcomes = h.ctx.outcomes();
    let outcome = outcomes.get("demo", "web").unwrap();
    assert_eq!(outcome.state, State::Applied);
    assert_eq!(outcome.selected, ["shipper"]);
    assert_eq!(outcome.carried[0].0, "shipper");
}

#[tokio::test]
async fn an_up_to_date_deployment_gets_no_write() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![stored(&deployment(), &policies)]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    assert_eq!(h.ctx.outcomes().get("demo", "web").unwrap().state, State::Applied);
}

#[tokio::test]
async fn quantities_the_server_canonicalised_are_not_drift() {
    let mut policy = policy("shipper");
    policy.spec.sidecars[0].resources =
        serde_json::from_value(json!({"requests": {"cpu": "0.1", "memory": "1024Mi"}})).unwrap();
    let mut live = stored(&deployment(), std::slice::from_ref(&policy));
    let sidecar = &mut live
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()[0];
    sidecar.resources =
        serde_json::from_value(json!({"requests": {"cpu": "100m", "memory": "1Gi"}})).unwrap();
    let mut h = Harness::new(vec![policy], vec![live]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
}

#[tokio::test]
async fn a_changed_policy_costs_one_write() {
    let mut h = Harness::new(
        vec![policy("shipper-v2")],
        vec![stored(&deployment(), &[policy("shipper")])],
    );
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body["spec"]["template"]["spec"]["initContainers"][0]["name"],
            "shipper-v2"
        );
        respond(send, &stored(&deployment(), &[policy("shipper-v2")]));
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsUpdated");
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_reconcile_before_the_cache_holds_our_write_writes_nothing() {
    let mut h = Harness::new(vec![policy("shipper")], vec![deployment()]);
    h.reconcile("web", |mut handle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        respond(send, &stored(&deployment(), &[policy("shipper")]));
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
    // Triggered again (say, by a policy event) while the cache still shows resourceVersion 7.
    h.reconcile("web", |handle| async move { handle }).await.unwrap();

    // Once someone else writes (a new resourceVersion), the plan is applied again.
    let mut edited = deployment();
    edited.metadata.resource_version = Some("9".into());
    h.deployment_event(Event::Apply(view(&edited)));
    h.reconcile("web", |mut handle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        respond(send, &stored(&deployment(), &[policy("shipper")]));
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_deleted_policy_releases_every_owned_field() {
    let mut h = Harness::new(vec![], vec![stored(&deployment(), &[policy("shipper")])]);
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"}}),
            "an apply with nothing in it makes the server drop what the operator owned"
        );
        respond(send, &deployment());
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsRemoved");
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn opting_out_removes_the_sidecars() {
    let policies = vec![policy("shipper")];
    let mut live = stored(&deployment(), &policies);
    live.metadata
        .annotations
        .get_or_insert_default()
        .insert(INJECT_ANNOTATION.into(), "false".into());
    let mut h = Harness::new(policies, vec![live]);
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert!(body.get("spec").is_none(), "{body}");
        respond(send, &deployment());
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsRemoved");
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_conflict_writes_nothing_and_warns_on_both_objects_once() {
    let mut h = Harness::new(vec![policy("web")], vec![deployment()]);
    h.reconcile("web", |mut handle| async move {
        assert_eq!(
            expect_event(&mut handle).await,
            ("Conflict".into(), "Warning".into(), "Deployment".into())
        );
        assert_eq!(
            expect_event(&mut handle).await,
            ("Conflict".into(), "Warning".into(), "SidecarPolicy".into())
        );
        handle
    })
    .await
    .unwrap();
    // The same refusal again (a resync, another trigger): no new Events.
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    assert!(matches!(
        h.ctx.outcomes().get("demo", "web").unwrap().state,
        State::Refused(_)
    ));
}

#[tokio::test]
async fn a_refusal_is_reported_once_even_across_restarts() {
    // A restarted operator (nothing recorded yet) finds the earlier report by its name.
    let mut h = Harness::new(vec![policy("web")], vec![deployment()]);
    h.reconcile("web", |mut handle| async move {
        let (on_deployment, send) = expect_event_create(&mut handle).await;
        let name = on_deployment["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(
            name.starts_with("web."),
            "named after the Deployment and the content: {name}"
        );
        fail(
            send,
            409,
            "AlreadyExists",
            "events.events.k8s.io \"web.x\" already exists",
        );
        let (on_policy, send) = expect_event_create(&mut handle).await;
        assert_eq!(on_policy["regarding"]["kind"], "SidecarPolicy");
        fail(send, 409, "AlreadyExists", "already exists");
        handle
    })
    .await
    .unwrap();

    // The same report from the same process, after the refusal went away and came back: a new
    // Event, under a name of its own.
    let refused = h.ctx.outcomes().get("demo", "web").cloned().unwrap();
    h.ctx.record_outcome(
        "demo",
        "web",
        sidecar_core::outcome::Outcome {
            state: State::Pending,
            held: false,
            ..refused
        },
    );
    h.reconcile("web", |mut handle| async move {
        let (first, send) = expect_event_create(&mut handle).await;
        fail(send, 409, "AlreadyExists", "already exists");
        let (again, send) = expect_event_create(&mut handle).await;
        assert_ne!(again["metadata"]["name"], first["metadata"]["name"]);
        respond(send, &again);
        let (_, send) = expect_event_create(&mut handle).await;
        fail(send, 409, "AlreadyExists", "already exists");
        let (_, send) = expect_event_create(&mut handle).await;
        respond(send, &json!({}));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_wrong_stored_order_is_fixed_with_a_guarded_reorder() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![deployment()]);
    h.reconcile("web", |mut handle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        // The server's list merge kept the owner's entry first.
        let mut misordered = stored(&deployment(), &policies);
        misordered
            .spec
            .template
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()
            .reverse();
        respond(send, &misordered);
        // The stored list is reordered in place: moves, guarded by the stored generation.
        let (body, send) = expect_json_patch(&mut handle).await;
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": "/metadata/generation", "value": 2},
                {"op": "move", "from": "/spec/template/spec/initContainers/1", "path": "/spec/template/spec/initContainers/0"},
            ]),
            "guarded by the stored generation; no entry is sent"
        );
        let mut reordered = stored(&deployment(), &policies);
        reordered.metadata.resource_version = Some("9".into());
        respond(send, &reordered);
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsInjected");
        handle
    })
    .await
    .unwrap();

    // The cache then shows the apply's result (8), still out of order: the reorder (9) is on its
    // way, so nothing is written again.
    let mut misordered = stored(&deployment(), &[policy("shipper")]);
    misordered
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()
        .reverse();
    h.deployment_event(Event::Apply(view(&misordered)));
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
}

#[tokio::test]
async fn a_field_owned_by_someone_else_is_a_conflict_not_a_force() {
    let mut h = Harness::new(vec![policy("shipper")], vec![deployment()]);
    let conflict = |mut handle: ApiHandle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        fail(
            send,
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with \"flux\": .spec.template.spec.initContainers[name=\"shipper\"].image",
        );
        handle
    };
    let result = h
        .reconcile("web", move |handle| async move {
            let mut handle = conflict(handle).await;
            // A Warning Event names the other field manager, once.
            let (event, send) = expect_event_create(&mut handle).await;
            assert_eq!(event["reason"], "FieldConflict");
            assert_eq!(event["type"], "Warning");
            assert!(event["note"].as_str().unwrap().contains("flux"), "{event}");
            respond(send, &event);
            handle
        })
        .await;
    // The same conflict again (the retry): no second Event.
    let again = h.reconcile("web", conflict).await;
    assert!(again.is_err());
    let error = result.unwrap_err();
    assert!(matches!(error, Error::FieldConflict { .. }), "{error}");
    assert!(error.to_string().contains("Deployment demo/web"), "{error}");
    assert!(error.to_string().contains("flux"), "{error}");
    // The outcome says so, for the policy's status.
    let outcomes = h.ctx.outcomes();
    let State::WriteFailed { conflict, message } = &outcomes.get("demo", "web").unwrap().state else {
        panic!("expected a failed write");
    };
    assert!(*conflict && message.contains("flux"), "{message}");
}

#[tokio::test]
async fn a_stale_reorder_is_retried_as_an_api_error_not_a_field_conflict() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![deployment()]);
    let result = h
        .reconcile("web", |mut handle| async move {
            let (_, send) = expect_apply(&mut handle).await;
            let mut misordered = stored(&deployment(), &policies);
            misordered
                .spec
                .template
                .spec
                .as_mut()
                .unwrap()
                .init_containers
                .as_mut()
                .unwrap()
                .reverse();
            respond(send, &misordered);
            let (request, _, send) = next(&mut handle).await;
            assert_eq!(request.headers()["content-type"], "application/json-patch+json");
            // What the API server answers when the `test` of the generation fails.
            fail(
                send,
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
            );
            handle
        })
        .await;
    let error = result.unwrap_err();
    assert!(matches!(error, Error::WriteDeployment { .. }), "{error}");
    assert_eq!(error.category(), "api");
}

#[tokio::test]
async fn a_v0_record_is_migrated_with_one_write_and_no_event() {
    // What the first release wrote: the same containers, a record without a version.
    let policies = vec![policy("shipper")];
    let mut live = stored(&deployment(), &policies);
    let v0 = r#"{"policies":["shipper"],"initContainers":["shipper"],"fingerprint":"17fc06783358861d"}"#;
    live.metadata
        .annotations
        .get_or_insert_default()
        .insert(INJECTED_ANNOTATION.into(), v0.into());
    let mut h = Harness::new(policies.clone(), vec![live.clone()]);
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        let record = body["metadata"]["annotations"][INJECTED_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(record.starts_with(r#"{"version":1,"#), "{record}");
        let template = &body["spec"]["template"]["spec"]["initContainers"];
        assert_eq!(template[0]["name"], "shipper", "the same containers are sent");
        respond(send, &stored(&deployment(), &policies));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreadable_policy_leaves_its_namespace_untouched_and_says_why_once() {
    let unreadable = DeserializeGuard(Err(InvalidObject {
        error: "spec.sidecars: invalid type: string, expected a sequence".into(),
        metadata: serde_json::from_value(
            json!({"name": "broken", "namespace": "demo", "uid": "p-2", "generation": 1}),
        )
        .unwrap(),
    }));
    let mut h = Harness::with(
        vec![unreadable, DeserializeGuard(Ok(policy("shipper")))],
        vec![deployment()],
        vec![],
        Guardrails::default(),
    );
    h.reconcile("web", |mut handle| async move {
        let (reason, type_, kind) = expect_event(&mut handle).await;
        assert_eq!(
            (reason.as_str(), type_.as_str(), kind.as_str()),
            ("UnreadablePolicy", "Warning", "Deployment")
        );
        handle
    })
    .await
    .unwrap();
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
}

#[tokio::test]
async fn an_old_server_gets_no_writes() {
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let (deployments, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(view(&deployment())));
    writer.apply_watcher_event(&Event::InitDone);
    let (policies, _) = reflector::store::<GuardedPolicy>();
    let (revisions, _) = reflector::store();
    let caches = Caches {
        deployments: deployments.clone(),
        policies,
        revisions,
        cluster: None,
    };
    let ctx = std::sync::Arc::new(
        Context::new(
            kube::Client::new(service, "default"),
            caches,
            Guardrails::default(),
            Triggers::new().0,
        )
        .with_unsupported_server(Some("native sidecar containers need Kubernetes 1.29".into())),
    );
    let view = deployments
        .get(&reflector::ObjectRef::new("web").within("demo"))
        .unwrap();
    // A reconcile that made a request would wait for its answer, which never comes.
    sidecar_operator::controller::reconcile(view, ctx).await.unwrap();
    assert!(futures::FutureExt::now_or_never(handle.next_request()).is_none());
}

/// `d` as the admission hold creates it: paused, annotated with the policies it waits for.
fn held(mut d: k8s_openapi::api::apps::v1::Deployment) -> k8s_openapi::api::apps::v1::Deployment {
    d.spec.paused = Some(true);
    d.metadata
        .annotations
        .get_or_insert_default()
        .insert(sidecar_api::HELD_FOR_ANNOTATION.into(), "shipper".into());
    d.metadata.generation = Some(1);
    d
}

/// The next request is a JSON Patch of the Deployment: its body.
async fn expect_json_patch(handle: &mut ApiHandle) -> (serde_json::Value, SendResponse<Response<Body>>) {
    let (request, body, send) = next(handle).await;
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), DEPLOYMENT_PATH);
    assert_eq!(request.headers()["content-type"], "application/json-patch+json");
    (body, send)
}

/// The release: a JSON Patch guarded by the generation the operator wrote or read.
async fn expect_release(handle: &mut ApiHandle, generation: i64) -> SendResponse<Response<Body>> {
    let (body, send) = expect_json_patch(handle).await;
    assert_eq!(
        body,
        json!([
            {"op": "test", "path": "/metadata/generation", "value": generation},
            {"op": "remove", "path": "/metadata/annotations/sidecar.dev~1held-for"},
            {"op": "remove", "path": "/spec/paused"},
        ])
    );
    send
}

#[tokio::test]
async fn a_held_deployment_is_rendered_then_released() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![held(deployment())]);
    let written = policies.clone();
    h.reconcile("web", |mut handle| async move {
        let policies = written;
        let (body, send) = expect_apply(&mut handle).await;
        assert!(
            body["spec"].get("paused").is_none(),
            "the apply never owns spec.paused"
        );
        let mut applied = held(stored(&deployment(), &policies));
        applied.metadata.generation = Some(2);
        respond(send, &applied);
        // Released only after the sidecars are in, guarded by the apply's generation.
        let send = expect_release(&mut handle, 2).await;
        respond(send, &stored(&deployment(), &policies));
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsInjected");
        handle
    })
    .await
    .unwrap();
    let outcome = h.ctx.outcomes().get("demo", "web").unwrap().clone();
    assert_eq!((outcome.state, outcome.held), (State::Applied, false));
    assert_eq!(h.ctx.outcomes().held(), 0);

    // The cache then shows the apply's result, still held, at the resourceVersion of
    // kube-controller-manager's status write that followed it: the release is on its way.
    let mut applied = held(stored(&deployment(), &policies));
    applied.metadata.generation = Some(2);
    applied.metadata.resource_version = Some("9".into());
    h.deployment_event(Event::Apply(view(&applied)));
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
}

#[tokio::test]
async fn a_refused_render_releases_without_injection_and_says_so() {
    // The policy's sidecar is called `web`, like the app container: a conflict.
    let mut h = Harness::new(vec![policy("web")], vec![held(deployment())]);
    h.reconcile("web", |mut handle| async move {
        let send = expect_release(&mut handle, 1).await;
        respond(send, &deployment());
        let mut reasons = Vec::new();
        for _ in 0..3 {
            reasons.push(expect_event(&mut handle).await.0);
        }
        reasons.sort();
        assert_eq!(reasons, ["Conflict", "Conflict", "ReleasedWithoutSidecars"]);
        handle
    })
    .await
    .unwrap();
    assert!(!h.ctx.outcomes().get("demo", "web").unwrap().held);
}

#[tokio::test]
async fn a_failed_release_keeps_the_deployment_counted_as_held_and_is_retried() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![held(stored(&deployment(), &policies))]);
    let result = h
        .reconcile("web", |mut handle| async move {
            let send = expect_release(&mut handle, 1).await;
            fail(send, 422, "Invalid", "the test operation failed");
            handle
        })
        .await;
    assert!(result.is_err(), "retried with backoff");
    assert!(h.ctx.outcomes().get("demo", "web").unwrap().held);
    assert_eq!(h.ctx.outcomes().held(), 1);
}
