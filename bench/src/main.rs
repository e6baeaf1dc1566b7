//! `scale`: sidecar-operator against a real API server, measured in one run.
//!
//! Given a kubeconfig (a fresh cluster: the harness creates its own namespaces and refuses to run
//! where its policy already exists) and the operator binary, it measures:
//!
//! - the **limit**: a bare client server-side-applying the operator's exact apply configuration
//!   to N Deployments, as many at once as the operator reconciles;
//! - the operator converging after a policy **create**, **update** and **delete** over N
//!   Deployments in one namespace, and over N spread across namespaces (one policy each);
//! - the **writes** of each scenario, from the API server's `apiserver_request_total`;
//! - the operator's resident memory and CPU time, from `/proc`;
//! - a **cold start** over N injected Deployments, until every one is verified, and its writes;
//! - the writes of an **idle** period, with refused Deployments present.
//!
//! With `--hold`, only the admission hold instead (`hold.rs`): the latency from a Deployment's
//! create to its release, and its ReplicaSets.
//!
//! With `--rollout`, only the staged rollout instead (`rollout.rs`): a new revision over N running
//! Deployments, `--max-concurrent` at a time, against the same number of sequential waves of
//! Deployment rollouts.
//!
//! Times on a shared machine vary; the ratios printed (operator over bare client, same server,
//! same run) are the figures to compare. See docs/performance.md for how to run it.

mod apiserver;
mod fleet;
mod hold;
mod load;
mod node;
mod operator;
mod progress;
mod rollout;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use serde_json::Value;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};

use apiserver::Writes;
use operator::{Operator, Usage};
use progress::Progress;

#[derive(Debug, Parser)]
#[command(
    name = "scale",
    about = "Measure sidecar-operator against a real API server (see docs/performance.md)."
)]
struct Args {
    /// Kubeconfig of the cluster to measure against (a fresh one: the harness fills it).
    #[arg(long, value_name = "FILE")]
    kubeconfig: PathBuf,
    /// The operator binary (build it with --release).
    #[arg(long, value_name = "FILE", default_value = "target/release/sidecar-operator")]
    operator: PathBuf,
    /// Deployments per layout (one namespace; spread).
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    /// Namespaces of the spread layout.
    #[arg(long, default_value_t = 10)]
    spread: usize,
    /// Reconciles (and the bare client's applies) at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Seconds of the idle measurement.
    #[arg(long, default_value_t = 600)]
    idle: u64,
    /// Where the operator's logs go.
    #[arg(long, value_name = "DIR", default_value = "target/scale")]
    work_dir: PathBuf,
    /// How many times each converging scenario is run (the ratios' median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Port of the operator's metrics endpoint.
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Measure only the admission hold: `--deployments` Deployments created at once in a
    /// namespace with a policy, `--repeat` times; the latency from each create to its release,
    /// and their ReplicaSets. Needs MutatingAdmissionPolicy v1 (Kubernetes 1.36).
    #[arg(long)]
    hold: bool,
    /// With `--hold`: create the Deployments at this many a second instead of all at once.
    #[arg(long, value_name = "PER_SECOND", requires = "hold")]
    hold_rate: Option<f64>,
    /// With `--hold`: write every Deployment's latency to this CSV file.
    #[arg(long, value_name = "FILE", requires = "hold")]
    hold_samples: Option<PathBuf>,
    /// The admission hold's MutatingAdmissionPolicy and binding, applied with `--hold`.
    #[arg(long, value_name = "FILE", default_value = hold::ADMISSION_POLICY)]
    admission_policy: PathBuf,
    /// Measure only the staged rollout: a new policy revision over `--deployments` running
    /// Deployments (one replica each; the harness acts as the node) against sequential waves of
    /// `--max-concurrent` Deployment rollouts, `--repeat` times. Needs kube-controller-manager.
    #[arg(long, conflicts_with = "hold")]
    rollout: bool,
    /// Give every Deployment an HPA (autoscaling/v2, CPU utilization): the operator watches them
    /// and warns of the sidecar's share of the requests (an Event per Deployment when it starts).
    #[arg(long, conflicts_with_all = ["hold", "rollout"])]
    hpa: bool,
    /// With `--rollout`: the policy's `spec.rollout.maxConcurrent`, and the size of a wave.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API: {0}")]
    Kube(#[from] kube::Error),
    #[error("JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("gave up waiting for {0}")]
    Timeout(String),
    #[error("{0} exited")]
    Exited(String),
    #[error("set-up: {0}")]
    Setup(String),
}

/// One scenario's figures.
#[derive(Debug)]
struct Measured {
    took: Duration,
    writes: Writes,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Error> {
    let client = client(args).await?;
    let version = client.apiserver_version().await?;
    std::fs::create_dir_all(&args.work_dir).map_err(|e| Error::Io(args.work_dir.display().to_string(), e))?;
    if args.hold {
        println!(
            "scale --hold: {} Deployments per round, {} rounds, concurrency {}, API server {}",
            args.deployments, args.repeat, args.concurrency, version.git_version
        );
        return hold::run(&client, args).await;
    }
    if args.rollout {
        println!(
            "scale --rollout: {} Deployments per namespace, maxConcurrent {}, {} rounds, API server {}",
            args.deployments, args.max_concurrent, args.repeat, version.git_version
        );
        return rollout::run(&client, args).await;
    }
    let n = args.deployments;
    let concurrency = usize::from(args.concurrency);
    // One Deployment in a hundred cannot take the policy (a container of the sidecar's name):
    // refused Deployments are present in every measurement, idle included.
    let refused = (n / 100).max(1);
    let one = vec!["scale-one".to_owned()];
    let spread: Vec<String> = (0..args.spread).map(|i| format!("scale-spread-{i:02}")).collect();
    let bare_ns = vec!["scale-bare".to_owned()];
    let patience = Duration::from_secs(300) + Duration::from_millis(100 * n as u64);

    println!(
        "scale: {n} Deployments per layout ({refused} refused), concurrency {}, {}API server {}",
        args.concurrency,
        if args.hpa { "an HPA per Deployment, " } else { "" },
        version.git_version
    );
    let layouts = Layouts {
        one: &one,
        spread: &spread,
        bare: &bare_ns,
    };
    set_up(&client, &layouts, n, refused, concurrency, args.hpa).await?;
    let progress = Progress::watch(&client);
    for layout in [&one, &spread, &bare_ns] {
        progress
            .wait(
                "the fleet to be listed",
                layout,
                n,
                Instant::now(),
                patience,
                |_| true,
            )
            .await?;
    }

    // Converging, against the limit: each scenario run by the bare client and by the operator
    // back to back, `repeat` times, since one run on a shared machine says little.
    let deployments: Vec<Value> = (0..n)
        .map(|i| fleet::deployment("scale-bare", i, false))
        .collect();
    // The operator binary watching `scope` (all namespaces when empty), logging to `name`.
    let start = |scope: &[String], name: &str| {
        let log = args.work_dir.join(format!("operator-{name}.log"));
        Operator::start(
            &args.operator,
            &args.kubeconfig,
            scope,
            args.port,
            args.concurrency,
            log,
        )
    };
    let operator = start(&one, "one")?;
    operator.synced(patience).await?;
    let changed = n - refused;
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 1..=args.repeat {
        println!("round {round} of {}:", args.repeat);
        let steps: [(&str, Option<&str>); 3] = [
            ("create", Some(IMAGE_V1)),
            ("update", Some(IMAGE_V2)),
            ("delete", None),
        ];
        for (step, (what, image)) in steps.into_iter().enumerate() {
            let limit = bare(
                &client,
                &progress,
                &bare_ns,
                &deployments,
                image,
                concurrency,
                patience,
            )
            .await?;
            report(&format!("  {what}: bare client, one namespace"), &limit, None, n);
            let (measured, usage) = match image {
                Some(image) => {
                    converge(&client, &progress, &operator, &one, changed, image, patience).await?
                }
                None => remove(&client, &progress, &operator, &one, n, patience).await?,
            };
            let ratio = report(
                &format!("  {what}: operator, one namespace"),
                &measured,
                Some(&limit),
                changed,
            );
            print_usage(&format!("after the {what}"), n, &usage);
            ratios[step].push(ratio);
        }
    }
    for (what, ratios) in ["create", "update", "delete"].iter().zip(&ratios) {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{what}: operator / bare client, {n} Deployments, one namespace: median {median:.2}x ({})",
            all.join(", ")
        );
    }

    // Cold start over injected Deployments: every one verified, nothing written. It starts on a
    // cluster at rest (kube-controller-manager done with the last rollout).
    converge(&client, &progress, &operator, &one, changed, IMAGE_V1, patience).await?;
    operator.kill().await;
    apiserver::quiet(&client, patience).await?;
    let before = apiserver::snapshot(&client).await?;
    let operator = start(&one, "one-restart")?;
    let cold = operator.synced(patience).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cold_start = Measured {
        took: cold,
        writes: apiserver::snapshot(&client).await?.writes_since(&before),
    };
    report(
        "cold start: operator over injected Deployments, until every one is verified",
        &cold_start,
        None,
        0,
    );
    print_usage("after the cold start", n, &operator.usage()?);

    // Idle, refused Deployments included.
    let before = apiserver::snapshot(&client).await?;
    let cpu_before = operator.usage()?.cpu_seconds;
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let idle = Measured {
        took: Duration::from_secs(args.idle),
        writes: apiserver::snapshot(&client).await?.writes_since(&before),
    };
    report("idle", &idle, None, 0);
    let usage = operator.usage()?;
    println!(
        "  idle CPU: {:.2} s in {} s",
        usage.cpu_seconds - cpu_before,
        args.idle
    );
    print_usage("after idle", n, &usage);
    remove(&client, &progress, &operator, &one, n, patience).await?;
    operator.kill().await;

    // Spread over namespaces, one policy each, with the operator watching the whole cluster (the
    // default install): it watches every layout's Deployments.
    let operator = start(&[], "cluster")?;
    operator.synced(patience).await?;
    let layout = format!("{} namespaces, operator cluster-wide", spread.len());
    let (create, _) = converge(
        &client, &progress, &operator, &spread, changed, IMAGE_V1, patience,
    )
    .await?;
    report(&format!("create: {layout}"), &create, None, changed);
    let (update, usage) = converge(
        &client, &progress, &operator, &spread, changed, IMAGE_V2, patience,
    )
    .await?;
    report(&format!("update: {layout}"), &update, None, changed);
    print_usage("cluster-wide, after the update", 3 * n, &usage);
    let (delete, _) = remove(&client, &progress, &operator, &spread, n, patience).await?;
    report(&format!("delete: {layout}"), &delete, None, changed);
    operator.kill().await;
    Ok(())
}

const IMAGE_V1: &str = "registry.example.com/mesh/agent:1.0";
const IMAGE_V2: &str = "registry.example.com/mesh/agent:1.1";

async fn client(args: &Args) -> Result<Client, Error> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig).map_err(|e| Error::Setup(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    Client::try_from(config).map_err(Error::Kube)
}

/// The bare client applies, `concurrency` at a time, what the operator would send for the policy
/// at `image` (or, with `None`, for no policy: everything it owned goes) to `deployments`, and
/// waits until the progress watch sees every one carry it.
async fn bare(
    client: &Client,
    progress: &Progress,
    namespaces: &[String],
    deployments: &[Value],
    image: Option<&str>,
    concurrency: usize,
    patience: Duration,
) -> Result<Measured, Error> {
    let policy = image.map(|image| fleet::policy(&namespaces[0], image));
    let revision = policy.as_ref().map(fleet::revision).transpose()?;
    let injections = fleet::injections(deployments, policy.as_ref())?;
    // Each measurement starts on a cluster at rest: the last one's rollout (kube-controller-
    // manager creating ReplicaSets) must not slow this one down.
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    let start = Instant::now();
    futures::future::try_join_all(chunks(injections, concurrency).into_iter().map(|chunk| {
        let client = client.clone();
        async move {
            for (namespace, name, patch) in chunk {
                Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &namespace)
                    .patch(
                        &name,
                        &PatchParams::apply("sidecar-bench-bare"),
                        &Patch::Apply(&patch),
                    )
                    .await?;
            }
            Ok::<(), Error>(())
        }
    }))
    .await?;
    let want = revision.as_deref();
    let took = progress
        .wait(
            "the bare client's applies",
            namespaces,
            deployments.len(),
            start,
            patience,
            |r| r == want,
        )
        .await?;
    Ok(Measured {
        took,
        writes: apiserver::snapshot(client).await?.writes_since(&before),
    })
}

/// Namespaces, the CRD, and the Deployments of every layout (the harness's own writes, before
/// any measurement).
/// The namespaces of each layout of a run.
struct Layouts<'a> {
    one: &'a [String],
    spread: &'a [String],
    bare: &'a [String],
}

async fn set_up(
    client: &Client,
    layouts: &Layouts<'_>,
    n: usize,
    refused: usize,
    concurrency: usize,
    hpa: bool,
) -> Result<(), Error> {
    let Layouts { one, spread, bare } = *layouts;
    install_crd(client).await?;
    for namespace in one.iter().chain(spread).chain(bare) {
        fleet::apply(client, fleet::namespace(namespace)).await?;
        let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), namespace);
        if policies.get_opt(fleet::POLICY).await.is_ok_and(|p| p.is_some()) {
            return Err(Error::Setup(format!(
                "{namespace}/{} exists: run the harness against a fresh cluster",
                fleet::POLICY
            )));
        }
    }
    let mut objects = Vec::with_capacity(3 * n);
    // Refused Deployments are the last of each layout.
    objects.extend((0..n).map(|i| fleet::deployment(&one[0], i, i >= n - refused)));
    for i in 0..n {
        let namespace = &spread[i % spread.len()];
        objects.extend([fleet::deployment(namespace, i, i >= n - refused)]);
    }
    objects.extend((0..n).map(|i| fleet::deployment(&bare[0], i, false)));
    if hpa {
        // Every layout, so that kube-controller-manager's HPA status writes load the API server
        // the same for the bare client as for the operator.
        objects.extend((0..n).map(|i| fleet::hpa(&one[0], i)));
        objects.extend((0..n).map(|i| fleet::hpa(&spread[i % spread.len()], i)));
        objects.extend((0..n).map(|i| fleet::hpa(&bare[0], i)));
    }
    let start = Instant::now();
    let count = objects.len();
    fleet::apply_all(client, objects, concurrency).await?;
    println!(
        "set-up: {count} objects ({} Deployments) created in {:.1} s",
        3 * n,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Applies the CRDs (both kinds, as the install does: the operator then also watches
/// ClusterSidecarPolicies and Namespaces) and waits until they are established (before the first
/// policy is created, and before an admission policy that takes policies as params).
async fn install_crd(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [SidecarPolicy::crd(), ClusterSidecarPolicy::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply(fleet::OWNER).force(),
            &Patch::Apply(crd),
        )
        .await?;
        let start = Instant::now();
        while !crds
            .get(&name)
            .await?
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::Timeout(format!("the CRD {name} to be established")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Applies the policy at `image` in each of `namespaces` and waits until `want` Deployments carry
/// its revision and every policy's status says so.
async fn converge(
    client: &Client,
    progress: &Progress,
    operator: &Operator,
    namespaces: &[String],
    want: usize,
    image: &str,
    patience: Duration,
) -> Result<(Measured, Usage), Error> {
    let policies: Vec<Value> = namespaces.iter().map(|ns| fleet::policy(ns, image)).collect();
    let revision = fleet::revision(&policies[0])?;
    // Each measurement starts on a cluster at rest: the last one's rollout (kube-controller-
    // manager creating ReplicaSets) must not slow this one down.
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    let start = Instant::now();
    for policy in policies {
        fleet::apply(client, policy).await?;
    }
    let took = progress
        .wait(
            "the policy to be injected",
            namespaces,
            want,
            start,
            patience,
            |r| r == Some(revision.as_str()),
        )
        .await?;
    let usage = operator.usage()?;
    // The status follows: every policy up to date, and the writes of that counted too.
    for namespace in namespaces {
        let api: Api<SidecarPolicy> = Api::namespaced(client.clone(), namespace);
        loop {
            let status = api.get(fleet::POLICY).await?.status;
            if status.is_some_and(|s| {
                s.current_revision.as_deref() == Some(revision.as_str()) && s.up_to_date_deployments > 0
            }) {
                break;
            }
            if start.elapsed() > patience {
                return Err(Error::Timeout(format!("{namespace}: the policy's status")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The Events follow the writes; the last status lands within a moment.
    operator.events_sent(patience).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = apiserver::snapshot(client).await?.writes_since(&before);
    Ok((Measured { took, writes }, usage))
}

/// Deletes the policy of each of `namespaces` and waits until no Deployment carries it.
async fn remove(
    client: &Client,
    progress: &Progress,
    operator: &Operator,
    namespaces: &[String],
    n: usize,
    patience: Duration,
) -> Result<(Measured, Usage), Error> {
    // Each measurement starts on a cluster at rest: the last one's rollout (kube-controller-
    // manager creating ReplicaSets) must not slow this one down.
    apiserver::quiet(client, patience).await?;
    let before = apiserver::snapshot(client).await?;
    let start = Instant::now();
    for namespace in namespaces {
        Api::<SidecarPolicy>::namespaced(client.clone(), namespace)
            .delete(fleet::POLICY, &DeleteParams::default())
            .await?;
    }
    let took = progress
        .wait("the policy to be removed", namespaces, n, start, patience, |r| {
            r.is_none()
        })
        .await?;
    let usage = operator.usage()?;
    operator.events_sent(patience).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = apiserver::snapshot(client).await?.writes_since(&before);
    Ok((Measured { took, writes }, usage))
}

fn chunks<T>(items: Vec<T>, count: usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = (0..count.max(1)).map(|_| Vec::new()).collect();
    let len = chunks.len();
    for (i, item) in items.into_iter().enumerate() {
        chunks[i % len].push(item);
    }
    chunks
}

/// Prints one scenario's figures; returns its ratio to `limit` (NaN without one).
fn report(what: &str, measured: &Measured, limit: Option<&Measured>, changed: usize) -> f64 {
    let ratio = limit.map_or(f64::NAN, |l| measured.took.as_secs_f64() / l.took.as_secs_f64());
    let versus = if ratio.is_nan() {
        String::new()
    } else {
        format!(", {ratio:.2}x the bare client")
    };
    let per = if changed > 0 {
        format!(
            " ({:.2} Deployment writes per changed Deployment)",
            measured.writes.deployments as f64 / changed as f64
        )
    } else {
        String::new()
    };
    let refused = match measured.writes.refused {
        0 => String::new(),
        n => format!("; {n} refused by the server (not counted)"),
    };
    println!(
        "{what}: {:.2} s{versus}; writes: {}{per}, {} in all{refused}",
        measured.took.as_secs_f64(),
        measured.writes,
        measured.writes.total()
    );
    ratio
}

fn print_usage(when: &str, n: usize, usage: &Usage) {
    println!(
        "  operator {when}: RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} s, {n} Deployments watched",
        usage.rss_mib, usage.peak_mib, usage.cpu_seconds
    );
}
