//! End-to-end tests of the staged rollout (`spec.rollout`) against a real API server and
//! kube-controller-manager: a new revision of a policy reaches running Deployments a few at a
//! time, canaries first, stops on a Deployment whose rollout fails, and waits while paused. How
//! the API server is chosen: see `e2e.rs`. Every test needs kube-controller-manager (Deployment
//! status is the rollout's health signal) and skips with a message without it.
//!
//! The test acts as the node (`support/node.rs`): there is no kubelet, so a task marks the Pods
//! Running and Ready, except those of an image tagged `broken`, which stay Pending. Deployments
//! have one replica each and are Available before the policy change under test: a Deployment with
//! nothing running would get a new revision at once, outside the rollout's budget.
//!
//! Nothing here asserts a duration. Each poll takes one list of the Deployments and checks what
//! must hold at every instant of the rollout (at most N rolling, no non-canary before the
//! canaries...) on it; waits give up (failing the test) only after a generous number of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{SidecarPolicy, SidecarPolicyStatus, conditions};
use sidecar_core::{Guardrails, InjectionRecord};

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod node;
    pub mod operator;
}
use support::cluster::{Cluster, TestNamespace, cluster, install_crd, wait_for};
use support::node::{BROKEN_IMAGE, Node, is_ready, start_node};
use support::operator::{operator_events, start_operator};

/// The policy every test rolls out.
const POLICY: &str = "mesh";

/// How long a wait polls before the test fails. Longer than the other e2e files' `PATIENCE`: a
/// staged rollout of twenty Deployments is a sequence of Deployment rollouts, on a machine that
/// may be busy with other builds.
const PATIENCE: Duration = Duration::from_secs(180);

/// How often a wait looks; every look is also a sample of the invariant under test.
const INTERVAL: Duration = Duration::from_millis(250);

/// Policy `mesh`: sidecar `proxy` of `image` for Deployments labelled app=web, rolled out as
/// `rollout` says (`null`: no `spec.rollout`, the defaults).
fn mesh(namespace: &str, image: &str, rollout: Value) -> Value {
    let mut policy = json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": POLICY, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": "proxy", "image": image,
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        },
    });
    if !rollout.is_null() {
        policy["spec"]["rollout"] = rollout;
    }
    policy
}

/// Deployment `name`, labelled app=web and `labels`, with one replica.
fn deployment(namespace: &str, name: &str, labels: &Value) -> Value {
    let mut metadata_labels = json!({"app": "web"});
    for (key, value) in labels.as_object().into_iter().flatten() {
        metadata_labels[key] = value.clone();
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": metadata_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"name": name}},
            "template": {
                "metadata": {"labels": {"app": "web", "name": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    })
}

/// The revision of `mesh` that Deployment `d` carries, from its record.
fn carried(d: &Deployment) -> Option<String> {
    let record = InjectionRecord::read(d).ok()??;
    record
        .carried()
        .into_iter()
        .find_map(|(policy, revision)| (policy == POLICY).then_some(revision))
}

/// Whether `d`'s own rollout is complete: its controller has seen its spec, and every replica is
/// updated and available, none left over.
fn is_complete(d: &Deployment) -> bool {
    let Some(status) = d.status.as_ref() else {
        return false;
    };
    let replicas = d.spec.replicas.unwrap_or(1);
    status.observed_generation >= d.metadata.generation
        && status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
}

fn is_canary(d: &Deployment) -> bool {
    d.labels().get("canary").map(String::as_str) == Some("true")
}

/// One look at the namespace: the Deployments (one list, so one instant), the policy and the
/// operator's Events.
///
/// A change is followed by what moves away from the revision every Deployment carried before it
/// (`from`; `None` before the first injection), not by the new revision's hash: the invariants
/// hold from the first write on, before the status names the new revision, and do not depend on
/// which fields make a revision.
#[derive(Clone)]
struct Snapshot {
    deployments: Vec<Deployment>,
    policy: Option<SidecarPolicy>,
    events: Vec<Event>,
}

impl Snapshot {
    /// The Deployments that no longer carry revision `from`.
    fn moved(&self, from: Option<&str>) -> BTreeSet<String> {
        self.deployments
            .iter()
            .filter(|d| carried(d).as_deref() != from)
            .map(ResourceExt::name_any)
            .collect()
    }

    /// The Deployments rolling away from revision `from`: moved, their own rollout not complete.
    fn rolling(&self, from: Option<&str>) -> BTreeSet<String> {
        self.deployments
            .iter()
            .filter(|d| carried(d).as_deref() != from && !is_complete(d))
            .map(ResourceExt::name_any)
            .collect()
    }

    fn status(&self) -> Option<&SidecarPolicyStatus> {
        self.policy.as_ref()?.status.as_ref()
    }

    /// The policy's current revision, once its status describes its latest spec.
    fn current(&self) -> Option<&str> {
        let policy = self.policy.as_ref()?;
        let status = policy.status.as_ref()?;
        (status.observed_generation == policy.metadata.generation)
            .then_some(status.current_revision.as_deref())
            .flatten()
    }

    /// The policy's condition `type_`, if present.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status()?.conditions.iter().find(|c| c.type_ == type_)
    }

    fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// The current revision, once every Deployment carries it with its rollout complete and the
    /// status says so: `progress` n/n, Ready, nothing rolling, waiting or failed, and no
    /// Reconciling, Stalled or Paused condition.
    fn settled(&self) -> Option<String> {
        let revision = self.current()?;
        let status = self.status()?;
        let n = self.deployments.len();
        let done = n > 0
            && self
                .deployments
                .iter()
                .all(|d| carried(d).as_deref() == Some(revision) && is_complete(d));
        let said = status.progress.as_deref() == Some(format!("{n}/{n}").as_str())
            && usize::try_from(status.matched_deployments) == Ok(n)
            && usize::try_from(status.up_to_date_deployments) == Ok(n)
            && (
                status.rolling_deployments,
                status.waiting_deployments,
                status.failed_deployments,
            ) == (0, 0, 0)
            && self.is_true(conditions::READY)
            && ![conditions::RECONCILING, conditions::STALLED, conditions::PAUSED]
                .iter()
                .any(|c| self.is_true(c));
        (done && said).then(|| revision.to_owned())
    }

    /// The operator's Warning Events on the policy with `reason`.
    fn policy_warnings(&self, reason: &str) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("SidecarPolicy") && r.name.as_deref() == Some(POLICY)
                })
            })
            .collect()
    }

    /// What a failure message shows: the policy's status, and each Deployment's revision and
    /// rollout.
    fn describe(&self) -> String {
        let mut text = format!(
            "SidecarPolicy (generation {:?}) status:\n",
            self.policy.as_ref().and_then(|p| p.metadata.generation)
        );
        text.push_str(&serde_norway::to_string(&self.status()).unwrap_or_default());
        text.push_str(
            "Deployments (carried revision, generation/observed, spec/replicas/updated/available):\n",
        );
        for d in &self.deployments {
            let status = d.status.clone().unwrap_or_default();
            let _ = writeln!(
                text,
                "  {}{}: {} gen {}/{} replicas {}/{}/{}/{}{}",
                d.name_any(),
                if is_canary(d) { " (canary)" } else { "" },
                carried(d).unwrap_or_else(|| "-".into()),
                d.metadata.generation.unwrap_or_default(),
                status.observed_generation.unwrap_or_default(),
                d.spec.replicas.unwrap_or(1),
                status.replicas.unwrap_or_default(),
                status.updated_replicas.unwrap_or_default(),
                status.available_replicas.unwrap_or_default(),
                if is_complete(d) { " complete" } else { "" },
            );
        }
        let reasons: Vec<String> = self
            .events
            .iter()
            .map(|e| {
                let regarding = e
                    .regarding
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default();
                format!("{} {regarding}", e.reason.clone().unwrap_or_default())
            })
            .collect();
        let _ = writeln!(text, "Operator Events (reason, regarding): {reasons:?}");
        text
    }
}

/// A namespace of Deployments kept running by the test's node, and the operator once started.
struct Fleet {
    client: Client,
    ns: TestNamespace,
    deployments: Api<Deployment>,
    policies: Api<SidecarPolicy>,
    _node: Node,
    operator: Option<Stop>,
}

impl Fleet {
    /// Creates Deployments `names` (each with its extra labels) in a new namespace, and waits
    /// until every one is Available with its rollout complete.
    async fn set_up(cluster: &Cluster, test: &str, names: &[(String, Value)]) -> Fleet {
        let client = cluster.client.clone();
        install_crd(&client).await;
        let ns = TestNamespace::create(cluster, test).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let node = start_node(&client, &ns.name);
        for (name, labels) in names {
            deployments
                .patch(
                    name,
                    &PatchParams::apply("e2e-owner"),
                    &Patch::Apply(deployment(&ns.name, name, labels)),
                )
                .await
                .unwrap();
        }
        let fleet = Fleet {
            policies: Api::namespaced(client.clone(), &ns.name),
            client,
            ns,
            deployments,
            _node: node,
            operator: None,
        };
        fleet
            .watch("every Deployment Available", |s| {
                Ok(
                    (s.deployments.len() == names.len() && s.deployments.iter().all(is_complete))
                        .then_some(()),
                )
            })
            .await;
        fleet
    }

    async fn start_operator(&mut self) {
        let handle = start_operator(&self.client, &self.ns.name, Guardrails::default()).await;
        self.operator = Some(Stop(handle));
    }

    /// Applies `policy` (the test's own field manager: a field left out is removed).
    async fn apply(&self, policy: &Value) {
        self.policies
            .patch(POLICY, &PatchParams::apply("e2e-owner"), &Patch::Apply(policy))
            .await
            .unwrap();
    }

    async fn snapshot(&self) -> Snapshot {
        let mut deployments = self.deployments.list(&ListParams::default()).await.unwrap().items;
        deployments.sort_by_key(ResourceExt::name_any);
        Snapshot {
            deployments,
            policy: self.policies.get_opt(POLICY).await.unwrap(),
            events: operator_events(&self.client, &self.ns.name).await,
        }
    }

    /// Looks every `INTERVAL` until `step` returns `Ok(Some(_))`. `step` sees every look: an
    /// `Err` is an invariant broken at that instant, and fails the test with what it saw.
    async fn watch<T>(&self, what: &str, mut step: impl FnMut(&Snapshot) -> Result<Option<T>, String>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let snapshot = self.snapshot().await;
            match step(&snapshot) {
                Ok(Some(value)) => return value,
                Ok(None) => {}
                Err(broken) => panic!("while waiting for {what}: {broken}\n{}", snapshot.describe()),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}\n{}",
                snapshot.describe()
            );
            tokio::time::sleep(INTERVAL).await;
        }
    }

    /// Waits until the policy's rollout has settled (see `Snapshot::settled`), checking on every
    /// look that at most `max` Deployments are rolling away from revision `from`. Returns the
    /// revision it settled on, and the most seen rolling at once.
    async fn roll_out(&self, what: &str, from: Option<&str>, max: usize) -> (String, usize) {
        let mut most = 0;
        let what = format!(
            "{what}: every Deployment on the current revision with its rollout complete, and the \
             status saying so (progress n/n, Ready, nothing rolling, waiting or failed)"
        );
        let settled = self
            .watch(&what, |s| {
                let rolling = s.rolling(from);
                most = most.max(rolling.len());
                if rolling.len() > max {
                    return Err(format!(
                        "{} Deployments rolling at once, more than maxConcurrent {max}: {rolling:?}",
                        rolling.len()
                    ));
                }
                Ok(s.settled().filter(|revision| Some(revision.as_str()) != from))
            })
            .await;
        (settled, most)
    }
}

/// Stops the in-process operator when the test ends (also when it fails).
struct Stop(tokio::task::JoinHandle<()>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn names(n: usize) -> Vec<(String, Value)> {
    (0..n).map(|i| (format!("web-{i:02}"), json!({}))).collect()
}

/// The harness itself, without the operator: the node makes Deployments Available, a
/// pod-template change completes (the old ReplicaSet's Pod goes away), and a Pod of a broken
/// image is never made Ready. If this fails, the other tests' failures say nothing about the
/// operator.
#[tokio::test]
async fn the_node_runs_deployments_and_their_rollouts_complete() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("the_node_runs_deployments_and_their_rollouts_complete") {
        return;
    }
    let fleet = Fleet::set_up(&cluster, "rollout-node", &names(2)).await;
    let pods: Api<Pod> = Api::namespaced(fleet.client.clone(), &fleet.ns.name);
    let pods_of = |name: &str| {
        let pods = pods.clone();
        let selector = format!("name={name}");
        async move {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .unwrap()
                .items
        }
    };
    let set_image = |name: &str, image: &str| {
        let mut changed = deployment(&fleet.ns.name, name, &json!({}));
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        let (deployments, name) = (fleet.deployments.clone(), name.to_owned());
        async move {
            deployments
                .patch(&name, &PatchParams::apply("e2e-owner"), &Patch::Apply(&changed))
                .await
                .unwrap()
                .metadata
                .generation
        }
    };
    let broken_image =
        |p: &Pod| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(BROKEN_IMAGE);

    // web-01's new Pod exists before web-00's: the node's look that readies web-00's saw it too.
    set_image("web-01", BROKEN_IMAGE).await;
    wait_for("web-01's broken Pod", || async {
        pods_of("web-01").await.iter().any(broken_image).then_some(())
    })
    .await;
    let generation = set_image("web-00", "nginx:1.28").await;
    fleet
        .watch("web-00's rollout to complete", |s| {
            let web = s.deployments.iter().find(|d| d.name_any() == "web-00").unwrap();
            let observed = web.status.as_ref().and_then(|s| s.observed_generation);
            Ok((observed >= generation && is_complete(web)).then_some(()))
        })
        .await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(fleet.client.clone(), &fleet.ns.name);
    let sets = replica_sets
        .list(&ListParams::default().labels("name=web-00"))
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2, "a second ReplicaSet for the change");
    let scaled: Vec<i32> = sets
        .iter()
        .filter_map(|rs| rs.status.as_ref().map(|s| s.replicas))
        .collect();
    assert_eq!(
        scaled.iter().sum::<i32>(),
        1,
        "the old ReplicaSet scaled down: {scaled:?}"
    );
    let images: Vec<_> = pods_of("web-00")
        .await
        .iter()
        .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone())
        .collect();
    assert_eq!(
        images,
        [Some("nginx:1.28".to_owned())],
        "only the new Pod is left"
    );

    let web_01 = pods_of("web-01").await;
    let broken: Vec<(String, bool)> = web_01
        .iter()
        .filter(|p| broken_image(p))
        .map(|p| (p.name_any(), is_ready(p)))
        .collect();
    assert!(
        broken.len() == 1 && !broken[0].1,
        "web-01's broken Pod, not Ready: (name, Ready) {broken:?}"
    );
    let web_01 = fleet.deployments.get("web-01").await.unwrap();
    assert!(!is_complete(&web_01), "{:?}", web_01.status);
}

/// The point of staging: a policy change never has more than `maxConcurrent` Deployments
/// replacing their pods at once, the first injection into running Deployments included.
#[tokio::test]
async fn a_change_rolls_out_at_most_max_concurrent_at_a_time() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_change_rolls_out_at_most_max_concurrent_at_a_time") {
        return;
    }
    let mut fleet = Fleet::set_up(&cluster, "rollout-max", &names(20)).await;
    let ns = fleet.ns.name.clone();
    fleet.start_operator().await;

    // Injecting into running Deployments is a change like any other: staged too.
    fleet
        .apply(&mesh(&ns, "proxy:1.0", json!({"maxConcurrent": 3})))
        .await;
    let (first, _) = fleet.roll_out("the first injection into all 20", None, 3).await;

    fleet
        .apply(&mesh(&ns, "proxy:1.1", json!({"maxConcurrent": 3})))
        .await;
    let (second, most) = fleet
        .roll_out("all 20 to carry the new sidecar image", Some(&first), 3)
        .await;
    // Not a bound on the operator: a check that the looks caught the rollout while it ran.
    assert!(
        most > 0,
        "no look saw a Deployment rolling: the test sampled nothing"
    );
    let status = fleet.snapshot().await.status().cloned().unwrap();
    assert_eq!(status.current_revision.as_deref(), Some(second.as_str()));
    assert_eq!(status.progress.as_deref(), Some("20/20"));
}

/// A revision whose pods never become ready breaks only the first batch: the rollout stops, says
/// which Deployment failed (status and a Warning Event), and a rollback to the earlier content
/// reuses the earlier revision and brings everyone back.
#[tokio::test]
async fn a_failing_revision_stops_the_rollout_after_the_first_batch() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_failing_revision_stops_the_rollout_after_the_first_batch") {
        return;
    }
    let mut fleet = Fleet::set_up(&cluster, "rollout-fail", &names(6)).await;
    let ns = fleet.ns.name.clone();
    fleet.start_operator().await;
    let rollout = json!({"maxConcurrent": 2, "progressDeadlineSeconds": 20});
    let good = mesh(&ns, "proxy:1.0", rollout.clone());
    fleet.apply(&good).await;
    let (first, _) = fleet.roll_out("the first injection", None, 2).await;

    // The node never runs the new sidecar: the first Deployments to get it never complete.
    fleet.apply(&mesh(&ns, BROKEN_IMAGE, rollout)).await;
    let at_most_two = |s: &Snapshot| {
        let moved = s.moved(Some(&first));
        if moved.len() > 2 {
            return Err(format!(
                "{} Deployments moved to the failing revision, more than maxConcurrent 2: {moved:?}",
                moved.len()
            ));
        }
        Ok(moved)
    };
    let (stalled, moved) = fleet
        .watch("the rollout to stop on the failing revision", |s| {
            let moved = at_most_two(s)?;
            let stalled = s.condition(conditions::STALLED).filter(|c| c.status == "True");
            Ok(stalled.map(|c| (c.clone(), moved)))
        })
        .await;
    assert_eq!(stalled.reason, "RolloutStopped", "{}", stalled.message);
    assert!(!moved.is_empty(), "stopped, with nothing moved: {stalled:?}");
    assert!(
        moved.iter().any(|name| stalled.message.contains(name.as_str())),
        "the Stalled message names none of the failed Deployments {moved:?}: {}",
        stalled.message
    );
    // Nothing more moves while the Event is written, and after.
    let stopped = fleet
        .watch("the Warning Event RolloutStopped on the policy", |s| {
            let now_moved = at_most_two(s)?;
            if !now_moved.is_subset(&moved) {
                return Err(format!(
                    "moved after the stop: {now_moved:?}, stopped with {moved:?}"
                ));
            }
            Ok((!s.policy_warnings("RolloutStopped").is_empty()).then(|| s.clone()))
        })
        .await;
    let status = stopped.status().unwrap();
    let broken = status.current_revision.clone().unwrap();
    assert_ne!(broken, first, "{}", stopped.describe());
    assert!(status.failed_deployments > 0, "{}", stopped.describe());
    assert!(!stopped.is_true(conditions::READY), "{}", stopped.describe());

    // Rolling back is setting the earlier content again: the earlier revision, reused.
    fleet.apply(&good).await;
    let back = fleet
        .watch("every Deployment back on the first revision", |s| {
            let now_moved = s.moved(Some(&first));
            if !now_moved.is_subset(&moved) {
                return Err(format!(
                    "moved to the failing revision after the stop: {now_moved:?}"
                ));
            }
            Ok(s.settled().filter(|revision| *revision != broken))
        })
        .await;
    assert_eq!(back, first, "the rollback made a new revision");
    let revisions: Api<ControllerRevision> = Api::namespaced(fleet.client.clone(), &ns);
    let stored: BTreeSet<String> = revisions
        .list(&ListParams::default().labels(&format!("sidecar.dev/policy={POLICY}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.labels()["sidecar.dev/revision"].clone())
        .collect();
    assert_eq!(
        stored,
        BTreeSet::from([first, broken]),
        "no third revision for the rollback"
    );
}

/// A paused rollout moves nobody to the new revision, and says so; unpausing rolls it out,
/// the same revision (pausing is not a change of what is injected).
#[tokio::test]
async fn pause_and_resume() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("pause_and_resume") {
        return;
    }
    let mut fleet = Fleet::set_up(&cluster, "rollout-pause", &names(4)).await;
    let ns = fleet.ns.name.clone();
    fleet.start_operator().await;
    fleet.apply(&mesh(&ns, "proxy:1.0", Value::Null)).await;
    let (first, _) = fleet.roll_out("the first injection", None, 5).await;

    // Paused and changed in one apply: the operator never sees the change unpaused.
    fleet
        .apply(&mesh(&ns, "proxy:1.1", json!({"paused": true})))
        .await;
    let (paused, ready) = fleet
        .watch("the status to show every Deployment waiting, paused", |s| {
            let moved = s.moved(Some(&first));
            if !moved.is_empty() {
                return Err(format!("moved while paused: {moved:?}"));
            }
            let Some(revision) = s.current().filter(|r| *r != first) else {
                return Ok(None);
            };
            let waiting = s.status().is_some_and(|st| st.waiting_deployments == 4);
            let ready = s.condition(conditions::READY).cloned();
            Ok((waiting && s.is_true(conditions::PAUSED))
                .then(|| ready.map(|ready| (revision.to_owned(), ready)))
                .flatten())
        })
        .await;
    assert_eq!(ready.status, "False", "{ready:?}");
    assert_eq!(ready.reason, "RolloutPaused", "{ready:?}");
    let status = fleet.snapshot().await.status().cloned().unwrap();
    assert_eq!(status.progress.as_deref(), Some("0/4"));

    // Unpaused: spec.rollout dropped from the apply.
    fleet.apply(&mesh(&ns, "proxy:1.1", Value::Null)).await;
    let (resumed, _) = fleet
        .roll_out(
            "every Deployment to carry the change once resumed",
            Some(&first),
            5,
        )
        .await;
    assert_eq!(
        resumed, paused,
        "unpausing changed the revision: spec.rollout is not part of a revision"
    );
}

/// Canaries go first: no other Deployment moves until every canary carries the new revision
/// and has completed its rollout, even with room for all at once.
#[tokio::test]
async fn canaries_complete_before_any_other_deployment_moves() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("canaries_complete_before_any_other_deployment_moves") {
        return;
    }
    let mut fleet_names = names(6);
    for (_, labels) in fleet_names.iter_mut().take(2) {
        *labels = json!({"canary": "true"});
    }
    let mut fleet = Fleet::set_up(&cluster, "rollout-canary", &fleet_names).await;
    let ns = fleet.ns.name.clone();
    fleet.start_operator().await;
    // Room for all six at once: only the canaries hold the others back.
    let rollout = json!({"maxConcurrent": 6, "canary": {"selector": {"matchLabels": {"canary": "true"}}}});
    fleet.apply(&mesh(&ns, "proxy:1.0", rollout.clone())).await;
    let (first, _) = fleet.roll_out("the first injection", None, 6).await;

    fleet.apply(&mesh(&ns, "proxy:1.1", rollout)).await;
    fleet
        .watch("every Deployment to carry the change", |s| {
            let moved = |d: &&Deployment| carried(d).as_deref() != Some(first.as_str());
            let early: Vec<String> = s
                .deployments
                .iter()
                .filter(|d| !is_canary(d) && moved(d))
                .map(ResourceExt::name_any)
                .collect();
            let unfinished: Vec<String> = s
                .deployments
                .iter()
                .filter(|d| is_canary(d) && !(moved(d) && is_complete(d)))
                .map(ResourceExt::name_any)
                .collect();
            if !early.is_empty() && !unfinished.is_empty() {
                return Err(format!(
                    "{early:?} moved while canaries {unfinished:?} had not completed their rollout"
                ));
            }
            Ok(s.settled().filter(|revision| *revision != first))
        })
        .await;
}

/// Acknowledging a stopped rollout's revision lets it go on without changing what is injected:
/// the revision stays, and the waiting Deployments move to it.
#[tokio::test]
async fn an_acknowledged_failure_lets_the_rollout_go_on() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("an_acknowledged_failure_lets_the_rollout_go_on") {
        return;
    }
    let mut fleet = Fleet::set_up(&cluster, "rollout-ack", &names(4)).await;
    let ns = fleet.ns.name.clone();
    fleet.start_operator().await;
    let rollout = json!({"maxConcurrent": 2, "progressDeadlineSeconds": 20});
    fleet.apply(&mesh(&ns, "proxy:1.0", rollout.clone())).await;
    let (first, _) = fleet.roll_out("the first injection", None, 2).await;
    fleet.apply(&mesh(&ns, BROKEN_IMAGE, rollout.clone())).await;
    let (broken, moved) = fleet
        .watch("the rollout to stop on the failing revision", |s| {
            let moved = s.moved(Some(&first));
            if moved.len() > 2 {
                return Err(format!("more than maxConcurrent 2 moved: {moved:?}"));
            }
            Ok(s.is_true(conditions::STALLED)
                .then(|| s.current().map(|r| (r.to_owned(), moved)))
                .flatten())
        })
        .await;
    assert_eq!(moved.len(), 2, "the first batch");

    // Acknowledged: the same content, so the same revision; its failures no longer stop anyone.
    let mut acknowledged = rollout;
    acknowledged["acknowledgedRevision"] = json!(broken);
    fleet.apply(&mesh(&ns, BROKEN_IMAGE, acknowledged)).await;
    let current = fleet
        .watch("the status to describe the acknowledgement", |s| {
            Ok(s.current().map(str::to_owned))
        })
        .await;
    assert_eq!(
        current, broken,
        "acknowledging changed the revision: spec.rollout is not part of a revision"
    );
    fleet
        .watch(
            "the other Deployments to move to the acknowledged revision",
            |s| {
                if s.current() != Some(broken.as_str()) {
                    return Err(format!("the revision changed from {broken}"));
                }
                Ok((s.moved(Some(&first)).len() == 4).then_some(()))
            },
        )
        .await;
}
