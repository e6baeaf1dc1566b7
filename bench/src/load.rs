//! What a timed window cost the machine and the API server, to tell on a small shared machine a
//! slower operator from a busier control plane: CPU seconds of the whole machine (`/proc/stat`),
//! of the operator (`/proc/<pid>`) and of kube-apiserver (`process_cpu_seconds_total`), the
//! requests it served, and the Deployment status updates it refused as conflicts (each one makes
//! kube-controller-manager read and sync that Deployment again).

use std::time::Duration;

use kube::Client;

use crate::operator::Operator;
use crate::{Error, apiserver};

/// Clock ticks per second of `/proc/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

/// Counters at one instant, or their growth over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    pub machine: f64,
    pub operator: f64,
    pub apiserver: f64,
    pub requests: f64,
    pub conflicts: f64,
}

impl Spent {
    pub async fn now(client: &Client, operator: &Operator) -> Result<Self, Error> {
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        let mut spent = from_metrics(&client.request_text(request).await?);
        spent.machine = machine_cpu()?;
        spent.operator = operator.usage()?.cpu_seconds;
        Ok(spent)
    }

    pub fn since(&self, earlier: &Spent) -> Spent {
        Spent {
            machine: self.machine - earlier.machine,
            operator: self.operator - earlier.operator,
            apiserver: self.apiserver - earlier.apiserver,
            requests: self.requests - earlier.requests,
            conflicts: self.conflicts - earlier.conflicts,
        }
    }

    /// One line for a window of `took`.
    pub fn line(&self, took: Duration) -> String {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let busy = 100.0 * self.machine / (took.as_secs_f64() * cores as f64).max(f64::MIN_POSITIVE);
        format!(
            "CPU while timed: operator {:.2} s, kube-apiserver {:.1} s, machine {busy:.0}% busy ({cores} cores); {:.0} API requests, {:.0} Deployment status conflicts",
            self.operator, self.apiserver, self.requests, self.conflicts
        )
    }
}

/// kube-apiserver's CPU seconds, requests and Deployment status conflicts from its metrics.
fn from_metrics(text: &str) -> Spent {
    let mut spent = Spent::default();
    for line in text.lines() {
        if let Some(cpu) = line.strip_prefix("process_cpu_seconds_total ") {
            spent.apiserver = cpu.trim().parse().unwrap_or(0.0);
        }
        let Some(sample) = apiserver::sample(line, "apiserver_request_total") else {
            continue;
        };
        spent.requests += sample.value;
        if sample.label("resource") == "deployments"
            && sample.label("subresource") == "status"
            && sample.label("code") == "409"
        {
            spent.conflicts += sample.value;
        }
    }
    spent
}

/// CPU seconds the machine has been busy, every core (neither idle nor waiting for I/O).
fn machine_cpu() -> Result<f64, Error> {
    let path = "/proc/stat";
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.into(), e))?;
    let ticks: Vec<f64> = (text.lines().next().unwrap_or_default().split_whitespace())
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Ok((ticks.iter().sum::<f64>() - idle) / TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_requests_and_status_conflicts() {
        let text = r#"process_cpu_seconds_total 12.5
apiserver_request_total{code="200",group="apps",resource="deployments",subresource="status",verb="PUT"} 30
apiserver_request_total{code="409",group="apps",resource="deployments",subresource="status",verb="PUT"} 4
apiserver_request_total{code="409",group="apps",resource="deployments",subresource="",verb="APPLY"} 1
"#;
        let spent = from_metrics(text);
        assert_eq!(spent.apiserver, 12.5);
        assert_eq!(spent.requests, 35.0);
        assert_eq!(spent.conflicts, 4.0);
    }
}
