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

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sidecar_api::{SidecarPolicy, conditions};

mod support {
    pub mod binary;
    pub mod cluster;
    pub mod control_plane;
    pub mod install;
    pub mod kustomize;
}
use support::cluster::{Cluster, TestNamespace, client_from, cluster, dump, example, wait_for_quietly};
use support::install::{INSTALLER, Install, Operator, apply_all, name};
use support::kustomize::{build, build_inline, deploy_dir, find};

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

    apply_all(&client, &objects).await;
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
