//! A throwaway control plane for the end-to-end suite, in the convention of controller-runtime's
//! envtest: `KUBEBUILDER_ASSETS` names a directory holding `kube-apiserver` and `etcd`. Each test
//! starts its own etcd and kube-apiserver on free loopback ports, with certificates and a
//! service-account key made for it (openssl), and stops them when it ends. When the directory
//! also holds `kube-controller-manager`, it runs too: Deployments then get ReplicaSets and
//! status, namespaces are cleaned up and owned objects garbage-collected. No kubelet runs, so
//! Pods stay Pending unless a test acts as the node.

#![allow(dead_code)] // each test file uses part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The running processes and the files they use; dropping it stops them.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Child,
    controller_manager: Option<Child>,
    pub kubeconfig: PathBuf,
    /// The API server's port on 127.0.0.1.
    pub api_port: u16,
    /// How etcd and kube-apiserver were started, to start them again (see `restart`).
    etcd_command: Vec<String>,
    apiserver_command: Vec<String>,
}

const TOKEN: &str = "sidecar-e2e-admin-token";

impl ControlPlane {
    pub fn start(assets: &Path) -> ControlPlane {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path();
        make_certificates(d);
        std::fs::write(
            d.join("tokens.csv"),
            format!("{TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_command = [
            assets.join("etcd").display().to_string(),
            "--name=e2e".to_owned(),
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".to_owned(),
        ]
        .to_vec();
        let etcd = spawn(&etcd_command, d, "etcd.log");
        let file = |name: &str| d.join(name).display().to_string();
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\ncurrent-context: e2e\n",
                file("ca.crt")
            ),
        )
        .unwrap();
        let apiserver_command = [
            assets.join("kube-apiserver").display().to_string(),
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", file("apiserver.crt")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--token-auth-file={}", file("tokens.csv")),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
            format!("--service-account-key-file={}", file("sa.pub")),
            format!("--service-account-signing-key-file={}", file("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // Nothing creates service accounts without a controller manager.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            "--allow-privileged=true".to_owned(),
        ]
        .to_vec();
        let apiserver = spawn(&apiserver_command, d, "kube-apiserver.log");
        // It retries until the API server answers, so it can start at once.
        let controller_manager = assets.join("kube-controller-manager").exists().then(|| {
            Command::new(assets.join("kube-controller-manager"))
                .args([
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--service-account-private-key-file={}", file("sa.key")),
                    format!("--root-ca-file={}", file("ca.crt")),
                    "--controllers=*".to_owned(),
                    "--use-service-account-credentials=false".to_owned(),
                    "--leader-elect=false".to_owned(),
                    "--secure-port=0".to_owned(),
                    // Its client's default limit (20 requests/s, bursts of 30) would make the
                    // chaos run's hundreds of pod rollouts after an API server restart wait on
                    // kube-controller-manager, not on the operator under test. Large clusters
                    // raise it too.
                    "--kube-api-qps=200".to_owned(),
                    "--kube-api-burst=400".to_owned(),
                ])
                .stdout(log(d, "kube-controller-manager.log"))
                .stderr(log(d, "kube-controller-manager.log"))
                .spawn()
                .expect("kube-controller-manager from KUBEBUILDER_ASSETS starts")
        });

        ControlPlane {
            dir,
            etcd,
            apiserver,
            controller_manager,
            kubeconfig,
            api_port,
            etcd_command,
            apiserver_command,
        }
    }

    /// Kills kube-apiserver and etcd (SIGKILL, as a crash would) and starts them again on the
    /// same ports and data: what every client sees as the API server going away and coming back.
    /// kube-controller-manager keeps running and reconnects.
    pub fn restart(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let d = self.dir.path();
        self.etcd = spawn(&self.etcd_command, d, "etcd.log");
        self.apiserver = spawn(&self.apiserver_command, d, "kube-apiserver.log");
    }

    /// Whether kube-controller-manager runs beside the API server.
    pub fn has_controllers(&self) -> bool {
        self.controller_manager.is_some()
    }

    /// Which process has exited, and how, if one has: a control plane that is starting or
    /// running has all of them alive.
    pub fn exited(&mut self) -> Option<String> {
        [
            ("etcd", Some(&mut self.etcd)),
            ("kube-apiserver", Some(&mut self.apiserver)),
            ("kube-controller-manager", self.controller_manager.as_mut()),
        ]
        .into_iter()
        .filter_map(|(name, child)| Some((name, child?)))
        .find_map(|(name, child)| match child.try_wait() {
            Ok(Some(status)) => Some(format!("{name} exited ({status})")),
            Ok(None) | Err(_) => None,
        })
    }

    /// The end of the control plane's logs, for a failure message.
    pub fn logs(&self) -> String {
        ["etcd.log", "kube-apiserver.log", "kube-controller-manager.log"]
            .iter()
            .map(|name| format!("--- {name}\n{}", tail(&self.dir.path().join(name), 20)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let controllers = self.controller_manager.as_mut();
        for child in controllers
            .into_iter()
            .chain([&mut self.apiserver, &mut self.etcd])
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of the file at `path` (none if it cannot be read), for a failure message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Starts `command` (the binary, then its arguments), logging to `log_name` in `dir`.
fn spawn(command: &[String], dir: &Path, log_name: &str) -> Child {
    Command::new(&command[0])
        .args(&command[1..])
        .stdout(log(dir, log_name))
        .stderr(log(dir, log_name))
        .spawn()
        .unwrap_or_else(|e| panic!("{} from KUBEBUILDER_ASSETS starts: {e}", command[0]))
}

fn log(dir: &Path, name: &str) -> Stdio {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    Stdio::from(file)
}

/// A port nothing listens on right now (the OS picks it; another process could take it before
/// the control plane does, which would fail the start loudly, not silently).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn make_certificates(d: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=e2e-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    std::fs::write(
        d.join("serving.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "serving.ext",
        "-out",
        "apiserver.crt",
    ]);
    openssl(&["genrsa", "-out", "sa.key", "2048"]);
    openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
}
