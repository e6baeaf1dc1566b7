//! The `sidecar-operator` binary as a user runs it: arguments, files, stdin, output and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "common/inputs.rs"]
mod inputs;
use inputs::{DEPLOYMENT, POLICY};

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
fn a_policy_file_holding_only_a_deployment_is_an_error() {
    let f = Fixture::new();
    let p = f.file("p.yaml", DEPLOYMENT);
    let out = render(&p, &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {} holds no SidecarPolicy, ClusterSidecarPolicy or Namespace\n",
            p.display()
        )
    );
}

#[test]
fn another_version_of_a_read_kind_is_an_error() {
    let f = Fixture::new();
    let d = f.file("d.yaml", &DEPLOYMENT.replace("apps/v1", "apps/v1beta2"));
    let out = render(&f.file("p.yaml", POLICY), &d, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{} document 1 is a apps/v1beta2 Deployment; sidecar-operator reads apps/v1 Deployment only",
            d.display()
        )),
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
fn a_policy_affects_only_its_own_namespace() {
    let f = Fixture::new();
    let policy = POLICY.replace(
        "metadata: {name: log-shipper}",
        "metadata: {name: log-shipper, namespace: team-a}",
    );
    let deployment = DEPLOYMENT.replace(
        "metadata: {name: web,",
        "metadata: {name: web, namespace: team-b,",
    );
    let p = f.file("p.yaml", &policy);
    let out = render(&p, &f.file("d.yaml", &deployment), &["--diff"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "note: SidecarPolicy \"log-shipper\" ({} document 1) is in namespace \"team-a\", where no Deployment is given\n\
             note: Deployment \"web\": no change\n",
            p.display()
        )
    );
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
    // The first Deployment names the namespace; the second and the policy are put in it by
    // --namespace, and the second is printed without it, as written.
    let first = DEPLOYMENT.replace("metadata: {name: web,", "metadata: {name: web, namespace: shop,");
    let second = DEPLOYMENT.replace("metadata: {name: web,", "metadata: {name: web2,");
    let d = f.file("d.yaml", &format!("{first}---\n{second}---\n"));
    let out = render(&f.file("p.yaml", POLICY), &d, &["--namespace", "shop"]);
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
            "SidecarPolicy \"log-shipper\" in namespace \"default\" is given twice: {} document 1 and {} document 1",
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
            "{} holds no SidecarPolicy, ClusterSidecarPolicy or Namespace",
            empty.display()
        )),
        "{}",
        stderr(&out)
    );
}

/// The Deployments printed on standard output, in order.
fn documents(o: &Output) -> Vec<k8s_openapi::api::apps::v1::Deployment> {
    stdout(o)
        .split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .collect()
}

/// The names of a rendered Deployment's init containers (the injected ones).
fn injected(d: &k8s_openapi::api::apps::v1::Deployment) -> Vec<String> {
    let pod = d.spec.template.spec.as_ref().unwrap();
    pod.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

/// `text` as the entry of a YAML sequence, indented by `depth` levels.
fn item(text: &str, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    text.lines()
        .enumerate()
        .map(|(i, line)| format!("{pad}{}{line}\n", if i == 0 { "- " } else { "  " }))
        .collect()
}

/// What `kubectl get deploy -o yaml` prints: a v1 List, here with a List nested in it.
#[test]
fn lists_and_nested_lists_are_read_item_by_item() {
    let f = Fixture::new();
    let api = DEPLOYMENT.replace("name: web,", "name: api,");
    let nested = format!("apiVersion: v1\nkind: List\nitems:\n{}", item(&api, 0));
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        item(DEPLOYMENT, 0),
        item(&nested, 0)
    );
    let out = render(&f.file("p.yaml", POLICY), &f.file("d.yaml", &list), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rendered = documents(&out);
    let names: Vec<_> = rendered
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["web", "api"], "in input order");
    for d in &rendered {
        assert_eq!(injected(d), ["shipper"]);
    }

    // An error inside names the document and the item of each List.
    let typo = api.replace("image: \"nginx:1.27\"", "imagee: \"nginx:1.27\"");
    let nested = format!("apiVersion: v1\nkind: List\nitems:\n{}", item(&typo, 0));
    let list = format!(
        "{POLICY}---\napiVersion: v1\nkind: List\nitems:\n{}{}",
        item(DEPLOYMENT, 0),
        item(&nested, 0)
    );
    let d = f.file("bad.yaml", &list);
    let out = render(&f.file("p2.yaml", POLICY), &d, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{} document 2 item 2.1 (apps/v1 Deployment \"api\"): unknown field spec.template.spec.containers[0].imagee",
            d.display()
        )),
        "{}",
        stderr(&out)
    );
}

/// `kustomize build` output, on standard input: the policy comes with the Deployment, and the
/// other kinds are noted, not refused.
#[test]
fn kustomize_output_renders_its_deployments_with_its_policies() {
    let stream = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web-config}}\ndata: {{a: b}}\n---\n\
         {POLICY}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
         # a comment only\n---\n\
         {DEPLOYMENT}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web-headless}}\n"
    );
    let out = run(&["render", "--deployment", "-"], Some(&stream));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "note: standard input: ignored 4 documents of kinds render does not read: \
         1 v1 ServiceAccount, 1 v1 ConfigMap, 2 v1 Service\n"
    );
    let rendered = documents(&out);
    assert_eq!(
        rendered.len(),
        1,
        "only Deployments are printed: {}",
        stdout(&out)
    );
    assert_eq!(injected(&rendered[0]), ["shipper"]);
}

#[test]
fn deployments_in_a_policy_file_are_not_rendered() {
    let f = Fixture::new();
    let p = f.file("p.yaml", &format!("{DEPLOYMENT}---\n{POLICY}"));
    let api = DEPLOYMENT.replace("name: web,", "name: api,");
    let out = render(&p, &f.file("d.yaml", &api), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "note: {0}: 1 Deployment not rendered ({0} document 1): only the Deployments of --deployment are\n",
            p.display()
        )
    );
    let rendered = documents(&out);
    assert_eq!(rendered.len(), 1);
    assert_eq!(rendered[0].metadata.name.as_deref(), Some("api"));
}

#[test]
fn a_deployment_input_without_a_deployment_is_an_error() {
    let f = Fixture::new();
    let d = f.file(
        "d.yaml",
        &format!("{POLICY}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n"),
    );
    let out = render(&f.file("p.yaml", POLICY), &d, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("error: {} holds no apps/v1 Deployment\n", d.display())
    );
}

#[test]
fn without_any_policy_nothing_is_rendered() {
    let f = Fixture::new();
    let out = render_without_policy(&f.file("d.yaml", DEPLOYMENT));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no SidecarPolicy or ClusterSidecarPolicy is given: pass --policy FILE"),
        "{}",
        stderr(&out)
    );
}

fn render_without_policy(deployment: &Path) -> Output {
    run(&["render", "--deployment", deployment.to_str().unwrap()], None)
}

#[test]
fn namespace_flag_places_the_documents_that_name_none() {
    let f = Fixture::new();
    let policy = POLICY.replace(
        "metadata: {name: log-shipper}",
        "metadata: {name: log-shipper, namespace: team}",
    );
    let p = f.file("p.yaml", &policy);
    let d = f.file("d.yaml", DEPLOYMENT);

    // Without --namespace the Deployment is in `default`, where the policy is not.
    let out = render(&p, &d, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(injected(&documents(&out)[0]), Vec::<String>::new());
    assert!(
        stderr(&out).contains("is in namespace \"team\", where no Deployment is given"),
        "{}",
        stderr(&out)
    );

    for flag in ["--namespace", "-n"] {
        let out = render(&p, &d, &[flag, "team"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
        let rendered = documents(&out);
        assert_eq!(injected(&rendered[0]), ["shipper"]);
        assert_eq!(
            rendered[0].metadata.namespace, None,
            "the output names no namespace the input did not"
        );
    }
}

/// Two namespaces, each with its own policy of the same name: each Deployment gets only its
/// namespace's sidecar, and messages name the namespace.
#[test]
fn each_namespace_is_rendered_with_its_own_policies() {
    let f = Fixture::new();
    let policy = |ns: &str, sidecar: &str| {
        POLICY
            .replace(
                "metadata: {name: log-shipper}",
                &format!("metadata: {{name: log-shipper, namespace: {ns}}}"),
            )
            .replace("name: shipper", &format!("name: {sidecar}"))
    };
    let deployment = |ns: &str| {
        DEPLOYMENT.replace(
            "metadata: {name: web,",
            &format!("metadata: {{name: web, namespace: {ns},"),
        )
    };
    let p = f.file(
        "p.yaml",
        &format!(
            "{}---\n{}",
            policy("team-a", "a-agent"),
            policy("team-b", "b-agent")
        ),
    );
    let d = f.file(
        "d.yaml",
        &format!(
            "{}---\n{}---\n{}",
            deployment("team-b"),
            deployment("team-a"),
            deployment("team-c")
        ),
    );
    let out = render(&p, &d, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let rendered = documents(&out);
    let got: Vec<(String, Vec<String>)> = rendered
        .iter()
        .map(|d| (d.metadata.namespace.clone().unwrap(), injected(d)))
        .collect();
    assert_eq!(
        got,
        [
            ("team-b".to_owned(), vec!["b-agent".to_owned()]),
            ("team-a".to_owned(), vec!["a-agent".to_owned()]),
            ("team-c".to_owned(), vec![]),
        ],
        "input order, each with its own namespace's sidecar"
    );

    let diff = render(&p, &d, &["--diff"]);
    assert_eq!(diff.status.code(), Some(0), "{}", stderr(&diff));
    let text = stdout(&diff);
    assert!(
        text.starts_with(&format!(
            "--- {} (Deployment team-b/web, as written)\n",
            d.display()
        )),
        "{text}"
    );
    assert!(text.contains("(Deployment team-a/web, rendered)"), "{text}");
    assert_eq!(stderr(&diff), "note: Deployment \"team-c/web\": no change\n");

    // The same name twice in one namespace is still an error.
    let twice = f.file(
        "twice.yaml",
        &format!(
            "{}---\n{}",
            policy("team-a", "a-agent"),
            policy("team-a", "other")
        ),
    );
    let out = render(&twice, &d, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "SidecarPolicy \"log-shipper\" in namespace \"team-a\" is given twice: {0} document 1 and {0} document 2",
            twice.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_refusal_names_the_namespace_when_there_are_several() {
    let f = Fixture::new();
    let clash = POLICY
        .replace(
            "metadata: {name: log-shipper}",
            "metadata: {name: log-shipper, namespace: team-a}",
        )
        .replace("name: shipper", "name: web");
    let deployments = format!(
        "{}---\n{}",
        DEPLOYMENT.replace(
            "metadata: {name: web,",
            "metadata: {name: web, namespace: team-a,"
        ),
        DEPLOYMENT.replace(
            "metadata: {name: web,",
            "metadata: {name: web, namespace: team-b,"
        )
    );
    let out = render(&f.file("p.yaml", &clash), &f.file("d.yaml", &deployments), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("error: refusing to render Deployment \"team-a/web\":"),
        "{err}"
    );
    assert!(
        !err.contains("team-b/web"),
        "only team-a's Deployment is refused: {err}"
    );
}

/// Logs written to a pipe or file carry no colour codes. `run` against an API server that is not
/// there logs a warning at start (the server version cannot be read) and then keeps retrying, so
/// the test reads standard error until that line and stops the process.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let f = Fixture::new();
    // Port 1 on the loopback refuses connections at once.
    let kubeconfig = f.file(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\n\
         clusters: [{name: none, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: none, user: {token: x}}]\n\
         contexts: [{name: none, context: {cluster: none, user: none}}]\n\
         current-context: none\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-operator"))
        .args(["run", "--http-addr", "127.0.0.1:0", "--namespace", "demo"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = received.recv_timeout(Duration::from_secs(60)) {
        let done = line.contains("could not read the API server version");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(
        text.contains("could not read the API server version"),
        "expected the start-up warning:\n{text}"
    );
    assert!(!text.contains('\u{1b}'), "colour codes in piped logs:\n{text:?}");
}

const CLUSTER_POLICY: &str = r#"
apiVersion: sidecar.dev/v1alpha1
kind: ClusterSidecarPolicy
metadata: {name: mesh}
spec:
  namespaceSelector: {matchLabels: {mesh: enabled}}
  selector: {}
  sidecars:
  - name: proxy
    image: "proxy:1"
    startupProbe: {exec: {command: ["true"]}}
    resources: {requests: {cpu: 10m}}
"#;

#[test]
fn a_cluster_policy_applies_where_a_namespace_document_says_it_is_selected() {
    let f = Fixture::new();
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {mesh: enabled}}\n";
    let p = f.file("p.yaml", &format!("{CLUSTER_POLICY}---\n{namespace}"));
    let out = render(&p, &f.file("d.yaml", DEPLOYMENT), &["--namespace", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rendered: serde_json::Value = serde_norway::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        rendered["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "proxy"
    );

    // Excluded: as the operator's flag.
    let out = render(
        &p,
        &f.file("d2.yaml", DEPLOYMENT),
        &["--namespace", "demo", "--exclude-namespace", "demo"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("proxy"), "{}", stdout(&out));
}

#[test]
fn a_cluster_policy_given_twice_is_an_error() {
    let f = Fixture::new();
    let p = f.file("p.yaml", &format!("{CLUSTER_POLICY}---\n{CLUSTER_POLICY}"));
    let out = render(&p, &f.file("d.yaml", DEPLOYMENT), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ClusterSidecarPolicy \"mesh\" is given twice"),
        "{}",
        stderr(&out)
    );
}

/// `plan` and `explain` with a kubeconfig that points nowhere: argument and file errors must be
/// reported before any connection is tried.
fn run_offline(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-operator"))
        .args(args)
        .env("KUBECONFIG", "/nonexistent/sidecar-operator/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take();
    child.wait_with_output().unwrap()
}

#[test]
fn plan_rejects_a_deletion_it_cannot_read_as_bad_input() {
    for (bad, expected) in [
        ("sidecarpolicy/demo/x", "has more than one `/`"),
        ("demo/", "name \"\" is empty"),
        ("Demo/x", "namespace \"Demo\" is not a valid object name"),
    ] {
        let out = run_offline(&["plan", "--delete-policy", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{bad}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    let out = run_offline(&["plan", "--delete-cluster-policy", "demo/mesh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a ClusterSidecarPolicy has no namespace"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_needs_a_change() {
    let out = run_offline(&["plan", "-n", "demo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--policy <FILE>"),
        "the usage names what is missing: {}",
        stderr(&out)
    );
}

#[test]
fn plan_reports_a_missing_or_wrong_file_before_connecting() {
    let f = Fixture::new();
    let out = run_offline(&["plan", "--policy", "/nonexistent/sidecar-operator/p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: cannot read /nonexistent/sidecar-operator/p.yaml: "),
        "{}",
        stderr(&out)
    );

    let d = f.file("d.yaml", DEPLOYMENT);
    let out = run_offline(&["plan", "--policy", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {} holds no SidecarPolicy or ClusterSidecarPolicy\n",
            d.display()
        )
    );

    // Well-formed: it gets as far as the cluster, which is not there.
    let p = f.file("p.yaml", POLICY);
    let out = run_offline(&["plan", "--policy", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot connect to the cluster of the current kubeconfig"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plan_refuses_a_policy_both_given_and_deleted() {
    let f = Fixture::new();
    let p = f.file("p.yaml", POLICY);
    let out = run_offline(&[
        "plan",
        "--policy",
        p.to_str().unwrap(),
        "-n",
        "demo",
        "--delete-policy",
        "log-shipper",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // With -n the namespace is known without the cluster, so this is found before connecting.
    assert!(
        stderr(&out).starts_with(&format!(
            "error: SidecarPolicy demo/log-shipper is both given (in {} document 1) and deleted",
            p.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn explain_reads_only_deployments() {
    let out = run_offline(&["explain", "pod", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid value 'pod'"), "{}", stderr(&out));
}

#[test]
fn as_a_kubectl_plugin_the_help_names_kubectl_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-sidecar");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sidecar-operator"), &plugin).unwrap();
    let out = Command::new(&plugin)
        .args(["explain", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Usage: kubectl sidecar explain"),
        "{}",
        stdout(&out)
    );
    let out = run(&["explain", "--help"], None);
    assert!(
        stdout(&out).contains("Usage: sidecar-operator explain"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bad_flag_is_bad_input_not_a_refusal() {
    let f = Fixture::new();
    let out = render(
        &f.file("p.yaml", POLICY),
        &f.file("d.yaml", DEPLOYMENT),
        &["--no-such-flag"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
}

#[test]
fn render_warns_of_an_hpa_in_the_input_that_the_sidecars_skew() {
    let f = Fixture::new();
    let deployment = DEPLOYMENT.replace(
        r#"- {name: web, image: "nginx:1.27"}"#,
        r#"- {name: web, image: "nginx:1.27", resources: {requests: {cpu: 90m}}}"#,
    );
    let hpa = r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  maxReplicas: 4
  metrics:
  - {type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}
"#;
    let input = f.file("app.yaml", &format!("{deployment}---\n{hpa}"));
    let out = render(&f.file("p.yaml", POLICY), &input, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "warning: SidecarPolicy \"log-shipper\" spec.sidecars: sidecars \"shipper\" add 10m to the pod's 100m cpu requests: HorizontalPodAutoscaler \"web\" keeps cpu at 50% of them, so it now scales out at 50m of usage per pod instead of 45m"
    );
    // The HPA is read, not rendered: the output is the Deployment alone.
    assert!(
        !stdout(&out).contains("HorizontalPodAutoscaler"),
        "{}",
        stdout(&out)
    );
}
