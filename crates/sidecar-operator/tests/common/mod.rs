//! A mocked API server (tower-test) and the controller's context around it. Every request the
//! controller makes is checked for method, path, field manager and body, and a request a
//! scenario does not expect fails the test.

#![allow(dead_code)] // each test file uses part of it

use std::sync::Arc;

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use sidecar_api::ClusterSidecarPolicy;
use sidecar_api::SidecarPolicy;
use sidecar_core::Guardrails;
use sidecar_operator::controller::{
    Caches, ClusterCaches, Context, DeploymentView, Dispatch, Error, FIELD_MANAGER, GuardedClusterPolicy,
    GuardedPolicy, TriggerStreams, Triggers,
};
use tower_test::mock::{Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

pub const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/demo/deployments/web";
pub const POLICY_STATUS_PATH: &str =
    "/apis/sidecar.dev/v1alpha1/namespaces/demo/sidecarpolicies/shipper/status";
pub const REVISIONS_PATH: &str = "/apis/apps/v1/namespaces/demo/controllerrevisions";

pub fn deployment() -> Deployment {
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

/// Namespace `name` with `labels` (as the metadata watch sees it).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
    let mut all: std::collections::BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert("kubernetes.io/metadata.name".into(), name.into());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": all},
    }))
    .unwrap()
}

/// ClusterSidecarPolicy `name` (uid `uid-<name>`) for namespaces labelled `mesh: enabled`,
/// injecting one sidecar named `sidecar` into app=web.
pub fn cluster_policy(name: &str, sidecar: &str) -> ClusterSidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "ClusterSidecarPolicy",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "namespaceSelector": {"matchLabels": {"mesh": "enabled"}},
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": sidecar, "image": "proxy:1",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        }
    }))
    .unwrap()
}

/// A Deployment `name` labelled `app: <app>` in namespace demo.
pub fn named(name: &str, app: &str) -> Deployment {
    let mut d = deployment();
    d.metadata.name = Some(name.into());
    d.metadata.uid = Some(format!("uid-{name}"));
    d.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
    d
}

/// Policy `shipper` (uid p-1) injecting one sidecar named `sidecar` into app=web.
pub fn policy(sidecar: &str) -> SidecarPolicy {
    policy_named("shipper", sidecar)
}

pub fn policy_named(name: &str, sidecar: &str) -> SidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "generation": 1},
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
pub fn stored(deployment: &Deployment, policies: &[SidecarPolicy]) -> Deployment {
    let mut d = sidecar_core::render(deployment, policies, &Guardrails::default())
        .unwrap()
        .deployment;
    d.metadata.resource_version = Some("8".into());
    d.metadata.generation = Some(2);
    d
}

/// The ControllerRevision the operator stores for policy `shipper` at `number`, as the server
/// returns it.
pub fn revision_of(policy: &SidecarPolicy, number: i64) -> ControllerRevision {
    let hash = sidecar_core::revision::of(policy);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": format!("shipper-{hash}"), "namespace": "demo",
            "labels": {"sidecar.dev/policy": "shipper", "sidecar.dev/revision": hash},
            "ownerReferences": [{"apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy", "name": "shipper", "uid": "uid-shipper", "controller": true}],
        },
        "data": {"spec": sidecar_core::revision::content(&policy.spec)},
        "revision": number,
    }))
    .unwrap()
}

pub fn view(deployment: &Deployment) -> DeploymentView {
    DeploymentView::of(deployment)
}

/// The controller's context over a mocked API server, its caches' writers (events go through
/// them and then through dispatch, as in the operator), and the trigger streams.
pub struct Harness {
    pub ctx: Arc<Context>,
    pub dispatch: Dispatch,
    pub streams: TriggerStreams,
    /// Lent to a scenario while it runs.
    handle: Option<ApiHandle>,
    deployments: Writer<DeploymentView>,
    policies: Writer<GuardedPolicy>,
    revisions: Writer<ControllerRevision>,
    cluster_policies: Writer<GuardedClusterPolicy>,
    namespaces: Writer<PartialObjectMeta<Namespace>>,
}

impl Harness {
    /// Caches listed with these objects; every Deployment listed is expected to be reconciled
    /// before statuses are written, as at start.
    pub fn new(policies: Vec<SidecarPolicy>, deployments: Vec<Deployment>) -> Self {
        Self::with(
            policies.into_iter().map(|p| DeserializeGuard(Ok(p))).collect(),
            deployments,
            vec![],
            Guardrails::default(),
        )
    }

    pub fn with(
        policies: Vec<GuardedPolicy>,
        deployments: Vec<Deployment>,
        revisions: Vec<ControllerRevision>,
        guardrails: Guardrails,
    ) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (deployment_cache, deployment_writer) = reflector::store();
        let (policy_cache, policy_writer) = reflector::store();
        let (revision_cache, revision_writer) = reflector::store();
        let (cluster_policy_cache, cluster_policy_writer) = reflector::store();
        let (namespace_cache, namespace_writer) = reflector::store();
        let caches = Caches {
            deployments: deployment_cache,
            policies: policy_cache,
            revisions: revision_cache,
            cluster: Some(ClusterCaches {
                policies: cluster_policy_cache,
                namespaces: namespace_cache,
            }),
        };
        let (triggers, streams) = Triggers::new();
        let ctx = Arc::new(Context::new(client, caches, guardrails, triggers));
        let dispatch = Dispatch::new(ctx.clone());
        let mut harness = Harness {
            ctx,
            dispatch,
            streams,
            handle: Some(handle),
            deployments: deployment_writer,
            policies: policy_writer,
            revisions: revision_writer,
            cluster_policies: cluster_policy_writer,
            namespaces: namespace_writer,
        };
        harness.list_namespaces(vec![namespace("demo", &[])]);
        harness.list_cluster_policies(vec![]);
        harness.list_policies(policies);
        harness.list_deployments(deployments.iter().map(view).collect());
        harness.list_revisions(revisions);
        harness
    }

    /// A (re)list of the policy watch.
    pub fn list_policies(&mut self, policies: Vec<GuardedPolicy>) {
        let mut events = vec![Event::Init];
        events.extend(policies.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        for event in events {
            self.policy_event(event);
        }
    }

    /// A (re)list of the Deployment watch.
    pub fn list_deployments(&mut self, views: Vec<DeploymentView>) {
        let mut events = vec![Event::Init];
        events.extend(views.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        for event in events {
            self.deployment_event(event);
        }
    }

    pub fn list_revisions(&mut self, revisions: Vec<ControllerRevision>) {
        let mut events = vec![Event::Init];
        events.extend(revisions.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        for event in events {
            self.revisions.apply_watcher_event(&event);
            self.dispatch.revision_event(&event);
        }
    }

    /// A (re)list of the ClusterSidecarPolicy watch.
    pub fn list_cluster_policies(&mut self, policies: Vec<ClusterSidecarPolicy>) {
        let mut events = vec![Event::Init];
        events.extend(
            policies
                .into_iter()
                .map(|p| Event::InitApply(DeserializeGuard(Ok(p)))),
        );
        events.push(Event::InitDone);
        for event in events {
            self.cluster_policy_event(event);
        }
    }

    /// A (re)list of the Namespace watch.
    pub fn list_namespaces(&mut self, namespaces: Vec<PartialObjectMeta<Namespace>>) {
        let mut events = vec![Event::Init];
        events.extend(namespaces.into_iter().map(Event::InitApply));
        events.push(Event::InitDone);
        for event in events {
            self.namespace_event(event);
        }
    }

    pub fn cluster_policy_event(&mut self, event: Event<GuardedClusterPolicy>) {
        self.cluster_policies.apply_watcher_event(&event);
        self.dispatch.cluster_policy_event(&event);
    }

    pub fn namespace_event(&mut self, event: Event<PartialObjectMeta<Namespace>>) {
        self.namespaces.apply_watcher_event(&event);
        self.dispatch.namespace_event(&event);
    }

    /// The ClusterSidecarPolicies whose status was triggered since the last call, sorted.
    pub fn triggered_cluster_policies(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(reference) = self.streams.cluster_policies.try_recv() {
            names.push(reference.name);
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn deployment_event(&mut self, event: Event<DeploymentView>) {
        self.deployments.apply_watcher_event(&event);
        self.dispatch.deployment_event(&event);
    }

    pub fn policy_event(&mut self, event: Event<GuardedPolicy>) {
        self.policies.apply_watcher_event(&event);
        self.dispatch.policy_event(&event);
    }

    pub fn hpa_event(&mut self, event: Event<HorizontalPodAutoscaler>) {
        self.dispatch.hpa_event(&event);
    }

    pub fn revision_event(&mut self, event: Event<ControllerRevision>) {
        self.revisions.apply_watcher_event(&event);
        self.dispatch.revision_event(&event);
    }

    /// The names of the Deployments and of the policies triggered since the last call, sorted,
    /// without repeats.
    pub fn triggered(&mut self) -> (Vec<String>, Vec<String>) {
        let mut deployments = Vec::new();
        while let Ok(reference) = self.streams.deployments.try_recv() {
            deployments.push(reference.name);
        }
        let mut policies = Vec::new();
        while let Ok(reference) = self.streams.policies.try_recv() {
            policies.push(reference.name);
        }
        for list in [&mut deployments, &mut policies] {
            list.sort();
            list.dedup();
        }
        (deployments, policies)
    }

    /// The cached view of Deployment `name` of namespace demo.
    pub fn cached(&self, name: &str) -> Arc<DeploymentView> {
        self.ctx
            .caches
            .deployments
            .get(&reflector::ObjectRef::new(name).within("demo"))
            .expect("the Deployment is cached")
    }

    pub fn cached_policy(&self, name: &str) -> Arc<GuardedPolicy> {
        self.ctx
            .caches
            .policies
            .get(&reflector::ObjectRef::new(name).within("demo"))
            .expect("the policy is cached")
    }

    /// Reconciles the cached Deployment `name` against `scenario`.
    pub async fn reconcile<S, F>(&mut self, name: &str, scenario: S) -> Result<Action, Error>
    where
        S: FnOnce(ApiHandle) -> F,
        F: std::future::Future<Output = ApiHandle> + Send + 'static,
    {
        let task = tokio::spawn(sidecar_operator::controller::reconcile(
            self.cached(name),
            self.ctx.clone(),
        ));
        self.drive(task, scenario).await
    }

    /// Reconciles the cached policy `name` against `scenario`.
    pub async fn reconcile_policy<S, F>(&mut self, name: &str, scenario: S) -> Result<Action, Error>
    where
        S: FnOnce(ApiHandle) -> F,
        F: std::future::Future<Output = ApiHandle> + Send + 'static,
    {
        let task = tokio::spawn(sidecar_operator::controller::reconcile_status(
            self.cached_policy(name),
            self.ctx.clone(),
        ));
        self.drive(task, scenario).await
    }

    /// Reconciles the status of the cached ClusterSidecarPolicy `name` against `scenario`.
    pub async fn reconcile_cluster_policy<S, F>(&mut self, name: &str, scenario: S) -> Result<Action, Error>
    where
        S: FnOnce(ApiHandle) -> F,
        F: std::future::Future<Output = ApiHandle> + Send + 'static,
    {
        let cached = self
            .ctx
            .caches
            .cluster
            .as_ref()
            .and_then(|c| c.policies.get(&reflector::ObjectRef::new(name)))
            .expect("the ClusterSidecarPolicy is cached");
        let task = tokio::spawn(sidecar_operator::controller::reconcile_cluster_status(
            cached,
            self.ctx.clone(),
        ));
        self.drive(task, scenario).await
    }

    /// Runs `scenario` (which answers the requests the reconcile should make, in order), then
    /// waits for the reconcile to end. A request the scenario did not expect fails the test:
    /// it is seen before the reconcile can end, since the reconcile waits for its answer.
    async fn drive<S, F>(
        &mut self,
        mut task: tokio::task::JoinHandle<Result<Action, Error>>,
        scenario: S,
    ) -> Result<Action, Error>
    where
        S: FnOnce(ApiHandle) -> F,
        F: std::future::Future<Output = ApiHandle> + Send + 'static,
    {
        let handle = self.handle.take().expect("one scenario at a time");
        let mut scenario = tokio::spawn(scenario(handle));
        let (mut handle, finished) = tokio::select! {
            handle = &mut scenario => (handle.expect("the controller made every expected request"), None),
            result = &mut task => {
                // The reconcile ended: a scenario still waiting for a request would wait forever.
                let handle = tokio::time::timeout(std::time::Duration::from_secs(10), &mut scenario)
                    .await
                    .unwrap_or_else(|_| panic!("the reconcile ended ({result:?}) before making every request the scenario expects"))
                    .expect("the controller made every expected request");
                (handle, Some(result.unwrap()))
            }
        };
        let result = match finished {
            Some(result) => result,
            None => tokio::select! {
                result = &mut task => result.unwrap(),
                request = handle.next_request() => match request {
                    Some((request, _)) => panic!("unexpected request: {} {}", request.method(), request.uri()),
                    None => task.await.unwrap(),
                },
            },
        };
        self.handle = Some(handle);
        result
    }
}

/// The next request, with its JSON body.
pub async fn next(handle: &mut ApiHandle) -> (Request<()>, Value, SendResponse<Response<Body>>) {
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

pub fn respond(send: SendResponse<Response<Body>>, body: &impl serde::Serialize) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// Answers with an API error status.
pub fn fail(send: SendResponse<Response<Body>>, code: u16, reason: &str, message: &str) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
        "message": message,
    });
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

/// Expects the create of an Event, unanswered.
pub async fn expect_event_create(handle: &mut ApiHandle) -> (Value, SendResponse<Response<Body>>) {
    let (request, body, send) = next(handle).await;
    assert_eq!(
        request.method(),
        Method::POST,
        "expected an Event, got {} {}",
        request.method(),
        request.uri()
    );
    assert_eq!(
        request.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/demo/events"
    );
    assert_eq!(body["reportingController"], FIELD_MANAGER);
    (body, send)
}

pub fn query(request: &Request<()>) -> String {
    request.uri().query().unwrap_or_default().to_owned()
}

/// Expects a server-side apply of the Deployment and checks how it is made.
pub async fn expect_apply(handle: &mut ApiHandle) -> (Value, SendResponse<Response<Body>>) {
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

/// Expects the policy `shipper`'s status merge patch; returns the status as the server would
/// store it.
pub async fn expect_status(
    handle: &mut ApiHandle,
) -> (
    Value,
    http::Request<()>,
    tower_test::mock::SendResponse<http::Response<kube::client::Body>>,
) {
    let (request, body, send) = next(handle).await;
    assert_eq!(request.method(), Method::PATCH);
    assert_eq!(request.uri().path(), POLICY_STATUS_PATH);
    assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
    assert!(
        query(&request).contains("fieldManager=sidecar-operator"),
        "{}",
        query(&request)
    );
    // A merge patch's nulls remove fields (a count back to 0): what the server then stores.
    let mut status = body["status"].clone();
    if let Some(fields) = status.as_object_mut() {
        fields.retain(|_, value| !value.is_null());
    }
    (status, request, send)
}

/// Expects an Event created and returns (reason, type, regarding kind).
pub async fn expect_event(handle: &mut ApiHandle) -> (String, String, String) {
    let (body, send) = expect_event_create(handle).await;
    respond(send, &body);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&body["reason"]),
        text(&body["type"]),
        text(&body["regarding"]["kind"]),
    )
}
