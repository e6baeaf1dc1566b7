//! The controller against a mocked API server (tower-test): every request it makes is checked
//! for method, path, field manager and body, and a request it should not make fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::client::Body;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};
use sidecar_api::{INJECT_ANNOTATION, INJECTED_ANNOTATION, SidecarPolicy};
use sidecar_core::Guardrails;
use sidecar_operator::controller::{
    Context, Error, FIELD_MANAGER, GuardedPolicy, affected, policies_for, reconcile, reconcile_status,
};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/demo/deployments/web";

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": "7", "uid": "d-1"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "migrate:1"}],
                    "containers": [{"name": "web", "image": "nginx:1.27"}],
                }
            }
        }
    }))
    .unwrap()
}

fn policy(sidecar: &str) -> SidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "shipper", "namespace": "demo", "uid": "p-1"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": sidecar, "image": "busybox:1.36",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        }
    }))
    .unwrap()
}

/// What the engine makes of `deployment` with `policies`, as the API server would store it.
fn stored(deployment: &Deployment, policies: &[SidecarPolicy]) -> Deployment {
    let mut d = sidecar_core::render(deployment, policies, &Guardrails::default())
        .unwrap()
        .deployment;
    d.metadata.resource_version = Some("8".into());
    d
}

/// A filled, ready cache of `objects`, as a controller's watch would keep it.
fn cache<K>(objects: Vec<K>) -> reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

fn context(policies: Vec<SidecarPolicy>) -> (Arc<Context>, ApiHandle) {
    context_with(policies, vec![])
}

/// Policies as the watch decodes them.
fn guarded(policies: Vec<SidecarPolicy>) -> Vec<GuardedPolicy> {
    policies.into_iter().map(|p| DeserializeGuard(Ok(p))).collect()
}

fn context_with(policies: Vec<SidecarPolicy>, deployments: Vec<Deployment>) -> (Arc<Context>, ApiHandle) {
    context_guarded(guarded(policies), deployments)
}

fn context_guarded(policies: Vec<GuardedPolicy>, deployments: Vec<Deployment>) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        Arc::new(Context::new(
            client,
            cache(policies),
            cache(deployments),
            Guardrails::default(),
        )),
        handle,
    )
}

/// The next request, with its JSON body.
async fn next(handle: &mut ApiHandle) -> (Request<()>, Value, SendResponse<Response<Body>>) {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the controller made a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (Request::from_parts(parts, ()), value, send)
}

fn respond(send: SendResponse<Response<Body>>, body: &impl serde::Serialize) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn query(request: &Request<()>) -> String {
    request.uri().query().unwrap_or_default().to_owned()
}

/// Expects a server-side apply of the Deployment and checks how it is made.
async fn expect_apply(handle: &mut ApiHandle) -> (Value, SendResponse<Response<Body>>) {
    let (request, body, send) = next(handle).await;
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), DEPLOYMENT_PATH);
    assert_eq!(request.headers()["content-type"], "application/apply-patch+yaml");
    assert!(
        query(&request).contains(&format!("fieldManager={FIELD_MANAGER}")),
        "{}",
        query(&request)
    );
    assert!(
        !query(&request).contains("force=true"),
        "the operator never forces"
    );
    (body, send)
}

/// Expects an Event and returns (reason, type, regarding kind).
async fn expect_event(handle: &mut ApiHandle) -> (String, String, String) {
    let (request, body, send) = next(handle).await;
    assert_eq!(request.method(), Method::POST, "{body}");
    assert_eq!(
        request.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/demo/events"
    );
    respond(send, &body);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&body["reason"]),
        text(&body["type"]),
        text(&body["regarding"]["kind"]),
    )
}

/// Runs a reconcile of `live` against `scenario`, which answers the requests the controller
/// should make, in order. The test fails, rather than hangs, if the controller makes a request
/// the scenario does not expect or skips one it does: the reconcile task holds the only client,
/// so when it ends the mock reports that nothing more can come.
async fn run<S, F>(
    ctx: Arc<Context>,
    live: Deployment,
    handle: ApiHandle,
    scenario: S,
) -> Result<Action, Error>
where
    S: FnOnce(ApiHandle) -> F,
    F: std::future::Future<Output = ApiHandle> + Send + 'static,
{
    drive(tokio::spawn(reconcile(Arc::new(live), ctx)), handle, scenario).await
}

/// Drives a spawned reconcile (which holds the only client) against `scenario`.
async fn drive<S, F>(
    reconciled: tokio::task::JoinHandle<Result<Action, Error>>,
    handle: ApiHandle,
    scenario: S,
) -> Result<Action, Error>
where
    S: FnOnce(ApiHandle) -> F,
    F: std::future::Future<Output = ApiHandle> + Send + 'static,
{
    let mut handle = tokio::spawn(scenario(handle))
        .await
        .expect("the controller made every expected request");
    // Either the reconcile ends (and with it the client: `None`), or it makes one more request.
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected request: {} {}", request.method(), request.uri());
    }
    reconciled.await.unwrap()
}

#[tokio::test]
async fn injects_with_server_side_apply_of_only_the_owned_fields() {
    let policies = vec![policy("shipper")];
    let (ctx, handle) = context(policies.clone());
    let live = deployment();
    let result = run(ctx, live, handle, |mut handle| async move {
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
        assert!(body["metadata"]["annotations"][INJECTED_ANNOTATION].is_string());
        respond(send, &stored(&deployment(), &[policy("shipper")]));
        assert_eq!(
            expect_event(&mut handle).await,
            ("SidecarsInjected".into(), "Normal".into(), "Deployment".into())
        );
        handle
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn an_up_to_date_deployment_gets_no_write() {
    let policies = vec![policy("shipper")];
    let (ctx, handle) = context(policies.clone());
    let live = stored(&deployment(), &policies);
    run(ctx, live, handle, |handle| async move { handle })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_changed_policy_costs_one_write() {
    let (ctx, handle) = context(vec![policy("shipper-v2")]);
    let live = stored(&deployment(), &[policy("shipper")]);
    let result = run(ctx, live, handle, |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert_eq!(
            body["spec"]["template"]["spec"]["initContainers"][0]["name"],
            "shipper-v2"
        );
        respond(send, &stored(&deployment(), &[policy("shipper-v2")]));
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsUpdated");
        handle
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_deleted_policy_releases_every_owned_field() {
    let (ctx, handle) = context(vec![]);
    let live = stored(&deployment(), &[policy("shipper")]);
    let result = run(ctx, live, handle, |mut handle| async move {
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
    .await;
    result.unwrap();
}

#[tokio::test]
async fn opting_out_removes_the_sidecars() {
    let policies = vec![policy("shipper")];
    let (ctx, handle) = context(policies.clone());
    let mut live = stored(&deployment(), &policies);
    live.metadata
        .annotations
        .get_or_insert_default()
        .insert(INJECT_ANNOTATION.into(), "false".into());
    let result = run(ctx, live, handle, |mut handle| async move {
        let (body, send) = expect_apply(&mut handle).await;
        assert!(body.get("spec").is_none(), "{body}");
        respond(send, &deployment());
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsRemoved");
        handle
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_conflict_writes_nothing_and_warns_on_both_objects() {
    let (ctx, handle) = context(vec![policy("web")]);
    let live = deployment();
    let result = run(ctx, live, handle, |mut handle| async move {
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
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_wrong_stored_order_is_fixed_with_a_guarded_reorder() {
    let policies = vec![policy("shipper")];
    let (ctx, handle) = context(policies.clone());
    let live = deployment();
    let result = run(ctx, live, handle, |mut handle| async move {
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

        let (request, body, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), DEPLOYMENT_PATH);
        assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
        assert_eq!(
            body["metadata"]["resourceVersion"], "8",
            "guarded by the stored resourceVersion"
        );
        let names: Vec<_> = body["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["shipper", "migrate"]);
        respond(send, &stored(&deployment(), &policies));
        assert_eq!(expect_event(&mut handle).await.0, "SidecarsInjected");
        handle
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_field_owned_by_someone_else_is_a_conflict_not_a_force() {
    let (ctx, handle) = context(vec![policy("shipper")]);
    let live = deployment();
    let result = run(ctx, live, handle, |mut handle| async move {
        let (_, send) = expect_apply(&mut handle).await;
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Apply failed with 1 conflict: conflict with \"flux\": .spec.template.spec.initContainers[name=\"shipper\"].image",
        });
        send.send_response(
            Response::builder().status(409).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap(),
        );
        handle
    })
    .await;
    let error = result.unwrap_err();
    assert!(matches!(error, Error::FieldConflict { .. }), "{error}");
    assert!(error.to_string().contains("flux"), "{error}");
}

const POLICY_STATUS_PATH: &str = "/apis/sidecar.dev/v1alpha1/namespaces/demo/sidecarpolicies/shipper/status";

#[tokio::test]
async fn policy_status_is_written_when_it_changes_and_only_then() {
    let policies = vec![policy("shipper")];
    let deployments = vec![stored(&deployment(), &policies)];
    let (ctx, handle) = context_with(policies.clone(), deployments.clone());
    let reconciled = tokio::spawn(reconcile_status(
        Arc::new(DeserializeGuard(Ok(policies[0].clone()))),
        ctx,
    ));
    let written = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    let seen = written.clone();
    drive(reconciled, handle, |mut handle| async move {
        let (request, body, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), POLICY_STATUS_PATH);
        assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
        assert!(query(&request).contains(&format!("fieldManager={FIELD_MANAGER}")));
        let status = &body["status"];
        assert_eq!(status["matchedDeployments"], 1);
        assert_eq!(status["upToDateDeployments"], 1);
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        *seen.lock().unwrap() = status.clone();
        let mut updated = policy("shipper");
        updated.status = Some(serde_json::from_value(status.clone()).unwrap());
        respond(send, &updated);
        handle
    })
    .await
    .unwrap();

    // The same situation again, with the status as written: nothing to write.
    let mut with_status = policies[0].clone();
    with_status.status = Some(serde_json::from_value(written.lock().unwrap().clone()).unwrap());
    let (ctx, handle) = context_with(vec![with_status.clone()], deployments);
    let reconciled = tokio::spawn(reconcile_status(Arc::new(DeserializeGuard(Ok(with_status))), ctx));
    drive(reconciled, handle, |handle| async move { handle })
        .await
        .unwrap();
}

#[test]
fn a_policy_change_triggers_what_it_selects_and_what_it_was_applied_to() {
    let applied = stored(&deployment(), &[policy("shipper")]);
    let mut unlabeled = applied.clone();
    unlabeled.metadata.name = Some("renamed-labels".into());
    unlabeled.metadata.labels = Some([("app".to_owned(), "other".to_owned())].into());
    let mut stranger = deployment();
    stranger.metadata.name = Some("stranger".into());
    stranger.metadata.labels = None;
    let mut elsewhere = deployment();
    elsewhere.metadata.namespace = Some("other".into());
    let store = cache(vec![applied, unlabeled, stranger, elsewhere]);
    let mut names: Vec<_> = affected(&store, &DeserializeGuard(Ok(policy("shipper"))))
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["renamed-labels", "web"],
        "selected now, or recorded as applied; same namespace only"
    );
}

#[test]
fn a_deployment_change_triggers_the_status_of_its_policies() {
    let mut other = policy("shipper");
    other.metadata.name = Some("other".into());
    other.spec.selector = serde_json::from_value(json!({"matchLabels": {"app": "api"}})).unwrap();
    let store = cache(guarded(vec![policy("shipper"), other]));
    let names: Vec<_> = policies_for(&store, &deployment())
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["shipper"]);
}

#[tokio::test]
async fn an_old_server_gets_no_writes_and_every_policy_says_why() {
    let policies = vec![policy("shipper")];
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(
        Context::new(
            client,
            cache(guarded(policies.clone())),
            cache(vec![deployment()]),
            Guardrails::default(),
        )
        .with_unsupported_server(Some("native sidecar containers need Kubernetes 1.29".into())),
    );
    // The Deployment: nothing written.
    let (service2, handle2) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx2 = Arc::new(
        Context::new(
            Client::new(service2, "default"),
            cache(guarded(policies.clone())),
            cache(vec![]),
            Guardrails::default(),
        )
        .with_unsupported_server(Some("too old".into())),
    );
    run(ctx2, deployment(), handle2, |handle| async move { handle })
        .await
        .unwrap();
    // The policy: Ready=False, reason UnsupportedServer.
    let reconciled = tokio::spawn(reconcile_status(
        Arc::new(DeserializeGuard(Ok(policies[0].clone()))),
        ctx,
    ));
    drive(reconciled, handle, |mut handle| async move {
        let (request, body, send) = next(&mut handle).await;
        assert_eq!(request.uri().path(), POLICY_STATUS_PATH);
        assert_eq!(body["status"]["conditions"][0]["reason"], "UnsupportedServer");
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        respond(send, &policy("shipper"));
        handle
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreadable_policy_leaves_its_namespace_untouched_and_says_why() {
    let unreadable = DeserializeGuard(Err(InvalidObject {
        error: "spec.sidecars: invalid type: string, expected a sequence".into(),
        metadata: serde_json::from_value(json!({"name": "broken", "namespace": "demo", "uid": "p-2"}))
            .unwrap(),
    }));
    let (ctx, handle) = context_guarded(
        vec![unreadable.clone(), DeserializeGuard(Ok(policy("shipper")))],
        vec![],
    );
    let result = run(ctx, deployment(), handle, |mut handle| async move {
        let (reason, type_, kind) = expect_event(&mut handle).await;
        assert_eq!(
            (reason.as_str(), type_.as_str(), kind.as_str()),
            ("UnreadablePolicy", "Warning", "Deployment")
        );
        handle
    })
    .await;
    result.unwrap();

    // Its change re-triggers every Deployment of the namespace.
    let mut api = deployment();
    api.metadata.name = Some("api".into());
    api.metadata.labels = None;
    let store = cache(vec![deployment(), api]);
    assert_eq!(affected(&store, &unreadable).len(), 2);
}

#[tokio::test]
async fn a_stale_reorder_is_retried_as_an_api_error_not_a_field_conflict() {
    let policies = vec![policy("shipper")];
    let (ctx, handle) = context(policies.clone());
    let result = run(ctx, deployment(), handle, |mut handle| async move {
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
        assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "Operation cannot be fulfilled: the object has been modified",
        });
        send.send_response(
            Response::builder()
                .status(409)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        handle
    })
    .await;
    let error = result.unwrap_err();
    assert!(matches!(error, Error::Write { .. }), "{error}");
    assert_eq!(error.category(), "api");
}

/// Readiness must not depend on who looked at the caches first: a reconcile's look (which
/// happens before the caches are filled, and then requeues) once stole the wake-up of the task
/// waiting to report `/readyz`, which then stayed 503 forever.
#[tokio::test(start_paused = true)]
async fn caches_filled_after_a_reconcile_looked_make_the_context_ready() {
    let (policies, mut policy_writer) = reflector::store::<GuardedPolicy>();
    let (deployments, mut deployment_writer) = reflector::store::<Deployment>();
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        policies,
        deployments,
        Guardrails::default(),
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
    policy_writer.apply_watcher_event(&watcher::Event::Init);
    policy_writer.apply_watcher_event(&watcher::Event::InitDone);
    deployment_writer.apply_watcher_event(&watcher::Event::Init);
    deployment_writer.apply_watcher_event(&watcher::Event::InitDone);
    // With time paused, a waiter that is never woken makes this time out at once.
    tokio::time::timeout(Duration::from_secs(3600), waiting)
        .await
        .expect("the context never noticed that its caches were filled")
        .unwrap();
}
