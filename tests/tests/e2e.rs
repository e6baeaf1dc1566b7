//! End-to-end tests against a real API server.
//!
//! Runs against an existing cluster when `SIDECAR_E2E_KUBECONFIG` names a kubeconfig (Kubernetes
//! 1.29 or newer, for native sidecars), or against a throwaway control plane per test when
//! `KUBEBUILDER_ASSETS` names a directory with `kube-apiserver` and `etcd`; with neither it prints
//! one line saying it is skipped and passes. Each test creates its own namespace, runs the
//! operator in-process for that namespace only, and prints the objects it looked at when it
//! fails. Run: `just e2e`.
//!
//! Nothing here asserts a duration: waits poll the API until a condition holds, and give up
//! (failing the test) only after a generous number of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

mod support {
    pub mod control_plane;
}
use serde_json::json;
use sidecar_api::{INJECTED_ANNOTATION, SidecarPolicy};
use sidecar_core::Guardrails;
use sidecar_operator::controller;

const KUBECONFIG_VAR: &str = "SIDECAR_E2E_KUBECONFIG";
/// How long a wait polls before the test fails (it returns as soon as the condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";

/// The API server a test runs against, and what to tear down after it.
struct Cluster {
    client: Client,
    /// The kubeconfig of an existing cluster, whose test namespaces must be deleted; `None` for a
    /// throwaway control plane, which goes away whole.
    shared_kubeconfig: Option<String>,
    /// Kept alive until the test ends, then stopped.
    _control_plane: Option<support::control_plane::ControlPlane>,
}

/// An existing cluster (`SIDECAR_E2E_KUBECONFIG`), or a throwaway control plane started from
/// `KUBEBUILDER_ASSETS`, or `None` (the test is skipped).
async fn cluster() -> Option<Cluster> {
    if let Ok(path) = std::env::var(KUBECONFIG_VAR) {
        let client = client_from(&path).await;
        return Some(Cluster {
            client,
            shared_kubeconfig: Some(path),
            _control_plane: None,
        });
    }
    if let Ok(assets) = std::env::var(ASSETS_VAR) {
        let control_plane = support::control_plane::ControlPlane::start(Path::new(&assets));
        let client = client_from(&control_plane.kubeconfig.display().to_string()).await;
        let up = wait_for_quietly(|| async {
            Api::<Namespace>::all(client.clone())
                .get("default")
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            up,
            "the control plane from {ASSETS_VAR} did not come up:\n{}",
            control_plane.logs()
        );
        return Some(Cluster {
            client,
            shared_kubeconfig: None,
            _control_plane: Some(control_plane),
        });
    }
    eprintln!(
        "e2e skipped: set {KUBECONFIG_VAR} to the kubeconfig of a Kubernetes >= 1.29 cluster, \
         or {ASSETS_VAR} to a directory with kube-apiserver and etcd"
    );
    None
}

/// Like `wait_for`, but says whether the condition came true instead of failing.
async fn wait_for_quietly<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

async fn client_from(kubeconfig: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig is readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A namespace of the test's own, deleted at the end (also when the test fails).
struct TestNamespace {
    name: String,
    /// Set for an existing cluster, where the namespace must be deleted afterwards.
    kubeconfig: Option<String>,
}

impl TestNamespace {
    async fn create(cluster: &Cluster, test: &str) -> Self {
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
        // Best effort: the namespace's deletion cascades to everything in it. It runs on a runtime
        // and client of its own: the test's client needs the test's runtime, which this blocks.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = client_from(&kubeconfig).await;
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

async fn install_crd(client: &Client) {
    let crd: CustomResourceDefinition =
        serde_norway::from_str(&sidecar_operator::crd::crd_yaml().unwrap()).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        "sidecarpolicies.sidecar.dev",
        &PatchParams::apply("sidecar-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_for("the CRD to be established", || async {
        let crd = api.get("sidecarpolicies.sidecar.dev").await.ok()?;
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
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn example(name: &str, file: &str, namespace: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .join(file);
    let mut value: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["metadata"]["namespace"] = json!(namespace);
    value
}

fn all_guardrails_off() -> Guardrails {
    let mut g = Guardrails {
        allow_host_path: true,
        allow_run_as_root: true,
        ..Guardrails::default()
    };
    g.allow_capability("NET_ADMIN");
    g.allow_capability("NET_RAW");
    g
}

/// The operator, in-process, for one namespace (as `sidecar-operator run -n NS`).
async fn start_operator(
    client: &Client,
    namespace: &str,
    guardrails: Guardrails,
) -> tokio::task::JoinHandle<()> {
    // The operator's logs go with the test's output (RUST_LOG filters; default info).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let scope = controller::Scope::new(client.clone(), Some(namespace), guardrails, Default::default()).await;
    tokio::spawn(scope.run())
}

async fn dump(client: &Client, namespace: &str) -> String {
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

fn init_names(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test]
async fn every_use_case_is_injected_in_order_and_removed_exactly() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "usecases").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    let examples = [
        "u1-log-shipping",
        "u2-stdout-via-shared-pid",
        "u3-localhost-client",
        "u4-tls-proxy",
        "u5-metrics-exporter",
        "u6-config-reload",
        "u7-secret-sidecar",
        "u8-service-mesh-proxy",
    ];
    // The owner's Deployments first, before the operator runs: this is what removal must restore.
    let mut originals = Vec::new();
    for name in examples {
        let d = example(name, "deployment.yaml", &ns.name);
        let stored = deployments
            .patch(d["metadata"]["name"].as_str().unwrap(), &owner, &Patch::Apply(&d))
            .await
            .unwrap();
        originals.push((name, stored));
    }
    let operator = start_operator(&client, &ns.name, all_guardrails_off()).await;

    for (name, original) in &originals {
        let policy = example(name, "policy.yaml", &ns.name);
        policies
            .patch(
                policy["metadata"]["name"].as_str().unwrap(),
                &owner,
                &Patch::Apply(&policy),
            )
            .await
            .unwrap();
        let expected: Deployment = serde_norway::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../examples")
                    .join(name)
                    .join("rendered.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        let want = init_names(&expected);
        let deployment = original.name_any();
        let live = wait_for(&format!("{name}: sidecars injected in order"), || async {
            let live = deployments.get(&deployment).await.ok()?;
            (init_names(&live) == want).then_some(live)
        })
        .await;
        for c in live
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
        {
            let expected = expected
                .spec
                .template
                .spec
                .as_ref()
                .unwrap()
                .init_containers
                .iter()
                .flatten()
                .find(|e| e.name == c.name)
                .unwrap();
            assert_eq!(
                c.restart_policy,
                expected.restart_policy,
                "{name}: {} restartPolicy\n{}",
                c.name,
                dump(&client, &ns.name).await
            );
        }
    }

    // A policy update reaches its Deployment: a new exporter image for U5.
    let mut updated = example("u5-metrics-exporter", "policy.yaml", &ns.name);
    updated["spec"]["sidecars"][0]["image"] = json!("oliver006/redis_exporter:v1.67.0");
    policies
        .patch("redis-metrics", &owner, &Patch::Apply(&updated))
        .await
        .unwrap();
    wait_for("the policy update to reach the Deployment", || async {
        let live = deployments.get("session-cache").await.ok()?;
        let pod = live.spec.template.spec?;
        let exporter = pod
            .init_containers?
            .into_iter()
            .find(|c| c.name == "redis-exporter")?;
        (exporter.image.as_deref() == Some("oliver006/redis_exporter:v1.67.0")).then_some(())
    })
    .await;

    // Delete every policy: each Deployment goes back to exactly what its owner wrote.
    for (name, original) in &originals {
        let policy = example(name, "policy.yaml", &ns.name);
        policies
            .delete(
                policy["metadata"]["name"].as_str().unwrap(),
                &DeleteParams::default(),
            )
            .await
            .unwrap();
        let deployment = original.name_any();
        let restored = wait_for(&format!("{name}: sidecars removed"), || async {
            let live = deployments.get(&deployment).await.ok()?;
            let annotations = live.metadata.annotations.clone().unwrap_or_default();
            (!annotations.contains_key(INJECTED_ANNOTATION)).then_some(live)
        })
        .await;
        assert_eq!(
            restored.spec.template,
            original.spec.template,
            "{name}: template not restored exactly\n{}",
            dump(&client, &ns.name).await
        );
    }
    operator.abort();
}

#[tokio::test]
async fn conflicts_are_reported_and_idle_means_no_writes() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "conflict").await;
    let other = TestNamespace::create(&cluster, "untouched").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    // A Deployment whose own container already has the sidecar's name.
    let mut clash = example("u1-log-shipping", "deployment.yaml", &ns.name);
    clash["spec"]["template"]["spec"]["containers"][0]["name"] = json!("log-forwarder");
    deployments
        .patch("shop", &owner, &Patch::Apply(&clash))
        .await
        .unwrap();
    // The same Deployment in another namespace, which the operator does not watch.
    let elsewhere = example("u1-log-shipping", "deployment.yaml", &other.name);
    let other_deployments: Api<Deployment> = Api::namespaced(client.clone(), &other.name);
    let before_elsewhere = other_deployments
        .patch("shop", &owner, &Patch::Apply(&elsewhere))
        .await
        .unwrap();

    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    let policy = example("u1-log-shipping", "policy.yaml", &ns.name);
    policies
        .patch("log-shipper", &owner, &Patch::Apply(&policy))
        .await
        .unwrap();

    let status = wait_for("a Conflict condition", || async {
        let p = policies.get("log-shipper").await.ok()?;
        let status = p.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Conflict" && c.status == "True")
            .then_some(status)
    })
    .await;
    let conflict = status.conditions.iter().find(|c| c.type_ == "Conflict").unwrap();
    assert!(
        conflict.message.contains("Deployment \"shop\""),
        "{}",
        conflict.message
    );
    let live = deployments.get("shop").await.unwrap();
    assert!(
        init_names(&live).is_empty(),
        "the conflicting Deployment is left untouched\n{}",
        dump(&client, &ns.name).await
    );

    // Idle: nothing changes, so nothing is written.
    let resource_version = live.resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        deployments.get("shop").await.unwrap().resource_version(),
        resource_version,
        "a write while idle"
    );
    let policy_version = policies.get("log-shipper").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        policies.get("log-shipper").await.unwrap().resource_version(),
        policy_version,
        "a status write while idle"
    );

    let after_elsewhere = other_deployments.get("shop").await.unwrap();
    assert_eq!(
        after_elsewhere.resource_version(),
        before_elsewhere.resource_version(),
        "another namespace was touched"
    );
    operator.abort();
}

#[tokio::test]
async fn a_gitops_tool_and_the_operator_keep_their_own_fields() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "gitops").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    // Flux applies with server-side apply and forces its own fields.
    let flux = PatchParams::apply("kustomize-controller").force();

    let manifest = example("u4-tls-proxy", "deployment.yaml", &ns.name);
    deployments
        .patch("legacy-billing", &flux, &Patch::Apply(&manifest))
        .await
        .unwrap();
    let policy = example("u4-tls-proxy", "policy.yaml", &ns.name);
    policies
        .patch("tls-terminator", &flux, &Patch::Apply(&policy))
        .await
        .unwrap();
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;

    let injected = wait_for("the proxy injected before the app's init step", || async {
        let live = deployments.get("legacy-billing").await.ok()?;
        (init_names(&live) == ["tls-proxy", "migrate"]).then_some(live)
    })
    .await;

    // Flux re-applies the unchanged manifest: nothing of the operator's goes, nothing flips.
    deployments
        .patch("legacy-billing", &flux, &Patch::Apply(&manifest))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = deployments.get("legacy-billing").await.unwrap();
    assert_eq!(
        init_names(&after),
        ["tls-proxy", "migrate"],
        "{}",
        dump(&client, &ns.name).await
    );
    assert_eq!(
        after.metadata.generation, injected.metadata.generation,
        "a re-apply of the same manifest rolled the pods"
    );

    // Flux changes its own container: its change lands, the operator's fields stay.
    let mut changed = manifest.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example.com/billing/app:3.3.0");
    deployments
        .patch("legacy-billing", &flux, &Patch::Apply(&changed))
        .await
        .unwrap();
    let updated = wait_for("Flux's image change", || async {
        let live = deployments.get("legacy-billing").await.ok()?;
        let image = live.spec.template.spec.as_ref()?.containers[0].image.clone()?;
        (image.ends_with(":3.3.0")).then_some(live)
    })
    .await;
    assert_eq!(
        init_names(&updated),
        ["tls-proxy", "migrate"],
        "{}",
        dump(&client, &ns.name).await
    );
    let generation = updated.metadata.generation;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        deployments
            .get("legacy-billing")
            .await
            .unwrap()
            .metadata
            .generation,
        generation,
        "flip-flop"
    );
    operator.abort();
}
