//! The chaos run: the operator under faults, then a check that nothing was lost, broken or left
//! behind. Not part of `just test`: it skips itself unless `SIDECAR_CHAOS=1` and
//! `KUBEBUILDER_ASSETS` (with kube-controller-manager) are set. Run: `just chaos` (seed and
//! length: `SIDECAR_CHAOS_SEED`, `SIDECAR_CHAOS_STEPS`).
//!
//! A throwaway control plane (it must be restartable) holds 200 Deployments over five namespaces,
//! SidecarPolicies in each, a ClusterSidecarPolicy for the namespaces labelled `mesh: enabled`,
//! and the admission hold. One Deployment in five runs a replica (the test acts as the node), so
//! policy changes reach those in stages. Two replicas of the built operator run with leader
//! election and reach the API server through a TCP proxy the run can cut. Then a storm, seeded: every step creates,
//! edits or deletes a Deployment or a policy, or relabels a namespace, and at steps drawn at
//! random an operator replica is SIGKILLed (50 times), the leader is (10 times), kube-apiserver
//! and etcd are killed and restarted (5 times), and the operators' network is cut for 30 s (once).
//!
//! After the last fault, every Deployment must come to be exactly what a fresh render of the
//! current policies makes of what the run wrote (no injected part duplicated, missing or left
//! behind; nothing of the owner's lost), none held or paused by the operator, and every policy's
//! status what it computes to from scratch. The run prints one summary line and fails if any
//! Deployment is lost, broken or orphaned, or a status stays stale. How long convergence took is
//! reported, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{ClusterSidecarPolicy, HELD_FOR_ANNOTATION, SidecarPolicy};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{DeploymentFacts, Guardrails, PolicySet, is_up_to_date};

mod support {
    pub mod binary;
    pub mod cluster;
    pub mod control_plane;
    pub mod hold;
    pub mod kustomize;
    pub mod node;
    pub mod proxy;
}
use support::binary::operator_binary;
use support::cluster::{cluster, install_crds};
use support::control_plane::{free_port, tail};
use support::hold::apply_hold_file;
use support::node::start_node;
use support::proxy::Proxy;

const NAMESPACES: usize = 5;
const DEPLOYMENTS: usize = 200;
const OPERATOR_NAMESPACE: &str = "chaos-system";
const OWNER: &str = "chaos-owner";
const TIERS: [&str; 3] = ["web", "api", "batch"];
/// One Deployment in this many runs a replica.
const RUNNING: usize = 5;

/// The faults of a run, by kind.
const OPERATOR_KILLS: usize = 50;
const LEADER_KILLS: usize = 10;
const API_SERVER_RESTARTS: usize = 5;
const NETWORK_CUT: Duration = Duration::from_secs(30);
/// How long the objects may take to converge after the last fault before the run gives up.
const CONVERGENCE_PATIENCE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_converges_after_a_storm_of_faults() {
    if std::env::var("SIDECAR_CHAOS").as_deref() != Ok("1") {
        eprintln!("chaos skipped: set SIDECAR_CHAOS=1 and KUBEBUILDER_ASSETS (`just chaos`)");
        return;
    }
    if std::env::var_os(support::cluster::KUBECONFIG_VAR).is_some() {
        eprintln!(
            "chaos skipped: it restarts the API server, so it needs KUBEBUILDER_ASSETS, not a shared cluster"
        );
        return;
    }
    let Some(mut cluster) = cluster().await else {
        return;
    };
    if !cluster.has_controllers("chaos") {
        return;
    }
    let seed: u64 = env_number("SIDECAR_CHAOS_SEED", 20261202);
    let steps: usize = env_number("SIDECAR_CHAOS_STEPS", 300);
    let client = cluster.client.clone();
    install_crds(&client).await;
    apply_hold_file(&client, "admission-policy.yaml").await;
    apply_hold_file(&client, "cluster-admission-policy.yaml").await;

    // The test acts as the node, so that the Deployments with a replica roll out, and a policy
    // change reaches them in stages.
    let _nodes: Vec<_> = (0..NAMESPACES)
        .map(|i| start_node(&client, &namespace(i)))
        .collect();
    let mut world = World::new(client.clone(), seed);
    world.set_up().await;
    let api_port = cluster.control_plane().unwrap().api_port;
    let proxy = Proxy::start(api_port).await;
    let work = tempfile::tempdir().unwrap();
    let mut operators = Operators::start(&cluster.kubeconfig(), proxy.port, work.path());
    world
        .wait_until_converged(CONVERGENCE_PATIENCE)
        .await
        .unwrap_or_else(|problems| {
            panic!(
                "the fleet did not converge before the storm:\n{}\n{}",
                problems.join("\n"),
                operators.logs()
            )
        });

    // The storm: faults drawn over the steps, the network cut once for NETWORK_CUT.
    let mut schedule: Vec<Fault> = std::iter::repeat_n(Fault::KillOne, OPERATOR_KILLS)
        .chain(std::iter::repeat_n(Fault::KillLeader, LEADER_KILLS))
        .chain(std::iter::repeat_n(Fault::RestartApiServer, API_SERVER_RESTARTS))
        .chain([Fault::CutNetwork])
        .collect();
    let mut at: BTreeMap<usize, Vec<Fault>> = BTreeMap::new();
    while let Some(fault) = schedule.pop() {
        at.entry(world.rng.below(steps)).or_default().push(fault);
    }
    let mut injected = Faults::default();
    let mut cut_since: Option<Instant> = None;
    let mut last_fault = Instant::now();
    let storm = Instant::now();
    for step in 0..steps {
        world.act().await;
        for fault in at.remove(&step).unwrap_or_default() {
            match fault {
                Fault::KillOne => {
                    operators.kill(world.rng.below(2));
                    injected.operator_kills += 1;
                }
                Fault::KillLeader => {
                    if let Some(leader) = operators.leader(&client).await {
                        operators.kill(leader);
                        injected.leader_kills += 1;
                    }
                }
                Fault::RestartApiServer => {
                    world.count_writes_before_restart().await;
                    cluster.control_plane().unwrap().restart();
                    wait_until_serving(&client).await;
                    injected.api_server_restarts += 1;
                }
                Fault::CutNetwork => {
                    proxy.cut();
                    cut_since = Some(Instant::now());
                }
            }
            last_fault = Instant::now();
        }
        if cut_since.is_some_and(|since| since.elapsed() >= NETWORK_CUT) {
            proxy.restore();
            cut_since = None;
            injected.network_cuts += 1;
            last_fault = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(world.rng.between(100, 600))).await;
    }
    if cut_since.take().is_some() {
        // Drawn late: the cut still lasts its full length.
        let since = storm.elapsed();
        tokio::time::sleep(NETWORK_CUT.saturating_sub(since.min(NETWORK_CUT))).await;
        proxy.restore();
        injected.network_cuts += 1;
        last_fault = Instant::now();
    }
    operators.ensure_running();
    world.settle().await;

    let converged = world.wait_until_converged(CONVERGENCE_PATIENCE).await;
    let took = last_fault.elapsed();
    let report = world.report().await;
    let writes = world.count_writes().await;
    println!(
        "chaos (seed {seed}, {steps} steps, {:.0} s): faults {} ({} operator kills, {} leader kills, {} API server restarts, {} network cuts of {} s); \
         {} Deployments checked, lost {}, broken {}, orphaned {}, held or paused {}, stale statuses {}; {}; writes during the run: {writes}",
        storm.elapsed().as_secs_f64(),
        injected.total(),
        injected.operator_kills,
        injected.leader_kills,
        injected.api_server_restarts,
        injected.network_cuts,
        NETWORK_CUT.as_secs(),
        report.checked,
        report.lost,
        report.broken,
        report.orphaned,
        report.held,
        report.stale,
        match &converged {
            Ok(()) => format!("converged {:.1} s after the last fault", took.as_secs_f64()),
            Err(_) => format!(
                "not converged {} s after the last fault",
                CONVERGENCE_PATIENCE.as_secs()
            ),
        },
    );
    if let Err(problems) = converged {
        panic!("{}\n{}", problems.join("\n"), operators.logs());
    }
    assert_eq!(injected.operator_kills, OPERATOR_KILLS);
    assert_eq!(injected.api_server_restarts, API_SERVER_RESTARTS);
    assert_eq!(injected.network_cuts, 1);
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillOne,
    KillLeader,
    RestartApiServer,
    CutNetwork,
}

#[derive(Debug, Default)]
struct Faults {
    operator_kills: usize,
    leader_kills: usize,
    api_server_restarts: usize,
    network_cuts: usize,
}

impl Faults {
    fn total(&self) -> usize {
        self.operator_kills + self.leader_kills + self.api_server_restarts + self.network_cuts
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*), so that a run is reproduced from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }
}

/// The two operator replicas: the built binary, with leader election, through the proxy.
struct Operators {
    binary: PathBuf,
    kubeconfig: PathBuf,
    logs: PathBuf,
    replicas: [Option<Child>; 2],
}

impl Operators {
    fn start(cluster_kubeconfig: &Path, proxy_port: u16, work: &Path) -> Self {
        // The cluster's kubeconfig with the proxy's port: TLS passes through the proxy.
        let text = std::fs::read_to_string(cluster_kubeconfig).unwrap();
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap()
            .to_owned();
        let (base, _) = server.rsplit_once(':').unwrap();
        let kubeconfig = work.join("operator-kubeconfig");
        std::fs::write(
            &kubeconfig,
            text.replace(&server, &format!("{base}:{proxy_port}")),
        )
        .unwrap();
        let mut operators = Operators {
            binary: operator_binary(),
            kubeconfig,
            logs: work.to_owned(),
            replicas: [None, None],
        };
        operators.ensure_running();
        operators
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("operator-{i}.log")))
            .unwrap();
        Command::new(&self.binary)
            .args(["run", "--leader-election", "--http-addr"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", format!("chaos-{i}"))
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    /// SIGKILLs replica `i` (as a crash or an OOM kill does) and starts it again, as the kubelet
    /// would, under the same name.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.replicas[i] = Some(self.spawn(i));
    }

    /// Starts any replica that is not running.
    fn ensure_running(&mut self) {
        for i in 0..self.replicas.len() {
            let exited = match &mut self.replicas[i] {
                Some(child) => child.try_wait().ok().flatten().is_some(),
                None => true,
            };
            if exited {
                self.replicas[i] = Some(self.spawn(i));
            }
        }
    }

    /// The replica that holds the Lease, if one does.
    async fn leader(&self, client: &Client) -> Option<usize> {
        let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .get_opt("sidecar-operator")
            .await
            .ok()??;
        let holder = lease.spec?.holder_identity?;
        holder.strip_prefix("chaos-")?.parse().ok()
    }

    /// The end of each replica's log, for a failure message.
    fn logs(&self) -> String {
        (0..self.replicas.len())
            .map(|i| {
                format!(
                    "--- operator {i}\n{}",
                    tail(&self.logs.join(format!("operator-{i}.log")), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Operators {
    fn drop(&mut self) {
        for child in self.replicas.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_until_serving(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = match http::Request::get("/readyz").body(Vec::new()) {
            Ok(request) => client.request_text(request).await.is_ok_and(|r| r.trim() == "ok"),
            Err(_) => false,
        };
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the API server did not come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the run wrote, as it meant it: the objects the operator must converge to. An object whose
/// write failed (the API server was away) is `uncertain` and written again after the storm.
struct World {
    client: Client,
    rng: Rng,
    /// Deployments, by (namespace, name), as the run applies them.
    deployments: BTreeMap<(String, String), Value>,
    /// SidecarPolicies by (namespace, name); `None`: deleted.
    policies: BTreeMap<(String, String), Option<Value>>,
    cluster_policy: Value,
    /// Namespaces labelled `mesh: enabled`.
    meshed: BTreeSet<usize>,
    uncertain: BTreeSet<String>,
    next_deployment: usize,
    version: usize,
    writes: Writes,
}

/// The operator's writes over the run, from the API server's request counters (summed over its
/// restarts), less the run's own.
#[derive(Debug, Default)]
struct Writes {
    counted: BTreeMap<String, f64>,
    own_deployment_writes: f64,
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |k: &str| self.counted.get(k).copied().unwrap_or(0.0);
        write!(
            f,
            "{:.0} Deployment, {:.0} status, {:.0} Event, {:.0} revision",
            (get("deployments") - self.own_deployment_writes).max(0.0),
            get("status"),
            get("events"),
            get("controllerrevisions"),
        )
    }
}

fn namespace(i: usize) -> String {
    format!("chaos-{i}")
}

impl World {
    fn new(client: Client, seed: u64) -> Self {
        World {
            client,
            rng: Rng(seed.max(1)),
            deployments: BTreeMap::new(),
            policies: BTreeMap::new(),
            cluster_policy: Value::Null,
            meshed: [0, 1, 2].into(),
            uncertain: BTreeSet::new(),
            next_deployment: 0,
            version: 0,
            writes: Writes::default(),
        }
    }

    async fn set_up(&mut self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let params = PatchParams::apply(OWNER).force();
        let system =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}});
        namespaces
            .patch(OPERATOR_NAMESPACE, &params, &Patch::Apply(&system))
            .await
            .unwrap();
        for i in 0..NAMESPACES {
            self.apply_namespace(i).await.unwrap();
            for (name, sidecar, tiers) in [
                ("logs", "log-agent", vec!["web", "api"]),
                ("metrics", "metrics-agent", vec![]),
            ] {
                let policy = self.policy(&namespace(i), name, sidecar, &tiers);
                self.policies
                    .insert((namespace(i), name.to_owned()), Some(policy.clone()));
                self.apply_policy(&namespace(i), name, &policy).await.unwrap();
            }
        }
        self.cluster_policy = self.cluster_policy_at(0);
        let cluster_policy = self.cluster_policy.clone();
        Api::<ClusterSidecarPolicy>::all(self.client.clone())
            .patch("mesh", &params, &Patch::Apply(&cluster_policy))
            .await
            .unwrap();
        for _ in 0..DEPLOYMENTS {
            let i = self.rng.below(NAMESPACES);
            self.create_deployment(i).await;
        }
    }

    fn policy(&mut self, namespace: &str, name: &str, sidecar: &str, tiers: &[&str]) -> Value {
        self.version += 1;
        let selector = if tiers.is_empty() {
            json!({})
        } else {
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": tiers}]})
        };
        json!({
            "apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": selector,
                "sidecars": [{
                    "name": sidecar,
                    "image": format!("registry.example.com/{sidecar}:1.{}", self.version),
                    "startupProbe": {"exec": {"command": ["true"]}},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    "volumeMounts": [{"name": format!("{sidecar}-scratch"), "mountPath": "/scratch"}],
                }],
                "volumes": [{"name": format!("{sidecar}-scratch"), "emptyDir": {}}],
                "appContainers": [{"env": [{"name": format!("{}_ENABLED", name.to_uppercase()), "value": "true"}]}],
            }
        })
    }

    fn cluster_policy_at(&mut self, version: usize) -> Value {
        json!({
            "apiVersion": "sidecar.dev/v1alpha1", "kind": "ClusterSidecarPolicy",
            "metadata": {"name": "mesh"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"mesh": "enabled"}},
                "selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["batch"]}]},
                "order": -10,
                "sidecars": [{
                    "name": "mesh-proxy",
                    "image": format!("registry.example.com/mesh-proxy:2.{version}"),
                    "startupProbe": {"exec": {"command": ["true"]}},
                    "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}},
                }],
            }
        })
    }

    /// Deployment `name`; one in `RUNNING` has a replica (the rest none, so that 200 of them
    /// stay light).
    fn deployment(namespace: &str, name: &str, tier: &str, replicas: i32) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, "tier": tier}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{
                        "name": "app", "image": "nginx:1.27",
                        "env": [{"name": "MODE", "value": "m0"}],
                        "resources": {"requests": {"cpu": "100m"}},
                    }]}
                }
            }
        })
    }

    async fn create_deployment(&mut self, i: usize) {
        let name = format!("svc-{:04}", self.next_deployment);
        self.next_deployment += 1;
        let tier = TIERS[self.rng.below(TIERS.len())];
        let replicas = i32::from(self.next_deployment.is_multiple_of(RUNNING));
        let d = Self::deployment(&namespace(i), &name, tier, replicas);
        self.deployments.insert((namespace(i), name.clone()), d.clone());
        self.apply_deployment(&namespace(i), &name, &d).await;
    }

    /// One random change, as a team or a GitOps tool would make it.
    async fn act(&mut self) {
        let i = self.rng.below(NAMESPACES);
        let ns = namespace(i);
        match self.rng.below(10) {
            0..=1 => self.create_deployment(i).await,
            2..=4 => {
                // Edit: a new env value (a rollout) or another tier (another selection).
                let Some(key) = self.pick_deployment(&ns) else {
                    return;
                };
                let mut d = self.deployments[&key].clone();
                if self.rng.below(2) == 0 {
                    d["metadata"]["labels"]["tier"] = json!(TIERS[self.rng.below(TIERS.len())]);
                } else {
                    d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] =
                        json!(format!("m{}", self.rng.below(1000)));
                }
                self.deployments.insert(key.clone(), d.clone());
                self.apply_deployment(&key.0, &key.1, &d).await;
            }
            5 => {
                let Some(key) = self.pick_deployment(&ns) else {
                    return;
                };
                self.deployments.remove(&key);
                let result = Api::<Deployment>::namespaced(self.client.clone(), &key.0)
                    .delete(&key.1, &DeleteParams::default())
                    .await;
                if result.is_err() {
                    self.uncertain.insert(format!("deployment/{}/{}", key.0, key.1));
                }
            }
            6..=7 => {
                // A policy changes (a new image), appears again, or goes.
                let name = if self.rng.below(2) == 0 { "logs" } else { "metrics" };
                let sidecar = if name == "logs" {
                    "log-agent"
                } else {
                    "metrics-agent"
                };
                let key = (ns.clone(), name.to_owned());
                if self.rng.below(4) == 0 && self.policies[&key].is_some() {
                    self.policies.insert(key.clone(), None);
                    let result = Api::<SidecarPolicy>::namespaced(self.client.clone(), &ns)
                        .delete(name, &DeleteParams::default())
                        .await;
                    if result.is_err() {
                        self.uncertain.insert(format!("policy/{ns}/{name}"));
                    }
                } else {
                    let tiers: Vec<&str> = if name == "logs" {
                        vec!["web", "api"]
                    } else {
                        vec![]
                    };
                    let policy = self.policy(&ns, name, sidecar, &tiers);
                    self.policies.insert(key, Some(policy.clone()));
                    if self.apply_policy(&ns, name, &policy).await.is_err() {
                        self.uncertain.insert(format!("policy/{ns}/{name}"));
                    }
                }
            }
            8 => {
                self.version += 1;
                self.cluster_policy = self.cluster_policy_at(self.version);
                let policy = self.cluster_policy.clone();
                let result = Api::<ClusterSidecarPolicy>::all(self.client.clone())
                    .patch("mesh", &PatchParams::apply(OWNER).force(), &Patch::Apply(&policy))
                    .await;
                if result.is_err() {
                    self.uncertain.insert("cluster-policy".to_owned());
                }
            }
            _ => {
                // A namespace joins or leaves the mesh.
                if !self.meshed.remove(&i) {
                    self.meshed.insert(i);
                }
                if self.apply_namespace(i).await.is_err() {
                    self.uncertain.insert(format!("namespace/{i}"));
                }
            }
        }
    }

    fn pick_deployment(&mut self, namespace: &str) -> Option<(String, String)> {
        let keys: Vec<&(String, String)> = self
            .deployments
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(keys[self.rng.below(keys.len())].clone())
    }

    async fn apply_namespace(&mut self, i: usize) -> Result<(), kube::Error> {
        let mesh = if self.meshed.contains(&i) {
            "enabled"
        } else {
            "disabled"
        };
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace(i), "labels": {"mesh": mesh}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &namespace(i),
                &PatchParams::apply(OWNER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map(drop)
    }

    async fn apply_policy(&self, namespace: &str, name: &str, policy: &Value) -> Result<(), kube::Error> {
        Api::<SidecarPolicy>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::apply(OWNER).force(), &Patch::Apply(policy))
            .await
            .map(drop)
    }

    async fn apply_deployment(&mut self, namespace: &str, name: &str, d: &Value) {
        let result = Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::apply(OWNER).force(), &Patch::Apply(d))
            .await;
        match result {
            Ok(_) | Err(kube::Error::Api(_)) => self.writes.own_deployment_writes += 1.0,
            Err(_) => {}
        }
        if result.is_err() {
            self.uncertain.insert(format!("deployment/{namespace}/{name}"));
        }
    }

    /// Writes again what may not have been written (its write failed while the API server was
    /// away), so that what the run meant is what the cluster holds.
    async fn settle(&mut self) {
        for _ in 0..3 {
            for item in std::mem::take(&mut self.uncertain) {
                let parts: Vec<&str> = item.split('/').collect();
                match parts.as_slice() {
                    ["deployment", ns, name] => {
                        let key = ((*ns).to_owned(), (*name).to_owned());
                        match self.deployments.get(&key).cloned() {
                            Some(d) => self.apply_deployment(ns, name, &d).await,
                            None => {
                                let deleted = Api::<Deployment>::namespaced(self.client.clone(), ns)
                                    .delete(name, &DeleteParams::default())
                                    .await;
                                if matches!(deleted, Err(kube::Error::Api(ref s)) if s.code != 404) {
                                    self.uncertain.insert(item.clone());
                                }
                            }
                        }
                    }
                    ["policy", ns, name] => {
                        let key = ((*ns).to_owned(), (*name).to_owned());
                        let written = match self.policies[&key].clone() {
                            Some(policy) => self.apply_policy(ns, name, &policy).await.is_ok(),
                            None => !matches!(
                                Api::<SidecarPolicy>::namespaced(self.client.clone(), ns)
                                    .delete(name, &DeleteParams::default())
                                    .await,
                                Err(kube::Error::Api(ref s)) if s.code != 404
                            ),
                        };
                        if !written {
                            self.uncertain.insert(item.clone());
                        }
                    }
                    ["cluster-policy"] => {
                        let policy = self.cluster_policy.clone();
                        let result = Api::<ClusterSidecarPolicy>::all(self.client.clone())
                            .patch("mesh", &PatchParams::apply(OWNER).force(), &Patch::Apply(&policy))
                            .await;
                        if result.is_err() {
                            self.uncertain.insert(item.clone());
                        }
                    }
                    ["namespace", i] => {
                        if self.apply_namespace(i.parse().unwrap()).await.is_err() {
                            self.uncertain.insert(item.clone());
                        }
                    }
                    _ => unreachable!("{item}"),
                }
            }
        }
        assert!(self.uncertain.is_empty(), "could not write {:?}", self.uncertain);
    }

    /// Polls `check` until it finds nothing wrong, or gives up with what is still wrong.
    async fn wait_until_converged(&mut self, patience: Duration) -> Result<(), Vec<String>> {
        let start = Instant::now();
        let mut said = Duration::ZERO;
        loop {
            let check = self.check().await;
            let problems = check.problems;
            if problems.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= patience {
                return Err(problems);
            }
            // What is still converging, every 10 s: where the time goes.
            if start.elapsed() >= said + Duration::from_secs(10) {
                said = start.elapsed();
                println!(
                    "  after {:.0} s, {} left ({} pod rollouts kube-controller-manager has not finished), such as: {}",
                    said.as_secs_f64(),
                    problems.len(),
                    check.pods_rolling,
                    problems[..problems.len().min(3)].join("; ")
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn report(&mut self) -> Check {
        self.check().await
    }

    /// Everything wrong with the cluster now, against what the run wrote.
    async fn check(&self) -> Check {
        let mut check = Check::default();
        let Ok(state) = self.read().await else {
            check.problems.push("the cluster could not be read".to_owned());
            return check;
        };
        let guardrails = Guardrails::default();
        let exclusions = Exclusions::new([OPERATOR_NAMESPACE.to_owned(), "kube-system".to_owned()]);
        let mut sets = BTreeMap::new();
        for (ns, labels) in &state.namespaces {
            let own: Vec<SidecarPolicy> = state
                .policies
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
                .collect();
            sets.insert(
                ns.clone(),
                PolicySet::for_namespace(labels, &own, &state.cluster_policies, &exclusions, &guardrails),
            );
        }
        // Every Deployment the run meant, and only those.
        for (key, written) in &self.deployments {
            check.checked += 1;
            let Some(live) = state.deployments.get(key) else {
                check.lost += 1;
                check.problems.push(format!("{}/{}: missing", key.0, key.1));
                continue;
            };
            let written: Deployment = serde_json::from_value(written.clone()).unwrap();
            let set = &sets[&key.0];
            let live_facts = DeploymentFacts::of(live);
            let owner_now = live_facts.owner.clone();
            let owner_meant = DeploymentFacts::of(&written).owner;
            let recorded: BTreeSet<String> = match &live_facts.record {
                Ok(Some(record)) => record.injected().init_containers,
                _ => BTreeSet::new(),
            };
            let extra_inits: Vec<&String> = owner_now
                .init_containers
                .iter()
                .map(|c| &c.name)
                .filter(|n| {
                    !owner_meant.init_containers.iter().any(|c| &c.name == *n) && !recorded.contains(*n)
                })
                .collect();
            if !extra_inits.is_empty() {
                check.orphaned += 1;
                check.problems.push(format!(
                    "{}/{}: injected containers no record lists: {extra_inits:?}",
                    key.0, key.1
                ));
            } else if without_requests(&owner_now) != without_requests(&owner_meant)
                || live.labels().get("tier") != written.labels().get("tier")
            {
                check.lost += 1;
                check.problems.push(format!(
                    "{}/{}: the owner's part is not what the run wrote",
                    key.0, key.1
                ));
            } else {
                match set.render(live) {
                    Ok(rendered) if is_up_to_date(live, &rendered) => {}
                    Ok(_) => {
                        check.broken += 1;
                        check
                            .problems
                            .push(format!("{}/{}: not what the policies render", key.0, key.1));
                    }
                    Err(refusal) => {
                        check.broken += 1;
                        check
                            .problems
                            .push(format!("{}/{}: refused: {refusal}", key.0, key.1));
                    }
                }
            }
            let held = live.annotations().contains_key(HELD_FOR_ANNOTATION) || live.spec.paused == Some(true);
            if held {
                check.held += 1;
                check
                    .problems
                    .push(format!("{}/{}: still held or paused", key.0, key.1));
            }
        }
        check.pods_rolling = state.deployments.values().filter(|d| pods_rolling(d)).count();
        for key in state.deployments.keys() {
            if !self.deployments.contains_key(key) {
                check
                    .problems
                    .push(format!("{}/{}: deleted by the run, still there", key.0, key.1));
            }
        }
        // Every policy's status, against the status computed from scratch.
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        for policy in &state.policies {
            let ns = policy.namespace().unwrap_or_default();
            let deployments: Vec<&Deployment> = state
                .deployments
                .iter()
                .filter(|((n, _), _)| *n == ns)
                .map(|(_, d)| d)
                .collect();
            let expected = sidecar_core::policy_status(policy, &sets[&ns], &deployments, None, &now);
            if !same_status(policy.status.as_ref(), &expected) {
                check.stale += 1;
                check.problems.push(format!(
                    "SidecarPolicy {ns}/{}: status {:?} is not {:?}",
                    policy.name_any(),
                    brief(policy.status.as_ref()),
                    brief(Some(&expected))
                ));
            }
        }
        // And every ClusterSidecarPolicy's, across the run's namespaces (the only ones it can
        // select: no other carries its label).
        let namespaces: Vec<_> = state
            .namespaces
            .iter()
            .map(|(ns, labels)| {
                let deployments: Vec<&Deployment> = state
                    .deployments
                    .iter()
                    .filter(|((n, _), _)| n == ns)
                    .map(|(_, d)| d)
                    .collect();
                (labels, &sets[ns], deployments)
            })
            .collect();
        for policy in &state.cluster_policies {
            let expected = sidecar_core::status::cluster_policy_status(
                policy,
                &namespaces,
                &exclusions,
                &guardrails,
                None,
                &now,
            );
            let live = policy.status.as_ref();
            if !same_status(live, &expected)
                || live.and_then(|s| s.matched_namespaces) != expected.matched_namespaces
            {
                check.stale += 1;
                check.problems.push(format!(
                    "ClusterSidecarPolicy {}: status {:?} in {:?} namespaces is not {:?} in {:?}",
                    policy.name_any(),
                    brief(live),
                    live.and_then(|s| s.matched_namespaces),
                    brief(Some(&expected)),
                    expected.matched_namespaces,
                ));
            }
        }
        check
    }

    async fn read(&self) -> Result<State, kube::Error> {
        let mut state = State::default();
        for i in 0..NAMESPACES {
            let ns = namespace(i);
            let namespace = Api::<Namespace>::all(self.client.clone()).get(&ns).await?;
            state
                .namespaces
                .insert(ns.clone(), NamespaceLabels::of(&namespace.metadata));
            for d in Api::<Deployment>::namespaced(self.client.clone(), &ns)
                .list(&Default::default())
                .await?
            {
                state.deployments.insert((ns.clone(), d.name_any()), d);
            }
            state.policies.extend(
                Api::<SidecarPolicy>::namespaced(self.client.clone(), &ns)
                    .list(&Default::default())
                    .await?
                    .items,
            );
        }
        state.cluster_policies = Api::<ClusterSidecarPolicy>::all(self.client.clone())
            .list(&Default::default())
            .await?
            .items;
        Ok(state)
    }

    /// Adds the API server's write counters to the run's tally (they restart with it).
    async fn count_writes_before_restart(&mut self) {
        let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
            return;
        };
        let Ok(text) = self.client.request_text(request).await else {
            return;
        };
        for (key, value) in writes_in(&text) {
            *self.writes.counted.entry(key).or_insert(0.0) += value;
        }
    }

    async fn count_writes(&mut self) -> String {
        self.count_writes_before_restart().await;
        self.writes.to_string()
    }
}

/// Whether kube-controller-manager has yet to finish the Deployment's pod rollout.
fn pods_rolling(d: &Deployment) -> bool {
    let wanted = d.spec.replicas.unwrap_or(1);
    let Some(status) = &d.status else {
        return wanted > 0;
    };
    status.observed_generation < d.metadata.generation
        || status.updated_replicas.unwrap_or(0) < wanted
        || status.available_replicas.unwrap_or(0) < wanted
        || status.replicas.unwrap_or(0) > wanted
}

/// The owner's facts without their requests: the run writes requests, and the facts keep them
/// only for the autoscaler warnings; everything else must match exactly.
fn without_requests(facts: &sidecar_core::PodFacts) -> sidecar_core::PodFacts {
    let mut facts = facts.clone();
    facts.requests.clear();
    facts
}

/// The writes in an API server's `/metrics`, by what they wrote: `deployments` (not their
/// status), `status` (policies'), `events` (events.k8s.io), `controllerrevisions`.
fn writes_in(metrics: &str) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        if !matches!(
            label("verb").as_str(),
            "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY"
        ) {
            continue;
        }
        let key = match (
            label("group").as_str(),
            label("resource").as_str(),
            label("subresource").as_str(),
        ) {
            ("apps", "deployments", "") => "deployments",
            ("sidecar.dev", _, "status") => "status",
            ("events.k8s.io", "events", _) => "events",
            ("apps", "controllerrevisions", _) => "controllerrevisions",
            _ => continue,
        };
        found.push((key.to_owned(), value.parse().unwrap_or(0.0)));
    }
    found
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, NamespaceLabels>,
    deployments: BTreeMap<(String, String), Deployment>,
    policies: Vec<SidecarPolicy>,
    cluster_policies: Vec<ClusterSidecarPolicy>,
}

#[derive(Debug, Default)]
struct Check {
    checked: usize,
    lost: usize,
    broken: usize,
    orphaned: usize,
    held: usize,
    stale: usize,
    /// Deployments whose pod rollout kube-controller-manager has not finished (a staged policy
    /// rollout waits for them): not a problem, but where the time goes.
    pods_rolling: usize,
    problems: Vec<String>,
}

/// A status as compared: what it counts and its conditions' type, status, reason and message.
type Brief = (
    Option<i64>,
    Option<String>,
    i32,
    i32,
    i32,
    Vec<(String, String, String, String)>,
);

fn brief(status: Option<&sidecar_api::SidecarPolicyStatus>) -> Option<Brief> {
    let s = status?;
    let mut conditions: Vec<_> = s
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect();
    conditions.sort();
    Some((
        s.observed_generation,
        s.current_revision.clone(),
        s.matched_deployments,
        s.up_to_date_deployments,
        s.held_deployments,
        conditions,
    ))
}

fn same_status(
    live: Option<&sidecar_api::SidecarPolicyStatus>,
    expected: &sidecar_api::SidecarPolicyStatus,
) -> bool {
    brief(live) == brief(Some(expected))
}
