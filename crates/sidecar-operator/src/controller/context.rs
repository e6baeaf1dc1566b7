//! What every reconcile shares: the client, the policy cache, the guardrails and the event
//! recorder.

use std::collections::HashMap;

use futures::FutureExt;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use sidecar_api::SidecarPolicy;
use sidecar_core::Guardrails;

use super::{FIELD_MANAGER, GuardedPolicy};
use crate::metrics::Metrics;

/// How soon a reconcile that found a cache still filling runs again.
pub const CACHE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often [`Context::wait_until_filled`] looks at the caches.
const FILLED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

pub struct Context {
    pub client: Client,
    /// Every SidecarPolicy the operator watches, kept current by the policy controller's watch.
    /// A policy that cannot be decoded is kept as an error rather than stalling the watch.
    pub policies: Store<GuardedPolicy>,
    /// Every Deployment the operator watches, kept current by the Deployment controller's watch.
    pub deployments: Store<Deployment>,
    pub guardrails: Guardrails,
    pub recorder: Recorder,
    /// Why the API server cannot run native sidecars, if it cannot: then nothing is written to
    /// Deployments and every policy's status says so.
    pub unsupported_server: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per Deployment, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Deployment>, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("guardrails", &self.guardrails)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        policies: Store<GuardedPolicy>,
        deployments: Store<Deployment>,
        guardrails: Guardrails,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            policies,
            deployments,
            guardrails,
            unsupported_server: None,
            metrics: Arc::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Shares `metrics` with the HTTP endpoint.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Marks the API server as unable to run native sidecars, for the reason given.
    pub fn with_unsupported_server(mut self, reason: Option<String>) -> Self {
        self.unsupported_server = reason;
        self
    }

    /// Whether both caches are filled. Rendering against a cache that is still filling would strip
    /// sidecars, so a reconcile that finds one unfilled is requeued. It must not wait instead: a
    /// cache may be filled by the very trigger stream of the controller whose reconcile waits.
    pub fn caches_filled(&self) -> bool {
        let filled = |ready: Option<Result<(), _>>| matches!(ready, Some(Ok(())));
        filled(self.policies.wait_until_ready().now_or_never())
            && filled(self.deployments.wait_until_ready().now_or_never())
    }

    /// Resolves once both caches are filled.
    ///
    /// It polls [`Context::caches_filled`] rather than awaiting `Store::wait_until_ready`: kube's
    /// readiness future wakes only the task that polled it last, and every `caches_filled` call
    /// polls it, so an awaiting task would never be woken once a reconcile had looked.
    pub async fn wait_until_filled(&self) {
        while !self.caches_filled() {
            tokio::time::sleep(FILLED_POLL).await;
        }
    }

    /// The policies of `namespace`: those that decode, and those that do not.
    pub fn namespace_policies(&self, namespace: &str) -> NamespacePolicies {
        let mut policies = NamespacePolicies::default();
        for guarded in self.policies.state() {
            if guarded.namespace().as_deref() != Some(namespace) {
                continue;
            }
            match &guarded.0 {
                Ok(policy) => policies.readable.push(policy.clone()),
                Err(invalid) => policies.unreadable.push(invalid.clone()),
            }
        }
        policies
    }

    /// Counts a failure of `deployment` and returns how many in a row it has had.
    pub(crate) fn failed(&self, deployment: ObjectRef<Deployment>) -> u32 {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failures.entry(deployment).or_insert(0);
        *count += 1;
        *count
    }

    pub(crate) fn succeeded(&self, deployment: &ObjectRef<Deployment>) {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(deployment);
    }
}

/// The SidecarPolicies of one namespace.
#[derive(Debug, Default)]
pub struct NamespacePolicies {
    pub readable: Vec<SidecarPolicy>,
    /// Policies whose stored form does not decode (for example written under an older CRD).
    pub unreadable: Vec<InvalidObject>,
}
