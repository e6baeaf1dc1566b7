//! The admission hold (`deploy/components/admission-hold`), measured: how long a new Deployment
//! that a SidecarPolicy selects waits, created paused by the API server, until the operator has
//! rendered and released it, and what that buys (exactly one ReplicaSet per Deployment, with the
//! sidecar).
//!
//! Per round, N Deployments are created at once (`concurrency` requests in flight, as the
//! harness's set-up creates them), or at `--hold-rate` a second; the latency of one is from the instant its create request
//! returned to the instant a watch first saw it released (no `sidecar.dev/held-for`, not
//! paused). Then, with kube-controller-manager done, its ReplicaSets are checked.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::{MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::serde::Deserialize;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, ResourceExt};
use serde_json::Value;
use sidecar_api::HELD_FOR_ANNOTATION;

use crate::apiserver;
use crate::operator::Operator;
use crate::{Args, Error, fleet};

/// The namespace of the measurement.
const NAMESPACE: &str = "scale-hold";
/// The probe that tells the admission policy is in effect.
const PROBE: &str = "hold-probe";
/// Deployments created one at a time after the rounds: the latency without a queue.
const SERIAL: usize = 20;

/// The admission policy and its binding, as the install ships them.
pub const ADMISSION_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/components/admission-hold/admission-policy.yaml"
);

/// Held at admission: the annotation the policy sets.
pub fn is_held(d: &Deployment) -> bool {
    d.annotations().contains_key(HELD_FOR_ANNOTATION)
}

/// Released: neither the annotation nor `spec.paused`.
pub fn is_released(d: &Deployment) -> bool {
    !is_held(d) && !d.spec.paused.unwrap_or(false)
}

/// What the watch saw of one Deployment (by uid): first held, first released.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    held: Option<Instant>,
    released: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
struct Watch {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    ready: Arc<AtomicBool>,
}

impl Watch {
    /// Watches the fleet Deployments of the namespace, whole (the hold is in the spec too).
    fn start(client: &Client) -> Self {
        let watch_state = Watch::default();
        let (seen, ready) = (watch_state.seen.clone(), watch_state.ready.clone());
        let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
        let config = watcher::Config::default().labels(&format!("{}=scale", fleet::FLEET_LABEL));
        tokio::spawn(async move {
            let mut stream = watch(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let now = Instant::now();
                let deployment = match event {
                    Event::Apply(d) | Event::InitApply(d) => d,
                    Event::InitDone => {
                        ready.store(true, Ordering::SeqCst);
                        continue;
                    }
                    Event::Init | Event::Delete(_) => continue,
                };
                let Some(uid) = deployment.uid() else { continue };
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                let entry = seen.entry(uid).or_default();
                if is_held(&deployment) && entry.held.is_none() {
                    entry.held = Some(now);
                }
                if is_released(&deployment) && entry.released.is_none() {
                    entry.released = Some(now);
                }
            }
        });
        watch_state
    }

    fn get(&self, uid: &str) -> Seen {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(uid).copied().unwrap_or_default()
    }

    /// Waits until every one of `uids` was seen released.
    async fn released(&self, uids: &[String], patience: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let have = uids.iter().filter(|uid| self.get(uid).released.is_some()).count();
            if have == uids.len() {
                return Ok(());
            }
            if start.elapsed() > patience {
                return Err(Error::Timeout(format!(
                    "the Deployments to be released: {have} of {}",
                    uids.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One created Deployment: its uid, when its create returned, whether the answer showed it held.
#[derive(Debug)]
struct Created {
    uid: String,
    name: String,
    returned: Instant,
    held: bool,
}

/// One round's figures.
#[derive(Debug)]
struct Round {
    latencies: Vec<Duration>,
    /// Per Deployment: its name, when its create returned (since the first create) and its
    /// latency.
    samples: Vec<(String, Duration, Duration)>,
    /// Seen held by the watch, and held in the create's answer.
    seen_held: usize,
    answered_held: usize,
    creates_took: Duration,
    all_released: Duration,
}

pub async fn run(client: &Client, args: &Args) -> Result<(), Error> {
    let n = args.deployments;
    let concurrency = usize::from(args.concurrency);
    let patience = Duration::from_secs(300) + Duration::from_millis(100 * n as u64);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);

    crate::install_crd(client).await?;
    fleet::apply(client, fleet::namespace(NAMESPACE)).await?;
    let fleet_selector = ListParams::default().labels(&format!("{}=scale", fleet::FLEET_LABEL));
    if !deployments.list_metadata(&fleet_selector).await?.items.is_empty() {
        return Err(Error::Setup(format!(
            "{NAMESPACE} has Deployments: run the harness against a fresh cluster"
        )));
    }
    install_hold(client, &args.admission_policy).await?;
    fleet::apply(client, fleet::policy(NAMESPACE, crate::IMAGE_V1)).await?;
    let took = probe(&deployments).await?;
    println!("hold: the admission policy is in effect ({took:.1} s after it was applied)");

    let log = args.work_dir.join("operator-hold.log");
    let namespaces = [NAMESPACE.to_owned()];
    let operator = Operator::start(
        &args.operator,
        &args.kubeconfig,
        &namespaces,
        args.port,
        args.concurrency,
        log,
    )?;
    operator.synced(patience).await?;
    let watch_state = Watch::start(client);
    while !watch_state.ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut rounds = Vec::new();
    for round in 1..=args.repeat.max(1) {
        let pace = match args.hold_rate {
            Some(rate) => format!("{rate} a second"),
            None => "at once".to_owned(),
        };
        println!(
            "hold round {round} of {}: {n} Deployments created {pace}, {concurrency} at a time",
            args.repeat.max(1)
        );
        let creates = Creates {
            n,
            concurrency,
            rate: args.hold_rate,
        };
        let measured = measure(client, &operator, &watch_state, &creates, patience).await?;
        rounds.push(measured);
        clean(client, patience).await?;
    }

    // Without a queue: one Deployment at a time.
    let mut serial = Vec::with_capacity(SERIAL);
    for i in 0..SERIAL {
        let mut object = fleet::deployment(NAMESPACE, i, false);
        object["metadata"]["name"] = Value::from(format!("serial-{i:02}"));
        let deployment: Deployment = serde_json::from_value(object).map_err(Error::Json)?;
        let created = deployments.create(&PostParams::default(), &deployment).await?;
        let returned = Instant::now();
        let uid = created.uid().unwrap_or_default();
        watch_state.released(std::slice::from_ref(&uid), patience).await?;
        let released = watch_state.get(&uid).released.unwrap_or(returned);
        serial.push(released.saturating_duration_since(returned));
    }
    serial.sort();
    println!(
        "hold, one Deployment at a time ({SERIAL}): p50 {}, p90 {}, max {}",
        ms(percentile(&serial, 0.50)),
        ms(percentile(&serial, 0.90)),
        ms(serial.last().copied().unwrap_or_default()),
    );
    clean(client, patience).await?;
    operator.kill().await;

    if let Some(path) = &args.hold_samples {
        write_samples(path, &rounds)?;
    }
    summary(n, args.hold_rate, &rounds);
    Ok(())
}

/// Applies the MutatingAdmissionPolicy and its binding from the install's file.
async fn install_hold(client: &Client, path: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    for document in serde_norway::Deserializer::from_str(&text) {
        let object =
            Value::deserialize(document).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
        if object.is_null() {
            continue;
        }
        let resource = match object["kind"].as_str() {
            Some("MutatingAdmissionPolicy") => ApiResource::erase::<MutatingAdmissionPolicy>(&()),
            Some("MutatingAdmissionPolicyBinding") => {
                ApiResource::erase::<MutatingAdmissionPolicyBinding>(&())
            }
            other => {
                return Err(Error::Setup(format!(
                    "{}: unexpected kind {other:?}",
                    path.display()
                )));
            }
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        Api::<DynamicObject>::all_with(client.clone(), &resource)
            .patch(
                name,
                &PatchParams::apply(fleet::OWNER).force(),
                &Patch::Apply(&object),
            )
            .await?;
    }
    Ok(())
}

/// Creates a probe Deployment the policy selects until the API server holds it (a new admission
/// policy takes a moment to be in effect), deleting each; returns how long that took, seconds.
async fn probe(deployments: &Api<Deployment>) -> Result<f64, Error> {
    let start = Instant::now();
    let mut object = fleet::deployment(NAMESPACE, 0, false);
    object["metadata"]["name"] = Value::from(PROBE);
    let probe: Deployment = serde_json::from_value(object).map_err(Error::Json)?;
    loop {
        let created = deployments.create(&PostParams::default(), &probe).await?;
        let held = is_held(&created) && !is_released(&created);
        deployments.delete(PROBE, &DeleteParams::background()).await?;
        while deployments.get_opt(PROBE).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if held {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(Error::Timeout(
                "the admission policy to be in effect (the probe was never held)".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a round creates its Deployments: `n`, at most `concurrency` requests in flight, and at
/// most `rate` a second (none: as fast as they return).
#[derive(Debug)]
struct Creates {
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
}

/// One round: create, wait for every release, check the ReplicaSets, count the writes.
async fn measure(
    client: &Client,
    operator: &Operator,
    watch_state: &Watch,
    creates: &Creates,
    patience: Duration,
) -> Result<Round, Error> {
    let n = creates.n;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let objects = (0..n)
        .map(|i| serde_json::from_value(fleet::deployment(NAMESPACE, i, false)).map_err(Error::Json))
        .collect::<Result<Vec<Deployment>, Error>>()?;
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    let operator_before = operator.metrics().await?;
    let durations_before = durations(client).await?;
    let cpu_before = operator.usage()?.cpu_seconds;

    let start = Instant::now();
    let created: Vec<Created> = futures::stream::iter(objects.into_iter().enumerate())
        .map(|(i, object)| {
            let deployments = deployments.clone();
            let at = creates
                .rate
                .filter(|rate| *rate > 0.0)
                .map(|rate| start + Duration::from_secs_f64(i as f64 / rate));
            async move {
                if let Some(at) = at {
                    tokio::time::sleep_until(at.into()).await;
                }
                let created = deployments.create(&PostParams::default(), &object).await?;
                Ok::<Created, Error>(Created {
                    returned: Instant::now(),
                    held: is_held(&created),
                    uid: created.uid().unwrap_or_default(),
                    name: created.name_any(),
                })
            }
        })
        .buffer_unordered(creates.concurrency)
        .try_collect()
        .await?;
    let creates_took = start.elapsed();
    let uids: Vec<String> = created.iter().map(|c| c.uid.clone()).collect();
    watch_state.released(&uids, patience).await?;
    let all_released = start.elapsed();

    let mut latencies = Vec::with_capacity(n);
    let mut samples = Vec::with_capacity(n);
    let mut seen_held = 0;
    let mut never_held = Vec::new();
    for c in &created {
        let seen = watch_state.get(&c.uid);
        if seen.held.is_some() {
            seen_held += 1;
        } else {
            never_held.push(c.uid.clone());
        }
        let released = seen.released.unwrap_or(c.returned);
        let latency = released.saturating_duration_since(c.returned);
        latencies.push(latency);
        samples.push((
            c.name.clone(),
            c.returned.saturating_duration_since(start),
            latency,
        ));
    }
    latencies.sort();
    let answered_held = created.iter().filter(|c| c.held).count();
    samples.sort_by_key(|(_, returned, _)| *returned);
    let round = Round {
        latencies,
        samples,
        seen_held,
        answered_held,
        creates_took,
        all_released,
    };
    println!(
        "  creates: {:.2} s; all released {:.2} s after the first create; held: {seen_held} of {n} seen by the watch, {answered_held} in the create's answer",
        creates_took.as_secs_f64(),
        all_released.as_secs_f64()
    );
    if !never_held.is_empty() {
        println!(
            "  NOT HELD: {} Deployments were never seen held (the admission policy was not in effect for them)",
            never_held.len()
        );
    }
    println!(
        "  hold-to-release (create returned -> released seen): p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&round.latencies, 0.50)),
        ms(percentile(&round.latencies, 0.90)),
        ms(percentile(&round.latencies, 0.99)),
        ms(round.latencies.last().copied().unwrap_or_default())
    );

    replica_sets(client, &uids, patience).await?;
    // The Events the operator queued are written before the writes are counted.
    operator.events_sent(patience).await?;
    apiserver::quiet(client, patience).await?;
    let writes = apiserver::snapshot(client).await?.writes_since(&before);
    let operator_after = operator.metrics().await?;
    let delta = |name: &str| sum(&operator_after, name) - sum(&operator_before, name);
    println!(
        "  writes: {writes} ({:.2} Deployment writes per held Deployment; {} refused by the server); operator: {} apply, {} release, {} reorder, {} failed reconciles",
        writes.deployments as f64 / seen_held.max(1) as f64,
        writes.refused,
        delta("sidecar_operator_writes_total{kind=\"apply\"}"),
        delta("sidecar_operator_writes_total{kind=\"release\"}"),
        delta("sidecar_operator_writes_total{kind=\"reorder\"}"),
        delta("sidecar_operator_reconcile_failures_total{controller=\"deployment\""),
    );
    let held = delta("sidecar_operator_hold_duration_seconds_count");
    let reconciles = delta("sidecar_operator_reconcile_duration_seconds_count{controller=\"deployment\"}");
    let mean = |sum: f64, count: f64| if count > 0.0 { sum / count } else { f64::NAN };
    let durations_after = durations(client).await?;
    let server = |verb: &str| {
        let (sum_after, count_after) = durations_after.get(verb).copied().unwrap_or_default();
        let (sum_before, count_before) = durations_before.get(verb).copied().unwrap_or_default();
        mean(sum_after - sum_before, count_after - count_before)
    };
    println!(
        "  where the time goes (means): operator's first reconcile -> release {} ({held} held); a reconcile {} ({reconciles}); API server: create {}, apply {}, patch {}; operator CPU {:.2} s",
        ms_f(mean(delta("sidecar_operator_hold_duration_seconds_sum"), held)),
        ms_f(mean(
            delta("sidecar_operator_reconcile_duration_seconds_sum{controller=\"deployment\"}"),
            reconciles
        )),
        ms_f(server("POST")),
        ms_f(server("APPLY")),
        ms_f(server("PATCH")),
        operator.usage()?.cpu_seconds - cpu_before,
    );
    Ok(round)
}

/// Waits until kube-controller-manager gave each of `uids` a ReplicaSet and is done, then
/// checks: one ReplicaSet per Deployment, each with the sidecar.
async fn replica_sets(client: &Client, uids: &[String], patience: Duration) -> Result<(), Error> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
    let owner = |rs: &ReplicaSet| {
        rs.owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            .map(|o| o.uid.clone())
    };
    let start = Instant::now();
    loop {
        let owners: HashSet<String> = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter_map(owner)
            .collect();
        let have = wanted.iter().filter(|uid| owners.contains(**uid)).count();
        if have == wanted.len() {
            break;
        }
        if start.elapsed() > patience {
            println!(
                "  ReplicaSets: gave up waiting, {have} of {} Deployments have one",
                wanted.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    apiserver::quiet(client, patience).await?;
    let list = api.list(&ListParams::default()).await?.items;
    let mut per_deployment: HashMap<String, usize> = uids.iter().map(|uid| (uid.clone(), 0)).collect();
    let mut without_sidecar = 0;
    for rs in &list {
        if let Some(count) = owner(rs).and_then(|uid| per_deployment.get_mut(&uid)) {
            *count += 1;
        }
        let has_sidecar = rs
            .spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|p| p.init_containers.as_ref())
            .is_some_and(|init| init.iter().any(|c| c.name == fleet::SIDECAR));
        if !has_sidecar {
            without_sidecar += 1;
        }
    }
    let not_one = per_deployment.values().filter(|count| **count != 1).count();
    println!(
        "  ReplicaSets: {} Deployments, {} ReplicaSets, {without_sidecar} without the sidecar, {not_one} Deployments with other than 1 ReplicaSet",
        uids.len(),
        list.len()
    );
    Ok(())
}

/// Deletes the round's Deployments and waits until they and their ReplicaSets are gone and the
/// cluster is at rest.
async fn clean(client: &Client, patience: Duration) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    let start = Instant::now();
    loop {
        let left = deployments
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len()
            + replica_sets
                .list_metadata(&ListParams::default())
                .await?
                .items
                .len();
        if left == 0 {
            break;
        }
        if start.elapsed() > patience {
            return Err(Error::Timeout(format!(
                "{NAMESPACE}: {left} Deployments and ReplicaSets to be deleted"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    apiserver::quiet(client, patience).await
}

/// Every Deployment's latency as CSV, in the order their creates returned.
fn write_samples(path: &Path, rounds: &[Round]) -> Result<(), Error> {
    let mut csv = String::from("round,deployment,created_s,latency_ms\n");
    for (i, round) in rounds.iter().enumerate() {
        for (name, returned, latency) in &round.samples {
            csv.push_str(&format!(
                "{},{name},{:.3},{:.1}\n",
                i + 1,
                returned.as_secs_f64(),
                latency.as_secs_f64() * 1000.0
            ));
        }
    }
    std::fs::write(path, csv).map_err(|e| Error::Io(path.display().to_string(), e))
}

/// Per round, then the median round and the spread.
fn summary(n: usize, rate: Option<f64>, rounds: &[Round]) {
    let pace = match rate {
        Some(rate) => format!("{rate} a second"),
        None => "at once".to_owned(),
    };
    println!("hold-to-release latency, {n} Deployments created {pace}:");
    let mut columns: [Vec<Duration>; 4] = Default::default();
    for (i, round) in rounds.iter().enumerate() {
        let row = [
            percentile(&round.latencies, 0.50),
            percentile(&round.latencies, 0.90),
            percentile(&round.latencies, 0.99),
            round.latencies.last().copied().unwrap_or_default(),
        ];
        println!(
            "  round {}: p50 {}, p90 {}, p99 {}, max {}; held {} (answer {}) of {n}; creates {:.2} s, last release {:.2} s",
            i + 1,
            ms(row[0]),
            ms(row[1]),
            ms(row[2]),
            ms(row[3]),
            round.seen_held,
            round.answered_held,
            round.creates_took.as_secs_f64(),
            round.all_released.as_secs_f64(),
        );
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    let spread: Vec<String> = ["p50", "p90", "p99", "max"]
        .iter()
        .zip(&mut columns)
        .map(|(name, column)| {
            column.sort();
            format!(
                "{name} {} ({}-{})",
                ms(percentile(column, 0.5)),
                ms(column.first().copied().unwrap_or_default()),
                ms(column.last().copied().unwrap_or_default())
            )
        })
        .collect();
    println!("  median over rounds: {}", spread.join(", "));
}

/// The `p` quantile of `sorted` by nearest rank (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    ms_f(d.as_secs_f64())
}

fn ms_f(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

/// The sum of the samples of a Prometheus exposition whose name and labels start with `prefix`.
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// The API server's `apiserver_request_duration_seconds` for Deployments (not their status), by
/// verb: (sum, count).
async fn durations(client: &Client) -> Result<HashMap<String, (f64, f64)>, Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(request_durations(&client.request_text(request).await?))
}

pub fn request_durations(text: &str) -> HashMap<String, (f64, f64)> {
    let mut by_verb: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        let (sample, is_sum) = match (
            apiserver::sample(line, "apiserver_request_duration_seconds_sum"),
            apiserver::sample(line, "apiserver_request_duration_seconds_count"),
        ) {
            (Some(sum), _) => (sum, true),
            (None, Some(count)) => (count, false),
            (None, None) => continue,
        };
        let (value, label) = (sample.value, |name: &str| sample.label(name));
        if label("group") != "apps" || label("resource") != "deployments" || !label("subresource").is_empty()
        {
            continue;
        }
        let entry = by_verb.entry(label("verb").to_owned()).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    by_verb
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(value: Value) -> Deployment {
        serde_json::from_value(value).unwrap_or_default()
    }

    #[test]
    fn held_and_released() {
        let held = deployment(json!({
            "metadata": {"name": "a", "annotations": {HELD_FOR_ANNOTATION: "mesh-agent"}},
            "spec": {"paused": true, "selector": {}, "template": {}},
        }));
        assert!(is_held(&held) && !is_released(&held));
        let annotation_gone = deployment(json!({
            "metadata": {"name": "a"},
            "spec": {"paused": true, "selector": {}, "template": {}},
        }));
        assert!(!is_held(&annotation_gone) && !is_released(&annotation_gone));
        let released = deployment(json!({
            "metadata": {"name": "a", "annotations": {"other": "x"}},
            "spec": {"paused": false, "selector": {}, "template": {}},
        }));
        assert!(is_released(&released));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn reads_deployment_request_durations_and_operator_metrics() {
        let text = r#"apiserver_request_duration_seconds_sum{component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 2.5
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 100
apiserver_request_duration_seconds_count{component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PUT",version="v1"} 7
"#;
        let durations = request_durations(text);
        assert_eq!(durations.get("APPLY"), Some(&(2.5, 100.0)));
        assert_eq!(durations.get("PUT"), None, "status writes are not counted");
        let operator = "sidecar_operator_writes_total{kind=\"apply\"} 3\nsidecar_operator_writes_total{kind=\"release\"} 2\n";
        assert_eq!(
            sum(operator, "sidecar_operator_writes_total{kind=\"release\"}"),
            2.0
        );
        assert_eq!(sum(operator, "sidecar_operator_writes_total"), 5.0);
    }
}
