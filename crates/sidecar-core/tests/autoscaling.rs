//! The autoscaler warnings: what an HPA or VPA makes of injected sidecars, the index the
//! controller keeps of them, and how the warnings reach a policy's status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use sidecar_api::{SidecarPolicy, conditions};
use sidecar_core::autoscaling::{self, Autoscaler, AutoscalerIndex, Autoscalers, Hpa, Kind, Vpa};
use sidecar_core::outcome::{Outcome, OutcomeIndex, State};
use sidecar_core::rollout::Progress;
use sidecar_core::status::{from_summary, reasons};
use sidecar_core::{DeploymentFacts, Guardrails, PolicySet, Warning};

use common::{deployment, policy};

/// Deployment `web` with one app container requesting `cpu` and `memory` (either may be absent).
fn app(cpu: Option<&str>, memory: Option<&str>) -> Deployment {
    let mut requests = serde_json::Map::new();
    if let Some(cpu) = cpu {
        requests.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = memory {
        requests.insert("memory".into(), json!(memory));
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "resources": {"requests": requests}}]}
            }
        }
    }))
    .unwrap()
}

/// Policy `name` selecting app=web with sidecars of the given (name, cpu request) pairs.
fn mesh(name: &str, sidecars: &[(&str, Option<&str>)]) -> SidecarPolicy {
    let sidecars: Vec<serde_json::Value> = sidecars
        .iter()
        .map(|(sidecar, cpu)| {
            let resources = match cpu {
                Some(cpu) => json!({"requests": {"cpu": cpu, "memory": "64Mi"}}),
                None => json!({"limits": {"cpu": "1"}}),
            };
            json!({"name": sidecar, "image": "proxy:1.0", "startupProbe": {"exec": {"command": ["true"]}}, "resources": resources})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "sidecars": sidecars}
    }))
    .unwrap()
}

fn hpa(metrics: serde_json::Value) -> Hpa {
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web-hpa", "namespace": "demo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10, "metrics": metrics
        }
    }))
    .unwrap();
    Hpa::of(&hpa).expect("the HPA scales a Deployment")
}

/// A Deployment's autoscalers: `hpa` alone.
fn scaled_by(hpa: Hpa) -> Autoscalers {
    Autoscalers {
        hpas: vec![hpa],
        vpas: vec![],
    }
}

fn cpu_utilization(percent: i32) -> Hpa {
    hpa(
        json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}]),
    )
}

fn vpa(update_mode: &str, containers: &[&str]) -> Vpa {
    let policies: Vec<_> = containers
        .iter()
        .map(|c| json!({"containerName": c, "mode": "Off"}))
        .collect();
    Vpa::of(&json!({
        "apiVersion": "autoscaling.k8s.io/v1", "kind": "VerticalPodAutoscaler",
        "metadata": {"name": "web-vpa", "namespace": "demo"},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "updatePolicy": {"updateMode": update_mode},
            "resourcePolicy": {"containerPolicies": policies}
        }
    }))
    .expect("the VPA sizes a Deployment")
}

/// The warnings the render of `d` against `policies` gets from `autoscalers`, as the controller
/// computes them: from the facts of the Deployment and the record of the plan.
fn warnings(d: &Deployment, policies: &[SidecarPolicy], autoscalers: &Autoscalers) -> Vec<Warning> {
    let set = PolicySet::new(policies, &Guardrails::default());
    let facts = DeploymentFacts::of(d);
    let plan = set.plan(&d.metadata, &facts).expect("the render is not refused");
    autoscaling::warnings(&facts.owner, &set.injected_sidecars(&plan.record), autoscalers)
}

fn messages(warnings: &[Warning]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| format!("{} {}: {}", w.policy, w.field, w.message))
        .collect()
}

#[test]
fn a_cpu_utilization_target_moves_by_the_sidecars_share_of_the_requests() {
    let autoscalers = scaled_by(cpu_utilization(80));
    let found = warnings(
        &app(Some("250m"), Some("256Mi")),
        &[mesh("mesh", &[("proxy", Some("150m"))])],
        &autoscalers,
    );
    assert_eq!(
        messages(&found),
        [
            "mesh spec.sidecars: sidecars \"proxy\" add 150m to the pod's 400m cpu requests: HorizontalPodAutoscaler \"web-hpa\" keeps cpu at 80% of them, so it now scales out at 320m of usage per pod instead of 200m"
        ]
    );
}

#[test]
fn each_policy_hears_of_its_own_share_and_the_whole() {
    let autoscalers = scaled_by(cpu_utilization(50));
    let found = warnings(
        &app(Some("1"), None),
        &[
            mesh("a-mesh", &[("proxy", Some("200m"))]),
            mesh("b-logs", &[("shipper", Some("100m")), ("rotator", Some("100m"))]),
        ],
        &autoscalers,
    );
    assert_eq!(
        messages(&found),
        [
            "a-mesh spec.sidecars: sidecars \"proxy\" add 200m (all injected sidecars: 400m) to the pod's 1400m cpu requests: HorizontalPodAutoscaler \"web-hpa\" keeps cpu at 50% of them, so it now scales out at 700m of usage per pod instead of 500m",
            "b-logs spec.sidecars: sidecars \"shipper\", \"rotator\" add 200m (all injected sidecars: 400m) to the pod's 1400m cpu requests: HorizontalPodAutoscaler \"web-hpa\" keeps cpu at 50% of them, so it now scales out at 700m of usage per pod instead of 500m",
        ]
    );
}

#[test]
fn a_sidecar_without_a_request_under_a_utilization_target_names_the_hpa() {
    let autoscalers = scaled_by(cpu_utilization(80));
    let found = warnings(
        &app(Some("250m"), None),
        &[mesh("mesh", &[("proxy", None)])],
        &autoscalers,
    );
    assert_eq!(
        messages(&found),
        [
            "mesh spec.sidecars[0].resources.requests.cpu: sidecar \"proxy\" requests no cpu, so HorizontalPodAutoscaler \"web-hpa\" cannot compute the pods' cpu utilization and stops scaling on it; set a cpu request"
        ]
    );
}

#[test]
fn an_average_value_target_counts_the_sidecars_usage() {
    let autoscalers = scaled_by(hpa(json!([
        {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "512Mi"}}}
    ])));
    let found = warnings(
        &app(None, None),
        &[mesh("mesh", &[("proxy", Some("10m"))])],
        &autoscalers,
    );
    assert_eq!(
        messages(&found),
        [
            "mesh spec.sidecars: HorizontalPodAutoscaler \"web-hpa\" keeps the pods' average memory usage at 512Mi, which now includes the usage of sidecars \"proxy\" (they request 64Mi)"
        ]
    );
}

#[test]
fn pod_level_requests_are_what_the_utilization_is_measured_against() {
    let mut d = app(Some("250m"), None);
    d.spec.template.spec.as_mut().unwrap().resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "1"}})).unwrap());
    let autoscalers = scaled_by(cpu_utilization(80));
    let found = warnings(&d, &[mesh("mesh", &[("proxy", None)])], &autoscalers);
    assert_eq!(
        messages(&found),
        [
            "mesh spec.sidecars: HorizontalPodAutoscaler \"web-hpa\" keeps cpu at 80% of the pod-level request 1; the usage of sidecars \"proxy\" now counts toward it"
        ]
    );
}

#[test]
fn what_the_sidecars_do_not_change_is_not_warned_of() {
    let none = Autoscalers::default();
    let d = app(Some("250m"), Some("256Mi"));
    let policies = [mesh("mesh", &[("proxy", Some("150m"))])];
    assert!(warnings(&d, &policies, &none).is_empty(), "no autoscaler");

    // A ContainerResource metric measures one container; Pods/External metrics no requests.
    let per_container = hpa(json!([
        {"type": "ContainerResource", "containerResource": {"name": "cpu", "container": "web", "target": {"type": "Utilization", "averageUtilization": 80}}},
        {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}
    ]));
    assert!(per_container.targets.is_empty());
    let autoscalers = scaled_by(per_container);
    assert!(warnings(&d, &policies, &autoscalers).is_empty());

    // The owner's own container lacks the request: the HPA is broken already, not by us.
    let autoscalers = scaled_by(cpu_utilization(80));
    assert!(warnings(&app(None, None), &policies, &autoscalers).is_empty());

    // A policy with no sidecars (a run-to-completion init step) adds nothing an HPA counts.
    let init_only = policy(
        r#"
apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: setup, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  initContainers: [{name: setup, image: "setup:1.0", resources: {requests: {cpu: "2"}}}]
"#,
    );
    assert!(warnings(&d, &[init_only], &autoscalers).is_empty());
}

#[test]
fn a_vpa_that_would_size_the_sidecars_is_warned_of_unless_it_names_them_or_only_recommends() {
    let d = app(Some("250m"), Some("256Mi"));
    let policies = [mesh("mesh", &[("proxy", Some("10m"))])];
    let with = |vpa: Vpa| Autoscalers {
        hpas: vec![],
        vpas: vec![vpa],
    };
    assert_eq!(
        messages(&warnings(&d, &policies, &with(vpa("Auto", &["web"])))),
        [
            "mesh spec.sidecars[0].resources: VerticalPodAutoscaler \"web-vpa\" has no containerPolicy for injected sidecar \"proxy\", so it sizes the sidecar too, over the policy's resources; give it a containerPolicy for \"proxy\" (for example mode: \"Off\")"
        ]
    );
    let star = warnings(&d, &policies, &with(vpa("Recreate", &["*"])));
    assert!(
        star[0].message.contains("by its \"*\" containerPolicy"),
        "{star:?}"
    );
    assert!(warnings(&d, &policies, &with(vpa("Auto", &["web", "proxy"]))).is_empty());
    assert!(warnings(&d, &policies, &with(vpa("Off", &[]))).is_empty());
}

#[test]
fn autoscalers_of_other_kinds_of_targets_are_not_kept() {
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "sts"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"}, "maxReplicas": 3}
    }))
    .unwrap();
    assert_eq!(Hpa::of(&hpa), None);
    let vpa = json!({"metadata": {"name": "x"}, "spec": {"targetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Deployment", "name": "web"}}});
    assert_eq!(Vpa::of(&vpa), None);
}

#[test]
fn the_index_says_which_deployments_to_look_at_again() {
    let mut index = AutoscalerIndex::default();
    let scaling = |deployment: &str| {
        let mut hpa = cpu_utilization(80);
        hpa.deployment = deployment.to_owned();
        Some(Autoscaler::Hpa(hpa))
    };
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(
        index.apply(Kind::Hpa, "demo", "web-hpa", scaling("web")),
        set(&["web"])
    );
    assert_eq!(
        index.apply(Kind::Hpa, "demo", "web-hpa", scaling("web")),
        set(&[]),
        "unchanged"
    );
    assert_eq!(index.of("demo", "web").hpas.len(), 1);
    assert!(index.of("other", "web").hpas.is_empty(), "namespaced");

    // Retargeted: both the old and the new Deployment change.
    assert_eq!(
        index.apply(Kind::Hpa, "demo", "web-hpa", scaling("api")),
        set(&["api", "web"])
    );
    assert!(index.of("demo", "web").hpas.is_empty());

    let sized = Some(Autoscaler::Vpa(vpa("Auto", &[])));
    assert_eq!(index.apply(Kind::Vpa, "demo", "web-vpa", sized), set(&["web"]));
    assert_eq!(index.len(), 2);

    // A relist of HPAs that no longer has it forgets it, and leaves the VPAs alone.
    let touched = index.replace(Kind::Hpa, Vec::new());
    assert_eq!(touched, BTreeSet::from([("demo".to_owned(), "api".to_owned())]));
    assert_eq!(index.len(), 1);
    assert_eq!(index.of("demo", "web").vpas.len(), 1);

    assert_eq!(index.apply(Kind::Vpa, "demo", "web-vpa", None), set(&["web"]));
    assert!(index.is_empty());
}

/// The status of `policy` (of namespace demo) from what `index` holds.
fn status_of(
    policy: &SidecarPolicy,
    set: &PolicySet,
    index: &OutcomeIndex,
) -> sidecar_api::SidecarPolicyStatus {
    let name = policy.metadata.name.as_deref().unwrap();
    let summary = index.summary("demo", name, set.revision(name).unwrap());
    from_summary(policy, set, &summary, None, &Time(Timestamp::UNIX_EPOCH))
}

#[test]
fn the_warnings_of_deployments_reach_the_status_of_the_policies_they_concern() {
    let mut policies = vec![mesh("mesh", &[("proxy", Some("150m"))])];
    policies[0].metadata.generation = Some(1);
    let set = PolicySet::new(&policies, &Guardrails::default());
    let revision = set.revision("mesh").unwrap().to_owned();
    let warning = |policy: &str, message: &str| Warning {
        policy: policy.to_owned(),
        field: "spec.sidecars".to_owned(),
        message: message.to_owned(),
    };
    let outcome = |warnings: Vec<Warning>| Outcome {
        selected: vec!["mesh".to_owned()],
        carried: vec![("mesh".to_owned(), revision.clone())],
        state: State::Applied,
        held: false,
        progress: Progress::Complete,
        warnings,
    };
    let mut index = OutcomeIndex::default();
    index.record("demo", "api", outcome(vec![]));
    let touched = index.record(
        "demo",
        "web",
        outcome(vec![warning("mesh", "skewed"), warning("other", "not ours")]),
    );
    assert!(touched.contains("mesh"));
    let status = status_of(&policies[0], &set, &index);
    let warnings = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::WARNINGS)
        .expect("a Warnings condition");
    assert_eq!(warnings.reason, reasons::DEPLOYMENT_WARNINGS);
    assert_eq!(warnings.message, "Deployment \"web\": spec.sidecars: skewed");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .unwrap();
    assert_eq!(ready.status, "True", "warnings are never held against Ready");

    // The warning goes when the Deployment's outcome no longer has it.
    assert!(index.record("demo", "web", outcome(vec![])).contains("mesh"));
    let status = status_of(&policies[0], &set, &index);
    assert!(status.conditions.iter().all(|c| c.type_ != conditions::WARNINGS));
}

#[test]
fn a_policys_own_warnings_come_first_in_the_same_condition() {
    let mut own = mesh("mesh", &[("proxy", Some("150m"))]);
    own.spec.sidecars[0].startup_probe = None;
    let set = PolicySet::new(std::slice::from_ref(&own), &Guardrails::default());
    let mut index = OutcomeIndex::default();
    index.record(
        "demo",
        "web",
        Outcome {
            selected: vec!["mesh".to_owned()],
            carried: vec![],
            state: State::Pending,
            held: false,
            progress: Progress::Complete,
            warnings: vec![Warning {
                policy: String::new(),
                field: "metadata.annotations[\"sidecar.dev/inject\"]".to_owned(),
                message: "value \"no\" is neither \"true\" nor \"false\"".to_owned(),
            }],
        },
    );
    let status = status_of(&own, &set, &index);
    let warnings = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::WARNINGS)
        .unwrap();
    assert_eq!(warnings.reason, reasons::POLICY_WARNINGS);
    assert!(
        warnings.message.starts_with("spec.sidecars[0].startupProbe: sidecar \"proxy\" has no startupProbe")
            && warnings.message.ends_with(
                "; Deployment \"web\": metadata.annotations[\"sidecar.dev/inject\"]: value \"no\" is neither \"true\" nor \"false\""
            ),
        "{}",
        warnings.message
    );
}

#[test]
fn the_requests_are_the_owners_app_containers_and_native_sidecars_only() {
    let d = deployment(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    spec:
      initContainers:
      - {name: migrate, image: "m:1", resources: {requests: {cpu: "4"}}}
      - {name: agent, image: "a:1", restartPolicy: Always, resources: {requests: {cpu: 100m, memory: 1Gi}}}
      containers:
      - {name: web, image: "w:1", resources: {requests: {cpu: 250m}}}
      - {name: cache, image: "c:1", resources: {requests: {cpu: "0.5", memory: 1Gi}}}
"#,
    );
    let injected = common::rendered(&d, &[mesh("mesh", &[("proxy", Some("150m"))])]);
    for d in [&d, &injected] {
        let requests = &DeploymentFacts::of(d).owner.requests;
        assert_eq!(
            requests["cpu"].total, 850,
            "web + cache + agent, not migrate nor proxy"
        );
        assert_eq!(requests["cpu"].without, None);
        assert_eq!(requests["memory"].total, 2 * (1 << 30) * 1000);
        assert_eq!(requests["memory"].without.as_deref(), Some("web"));
    }
}
