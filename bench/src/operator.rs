//! The operator as a process: started with the harness's kubeconfig, read through its metrics
//! endpoint and through `/proc` (resident memory, CPU time), stopped with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::Error;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

#[derive(Debug)]
pub struct Operator {
    child: Child,
    metrics: String,
    pub started: Instant,
}

/// What `/proc` says of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Resident set size now, MiB.
    pub rss_mib: f64,
    /// Peak resident set size, MiB.
    pub peak_mib: f64,
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
}

impl Operator {
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        namespaces: &[String],
        port: u16,
        concurrency: u16,
        log: PathBuf,
    ) -> Result<Self, Error> {
        let log = std::fs::File::create(&log).map_err(|e| Error::Io(format!("{}", log.display()), e))?;
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .arg(format!("--concurrency={concurrency}"))
            .arg("--log-format=json")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for namespace in namespaces {
            command.arg(format!("--namespace={namespace}"));
        }
        let child = command
            .spawn()
            .map_err(|e| Error::Io(format!("starting {}", binary.display()), e))?;
        Ok(Operator {
            child,
            metrics: format!("127.0.0.1:{port}"),
            started: Instant::now(),
        })
    }

    /// Waits until every Deployment that existed at start has been reconciled
    /// (`sidecar_operator_synced 1`); returns how long after start that was.
    pub async fn synced(&self, patience: Duration) -> Result<Duration, Error> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(text) = self.metrics().await
                && text.lines().any(|l| l.trim() == "sidecar_operator_synced 1")
            {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout("the operator to report synced".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the operator has sent every Event it queued (`sidecar_operator_events_pending 0`),
    /// so that one scenario's Events are not counted in, or slow down, the next.
    pub async fn events_sent(&self, patience: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(text) = self.metrics().await
                && text
                    .lines()
                    .any(|l| l.trim() == "sidecar_operator_events_pending 0")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout("the operator to send its Events".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The operator's metrics exposition.
    pub async fn metrics(&self) -> Result<String, Error> {
        let io = |e| Error::Io(format!("GET http://{}/metrics", self.metrics), e);
        let mut stream = TcpStream::connect(&self.metrics).await.map_err(io)?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .map_err(io)?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.map_err(io)?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    pub fn usage(&self) -> Result<Usage, Error> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| Error::Exited("the operator".into()))?;
        let read = |file: &str| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::read_to_string(&path).map_err(|e| Error::Io(path, e))
        };
        let status = read("status")?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let stat = read("stat")?;
        // Fields after the command name (which may hold spaces) are space-separated; utime and
        // stime are the 14th and 15th fields of the line.
        let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Ok(Usage {
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_mib: kib("VmHWM:") / 1024.0,
            cpu_seconds: (ticks(11) + ticks(12)) / TICKS,
        })
    }

    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
