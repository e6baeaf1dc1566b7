//! Matching + rendering for a namespace of 10,000 Deployments and 20 SidecarPolicies, the batch
//! a controller faces after a restart or a change to a broad policy, and one policy's status
//! over that namespace. Figures: docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark set-up may panic

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::outcome::{Outcome, OutcomeIndex, State};
use sidecar_core::rollout::Progress;
use sidecar_core::{DeploymentFacts, Guardrails, PolicySet, status};

const DEPLOYMENTS: usize = 10_000;
const POLICIES: usize = 20;
const TEAMS: [&str; 5] = ["payments", "search", "identity", "catalog", "checkout"];
const TIERS: [&str; 3] = ["frontend", "backend", "worker"];

/// A realistic Deployment: two app containers with ports, env, probes and mounts; three volumes.
fn deployment(i: usize) -> Deployment {
    let name = format!("svc-{i}");
    let labels = json!({
        "app": name,
        "team": TEAMS[i % TEAMS.len()],
        "tier": TIERS[i % TIERS.len()],
        "env": if i.is_multiple_of(4) { "staging" } else { "prod" },
    });
    let container = |cname: &str, port: i32| {
        json!({
            "name": cname,
            "image": format!("registry.example.com/{name}/{cname}:1.{i}"),
            "ports": [{"name": "http", "containerPort": port}],
            "env": [{"name": "SERVICE", "value": name}, {"name": "PORT", "value": port.to_string()}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": port}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "tmp", "mountPath": "/tmp"}],
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "bench", "labels": labels},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container("app", 8080), container("worker", 8081)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": format!("{name}-config")}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "certs", "secret": {"secretName": format!("{name}-tls")}},
                    ],
                }
            }
        }
    }))
    .unwrap()
}

/// Twenty policies: half select by matchLabels, half by matchExpressions; each injects a sidecar
/// with probes and resources, a volume, and an env var into the app containers.
fn policy(i: usize) -> SidecarPolicy {
    let selector = if i.is_multiple_of(2) {
        json!({"matchLabels": {"team": TEAMS[i % TEAMS.len()]}})
    } else {
        json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": [TIERS[i % TIERS.len()]]},
            {"key": "env", "operator": "NotIn", "values": ["staging"]},
        ]})
    };
    let port = 9000 + i as i32;
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": format!("policy-{i:02}"), "namespace": "bench"},
        "spec": {
            "selector": selector,
            "order": (i % 4) as i32 * 10,
            "sidecars": [{
                "name": format!("sidecar-{i:02}"),
                "image": format!("registry.example.com/sidecars/s{i}:2.1"),
                "ports": [{"containerPort": port}],
                "startupProbe": {"tcpSocket": {"port": port}},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                "volumeMounts": [{"name": format!("scratch-{i:02}"), "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": format!("scratch-{i:02}"), "emptyDir": {}}],
            "appContainers": [{"env": [{"name": format!("SIDECAR_{i:02}_PORT"), "value": port.to_string()}]}],
        }
    }))
    .unwrap()
}

fn batch(c: &mut Criterion) {
    let deployments: Vec<Deployment> = (0..DEPLOYMENTS).map(deployment).collect();
    let policies: Vec<SidecarPolicy> = (0..POLICIES).map(policy).collect();
    let guardrails = Guardrails::default();
    let set = PolicySet::new(&policies, &guardrails);

    // Sanity: the batch exercises real work, not refusals.
    let injected = deployments
        .iter()
        .filter(|d| !set.render(d).unwrap().applied().is_empty())
        .count();
    assert!(
        injected > DEPLOYMENTS / 2,
        "only {injected} Deployments get sidecars"
    );

    let mut group = c.benchmark_group("render");
    group.sample_size(20);
    group.bench_function("10k_deployments_20_policies", |b| {
        b.iter(|| {
            // Preparing the policies is part of the batch: a controller does it per policy change.
            let set = PolicySet::new(&policies, &guardrails);
            for d in &deployments {
                black_box(set.render(black_box(d)).unwrap());
            }
        })
    });
    let rendered: Vec<Deployment> = deployments
        .iter()
        .map(|d| set.render(d).unwrap().deployment)
        .collect();
    group.bench_function("10k_already_rendered_20_policies", |b| {
        b.iter(|| {
            for d in &rendered {
                let r = set.render(black_box(d)).unwrap();
                black_box(r.changes(d));
            }
        })
    });
    // The controller's path: Deployments cached as facts (built once per watch event, not per
    // reconcile), planned and checked against what is stored, never cloned or rendered.
    let fresh: Vec<DeploymentFacts> = deployments.iter().map(DeploymentFacts::of).collect();
    group.bench_function("10k_plan_20_policies", |b| {
        b.iter(|| {
            let set = PolicySet::new(&policies, &guardrails);
            for (d, facts) in deployments.iter().zip(&fresh) {
                let plan = set.plan(&d.metadata, black_box(facts)).unwrap();
                black_box(plan.is_applied(facts));
            }
        })
    });
    let stored: Vec<DeploymentFacts> = rendered.iter().map(DeploymentFacts::of).collect();
    assert!(
        rendered
            .iter()
            .zip(&stored)
            .all(|(d, facts)| set.plan(&d.metadata, facts).unwrap().is_applied(facts)),
        "every rendered Deployment is up to date"
    );
    group.bench_function("10k_plan_already_applied_20_policies", |b| {
        b.iter(|| {
            for (d, facts) in rendered.iter().zip(&stored) {
                let plan = set.plan(&d.metadata, black_box(facts)).unwrap();
                black_box(plan.is_applied(facts));
            }
        })
    });
    // What a Deployment reconcile does now: expand the cached compact facts, plan, check.
    let cached: Vec<String> = rendered.iter().map(DeploymentFacts::compact).collect();
    group.bench_function("10k_reconcile_cached_already_applied_20_policies", |b| {
        b.iter(|| {
            for (d, compact) in rendered.iter().zip(&cached) {
                let facts = DeploymentFacts::expand(black_box(compact));
                let plan = set.plan(&d.metadata, &facts).unwrap();
                black_box(plan.is_applied(&facts));
            }
        })
    });
    group.finish();

    // One policy's status over the namespace: by rendering every Deployment (the first
    // release's way, kept as the reference), and from the outcome index (the controller's way).
    let mut status = c.benchmark_group("status");
    status.sample_size(20);
    let policy = &policies[0];
    let name = policy.metadata.name.clone().unwrap();
    let refs: Vec<&Deployment> = rendered.iter().collect();
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    status.bench_function("one_policy_10k_by_rendering", |b| {
        b.iter(|| black_box(status::policy_status(policy, &set, black_box(&refs), None, &now)))
    });
    let mut index = OutcomeIndex::default();
    for d in &rendered {
        let facts = DeploymentFacts::of(d);
        let selected = set
            .matching(d)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let carried = facts.carried();
        let outcome = Outcome {
            selected,
            carried,
            state: State::Applied,
            held: false,
            progress: Progress::Complete,
            warnings: Vec::new(),
        };
        index.record("bench", d.metadata.name.as_deref().unwrap(), outcome);
    }
    let revision = set.revision(&name).unwrap().to_owned();
    assert_eq!(
        index.summary("bench", &name, &revision),
        status::summary_by_rendering(&name, &set, &refs),
        "the index says what rendering says"
    );
    status.bench_function("one_policy_10k_from_the_index", |b| {
        b.iter(|| {
            let summary = index.summary("bench", black_box(&name), &revision);
            black_box(status::from_summary(policy, &set, &summary, None, &now))
        })
    });
    status.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
