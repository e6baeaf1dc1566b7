//! The `sidecar-operator` binary as a user runs it: arguments, files, stdin, output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const POLICY: &str = r#"apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: log-shipper}
spec:
  selector: {matchLabels: {app: web}}
  sidecars:
  - name: shipper
    image: busybox:1.36
    startupProbe: {exec: {command: ["true"]}}
    resources: {requests: {cpu: 10m}}
"#;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "nginx:1.27"}
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-operator"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn render(policy: &Path, deployment: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "render",
        "--policy",
        policy.to_str().unwrap(),
        "--deployment",
        deployment.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn render_prints_the_deployment_with_a_native_sidecar() {
    let f = Fixture::new();
    let out = render(&f.file("p.yaml", POLICY), &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rendered: k8s_openapi::api::apps::v1::Deployment = serde_norway::from_str(&stdout(&out)).unwrap();
    let pod = rendered.spec.template.spec.unwrap();
    let sidecar = &pod.init_containers.unwrap()[0];
    assert_eq!(sidecar.name, "shipper");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        rendered.metadata.namespace, None,
        "no namespace is invented in the output"
    );
    assert!(
        stderr(&out).is_empty(),
        "a well-formed policy warns about nothing: {}",
        stderr(&out)
    );
}

#[test]
fn diff_shows_the_injected_lines() {
    let f = Fixture::new();
    let d = f.file("d.yaml", DEPLOYMENT);
    let out = render(&f.file("p.yaml", POLICY), &d, &["--diff"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("--- {} (Deployment web, as written)", d.display())),
        "{text}"
    );
    assert!(text.contains("(Deployment web, rendered)"), "{text}");
    assert!(
        text.contains("+      - name: shipper") || text.contains("+        name: shipper"),
        "{text}"
    );
    assert!(text.contains("+        restartPolicy: Always"), "{text}");
}

#[test]
fn diff_of_an_unmatched_deployment_says_no_change() {
    let f = Fixture::new();
    let other = POLICY.replace("app: web}", "app: api}");
    let out = render(
        &f.file("p.yaml", &other),
        &f.file("d.yaml", DEPLOYMENT),
        &["--diff"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("Deployment \"web\": no change"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policies_can_come_from_stdin_and_multi_document_files() {
    let f = Fixture::new();
    let second = POLICY
        .replace("log-shipper", "metrics")
        .replace("name: shipper", "name: exporter");
    let d = f.file("d.yaml", DEPLOYMENT);
    let out = run(
        &["render", "--policy", "-", "--deployment", d.to_str().unwrap()],
        Some(&format!("{POLICY}---\n{second}---\n")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("name: shipper") && text.contains("name: exporter"),
        "{text}"
    );
}

#[test]
fn stdin_can_be_used_only_once() {
    let out = run(&["render", "--policy", "-", "--deployment", "-"], Some(POLICY));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("standard input (-) can be read only once"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_fields_name_file_document_and_path() {
    let f = Fixture::new();
    let policy = f.file(
        "p.yaml",
        &format!("{POLICY}---\n{}", POLICY.replace("  sidecars:", "  sidecar:")),
    );
    let out = render(&policy, &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{} document 2", policy.display())), "{err}");
    assert!(err.contains("unknown field spec.sidecar"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn wrong_kind_is_refused() {
    let f = Fixture::new();
    let out = render(&f.file("p.yaml", DEPLOYMENT), &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is a apps/v1 Deployment; expected sidecar.dev/v1alpha1 SidecarPolicy"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn yaml_syntax_errors_name_the_file() {
    let f = Fixture::new();
    let bad = f.file("bad.yaml", "apiVersion: [unclosed\n");
    let out = render(&bad, &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{} document 1: invalid YAML", bad.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_policy_from_another_namespace_is_refused() {
    let f = Fixture::new();
    let policy = POLICY.replace(
        "metadata: {name: log-shipper}",
        "metadata: {name: log-shipper, namespace: team-a}",
    );
    let deployment = DEPLOYMENT.replace(
        "metadata: {name: web,",
        "metadata: {name: web, namespace: team-b,",
    );
    let out = render(&f.file("p.yaml", &policy), &f.file("d.yaml", &deployment), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("\"team-a\"") && err.contains("\"team-b\""), "{err}");
}

#[test]
fn a_conflict_is_refused_with_exit_code_2() {
    let f = Fixture::new();
    let clash = POLICY.replace("name: shipper", "name: web");
    let out = render(&f.file("p.yaml", &clash), &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("error: refusing to render Deployment \"web\""),
        "{err}"
    );
    assert!(
        err.contains("error:   SidecarPolicy \"log-shipper\" spec.sidecars[0].name"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "nothing is half-rendered");
}

/// `spec.rollout` says how a change reaches running Deployments; a render is always of the
/// current revision, so valid settings change nothing in it, and invalid ones are refused as the
/// CRD would refuse them.
#[test]
fn rollout_settings_are_checked_and_do_not_change_the_render() {
    let f = Fixture::new();
    let d = f.file("d.yaml", DEPLOYMENT);
    let plain = render(&f.file("p.yaml", POLICY), &d, &[]);
    let staged = format!(
        "{POLICY}  rollout: {{maxConcurrent: 10%, paused: true, canary: {{selector: {{matchLabels: {{tier: canary}}}}}}}}\n"
    );
    let with_rollout = render(&f.file("staged.yaml", &staged), &d, &[]);
    assert_eq!(with_rollout.status.code(), Some(0), "{}", stderr(&with_rollout));
    assert_eq!(
        stdout(&with_rollout),
        stdout(&plain),
        "the same revision, the same render"
    );

    let bad = format!("{POLICY}  rollout: {{maxConcurrent: 0%}}\n");
    let refused = render(&f.file("bad.yaml", &bad), &d, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("spec.rollout.maxConcurrent"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn host_path_needs_the_guardrail_flag() {
    let f = Fixture::new();
    let policy = f.file(
        "p.yaml",
        &format!("{POLICY}  volumes: [{{name: host, hostPath: {{path: /var/log}}}}]\n"),
    );
    let d = f.file("d.yaml", DEPLOYMENT);
    let refused = render(&policy, &d, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--allow-host-path"),
        "{}",
        stderr(&refused)
    );
    let allowed = render(&policy, &d, &["--allow-host-path"]);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert!(stdout(&allowed).contains("hostPath"));
}

#[test]
fn warnings_go_to_stderr_without_failing() {
    let f = Fixture::new();
    let sloppy = POLICY.replace("busybox:1.36", "busybox");
    let out = render(&f.file("p.yaml", &sloppy), &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: SidecarPolicy \"log-shipper\" spec.sidecars[0].image"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn crd_command_prints_the_crd() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let out = run(&["crd"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let crd: CustomResourceDefinition = serde_norway::from_str(&stdout(&out)).unwrap();
    assert_eq!(crd.metadata.name.as_deref(), Some("sidecarpolicies.sidecar.dev"));
    assert_eq!(crd.spec.names.kind, "SidecarPolicy");
}

#[test]
fn version_is_printed() {
    let out = run(&["--version"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("sidecar-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn render_help_documents_the_exit_codes() {
    let out = run(&["render", "--help"], None);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("Exit codes: 0 rendered; 1 bad input"), "{help}");
    for flag in [
        "--allow-privileged",
        "--allow-host-path",
        "--allow-run-as-root",
        "--allow-capability",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn unknown_fields_in_kubernetes_types_have_engine_style_paths() {
    let f = Fixture::new();
    let typo = DEPLOYMENT.replace("image: \"nginx:1.27\"", "imagee: \"nginx:1.27\"");
    let d = f.file("d.yaml", &typo);
    let out = render(&f.file("p.yaml", POLICY), &d, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} document 1 (apps/v1 Deployment \"web\"): unknown field spec.template.spec.containers[0].imagee",
            d.display()
        )),
        "{err}"
    );
}

#[test]
fn several_deployments_are_rendered_as_one_stream() {
    let f = Fixture::new();
    // The first Deployment names the namespace; the second takes it, but does not print it.
    let first = DEPLOYMENT.replace("metadata: {name: web,", "metadata: {name: web, namespace: shop,");
    let second = DEPLOYMENT.replace("metadata: {name: web,", "metadata: {name: web2,");
    let d = f.file("d.yaml", &format!("{first}---\n{second}---\n"));
    let out = render(&f.file("p.yaml", POLICY), &d, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let documents: Vec<k8s_openapi::api::apps::v1::Deployment> = text
        .split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .collect();
    assert_eq!(documents.len(), 2, "{text}");
    assert_eq!(documents[0].metadata.name.as_deref(), Some("web"));
    assert_eq!(documents[0].metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(documents[1].metadata.name.as_deref(), Some("web2"));
    assert_eq!(documents[1].metadata.namespace, None, "{text}");
    for deployment in &documents {
        let pod = deployment.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.init_containers.as_ref().unwrap()[0].name, "shipper");
    }
}

#[test]
fn several_policy_files_after_one_flag() {
    let f = Fixture::new();
    let second = POLICY
        .replace("log-shipper", "metrics")
        .replace("name: shipper", "name: exporter");
    let (p1, p2) = (f.file("p1.yaml", POLICY), f.file("p2.yaml", &second));
    let d = f.file("d.yaml", DEPLOYMENT);
    let args = [
        "render",
        "--policy",
        p1.to_str().unwrap(),
        p2.to_str().unwrap(),
        "--deployment",
        d.to_str().unwrap(),
    ];
    let out = run(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("name: shipper") && text.contains("name: exporter"),
        "{text}"
    );
}

#[test]
fn duplicate_policy_names_are_refused() {
    let f = Fixture::new();
    let p1 = f.file("p1.yaml", POLICY);
    let p2 = f.file("p2.yaml", &POLICY.replace("name: shipper", "name: other"));
    let out = render(
        &p1,
        &f.file("d.yaml", DEPLOYMENT),
        &["--policy", p2.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "SidecarPolicy \"log-shipper\" is given twice: {} document 1 and {} document 1",
            p1.display(),
            p2.display()
        )),
        "{err}"
    );
}

#[test]
fn the_same_file_twice_is_refused() {
    let f = Fixture::new();
    let p = f.file("p.yaml", POLICY);
    let out = render(
        &p,
        &f.file("d.yaml", DEPLOYMENT),
        &["--policy", p.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{} is given more than once", p.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn diff_of_standard_input_names_it() {
    let f = Fixture::new();
    let p = f.file("p.yaml", POLICY);
    let out = run(
        &[
            "render",
            "--policy",
            p.to_str().unwrap(),
            "--deployment",
            "-",
            "--diff",
        ],
        Some(DEPLOYMENT),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "--- standard input (Deployment web, as written)\n+++ standard input (Deployment web, rendered)\n"
        ),
        "{text}"
    );
}

#[test]
fn a_file_without_the_expected_kind_is_an_error() {
    let f = Fixture::new();
    let empty = f.file("empty.yaml", "---\n# nothing here\n---\n");
    let out = render(&empty, &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{} holds no sidecar.dev/v1alpha1 SidecarPolicy",
            empty.display()
        )),
        "{}",
        stderr(&out)
    );
}
