//! End-to-end tests of the fleet bookkeeping against a real API server: status that follows other
//! policies, revisions as ControllerRevisions, records of the first release migrated without a
//! rollout, and a restart that writes nothing. How the API server is chosen: see `e2e.rs`.
//!
//! Nothing here asserts a duration: waits poll the API until a condition holds, and give up
//! (failing the test) only after a generous number of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{INJECTED_ANNOTATION, SidecarPolicy};
use sidecar_core::{Guardrails, InjectionRecord, Rendered, apply_patch};
use sidecar_operator::controller::{FIELD_MANAGER, revision_name};

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod operator;
}
use support::cluster::{TestNamespace, cluster, dump, example, install_crd, wait_for};
use support::operator::{event_writes, init_names, operator_written, start_operator};

/// A Deployment labelled `app: web`, with no replicas (no node is needed).
fn web(namespace: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    })
}

/// A policy `name` selecting app=web with one sidecar `sidecar` of `image`.
fn agent_policy(name: &str, namespace: &str, sidecar: &str, image: &str) -> Value {
    json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": sidecar, "image": image,
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}},
            }],
        },
    })
}

fn ready(policy: &SidecarPolicy) -> Option<(String, String, String)> {
    let condition = policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

#[tokio::test]
async fn a_policy_that_starts_to_conflict_shows_on_the_other_policys_status() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "interact").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");
    deployments
        .patch("web", &owner, &Patch::Apply(web(&ns.name)))
        .await
        .unwrap();
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;

    let p1 = agent_policy("p1", &ns.name, "agent", "busybox:1.36");
    policies.patch("p1", &owner, &Patch::Apply(&p1)).await.unwrap();
    wait_for("p1 injected and Ready", || async {
        let policy = policies.get("p1").await.ok()?;
        let live = deployments.get("web").await.ok()?;
        (ready(&policy)?.0 == "True" && init_names(&live) == ["agent"]).then_some(())
    })
    .await;

    // p2 asks for a sidecar of the same name: web cannot take both. Nothing about p1 or web
    // changes, yet p1's status must say that p2 now blocks its Deployment.
    let p2 = agent_policy("p2", &ns.name, "agent", "busybox:1.37");
    policies.patch("p2", &owner, &Patch::Apply(&p2)).await.unwrap();
    let (_, reason, message) = wait_for("p1 to show that p2 blocks web", || async {
        let policy = policies.get("p1").await.ok()?;
        ready(&policy).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(reason, "BlockedByOtherPolicy", "{message}");
    assert!(
        message.contains("Deployment \"web\"") && message.contains("\"p2\""),
        "{message}\n{}",
        dump(&client, &ns.name).await
    );
    let p2_status = wait_for("p2 in conflict", || async {
        ready(&policies.get("p2").await.ok()?).filter(|(status, _, _)| status == "False")
    })
    .await;
    assert_eq!(p2_status.1, "Conflict", "{}", p2_status.2);
    let live = deployments.get("web").await.unwrap();
    assert_eq!(init_names(&live), ["agent"], "the refused render changed nothing");

    // p2 goes: p1 is Ready again.
    policies.delete("p2", &DeleteParams::default()).await.unwrap();
    wait_for("p1 Ready again", || async {
        (ready(&policies.get("p1").await.ok()?)?.0 == "True").then_some(())
    })
    .await;
    operator.abort();
}

#[tokio::test]
async fn revisions_are_controller_revisions_the_record_names() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "revisions").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");
    deployments
        .patch("web", &owner, &Patch::Apply(web(&ns.name)))
        .await
        .unwrap();
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;

    // Each content is a revision; the Deployment's record names the one it carries.
    let contents = ["busybox:1.36", "busybox:1.37", "busybox:1.36"];
    let mut seen = Vec::new();
    for (step, image) in contents.iter().enumerate() {
        let policy = agent_policy("agent", &ns.name, "agent", image);
        policies
            .patch("agent", &owner, &Patch::Apply(&policy))
            .await
            .unwrap();
        let typed: SidecarPolicy = serde_json::from_value(policy).unwrap();
        let hash = sidecar_core::revision::of(&typed);
        wait_for(
            &format!("step {step}: status and record at revision {hash}"),
            || async {
                let status = policies.get("agent").await.ok()?.status?;
                let live = deployments.get("web").await.ok()?;
                let record = InjectionRecord::read(&live).ok()??;
                let carried = record.entry("agent")?.revision.clone();
                (status.current_revision.as_deref() == Some(hash.as_str()) && carried == hash).then_some(())
            },
        )
        .await;
        let stored = wait_for("the ControllerRevision", || async {
            revisions.get_opt(&revision_name("agent", &hash)).await.ok()?
        })
        .await;
        assert_eq!(stored.labels()["sidecar.dev/policy"], "agent");
        assert_eq!(stored.labels()["sidecar.dev/revision"], hash);
        assert_eq!(stored.owner_references()[0].kind, "SidecarPolicy");
        assert_eq!(stored.data.0["spec"]["sidecars"][0]["image"], *image);
        seen.push((hash, stored));
    }
    // Going back to the first content reused its revision and numbered it last.
    assert_eq!(seen[0].0, seen[2].0);
    let numbers = wait_for("the first revision renumbered", || async {
        let listed = revisions
            .list(&ListParams::default().labels("sidecar.dev/policy=agent"))
            .await
            .ok()?;
        let mut numbers: Vec<(i64, String)> = listed
            .items
            .iter()
            .map(|r| {
                (
                    r.revision.unwrap_or_default(),
                    r.labels()["sidecar.dev/revision"].clone(),
                )
            })
            .collect();
        numbers.sort();
        (numbers.len() == 2 && numbers[1].1 == seen[0].0).then_some(numbers)
    })
    .await;
    assert_eq!(numbers[0], (2, seen[1].0.clone()), "{numbers:?}");
    assert_eq!(numbers[1].0, 3, "{numbers:?}");

    // The revisions go with their policy (the garbage collector deletes what it owns).
    policies.delete("agent", &DeleteParams::default()).await.unwrap();
    if cluster.has_controllers("revisions are garbage-collected with their policy") {
        wait_for("the revisions garbage-collected", || async {
            let listed = revisions
                .list(&ListParams::default().labels("sidecar.dev/policy=agent"))
                .await
                .ok()?;
            listed.items.is_empty().then_some(())
        })
        .await;
    }
    operator.abort();
}

/// ReplicaSets of Deployment `web`, by name, with their pod-template-hash.
async fn replica_sets(client: &Client, namespace: &str) -> Vec<(String, String)> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let mut sets: Vec<(String, String)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| {
            let hash = rs.labels().get("pod-template-hash").cloned().unwrap_or_default();
            (rs.name_any(), hash)
        })
        .collect();
    sets.sort();
    sets
}

#[tokio::test]
async fn a_record_of_the_first_release_is_migrated_without_a_rollout() {
    let Some(cluster) = cluster().await else { return };
    if !cluster.has_controllers("a_record_of_the_first_release_is_migrated_without_a_rollout") {
        return;
    }
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "migrate").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    // The Deployment as the first release left it: the owner's manifest, and the first release's
    // apply of what it owned, with its version-less record.
    deployments
        .patch(
            "shop",
            &owner,
            &Patch::Apply(example("u1-log-shipping", "deployment.yaml", &ns.name)),
        )
        .await
        .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v0/u1-log-shipping/rendered.yaml");
    let mut v0: Deployment = serde_norway::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    v0.metadata.namespace = Some(ns.name.clone());
    let v0_record = v0.annotations()[INJECTED_ANNOTATION].clone();
    let record = InjectionRecord::read(&v0).unwrap().unwrap();
    assert!(record.is_legacy());
    let mut first_release = apply_patch(&Rendered {
        deployment: v0.clone(),
        record,
        warnings: Vec::new(),
    });
    first_release["metadata"]["annotations"][INJECTED_ANNOTATION] = json!(v0_record);
    deployments
        .patch(
            "shop",
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&first_release),
        )
        .await
        .unwrap();
    policies
        .patch(
            "log-shipper",
            &owner,
            &Patch::Apply(example("u1-log-shipping", "policy.yaml", &ns.name)),
        )
        .await
        .unwrap();
    // The owner's apply and then the first release's may have made two ReplicaSets (the double
    // rollout the admission hold is for); the Deployment controller must have seen the second.
    let before = wait_for("the Deployment controller to catch up", || async {
        let live = deployments.get("shop").await.ok()?;
        let observed = live.status.as_ref()?.observed_generation?;
        let sets = replica_sets(&client, &ns.name).await;
        (observed == live.metadata.generation? && !sets.is_empty()).then_some((live, sets))
    })
    .await;
    assert_eq!(init_names(&before.0), ["log-forwarder"]);

    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    let migrated = wait_for("the record rewritten as version 1", || async {
        let live = deployments.get("shop").await.ok()?;
        live.annotations()
            .get(INJECTED_ANNOTATION)?
            .starts_with(r#"{"version":1,"#)
            .then_some(live)
    })
    .await;
    // The spec is untouched. (The generation still moves: the API server bumps a Deployment's
    // generation when its annotations change, since it copies them to the ReplicaSet; the pod
    // template, and so the pod-template-hash, stay.)
    assert_eq!(
        serde_json::to_value(&migrated.spec).unwrap(),
        serde_json::to_value(&before.0.spec).unwrap(),
        "the spec changed\n{}",
        dump(&client, &ns.name).await
    );
    wait_for("the Deployment controller to see the migration", || async {
        let live = deployments.get("shop").await.ok()?;
        (live.status?.observed_generation? >= migrated.metadata.generation?).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replica_sets(&client, &ns.name).await,
        before.1,
        "no new ReplicaSet: nothing rolled"
    );
    operator.abort();
}

#[tokio::test]
async fn a_restart_over_injected_deployments_writes_nothing() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "restart").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");
    for i in 0..5 {
        let mut d = web(&ns.name);
        d["metadata"]["name"] = json!(format!("web-{i}"));
        deployments
            .patch(&format!("web-{i}"), &owner, &Patch::Apply(&d))
            .await
            .unwrap();
    }
    // One Deployment the policy cannot take: refused, with its Events, before and after.
    let mut clash = web(&ns.name);
    clash["metadata"]["name"] = json!("clash");
    clash["spec"]["template"]["spec"]["containers"][0]["name"] = json!("agent");
    deployments
        .patch("clash", &owner, &Patch::Apply(&clash))
        .await
        .unwrap();
    policies
        .patch(
            "agent",
            &owner,
            &Patch::Apply(agent_policy("agent", &ns.name, "agent", "busybox:1.36")),
        )
        .await
        .unwrap();
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    let settled = || async {
        let policy = policies.get("agent").await.ok()?;
        let status = policy.status.as_ref()?;
        (status.matched_deployments == 6 && status.up_to_date_deployments == 5).then_some(policy)
    };
    wait_for("five injected, one in conflict", settled).await;
    // Events follow the writes they report: five injections, and the refusal on the Deployment
    // and on the policy.
    wait_for("the first process's Events", || async {
        (event_writes(&client, &ns.name).await == 7).then_some(())
    })
    .await;
    operator.abort();

    let snapshot = || async {
        let listed = deployments.list(&ListParams::default()).await.unwrap();
        let written: Vec<Value> = listed.items.iter().map(operator_written).collect();
        let policy = policies.get("agent").await.unwrap();
        (written, policy.status, policy.metadata.managed_fields)
    };
    let before = snapshot().await;
    let events_before = event_writes(&client, &ns.name).await;

    // A new operator process over the same cluster: it must verify everything and write nothing.
    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = snapshot().await;
    assert_eq!(after.0, before.0, "a Deployment written after the restart");
    assert_eq!(after.1, before.1, "the status rewritten after the restart");
    assert_eq!(after.2, before.2, "the status rewritten after the restart");
    // Nothing is reported again: the refusal was reported by the first process already.
    assert_eq!(
        event_writes(&client, &ns.name).await,
        events_before,
        "Events written after the restart"
    );
    operator.abort();
}
