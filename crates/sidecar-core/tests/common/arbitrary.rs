//! Generators of Deployments and SidecarPolicies for the property tests: small name pools, so
//! that conflicts happen, but mostly names of each policy's own, so that most renders succeed.

use k8s_openapi::api::apps::v1::Deployment;
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Value, json};
use sidecar_api::SidecarPolicy;

const APP_NAMES: [&str; 3] = ["app", "web", "worker"];
const ENV_NAMES: [&str; 4] = ["MODE", "LOG_DIR", "TOKEN", "LEVEL"];
const PATHS: [&str; 4] = ["/data", "/logs", "/cache", "/etc/conf"];
const LABELS: [&str; 3] = ["team", "tier", "scrape"];

fn app_container(name: &'static str) -> impl Strategy<Value = Value> {
    (subsequence(ENV_NAMES.to_vec(), 0..=2), subsequence(PATHS.to_vec(), 0..=2), any::<bool>()).prop_map(
        move |(env, paths, port)| {
            json!({
                "name": name,
                "image": "app:1.0",
                "env": env.iter().map(|e| json!({"name": e, "value": "owner"})).collect::<Vec<_>>(),
                "volumeMounts": paths.iter().map(|p| json!({"name": "data", "mountPath": p})).collect::<Vec<_>>(),
                "ports": if port { vec![json!({"containerPort": 8080})] } else { vec![] },
            })
        },
    )
}

/// Removes empty lists and maps, as the API server omits them.
pub fn prune(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| {
                    !matches!(v, Value::Array(a) if a.is_empty())
                        && !matches!(v, Value::Object(o) if o.is_empty())
                        && !v.is_null()
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(prune).collect()),
        other => other,
    }
}

pub fn deployment() -> impl Strategy<Value = Deployment> {
    let apps = subsequence(APP_NAMES.to_vec(), 1..=3)
        .prop_flat_map(|names| names.into_iter().map(app_container).collect::<Vec<_>>());
    let inits = subsequence(vec!["migrate", "wait-db", "owner-proxy"], 0..=3);
    let labels = subsequence(LABELS.to_vec(), 0..=2);
    let share = prop::option::of(any::<bool>());
    (apps, inits, labels, share).prop_map(|(apps, inits, labels, share)| {
        let mut template_labels = serde_json::Map::new();
        template_labels.insert("app".into(), json!("web"));
        for l in labels {
            template_labels.insert(l.into(), json!("owner"));
        }
        let inits: Vec<Value> = inits
            .iter()
            .map(|n| {
                // The owner may have native sidecars of its own.
                let restart = (*n == "owner-proxy").then_some("Always");
                json!({"name": n, "image": "init:1", "restartPolicy": restart})
            })
            .collect();
        let value = prune(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": template_labels},
                    "spec": {
                        "initContainers": inits,
                        "containers": apps,
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "shareProcessNamespace": share,
                    }
                }
            }
        }));
        serde_json::from_value(value).expect("generated Deployment deserialises")
    })
}

fn policy(name: &'static str) -> impl Strategy<Value = SidecarPolicy> {
    (
        -2i32..=2,
        any::<bool>(),
        0usize..=1,
        0usize..=2,
        // Mostly names of the policy's own, sometimes shared ones, so that conflicts happen but
        // do not dominate.
        own_or_shared(format!("{}_VAR", name.to_uppercase()), "TOKEN"),
        own_or_shared(format!("/{name}"), "/logs"),
        own_or_shared(format!("{name}-label"), "scrape"),
        prop::option::weighted(0.2, any::<bool>()),
        prop_oneof![Just(json!({})), Just(json!({"matchLabels": {"app": "web"}})), Just(json!({"matchLabels": {"app": "api"}})),
            Just(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}))],
    )
        .prop_map(move |(order, after, inits, sidecars, env, paths, labels, share, selector)| {
            let inits = (0..inits).map(|i| json!({"name": format!("{name}-init{i}"), "image": "init:1"})).collect::<Vec<_>>();
            let mut sidecars =
                (0..sidecars).map(|i| json!({"name": format!("{name}-side{i}"), "image": "side:1"})).collect::<Vec<_>>();
            if inits.is_empty() && sidecars.is_empty() {
                sidecars.push(json!({"name": format!("{name}-side0"), "image": "side:1"}));
            }
            let mut patch = json!({
                "env": env.iter().map(|e| json!({"name": e, "value": name})).collect::<Vec<_>>(),
                "volumeMounts": paths.iter().map(|p| json!({"name": format!("{name}-vol"), "mountPath": p})).collect::<Vec<_>>(),
            });
            if env.is_empty() && paths.is_empty() {
                patch = Value::Null;
            }
            let mut value = prune(json!({
                "apiVersion": "sidecar.dev/v1alpha1",
                "kind": "SidecarPolicy",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {
                    "selector": selector,
                    "order": order,
                    "placement": if after { "AfterAppInitContainers" } else { "BeforeAppInitContainers" },
                    "initContainers": inits,
                    "sidecars": sidecars,
                    "volumes": [{"name": format!("{name}-vol"), "emptyDir": {}}],
                    "appContainers": if patch.is_null() { vec![] } else { vec![patch] },
                    "pod": {
                        "labels": labels.iter().map(|l| (l.to_string(), json!(name))).collect::<serde_json::Map<_, _>>(),
                        "shareProcessNamespace": share,
                    },
                }
            }));
            // `selector: {}` is pruned away above; put it back (an empty selector selects all).
            value["spec"]["selector"] = selector;
            serde_json::from_value(value).expect("generated policy deserialises")
        })
}

/// Maybe a name of the policy's own, and rarely a name others may use too.
fn own_or_shared(own: String, shared: &'static str) -> impl Strategy<Value = Vec<String>> {
    (
        any::<bool>(),
        prop::option::weighted(0.1, Just(shared.to_owned())),
    )
        .prop_map(move |(mine, shared)| mine.then(|| own.clone()).into_iter().chain(shared).collect())
}

pub fn policies() -> impl Strategy<Value = Vec<SidecarPolicy>> {
    subsequence(vec!["alpha", "beta", "gamma", "delta"], 0..=4)
        .prop_flat_map(|names| names.into_iter().map(policy).collect::<Vec<_>>())
}

/// A namespace of up to four Deployments (`d0`, `d1`, ...) with `app` labels that policies may or
/// may not select, some already rendered against a subset of `policies` (as an earlier policy
/// set would have left them), with the API server's defaults on what was injected.
pub fn fleet(policies: Vec<SidecarPolicy>) -> impl Strategy<Value = Vec<Deployment>> {
    prop::collection::vec((deployment(), any::<bool>(), any::<u8>()), 1..=4).prop_map(move |members| {
        members
            .into_iter()
            .enumerate()
            .map(|(i, (mut d, api, earlier))| {
                d.metadata.name = Some(format!("d{i}"));
                if api {
                    let labels = d.metadata.labels.get_or_insert_default();
                    labels.insert("app".into(), "api".into());
                }
                let kept: Vec<SidecarPolicy> = policies
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| earlier & (1 << j) != 0)
                    .map(|(_, p)| p.clone())
                    .collect();
                match sidecar_core::render(&d, &kept, &sidecar_core::Guardrails::default()) {
                    Ok(rendered) if earlier & 0x80 != 0 => with_server_defaults(rendered.deployment),
                    _ => d,
                }
            })
            .collect()
    })
}

/// `d` as the API server stores it: defaults added to every container and the pod.
pub fn with_server_defaults(mut d: Deployment) -> Deployment {
    if let Some(pod) = d.spec.template.spec.as_mut() {
        for c in pod
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod.containers.iter_mut())
        {
            c.image_pull_policy.get_or_insert_with(|| "IfNotPresent".into());
            c.termination_message_path
                .get_or_insert_with(|| "/dev/termination-log".into());
        }
        pod.restart_policy.get_or_insert_with(|| "Always".into());
        pod.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    }
    d
}
