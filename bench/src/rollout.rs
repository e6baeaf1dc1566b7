//! The staged rollout (`spec.rollout.maxConcurrent`), measured: a new policy revision reaching N
//! running Deployments, at most `--max-concurrent` rolling at once, against a bare client that
//! rolls the same number of Deployments in sequential waves of that size. The target: the
//! operator takes at most 1.2x the waves' time, that is, it adds no waiting beyond the budget.
//!
//! Two namespaces of N Deployments (`replicas: 1`, Available before anything changes: a
//! Deployment with nothing running would move at once, outside the budget). Per round, back to
//! back:
//!
//! - **bare client** (`scale-rollout-bare`): server-side apply to `budget` Deployments exactly
//!   what the operator writes for the new revision (the harness's limit, as in the other modes:
//!   the same pod templates and the same cost per write), wait until those complete their
//!   rollouts, then the next `budget`; timed from the first write to the last completion;
//! - **operator** (`scale-rollout`, where the policy's revision 1 was injected first, staged
//!   too): change the sidecar image; timed until every Deployment carries the new revision and
//!   has completed its rollout. The most Deployments seen rolling at once (carrying the new
//!   revision, rollout not complete) is checked against the budget.
//!
//! The ratio of one round varies widely on a small shared machine, so each operator rollout also
//! reports what the target is about directly: how long after a completion freed a slot the next
//! Deployment was written (the operator's own wait), beside each Deployment's own rollout, and
//! what the window cost the machine and the API server (`load.rs`).
//!
//! "Complete" is the operator's definition: the Deployment controller observed the generation,
//! and `updatedReplicas`, `spec.replicas`, `status.replicas` and `availableReplicas` are equal.
//! The cluster must run kube-controller-manager (it rolls Deployments and writes their status);
//! the harness acts as the node (`node.rs`): it marks pods Ready and force-deletes terminating
//! ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;
use sidecar_core::InjectionRecord;

use crate::hold::percentile;
use crate::load::Spent;
use crate::node::Node;
use crate::operator::Operator;
use crate::{Args, Error, Measured, apiserver, fleet};

/// The bare client's namespace.
const BARE: &str = "scale-rollout-bare";
/// The operator's namespace.
const OPERATED: &str = "scale-rollout";

/// A Deployment as the measurement sees it.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    generation: i64,
    /// Its own rollout is complete (see the module docs).
    complete: bool,
    /// The revision of the bench policy it carries.
    revision: Option<String>,
}

impl State {
    fn of(d: &Deployment) -> Self {
        let revision = InjectionRecord::read(d)
            .ok()
            .flatten()
            .and_then(|r| r.carried().into_iter().find(|(p, _)| p == fleet::POLICY))
            .map(|(_, revision)| revision);
        State {
            generation: d.metadata.generation.unwrap_or(0),
            complete: is_complete(d),
            revision,
        }
    }
}

/// Complete and running: observed, every replica updated and available, at least one.
fn is_complete(d: &Deployment) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let want = d.spec.replicas.unwrap_or(1);
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
}

/// Deployments by (namespace, name); the revision being rolled out in [`OPERATED`], the most
/// Deployments seen rolling to it at once, and when each was first seen moved to it and complete.
#[derive(Debug, Default)]
struct Seen {
    deployments: HashMap<(String, String), State>,
    target: Option<String>,
    max_rolling: usize,
    moved: HashMap<String, Instant>,
    done: HashMap<String, Instant>,
}

impl Seen {
    fn rolling(&self) -> usize {
        let Some(target) = &self.target else { return 0 };
        self.deployments
            .iter()
            .filter(|((ns, _), s)| ns == OPERATED && s.revision.as_ref() == Some(target) && !s.complete)
            .count()
    }

    fn apply(&mut self, d: &Deployment) {
        let (key, state) = ((d.namespace().unwrap_or_default(), d.name_any()), State::of(d));
        if key.0 == OPERATED && self.target.is_some() && state.revision == self.target {
            let now = Instant::now();
            self.moved.entry(key.1.clone()).or_insert(now);
            if state.complete {
                self.done.entry(key.1.clone()).or_insert(now);
            }
        }
        self.deployments.insert(key, state);
        self.max_rolling = self.max_rolling.max(self.rolling());
    }

    /// Each Deployment's own rollout: from its move (the operator's write) to its completion.
    fn own_rollouts(&self) -> Vec<Duration> {
        let mut own: Vec<Duration> = (self.done.iter())
            .filter_map(|(name, done)| Some(done.saturating_duration_since(*self.moved.get(name)?)))
            .collect();
        own.sort();
        own
    }

    /// The operator's own wait per slot: the i-th move (in time order) had its slot from the
    /// (i - budget)-th completion on, so the time between the two is what the operator added.
    fn refills(&self, budget: usize) -> Vec<Duration> {
        let sorted = |times: &HashMap<String, Instant>| {
            let mut times: Vec<Instant> = times.values().copied().collect();
            times.sort();
            times
        };
        let (moved, done) = (sorted(&self.moved), sorted(&self.done));
        let mut refills: Vec<Duration> = (moved.iter().skip(budget))
            .zip(&done)
            .map(|(moved, freed)| moved.saturating_duration_since(*freed))
            .collect();
        refills.sort();
        refills
    }
}

/// Both namespaces' Deployments, whole (completion is in the status), each through its own
/// watch: within one namespace the events come in the order the server made the changes, so a
/// count of rolling Deployments is never inflated by a completion seen late.
#[derive(Clone, Debug, Default)]
struct Fleet {
    seen: Arc<Mutex<Seen>>,
}

impl Fleet {
    fn watch(client: &Client, namespaces: &[String]) -> Self {
        let fleet = Fleet::default();
        for namespace in namespaces {
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let config = watcher::Config::default().labels(&format!("{}=scale", fleet::FLEET_LABEL));
            let seen = fleet.seen.clone();
            tokio::spawn(async move {
                let mut stream = watch(api, config).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        Ok(Event::Apply(d) | Event::InitApply(d)) => seen.apply(&d),
                        Ok(Event::Delete(d)) => {
                            seen.deployments
                                .remove(&(d.namespace().unwrap_or_default(), d.name_any()));
                        }
                        _ => {}
                    }
                }
            });
        }
        fleet
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, counts the Deployments rolling to `revision`.
    fn track(&self, revision: &str) {
        let mut seen = self.lock();
        seen.target = Some(revision.to_owned());
        seen.max_rolling = seen.rolling();
        seen.moved.clear();
        seen.done.clear();
    }

    /// Waits until `want` Deployments of `namespace` pass `test`; returns the time since `start`.
    async fn wait(
        &self,
        what: &str,
        namespace: &str,
        want: usize,
        (start, patience): (Instant, Duration),
        test: impl Fn(&str, &State) -> bool,
    ) -> Result<Duration, Error> {
        loop {
            let have = self
                .lock()
                .deployments
                .iter()
                .filter(|((ns, name), s)| ns == namespace && test(name, s))
                .count();
            if have >= want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > patience {
                return Err(Error::Timeout(format!("{what}: {have} of {want}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One operator rollout: its figures, the most Deployments seen rolling at once, each
/// Deployment's own rollout and the operator's wait per slot (both sorted).
#[derive(Debug)]
struct Rolled {
    measured: Measured,
    max_rolling: usize,
    own: Vec<Duration>,
    refills: Vec<Duration>,
    spent: Spent,
}

/// The bare client's waves: its figures, each wave's time (sorted), and what they cost.
#[derive(Debug)]
struct Waves {
    measured: Measured,
    each: Vec<Duration>,
    spent: Spent,
}

pub async fn run(client: &Client, args: &Args) -> Result<(), Error> {
    let n = args.deployments;
    let budget = usize::from(args.max_concurrent);
    let patience = Duration::from_secs(300) + Duration::from_millis(100 * n as u64);
    let (node, fleet) = set_up(client, n, usize::from(args.concurrency), patience).await?;
    let log = args.work_dir.join("operator-rollout.log");
    let operator = Operator::start(
        &args.operator,
        &args.kubeconfig,
        &[OPERATED.to_owned()],
        args.port,
        args.concurrency,
        log,
    )?;
    operator.synced(patience).await?;
    let first = roll(client, &fleet, &operator, (n, budget), crate::IMAGE_V1, patience).await?;
    print_rolled(
        "operator, revision 1 injected (staged)",
        &first,
        None,
        (n, budget),
    );

    let mut ratios = Vec::with_capacity(args.repeat);
    let mut max_rolling = first.max_rolling;
    for round in 1..=args.repeat {
        println!("round {round} of {}:", args.repeat);
        let image = format!("registry.example.com/mesh/agent:1.{round}");
        let bare = waves(client, (&fleet, &operator), (n, budget), &image, patience).await?;
        print_waves(&bare, (n, budget));
        let rolled = roll(client, &fleet, &operator, (n, budget), &image, patience).await?;
        let ratio = print_rolled(
            &format!("  operator, maxConcurrent {budget}"),
            &rolled,
            Some(&bare.measured),
            (n, budget),
        );
        ratios.push(ratio);
        max_rolling = max_rolling.max(rolled.max_rolling);
    }
    operator.kill().await;
    summary(n, budget, &ratios, max_rolling);
    println!("  node: {}", node.summary());
    Ok(())
}

/// The node and the fleet watch started, then N Deployments with one replica in each namespace,
/// waited for until every one is Available.
async fn set_up(
    client: &Client,
    n: usize,
    concurrency: usize,
    patience: Duration,
) -> Result<(Node, Fleet), Error> {
    let namespaces = [BARE.to_owned(), OPERATED.to_owned()];
    let node = Node::start(client, &namespaces);
    let fleet = Fleet::watch(client, &namespaces);
    create(client, &namespaces, n, concurrency).await?;
    // The bare client's Deployments carry revision 1 too, so that its waves change what the
    // operator's rollouts change.
    for chunk in bare_injections(n, crate::IMAGE_V1)?.chunks(concurrency.max(1)) {
        inject(client, chunk).await?;
    }
    let start = Instant::now();
    for namespace in &namespaces {
        let available = |_: &str, s: &State| s.complete;
        fleet
            .wait(
                "the Deployments to be Available",
                namespace,
                n,
                (start, patience),
                available,
            )
            .await?;
    }
    println!(
        "set-up: {} Deployments (replicas 1) Available {:.1} s after their creation",
        2 * n,
        start.elapsed().as_secs_f64()
    );
    Ok((node, fleet))
}

/// The CRD, both namespaces (refusing a cluster that has the fleet already), and N Deployments
/// with one replica in each.
async fn create(client: &Client, namespaces: &[String], n: usize, concurrency: usize) -> Result<(), Error> {
    crate::install_crd(client).await?;
    let fleet_selector = ListParams::default().labels(&format!("{}=scale", fleet::FLEET_LABEL));
    for namespace in namespaces {
        fleet::apply(client, fleet::namespace(namespace)).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        if !deployments.list_metadata(&fleet_selector).await?.items.is_empty() {
            return Err(Error::Setup(format!(
                "{namespace} has Deployments: run the harness against a fresh cluster"
            )));
        }
    }
    let objects = namespaces
        .iter()
        .flat_map(|namespace| (0..n).map(|i| running_deployment(namespace, i)))
        .collect();
    fleet::apply_all(client, objects, concurrency).await
}

/// Fleet Deployment `i` of `namespace`, with one replica.
fn running_deployment(namespace: &str, i: usize) -> Value {
    let mut object = fleet::deployment(namespace, i, false);
    object["spec"]["replicas"] = json!(1);
    object
}

/// The bare client: the Deployments of [`BARE`] in waves of `budget`, each wave sent what the
/// operator would send them for the policy at `image`, and waited for until every one completes.
async fn waves(
    client: &Client,
    (fleet, operator): (&Fleet, &Operator),
    (n, budget): (usize, usize),
    image: &str,
    patience: Duration,
) -> Result<Waves, Error> {
    let injections = bare_injections(n, image)?;
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    let spent = Spent::now(client, operator).await?;
    let start = Instant::now();
    let mut each = Vec::new();
    for wave in injections.chunks(budget.max(1)) {
        let wave_start = Instant::now();
        let written = inject(client, wave).await?;
        fleet
            .wait(
                "a wave to complete",
                BARE,
                wave.len(),
                (start, patience),
                |name, s| {
                    written
                        .get(name)
                        .is_some_and(|g| s.generation >= *g && s.complete)
                },
            )
            .await?;
        each.push(wave_start.elapsed());
    }
    let took = start.elapsed();
    let spent = Spent::now(client, operator).await?.since(&spent);
    each.sort();
    let measured = Measured {
        took,
        writes: apiserver::snapshot(client).await?.writes_since(&before),
    };
    Ok(Waves {
        measured,
        each,
        spent,
    })
}

/// What the operator would send each Deployment of [`BARE`] for the bench policy at `image`
/// (the same apply configuration, so the same pod templates and the same cost per write).
fn bare_injections(n: usize, image: &str) -> Result<Vec<(String, String, Value)>, Error> {
    let deployments: Vec<Value> = (0..n).map(|i| running_deployment(BARE, i)).collect();
    fleet::injections(&deployments, Some(&fleet::policy(BARE, image)))
}

/// Server-side applies `injections` at once, as the bare client; returns the generation each
/// Deployment got, by name.
async fn inject(
    client: &Client,
    injections: &[(String, String, Value)],
) -> Result<HashMap<String, i64>, Error> {
    let writes = injections.iter().map(|(namespace, name, patch)| {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        async move {
            let params = PatchParams::apply("sidecar-bench-bare");
            let d = api.patch(name, &params, &Patch::Apply(patch)).await?;
            Ok::<_, Error>((name.clone(), d.metadata.generation.unwrap_or(0)))
        }
    });
    Ok(futures::future::try_join_all(writes).await?.into_iter().collect())
}

/// The bench policy of [`OPERATED`] at `image`, at most `budget` Deployments rolling at once.
fn policy(image: &str, budget: usize) -> Value {
    let mut policy = fleet::policy(OPERATED, image);
    policy["spec"]["rollout"] = json!({"maxConcurrent": budget});
    policy
}

/// The operator: applies the policy at `image` and waits until all `n` Deployments carry its
/// revision and completed their rollouts, counting those rolling at once.
async fn roll(
    client: &Client,
    fleet: &Fleet,
    operator: &Operator,
    (n, budget): (usize, usize),
    image: &str,
    patience: Duration,
) -> Result<Rolled, Error> {
    let policy = policy(image, budget);
    let revision = fleet::revision(&policy)?;
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    fleet.track(&revision);
    let spent = Spent::now(client, operator).await?;
    let start = Instant::now();
    fleet::apply(client, policy).await?;
    let took = fleet
        .wait(
            "the new revision to be rolled out",
            OPERATED,
            n,
            (start, patience),
            |_, s| s.complete && s.revision.as_ref() == Some(&revision),
        )
        .await?;
    let spent = Spent::now(client, operator).await?.since(&spent);
    let (max_rolling, own, refills) = {
        let seen = fleet.lock();
        (seen.max_rolling, seen.own_rollouts(), seen.refills(budget))
    };
    current_revision(client, &revision, patience).await?;
    // The Events follow the writes; the last status lands within a moment.
    operator.events_sent(patience).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = apiserver::snapshot(client).await?.writes_since(&before);
    Ok(Rolled {
        measured: Measured { took, writes },
        max_rolling,
        own,
        refills,
        spent,
    })
}

/// Waits until the policy's status names `revision` current: the harness computes revisions as
/// the operator does, and this checks it.
async fn current_revision(client: &Client, revision: &str, patience: Duration) -> Result<(), Error> {
    let api: Api<SidecarPolicy> = Api::namespaced(client.clone(), OPERATED);
    let start = Instant::now();
    loop {
        let current = api
            .get(fleet::POLICY)
            .await?
            .status
            .and_then(|s| s.current_revision);
        if current.as_deref() == Some(revision) {
            return Ok(());
        }
        if start.elapsed() > patience {
            return Err(Error::Setup(format!(
                "the policy's currentRevision is {current:?}, the harness expected {revision}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints an operator rollout; returns its ratio to `bare` (NaN without one).
fn print_rolled(what: &str, rolled: &Rolled, bare: Option<&Measured>, (n, budget): (usize, usize)) -> f64 {
    let ratio = crate::report(what, &rolled.measured, bare, n);
    println!("    {}", rolling_line(rolled.max_rolling, budget));
    let (own, refills) = (&rolled.own, &rolled.refills);
    println!(
        "    a Deployment's own rollout: median {}, max {}; a freed slot taken after: median {}, p90 {}, max {} ({} slots)",
        ms(percentile(own, 0.5)),
        ms(percentile(own, 1.0)),
        ms(percentile(refills, 0.5)),
        ms(percentile(refills, 0.9)),
        ms(percentile(refills, 1.0)),
        refills.len()
    );
    println!("    {}", rolled.spent.line(rolled.measured.took));
    ratio
}

fn print_waves(waves: &Waves, (n, budget): (usize, usize)) {
    let each = &waves.each;
    crate::report(
        &format!("  bare client, {} waves of {budget}", each.len()),
        &waves.measured,
        None,
        n,
    );
    println!(
        "    a wave: median {}, max {}",
        ms(percentile(each, 0.5)),
        ms(percentile(each, 1.0)),
    );
    println!("    {}", waves.spent.line(waves.measured.took));
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn rolling_line(max_rolling: usize, budget: usize) -> String {
    let verdict = if max_rolling > budget {
        "OVER the budget"
    } else {
        "within the budget"
    };
    format!("at most {max_rolling} Deployments rolling at once (maxConcurrent {budget}: {verdict})")
}

fn summary(n: usize, budget: usize, ratios: &[f64], max_rolling: usize) {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "rollout: operator / bare client's waves, {n} Deployments, maxConcurrent {budget}: median {median:.2}x ({})",
        all.join(", ")
    );
    println!("overall, {}", rolling_line(max_rolling, budget));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": OPERATED, "generation": generation},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap_or_default()
    }

    #[test]
    fn complete_means_observed_updated_and_available() {
        let done =
            json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        assert!(is_complete(&deployment(2, done.clone())));
        assert!(
            !is_complete(&deployment(3, done)),
            "the new generation is not observed yet"
        );
        let surging =
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1});
        assert!(!is_complete(&deployment(2, surging)), "the old pod still runs");
        let unavailable = json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1});
        assert!(!is_complete(&deployment(2, unavailable)));
    }

    #[test]
    fn counts_rolling_deployments_of_the_target_revision() {
        let mut seen = Seen {
            target: Some("r2".into()),
            ..Seen::default()
        };
        let state = |revision: &str, complete| State {
            generation: 1,
            complete,
            revision: Some(revision.into()),
        };
        let key = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
        seen.deployments.insert(key(OPERATED, "a"), state("r2", false));
        seen.deployments.insert(key(OPERATED, "b"), state("r2", true));
        seen.deployments.insert(key(OPERATED, "c"), state("r1", false));
        seen.deployments.insert(key(BARE, "d"), state("r2", false));
        assert_eq!(seen.rolling(), 1);
    }

    #[test]
    fn a_slot_is_refilled_after_the_completion_that_freed_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = |pairs: &[(&str, u64)]| -> HashMap<String, Instant> {
            pairs
                .iter()
                .map(|(name, ms)| ((*name).to_owned(), at(*ms)))
                .collect()
        };
        // Budget 2: a and b move at once; c takes the slot a freed, d the one b freed.
        let seen = Seen {
            moved: times(&[("a", 0), ("b", 0), ("c", 520), ("d", 640)]),
            done: times(&[("a", 500), ("b", 600), ("c", 1000), ("d", 1100)]),
            ..Seen::default()
        };
        assert_eq!(
            seen.refills(2),
            [Duration::from_millis(20), Duration::from_millis(40)]
        );
        assert_eq!(seen.own_rollouts().first(), Some(&Duration::from_millis(460)));
        assert_eq!(seen.own_rollouts().last(), Some(&Duration::from_millis(600)));
    }
}
