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
    let out = run(&["crd"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("name: sidecarpolicies.sidecar.dev"));
}
