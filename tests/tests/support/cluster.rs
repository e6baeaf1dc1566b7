//! The API server an end-to-end test runs against, and the waits, namespaces and example
//! manifests every e2e test uses. Shared by the e2e test files; each uses only part of it.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;

use super::control_plane::ControlPlane;

pub const KUBECONFIG_VAR: &str = "SIDECAR_E2E_KUBECONFIG";
/// How long a wait polls before the test fails (it returns as soon as the condition holds).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";

/// The API server a test runs against, and what to tear down after it.
pub struct Cluster {
    pub client: Client,
    /// The kubeconfig of an existing cluster, whose test namespaces must be deleted; `None` for a
    /// throwaway control plane, which goes away whole.
    pub shared_kubeconfig: Option<String>,
    /// Kept alive until the test ends, then stopped.
    control_plane: Option<ControlPlane>,
    /// Whether kube-controller-manager runs: Deployments get ReplicaSets and status, owned
    /// objects are garbage-collected.
    pub controllers: bool,
}

impl Cluster {
    /// Whether the test can run: false (with a message saying why it is skipped) when it needs
    /// kube-controller-manager and none runs.
    pub fn has_controllers(&self, test: &str) -> bool {
        if !self.controllers {
            eprintln!(
                "{test} skipped: it needs kube-controller-manager (Deployment status, ReplicaSets, \
                 garbage collection); put its binary in {ASSETS_VAR}, or use a full cluster"
            );
        }
        self.controllers
    }

    /// The throwaway control plane, if the test runs against one (not a shared cluster).
    pub fn control_plane(&mut self) -> Option<&mut ControlPlane> {
        self.control_plane.as_mut()
    }

    /// The kubeconfig file of this cluster, for a process the test starts.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        match (&self.shared_kubeconfig, &self.control_plane) {
            (Some(path), _) => path.into(),
            (None, Some(control_plane)) => control_plane.kubeconfig.clone(),
            (None, None) => unreachable!("a cluster is either shared or a throwaway control plane"),
        }
    }
}

/// An existing cluster (`SIDECAR_E2E_KUBECONFIG`), or a throwaway control plane started from
/// `KUBEBUILDER_ASSETS`, or `None` (the test is skipped).
pub async fn cluster() -> Option<Cluster> {
    if let Ok(path) = std::env::var(KUBECONFIG_VAR) {
        let client = client_from(&path).await;
        // kube-controller-manager publishes this ConfigMap into every namespace.
        let controllers = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "default")
            .get_opt("kube-root-ca.crt")
            .await
            .is_ok_and(|found| found.is_some());
        return Some(Cluster {
            client,
            shared_kubeconfig: Some(path),
            control_plane: None,
            controllers,
        });
    }
    if let Ok(assets) = std::env::var(ASSETS_VAR) {
        let (control_plane, client) = start_control_plane(Path::new(&assets)).await;
        return Some(Cluster {
            client,
            shared_kubeconfig: None,
            controllers: control_plane.has_controllers(),
            control_plane: Some(control_plane),
        });
    }
    eprintln!(
        "e2e skipped: set {KUBECONFIG_VAR} to the kubeconfig of a Kubernetes >= 1.29 cluster, \
         or {ASSETS_VAR} to a directory with kube-apiserver and etcd"
    );
    None
}

/// How many times a throwaway control plane is started before the test fails: a port picked free
/// can be taken by another process before etcd or kube-apiserver binds it.
const CONTROL_PLANE_STARTS: usize = 3;

/// A throwaway control plane, up: serving and done with its start-up hooks, among them the
/// default RBAC (which lets every authenticated user read /version). `/readyz` answers "ok" only
/// then. A process that exits while starting is retried on fresh ports.
async fn start_control_plane(assets: &Path) -> (ControlPlane, Client) {
    for attempt in 1..=CONTROL_PLANE_STARTS {
        let mut control_plane = ControlPlane::start(assets);
        let client = client_from(&control_plane.kubeconfig.display().to_string()).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if is_ready(&client).await {
                return (control_plane, client);
            }
            if let Some(exited) = control_plane.exited() {
                eprintln!(
                    "e2e: control plane start {attempt}/{CONTROL_PLANE_STARTS} failed, {exited}:\n{}",
                    control_plane.logs()
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the control plane from {ASSETS_VAR} did not come up:\n{}",
                control_plane.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    panic!("the control plane from {ASSETS_VAR} failed to start {CONTROL_PLANE_STARTS} times");
}

async fn is_ready(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|ready| ready.trim() == "ok")
}

/// Like `wait_for`, but says whether the condition came true instead of failing.
pub async fn wait_for_quietly<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    poll(check).await.is_some()
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `PATIENCE`.
async fn poll<T, F, Fut>(mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn client_from(kubeconfig: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A namespace of the test's own, deleted at the end (also when the test fails).
pub struct TestNamespace {
    pub name: String,
    /// Set for an existing cluster, where the namespace must be deleted afterwards.
    kubeconfig: Option<String>,
}

impl TestNamespace {
    pub async fn create(cluster: &Cluster, test: &str) -> Self {
        let client = &cluster.client;
        let suffix = std::process::id();
        let name = format!("e2e-{test}-{suffix}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"sidecar.dev/e2e": "true"}}}),
        )
        .unwrap();
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
        TestNamespace {
            name,
            kubeconfig: cluster.shared_kubeconfig.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        let Some(kubeconfig) = self.kubeconfig.clone() else {
            return; // a throwaway control plane goes away whole
        };
        // Best effort: the namespace's deletion cascades to everything in it.
        clean_up(kubeconfig, |client| async move {
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// Runs `work` to completion from a `Drop`: on a thread, runtime and client of its own, since
/// the test's client needs the test's runtime, which the drop blocks.
pub fn clean_up<F, Fut>(kubeconfig: String, work: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { work(client_from(&kubeconfig).await).await });
    })
    .join();
}

pub async fn install_crd(client: &Client) {
    apply_crd(client, &sidecar_operator::crd::crd_yaml().unwrap()).await;
}

/// Installs (or updates) both CRDs, as the install does: the SidecarPolicy one and the
/// ClusterSidecarPolicy one.
pub async fn install_crds(client: &Client) {
    install_crd(client).await;
    apply_crd(client, &sidecar_operator::crd::cluster_crd_yaml().unwrap()).await;
}

/// Applies the CRD in `yaml` and waits until it is established.
async fn apply_crd(client: &Client, yaml: &str) {
    let crd: CustomResourceDefinition = serde_norway::from_str(yaml).unwrap();
    let name = crd.metadata.name.clone().unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("sidecar-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_for_established(client, &name).await;
}

/// Waits until the SidecarPolicy CRD is established (its API is served).
pub async fn wait_for_crd(client: &Client) {
    wait_for_established(client, "sidecarpolicies.sidecar.dev").await;
}

async fn wait_for_established(client: &Client, name: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(&format!("the CRD {name} to be established"), || async {
        let crd = api.get(name).await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// Polls `check` until it returns `Some`, or fails the test after `PATIENCE`.
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(check)
        .await
        .unwrap_or_else(|| panic!("gave up waiting for {what}"))
}

pub async fn dump(client: &Client, namespace: &str) -> String {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await;
    let policies = Api::<SidecarPolicy>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await;
    format!(
        "Deployments:\n{}\nSidecarPolicies:\n{}",
        deployments
            .map(|l| serde_norway::to_string(&l.items).unwrap_or_default())
            .unwrap_or_else(|e| e.to_string()),
        policies
            .map(|l| serde_norway::to_string(&l.items).unwrap_or_default())
            .unwrap_or_else(|e| e.to_string()),
    )
}

/// `examples/NAME/FILE`, moved into `namespace`, as the JSON a server-side apply sends.
pub fn example(name: &str, file: &str, namespace: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .join(file);
    let mut value: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["metadata"]["namespace"] = json!(namespace);
    value
}
