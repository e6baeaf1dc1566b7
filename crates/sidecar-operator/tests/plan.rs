//! `plan` and `explain` on a cluster state built in memory (their output checked word for word),
//! and the fetch of that state from a mocked API server (only lists and gets, paged).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use serde_json::{Value, json};
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{Guardrails, PolicySet};
use sidecar_operator::cluster_state::{self, ClusterState};
use sidecar_operator::explain_cmd::explain;
use sidecar_operator::plan_cmd::{Changes, Options, PolicyName, Verdict, plan};

fn options() -> Options {
    Options {
        guardrails: Guardrails::default(),
        exclusions: Exclusions::new(["kube-system".to_owned()]),
        namespace: None,
    }
}

/// SidecarPolicy `shipper` of namespace demo: sidecar `shipper` (`image`) for `apps`.
fn shipper(image: &str, apps: &[&str]) -> SidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "shipper", "namespace": "demo"},
        "spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": apps}]},
            "sidecars": [{
                "name": "shipper", "image": image,
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        }
    }))
    .unwrap()
}

/// ClusterSidecarPolicy `mesh`: sidecar `proxy` in every Deployment of namespaces labelled
/// mesh=enabled, before the others.
fn mesh() -> ClusterSidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "ClusterSidecarPolicy",
        "metadata": {"name": "mesh"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"mesh": "enabled"}},
            "selector": {},
            "order": -10,
            "sidecars": [{
                "name": "proxy", "image": "envoy:1.31",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        }
    }))
    .unwrap()
}

/// Deployment `namespace/name` labelled app=`app`, as its owner wrote it.
fn owned(namespace: &str, name: &str, app: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": app, "image": "nginx:1.27"}]},
            }
        }
    }))
    .unwrap()
}

fn namespaces() -> Vec<NamespaceLabels> {
    let mut demo = NamespaceLabels::named("demo");
    demo.labels.insert("mesh".into(), "enabled".into());
    vec![demo, NamespaceLabels::named("shop")]
}

/// As the operator leaves it: rendered with `policies` and `mesh` in its namespace.
fn applied(deployment: Deployment, policies: &[SidecarPolicy]) -> Deployment {
    let namespace = deployment.metadata.namespace.clone().unwrap();
    let labels = namespaces().into_iter().find(|n| n.name == namespace).unwrap();
    let set = PolicySet::for_namespace(
        &labels,
        policies,
        &[mesh()],
        &Exclusions::default(),
        &Guardrails::default(),
    );
    set.render(&deployment).unwrap().deployment
}

/// Two namespaces: demo (mesh=enabled) with web, api and db up to date, and worker still on an
/// older shipper (a staged rollout holds it back); shop (no labels) with web and cart.
fn state() -> ClusterState {
    let current = vec![shipper("busybox:1.36", &["web", "api", "worker"])];
    let older = vec![shipper("busybox:1.35", &["web", "api", "worker"])];
    ClusterState {
        deployments: vec![
            applied(owned("demo", "web", "web"), &current),
            applied(owned("demo", "api", "api"), &current),
            applied(owned("demo", "db", "db"), &current),
            applied(owned("demo", "worker", "worker"), &older),
            owned("shop", "web", "web"),
            owned("shop", "cart", "cart"),
        ],
        policies: current,
        cluster_policies: Some(vec![mesh()]),
        namespaces: namespaces(),
        unreadable: vec![],
        autoscalers: Default::default(),
        notes: vec![],
    }
}

/// HPA `name` of namespace demo keeping Deployment `target`'s average memory usage at 500Mi.
fn memory_hpa(name: &str, target: &str) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}}]
        }
    })
}

/// `state` with HPA `name` of namespace demo (see `memory_hpa`) scaling Deployment `target`.
fn with_memory_hpa(mut state: ClusterState, name: &str, target: &str) -> ClusterState {
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(memory_hpa(name, target)).unwrap();
    let facts = sidecar_core::autoscaling::Hpa::of(&hpa).map(sidecar_core::autoscaling::Autoscaler::Hpa);
    state
        .autoscalers
        .apply(sidecar_core::autoscaling::Kind::Hpa, "demo", name, facts);
    state
}

#[test]
fn a_change_that_gives_an_autoscaled_deployment_sidecars_warns_of_its_hpa() {
    let state = with_memory_hpa(state(), "db-hpa", "db");
    let changes = Changes {
        policies: vec![shipper("busybox:1.36", &["web", "api", "worker", "db"])],
        ..Changes::default()
    };
    // Warnings go to standard error, beside the plan.
    let warned = plan(&state, &changes, &options()).warnings;
    assert!(
        warned.iter().any(|w| w.contains("HorizontalPodAutoscaler \"db-hpa\" keeps the pods' average memory usage at 500Mi, which now includes the usage of sidecars \"shipper\"")),
        "{warned:?}"
    );
    // Without the HPA, the same change warns of nothing of the kind.
    let warned = plan(&self::state(), &changes, &options()).warnings;
    assert!(
        warned.iter().all(|w| !w.contains("HorizontalPodAutoscaler")),
        "{warned:?}"
    );
}

#[test]
fn a_changed_policy_lists_what_changes_what_loses_it_and_what_is_pending() {
    let changes = Changes {
        policies: vec![shipper("busybox:1.37", &["web", "db"])],
        ..Changes::default()
    };
    let report = plan(&state(), &changes, &options());
    assert_eq!(
        report.text(false).unwrap(),
        "\
demo/api: loses SidecarPolicy \"shipper\" (shipper)
demo/db: change (adds shipper)
demo/web: change (updates shipper)
demo/worker: pending (the live Deployment is not what the current policies render: the operator has not applied them yet, or a staged rollout holds it back)
demo/worker: loses SidecarPolicy \"shipper\" (shipper)
4 change, 0 refused, 2 unchanged; 1 pending
"
    );
    assert_eq!(report.refused(), 0);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn the_diff_compares_the_current_render_with_the_planned_one() {
    let changes = Changes {
        policies: vec![shipper("busybox:1.37", &["web", "api", "worker"])],
        ..Changes::default()
    };
    let only_demo = Options {
        namespace: Some("demo".into()),
        ..options()
    };
    let text = plan(&state(), &changes, &only_demo).text(true).unwrap();
    let web = text
        .split("--- demo/web (current policies)\n")
        .nth(1)
        .expect("a diff for demo/web");
    assert!(web.starts_with("+++ demo/web (planned policies)\n"), "{text}");
    assert!(
        web.contains("-      - image: busybox:1.36\n+      - image: busybox:1.37\n"),
        "{text}"
    );
    assert!(
        !text.contains("envoy"),
        "the proxy does not change, so it is no diff line: {text}"
    );
    assert!(
        text.ends_with("3 change, 0 refused, 1 unchanged; 1 pending\n"),
        "{text}"
    );
}

#[test]
fn deleting_a_cluster_policy_and_a_conflicting_policy_refuses_with_the_problem() {
    let mut conflicting = shipper("busybox:1.36", &["web"]);
    conflicting.metadata.name = Some("dup".into());
    conflicting.metadata.namespace = Some("shop".into());
    // A sidecar named like the app container of shop/web.
    conflicting.spec.sidecars[0].name = "web".into();
    let changes = Changes {
        policies: vec![conflicting],
        deleted_cluster_policies: vec!["mesh".into()],
        deleted_policies: vec![PolicyName {
            namespace: Some("demo".into()),
            name: "nothing-here".into(),
        }],
        ..Changes::default()
    };
    let report = plan(&state(), &changes, &options());
    let text = report.text(false).unwrap();
    assert_eq!(
        text,
        "\
demo/api: loses ClusterSidecarPolicy \"mesh\" (proxy)
demo/db: loses ClusterSidecarPolicy \"mesh\" (proxy)
demo/web: loses ClusterSidecarPolicy \"mesh\" (proxy)
demo/worker: pending (the live Deployment is not what the current policies render: the operator has not applied them yet, or a staged rollout holds it back)
demo/worker: loses ClusterSidecarPolicy \"mesh\" (proxy)
shop/web: refused: SidecarPolicy \"dup\" spec.sidecars[0].name: container name \"web\" is already used by Deployment \"web\" (spec.template.spec.containers[0])
4 change, 1 refused, 1 unchanged; 1 pending
"
    );
    assert_eq!(report.refused(), 1);
    assert_eq!(
        report.notes,
        ["--delete-policy demo/nothing-here: the cluster has no such SidecarPolicy; nothing to delete"]
    );
}

#[test]
fn a_refusal_that_the_change_does_not_cause_is_not_blamed_on_it() {
    let mut state = state();
    let mut conflicting = shipper("busybox:1.36", &["web"]);
    conflicting.metadata.name = Some("dup".into());
    conflicting.metadata.namespace = Some("shop".into());
    conflicting.spec.sidecars[0].name = "web".into();
    state.policies.push(conflicting);
    let changes = Changes {
        policies: vec![shipper("busybox:1.37", &["web", "api", "worker"])],
        ..Changes::default()
    };
    let report = plan(&state, &changes, &options());
    assert_eq!(report.refused(), 0);
    let text = report.text(false).unwrap();
    assert!(
        text.contains("shop/web: still refused, as now: SidecarPolicy \"dup\""),
        "{text}"
    );
    assert!(
        text.ends_with("3 change, 0 refused, 2 unchanged, 1 still refused; 1 pending\n"),
        "{text}"
    );
}

#[test]
fn a_policy_that_cannot_be_read_blocks_its_namespace_unless_the_change_replaces_it() {
    let mut state = state();
    state.policies.clear();
    state.unreadable.push(cluster_state::Unreadable {
        key: "shipper".into(),
        namespace: Some("demo".into()),
        error: "unknown field `sidecar`".into(),
    });
    let only_demo = Options {
        namespace: Some("demo".into()),
        ..options()
    };
    let changes = Changes {
        deleted_cluster_policies: vec!["mesh".into()],
        ..Changes::default()
    };
    let text = plan(&state, &changes, &only_demo).text(false).unwrap();
    assert!(
        text.starts_with("demo/api: blocked: SidecarPolicy \"shipper\" cannot be read (unknown field `sidecar`); the operator leaves the Deployment as it is\n"),
        "{text}"
    );
    assert!(
        text.ends_with("0 change, 0 refused, 0 unchanged, 4 blocked\n"),
        "{text}"
    );

    let replaced = Changes {
        policies: vec![shipper("busybox:1.36", &["web", "api", "worker"])],
        ..Changes::default()
    };
    let report = plan(&state, &replaced, &only_demo);
    assert_eq!(
        report.text(false).unwrap(),
        "demo/worker: change (updates shipper)\n1 change, 0 refused, 3 unchanged\n"
    );
}

#[test]
fn a_policy_that_selects_nothing_gets_a_note() {
    let changes = Changes {
        policies: vec![shipper("busybox:1.36", &["nothing"])],
        ..Changes::default()
    };
    let report = plan(&state(), &changes, &options());
    assert!(
        report
            .notes
            .contains(&"SidecarPolicy demo/shipper selects no Deployment".to_owned()),
        "{:?}",
        report.notes
    );
}

#[test]
fn the_plan_predicts_the_render_the_operator_makes() {
    let changes = Changes {
        policies: vec![shipper("busybox:1.37", &["web", "db"])],
        ..Changes::default()
    };
    let report = plan(&state(), &changes, &options());
    let Some(entry) = report.entry("demo", "db") else {
        panic!("demo/db changes")
    };
    let Verdict::Change(change) = &entry.verdict else {
        panic!("{:?}", entry.verdict)
    };
    let expected = applied(
        owned("demo", "db", "db"),
        &[shipper("busybox:1.37", &["web", "db"])],
    );
    assert_eq!(change.after.deployment, expected);
}

#[test]
fn explain_names_the_policies_their_matching_terms_revisions_and_state() {
    let state = state();
    let text = explain(&state, "demo", "web", &options()).unwrap();
    let shipper_revision = sidecar_core::revision::of(&shipper("busybox:1.36", &[]));
    let mesh_revision = sidecar_core::revision::hash(&sidecar_core::revision::content(&mesh().spec.policy));
    assert_eq!(
        text,
        format!(
            "\
Deployment demo/web
  labels: app=web
Namespace demo
  labels: kubernetes.io/metadata.name=demo, mesh=enabled

Selected by 2 policies, in injection order (spec.order, then ClusterSidecarPolicies before SidecarPolicies, then name):
1. ClusterSidecarPolicy \"mesh\": order -10, placement BeforeAppInitContainers
   namespaceSelector: mesh=enabled [mesh=enabled]
   selector: {{}} (selects everything)
   revision: {mesh_revision} (carried {mesh_revision}: up to date)
   injected: init containers proxy
2. SidecarPolicy \"shipper\": order 0, placement BeforeAppInitContainers
   selector: app In (web, api, worker) [app=web]
   revision: {shipper_revision} (carried {shipper_revision}: up to date)
   injected: init containers shipper

Live Deployment: up to date with the current policies.
"
        )
    );
}

#[test]
fn explain_shows_the_warnings_of_the_deployments_autoscalers() {
    let state = with_memory_hpa(state(), "web-hpa", "web");
    let web = explain(&state, "demo", "web", &options()).unwrap();
    assert!(
        web.ends_with("Warnings:
  ClusterSidecarPolicy \"mesh\" spec.sidecars: HorizontalPodAutoscaler \"web-hpa\" keeps the pods' average memory usage at 500Mi, which now includes the usage of sidecars \"proxy\"
  SidecarPolicy \"shipper\" spec.sidecars: HorizontalPodAutoscaler \"web-hpa\" keeps the pods' average memory usage at 500Mi, which now includes the usage of sidecars \"shipper\"
"),
        "{web}"
    );
    let api = explain(&state, "demo", "api", &options()).unwrap();
    assert!(
        !api.contains("HorizontalPodAutoscaler"),
        "another Deployment's HPA: {api}"
    );
}

#[test]
fn explain_says_what_is_pending_and_why_a_policy_does_not_select() {
    let state = state();
    let worker = explain(&state, "demo", "worker", &options()).unwrap();
    let older = sidecar_core::revision::of(&shipper("busybox:1.35", &[]));
    assert!(
        worker.contains(&format!("(carried {older}: pending)")),
        "{worker}"
    );
    assert!(
        worker.ends_with("Live Deployment: pending; it is not what the current policies render (the operator has not applied them yet, or a staged rollout holds it back).\n"),
        "{worker}"
    );

    let cart = explain(&state, "shop", "cart", &options()).unwrap();
    assert_eq!(
        cart,
        "\
Deployment shop/cart
  labels: app=cart
Namespace shop
  labels: kubernetes.io/metadata.name=shop

No policy selects it.

Not selected:
  ClusterSidecarPolicy \"mesh\": namespaceSelector needs mesh=enabled [mesh absent]

Live Deployment: up to date with the current policies.
"
    );
    let db = explain(&state, "demo", "db", &options()).unwrap();
    assert!(
        db.contains("  SidecarPolicy \"shipper\": selector needs app In (web, api, worker) [app=db]\n"),
        "{db}"
    );
    assert!(explain(&state, "demo", "nope", &options()).is_err());
}

#[test]
fn explain_lists_what_a_policy_that_no_longer_selects_left() {
    let mut state = state();
    state.policies = vec![shipper("busybox:1.36", &["api"])];
    let web = explain(&state, "demo", "web", &options()).unwrap();
    let revision = sidecar_core::revision::of(&shipper("busybox:1.36", &[]));
    assert!(
        web.contains(&format!(
            "Carried but no longer selecting it (the operator removes what they added):\n  SidecarPolicy \"shipper\" at revision {revision}: init containers shipper\n"
        )),
        "{web}"
    );
    assert!(web.contains("Live Deployment: pending"), "{web}");
}

// The fetch, against a mocked API server.

fn list(kind: &str, items: Vec<Value>, next: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "1", "continue": next.unwrap_or_default()},
        "items": items,
    })
}

fn with_kind(mut object: Value, api_version: &str, kind: &str) -> Value {
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object
}

/// Answers every request of a fetch of all namespaces; fails on anything but a GET. Returns the
/// requests seen, as `path?query`.
async fn serve_fetch(mut handle: common::ApiHandle, cluster_crd: bool) -> Vec<String> {
    let state = state();
    let deployments: Vec<Value> = state
        .deployments
        .iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    let mut seen = Vec::new();
    // Until the client is dropped. Deployments come in two pages; the other lists in one.
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, ());
        assert_eq!(request.method(), Method::GET, "{}", request.uri());
        assert!(
            body.collect_bytes().await.unwrap().is_empty(),
            "a GET has no body"
        );
        let query = common::query(&request);
        seen.push(format!("{}?{query}", request.uri().path()));
        match request.uri().path() {
            "/apis/apps/v1/deployments" if !query.contains("continue=") => {
                common::respond(
                    send,
                    &list("Deployment", deployments[..4].to_vec(), Some("page-2")),
                );
            }
            "/apis/apps/v1/deployments" => {
                common::respond(send, &list("Deployment", deployments[4..].to_vec(), None));
            }
            "/apis/sidecar.dev/v1alpha1/sidecarpolicies" => {
                let mut broken = json!({"apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
                    "metadata": {"name": "broken", "namespace": "shop"}, "spec": {"sidecars": "none"}});
                broken["spec"]["selector"] = json!({});
                let items = vec![
                    with_kind(
                        serde_json::to_value(&state.policies[0]).unwrap(),
                        "sidecar.dev/v1alpha1",
                        "SidecarPolicy",
                    ),
                    broken,
                ];
                common::respond(send, &list("SidecarPolicy", items, None));
            }
            "/apis/sidecar.dev/v1alpha1/clustersidecarpolicies" if cluster_crd => {
                let items = vec![with_kind(
                    serde_json::to_value(mesh()).unwrap(),
                    "sidecar.dev/v1alpha1",
                    "ClusterSidecarPolicy",
                )];
                common::respond(send, &list("ClusterSidecarPolicy", items, None));
            }
            "/apis/sidecar.dev/v1alpha1/clustersidecarpolicies" => {
                common::fail(
                    send,
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            "/api/v1/namespaces" => {
                let items = vec![
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"kubernetes.io/metadata.name": "demo", "mesh": "enabled"}}}),
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}),
                ];
                common::respond(send, &list("Namespace", items, None));
            }
            "/apis/autoscaling/v2/horizontalpodautoscalers" => {
                common::respond(
                    send,
                    &list(
                        "HorizontalPodAutoscaler",
                        vec![memory_hpa("web-hpa", "web")],
                        None,
                    ),
                );
            }
            "/apis/autoscaling.k8s.io/v1/verticalpodautoscalers" => {
                common::fail(
                    send,
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            other => panic!("unexpected request: GET {other}?{query}"),
        }
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn the_fetch_only_lists_pages_through_and_plans_what_the_memory_state_plans() {
    let (service, handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(serve_fetch(handle, true));
    let fetched = cluster_state::fetch(&client, None).await.unwrap();
    drop(client);
    let seen = server.await.unwrap();
    assert_eq!(
        seen,
        [
            "/api/v1/namespaces?&limit=500",
            "/apis/apps/v1/deployments?&limit=500",
            "/apis/apps/v1/deployments?&limit=500&continue=page-2",
            "/apis/autoscaling.k8s.io/v1/verticalpodautoscalers?&limit=500",
            "/apis/autoscaling/v2/horizontalpodautoscalers?&limit=500",
            "/apis/sidecar.dev/v1alpha1/clustersidecarpolicies?&limit=500",
            "/apis/sidecar.dev/v1alpha1/sidecarpolicies?&limit=500",
        ]
    );
    assert_eq!(
        fetched.autoscalers.of("demo", "web").hpas.len(),
        1,
        "the HPA is read"
    );
    assert!(
        fetched.notes.is_empty(),
        "VPAs not served: nothing to say: {:?}",
        fetched.notes
    );
    assert_eq!(fetched.deployments.len(), 6);
    assert_eq!(
        fetched.unreadable.len(),
        1,
        "the policy that does not decode is kept aside"
    );
    assert_eq!(fetched.unreadable[0].key, "broken");

    // With the unreadable policy of shop set aside, demo plans as the state built in memory.
    let changes = Changes {
        policies: vec![shipper("busybox:1.37", &["web", "db"])],
        ..Changes::default()
    };
    let only_demo = Options {
        namespace: Some("demo".into()),
        ..options()
    };
    assert_eq!(
        plan(&fetched, &changes, &only_demo).text(true).unwrap(),
        plan(&state(), &changes, &only_demo).text(true).unwrap()
    );
    let everywhere = plan(&fetched, &changes, &options()).text(false).unwrap();
    assert!(
        everywhere.contains("shop/cart: blocked: SidecarPolicy \"broken\" cannot be read"),
        "{everywhere}"
    );
}

#[tokio::test]
async fn without_the_cluster_crd_cluster_policies_are_skipped_with_a_note() {
    let (service, handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(serve_fetch(handle, false));
    let fetched = cluster_state::fetch(&client, None).await.unwrap();
    drop(client);
    server.await.unwrap();
    assert!(fetched.cluster_policies.is_none());
    assert_eq!(
        fetched.notes,
        ["the ClusterSidecarPolicy CRD is not served by this cluster: only SidecarPolicies apply"]
    );
}
