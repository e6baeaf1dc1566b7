//! What every reconcile shares: the client, the caches, the prepared policies, the outcome index,
//! the bookkeeping of writes and failures, and the channels that trigger status reconciles.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use sidecar_api::SidecarPolicyStatus;
use sidecar_core::Guardrails;
use sidecar_core::autoscaling::{AutoscalerIndex, Autoscalers};
use sidecar_core::cluster::{self, Exclusions, NamespaceLabels};
use sidecar_core::outcome::{Outcome, OutcomeIndex};

use super::events::Events;
use super::policy_sets::{NamespacePolicies, PolicySets};
use super::revisions::cluster_revision_prefix;
use super::rollouts::Rollouts;
use super::view::DeploymentView;
use super::{GuardedClusterPolicy, GuardedPolicy};
use crate::metrics::Metrics;

/// How soon a reconcile that found a cache still filling runs again.
pub const CACHE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// Default of `--max-hold`: how long a Deployment held at admission may wait for a render that
/// keeps failing before it is released without its sidecars.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(120);
/// Default of `--exclude-namespace`: where no ClusterSidecarPolicy ever injects (the operator's
/// own namespace is added at start).
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];
/// Default of `--revision-namespace` without `POD_NAMESPACE`.
pub const DEFAULT_REVISION_NAMESPACE: &str = "default";

/// The operator's settings for ClusterSidecarPolicies.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Namespaces no ClusterSidecarPolicy selects.
    pub exclusions: Exclusions,
    /// Where their revisions (ControllerRevisions) are stored: the operator's own namespace.
    pub revision_namespace: String,
}

/// How often [`Context::wait_until_filled`] looks at the caches.
const FILLED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The caches the controllers read, each filled by one watch.
#[derive(Clone, Debug)]
pub struct Caches {
    pub deployments: Store<DeploymentView>,
    pub policies: Store<GuardedPolicy>,
    /// The policies' ControllerRevisions (those labelled `sidecar.dev/policy`).
    pub revisions: Store<ControllerRevision>,
    /// ClusterSidecarPolicies and Namespaces: watched only when the operator watches every
    /// namespace (a namespaced install has no right to either).
    pub cluster: Option<ClusterCaches>,
}

/// What ClusterSidecarPolicies need: the policies, and the labels of every namespace.
#[derive(Clone, Debug)]
pub struct ClusterCaches {
    pub policies: Store<GuardedClusterPolicy>,
    /// Metadata only: a namespace's labels are all a namespaceSelector reads.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

/// A policy of either kind as the bookkeeping names it: a SidecarPolicy by (namespace, name), a
/// ClusterSidecarPolicy by ("", its key; see `sidecar_core::cluster`).
pub type PolicyId = (String, String);

/// The [`PolicyId`] of a SidecarPolicy.
pub fn policy_id(policy: &ObjectRef<GuardedPolicy>) -> PolicyId {
    (policy.namespace.clone().unwrap_or_default(), policy.name.clone())
}

/// The [`PolicyId`] of a ClusterSidecarPolicy.
pub fn cluster_policy_id(name: &str) -> PolicyId {
    (String::new(), cluster::key(name))
}

/// The receiving ends of the triggers the controllers run on.
#[allow(missing_debug_implementations)] // mpsc receivers have no Debug
pub struct TriggerStreams {
    pub deployments: UnboundedReceiver<ObjectRef<DeploymentView>>,
    pub policies: UnboundedReceiver<ObjectRef<GuardedPolicy>>,
    pub cluster_policies: UnboundedReceiver<ObjectRef<GuardedClusterPolicy>>,
}

/// Sends reconcile triggers to the controllers.
#[derive(Clone, Debug)]
pub struct Triggers {
    deployments: UnboundedSender<ObjectRef<DeploymentView>>,
    policies: UnboundedSender<ObjectRef<GuardedPolicy>>,
    cluster_policies: UnboundedSender<ObjectRef<GuardedClusterPolicy>>,
}

impl Triggers {
    pub fn new() -> (Self, TriggerStreams) {
        let (deployments, deployment_stream) = unbounded();
        let (policies, policy_stream) = unbounded();
        let (cluster_policies, cluster_policy_stream) = unbounded();
        (
            Triggers {
                deployments,
                policies,
                cluster_policies,
            },
            TriggerStreams {
                deployments: deployment_stream,
                policies: policy_stream,
                cluster_policies: cluster_policy_stream,
            },
        )
    }

    /// The status of ClusterSidecarPolicy `name`.
    pub fn cluster_policy(&self, name: &str) {
        let _ = self.cluster_policies.unbounded_send(ObjectRef::new(name));
    }

    pub fn deployment(&self, namespace: &str, name: &str) {
        // A closed channel means the controller is shutting down: nothing left to trigger.
        let _ = self
            .deployments
            .unbounded_send(ObjectRef::new(name).within(namespace));
    }

    pub fn policy(&self, namespace: &str, name: &str) {
        let _ = self
            .policies
            .unbounded_send(ObjectRef::new(name).within(namespace));
    }
}

/// A Deployment write whose result the cache may not show yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// The resourceVersions that precede the write's result or are its result: the cache showing
    /// one of them has not seen anything newer than the write.
    pub resource_versions: Vec<String>,
    /// A digest of the plan that was written.
    pub plan: u64,
    /// The generation the write left the Deployment at.
    pub generation: Option<i64>,
    /// The write released the Deployment from the admission hold.
    pub released: bool,
}

/// What recording an outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The outcome differs from the last one recorded (which is when the user hears about it).
    pub changed: bool,
    /// No outcome was recorded before in this process: an earlier one may have reported it.
    pub first: bool,
    /// The outcome has warnings, and not the ones recorded before.
    pub new_warnings: bool,
}

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub guardrails: Guardrails,
    pub events: Events,
    /// Why the API server cannot run native sidecars, if it cannot: then nothing is written to
    /// Deployments and every policy's status says so.
    pub unsupported_server: Option<String>,
    pub metrics: Arc<Metrics>,
    pub triggers: Triggers,
    /// Namespaces no ClusterSidecarPolicy selects.
    pub exclusions: Exclusions,
    /// Where ClusterSidecarPolicies' revisions (ControllerRevisions) are stored.
    pub revision_namespace: String,
    pub policy_sets: PolicySets,
    /// The staged rollouts under way.
    pub rollouts: Rollouts,
    outcomes: Mutex<OutcomeIndex>,
    /// The HorizontalPodAutoscalers and VerticalPodAutoscalers that scale Deployments, for the
    /// warnings of the sidecars they skew (fed by their watches; empty when not watched).
    autoscalers: Mutex<AutoscalerIndex>,
    written: Mutex<HashMap<ObjectRef<DeploymentView>, Written>>,
    /// Consecutive failures per object, for exponential backoff.
    deployment_failures: Mutex<HashMap<ObjectRef<DeploymentView>, u32>>,
    policy_failures: Mutex<HashMap<PolicyId, u32>>,
    /// Each policy's status as last written, and when: the cache may not show it yet, and
    /// progress is written at most once per interval.
    status_written: Mutex<HashMap<PolicyId, (SidecarPolicyStatus, Instant)>>,
    /// Revision writes the revision cache may not show yet, by (namespace, revision name prefix,
    /// hash): the number written, or `None` for a deletion.
    revisions_written: Mutex<HashMap<(String, String, String), Option<i64>>>,
    /// When this process first saw each Deployment that is held at admission.
    held_since: Mutex<HashMap<ObjectRef<DeploymentView>, Instant>>,
    /// How long a held Deployment may wait for a render that keeps failing.
    pub max_hold: Duration,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("guardrails", &self.guardrails)
            .field("unsupported_server", &self.unsupported_server)
            .finish_non_exhaustive()
    }
}

/// Locks `mutex`; a panic elsewhere while it was held leaves plain data, still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Context {
    pub fn new(client: Client, caches: Caches, guardrails: Guardrails, triggers: Triggers) -> Self {
        let metrics = Arc::<Metrics>::default();
        Context {
            events: Events::inline(client.clone(), metrics.clone()),
            client,
            caches,
            guardrails,
            unsupported_server: None,
            metrics,
            triggers,
            exclusions: Exclusions::new(DEFAULT_EXCLUDED_NAMESPACES.iter().map(|&ns| ns.to_owned())),
            revision_namespace: DEFAULT_REVISION_NAMESPACE.to_owned(),
            policy_sets: PolicySets::default(),
            rollouts: Rollouts::default(),
            outcomes: Mutex::default(),
            autoscalers: Mutex::default(),
            written: Mutex::default(),
            deployment_failures: Mutex::default(),
            policy_failures: Mutex::default(),
            status_written: Mutex::default(),
            revisions_written: Mutex::default(),
            held_since: Mutex::default(),
            max_hold: DEFAULT_MAX_HOLD,
        }
    }

    /// Sets what ClusterSidecarPolicies need: the namespaces none selects, and where their
    /// revisions are stored.
    pub fn with_cluster_options(mut self, options: ClusterOptions) -> Self {
        self.exclusions = options.exclusions;
        self.revision_namespace = options.revision_namespace;
        self
    }

    /// Sets how long a held Deployment may wait for a render that keeps failing.
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// Shares `metrics` with the HTTP endpoint.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.events = Events::inline(self.client.clone(), metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Sends Events from the background, so that reconciles never wait for them.
    pub fn with_background_events(mut self) -> Self {
        self.events = self.events.in_background();
        self
    }

    /// Marks the API server as unable to run native sidecars, for the reason given.
    pub fn with_unsupported_server(mut self, reason: Option<String>) -> Self {
        self.unsupported_server = reason;
        self
    }

    /// Whether every cache is filled. Rendering against a cache that is still filling would strip
    /// sidecars, so a reconcile that finds one unfilled is requeued rather than waiting.
    pub fn caches_filled(&self) -> bool {
        let filled = |ready: Option<Result<(), _>>| matches!(ready, Some(Ok(())));
        let cluster_filled = self.caches.cluster.as_ref().is_none_or(|cluster| {
            filled(cluster.policies.wait_until_ready().now_or_never())
                && filled(cluster.namespaces.wait_until_ready().now_or_never())
        });
        filled(self.caches.policies.wait_until_ready().now_or_never())
            && filled(self.caches.deployments.wait_until_ready().now_or_never())
            && filled(self.caches.revisions.wait_until_ready().now_or_never())
            && cluster_filled
    }

    /// Resolves once every cache is filled.
    ///
    /// It polls [`Context::caches_filled`] rather than awaiting `Store::wait_until_ready`: kube's
    /// readiness future wakes only the task that polled it last, and every `caches_filled` call
    /// polls it, so an awaiting task would never be woken once a reconcile had looked.
    pub async fn wait_until_filled(&self) {
        while !self.caches_filled() {
            tokio::time::sleep(FILLED_POLL).await;
        }
    }

    /// The prepared policies of `namespace`: its SidecarPolicies and the ClusterSidecarPolicies
    /// that select it.
    pub fn namespace_policies(&self, namespace: &str) -> Arc<NamespacePolicies> {
        self.policy_sets.get(namespace, || {
            let labels = self.namespace_labels(namespace);
            let cluster_policies = self
                .caches
                .cluster
                .as_ref()
                .map(|c| c.policies.state())
                .unwrap_or_default();
            NamespacePolicies::build(
                &labels,
                &self.caches.policies.state(),
                &cluster_policies,
                &self.exclusions,
                &self.guardrails,
            )
        })
    }

    /// The labels of `namespace` from the namespace cache (only its name label when it is not
    /// cached: created a moment ago, or not watched).
    pub fn namespace_labels(&self, namespace: &str) -> NamespaceLabels {
        self.caches
            .cluster
            .as_ref()
            .and_then(|c| c.namespaces.get(&ObjectRef::new(namespace)))
            .map_or_else(
                || NamespaceLabels::named(namespace),
                |ns| NamespaceLabels::of(&ns.metadata),
            )
    }

    /// The autoscalers that scale Deployment `namespace/name`.
    pub fn autoscalers_of(&self, namespace: &str, name: &str) -> Autoscalers {
        lock(&self.autoscalers).of(namespace, name)
    }

    /// The autoscaler index, for the watches to update.
    pub(crate) fn autoscaler_index(&self) -> MutexGuard<'_, AutoscalerIndex> {
        lock(&self.autoscalers)
    }

    /// Records the outcome of a Deployment reconcile and triggers the status of every policy
    /// whose status it may change. Events are sent on transitions only: see [`Transition`].
    pub fn record_outcome(&self, namespace: &str, name: &str, outcome: Outcome) -> Transition {
        let (transition, touched, synced_now) = {
            let mut outcomes = lock(&self.outcomes);
            let was_synced = outcomes.is_synced();
            let previous = outcomes.get(namespace, name);
            let transition = Transition {
                changed: previous != Some(&outcome),
                first: previous.is_none(),
                new_warnings: !outcome.warnings.is_empty()
                    && previous.is_none_or(|p| p.warnings != outcome.warnings),
            };
            let touched = outcomes.record(namespace, name, outcome);
            (transition, touched, !was_synced && outcomes.is_synced())
        };
        self.trigger_policies(namespace, &touched);
        if synced_now {
            self.trigger_all_policies();
        }
        transition
    }

    /// Forgets a deleted Deployment: its outcome (triggering its policies' status), and the
    /// bookkeeping of its writes and failures.
    pub fn forget_deployment(&self, namespace: &str, name: &str) {
        let key = ObjectRef::new(name).within(namespace);
        lock(&self.written).remove(&key);
        lock(&self.deployment_failures).remove(&key);
        lock(&self.held_since).remove(&key);
        let (touched, synced_now) = {
            let mut outcomes = lock(&self.outcomes);
            let was_synced = outcomes.is_synced();
            let touched = outcomes.forget(namespace, name);
            (touched, !was_synced && outcomes.is_synced())
        };
        self.trigger_policies(namespace, &touched);
        if synced_now {
            self.trigger_all_policies();
        }
    }

    /// The Deployments listed when the controller started: statuses wait until each has an
    /// outcome, so that a restart never writes a status computed from a half-filled index.
    pub fn expect_deployments(&self, deployments: &[Arc<DeploymentView>]) {
        let synced_now = {
            let mut outcomes = lock(&self.outcomes);
            let was_synced = outcomes.is_synced();
            outcomes.expect(deployments.iter().map(|d| (d.namespace(), d.name())));
            !was_synced && outcomes.is_synced()
        };
        if synced_now {
            self.trigger_all_policies();
        }
    }

    /// Whether every Deployment that existed at start has been reconciled once.
    pub fn outcomes_synced(&self) -> bool {
        lock(&self.outcomes).is_synced()
    }

    /// Read access to the outcome index.
    pub fn outcomes(&self) -> MutexGuard<'_, OutcomeIndex> {
        lock(&self.outcomes)
    }

    /// Triggers the status of `policies` (keys, see `sidecar_core::cluster`) involved in
    /// `namespace` that still exist (a deleted policy's Deployments are forgotten one by one; it
    /// has no status left to write).
    fn trigger_policies(&self, namespace: &str, policies: &BTreeSet<String>) {
        for policy in policies {
            if let Some(name) = cluster::cluster_name(policy) {
                let exists = self
                    .caches
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.policies.get(&ObjectRef::new(name)).is_some());
                if exists {
                    self.triggers.cluster_policy(name);
                }
                continue;
            }
            let exists = self
                .caches
                .policies
                .get(&ObjectRef::new(policy).within(namespace))
                .is_some();
            if exists {
                self.triggers.policy(namespace, policy);
            }
        }
    }

    fn trigger_all_policies(&self) {
        for policy in self.caches.policies.state() {
            if let (Some(namespace), Some(name)) = (&policy.meta().namespace, &policy.meta().name) {
                self.triggers.policy(namespace, name);
            }
        }
        self.trigger_all_cluster_policies();
    }

    /// Triggers the status of every ClusterSidecarPolicy.
    pub fn trigger_all_cluster_policies(&self) {
        if let Some(cluster) = &self.caches.cluster {
            for policy in cluster.policies.state() {
                self.triggers.cluster_policy(&policy.name_any());
            }
        }
    }

    /// Whether a write of `plan` to `deployment` is already done and the cache, still showing
    /// `resource_version`, has not caught up with it.
    pub(crate) fn written_already(
        &self,
        deployment: &ObjectRef<DeploymentView>,
        resource_version: &str,
        plan: u64,
    ) -> bool {
        lock(&self.written)
            .get(deployment)
            .is_some_and(|w| w.plan == plan && w.resource_versions.iter().any(|rv| rv == resource_version))
    }

    /// Whether this process released `deployment` right after a write the cache shows at
    /// `generation` (the release itself is not in the cache yet). By generation, not
    /// resourceVersion: kube-controller-manager writes the status in between.
    pub(crate) fn released_already(
        &self,
        deployment: &ObjectRef<DeploymentView>,
        generation: Option<i64>,
    ) -> bool {
        lock(&self.written)
            .get(deployment)
            .is_some_and(|w| w.released && generation.is_some() && w.generation == generation)
    }

    pub(crate) fn wrote(&self, deployment: ObjectRef<DeploymentView>, written: Written) {
        lock(&self.written).insert(deployment, written);
    }

    /// The cache caught up with (or moved past) the last write.
    pub(crate) fn settled(&self, deployment: &ObjectRef<DeploymentView>) {
        lock(&self.written).remove(deployment);
    }

    /// Counts a failure of `deployment` and returns how many in a row it has had.
    pub(crate) fn deployment_failed(&self, deployment: ObjectRef<DeploymentView>) -> u32 {
        count_failure(&self.deployment_failures, deployment)
    }

    pub(crate) fn deployment_succeeded(&self, deployment: &ObjectRef<DeploymentView>) {
        lock(&self.deployment_failures).remove(deployment);
    }

    /// Counts a failure of `policy` and returns how many in a row it has had.
    pub(crate) fn policy_failed(&self, policy: PolicyId) -> u32 {
        count_failure(&self.policy_failures, policy)
    }

    pub(crate) fn policy_succeeded(&self, policy: &PolicyId) {
        lock(&self.policy_failures).remove(policy);
    }

    /// The status this process last wrote for `policy` (its cached copy may be older), and how
    /// long ago.
    pub(crate) fn written_status(&self, policy: &PolicyId) -> Option<(SidecarPolicyStatus, Duration)> {
        lock(&self.status_written)
            .get(policy)
            .map(|(status, at)| (status.clone(), at.elapsed()))
    }

    pub(crate) fn status_was_written(&self, policy: PolicyId, status: SidecarPolicyStatus) {
        lock(&self.status_written).insert(policy, (status, Instant::now()));
    }

    /// Forgets the bookkeeping of a deleted ClusterSidecarPolicy.
    pub fn forget_cluster_policy(&self, name: &str) {
        let key = cluster_policy_id(name);
        lock(&self.status_written).remove(&key);
        lock(&self.policy_failures).remove(&key);
        self.rollouts.forget(&key.0, &key.1);
        let prefix = cluster_revision_prefix(name);
        lock(&self.revisions_written)
            .retain(|(ns, policy, _), _| !(ns == &self.revision_namespace && policy == &prefix));
    }

    /// Forgets the bookkeeping of a deleted policy.
    pub fn forget_policy(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        lock(&self.status_written).remove(&key);
        lock(&self.policy_failures).remove(&key);
        self.rollouts.forget(namespace, name);
        lock(&self.revisions_written).retain(|(ns, policy, _), _| !(ns == namespace && policy == name));
    }

    /// Remembers a revision write (`None`: a deletion) until the revision cache shows it.
    pub(crate) fn wrote_revision(&self, namespace: &str, policy: &str, hash: &str, number: Option<i64>) {
        let key = (namespace.to_owned(), policy.to_owned(), hash.to_owned());
        lock(&self.revisions_written).insert(key, number);
    }

    /// Applies the revision writes the cache does not show yet to `stored` (a policy's revisions
    /// from the cache, by hash: number and content), and forgets those it shows.
    pub(crate) fn overlay_revisions(
        &self,
        namespace: &str,
        policy: &str,
        stored: &mut std::collections::BTreeMap<String, (i64, Option<serde_json::Value>)>,
    ) {
        lock(&self.revisions_written).retain(|(ns, name, hash), number| {
            if ns != namespace || name != policy {
                return true;
            }
            match (number, stored.get_mut(hash)) {
                (None, None) => false,
                (None, Some(_)) => {
                    stored.remove(hash);
                    true
                }
                (Some(n), Some((cached, _))) if cached == n => false,
                (Some(n), Some((cached, _))) => {
                    *cached = *n;
                    true
                }
                (Some(n), None) => {
                    stored.insert(hash.clone(), (*n, None));
                    true
                }
            }
        });
    }

    /// How long `deployment`, held at admission, has been seen held by this process (zero the
    /// first time).
    pub(crate) fn hold_age(&self, deployment: &ObjectRef<DeploymentView>) -> Duration {
        lock(&self.held_since)
            .entry(deployment.clone())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// `deployment` is not held (any more): someone else may have released it.
    pub(crate) fn not_held(&self, deployment: &ObjectRef<DeploymentView>) {
        lock(&self.held_since).remove(deployment);
    }

    /// A held Deployment was released (or deleted): how long this process saw it held.
    pub(crate) fn hold_ended(&self, deployment: &ObjectRef<DeploymentView>) -> Option<Duration> {
        lock(&self.held_since)
            .remove(deployment)
            .map(|since| since.elapsed())
    }

    /// Test and metrics access to the failure counts: (Deployments, policies) with failures.
    pub fn failing(&self) -> (usize, usize) {
        (
            lock(&self.deployment_failures).len(),
            lock(&self.policy_failures).len(),
        )
    }
}

fn count_failure<K: std::hash::Hash + Eq>(failures: &Mutex<HashMap<K, u32>>, key: K) -> u32 {
    let mut failures = lock(failures);
    let count = failures.entry(key).or_insert(0);
    *count += 1;
    *count
}
