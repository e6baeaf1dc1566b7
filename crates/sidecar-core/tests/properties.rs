//! Property tests over generated Deployments and policies: idempotence, exact removal, order
//! invariants and independence from the order in which policies are listed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Value, json};
use sidecar_api::{Placement, SidecarPolicy};

use common::{init_names, render};

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
fn prune(value: Value) -> Value {
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

fn deployment() -> impl Strategy<Value = Deployment> {
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

fn policies() -> impl Strategy<Value = Vec<SidecarPolicy>> {
    subsequence(vec!["alpha", "beta", "gamma", "delta"], 0..=4)
        .prop_flat_map(|names| names.into_iter().map(policy).collect::<Vec<_>>())
}

/// The injected init container names, in the order the documented rules give.
fn expected_injection(d: &Deployment, policies: &[SidecarPolicy], placement: Placement) -> Vec<String> {
    let mut matched: Vec<&SidecarPolicy> = sidecar_core::matching_policies(d, policies);
    matched.retain(|p| p.spec.placement == placement);
    let mut sorted = matched.clone();
    sorted.sort_by(|a, b| (a.spec.order, &a.metadata.name).cmp(&(b.spec.order, &b.metadata.name)));
    sorted
        .iter()
        .flat_map(|p| {
            p.spec
                .init_containers
                .iter()
                .chain(&p.spec.sidecars)
                .map(|c| c.name.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn render_is_idempotent(d in deployment(), ps in policies()) {
        if let Ok(once) = render(&d, &ps) {
            let twice = render(&once.deployment, &ps).expect("a rendered Deployment renders again");
            prop_assert_eq!(twice.deployment, once.deployment);
        }
    }

    #[test]
    fn removing_every_policy_restores_the_original(d in deployment(), ps in policies()) {
        if let Ok(rendered) = render(&d, &ps) {
            let restored = render(&rendered.deployment, &[]).expect("removal never conflicts");
            prop_assert_eq!(restored.deployment, d);
        }
    }

    #[test]
    fn removing_some_policies_equals_rendering_the_rest(d in deployment(), ps in policies(), keep in any::<u8>()) {
        let kept: Vec<SidecarPolicy> = ps.iter().enumerate().filter(|(i, _)| keep & (1 << i) != 0).map(|(_, p)| p.clone()).collect();
        if let (Ok(all), Ok(some)) = (render(&d, &ps), render(&d, &kept)) {
            let shrunk = render(&all.deployment, &kept).expect("a subset of valid policies still renders");
            prop_assert_eq!(shrunk.deployment, some.deployment);
        }
    }

    #[test]
    fn listing_order_of_policies_does_not_matter(d in deployment(), ps in policies()) {
        let mut reversed = ps.clone();
        reversed.reverse();
        prop_assert_eq!(render(&d, &ps), render(&d, &reversed));
    }

    #[test]
    fn init_containers_follow_the_ordering_rules(d in deployment(), ps in policies()) {
        if let Ok(rendered) = render(&d, &ps) {
            let owner = init_names(&d);
            let before = expected_injection(&d, &ps, Placement::BeforeAppInitContainers);
            let after = expected_injection(&d, &ps, Placement::AfterAppInitContainers);
            let expected: Vec<String> = before.into_iter().chain(owner).chain(after).collect();
            prop_assert_eq!(init_names(&rendered.deployment), expected);
        }
    }

    #[test]
    fn conflicts_and_refusals_are_deterministic(d in deployment(), ps in policies()) {
        // The same inputs always give the same outcome, refusal text included.
        prop_assert_eq!(render(&d, &ps), render(&d, &ps));
    }
}

/// The properties above only say something if many generated cases render and inject; this
/// guards the generators against drifting into mostly-conflicting inputs.
#[test]
fn generators_produce_mostly_successful_non_trivial_renders() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut ok, mut injected, mut refused) = (0, 0, 0);
    for _ in 0..500 {
        let d = deployment().new_tree(&mut runner).unwrap().current();
        let ps = policies().new_tree(&mut runner).unwrap().current();
        match render(&d, &ps) {
            Ok(r) if !r.applied().is_empty() => {
                ok += 1;
                injected += 1;
            }
            Ok(_) => ok += 1,
            Err(e) => {
                if refused < 6 {
                    eprintln!("{e}");
                }
                refused += 1
            }
        }
    }
    eprintln!("generated 500 cases: {ok} rendered ({injected} injecting), {refused} refused");
    assert!(ok >= 150, "only {ok} of 500 cases rendered");
    assert!(injected >= 100, "only {injected} of 500 cases injected something");
    assert!(refused >= 25, "only {refused} of 500 cases exercised conflicts");
}
