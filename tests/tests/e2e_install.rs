//! End-to-end: install sidecar-operator from `deploy/base` on a real API server, run it under the
//! install's own RBAC, and check that the RBAC is enough and no more.
//!
//! The manifests are rendered with kubectl (or kustomize), validated by a server-side dry run,
//! then applied. The install's Deployment is applied with no replicas: its image is not built
//! here. The operator runs out-of-cluster instead, from the locally built binary, with the
//! Deployment's own args and a token of the install's ServiceAccount. Cluster-scoped names get a
//! per-run suffix and the operator's namespace a per-run name, so that a shared cluster's own
//! install is left alone. Needs `SIDECAR_E2E_KUBECONFIG` or `KUBEBUILDER_ASSETS` (see e2e.rs)
//! and the binary (`just e2e` builds it). Nothing here asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};
use sidecar_api::{SidecarPolicy, conditions};

mod support {
    pub mod binary;
    pub mod cluster;
    pub mod control_plane;
    pub mod kustomize;
}
use support::binary::operator_binary;
use support::cluster::{
    Cluster, TestNamespace, clean_up, client_from, cluster, dump, example, wait_for_quietly,
};
use support::control_plane::free_port;
use support::kustomize::{build, build_inline, deploy_dir, find};

/// The field manager the test installs with, as `kubectl apply --server-side` would.
const INSTALLER: &str = "sidecar-e2e-install";

#[tokio::test]
async fn the_kustomize_install_validates_and_its_rbac_is_enough_and_no_more() {
    let Some(cluster) = cluster().await else { return };
    check_install(
        &cluster,
        build(&deploy_dir().join("base")),
        Watching::AllNamespaces,
    )
    .await;
}

#[tokio::test]
async fn a_namespaced_install_works_with_role_bindings_alone() {
    let Some(cluster) = cluster().await else { return };
    let objects = build_inline(|deploy| {
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            deploy.join("base").display(),
            deploy.join("components/watch-namespaces").display()
        )
    });
    check_install(&cluster, objects, Watching::TestNamespace).await;
}

/// What the install under test watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watching {
    /// As the base: every namespace, through the ClusterRoleBinding.
    AllNamespaces,
    /// As the watch-namespaces component: the test's namespace only, through a RoleBinding there.
    TestNamespace,
}

async fn check_install(cluster: &Cluster, objects: Vec<Value>, watching: Watching) {
    let client = cluster.client.clone();
    let variant = match watching {
        Watching::AllNamespaces => "all",
        Watching::TestNamespace => "one",
    };
    let install = Install::new(cluster, &format!("{variant}-{}", std::process::id()));
    // The workload's namespace exists first: a namespaced install binds its role there.
    let apps = TestNamespace::create(cluster, &format!("install-{variant}-apps")).await;
    let objects = install.isolate(objects, &apps.name);

    // Dry run, then apply: cluster-scoped objects first (the namespace must exist before the
    // dry run of what goes in it), then namespaced ones.
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (cluster_scoped, namespaced): (Vec<Value>, Vec<Value>) = objects
        .iter()
        .cloned()
        .partition(|o| o["metadata"]["namespace"].is_null());
    for phase in [cluster_scoped, namespaced] {
        for object in &phase {
            apply(&client, &discovery, object, true).await;
        }
        for object in &phase {
            let mut object = object.clone();
            if object["kind"] == "Deployment" {
                object["spec"]["replicas"] = json!(0); // the operator runs from the local binary
            }
            apply(&client, &discovery, &object, false).await;
        }
    }
    support::cluster::wait_for_crd(&client).await;
    assert_pod_passes_pod_security(&client, &install, &objects).await;

    // A workload and a policy for the operator to act on, written by an admin. U4 puts its
    // sidecar before the owner's init container, so the operator reorders what server-side apply
    // stored: every kind of write it makes is made under the install's RBAC.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &apps.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &apps.name);
    let admin = PatchParams::apply(INSTALLER);
    let deployment = example("u4-tls-proxy", "deployment.yaml", &apps.name);
    let policy = example("u4-tls-proxy", "policy.yaml", &apps.name);
    let (deployment_name, policy_name) = (name(&deployment), name(&policy));
    deployments
        .patch(&deployment_name, &admin, &Patch::Apply(&deployment))
        .await
        .unwrap();
    policies
        .patch(&policy_name, &admin, &Patch::Apply(&policy))
        .await
        .unwrap();

    // The operator, as the install runs it, but under its ServiceAccount's token.
    let kubeconfig = install.service_account_kubeconfig(cluster).await;
    let mut operator = Operator::start(&install, &objects, &kubeconfig);
    let own = client_from(&kubeconfig.display().to_string()).await;

    // Enough: it injects, reports status and Events, fills its caches, and holds its Lease.
    let injected = wait_for_quietly(|| async {
        let live = deployments.get(&deployment_name).await.ok()?;
        let init = live.spec.template.spec.as_ref()?.init_containers.clone()?;
        // Injected, and in order: the sidecar first.
        (init.len() > 1 && init[0].restart_policy.as_deref() == Some("Always")).then_some(())
    });
    let injected = tokio::select! {
        injected = injected => injected,
        status = operator.child.wait() => panic!("the operator exited ({status:?}):\n{}", operator.logs()),
    };
    let ready = wait_for_quietly(|| async {
        let status = policies.get(&policy_name).await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == conditions::READY)?;
        (ready.status == "True").then_some(())
    });
    let reported = wait_for_quietly(|| async {
        let events = Api::<Event>::namespaced(client.clone(), &apps.name);
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("sidecar-operator"))
            .then_some(())
    });
    let caches_filled = wait_for_quietly(|| async { (operator.get("/readyz").await? == 200).then_some(()) });
    let outcome = [
        ("the sidecar injected, first", injected),
        ("the policy Ready", ready.await),
        ("an Event from the operator", reported.await),
        ("/readyz answering 200", caches_filled.await),
    ];
    for (what, happened) in outcome {
        assert!(
            happened,
            "gave up waiting for {what} under the install's RBAC.\nOperator logs:\n{}\n{}",
            operator.logs(),
            dump(&client, &apps.name).await
        );
    }
    let lease = Api::<Lease>::namespaced(client.clone(), &install.namespace)
        .get("sidecar-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(Operator::IDENTITY)
    );
    // An RBAC denial names the requester; other 403s (a namespace being deleted refuses new
    // Events) are not about the install's RBAC.
    let logs = operator.logs();
    assert!(
        !logs.contains(&format!("system:serviceaccount:{}:", install.namespace)),
        "the operator was denied something it needs:\n{logs}\n{}",
        dump(&client, &apps.name).await
    );

    // No more: what it does not need is denied.
    let denied = |what: &str, result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("the operator's ServiceAccount could {what}: {other:?}"),
    };
    let secrets: Api<Secret> = Api::namespaced(own.clone(), &apps.name);
    denied("list Secrets", secrets.list(&Default::default()).await.map(drop));
    let own_secrets: Api<Secret> = Api::namespaced(own.clone(), &install.namespace);
    denied(
        "list its own namespace's Secrets",
        own_secrets.list(&Default::default()).await.map(drop),
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(own.clone(), &apps.name);
    denied(
        "list ConfigMaps",
        config_maps.list(&Default::default()).await.map(drop),
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-allowed"},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/c:1"}]}
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(own.clone(), &apps.name);
    denied(
        "create a Pod",
        pods.create(&PostParams::default(), &pod).await.map(drop),
    );
    let own_deployments: Api<Deployment> = Api::namespaced(own.clone(), &apps.name);
    denied(
        "delete a Deployment",
        own_deployments
            .delete(&deployment_name, &DeleteParams::default())
            .await
            .map(drop),
    );
    let own_policies: Api<SidecarPolicy> = Api::namespaced(own.clone(), &apps.name);
    let spec_change = Patch::Merge(json!({"spec": {"order": 7}}));
    denied(
        "change a policy's spec",
        own_policies
            .patch(&policy_name, &PatchParams::default(), &spec_change)
            .await
            .map(drop),
    );
    let other_leases: Api<Lease> = Api::namespaced(own.clone(), &install.namespace);
    denied(
        "read another Lease",
        other_leases.get("someone-else").await.map(drop),
    );
    let app_leases: Api<Lease> = Api::namespaced(own.clone(), &apps.name);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "sidecar-operator"}})).unwrap();
    denied(
        "create a Lease outside its namespace",
        app_leases.create(&PostParams::default(), &lease).await.map(drop),
    );
    if watching == Watching::TestNamespace {
        let everywhere: Api<Deployment> = Api::all(own.clone());
        denied(
            "list Deployments in every namespace",
            everywhere.list(&Default::default()).await.map(drop),
        );
    }
    drop(operator);
    drop(own);
}

/// The install under test: its per-run names, and (on a shared cluster) the cleanup of what a
/// namespace deletion does not remove.
struct Install {
    /// Replaces `sidecar-system`.
    namespace: String,
    /// Appended to cluster-scoped RBAC names.
    suffix: String,
    /// Set on a shared cluster: delete the install's cluster-scoped objects at the end.
    shared_kubeconfig: Option<String>,
    /// The operator's kubeconfig (with its token) and log, removed at the end.
    files: tempfile::TempDir,
}

impl Install {
    fn new(cluster: &Cluster, run: &str) -> Self {
        Install {
            namespace: format!("e2e-install-{run}"),
            suffix: format!("-e2e-{run}"),
            shared_kubeconfig: cluster.shared_kubeconfig.clone(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// The rendered install, moved to this run's namespace and names; a namespaced install
    /// watches `watched` (the component's placeholder namespaces are replaced by it).
    fn isolate(&self, mut objects: Vec<Value>, watched: &str) -> Vec<Value> {
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
    async fn service_account_kubeconfig(&self, cluster: &Cluster) -> PathBuf {
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

/// The install's namespace enforces the `restricted` Pod Security Standard; a Pod made from the
/// operator's pod template must be admitted there (a dry run: nothing runs).
async fn assert_pod_passes_pod_security(client: &Client, install: &Install, objects: &[Value]) {
    let template = &find(objects, "Deployment", "sidecar-operator")["spec"]["template"];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pod-security-check", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &install.namespace);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    if let Err(e) = pods.create(&params, &pod).await {
        panic!("the operator's pod is not admitted under the restricted Pod Security Standard: {e}");
    }
}

/// Server-side apply of any object, or its dry run; fails the test with the server's reason.
async fn apply(client: &Client, discovery: &Discovery, object: &Value, dry_run: bool) {
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

fn name(object: &Value) -> String {
    object["metadata"]["name"].as_str().unwrap().to_owned()
}

/// The operator binary, run as the install's Deployment runs it; killed when dropped.
struct Operator {
    child: tokio::process::Child,
    log: PathBuf,
    /// Where it serves /healthz, /readyz and /metrics.
    port: u16,
}

impl Operator {
    /// The `POD_NAME` it runs under: the holder of its Lease.
    const IDENTITY: &str = "sidecar-operator-e2e";

    fn start(install: &Install, objects: &[Value], kubeconfig: &Path) -> Self {
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

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP status of `GET path` on its health endpoint, or `None` if it does not answer.
    async fn get(&self, path: &str) -> Option<u16> {
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
