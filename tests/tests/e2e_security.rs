//! End-to-end security checks of the running operator, each both as `kubectl auth can-i`
//! (SelfSubjectAccessReviews) and as real requests:
//!
//! - the operator's ServiceAccount, from the shipped namespaced install (`deploy/base` plus
//!   `components/watch-namespaces`), cannot read Secrets, cannot write Pods, cannot write RBAC or
//!   author policies, and cannot touch a namespace it does not watch; with the binary running
//!   under its token, a Deployment there stays as it was while the watched one is injected.
//!   (`e2e_install.rs` checks that the same RBAC is enough, and lists and creates a few things
//!   outside it; this file adds the access reviews, the writes, and the unwatched namespace.)
//! - a namespace's policy author (the built-in `edit` role in one namespace) cannot put a policy
//!   in another namespace, and the policy it may write never changes a Deployment elsewhere.
//! - a policy cannot escalate: privileged, host path, root and added capabilities are refused
//!   with the guardrail problem in the policy's status (the Deployment untouched) until the
//!   operator runs with the guardrail flags; host namespaces cannot be asked for at all.
//!
//! How the API server is chosen: see `e2e.rs`. Nothing here asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;
use sidecar_core::Guardrails;

mod support {
    pub mod binary;
    pub mod cluster;
    pub mod control_plane;
    pub mod install;
    pub mod kustomize;
    pub mod operator;
    pub mod rbac;
    pub mod requests;
}
use support::cluster::{TestNamespace, client_from, cluster, dump, example, wait_for, wait_for_quietly};
use support::install::{Install, Operator, apply_all};
use support::kustomize::build_inline;
use support::operator::{init_names, operator_written, start_operator};
use support::rbac::{can_i, can_i_in, editor};
use support::requests::{create_yaml, policy_collection};

/// The U1 example's Deployment and policy (`shop`, `log-shipper`) in `namespace`, as an admin
/// writes them; returns what the operator could change of the Deployment.
async fn workload(client: &Client, namespace: &str, with_policy: bool) -> Value {
    let owner = PatchParams::apply("e2e-owner");
    let deployment = example("u1-log-shipping", "deployment.yaml", namespace);
    let stored = Api::<Deployment>::namespaced(client.clone(), namespace)
        .patch("shop", &owner, &Patch::Apply(&deployment))
        .await
        .unwrap();
    if with_policy {
        let policy = example("u1-log-shipping", "policy.yaml", namespace);
        Api::<SidecarPolicy>::namespaced(client.clone(), namespace)
            .patch("log-shipper", &owner, &Patch::Apply(&policy))
            .await
            .unwrap();
    }
    operator_written(&stored)
}

/// Waits until `shop` in `namespace` carries the U1 sidecar.
async fn wait_for_injection(client: &Client, namespace: &str) -> bool {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    wait_for_quietly(|| async {
        let live = deployments.get("shop").await.ok()?;
        init_names(&live)
            .contains(&"log-forwarder".to_owned())
            .then_some(())
    })
    .await
}

async fn written_now(client: &Client, namespace: &str, name: &str) -> Value {
    operator_written(
        &Api::<Deployment>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .unwrap(),
    )
}

/// `Err` with status 403: the API server refused the request for want of permission.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} was not forbidden: {other:?}"),
    }
}

#[tokio::test]
async fn the_operator_account_reads_no_secrets_writes_no_pods_and_stays_in_its_namespaces() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    let install = Install::new(&cluster, &format!("sec-{}", std::process::id()));
    let watched = TestNamespace::create(&cluster, "security-watched").await;
    let unwatched = TestNamespace::create(&cluster, "security-unwatched").await;
    let objects = build_inline(|deploy| {
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            deploy.join("base").display(),
            deploy.join("components/watch-namespaces").display()
        )
    });
    let objects = install.isolate(objects, &watched.name);
    apply_all(&client, &objects).await;

    // The same workload and policy in both namespaces, a Secret and a Pod in the watched one.
    workload(&client, &watched.name, true).await;
    let untouched = workload(&client, &unwatched.name, true).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-password"}, "stringData": {"password": "hunter2"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &watched.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "labels": {"app": "shop"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/c:1"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &watched.name)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let kubeconfig = install.service_account_kubeconfig(&cluster).await;
    let own = client_from(&kubeconfig.display().to_string()).await;
    let (w, u, home) = (
        Some(watched.name.as_str()),
        Some(unwatched.name.as_str()),
        Some(install.namespace.as_str()),
    );

    // `kubectl auth can-i --as system:serviceaccount:...:sidecar-operator`: what it needs is
    // allowed (so the review tells the two apart), the rest is not.
    for (verb, group, resource, namespace) in [
        ("patch", "apps", "deployments", w),
        ("list", "sidecar.dev", "sidecarpolicies", w),
        ("patch", "sidecar.dev", "sidecarpolicies/status", w),
    ] {
        assert!(
            can_i_in(&own, verb, group, resource, namespace).await,
            "the operator cannot {verb} {resource} in {namespace:?}, which it needs"
        );
    }
    for (verb, group, resource, namespace) in [
        ("get", "", "secrets", w),
        ("list", "", "secrets", w),
        ("watch", "", "secrets", w),
        ("get", "", "secrets", home),
        ("list", "", "secrets", None),
        ("create", "", "pods", w),
        ("patch", "", "pods", w),
        ("update", "", "pods", w),
        ("delete", "", "pods", w),
        ("create", "", "pods/exec", w),
        ("patch", "apps", "deployments", u),
        ("list", "apps", "deployments", u),
        ("list", "apps", "deployments", None),
        ("list", "sidecar.dev", "sidecarpolicies", u),
        ("create", "sidecar.dev", "sidecarpolicies", w),
        ("update", "sidecar.dev", "sidecarpolicies", w),
        ("list", "sidecar.dev", "clustersidecarpolicies", None),
        ("create", "rbac.authorization.k8s.io", "rolebindings", w),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", None),
        ("impersonate", "", "users", None),
        ("impersonate", "", "serviceaccounts", w),
    ] {
        assert!(
            !can_i_in(&own, verb, group, resource, namespace).await,
            "the operator's ServiceAccount may {verb} {group}/{resource} in {namespace:?}"
        );
    }

    // The same as real requests.
    forbidden(
        "reading a Secret",
        Api::<Secret>::namespaced(own.clone(), &watched.name)
            .get("db-password")
            .await,
    );
    let pods: Api<Pod> = Api::namespaced(own.clone(), &watched.name);
    forbidden(
        "labelling a Pod",
        pods.patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owned": "yes"}}})),
        )
        .await,
    );
    forbidden(
        "deleting a Pod",
        pods.delete("app", &DeleteParams::default()).await,
    );
    let elsewhere: Api<Deployment> = Api::namespaced(own.clone(), &unwatched.name);
    forbidden(
        "patching a Deployment in an unwatched namespace",
        elsewhere
            .patch(
                "shop",
                &PatchParams::apply("sidecar-operator"),
                &Patch::Apply(json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "shop", "annotations": {"sidecar.dev/injected": "{}"}},
                })),
            )
            .await,
    );
    forbidden(
        "reading a Deployment in an unwatched namespace",
        elsewhere.get("shop").await,
    );
    let policy = example("u1-log-shipping", "policy.yaml", &watched.name);
    forbidden(
        "authoring a policy",
        Api::<SidecarPolicy>::namespaced(own.clone(), &watched.name)
            .create(&PostParams::default(), &serde_json::from_value(policy).unwrap())
            .await,
    );

    // Running under that token: the watched namespace's Deployment gets its sidecar, the other
    // one, selected by the same policy, stays as the admin wrote it.
    let mut operator = Operator::start(&install, &objects, &kubeconfig);
    let injected = wait_for_injection(&client, &watched.name);
    let injected = tokio::select! {
        injected = injected => injected,
        status = operator.child.wait() => panic!("the operator exited ({status:?}):\n{}", operator.logs()),
    };
    assert!(
        injected,
        "the watched namespace was not injected.\nOperator logs:\n{}\n{}",
        operator.logs(),
        dump(&client, &watched.name).await
    );
    assert_eq!(
        written_now(&client, &unwatched.name, "shop").await,
        untouched,
        "the operator changed a Deployment in a namespace it does not watch"
    );
    drop(operator);
}

#[tokio::test]
async fn a_namespace_editor_cannot_inject_into_another_namespace() {
    let Some(cluster) = cluster().await else { return };
    // The editor's role gathers the shipped rules through kube-controller-manager's aggregation.
    if !cluster.has_controllers("a_namespace_editor_cannot_inject_into_another_namespace") {
        return;
    }
    let client = cluster.client.clone();
    support::cluster::install_crds(&client).await;
    let own = TestNamespace::create(&cluster, "editor-own").await;
    let other = TestNamespace::create(&cluster, "editor-other").await;
    workload(&client, &own.name, false).await;
    let untouched = workload(&client, &other.name, false).await;
    let user = format!("alice-{}", std::process::id());
    let alice = editor(&cluster, &user, &own.name).await;
    let _operator = support::operator::start_cluster_wide(&client, Guardrails::default()).await;

    assert!(!can_i(&alice, "create", "sidecarpolicies", Some(&other.name)).await);
    assert!(!can_i(&alice, "create", "clustersidecarpolicies", None).await);
    assert!(!can_i_in(&alice, "patch", "apps", "deployments", Some(&other.name)).await);

    // Where alice may write, her policy works: her Deployment gets the sidecar.
    let mine = example("u1-log-shipping", "policy.yaml", &own.name);
    Api::<SidecarPolicy>::namespaced(alice.clone(), &own.name)
        .patch("log-shipper", &PatchParams::apply("alice"), &Patch::Apply(&mine))
        .await
        .unwrap();
    // Elsewhere her requests are refused, however the namespace is named.
    let theirs = example("u1-log-shipping", "policy.yaml", &other.name);
    forbidden(
        "a policy in another namespace",
        Api::<SidecarPolicy>::namespaced(alice.clone(), &other.name)
            .patch(
                "log-shipper",
                &PatchParams::apply("alice"),
                &Patch::Apply(&theirs),
            )
            .await,
    );
    let smuggled = serde_json::to_string(&theirs).unwrap();
    match create_yaml(&alice, &policy_collection("SidecarPolicy", &own.name), &smuggled).await {
        Err((400, message)) if message.contains("does not match the namespace") => {}
        other => panic!("a policy naming another namespace was not refused: {other:?}"),
    }
    assert!(
        wait_for_injection(&client, &own.name).await,
        "alice's policy did not inject in her namespace:\n{}",
        dump(&client, &own.name).await
    );
    // Her namespace is done; the other one's Deployment, with the same labels, is as it was.
    assert_eq!(
        written_now(&client, &other.name, "shop").await,
        untouched,
        "a policy in {} changed a Deployment in {}",
        own.name,
        other.name
    );
}

/// Policies that ask for what the guardrails refuse, by the flag that would allow it: a
/// status condition lists three problems and counts the rest, so the host path has its own.
fn escalating_policies(namespace: &str) -> [(Value, &'static [&'static str]); 2] {
    let policy = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"logging": "ship"}});
        json!({
            "apiVersion": "sidecar.dev/v1alpha1",
            "kind": "SidecarPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        })
    };
    [
        (
            policy(
                "escalate",
                json!({"sidecars": [{
                    "name": "escalated",
                    "image": "busybox:1.36",
                    "securityContext": {
                        "privileged": true,
                        "runAsUser": 0,
                        "capabilities": {"add": ["SYS_ADMIN"]},
                    },
                }]}),
            ),
            &[
                "--allow-privileged",
                "--allow-run-as-root",
                "--allow-capability SYS_ADMIN",
            ],
        ),
        (
            policy(
                "node-root",
                json!({
                    "volumes": [{"name": "node-root", "hostPath": {"path": "/"}}],
                    "sidecars": [{
                        "name": "node-reader",
                        "image": "busybox:1.36",
                        "volumeMounts": [{"name": "node-root", "mountPath": "/host"}],
                    }],
                }),
            ),
            &["--allow-host-path"],
        ),
    ]
}

#[tokio::test]
async fn a_policy_cannot_escalate_without_the_guardrail_flags() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_policy_cannot_escalate_without_the_guardrail_flags") {
        return;
    }
    let client = cluster.client.clone();
    support::cluster::install_crds(&client).await;
    let ns = TestNamespace::create(&cluster, "escalate").await;
    let untouched = workload(&client, &ns.name, false).await;
    let alice = editor(&cluster, &format!("mallory-{}", std::process::id()), &ns.name).await;
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;

    // Host namespaces cannot even be written down.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        let mut policy = example("u1-log-shipping", "policy.yaml", &ns.name);
        policy["metadata"]["name"] = json!("host");
        policy["spec"]["pod"] = json!({ field: true });
        let text = serde_json::to_string(&policy).unwrap();
        match create_yaml(&alice, &policy_collection("SidecarPolicy", &ns.name), &text).await {
            Err((400, message)) if message.contains(&format!("unknown field \"spec.pod.{field}\"")) => {}
            other => panic!("a policy asking for {field} was not refused: {other:?}"),
        }
    }

    // The rest is admitted (the guardrails are the operator's, not the API server's) and refused.
    let policies: Api<SidecarPolicy> = Api::namespaced(alice.clone(), &ns.name);
    for (policy, flags) in escalating_policies(&ns.name) {
        let name = policy["metadata"]["name"].as_str().unwrap().to_owned();
        policies
            .patch(&name, &PatchParams::apply("mallory"), &Patch::Apply(&policy))
            .await
            .unwrap();
        let refused = wait_for("the guardrail refusal in the policy's status", || async {
            let status = policies.get(&name).await.ok()?.status?;
            let invalid = status.conditions.iter().find(|c| c.type_ == "Invalid")?;
            (invalid.reason == "GuardrailRefused").then(|| invalid.message.clone())
        })
        .await;
        for flag in flags {
            assert!(
                refused.contains(flag),
                "{name}: the refusal does not name {flag}: {refused}"
            );
        }
    }
    assert_eq!(
        written_now(&client, &ns.name, "shop").await,
        untouched,
        "a refused policy changed the Deployment"
    );

    // With the flags, the same policies go in: the guardrails were all that stood in the way.
    operator.abort();
    let _ = operator.await;
    let mut allowed = Guardrails {
        allow_privileged: true,
        allow_host_path: true,
        allow_run_as_root: true,
        ..Guardrails::default()
    };
    allowed.allow_capability("SYS_ADMIN");
    let _operator = start_operator(&client, &ns.name, allowed).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let live = wait_for("the policy injected under the guardrail flags", || async {
        let live = deployments.get("shop").await.ok()?;
        let names = init_names(&live);
        (names.contains(&"escalated".to_owned()) && names.contains(&"node-reader".to_owned())).then_some(live)
    })
    .await;
    assert!(live.annotations().contains_key("sidecar.dev/injected"));
}
