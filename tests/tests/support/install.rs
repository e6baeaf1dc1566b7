//! The shipped install (`deploy/`) on a test's API server: its objects moved to per-run names,
//! applied, and the operator binary run out-of-cluster under the install's ServiceAccount token.
//! Shared by `e2e_install.rs` (the RBAC is enough and no more) and `e2e_security.rs` (what the
//! operator's account and a namespace's policy authors cannot do).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

use super::binary::operator_binary;
use super::cluster::{Cluster, clean_up};
use super::control_plane::free_port;
use super::kustomize::find;

/// The field manager the test installs with, as `kubectl apply --server-side` would.
pub const INSTALLER: &str = "sidecar-e2e-install";

/// Applies the install's `objects`: each phase (cluster-scoped objects, then namespaced ones, so
/// that a namespace exists before what goes in it) first as a server-side dry run, then for
/// real. The operator's Deployment gets no replicas: the tests run the local binary instead.
pub async fn apply_all(client: &Client, objects: &[Value]) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (cluster_scoped, namespaced): (Vec<Value>, Vec<Value>) = objects
        .iter()
        .cloned()
        .partition(|o| o["metadata"]["namespace"].is_null());
    for phase in [cluster_scoped, namespaced] {
        for object in &phase {
            apply(client, &discovery, object, true).await;
        }
        for object in &phase {
            let mut object = object.clone();
            if object["kind"] == "Deployment" {
                object["spec"]["replicas"] = json!(0); // the operator runs from the local binary
            }
            apply(client, &discovery, &object, false).await;
        }
    }
    super::cluster::wait_for_crd(client).await;
}

/// The install under test: its per-run names, and (on a shared cluster) the cleanup of what a
/// namespace deletion does not remove.
pub struct Install {
    /// Replaces `sidecar-system`.
    pub namespace: String,
    /// Appended to cluster-scoped RBAC names.
    suffix: String,
    /// Set on a shared cluster: delete the install's cluster-scoped objects at the end.
    shared_kubeconfig: Option<String>,
    /// The operator's kubeconfig (with its token) and log, removed at the end.
    pub files: tempfile::TempDir,
}

impl Install {
    pub fn new(cluster: &Cluster, run: &str) -> Self {
        Install {
            namespace: format!("e2e-install-{run}"),
            suffix: format!("-e2e-{run}"),
            shared_kubeconfig: cluster.shared_kubeconfig.clone(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// The rendered install, moved to this run's namespace and names; a namespaced install
    /// watches `watched` (the component's placeholder namespaces are replaced by it).
    pub fn isolate(&self, mut objects: Vec<Value>, watched: &str) -> Vec<Value> {
        let account = find(&objects, "ServiceAccount", "sidecar-operator")["metadata"]["namespace"].clone();
        // The component's RoleBindings of the ClusterRole, one per watched namespace: keep one.
        let is_watch_binding =
            |o: &Value| o["kind"] == "RoleBinding" && o["roleRef"]["kind"] == "ClusterRole";
        let mut watch_bindings = 0;
        objects.retain(|o| {
            let watch_binding = is_watch_binding(o);
            watch_bindings += usize::from(watch_binding);
            !watch_binding || watch_bindings == 1
        });
        for object in &mut objects {
            let kind = object["kind"].as_str().unwrap().to_owned();
            let watch_binding = is_watch_binding(object);
            let metadata = &mut object["metadata"];
            match kind.as_str() {
                "Namespace" => metadata["name"] = json!(self.namespace),
                "ClusterRole" | "ClusterRoleBinding" => {
                    metadata["name"] =
                        json!(format!("{}{}", metadata["name"].as_str().unwrap(), self.suffix));
                }
                _ if watch_binding => metadata["namespace"] = json!(watched),
                _ if metadata["namespace"] == account => metadata["namespace"] = json!(self.namespace),
                _ => {}
            }
            if kind.ends_with("Binding") {
                if object["roleRef"]["kind"] == "ClusterRole" {
                    let role = format!("{}{}", object["roleRef"]["name"].as_str().unwrap(), self.suffix);
                    object["roleRef"]["name"] = json!(role);
                }
                for subject in object["subjects"].as_array_mut().unwrap() {
                    subject["namespace"] = json!(self.namespace);
                }
            }
            if kind == "Deployment" {
                let args = &mut object["spec"]["template"]["spec"]["containers"][0]["args"];
                let mut rewritten: Vec<Value> = args
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| !a.as_str().unwrap().starts_with("--namespace"))
                    .cloned()
                    .collect();
                if watch_bindings > 0 {
                    rewritten.push(json!(format!("--namespace={watched}")));
                }
                *args = json!(rewritten);
            }
        }
        objects
    }

    /// A kubeconfig for the cluster that authenticates as the install's ServiceAccount.
    pub async fn service_account_kubeconfig(&self, cluster: &Cluster) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request("sidecar-operator", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;

        let source = cluster.kubeconfig();
        let mut config: Value = serde_norway::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
        let context_name = config["current-context"].clone();
        let context = config["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == context_name)
            .unwrap()["context"]
            .clone();
        let mut cluster_entry = config["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == context["cluster"])
            .unwrap()
            .clone();
        // A relative certificate path is relative to the source kubeconfig.
        if let Some(ca) = cluster_entry["cluster"]["certificate-authority"].as_str() {
            let base = source.parent().unwrap_or(Path::new("."));
            cluster_entry["cluster"]["certificate-authority"] = json!(base.join(ca));
        }
        config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster_entry],
            "users": [{"name": "sidecar-operator", "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": context["cluster"], "user": "sidecar-operator"}}],
            "current-context": "operator",
        });
        let path = self.files.path().join("operator.kubeconfig");
        std::fs::write(&path, serde_norway::to_string(&config).unwrap()).unwrap();
        path
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let Some(kubeconfig) = self.shared_kubeconfig.clone() else {
            return; // a throwaway control plane goes away whole
        };
        let (namespace, suffix) = (self.namespace.clone(), self.suffix.clone());
        // Best effort: what the namespace's deletion does not take with it.
        clean_up(kubeconfig, |client| async move {
            use k8s_openapi::api::core::v1::Namespace;
            use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
            let name = format!("sidecar-operator{suffix}");
            let params = DeleteParams::default();
            let _ = Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&name, &params)
                .await;
            let _ = Api::<ClusterRole>::all(client.clone())
                .delete(&name, &params)
                .await;
            let _ = Api::<Namespace>::all(client).delete(&namespace, &params).await;
        });
    }
}

/// Server-side apply of any object, or its dry run; fails the test with the server's reason.
pub async fn apply(client: &Client, discovery: &Discovery, object: &Value, dry_run: bool) {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", object["apiVersion"].as_str().unwrap()),
    };
    let gvk = GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
    let (resource, capabilities) = discovery
        .resolve_gvk(&gvk)
        .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"].as_str().unwrap(),
            &resource,
        ),
    };
    let mut params = PatchParams::apply(INSTALLER);
    params.dry_run = dry_run;
    let name = name(object);
    if let Err(e) = api.patch(&name, &params, &Patch::Apply(object)).await {
        let step = if dry_run { "server-side dry run" } else { "apply" };
        panic!("{step} of {} {name} failed: {e}", gvk.kind);
    }
}

pub fn name(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap().to_owned()
}

/// The operator binary, run as the install's Deployment runs it; killed when dropped.
pub struct Operator {
    pub child: tokio::process::Child,
    log: PathBuf,
    /// Where it serves /healthz, /readyz and /metrics.
    port: u16,
}

impl Operator {
    /// The `POD_NAME` it runs under: the holder of its Lease.
    pub const IDENTITY: &str = "sidecar-operator-e2e";

    pub fn start(install: &Install, objects: &[Value], kubeconfig: &Path) -> Self {
        let binary = operator_binary();
        let deployment: Deployment =
            serde_json::from_value(find(objects, "Deployment", "sidecar-operator").clone()).unwrap();
        let mut args = deployment.spec.template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        // Its own loopback port for /healthz, /readyz and /metrics, not the container's 8080.
        let port = free_port();
        args.push(format!("--http-addr=127.0.0.1:{port}"));

        let log = install.files.path().join("operator.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(&binary)
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", Self::IDENTITY)
            .env("POD_NAMESPACE", &install.namespace)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));
        Operator { child, log, port }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP status of `GET path` on its health endpoint, or `None` if it does not answer.
    pub async fn get(&self, path: &str) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    }
}
