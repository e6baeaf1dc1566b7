//! End-to-end test of `plan` and `explain` against a real API server: the plan of a policy change
//! predicts exactly what the operator then does, and `explain` tells why a Deployment has its
//! sidecar. How the API server is chosen: see `e2e.rs`. The operator runs in-process for every
//! namespace, as `sidecar-operator run` without `-n`; plan and explain are the library functions
//! the commands call, with the test's client.
//!
//! Nothing here asserts a duration: waits poll the API until a condition holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::cluster::Exclusions;
use sidecar_core::{Guardrails, is_up_to_date};
use sidecar_operator::controller;
use sidecar_operator::plan_cmd::{Changes, Options, Verdict, plan};
use sidecar_operator::{cluster_state, explain_cmd};

mod support {
    pub mod binary;
    pub mod cluster;
    pub mod control_plane;
    pub mod operator;
}
use support::binary::operator_binary;
use support::cluster::{TestNamespace, cluster, dump, install_crds, wait_for};
use support::operator::{init_names, start_cluster_wide};

/// SidecarPolicy `shipper`: sidecar `shipper` (`image`) for the Deployments labelled app in `apps`.
fn shipper(namespace: &str, image: &str, apps: &[&str]) -> SidecarPolicy {
    serde_json::from_value(json!({
        "apiVersion": "sidecar.dev/v1alpha1",
        "kind": "SidecarPolicy",
        "metadata": {"name": "shipper", "namespace": namespace},
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

/// Deployment `name` labelled app=`name`, with no replicas (so a policy change reaches it at
/// once: nothing runs that a staged rollout would wait for).
fn deployment(namespace: &str, name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
            },
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn the_plan_of_a_change_is_what_the_operator_then_does() {
    let Some(cluster) = cluster().await else { return };
    let client = cluster.client.clone();
    install_crds(&client).await;
    let ns = TestNamespace::create(&cluster, "plan").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<SidecarPolicy> = Api::namespaced(client.clone(), &ns.name);
    let owner = PatchParams::apply("e2e-owner");
    for name in ["web", "api", "db"] {
        deployments
            .create(&PostParams::default(), &deployment(&ns.name, name))
            .await
            .unwrap();
    }
    policies
        .patch(
            "shipper",
            &owner,
            &Patch::Apply(&shipper(&ns.name, "busybox:1.36", &["web", "api"])),
        )
        .await
        .unwrap();
    let _operator = start_cluster_wide(&client, Guardrails::default()).await;

    let options = Options {
        guardrails: Guardrails::default(),
        exclusions: Exclusions::new(
            controller::DEFAULT_EXCLUDED_NAMESPACES
                .iter()
                .map(|&ns| ns.to_owned()),
        ),
        namespace: Some(ns.name.clone()),
    };
    let changed = shipper(&ns.name, "busybox:1.37", &["web", "db"]);
    let change = Changes {
        policies: vec![changed.clone()],
        ..Changes::default()
    };

    // The operator applies the current policy; then nothing is pending.
    let report = wait_for("the current policy applied, nothing pending", || async {
        let web = deployments.get("web").await.ok()?;
        let api = deployments.get("api").await.ok()?;
        if init_names(&web) != ["shipper"] || init_names(&api) != ["shipper"] {
            return None;
        }
        let state = cluster_state::fetch(&client, Some(&ns.name)).await.ok()?;
        let report = plan(&state, &change, &options);
        (report.pending() == 0).then_some(report)
    })
    .await;
    let n = &ns.name;
    assert_eq!(
        report.text(false).unwrap(),
        format!(
            "{n}/api: loses SidecarPolicy \"shipper\" (shipper)\n\
             {n}/db: change (adds shipper)\n\
             {n}/web: change (updates shipper)\n\
             3 change, 0 refused, 0 unchanged\n"
        ),
        "{}",
        dump(&client, n).await
    );

    // Apply the change: every Deployment becomes what the plan predicted.
    policies
        .patch("shipper", &owner, &Patch::Apply(&changed))
        .await
        .unwrap();
    for entry in &report.entries {
        let Verdict::Change(predicted) = &entry.verdict else {
            panic!("{}: {:?}", entry.name, entry.verdict)
        };
        let reached = wait_for(&format!("{}: as the plan predicted", entry.name), || async {
            let live = deployments.get(&entry.name).await.ok()?;
            is_up_to_date(&live, &predicted.after).then_some(live)
        })
        .await;
        assert_eq!(
            init_names(&reached),
            init_names(&predicted.after.deployment),
            "{}",
            entry.name
        );
    }
    // And planning the same change again finds nothing left to do, and nothing pending.
    let state = cluster_state::fetch(&client, Some(n)).await.unwrap();
    assert_eq!(
        plan(&state, &change, &options).text(false).unwrap(),
        "0 change, 0 refused, 3 unchanged\n",
        "{}",
        dump(&client, n).await
    );

    // Explain: the selector term that matched, the revision carried, up to date.
    let state = cluster_state::fetch_deployment(&client, n, "web").await.unwrap();
    let text = explain_cmd::explain(&state, n, "web", &options).unwrap();
    let revision = sidecar_core::revision::of(&changed);
    for expected in [
        format!("Deployment {n}/web\n"),
        "Selected by 1 policy, in injection order".to_owned(),
        "1. SidecarPolicy \"shipper\": order 0, placement BeforeAppInitContainers\n".to_owned(),
        "   selector: app In (web, db) [app=web]\n".to_owned(),
        format!("   revision: {revision} (carried {revision}: up to date)\n"),
        "   injected: init containers shipper\n".to_owned(),
        "Live Deployment: up to date with the current policies.\n".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} in:\n{text}");
    }
    let api = explain_cmd::explain(
        &cluster_state::fetch_deployment(&client, n, "api").await.unwrap(),
        n,
        "api",
        &options,
    )
    .unwrap();
    assert!(
        api.contains("  SidecarPolicy \"shipper\": selector needs app In (web, db) [app=api]\n"),
        "{api}"
    );

    // The commands as a user runs them, with the kubeconfig of the test's cluster: the same
    // answers as the library functions above.
    let kubeconfig = cluster.kubeconfig();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(operator_binary())
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.code(), text(&output.stdout), text(&output.stderr))
    };
    let (code, stdout, stderr) = run(&["explain", "deployment", "web", "-n", n]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, text, "the binary explains as the library does");
    let policy_file = std::env::temp_dir().join(format!("{n}-policy.yaml"));
    std::fs::write(&policy_file, serde_json::to_string(&changed).unwrap()).unwrap();
    let (code, stdout, stderr) = run(&["plan", "--policy", policy_file.to_str().unwrap(), "-n", n]);
    std::fs::remove_file(&policy_file).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "0 change, 0 refused, 3 unchanged\n", "{stderr}");
    let (code, _, stderr) = run(&["explain", "deployment", "nowhere", "-n", n]);
    assert_eq!(code, Some(1), "a Deployment that does not exist is bad input");
    assert!(
        stderr.contains(&format!("Deployment \"nowhere\" not found in namespace \"{n}\"")),
        "{stderr}"
    );
}
