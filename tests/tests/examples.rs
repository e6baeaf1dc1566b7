//! Every use case U1-U8 under `examples/`: the offline render matches the checked-in golden
//! `rendered.yaml`, the rendered pod template has what the use case needs, and removing the policy
//! gives back the Deployment exactly as written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use sidecar_api::SidecarPolicy;
use sidecar_core::{Guardrails, render};
use sidecar_operator::cli::{Cli, Command};
use sidecar_operator::render_cmd::{self, Outcome};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn render_args(dir: &Path) -> Vec<String> {
    let mut args = vec![
        "sidecar-operator".to_owned(),
        "render".to_owned(),
        "--policy".to_owned(),
        dir.join("policy.yaml").display().to_string(),
        "--deployment".to_owned(),
        dir.join("deployment.yaml").display().to_string(),
    ];
    let extra = std::fs::read_to_string(dir.join("render.args")).unwrap();
    args.extend(extra.split_whitespace().map(str::to_owned));
    args
}

/// Runs the render command exactly as `just golden` does.
fn run_render(args: &[String]) -> Outcome {
    let Command::Render(args) = Cli::parse_from(args).command else {
        panic!("render")
    };
    render_cmd::run(&args, std::io::empty()).unwrap()
}

fn rendered(name: &str) -> Deployment {
    let dir = example(name);
    let Outcome::Rendered { output, warnings, .. } = run_render(&render_args(&dir)) else {
        panic!("{name} was refused")
    };
    assert!(
        warnings.is_empty(),
        "{name}: examples should be warning-free: {warnings:?}"
    );
    let golden = std::fs::read_to_string(dir.join("rendered.yaml")).unwrap();
    assert!(
        output == golden,
        "{name}: output differs from rendered.yaml; run `just golden` and review the diff"
    );
    serde_norway::from_str(&output).unwrap()
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.template.spec.as_ref().unwrap()
}

fn init(d: &Deployment, name: &str) -> Container {
    pod(d)
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .cloned()
        .unwrap()
}

fn init_names(d: &Deployment) -> Vec<&str> {
    pod(d)
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

fn app(d: &Deployment, name: &str) -> Container {
    pod(d)
        .containers
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .unwrap()
}

fn mounts(c: &Container) -> Vec<(String, String)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

fn assert_native_sidecar(c: &Container) {
    assert_eq!(
        c.restart_policy.as_deref(),
        Some("Always"),
        "{} is a native sidecar",
        c.name
    );
    assert!(
        c.startup_probe.is_some(),
        "{} gates what follows with a startupProbe",
        c.name
    );
}

fn volume<'d>(d: &'d Deployment, name: &str) -> &'d k8s_openapi::api::core::v1::Volume {
    pod(d).volumes.iter().flatten().find(|v| v.name == name).unwrap()
}

/// Without the guardrail flags in render.args, the example must be refused.
fn assert_needs_flags(name: &str) {
    let args: Vec<String> = render_args(&example(name))
        .into_iter()
        .filter(|a| !a.starts_with("--allow"))
        .collect();
    assert!(
        matches!(run_render(&args), Outcome::Refused { .. }),
        "{name} must need its guardrail flags"
    );
}

#[test]
fn u1_log_shipping_shares_a_volume_at_different_paths() {
    let d = rendered("u1-log-shipping");
    assert_native_sidecar(&init(&d, "log-forwarder"));
    assert_eq!(
        mounts(&init(&d, "log-forwarder")),
        [("app-logs".into(), "/logs".into())]
    );
    assert!(mounts(&app(&d, "shop")).contains(&("app-logs".into(), "/var/log/app".into())));
    assert!(volume(&d, "app-logs").empty_dir.is_some());
}

#[test]
fn u2_shared_pid_namespace_and_host_path() {
    let d = rendered("u2-stdout-via-shared-pid");
    assert_eq!(pod(&d).share_process_namespace, Some(true));
    assert!(volume(&d, "node-logs").host_path.is_some());
    assert_native_sidecar(&init(&d, "stdout-reader"));
    assert_needs_flags("u2-stdout-via-shared-pid");
}

#[test]
fn u3_localhost_client_needs_only_the_container() {
    let d = rendered("u3-localhost-client");
    let poller = init(&d, "poller");
    assert_native_sidecar(&poller);
    assert!(poller.command.unwrap().join(" ").contains("http://localhost:80"));
    assert_eq!(pod(&d).volumes, None);
}

#[test]
fn u4_tls_proxy_gets_the_secret_alone_and_runs_before_the_apps_init_step() {
    let d = rendered("u4-tls-proxy");
    let proxy = init(&d, "tls-proxy");
    assert_native_sidecar(&proxy);
    assert_eq!(proxy.ports.unwrap()[0].container_port, 8443);
    assert!(
        mounts(&init(&d, "tls-proxy"))
            .iter()
            .any(|(v, _)| v == "tls-cert")
    );
    assert!(
        mounts(&app(&d, "billing")).iter().all(|(v, _)| v != "tls-cert"),
        "the app never sees the key"
    );
    assert_eq!(init_names(&d), ["tls-proxy", "migrate"]);
}

#[test]
fn u5_metrics_exporter_serves_its_own_port_and_annotates_the_pod() {
    let d = rendered("u5-metrics-exporter");
    let exporter = init(&d, "redis-exporter");
    assert_native_sidecar(&exporter);
    assert_eq!(exporter.ports.unwrap()[0].container_port, 9121);
    let annotations = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9121");
}

#[test]
fn u6_config_reload_shares_volume_and_processes() {
    let d = rendered("u6-config-reload");
    assert_eq!(pod(&d).share_process_namespace, Some(true));
    assert_native_sidecar(&init(&d, "config-sync"));
    assert!(mounts(&app(&d, "nginx")).contains(&("site-config".into(), "/etc/nginx/conf.d".into())));
    assert!(mounts(&init(&d, "config-sync")).contains(&("site-config".into(), "/config".into())));
}

#[test]
fn u7_secret_sidecar_starts_first_and_keeps_the_secret() {
    let d = rendered("u7-secret-sidecar");
    let store = init(&d, "secret-store");
    assert_native_sidecar(&store);
    assert!(mounts(&store).iter().any(|(v, _)| v == "app-secrets"));
    assert!(mounts(&app(&d, "api")).is_empty(), "the app mounts no secret");
    assert!(volume(&d, "app-secrets").secret.is_some());
}

#[test]
fn u8_mesh_redirects_first_then_proxies_before_and_after_the_app() {
    let d = rendered("u8-service-mesh-proxy");
    assert_eq!(init_names(&d), ["proxy-init", "envoy"]);
    assert_eq!(
        init(&d, "proxy-init").restart_policy,
        None,
        "the redirect step runs to completion"
    );
    assert_native_sidecar(&init(&d, "envoy"));
    assert_needs_flags("u8-service-mesh-proxy");
}

#[test]
fn removing_each_policy_restores_the_deployment_exactly() {
    let everything = Guardrails {
        allow_privileged: true,
        allow_host_path: true,
        allow_run_as_root: true,
        allowed_capabilities: ["NET_ADMIN", "NET_RAW"].map(String::from).into(),
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(example("")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("policy.yaml").exists() {
            continue;
        }
        let original: Deployment =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("deployment.yaml")).unwrap()).unwrap();
        let policy: SidecarPolicy =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("policy.yaml")).unwrap()).unwrap();
        let injected = render(&original, &[policy], &everything).unwrap().deployment;
        assert_ne!(injected, original, "{}", dir.display());
        let restored = render(&injected, &[], &everything).unwrap().deployment;
        assert_eq!(restored, original, "{}", dir.display());
        checked += 1;
    }
    assert_eq!(checked, 8, "one example per use case U1-U8");
}

/// Every golden render of the first release (record v0, kept in `tests/fixtures/v0/`) is read by
/// this release: the policy renders to the same pod template with a version 1 record (so the
/// controller's migration write rolls no pod), the controller plans exactly one write that
/// changes only the record, and removing the policy restores the owner's Deployment.
#[test]
fn records_of_the_first_release_are_migrated_without_touching_the_pod_template() {
    let everything = Guardrails {
        allow_privileged: true,
        allow_host_path: true,
        allow_run_as_root: true,
        allowed_capabilities: ["NET_ADMIN", "NET_RAW"].map(String::from).into(),
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v0");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let fixture = entry.unwrap().path();
        let name = fixture.file_name().unwrap().to_str().unwrap().to_owned();
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
        let v0: Deployment = serde_norway::from_str(&read(fixture.join("rendered.yaml"))).unwrap();
        let original: Deployment =
            serde_norway::from_str(&read(example(&name).join("deployment.yaml"))).unwrap();
        let policy: SidecarPolicy =
            serde_norway::from_str(&read(example(&name).join("policy.yaml"))).unwrap();
        let record = sidecar_core::InjectionRecord::read(&v0).unwrap().unwrap();
        assert!(record.is_legacy(), "{name}: the fixture holds a v0 record");

        let migrated = render(&v0, std::slice::from_ref(&policy), &everything).unwrap();
        assert_eq!(
            migrated.deployment.spec, v0.spec,
            "{name}: the pod template is unchanged"
        );
        assert!(!migrated.record.is_legacy());
        assert_eq!(
            migrated.deployment,
            rendered(&name),
            "{name}: the same as a fresh render"
        );

        let set = sidecar_core::PolicySet::new(std::slice::from_ref(&policy), &everything);
        let facts = sidecar_core::DeploymentFacts::of(&v0);
        let plan = set.plan(&v0.metadata, &facts).unwrap();
        assert!(!plan.is_applied(&facts), "{name}: the record is rewritten once");
        let live = serde_json::to_value(&v0).unwrap();
        assert!(
            sidecar_core::contains(&live["spec"], &plan.patch["spec"]),
            "{name}: the migration write sends nothing the template does not already have"
        );
        let after = sidecar_core::DeploymentFacts::of(&migrated.deployment);
        assert!(
            set.plan(&migrated.deployment.metadata, &after)
                .unwrap()
                .is_applied(&after)
        );

        let removed = render(&v0, &[], &everything).unwrap().deployment;
        assert_eq!(removed, original, "{name}: removal from a v0 record is exact");
        checked += 1;
    }
    assert_eq!(checked, 8, "one fixture per use case U1-U8");
}

/// U8 as a ClusterSidecarPolicy (`cluster-policy.yaml`) with the labelled namespace
/// (`namespace.yaml`): the same pod template as the SidecarPolicy's golden render, recorded
/// under the cluster policy's key; without the namespace's labels, nothing.
#[test]
fn u8_as_a_cluster_policy_renders_what_the_namespaced_one_does_where_the_namespace_is_labelled() {
    let dir = example("u8-service-mesh-proxy");
    let args = |with_namespace: bool| {
        let mut args = render_args(&dir);
        args[3] = dir.join("cluster-policy.yaml").display().to_string();
        if with_namespace {
            args.push("--policy".into());
            args.push(dir.join("namespace.yaml").display().to_string());
        }
        args
    };
    let Outcome::Rendered { output, warnings, .. } = run_render(&args(true)) else {
        panic!("refused")
    };
    assert!(warnings.is_empty(), "{warnings:?}");
    let golden = std::fs::read_to_string(dir.join("rendered.yaml")).unwrap();
    assert_eq!(
        output,
        golden.replace(
            r#"{"name":"mesh-proxy","#,
            r#"{"name":"ClusterSidecarPolicy/mesh-proxy","#
        )
    );

    let Outcome::Rendered { output, notes, .. } = run_render(&args(false)) else {
        panic!("refused")
    };
    let written: Deployment =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("deployment.yaml")).unwrap()).unwrap();
    let output: Deployment = serde_norway::from_str(&output).unwrap();
    assert_eq!(output, written, "demo is not labelled: nothing injected");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("no Namespace document for namespace \"demo\"")),
        "{notes:?}"
    );
}
