//! End-to-end tests against a real API server.
//!
//! Runs against an existing cluster when `SIDECAR_E2E_KUBECONFIG` names a kubeconfig (Kubernetes
//! 1.29 or newer, for native sidecars), or against a throwaway control plane per test when
//! `KUBEBUILDER_ASSETS` names a directory with `kube-apiserver` and `etcd`; with neither it prints
//! one line saying it is skipped and passes. Each test creates its own namespace, runs the
//! operator in-process for that namespace only, and prints the objects it looked at when it
//! fails. Run: `just e2e`.
//!
//! Nothing here asserts a duration: waits poll the API until a condition holds, and give up
//! (failing the test) only after a generous number of attempts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};

mod support {
    pub mod cluster;
    pub mod control_plane;
    pub mod kstatus;
    pub mod operator;
}
use serde_json::json;
use sidecar_api::{INJECTED_ANNOTATION, SidecarPolicy};
use sidecar_core::Guardrails;
use sidecar_operator::controller;
use support::cluster::{Cluster, TestNamespace, cluster, dump, example, install_crd, wait_for};
use support::kstatus::kstatus;
use support::operator::{
    all_guardrails_off, event_writes, init_names, managers, operator_events, operator_written, start_operator,
};

#[tokio::test]
async fn every_use_case_is_injected_in_order_and_removed_exactly() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "usecases").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    let examples = [
        "u1-log-shipping",
        "u2-stdout-via-shared-pid",
        "u3-localhost-client",
        "u4-tls-proxy",
        "u5-metrics-exporter",
        "u6-config-reload",
        "u7-secret-sidecar",
        "u8-service-mesh-proxy",
    ];
    // The owner's Deployments first, before the operator runs: this is what removal must restore.
    let mut originals = Vec::new();
    for name in examples {
        let d = example(name, "deployment.yaml", &ns.name);
        let stored = deployments
            .patch(d["metadata"]["name"].as_str().unwrap(), &owner, &Patch::Apply(&d))
            .await
            .unwrap();
        originals.push((name, stored));
    }
    let operator = start_operator(&client, &ns.name, all_guardrails_off()).await;

    for (name, original) in &originals {
        let policy = example(name, "policy.yaml", &ns.name);
        policies
            .patch(
                policy["metadata"]["name"].as_str().unwrap(),
                &owner,
                &Patch::Apply(&policy),
            )
            .await
            .unwrap();
        let expected: Deployment = serde_norway::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../examples")
                    .join(name)
                    .join("rendered.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        let want = init_names(&expected);
        let deployment = original.name_any();
        let live = wait_for(&format!("{name}: sidecars injected in order"), || async {
            let live = deployments.get(&deployment).await.ok()?;
            (init_names(&live) == want).then_some(live)
        })
        .await;
        for c in live
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
        {
            let expected = expected
                .spec
                .template
                .spec
                .as_ref()
                .unwrap()
                .init_containers
                .iter()
                .flatten()
                .find(|e| e.name == c.name)
                .unwrap();
            assert_eq!(
                c.restart_policy,
                expected.restart_policy,
                "{name}: {} restartPolicy\n{}",
                c.name,
                dump(&client, &ns.name).await
            );
        }
    }

    // A policy update reaches its Deployment: a new exporter image for U5.
    let mut updated = example("u5-metrics-exporter", "policy.yaml", &ns.name);
    updated["spec"]["sidecars"][0]["image"] = json!("oliver006/redis_exporter:v1.67.0");
    policies
        .patch("redis-metrics", &owner, &Patch::Apply(&updated))
        .await
        .unwrap();
    wait_for("the policy update to reach the Deployment", || async {
        let live = deployments.get("session-cache").await.ok()?;
        let pod = live.spec.template.spec?;
        let exporter = pod
            .init_containers?
            .into_iter()
            .find(|c| c.name == "redis-exporter")?;
        (exporter.image.as_deref() == Some("oliver006/redis_exporter:v1.67.0")).then_some(())
    })
    .await;

    // Delete every policy: each Deployment goes back to exactly what its owner wrote.
    for (name, original) in &originals {
        let policy = example(name, "policy.yaml", &ns.name);
        policies
            .delete(
                policy["metadata"]["name"].as_str().unwrap(),
                &DeleteParams::default(),
            )
            .await
            .unwrap();
        let deployment = original.name_any();
        let restored = wait_for(&format!("{name}: sidecars removed"), || async {
            let live = deployments.get(&deployment).await.ok()?;
            let annotations = live.metadata.annotations.clone().unwrap_or_default();
            (!annotations.contains_key(INJECTED_ANNOTATION)).then_some(live)
        })
        .await;
        assert_eq!(
            restored.spec.template,
            original.spec.template,
            "{name}: template not restored exactly\n{}",
            dump(&client, &ns.name).await
        );
    }
    operator.abort();
}

#[tokio::test]
async fn conflicts_are_reported_and_idle_means_no_writes() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "conflict").await;
    let other = TestNamespace::create(&cluster, "untouched").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    // A Deployment whose own container already has the sidecar's name.
    let mut clash = example("u1-log-shipping", "deployment.yaml", &ns.name);
    clash["spec"]["template"]["spec"]["containers"][0]["name"] = json!("log-forwarder");
    deployments
        .patch("shop", &owner, &Patch::Apply(&clash))
        .await
        .unwrap();
    // The same Deployment in another namespace, which the operator does not watch.
    let elsewhere = example("u1-log-shipping", "deployment.yaml", &other.name);
    let other_deployments: Api<Deployment> = Api::namespaced(client.clone(), &other.name);
    let before_elsewhere = other_deployments
        .patch("shop", &owner, &Patch::Apply(&elsewhere))
        .await
        .unwrap();

    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    let policy = example("u1-log-shipping", "policy.yaml", &ns.name);
    policies
        .patch("log-shipper", &owner, &Patch::Apply(&policy))
        .await
        .unwrap();

    let status = wait_for("a Conflict condition", || async {
        let p = policies.get("log-shipper").await.ok()?;
        let status = p.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Conflict" && c.status == "True")
            .then_some(status)
    })
    .await;
    let conflict = status.conditions.iter().find(|c| c.type_ == "Conflict").unwrap();
    assert!(
        conflict.message.contains("Deployment \"shop\""),
        "{}",
        conflict.message
    );
    let live = deployments.get("shop").await.unwrap();
    assert!(
        init_names(&live).is_empty(),
        "the conflicting Deployment is left untouched\n{}",
        dump(&client, &ns.name).await
    );

    // The refusal's Events, on the Deployment and on the policy, follow it from the background;
    // and one for the warning of the Deployment's render: the policy's appContainers entry names
    // the container that was renamed.
    wait_for("the refusal's two Events and the warning's", || async {
        (event_writes(&client, &ns.name).await == 3).then_some(())
    })
    .await;
    let mut reasons: Vec<(String, String)> = operator_events(&client, &ns.name)
        .await
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.regarding.and_then(|r| r.kind).unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("Conflict".to_owned(), "Deployment".to_owned()),
            ("Conflict".to_owned(), "SidecarPolicy".to_owned()),
            ("SidecarWarnings".to_owned(), "Deployment".to_owned()),
        ]
    );
    let warned = operator_events(&client, &ns.name)
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("SidecarWarnings"))
        .and_then(|e| e.note)
        .unwrap_or_default();
    assert!(
        warned.contains("the Deployment has no container \"shop\"; this entry skips it"),
        "{warned}"
    );

    // Idle: nothing changes, so nothing is written: not the Deployment, not the policy's status,
    // not one Event. What the operator could have written is compared, not resourceVersions:
    // kube-controller-manager writes Deployment status on its own.
    let deployment_before = operator_written(&deployments.get("shop").await.unwrap());
    let policy_before = policies.get("log-shipper").await.unwrap();
    let events_before = event_writes(&client, &ns.name).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        operator_written(&deployments.get("shop").await.unwrap()),
        deployment_before,
        "a Deployment write while idle"
    );
    let policy_after = policies.get("log-shipper").await.unwrap();
    assert_eq!(
        policy_after.status, policy_before.status,
        "a status write while idle"
    );
    assert_eq!(
        policy_after.metadata.managed_fields, policy_before.metadata.managed_fields,
        "a status write while idle"
    );
    assert_eq!(
        event_writes(&client, &ns.name).await,
        events_before,
        "an Event while idle"
    );

    let after_elsewhere = other_deployments.get("shop").await.unwrap();
    assert_eq!(
        operator_written(&after_elsewhere),
        operator_written(&before_elsewhere),
        "another namespace was touched"
    );
    assert!(
        !managers(&after_elsewhere).contains(&controller::FIELD_MANAGER.to_owned()),
        "the operator owns nothing in another namespace"
    );
    operator.abort();
}

/// The U4 example (a Deployment and its policy) as a GitOps tool keeps it: server-side applied,
/// forced, by the tool's field manager; and the operator's injection, awaited.
struct GitOpsManaged {
    client: Client,
    ns: TestNamespace,
    deployments: Api<Deployment>,
    /// The Deployment as it is in Git.
    manifest: serde_json::Value,
    /// The tool's apply: its field manager, forced.
    params: PatchParams,
    injected: Deployment,
    operator: tokio::task::JoinHandle<()>,
}

const MANAGED: &str = "legacy-billing";

impl GitOpsManaged {
    async fn start(cluster: &Cluster, namespace_prefix: &str, manager: &str) -> GitOpsManaged {
        let client = cluster.client.clone();
        install_crd(&client).await;
        let ns = TestNamespace::create(cluster, namespace_prefix).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
        let params = PatchParams::apply(manager).force();

        let manifest = example("u4-tls-proxy", "deployment.yaml", &ns.name);
        deployments
            .patch(MANAGED, &params, &Patch::Apply(&manifest))
            .await
            .unwrap();
        let policy = example("u4-tls-proxy", "policy.yaml", &ns.name);
        policies
            .patch("tls-terminator", &params, &Patch::Apply(&policy))
            .await
            .unwrap();
        let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
        let injected = wait_for("the proxy injected before the app's init step", || async {
            let live = deployments.get(MANAGED).await.ok()?;
            (init_names(&live) == ["tls-proxy", "migrate"]).then_some(live)
        })
        .await;
        GitOpsManaged {
            client,
            ns,
            deployments,
            manifest,
            params,
            injected,
            operator,
        }
    }

    /// The tool syncs `manifest` (server-side apply; a dry run when `dry_run`).
    async fn sync(&self, manifest: &serde_json::Value, dry_run: bool) -> Deployment {
        let params = PatchParams {
            dry_run,
            ..self.params.clone()
        };
        self.deployments
            .patch(MANAGED, &params, &Patch::Apply(manifest))
            .await
            .unwrap()
    }

    async fn live(&self) -> Deployment {
        self.deployments.get(MANAGED).await.unwrap()
    }

    async fn dump(&self) -> String {
        dump(&self.client, &self.ns.name).await
    }
}

impl Drop for GitOpsManaged {
    fn drop(&mut self) {
        self.operator.abort();
    }
}

#[tokio::test]
async fn a_gitops_tool_and_the_operator_keep_their_own_fields() {
    let Some(cluster) = cluster().await else { return };
    // Flux applies with server-side apply and forces its own fields.
    let flux = GitOpsManaged::start(&cluster, "gitops", "kustomize-controller").await;

    // Flux re-applies the unchanged manifest: nothing of the operator's goes, nothing flips.
    flux.sync(&flux.manifest, false).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = flux.live().await;
    assert_eq!(
        init_names(&after),
        ["tls-proxy", "migrate"],
        "{}",
        flux.dump().await
    );
    assert_eq!(
        after.metadata.generation, flux.injected.metadata.generation,
        "a re-apply of the same manifest rolled the pods"
    );

    // Flux changes its own container: its change lands, the operator's fields stay.
    let mut changed = flux.manifest.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("registry.example.com/billing/app:3.3.0");
    flux.sync(&changed, false).await;
    let updated = wait_for("Flux's image change", || async {
        let live = flux.deployments.get(MANAGED).await.ok()?;
        let image = live.spec.template.spec.as_ref()?.containers[0].image.clone()?;
        (image.ends_with(":3.3.0")).then_some(live)
    })
    .await;
    assert_eq!(
        init_names(&updated),
        ["tls-proxy", "migrate"],
        "{}",
        flux.dump().await
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        flux.live().await.metadata.generation,
        updated.metadata.generation,
        "flip-flop"
    );
}

#[tokio::test]
async fn argo_cd_server_side_diff_sees_no_drift_in_an_injected_deployment() {
    let Some(cluster) = cluster().await else { return };
    // Argo CD with ServerSideApply=true syncs with server-side apply as `argocd-controller`.
    let argocd = GitOpsManaged::start(&cluster, "argocd", "argocd-controller").await;
    let live = &argocd.injected;

    // ServerSideDiff=true: Argo CD predicts the live object with a dry-run apply of the Git
    // manifest and diffs the prediction against the live object. The operator's fields are
    // another manager's, so the prediction keeps them: no diff, the Application stays Synced.
    let predicted = argocd.sync(&argocd.manifest, true).await;
    let (predicted_spec, live_spec) = (
        serde_json::to_value(&predicted.spec).unwrap(),
        serde_json::to_value(&live.spec).unwrap(),
    );
    assert_eq!(predicted_spec, live_spec, "Argo CD would show a diff");
    assert_eq!(predicted.metadata.annotations, live.metadata.annotations);

    // A sync of the same manifest (self-heal, a refresh) changes nothing: no rollout.
    let synced = argocd.sync(&argocd.manifest, false).await;
    assert_eq!(
        synced.metadata.generation,
        live.metadata.generation,
        "{}",
        argocd.dump().await
    );
}

#[tokio::test]
async fn flux_health_checks_read_a_policy_through_kstatus() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "kstatus").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    // The policy as the API server serves it, untyped, as Flux reads it.
    let served: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<SidecarPolicy>(&()),
    );
    let health = || async {
        let object = served.get("log-shipper").await.unwrap();
        let object = serde_json::to_value(object).unwrap();
        (kstatus(&object), object)
    };
    let flux = PatchParams::apply("kustomize-controller").force();
    deployments
        .patch(
            "shop",
            &flux,
            &Patch::Apply(example("u1-log-shipping", "deployment.yaml", &ns.name)),
        )
        .await
        .unwrap();
    policies
        .patch(
            "log-shipper",
            &flux,
            &Patch::Apply(example("u1-log-shipping", "policy.yaml", &ns.name)),
        )
        .await
        .unwrap();

    // No operator yet: the CRD's default status says so, and kstatus does not call it healthy.
    let (verdict, object) = health().await;
    assert_eq!(object["status"], json!({"observedGeneration": 0}));
    assert_eq!(verdict, "InProgress", "{object:#}");

    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    wait_for("kstatus Current once the policy is injected", || async {
        (health().await.0 == "Current").then_some(())
    })
    .await;

    // A second Deployment that cannot take the policy: Stalled, which kstatus calls Failed.
    let mut clash = example("u1-log-shipping", "deployment.yaml", &ns.name);
    clash["metadata"]["name"] = json!("shop-legacy");
    clash["spec"]["template"]["spec"]["containers"][0]["name"] = json!("log-forwarder");
    deployments
        .patch("shop-legacy", &flux, &Patch::Apply(&clash))
        .await
        .unwrap();
    let stalled = wait_for("kstatus Failed on a conflict", || async {
        let (verdict, object) = health().await;
        (verdict == "Failed").then_some(object)
    })
    .await;
    let conditions = stalled["status"]["conditions"].as_array().unwrap();
    let stalled = conditions.iter().find(|c| c["type"] == "Stalled").unwrap();
    assert_eq!(stalled["reason"], "Conflict");
    assert!(
        stalled["message"].as_str().unwrap().contains("shop-legacy"),
        "{stalled}"
    );

    // The clash goes: healthy again.
    deployments
        .delete("shop-legacy", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("kstatus Current once the clash is gone", || async {
        (health().await.0 == "Current").then_some(())
    })
    .await;
    operator.abort();
}

#[tokio::test]
async fn an_hpa_that_counts_the_sidecars_is_warned_of_on_the_deployment_and_in_the_policys_status() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crd(&client).await;
    let ns = TestNamespace::create(&cluster, "autoscaled").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");

    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns.name, "labels": {"app": "web"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "resources": {"requests": {"cpu": "90m"}}}]}
            }
        }
    });
    deployments
        .patch("web", &owner, &Patch::Apply(&web))
        .await
        .unwrap();
    // A real HPA object (the API server validates it; no metrics are needed for the warning).
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": ns.name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    });
    hpas.patch("web", &owner, &Patch::Apply(&hpa)).await.unwrap();

    let operator = start_operator(&client, &ns.name, Guardrails::default()).await;
    let policy = json!({
        "apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
        "metadata": {"name": "mesh", "namespace": ns.name},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "sidecars": [{
                "name": "proxy", "image": "busybox:1.36",
                "startupProbe": {"exec": {"command": ["true"]}},
                "resources": {"requests": {"cpu": "10m"}}
            }]
        }
    });
    policies
        .patch("mesh", &owner, &Patch::Apply(&policy))
        .await
        .unwrap();

    let expected = "Deployment \"web\": spec.sidecars: sidecars \"proxy\" add 10m to the pod's 100m cpu requests: HorizontalPodAutoscaler \"web\" keeps cpu at 80% of them, so it now scales out at 80m of usage per pod instead of 72m";
    let status = wait_for("a Warnings condition naming the HPA", || async {
        let status = policies.get("mesh").await.ok()?.status?;
        let warnings = status.conditions.iter().find(|c| c.type_ == "Warnings")?;
        (warnings.message == expected).then_some(status.clone())
    })
    .await;
    let warnings = status.conditions.iter().find(|c| c.type_ == "Warnings").unwrap();
    assert_eq!(warnings.reason, "DeploymentWarnings");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "UpToDate"),
        "injected, and the warning is not held against Ready"
    );
    assert_eq!(init_names(&deployments.get("web").await.unwrap()), ["proxy"]);
    let event = wait_for("a SidecarWarnings Event on the Deployment", || async {
        operator_events(&client, &ns.name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SidecarWarnings"))
    })
    .await;
    assert_eq!(event.regarding.as_ref().unwrap().name.as_deref(), Some("web"));
    assert!(
        event
            .note
            .as_deref()
            .unwrap()
            .contains("HorizontalPodAutoscaler \"web\" keeps cpu at 80%"),
        "{event:?}"
    );

    // The HPA goes: so does the warning.
    hpas.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the Warnings condition to go", || async {
        let status = policies.get("mesh").await.ok()?.status?;
        status
            .conditions
            .iter()
            .all(|c| c.type_ != "Warnings")
            .then_some(())
    })
    .await;
    operator.abort();
}
