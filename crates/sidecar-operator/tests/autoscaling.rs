//! HorizontalPodAutoscalers against a mocked API server: what their watch events trigger, and
//! how the warnings of the sidecars they skew reach the Deployment (an Event, once) and the
//! policy's status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::Event;
use serde_json::json;
use sidecar_api::conditions;
use sidecar_core::Guardrails;
use sidecar_core::status::reasons;

/// HPA `name` scaling Deployment `target` of namespace demo at 80% CPU utilization.
fn hpa(name: &str, target: &str) -> HorizontalPodAutoscaler {
    serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))
    .unwrap()
}

/// Deployment `web` whose app container requests 90m of CPU.
fn requesting() -> Deployment {
    let mut d = deployment();
    let spec = d.spec.template.spec.as_mut().unwrap();
    spec.containers[0].resources = Some(serde_json::from_value(json!({"requests": {"cpu": "90m"}})).unwrap());
    d
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test]
async fn an_hpa_triggers_the_deployments_it_scaled_and_scales_when_that_changes() {
    let mut h = Harness::new(vec![policy("shipper")], vec![deployment(), named("api", "web")]);
    h.triggered();

    h.hpa_event(Event::Apply(hpa("web-hpa", "web")));
    assert_eq!(h.triggered().0, strings(&["web"]));
    h.hpa_event(Event::Apply(hpa("web-hpa", "web")));
    assert_eq!(
        h.triggered().0,
        strings(&[]),
        "unchanged (a status update): nothing"
    );

    h.hpa_event(Event::Apply(hpa("web-hpa", "api")));
    assert_eq!(h.triggered().0, strings(&["api", "web"]), "retargeted: both");

    // A relist that no longer has it: the Deployment it scaled.
    for event in [Event::Init, Event::InitDone] {
        h.hpa_event(event);
    }
    assert_eq!(h.triggered().0, strings(&["api"]));

    h.hpa_event(Event::Apply(hpa("web-hpa", "web")));
    h.triggered();
    h.hpa_event(Event::Delete(hpa("web-hpa", "web")));
    assert_eq!(h.triggered().0, strings(&["web"]));
    assert!(h.ctx.autoscalers_of("demo", "web").hpas.is_empty());
}

#[tokio::test]
async fn an_hpa_skew_is_one_event_on_the_deployment_and_a_line_in_the_policys_status() {
    let policies = vec![policy("shipper")];
    let mut h = Harness::with(
        policies
            .iter()
            .cloned()
            .map(|p| DeserializeGuard(Ok(p)))
            .collect(),
        vec![stored(&requesting(), &policies)],
        vec![revision_of(&policies[0], 1)],
        Guardrails::default(),
    );
    h.hpa_event(Event::Apply(hpa("web-hpa", "web")));

    // Up to date: no write, only the warning, once.
    h.reconcile("web", |mut handle| async move {
        let (event, send) = expect_event_create(&mut handle).await;
        respond(send, &event);
        assert_eq!(event["reason"], reasons::SIDECAR_WARNINGS);
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["regarding"]["kind"], "Deployment");
        assert_eq!(
            event["note"],
            "SidecarPolicy \"shipper\" spec.sidecars: sidecars \"shipper\" add 10m to the pod's 100m cpu requests: HorizontalPodAutoscaler \"web-hpa\" keeps cpu at 80% of them, so it now scales out at 80m of usage per pod instead of 72m"
        );
        handle
    })
    .await
    .unwrap();
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    assert_eq!(h.ctx.outcomes().get("demo", "web").unwrap().warnings.len(), 1);

    h.reconcile_policy("shipper", |mut handle| async move {
        let (status, _, send) = expect_status(&mut handle).await;
        respond(send, &policy("shipper"));
        let warnings = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == conditions::WARNINGS)
            .expect("a Warnings condition")
            .clone();
        assert_eq!(warnings["reason"], reasons::DEPLOYMENT_WARNINGS);
        assert!(
            warnings["message"]
                .as_str()
                .unwrap()
                .starts_with("Deployment \"web\": spec.sidecars: sidecars \"shipper\" add 10m"),
            "{warnings}"
        );
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == conditions::READY)
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "True", "a warning is not held against Ready");
        handle
    })
    .await
    .unwrap();

    // The HPA goes: the Deployment is looked at again and its warnings go, with no Event.
    h.hpa_event(Event::Delete(hpa("web-hpa", "web")));
    assert_eq!(h.triggered().0, strings(&["web"]));
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    assert!(h.ctx.outcomes().get("demo", "web").unwrap().warnings.is_empty());
}
