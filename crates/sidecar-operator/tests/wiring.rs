//! The wiring between watch events and reconciles: what each event triggers, what it does not,
//! and the bookkeeping it keeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::watcher::Event;
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_operator::controller::GuardedPolicy;

fn guarded(policy: SidecarPolicy) -> GuardedPolicy {
    DeserializeGuard(Ok(policy))
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// `web` and `api` (app=web), `db` (app=db), and `elsewhere` in another namespace.
fn fleet() -> Vec<k8s_openapi::api::apps::v1::Deployment> {
    let mut elsewhere = named("elsewhere", "web");
    elsewhere.metadata.namespace = Some("other".into());
    vec![deployment(), named("api", "web"), named("db", "db"), elsewhere]
}

#[tokio::test]
async fn the_first_lists_trigger_every_deployment_and_policy() {
    let mut h = Harness::new(vec![policy("shipper")], fleet());
    let (deployments, policies) = h.triggered();
    assert_eq!(deployments, strings(&["api", "db", "elsewhere", "web"]));
    assert_eq!(policies, ["shipper"]);
}

#[tokio::test]
async fn a_policy_spec_change_triggers_what_it_selects_and_its_status_but_a_status_write_nothing() {
    let mut h = Harness::new(vec![policy("shipper")], fleet());
    h.triggered();

    let mut with_status = policy("shipper");
    with_status.status = Some(Default::default());
    with_status.metadata.resource_version = Some("12".into());
    h.policy_event(Event::Apply(guarded(with_status)));
    assert_eq!(h.triggered(), (vec![], vec![]), "same generation: nothing");

    let mut changed = policy("shipper-v2");
    changed.metadata.generation = Some(2);
    h.policy_event(Event::Apply(guarded(changed)));
    let (deployments, policies) = h.triggered();
    assert_eq!(
        deployments,
        strings(&["api", "web"]),
        "selected, same namespace only"
    );
    assert_eq!(policies, ["shipper"]);
}

#[tokio::test]
async fn a_narrowed_policy_triggers_the_deployments_it_no_longer_selects() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![stored(&deployment(), &policies)]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    h.triggered();

    let mut narrowed = policy("shipper");
    narrowed.metadata.generation = Some(2);
    narrowed.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "nothing"}})).unwrap();
    h.policy_event(Event::Apply(guarded(narrowed)));
    assert_eq!(h.triggered().0, ["web"], "it carries the policy");
}

#[tokio::test]
async fn a_policy_that_refused_a_deployment_triggers_it_when_it_goes() {
    // `rival` conflicts with `web` (same container name as the app), so nothing is injected;
    // when it is deleted, `web` must be reconciled again to get `shipper`.
    let mut h = Harness::new(
        vec![policy("shipper"), policy_named("rival", "web")],
        vec![deployment()],
    );
    h.reconcile("web", |mut handle| async move {
        expect_event(&mut handle).await; // on the Deployment
        expect_event(&mut handle).await; // on the policy at fault
        handle
    })
    .await
    .unwrap();
    h.triggered();
    let rival = h.cached_policy("rival");
    h.policy_event(Event::Delete((*rival).clone()));
    let (deployments, _) = h.triggered();
    assert_eq!(deployments, ["web"]);
}

#[tokio::test]
async fn status_only_deployment_updates_trigger_nothing_but_labels_do() {
    let mut h = Harness::new(vec![policy("shipper")], fleet());
    h.triggered();

    let mut rolled = deployment();
    rolled.metadata.resource_version = Some("8".into());
    rolled.status = serde_json::from_value(json!({"replicas": 3, "updatedReplicas": 3})).unwrap();
    h.deployment_event(Event::Apply(view(&rolled)));
    assert_eq!(h.triggered(), (vec![], vec![]));

    let mut relabelled = rolled.clone();
    relabelled.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
    h.deployment_event(Event::Apply(view(&relabelled)));
    assert_eq!(h.triggered().0, ["web"]);
}

#[tokio::test]
async fn a_deleted_deployment_is_forgotten_and_its_policies_recounted() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![stored(&deployment(), &policies)]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    h.triggered();
    h.deployment_event(Event::Delete(view(&deployment())));
    assert_eq!(h.triggered().1, ["shipper"]);
    assert!(h.ctx.outcomes().get("demo", "web").is_none());
}

#[tokio::test]
async fn failure_bookkeeping_goes_with_its_object() {
    let mut h = Harness::new(vec![policy("shipper")], vec![deployment()]);
    let result = h
        .reconcile("web", |mut handle| async move {
            let (_, send) = expect_apply(&mut handle).await;
            fail(send, 500, "InternalError", "try again");
            handle
        })
        .await;
    let error = result.unwrap_err();
    sidecar_operator::controller::error_policy(h.cached("web"), &error, h.ctx.clone());
    assert_eq!(h.ctx.failing(), (1, 0));
    h.deployment_event(Event::Delete(view(&deployment())));
    assert_eq!(h.ctx.failing(), (0, 0));
}

#[tokio::test]
async fn a_relist_treats_what_went_missing_as_deleted_and_what_stayed_as_unchanged() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::new(policies.clone(), vec![stored(&deployment(), &policies)]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    h.triggered();

    // The Deployment watch restarts: the same Deployment, nothing to do.
    h.list_deployments(vec![view(&stored(&deployment(), &policies))]);
    assert_eq!(h.triggered(), (vec![], vec![]));

    // The policy watch restarts without the policy (deleted while disconnected).
    h.list_policies(vec![]);
    assert_eq!(h.triggered().0, ["web"], "it carries the policy that went");
}

#[tokio::test]
async fn an_unreadable_policy_triggers_its_whole_namespace() {
    let mut h = Harness::new(vec![], fleet());
    h.triggered();
    let broken = DeserializeGuard(Err(InvalidObject {
        error: "spec.sidecars: invalid type".into(),
        metadata: serde_json::from_value(
            json!({"name": "broken", "namespace": "demo", "uid": "u", "generation": 1}),
        )
        .unwrap(),
    }));
    h.policy_event(Event::Apply(broken));
    let (deployments, policies) = h.triggered();
    assert_eq!(deployments, strings(&["api", "db", "web"]));
    assert_eq!(policies, ["broken"]);
}

#[tokio::test]
async fn a_deleted_revision_triggers_its_policy() {
    let mut h = Harness::new(vec![policy("shipper")], vec![]);
    h.triggered();
    let revision: ControllerRevision = serde_json::from_value(json!({
        "metadata": {"name": "shipper-0123456789", "namespace": "demo", "labels": {"sidecar.dev/policy": "shipper"}},
        "data": {}, "revision": 1,
    }))
    .unwrap();
    h.revision_event(Event::Apply(revision.clone()));
    assert_eq!(h.triggered(), (vec![], vec![]));
    h.revision_event(Event::Delete(revision));
    assert_eq!(h.triggered().1, ["shipper"]);
}

#[tokio::test]
async fn a_reconcile_after_a_policy_change_plans_with_the_new_policy() {
    let mut h = Harness::new(
        vec![policy("shipper")],
        vec![stored(&deployment(), &[policy("shipper")])],
    );
    // The namespace's prepared policies are built and cached by this reconcile.
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    let mut changed = policy("shipper");
    changed.metadata.generation = Some(2);
    changed.spec.sidecars[0].image = Some("busybox:1.37".into());
    h.policy_event(Event::Apply(guarded(changed)));
    h.reconcile("web", |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body["spec"]["template"]["spec"]["initContainers"][0]["image"],
            "busybox:1.37"
        );
        let mut changed = policy("shipper");
        changed.spec.sidecars[0].image = Some("busybox:1.37".into());
        respond(send, &stored(&deployment(), &[changed]));
        expect_event(&mut handle).await;
        handle
    })
    .await
    .unwrap();
}

/// Readiness must not depend on who looked at the caches first: a reconcile's look (which
/// happens before the caches are filled, and then requeues) once stole the wake-up of the task
/// waiting to report `/readyz`, which then stayed 503 forever.
#[tokio::test(start_paused = true)]
async fn caches_filled_after_a_reconcile_looked_make_the_context_ready() {
    use kube::runtime::reflector;
    use sidecar_operator::controller::{Caches, Context, DeploymentView, Triggers};
    use std::sync::Arc;

    let (policies, mut policy_writer) = reflector::store::<GuardedPolicy>();
    let (deployments, mut deployment_writer) = reflector::store::<DeploymentView>();
    let (revisions, mut revision_writer) = reflector::store::<ControllerRevision>();
    let (service, _handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let caches = Caches {
        deployments,
        policies,
        revisions,
        cluster: None,
    };
    let ctx = Arc::new(Context::new(
        kube::Client::new(service, "default"),
        caches,
        sidecar_core::Guardrails::default(),
        Triggers::new().0,
    ));
    let waiting = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.wait_until_filled().await }
    });
    tokio::task::yield_now().await; // the waiter looks first
    assert!(
        !ctx.caches_filled(),
        "a reconcile looks before the caches are filled"
    );
    policy_writer.apply_watcher_event(&Event::Init);
    policy_writer.apply_watcher_event(&Event::InitDone);
    deployment_writer.apply_watcher_event(&Event::Init);
    deployment_writer.apply_watcher_event(&Event::InitDone);
    revision_writer.apply_watcher_event(&Event::Init);
    revision_writer.apply_watcher_event(&Event::InitDone);
    // With time paused, a waiter that is never woken makes this time out at once.
    tokio::time::timeout(std::time::Duration::from_secs(3600), waiting)
        .await
        .expect("the context never noticed that its caches were filled")
        .unwrap();
}
