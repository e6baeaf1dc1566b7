//! ClusterSidecarPolicies against a mocked API server: what their events and namespace label
//! changes trigger, the Deployment reconcile that injects their sidecars, and their status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use common::*;
use http::Method;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::Event;
use sidecar_api::ClusterSidecarPolicy;
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{Guardrails, InjectionRecord, PolicySet};

const MESH: &[(&str, &str)] = &[("mesh", "enabled")];

/// The revision of ClusterSidecarPolicy `policy`.
fn cluster_revision(policy: &ClusterSidecarPolicy) -> String {
    PolicySet::for_cluster_policy(policy, &Guardrails::default())
        .revision(&sidecar_core::cluster::key(
            policy.metadata.name.as_deref().unwrap(),
        ))
        .unwrap()
        .to_owned()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// `web` and `api` (app=web), `db` (app=db) in demo, and `elsewhere` (app=web) in other.
fn fleet() -> Vec<k8s_openapi::api::apps::v1::Deployment> {
    let mut elsewhere = named("elsewhere", "web");
    elsewhere.metadata.namespace = Some("other".into());
    vec![deployment(), named("api", "web"), named("db", "db"), elsewhere]
}

/// A harness with `deployments`, namespace demo labelled `mesh: enabled`, other not.
fn harness(deployments: Vec<k8s_openapi::api::apps::v1::Deployment>) -> Harness {
    let mut h = Harness::new(vec![], deployments);
    h.list_namespaces(vec![namespace("demo", MESH), namespace("other", &[])]);
    h.triggered();
    h.triggered_cluster_policies();
    h
}

#[tokio::test]
async fn a_cluster_policy_triggers_what_it_selects_in_the_namespaces_it_selects() {
    let mut h = harness(fleet());
    h.cluster_policy_event(Event::Apply(DeserializeGuard(Ok(cluster_policy(
        "mesh", "proxy",
    )))));
    let (deployments, policies) = h.triggered();
    assert_eq!(deployments, strings(&["api", "web"]), "app=web in demo only");
    assert!(policies.is_empty());
    assert_eq!(h.triggered_cluster_policies(), ["mesh"]);

    // The same generation again (a status write): nothing.
    let mut with_status = cluster_policy("mesh", "proxy");
    with_status.status = Some(Default::default());
    h.cluster_policy_event(Event::Apply(DeserializeGuard(Ok(with_status))));
    assert_eq!(h.triggered(), (vec![], vec![]));
    assert!(h.triggered_cluster_policies().is_empty());
}

#[tokio::test]
async fn a_namespace_that_gains_the_label_is_rendered_and_the_cluster_status_recounted() {
    let mut h = harness(fleet());
    h.list_cluster_policies(vec![cluster_policy("mesh", "proxy")]);
    h.triggered();
    h.triggered_cluster_policies();

    h.namespace_event(Event::Apply(namespace("other", MESH)));
    assert_eq!(h.triggered().0, ["elsewhere"]);
    assert_eq!(h.triggered_cluster_policies(), ["mesh"]);

    // Unchanged labels (any other metadata update): nothing.
    h.namespace_event(Event::Apply(namespace("other", MESH)));
    assert_eq!(h.triggered(), (vec![], vec![]));
    assert!(h.triggered_cluster_policies().is_empty());

    // The namespace's prepared policies were rebuilt: the cluster policy now applies there.
    let set = h.ctx.namespace_policies("other");
    let names: Vec<_> = set
        .set
        .policies()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["ClusterSidecarPolicy/mesh"]);
}

#[tokio::test]
async fn without_cluster_policies_a_namespace_label_change_triggers_no_deployment() {
    let mut h = harness(fleet());
    h.namespace_event(Event::Apply(namespace("other", MESH)));
    assert_eq!(h.triggered(), (vec![], vec![]));
}

#[tokio::test]
async fn the_reconcile_injects_a_cluster_policy_and_records_it_by_kind() {
    let mut h = harness(vec![deployment()]);
    h.list_cluster_policies(vec![cluster_policy("mesh", "proxy")]);
    let result = h
        .reconcile("web", |mut handle| async move {
            let (body, send) = expect_apply(&mut handle).await;
            let init = &body["spec"]["template"]["spec"]["initContainers"];
            assert_eq!(init[0]["name"], "proxy", "{body}");
            assert_eq!(init[0]["restartPolicy"], "Always");
            let record = body["metadata"]["annotations"]["sidecar.dev/injected"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                record.contains("\"name\":\"ClusterSidecarPolicy/mesh\""),
                "{record}"
            );
            respond(send, &stored_with(&cluster_policy("mesh", "proxy")));
            let (event, send) = expect_event_create(&mut handle).await;
            assert_eq!(event["reason"], "SidecarsInjected");
            let note = event["note"].as_str().unwrap().to_owned();
            assert!(note.contains("from ClusterSidecarPolicy \"mesh\""), "{note}");
            respond(send, &event);
            handle
        })
        .await;
    result.unwrap();
}

/// `web` as the operator leaves it with ClusterSidecarPolicy `policy` in labelled demo.
fn stored_with(policy: &ClusterSidecarPolicy) -> k8s_openapi::api::apps::v1::Deployment {
    let mut ns = NamespaceLabels::named("demo");
    ns.labels.insert("mesh".into(), "enabled".into());
    let set = PolicySet::for_namespace(
        &ns,
        &[],
        std::slice::from_ref(policy),
        &Exclusions::default(),
        &Guardrails::default(),
    );
    let mut d = set.render(&deployment()).unwrap().deployment;
    d.metadata.resource_version = Some("8".into());
    d.metadata.generation = Some(2);
    d
}

#[tokio::test]
async fn the_cluster_status_counts_namespaces_and_deployments_and_is_written_once() {
    let mesh = cluster_policy("mesh", "proxy");
    let mut h = harness(vec![stored_with(&mesh)]);
    h.list_cluster_policies(vec![mesh]);
    h.reconcile("web", |handle| async move { handle }).await.unwrap();
    assert!(h.ctx.outcomes_synced());

    let hash = cluster_revision(&cluster_policy("mesh", "proxy"));
    let status = h
        .reconcile_cluster_policy("mesh", |mut handle| async move {
            // Its first revision, in the operator's namespace.
            let (request, body, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/apps/v1/namespaces/default/controllerrevisions"
            );
            assert_eq!(
                body["metadata"]["name"],
                format!("clustersidecarpolicy.mesh-{hash}")
            );
            assert_eq!(body["metadata"]["labels"]["sidecar.dev/policy"], "mesh");
            assert_eq!(
                body["metadata"]["labels"]["sidecar.dev/policy-kind"],
                "ClusterSidecarPolicy"
            );
            let owner = &body["metadata"]["ownerReferences"][0];
            assert_eq!(
                (owner["kind"].as_str(), owner["uid"].as_str()),
                (Some("ClusterSidecarPolicy"), Some("uid-mesh"))
            );
            respond(send, &body);

            let (request, body, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/sidecar.dev/v1alpha1/clustersidecarpolicies/mesh/status"
            );
            let status = &body["status"];
            assert_eq!(status["matchedNamespaces"], 1, "{status}");
            assert_eq!(status["currentRevision"], hash.as_str());
            assert_eq!(status["matchedDeployments"], 1);
            assert_eq!(status["upToDateDeployments"], 1);
            assert_eq!(status["progress"], "1/1");
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "True", "{status}");
            respond(send, &cluster_policy("mesh", "proxy"));
            handle
        })
        .await;
    status.unwrap();
    // Written already (the cache does not show it yet): not written twice.
    h.reconcile_cluster_policy("mesh", |handle| async move { handle })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_conflict_with_a_namespaced_policy_blocks_the_cluster_policy_naming_both() {
    let mesh = cluster_policy("mesh", "proxy");
    let mut h = Harness::new(vec![policy_named("team-proxy", "proxy")], vec![deployment()]);
    h.list_namespaces(vec![namespace("demo", MESH)]);
    h.list_cluster_policies(vec![mesh]);
    // Refused: a Warning Event on the Deployment naming both, and one on the policy at fault
    // (the one that comes second in injection order: the namespaced one).
    h.reconcile("web", |mut handle| async move {
        let (event, send) = expect_event_create(&mut handle).await;
        let note = event["note"].as_str().unwrap().to_owned();
        assert!(note.contains("ClusterSidecarPolicy \"mesh\""), "{note}");
        assert!(note.contains("SidecarPolicy \"team-proxy\""), "{note}");
        respond(send, &event);
        let (event, send) = expect_event_create(&mut handle).await;
        assert_eq!(event["regarding"]["name"], "team-proxy", "{event}");
        respond(send, &event);
        handle
    })
    .await
    .unwrap();
    let outcome = h.ctx.outcomes().get("demo", "web").cloned().unwrap();
    let record = InjectionRecord::default();
    assert_eq!(outcome.carried, record.carried(), "nothing applied");

    let status = h
        .reconcile_cluster_policy("mesh", |mut handle| async move {
            let (request, body, send) = next(&mut handle).await;
            assert_eq!(request.method(), Method::POST, "its first revision");
            respond(send, &body);
            let (_, body, send) = next(&mut handle).await;
            let status = &body["status"];
            // The namespaced policy comes second, so the conflict is its own; the cluster
            // policy is blocked by it, and says by whom, where.
            let ready = &status["conditions"][0];
            assert_eq!(ready["type"], "Ready");
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "BlockedByOtherPolicy", "{status}");
            let message = ready["message"].as_str().unwrap();
            assert!(message.contains("Deployment \"demo/web\""), "{message}");
            assert!(message.contains("SidecarPolicy \"team-proxy\""), "{message}");
            assert!(message.contains("ClusterSidecarPolicy \"mesh\""), "{message}");
            assert_eq!(status["upToDateDeployments"], 0);
            respond(send, &cluster_policy("mesh", "proxy"));
            handle
        })
        .await;
    status.unwrap();
}

/// ControllerRevision `number` of ClusterSidecarPolicy `policy`, as the operator stores it.
fn stored_revision(
    policy: &ClusterSidecarPolicy,
    number: i64,
) -> k8s_openapi::api::apps::v1::ControllerRevision {
    let hash = cluster_revision(policy);
    let name = policy.metadata.name.clone().unwrap();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": sidecar_operator::controller::cluster_revision_name(&name, &hash),
            "namespace": "default",
            "labels": {
                "sidecar.dev/policy": name, "sidecar.dev/revision": hash,
                "sidecar.dev/policy-kind": "ClusterSidecarPolicy",
            },
            "ownerReferences": [{
                "apiVersion": "sidecar.dev/v1alpha1", "kind": "ClusterSidecarPolicy",
                "name": name, "uid": format!("uid-{name}"), "controller": true,
            }],
        },
        "data": {"spec": sidecar_core::revision::content(&policy.spec.policy)},
        "revision": number,
    }))
    .unwrap()
}

/// `web` of `namespace` carrying `policy`, one replica, its own rollout complete.
fn running_in(namespace: &str, policy: &ClusterSidecarPolicy) -> k8s_openapi::api::apps::v1::Deployment {
    let mut d = stored_with(policy);
    d.metadata.namespace = Some(namespace.into());
    d.metadata.uid = Some(format!("uid-{namespace}-web"));
    d.spec.replicas = Some(1);
    d.status = Some(
        serde_json::from_value(serde_json::json!({
            "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
        }))
        .unwrap(),
    );
    d
}

#[tokio::test]
async fn a_new_revision_rolls_out_across_namespaces_one_at_a_time() {
    let old = cluster_policy("mesh", "proxy");
    let mut new = old.clone();
    new.spec.policy.sidecars[0].image = Some("proxy:2".into());
    new.metadata.generation = Some(2);
    new.spec.policy.rollout = Some(serde_json::from_value(serde_json::json!({"maxConcurrent": 1})).unwrap());
    let (r1, r2) = (cluster_revision(&old), cluster_revision(&new));
    assert_ne!(r1, r2);

    let mut h = Harness::with(
        vec![],
        vec![running_in("demo", &old), running_in("other", &old)],
        vec![stored_revision(&old, 1), stored_revision(&new, 2)],
        Guardrails::default(),
    );
    h.list_namespaces(vec![namespace("demo", MESH), namespace("other", MESH)]);
    h.list_cluster_policies(vec![new]);
    let key = "ClusterSidecarPolicy/mesh".to_owned();
    for namespace in ["demo", "other"] {
        // Rendered against the revision it carries (from the stored revision): nothing written.
        let view = h
            .ctx
            .caches
            .deployments
            .get(&kube::runtime::reflector::ObjectRef::new("web").within(namespace))
            .unwrap();
        let task = tokio::spawn(sidecar_operator::controller::reconcile(view, h.ctx.clone()));
        task.await.unwrap().unwrap();
        let outcome = h.ctx.outcomes().get(namespace, "web").cloned().unwrap();
        assert_eq!(outcome.carried, [(key.clone(), r1.clone())], "{namespace}");
    }
    h.triggered();

    let expected = r2.clone();
    h.reconcile_cluster_policy("mesh", |mut handle| async move {
        let (_, body, send) = next(&mut handle).await;
        let status = &body["status"];
        assert_eq!(status["currentRevision"], expected.as_str());
        assert_eq!(status["progress"], "0/2");
        assert_eq!(
            (
                status["rollingDeployments"].as_i64(),
                status["waitingDeployments"].as_i64()
            ),
            (Some(1), Some(1)),
            "{status}"
        );
        respond(send, &cluster_policy("mesh", "proxy"));
        handle
    })
    .await
    .unwrap();
    // One Deployment is let go, in (namespace, name) order: demo/web.
    let triggered: Vec<_> = std::iter::from_fn(|| h.streams.deployments.try_recv().ok())
        .map(|r| (r.namespace.unwrap_or_default(), r.name))
        .collect();
    assert_eq!(triggered, [("demo".to_owned(), "web".to_owned())]);
}
