//! Bad input to `render` and `plan`, as a table: each row is a command line and the files it
//! names, the exit code it must end with (1 bad input, 2 refused) and the message it must print
//! on standard error. `plan` runs with a kubeconfig that does not exist, so a row about a file
//! also shows that the file is checked before any cluster is asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::process::{Command, Stdio};

#[path = "common/inputs.rs"]
mod inputs;
use inputs::POLICY;

/// `inputs::DEPLOYMENT` with an init container of its own, `migrate`.
fn deployment() -> String {
    let containers = "      containers:";
    assert!(inputs::DEPLOYMENT.contains(containers));
    inputs::DEPLOYMENT.replacen(
        containers,
        &format!("      initContainers:\n      - {{name: migrate, image: \"migrate:1\"}}\n{containers}"),
        1,
    )
}

/// `POLICY` with `from` replaced by `to`.
fn policy_with(from: &str, to: &str) -> String {
    assert!(POLICY.contains(from), "{from:?}");
    POLICY.replacen(from, to, 1)
}

struct Row {
    what: &'static str,
    args: &'static [&'static str],
    /// Files written beside `policy.yaml` and `deployment.yaml` (a name ending in `/` is a
    /// directory).
    files: Vec<(&'static str, Vec<u8>)>,
    stdin: &'static str,
    code: i32,
    /// Every one of these is on standard error.
    stderr: &'static [&'static str],
}

fn row(what: &'static str, args: &'static [&'static str], code: i32, stderr: &'static [&'static str]) -> Row {
    Row {
        what,
        args,
        files: Vec::new(),
        stdin: "",
        code,
        stderr,
    }
}

impl Row {
    fn file(mut self, name: &'static str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name, content.into()));
        self
    }

    fn stdin(mut self, text: &'static str) -> Self {
        self.stdin = text;
        self
    }
}

fn rows() -> Vec<Row> {
    const REFUSED: i32 = 2;
    const BAD: i32 = 1;
    let render = |what, args, code, stderr| row(what, args, code, stderr);
    vec![
        render(
            "a misspelt flag",
            &["render", "--polcy", "policy.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["unexpected argument '--polcy' found", "a similar argument exists: '--policy'"],
        ),
        render(
            "no --deployment",
            &["render", "--policy", "policy.yaml"],
            BAD,
            &["the following required arguments were not provided", "--deployment <FILE>"],
        ),
        render(
            "a flag without its value",
            &["render", "--policy", "policy.yaml", "--deployment", "deployment.yaml", "--allow-capability"],
            BAD,
            &["a value is required for '--allow-capability <CAP>' but none was supplied"],
        ),
        render(
            "a missing policy file",
            &["render", "--policy", "missing.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["cannot read missing.yaml: No such file or directory"],
        ),
        render(
            "a missing deployment file",
            &["render", "--policy", "policy.yaml", "--deployment", "missing.yaml"],
            BAD,
            &["cannot read missing.yaml: No such file or directory"],
        ),
        render(
            "a directory for a file",
            &["render", "--policy", "policies/", "--deployment", "deployment.yaml"],
            BAD,
            &["cannot read policies/: Is a directory"],
        )
        .file("policies/", ""),
        render(
            "a file that is not UTF-8",
            &["render", "--policy", "binary.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["cannot read binary.yaml: stream did not contain valid UTF-8"],
        )
        .file("binary.yaml", b"kind: \xff\xfe\n".to_vec()),
        render(
            "malformed YAML",
            &["render", "--policy", "broken.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["broken.yaml document 1: invalid YAML: did not find expected ',' or '}' at line 3 column 1"],
        )
        .file("broken.yaml", "kind: SidecarPolicy\nmetadata: {name: x\n"),
        render(
            "a key given twice",
            &["render", "--policy", "twice.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["twice.yaml document 1: invalid YAML: spec: duplicate entry with key \"selector\" at line 5 column 3"],
        )
        .file(
            "twice.yaml",
            policy_with("  sidecars:", "  selector: {}\n  sidecars:"),
        ),
        render(
            "malformed YAML in the second document of standard input",
            &["render", "--policy", "policy.yaml", "--deployment", "-"],
            BAD,
            &["standard input document 2: invalid YAML"],
        )
        .stdin("kind: Service\napiVersion: v1\nmetadata: {name: a}\n---\nspec: [\n"),
        render(
            "another apiVersion of the policy",
            &["render", "--policy", "beta.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["beta.yaml document 1 is a sidecar.dev/v1beta1 SidecarPolicy; sidecar-operator reads sidecar.dev/v1alpha1 SidecarPolicy only"],
        )
        .file("beta.yaml", policy_with("v1alpha1", "v1beta1")),
        render(
            "an unknown field",
            &["render", "--policy", "unknown.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["unknown.yaml document 1 (sidecar.dev/v1alpha1 SidecarPolicy \"log-shipper\")", "hostNetwork"],
        )
        .file("unknown.yaml", policy_with("  sidecars:", "  hostNetwork: true\n  sidecars:")),
        render(
            "an empty policy file",
            &["render", "--policy", "empty.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["empty.yaml holds no SidecarPolicy, ClusterSidecarPolicy or Namespace"],
        )
        .file("empty.yaml", ""),
        render(
            "a deployment file without a Deployment",
            &["render", "--policy", "policy.yaml", "--deployment", "other.yaml"],
            BAD,
            &["other.yaml holds no apps/v1 Deployment"],
        )
        .file("other.yaml", POLICY.replace("log-shipper", "other")),
        render(
            "a policy given twice in one namespace",
            &["render", "--policy", "policy.yaml", "copy.yaml", "--deployment", "deployment.yaml"],
            BAD,
            &["SidecarPolicy \"log-shipper\" in namespace \"default\" is given twice: policy.yaml document 1 and copy.yaml document 1"],
        )
        .file("copy.yaml", POLICY),
        render(
            "the same file twice",
            &["render", "--policy", "policy.yaml", "--deployment", "policy.yaml"],
            BAD,
            &["policy.yaml is given more than once; give each file once"],
        ),
        render(
            "standard input twice",
            &["render", "--policy", "-", "--deployment", "-"],
            BAD,
            &["standard input (-) can be read only once"],
        )
        .stdin(POLICY),
        render(
            "a sidecar named like the Deployment's container",
            &["render", "--policy", "same-name.yaml", "--deployment", "deployment.yaml"],
            REFUSED,
            &["SidecarPolicy \"log-shipper\" spec.sidecars[0].name: container name \"web\" is already used by Deployment \"web\" (spec.template.spec.containers[0])"],
        )
        .file("same-name.yaml", policy_with("name: shipper", "name: web")),
        render(
            "a sidecar named like the Deployment's init container",
            &["render", "--policy", "same-init.yaml", "--deployment", "deployment.yaml"],
            REFUSED,
            &["container name \"migrate\" is already used by Deployment \"web\" (spec.template.spec.initContainers[0])"],
        )
        .file("same-init.yaml", policy_with("name: shipper", "name: migrate")),
        render(
            "a privileged sidecar without the flag",
            &["render", "--policy", "privileged.yaml", "--deployment", "deployment.yaml"],
            REFUSED,
            &["spec.sidecars[0].securityContext.privileged: container \"shipper\" asks to run privileged; the operator allows it only with --allow-privileged"],
        )
        .file(
            "privileged.yaml",
            policy_with("    image: busybox:1.36", "    image: busybox:1.36\n    securityContext: {privileged: true}"),
        ),
        render(
            "a policy that injects nothing",
            &["render", "--policy", "nothing.yaml", "--deployment", "deployment.yaml"],
            REFUSED,
            &["spec: a SidecarPolicy must inject at least one entry in spec.sidecars or spec.initContainers"],
        )
        .file(
            "nothing.yaml",
            "apiVersion: sidecar.dev/v1alpha1\nkind: SidecarPolicy\nmetadata: {name: nothing}\nspec: {selector: {}}\n",
        ),
        row(
            "plan: no policy and nothing to delete",
            &["plan"],
            BAD,
            &["the following required arguments were not provided", "--delete-policy"],
        ),
        row(
            "plan: a misspelt flag",
            &["plan", "--polcy", "policy.yaml"],
            BAD,
            &["unexpected argument '--polcy' found"],
        ),
        row(
            "plan: a missing file",
            &["plan", "--policy", "missing.yaml"],
            BAD,
            &["cannot read missing.yaml: No such file or directory"],
        ),
        row(
            "plan: malformed YAML",
            &["plan", "--policy", "broken.yaml"],
            BAD,
            &["broken.yaml document 1: invalid YAML"],
        )
        .file("broken.yaml", "kind: SidecarPolicy\nmetadata: {name: x\n"),
        row(
            "plan: a key given twice",
            &["plan", "--policy", "twice.yaml"],
            BAD,
            &["twice.yaml document 1: invalid YAML: spec: duplicate entry with key \"selector\" at line 5 column 3"],
        )
        .file(
            "twice.yaml",
            policy_with("  sidecars:", "  selector: {}\n  sidecars:"),
        ),
        row(
            "plan: another apiVersion of the policy",
            &["plan", "--policy", "beta.yaml"],
            BAD,
            &["sidecar-operator reads sidecar.dev/v1alpha1 SidecarPolicy only"],
        )
        .file("beta.yaml", policy_with("v1alpha1", "v1beta1")),
        row(
            "plan: a file without a policy",
            &["plan", "--policy", "deployment.yaml"],
            BAD,
            &["deployment.yaml holds no SidecarPolicy or ClusterSidecarPolicy"],
        ),
        row(
            "plan: a policy to delete named with two slashes",
            &["plan", "--delete-policy", "a/b/c"],
            BAD,
            &["\"a/b/c\" has more than one `/`: expected NAME or NAMESPACE/NAME"],
        ),
        row(
            "plan: no cluster to ask",
            &["plan", "--policy", "policy.yaml"],
            BAD,
            &["cannot connect to the cluster of the current kubeconfig"],
        ),
    ]
}

#[test]
fn bad_input_exits_with_its_code_and_a_specific_message() {
    let mut failures = Vec::new();
    let rows = rows();
    for row in &rows {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
        std::fs::write(dir.path().join("deployment.yaml"), deployment()).unwrap();
        for (name, content) in &row.files {
            match name.strip_suffix('/') {
                Some(directory) => std::fs::create_dir(dir.path().join(directory)).unwrap(),
                None => std::fs::write(dir.path().join(name), content).unwrap(),
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_sidecar-operator"))
            .args(row.args)
            .current_dir(dir.path())
            // plan must fail on the file, or on this, never reach a real cluster.
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), row.stdin.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let missing: Vec<&&str> = row.stderr.iter().filter(|m| !stderr.contains(**m)).collect();
        if output.status.code() != Some(row.code) || !missing.is_empty() {
            failures.push(format!(
                "{} ({}): exit {:?}, expected {}; missing {missing:?} in:\n{stderr}",
                row.what,
                row.args.join(" "),
                output.status.code(),
                row.code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
