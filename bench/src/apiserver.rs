//! Writes as the API server counts them: `apiserver_request_total` from its `/metrics`.
//!
//! Counting on the server side counts every write, whoever makes it, so a scenario's count is
//! taken between two snapshots while only the operator writes (the harness's own writes happen
//! before the first snapshot). kube-controller-manager's writes are told apart by what they are:
//! it updates (PUT) Deployments and writes their status, the operator only patches.

use std::collections::BTreeMap;

use kube::Client;

/// `(group, resource, subresource, verb, served)` to request count; `served` when the answer was
/// a success (2xx), not a refusal such as a conflict or "already exists".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot(BTreeMap<(String, String, String, String, bool), f64>);

/// The operator's writes between two snapshots, by what was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    /// Server-side applies and patches of Deployments.
    pub deployments: u64,
    /// Patches of SidecarPolicy status.
    pub policy_status: u64,
    /// Events (`events.k8s.io`) created or patched.
    pub events: u64,
    /// ControllerRevisions created, patched or deleted.
    pub revisions: u64,
    /// Requests of the kinds above that the server refused (a field conflict, a stale
    /// resourceVersion, an Event that exists already): not counted above.
    pub refused: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.deployments + self.policy_status + self.events + self.revisions
    }
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Deployment, {} status, {} Event, {} revision",
            self.deployments, self.policy_status, self.events, self.revisions
        )
    }
}

pub async fn snapshot(client: &Client) -> Result<Snapshot, kube::Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(parse(&client.request_text(request).await?))
}

/// One sample of a Prometheus text exposition: its labels and its value.
pub struct Sample<'a> {
    labels: &'a str,
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name` (empty when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .split(',')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
            .map(|v| v.trim_end_matches('"'))
            .unwrap_or_default()
    }
}

/// The sample on `line` if it is one of `metric` (with labels).
pub fn sample<'a>(line: &'a str, metric: &str) -> Option<Sample<'a>> {
    let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let value = value.trim().parse::<f64>().ok()?;
    Some(Sample { labels, value })
}

/// Reads the `apiserver_request_total` samples of a Prometheus text exposition.
pub fn parse(text: &str) -> Snapshot {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(sample) = sample(line, "apiserver_request_total") else {
            continue;
        };
        let (value, label) = (sample.value, |name: &str| sample.label(name).to_owned());
        let key = (
            label("group"),
            label("resource"),
            label("subresource"),
            label("verb"),
            label("code").starts_with('2'),
        );
        *counts.entry(key).or_insert(0.0) += value;
    }
    Snapshot(counts)
}

impl Snapshot {
    fn count(&self, served: bool, group: &str, resource: &str, subresource: &str, verbs: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|((g, r, s, v, ok), _)| {
                *ok == served
                    && g == group
                    && r == resource
                    && s == subresource
                    && verbs.contains(&v.as_str())
            })
            .map(|(_, count)| count)
            .sum()
    }

    /// Every write the API server served, by anyone.
    pub fn all_writes(&self) -> f64 {
        self.0
            .iter()
            .filter(|((_, _, _, verb, _), _)| {
                matches!(
                    verb.as_str(),
                    "POST" | "CREATE" | "PUT" | "UPDATE" | "PATCH" | "APPLY" | "DELETE"
                )
            })
            .map(|(_, count)| count)
            .sum()
    }

    /// The operator's writes from `earlier` to this snapshot.
    pub fn writes_since(&self, earlier: &Snapshot) -> Writes {
        const DEPLOYMENTS: (&str, &str, &str, &[&str]) = ("apps", "deployments", "", &["APPLY", "PATCH"]);
        const STATUS: (&str, &str, &str, &[&str]) =
            ("sidecar.dev", "sidecarpolicies", "status", &["APPLY", "PATCH"]);
        const EVENTS: (&str, &str, &str, &[&str]) = (
            "events.k8s.io",
            "events",
            "",
            &["POST", "CREATE", "PATCH", "APPLY"],
        );
        const REVISIONS: (&str, &str, &str, &[&str]) = (
            "apps",
            "controllerrevisions",
            "",
            &["POST", "CREATE", "PATCH", "APPLY", "DELETE"],
        );
        let delta = |served, (group, resource, subresource, verbs): (&str, &str, &str, &[&str])| {
            let after = self.count(served, group, resource, subresource, verbs);
            let before = earlier.count(served, group, resource, subresource, verbs);
            // Counters only grow; a restarted server would make this negative.
            (after - before).max(0.0).round() as u64
        };
        Writes {
            deployments: delta(true, DEPLOYMENTS),
            policy_status: delta(true, STATUS),
            events: delta(true, EVENTS),
            revisions: delta(true, REVISIONS),
            refused: [DEPLOYMENTS, STATUS, EVENTS, REVISIONS]
                .into_iter()
                .map(|kind| delta(false, kind))
                .sum(),
        }
    }
}

/// Waits until nobody writes (kube-controller-manager catching up with a rollout, say) for a few
/// seconds, so that a measurement starts on a cluster at rest.
pub async fn quiet(client: &Client, patience: std::time::Duration) -> Result<(), crate::Error> {
    let start = std::time::Instant::now();
    let mut last = snapshot(client).await?.all_writes();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let now = snapshot(client).await?.all_writes();
        if now == last {
            return Ok(());
        }
        if start.elapsed() > patience {
            return Err(crate::Error::Timeout("the cluster to come to rest".into()));
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_operators_writes_only() {
        let before = parse(
            r#"# HELP apiserver_request_total Counter of apiserver requests
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="PUT",version="v1"} 4
"#,
        );
        let after = parse(
            r#"apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 25
apiserver_request_total{code="409",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="PUT",version="v1"} 40
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PUT",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="events.k8s.io",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="409",component="apiserver",dry_run="",group="events.k8s.io",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 1
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 9
apiserver_request_total{code="200",component="apiserver",dry_run="",group="sidecar.dev",resource="sidecarpolicies",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 1
apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="controllerrevisions",scope="resource",subresource="",verb="POST",version="v1"} 1
"#,
        );
        assert_eq!(
            after.writes_since(&before),
            Writes {
                deployments: 15,
                policy_status: 1,
                events: 3,
                revisions: 1,
                refused: 3,
            },
            "kube-controller-manager's updates, status writes and core Events are not the operator's; refusals are apart"
        );
    }
}
