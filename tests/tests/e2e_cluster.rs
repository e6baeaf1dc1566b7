//! End-to-end tests of ClusterSidecarPolicies against a real API server: a namespace that gains
//! the label its namespaceSelector asks for gets the sidecars in its Deployments, and loses exactly
//! them when the label goes; the cluster policy's status counts namespaces and Deployments; a
//! namespace's `edit` user may write SidecarPolicies there but no ClusterSidecarPolicy; the
//! admission hold holds a new Deployment for a ClusterSidecarPolicy too. How the API server is
//! chosen: see `e2e.rs`. The operator runs in-process for every namespace, as `sidecar-operator
//! run` without `-n`.
//!
//! Cluster-scoped objects are named after the test and the process, and label keys too, so that
//! runs against a shared cluster do not see each other. Nothing here asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{ClusterSidecarPolicy, HELD_FOR_ANNOTATION};
use sidecar_core::Guardrails;
use sidecar_operator::controller;

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod hold;
    pub mod kustomize;
    pub mod operator;
    pub mod rbac;
}
use support::cluster::{Cluster, TestNamespace, clean_up, cluster, install_crds, wait_for};
use support::hold::{apply_hold_file, template_inits};
use support::operator::{init_names, start_cluster_wide};
use support::rbac::{can_i, editor};

/// A name unique to this test run, for cluster-scoped objects and label keys.
fn unique(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// ClusterSidecarPolicy `name` adding sidecar `proxy` to Deployments labelled app=web in the
/// namespaces labelled `label: enabled`.
fn cluster_policy(name: &str, label: &str) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "ClusterSidecarPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {label: "enabled"}},
            "selector": {"matchLabels": {"app": "web"}},
            "order": -10,
            "sidecars": [{
                "name": "proxy", "image": "envoy:1.31",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        },
    })
}

/// A Deployment `name` labelled app=web with no replicas and one app container.
fn deployment(namespace: &str, name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web", "name": name}},
            "template": {
                "metadata": {"labels": {"app": "web", "name": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }))
    .unwrap()
}

/// Creates ClusterSidecarPolicy `name`; deleted when the guard drops (on a shared cluster).
struct ClusterPolicy {
    name: String,
    kubeconfig: Option<String>,
}

impl ClusterPolicy {
    async fn apply(cluster: &Cluster, name: &str, label: &str) -> Self {
        let api: Api<ClusterSidecarPolicy> = Api::all(cluster.client.clone());
        api.patch(
            name,
            &PatchParams::apply("sidecar-e2e"),
            &Patch::Apply(&cluster_policy(name, label)),
        )
        .await
        .unwrap();
        ClusterPolicy {
            name: name.to_owned(),
            kubeconfig: cluster.shared_kubeconfig.clone(),
        }
    }
}

impl Drop for ClusterPolicy {
    fn drop(&mut self) {
        let Some(kubeconfig) = self.kubeconfig.clone() else {
            return;
        };
        let name = self.name.clone();
        clean_up(kubeconfig, |client| async move {
            let _ = Api::<ClusterSidecarPolicy>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// Sets label `key` of namespace `name` to `value`, or removes it (`None`).
async fn label_namespace(client: &Client, name: &str, key: &str, value: Option<&str>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn labelling_a_namespace_injects_and_unlabelling_restores_exactly() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crds(&client).await;
    let label = format!("mesh-{}", std::process::id());
    let name = unique("mesh");
    let _policy = ClusterPolicy::apply(&cluster, &name, &label).await;
    let meshed = TestNamespace::create(&cluster, "cluster-meshed").await;
    let plain = TestNamespace::create(&cluster, "cluster-plain").await;
    let in_meshed: Api<Deployment> = Api::namespaced(client.clone(), &meshed.name);
    let in_plain: Api<Deployment> = Api::namespaced(client.clone(), &plain.name);
    let written = in_meshed
        .create(&PostParams::default(), &deployment(&meshed.name, "web"))
        .await
        .unwrap();
    in_plain
        .create(&PostParams::default(), &deployment(&plain.name, "web"))
        .await
        .unwrap();
    let _operator = start_cluster_wide(&client, Guardrails::default()).await;

    // Neither namespace is labelled: nothing is injected, and the status says no namespace.
    let policies: Api<ClusterSidecarPolicy> = Api::all(client.clone());
    wait_for("the cluster policy's first status", || async {
        let status = policies.get(&name).await.ok()?.status?;
        (status.observed_generation == Some(1)).then_some(())
    })
    .await;
    assert!(init_names(&in_meshed.get("web").await.unwrap()).is_empty());

    label_namespace(&client, &meshed.name, &label, Some("enabled")).await;
    let web = wait_for("the sidecar in the labelled namespace", || async {
        let live = in_meshed.get("web").await.ok()?;
        (init_names(&live) == ["proxy"]).then_some(live)
    })
    .await;
    let record = web
        .annotations()
        .get("sidecar.dev/injected")
        .cloned()
        .unwrap_or_default();
    assert!(
        record.contains(&format!("ClusterSidecarPolicy/{name}")),
        "{record}"
    );
    let status = wait_for("the cluster policy to count the namespace", || async {
        let status = policies.get(&name).await.ok()?.status?;
        (status.matched_deployments == 1 && status.up_to_date_deployments == 1).then_some(status)
    })
    .await;
    assert_eq!(status.matched_namespaces, Some(1), "{status:?}");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "UpToDate")
    );
    assert!(
        init_names(&in_plain.get("web").await.unwrap()).is_empty(),
        "the unlabelled namespace is untouched"
    );

    // Its revision is stored in the operator's namespace; a new one reaches the Deployment (it
    // runs nothing, so it moves at once).
    let revisions: Api<ControllerRevision> =
        Api::namespaced(client.clone(), controller::DEFAULT_REVISION_NAMESPACE);
    let first = status.current_revision.clone().unwrap();
    wait_for("the first revision stored", || async {
        revisions
            .get_opt(&controller::cluster_revision_name(&name, &first))
            .await
            .ok()?
    })
    .await;
    let mut changed = cluster_policy(&name, &label);
    changed["spec"]["sidecars"][0]["image"] = json!("envoy:1.32");
    policies
        .patch(&name, &PatchParams::apply("sidecar-e2e"), &Patch::Apply(&changed))
        .await
        .unwrap();
    wait_for("the new revision in the Deployment", || async {
        let live = in_meshed.get("web").await.ok()?;
        let pod = live.spec.template.spec?;
        (pod.init_containers?[0].image.as_deref() == Some("envoy:1.32")).then_some(())
    })
    .await;
    let status = wait_for("the status to count it up to date", || async {
        let status = policies.get(&name).await.ok()?.status?;
        (status.current_revision.as_deref() != Some(first.as_str()) && status.up_to_date_deployments == 1)
            .then_some(status)
    })
    .await;
    let second = status.current_revision.unwrap();
    wait_for("the second revision stored", || async {
        revisions
            .get_opt(&controller::cluster_revision_name(&name, &second))
            .await
            .ok()?
    })
    .await;

    label_namespace(&client, &meshed.name, &label, None).await;
    let restored = wait_for("the sidecar to go with the label", || async {
        let live = in_meshed.get("web").await.ok()?;
        init_names(&live).is_empty().then_some(live)
    })
    .await;
    assert_eq!(
        restored.spec.template, written.spec.template,
        "the pod template is exactly as written"
    );
    assert!(!restored.annotations().contains_key("sidecar.dev/injected"));
    let status = wait_for("the cluster policy to count no namespace", || async {
        let status = policies.get(&name).await.ok()?.status?;
        (status.matched_namespaces == Some(0) && status.matched_deployments == 0).then_some(status)
    })
    .await;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "NoMatchingDeployments", "{status:?}");
}

#[tokio::test]
async fn a_namespace_editor_may_write_sidecar_policies_there_and_no_cluster_policy() {
    let Some(cluster) = cluster().await else { return };
    // The built-in roles gather the shipped rules through kube-controller-manager's aggregation.
    if !cluster.has_controllers("a_namespace_editor_may_write_sidecar_policies_there_and_no_cluster_policy") {
        return;
    }
    let client = cluster.client.clone();
    install_crds(&client).await;
    let own = TestNamespace::create(&cluster, "rbac-own").await;
    let other = TestNamespace::create(&cluster, "rbac-other").await;
    let user = unique("alice");
    let alice = editor(&cluster, &user, &own.name).await;
    assert!(can_i(&alice, "delete", "sidecarpolicies", Some(&own.name)).await);
    assert!(
        !can_i(&alice, "create", "sidecarpolicies", Some(&other.name)).await,
        "not in another namespace"
    );
    assert!(!can_i(&alice, "create", "clustersidecarpolicies", None).await);
    assert!(!can_i(&alice, "update", "clustersidecarpolicies", None).await);

    // And a real request is refused.
    let name = unique("alice-mesh");
    let as_alice: Api<ClusterSidecarPolicy> = Api::all(alice.clone());
    let attempt = as_alice
        .patch(
            &name,
            &PatchParams::apply("alice"),
            &Patch::Apply(&cluster_policy(&name, "anything")),
        )
        .await;
    match attempt {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a namespace editor created a ClusterSidecarPolicy: {other:?}"),
    }
}

/// Installs both admission policies of the hold and their bindings, as shipped.
async fn install_hold(client: &Client) {
    for file in ["admission-policy.yaml", "cluster-admission-policy.yaml"] {
        apply_hold_file(client, file).await;
    }
}

#[tokio::test]
async fn a_new_deployment_in_a_selected_namespace_is_held_for_the_cluster_policy() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_new_deployment_in_a_selected_namespace_is_held_for_the_cluster_policy") {
        return;
    }
    let client = cluster.client.clone();
    install_crds(&client).await;
    install_hold(&client).await;
    let label = format!("mesh-{}", std::process::id());
    let name = unique("hold-mesh");
    let _policy = ClusterPolicy::apply(&cluster, &name, &label).await;
    let meshed = TestNamespace::create(&cluster, "cluster-hold").await;
    let plain = TestNamespace::create(&cluster, "cluster-nohold").await;
    label_namespace(&client, &meshed.name, &label, Some("enabled")).await;
    let in_meshed: Api<Deployment> = Api::namespaced(client.clone(), &meshed.name);
    let in_plain: Api<Deployment> = Api::namespaced(client.clone(), &plain.name);

    // The API server takes a moment to load a new admission policy: probe until one is held.
    let key = format!("ClusterSidecarPolicy/{name}");
    wait_for("the cluster hold to be in effect", || async {
        let created = in_meshed
            .create(&PostParams::default(), &deployment(&meshed.name, "probe"))
            .await
            .ok()?;
        let _ = in_meshed.delete("probe", &DeleteParams::background()).await;
        wait_for("the probe to be gone", || async {
            in_meshed.get_opt("probe").await.ok()?.is_none().then_some(())
        })
        .await;
        (created.annotations().get(HELD_FOR_ANNOTATION) == Some(&key)).then_some(())
    })
    .await;
    let elsewhere = in_plain
        .create(&PostParams::default(), &deployment(&plain.name, "web"))
        .await
        .unwrap();
    assert!(
        !elsewhere.annotations().contains_key(HELD_FOR_ANNOTATION),
        "not held where the namespaceSelector does not select"
    );

    let created = in_meshed
        .create(&PostParams::default(), &deployment(&meshed.name, "web"))
        .await
        .unwrap();
    assert_eq!(created.spec.paused, Some(true));
    let _operator = start_cluster_wide(&client, Guardrails::default()).await;
    let web = wait_for("web released with its sidecar", || async {
        let live = in_meshed.get("web").await.ok()?;
        let released =
            !live.annotations().contains_key(HELD_FOR_ANNOTATION) && !live.spec.paused.unwrap_or(false);
        released.then_some(live)
    })
    .await;
    assert_eq!(init_names(&web), ["proxy"]);
    wait_for("the Deployment controller to sync web", || async {
        let live = in_meshed.get("web").await.ok()?;
        (live.status?.observed_generation == live.metadata.generation).then_some(())
    })
    .await;
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &meshed.name)
        .list(&ListParams::default().labels("name=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(replica_sets.len(), 1, "one rollout, not two");
    assert_eq!(
        template_inits(&replica_sets[0]),
        ["proxy"],
        "no pod ever without the sidecar"
    );
}
