//! End-to-end tests of the admission hold (`deploy/components/admission-hold`) against a real API
//! server with MutatingAdmissionPolicy v1 (Kubernetes 1.36+): a new Deployment a policy selects
//! starts with its sidecars in its first ReplicaSet, whatever happens to its render, and whether
//! the operator runs or not. How the API server is chosen: see `e2e.rs`. Tests that count
//! ReplicaSets need kube-controller-manager and skip with a message without it. Deployments have
//! no replicas: ReplicaSets and their templates are what is checked, no pod needs a node.
//!
//! Nothing here asserts a duration: waits poll the API until a condition holds, and give up
//! (failing the test) only after a generous number of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{HELD_FOR_ANNOTATION, SidecarPolicy};
use sidecar_core::Guardrails;
use sidecar_operator::controller::FIELD_MANAGER;

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod hold;
    pub mod kustomize;
    pub mod operator;
}
use support::cluster::{Cluster, TestNamespace, cluster, dump, install_crd, wait_for};
use support::hold::{apply_hold_file, template_inits};
use support::operator::{init_names, operator_events, start_operator};

/// The policy every test uses: `mesh` adds sidecar `proxy` to Deployments labelled app=web.
fn mesh_policy(namespace: &str) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "mesh", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": "proxy", "image": "envoy:1.31",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        },
    })
}

/// A Deployment `name` labelled `app: {app}`, with no replicas, whose app container is `container`.
fn deployment(namespace: &str, name: &str, app: &str, container: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": app, "name": name}},
            "template": {
                "metadata": {"labels": {"app": app, "name": name}},
                "spec": {"containers": [{"name": container, "image": "nginx:1.27"}]},
            },
        },
    })
}

/// Installs the admission policy and its binding as shipped, the CRD first (the policy's params).
async fn install_hold(client: &Client) {
    install_crd(client).await;
    apply_hold_file(client, "admission-policy.yaml").await;
}

fn is_held(d: &Deployment) -> bool {
    d.annotations().contains_key(HELD_FOR_ANNOTATION)
}

fn is_paused(d: &Deployment) -> bool {
    d.spec.paused.unwrap_or(false)
}

/// Everything a test needs: a namespace with the `mesh` policy, and the hold in effect there
/// (the API server takes a moment to load a new admission policy: a probe Deployment is created
/// until one is held, before any operator runs).
struct Held {
    client: Client,
    ns: TestNamespace,
    deployments: Api<Deployment>,
}

impl Held {
    async fn set_up(cluster: &Cluster, test: &str) -> Held {
        let client = cluster.client.clone();
        install_hold(&client).await;
        let ns = TestNamespace::create(cluster, test).await;
        let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
        policies
            .patch(
                "mesh",
                &PatchParams::apply("sidecar-e2e"),
                &Patch::Apply(&mesh_policy(&ns.name)),
            )
            .await
            .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let probe: Deployment = serde_json::from_value(deployment(&ns.name, "probe", "web", "app")).unwrap();
        wait_for("the admission hold to be in effect", || async {
            let created = deployments.create(&PostParams::default(), &probe).await.ok()?;
            let _ = deployments.delete("probe", &DeleteParams::background()).await;
            wait_for("the probe to be gone", || async {
                deployments.get_opt("probe").await.ok()?.is_none().then_some(())
            })
            .await;
            is_held(&created).then_some(())
        })
        .await;
        Held {
            client,
            ns,
            deployments,
        }
    }

    /// Runs the operator for the test's namespace until the returned guard is dropped.
    async fn start_operator(&self) -> Stop {
        Stop(start_operator(&self.client, &self.ns.name, Guardrails::default()).await)
    }

    async fn create(&self, object: Value) -> Deployment {
        let object: Deployment = serde_json::from_value(object).unwrap();
        self.deployments
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    /// Waits until Deployment `name` is released, and returns it.
    async fn released(&self, name: &str) -> Deployment {
        wait_for(&format!("{name} released"), || async {
            let live = self.deployments.get(name).await.ok()?;
            (!is_held(&live) && !is_paused(&live)).then_some(live)
        })
        .await
    }

    /// Waits until kube-controller-manager has acted on Deployment `name`'s current generation,
    /// and returns its ReplicaSets.
    async fn replica_sets(&self, name: &str) -> Vec<ReplicaSet> {
        wait_for(&format!("the Deployment controller to sync {name}"), || async {
            let live = self.deployments.get(name).await.ok()?;
            let observed = live.status.as_ref()?.observed_generation?;
            (Some(observed) == live.metadata.generation).then_some(())
        })
        .await;
        let replica_sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        replica_sets
            .list(&ListParams::default().labels(&format!("name={name}")))
            .await
            .unwrap()
            .items
    }

    async fn dump(&self) -> String {
        dump(&self.client, &self.ns.name).await
    }

    /// The reasons of the operator's Events on Deployment `name`.
    async fn event_reasons(&self, name: &str) -> Vec<String> {
        operator_events(&self.client, &self.ns.name)
            .await
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

#[tokio::test]
async fn a_new_deployment_starts_with_its_sidecars_in_its_first_replica_set() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_new_deployment_starts_with_its_sidecars_in_its_first_replica_set") {
        return;
    }
    let held = Held::set_up(&cluster, "hold-new").await;
    let ns = held.ns.name.clone();
    let _operator = held.start_operator().await;

    held.create(deployment(&ns, "web", "web", "app")).await;
    held.create(deployment(&ns, "other", "other", "app")).await;
    let mut opted_out = deployment(&ns, "opted-out", "web", "app");
    opted_out["metadata"]["annotations"] = json!({"sidecar.dev/inject": "false"});
    let created_opted_out = held.create(opted_out).await;
    assert!(!is_held(&created_opted_out) && !is_paused(&created_opted_out));

    let web = held.released("web").await;
    assert_eq!(init_names(&web), ["proxy"], "{}", held.dump().await);
    let replica_sets = held.replica_sets("web").await;
    assert_eq!(
        replica_sets.len(),
        1,
        "one rollout, not two\n{}",
        held.dump().await
    );
    assert_eq!(
        template_inits(&replica_sets[0]),
        ["proxy"],
        "no pod ever without the sidecar"
    );

    for name in ["other", "opted-out"] {
        let live = held.deployments.get(name).await.unwrap();
        assert!(!is_held(&live) && !is_paused(&live), "{name} was held");
        let replica_sets = held.replica_sets(name).await;
        assert_eq!(replica_sets.len(), 1, "{name}");
        assert!(
            template_inits(&replica_sets[0]).is_empty(),
            "{name} got a sidecar"
        );
    }

    // The release kept no ownership of spec.paused: a person's later pause, a server-side apply
    // without --force-conflicts, does not conflict with the operator.
    let web = held.deployments.get("web").await.unwrap();
    let owns_paused = web.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:paused").is_some())
    });
    assert!(!owns_paused, "{:?}", web.managed_fields());
    let pause = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"paused": true}});
    held.deployments
        .patch("web", &PatchParams::apply("a-person"), &Patch::Apply(&pause))
        .await
        .expect("a person's pause conflicts with nobody");
}

#[tokio::test]
async fn a_deployment_created_while_the_operator_is_down_waits_for_it() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_deployment_created_while_the_operator_is_down_waits_for_it") {
        return;
    }
    let held = Held::set_up(&cluster, "hold-down").await;
    let ns = held.ns.name.clone();

    let created = held.create(deployment(&ns, "web", "web", "app")).await;
    assert!(is_paused(&created));
    assert_eq!(
        created.annotations().get(HELD_FOR_ANNOTATION).map(String::as_str),
        Some("mesh")
    );
    // The Deployment controller has seen it, and made no ReplicaSet: no pod runs without the
    // sidecar while nobody can inject it.
    assert!(held.replica_sets("web").await.is_empty(), "{}", held.dump().await);

    let _operator = held.start_operator().await;
    let web = held.released("web").await;
    assert_eq!(init_names(&web), ["proxy"]);
    let replica_sets = held.replica_sets("web").await;
    assert_eq!(replica_sets.len(), 1, "{}", held.dump().await);
    assert_eq!(template_inits(&replica_sets[0]), ["proxy"]);
}

#[tokio::test]
async fn a_refused_render_releases_the_deployment_as_its_owner_wrote_it() {
    let Some(cluster) = cluster().await else { return };
    let held = Held::set_up(&cluster, "hold-refused").await;
    let ns = held.ns.name.clone();
    let _operator = held.start_operator().await;

    // Its own container is called `proxy`: the policy's sidecar cannot be added.
    held.create(deployment(&ns, "web", "web", "proxy")).await;
    let web = held.released("web").await;
    assert!(init_names(&web).is_empty(), "{}", held.dump().await);
    wait_for("the Warning Event saying it went without sidecars", || async {
        let reasons = held.event_reasons("web").await;
        reasons
            .iter()
            .any(|r| r == "ReleasedWithoutSidecars")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replace_without_the_sidecars_rolls_once() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_replace_without_the_sidecars_rolls_once") {
        return;
    }
    let held = Held::set_up(&cluster, "hold-replace").await;
    let ns = held.ns.name.clone();
    let _operator = held.start_operator().await;
    held.create(deployment(&ns, "web", "web", "app")).await;
    let first = held.released("web").await;
    assert_eq!(held.replica_sets("web").await.len(), 1);

    // `kubectl replace` (a PUT of the owner's manifest, a new image): the record and the sidecar
    // are gone from what is sent. Held again, re-rendered, released: one new ReplicaSet.
    let mut manifest = deployment(&ns, "web", "web", "app");
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    manifest["metadata"]["resourceVersion"] = json!(first.resource_version());
    let replaced: Deployment = held
        .deployments
        .replace(
            "web",
            &PostParams::default(),
            &serde_json::from_value(manifest).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        is_held(&replaced) && is_paused(&replaced),
        "a replace that drops the sidecars is held"
    );

    let web = wait_for("web re-rendered and released", || async {
        let live = held.deployments.get("web").await.ok()?;
        let image = live.spec.template.spec.as_ref()?.containers[0].image.clone()?;
        (!is_held(&live) && !is_paused(&live) && image == "nginx:1.28").then_some(live)
    })
    .await;
    assert_eq!(init_names(&web), ["proxy"]);
    let replica_sets = held.replica_sets("web").await;
    assert_eq!(
        replica_sets.len(),
        2,
        "one rollout for the replace\n{}",
        held.dump().await
    );
    for rs in &replica_sets {
        assert_eq!(
            template_inits(rs),
            ["proxy"],
            "a ReplicaSet without the sidecar: {}",
            rs.name_any()
        );
    }
}

#[tokio::test]
async fn gitops_tools_create_held_deployments_and_see_no_drift() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("gitops_tools_create_held_deployments_and_see_no_drift") {
        return;
    }
    let held = Held::set_up(&cluster, "hold-gitops").await;
    let ns = held.ns.name.clone();
    let _operator = held.start_operator().await;

    // Argo CD (ServerSideApply=true) and Flux apply with server-side apply, forced, under their
    // own field managers.
    for (name, manager) in [("argo", "argocd-controller"), ("flux", "kustomize-controller")] {
        let mut manifest = deployment(&ns, name, "web", "app");
        manifest["metadata"]["labels"]["name"] = json!(name);
        let params = PatchParams::apply(manager).force();
        held.deployments
            .patch(name, &params, &Patch::Apply(&manifest))
            .await
            .unwrap();
        let live = held.released(name).await;
        assert_eq!(init_names(&live), ["proxy"], "{manager}");

        // A server-side diff (a dry-run apply of the Git manifest) predicts the live object.
        let predicted = held
            .deployments
            .patch(
                name,
                &PatchParams {
                    dry_run: true,
                    ..params.clone()
                },
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&predicted.spec).unwrap(),
            serde_json::to_value(&live.spec).unwrap(),
            "{manager} would show a diff"
        );
        // A re-sync changes nothing: no second rollout.
        let synced = held
            .deployments
            .patch(name, &params, &Patch::Apply(&manifest))
            .await
            .unwrap();
        assert_eq!(synced.metadata.generation, live.metadata.generation, "{manager}");
        let replica_sets = held.replica_sets(name).await;
        assert_eq!(replica_sets.len(), 1, "{manager}\n{}", held.dump().await);
        assert_eq!(template_inits(&replica_sets[0]), ["proxy"], "{manager}");
    }
}

/// Stops the in-process operator when the test ends (also when it fails).
struct Stop(tokio::task::JoinHandle<()>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
