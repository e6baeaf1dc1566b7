//! Prometheus metrics. Label values come from small fixed sets (controller names, error
//! categories, write kinds), never from object names, so cardinality stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `deployment` (injection) or `policy` (status).
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    /// `Error::category()`.
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    /// `apply`, `reorder`, `status`, `revision` or `event`.
    pub kind: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
    writes: Family<WriteLabel, Counter>,
    managed: Gauge,
    synced: Gauge,
    events_pending: Gauge,
    held: Gauge,
    hold_duration: Histogram,
    hold_available: Gauge,
    rollouts_stopped: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sidecar_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        let writes = Family::<WriteLabel, Counter>::default();
        let managed = Gauge::default();
        let synced = Gauge::default();
        let events_pending = Gauge::default();
        let held = Gauge::default();
        let hold_duration = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0]);
        let hold_available = Gauge::default();
        let rollouts_stopped = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took",
            duration.clone(),
        );
        registry.register("writes", "Writes to the API server, by kind", writes.clone());
        registry.register(
            "deployments_managed",
            "Deployments that carry injected containers",
            managed.clone(),
        );
        registry.register(
            "synced",
            "1 once every Deployment that existed at start has been reconciled (its status is known)",
            synced.clone(),
        );
        registry.register(
            "events_pending",
            "Events waiting to be sent (they follow the writes they report)",
            events_pending.clone(),
        );
        registry.register(
            "deployments_held",
            "Deployments held at admission (created paused) that the operator has not released yet",
            held.clone(),
        );
        registry.register(
            "hold_duration_seconds",
            "From when the operator first saw a Deployment held at admission to its release",
            hold_duration.clone(),
        );
        registry.register(
            "admission_hold_active",
            "1 when the API server serves MutatingAdmissionPolicy v1 and the install's admission-hold binding exists (read at start)",
            hold_available.clone(),
        );
        registry.register(
            "rollouts_stopped",
            "Policies whose staged rollout stopped on a failed Deployment (their status names it)",
            rollouts_stopped.clone(),
        );
        Metrics {
            registry,
            rollouts_stopped,
            held,
            hold_duration,
            hold_available,
            synced,
            events_pending,
            reconciles,
            failures,
            duration,
            writes,
            managed,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, took: Duration, failure: Option<&'static str>) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(took.as_secs_f64());
        if let Some(category) = failure {
            self.failures
                .get_or_create(&FailureLabels { controller, category })
                .inc();
        }
    }

    pub fn wrote(&self, kind: &'static str) {
        self.writes.get_or_create(&WriteLabel { kind }).inc();
    }

    pub fn set_managed(&self, deployments: usize) {
        self.managed.set(i64::try_from(deployments).unwrap_or(i64::MAX));
    }

    pub fn set_rollouts_stopped(&self, policies: usize) {
        self.rollouts_stopped
            .set(i64::try_from(policies).unwrap_or(i64::MAX));
    }

    pub fn set_held(&self, deployments: usize) {
        self.held.set(i64::try_from(deployments).unwrap_or(i64::MAX));
    }

    pub fn hold_released(&self, held: Duration) {
        self.hold_duration.observe(held.as_secs_f64());
    }

    pub fn set_hold_active(&self, active: bool) {
        self.hold_available.set(i64::from(active));
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.set(i64::from(synced));
    }

    pub fn event_queued(&self) {
        self.events_pending.inc();
    }

    pub fn event_sent(&self) {
        self.events_pending.dec();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.reconciled("deployment", Duration::from_millis(3), None);
        m.reconciled("deployment", Duration::from_millis(3), Some("api"));
        m.wrote("apply");
        m.set_managed(7);
        m.set_held(2);
        m.hold_released(Duration::from_millis(300));
        m.set_hold_active(true);
        let text = m.encode().unwrap();
        assert!(
            text.contains("sidecar_operator_reconciles_total{controller=\"deployment\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "sidecar_operator_reconcile_failures_total{controller=\"deployment\",category=\"api\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sidecar_operator_writes_total{kind=\"apply\"} 1"),
            "{text}"
        );
        assert!(text.contains("sidecar_operator_deployments_managed 7"), "{text}");
        assert!(text.contains("sidecar_operator_deployments_held 2"), "{text}");
        assert!(
            text.contains("sidecar_operator_hold_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("sidecar_operator_admission_hold_active 1"),
            "{text}"
        );
        assert!(
            text.contains("sidecar_operator_reconcile_duration_seconds_count{controller=\"deployment\"} 2"),
            "{text}"
        );
    }
}
