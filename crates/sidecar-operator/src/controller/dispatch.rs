//! What each watch event triggers. Every event passes here after the cache holds it, so a
//! reconcile triggered from here always sees the object that triggered it.
//!
//! - A Deployment whose cached content changed (labels, the opt-out annotation, what the engine
//!   reads of its pod template, the record) is reconciled; a status-only change is not.
//! - A policy whose spec changed (its generation), that appeared, that disappeared or that stopped
//!   or started decoding invalidates its namespace's prepared policies, and triggers the
//!   Deployments it selects now or whose last outcome involves it (they carry it, or were refused
//!   because of it), and its own status. Status writes change no generation and trigger nothing.
//! - A ClusterSidecarPolicy that changed the same way invalidates every namespace's prepared
//!   policies and triggers the Deployments it selects now or whose last outcome involves it, in
//!   every namespace, and its own status.
//! - A Namespace whose labels changed invalidates its prepared policies and, if any
//!   ClusterSidecarPolicy exists, triggers its Deployments (a namespaceSelector may now select
//!   it, or no longer) and every ClusterSidecarPolicy's status (its matched namespaces).
//! - A deleted Deployment is forgotten by the outcome index, which triggers its policies' status.
//! - A HorizontalPodAutoscaler or VerticalPodAutoscaler that changed what the warnings read of it
//!   (its target, its resource metrics, its container policies) updates the autoscaler index and
//!   triggers the Deployments it scaled and scales: their warnings may change.
//! - A relist (the watch restarted) is compared with what was seen before: changed objects are
//!   treated as changed, missing ones as deleted.
//!
//! kube's shared-stream subscribers would dispatch applied objects, but not deletions, and they
//! stall if an object is deleted between dispatch and poll; dispatching here covers both.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use sidecar_api::{POLICY_KIND_LABEL, POLICY_LABEL};
use sidecar_core::autoscaling::{Autoscaler, Hpa, Kind, Listed, Vpa};
use sidecar_core::{cluster, selector};

use super::context::Context;
use super::view::DeploymentView;
use super::{GuardedClusterPolicy, GuardedPolicy};

/// What a policy change is judged by: a new spec is a new generation; a policy that stops or
/// starts decoding changes everything it may select.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PolicyKey {
    uid: Option<String>,
    generation: Option<i64>,
    readable: bool,
}

impl PolicyKey {
    fn of<K: Resource>(policy: &DeserializeGuard<K>) -> Self {
        PolicyKey {
            uid: policy.uid(),
            generation: policy.meta().generation,
            readable: policy.0.is_ok(),
        }
    }
}

/// Turns watch events into triggers; see the module documentation.
#[derive(Debug)]
pub struct Dispatch {
    ctx: Arc<Context>,
    /// The content hash of every Deployment seen, by (namespace, name).
    deployments: Mutex<HashMap<(String, String), u64>>,
    policies: Mutex<HashMap<(String, String), PolicyKey>>,
    cluster_policies: Mutex<HashMap<String, PolicyKey>>,
    /// The labels of every namespace seen.
    namespaces: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// The autoscalers of a relist under way, by kind, until it is done.
    relisted: Mutex<HashMap<Kind, Vec<Listed>>>,
}

impl Dispatch {
    pub fn new(ctx: Arc<Context>) -> Self {
        Dispatch {
            ctx,
            deployments: Mutex::default(),
            policies: Mutex::default(),
            cluster_policies: Mutex::default(),
            namespaces: Mutex::default(),
            relisted: Mutex::default(),
        }
    }

    pub fn deployment_event(&self, event: &Event<DeploymentView>) {
        match event {
            Event::Apply(view) => self.deployment_seen(view),
            Event::Delete(view) => self.deployment_gone(view.namespace(), view.name()),
            Event::InitDone => {
                let listed = self.ctx.caches.deployments.state();
                self.ctx.expect_deployments(&listed);
                let mut gone = lock(&self.deployments).clone();
                for view in &listed {
                    gone.remove(&(view.namespace().to_owned(), view.name().to_owned()));
                    self.deployment_seen(view);
                }
                for (namespace, name) in gone.keys() {
                    self.deployment_gone(namespace, name);
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    fn deployment_seen(&self, view: &DeploymentView) {
        let key = (view.namespace().to_owned(), view.name().to_owned());
        let previous = lock(&self.deployments).insert(key, view.content);
        if previous != Some(view.content) {
            self.ctx.triggers.deployment(view.namespace(), view.name());
        }
    }

    fn deployment_gone(&self, namespace: &str, name: &str) {
        lock(&self.deployments).remove(&(namespace.to_owned(), name.to_owned()));
        self.ctx.forget_deployment(namespace, name);
    }

    pub fn policy_event(&self, event: &Event<GuardedPolicy>) {
        match event {
            Event::Apply(policy) => self.policy_seen(policy),
            Event::Delete(policy) => self.policy_gone(policy),
            Event::InitDone => {
                self.ctx.policy_sets.invalidate_all();
                let listed = self.ctx.caches.policies.state();
                let mut gone = lock(&self.policies).clone();
                for policy in &listed {
                    gone.remove(&key(policy));
                    self.policy_seen(policy);
                }
                for (namespace, name) in gone.keys() {
                    self.ctx.policy_sets.invalidate(namespace);
                    self.trigger_involved(namespace, name, None);
                    self.ctx.forget_policy(namespace, name);
                    lock(&self.policies).remove(&(namespace.clone(), name.clone()));
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    fn policy_seen(&self, policy: &GuardedPolicy) {
        let now = PolicyKey::of(policy);
        let previous = lock(&self.policies).insert(key(policy), now.clone());
        if previous.as_ref() == Some(&now) {
            return;
        }
        let (namespace, name) = key(policy);
        self.ctx.policy_sets.invalidate(&namespace);
        self.trigger_involved(&namespace, &name, Some(policy));
        self.ctx.triggers.policy(&namespace, &name);
    }

    fn policy_gone(&self, policy: &GuardedPolicy) {
        let (namespace, name) = key(policy);
        lock(&self.policies).remove(&(namespace.clone(), name.clone()));
        self.ctx.policy_sets.invalidate(&namespace);
        self.trigger_involved(&namespace, &name, Some(policy));
        self.ctx.forget_policy(&namespace, &name);
    }

    /// Triggers the Deployments a change to policy `namespace/name` may affect: those whose last
    /// outcome involves it, and those `policy` selects (every one of the namespace if it does not
    /// decode: it might select any of them).
    fn trigger_involved(&self, namespace: &str, name: &str, policy: Option<&GuardedPolicy>) {
        let mut targets: Vec<String> = self
            .ctx
            .outcomes()
            .involving(namespace, name)
            .map(str::to_owned)
            .collect();
        if let Some(policy) = policy {
            for view in self.ctx.caches.deployments.state() {
                if view.namespace() != namespace {
                    continue;
                }
                let selects = match &policy.0 {
                    Ok(policy) => selector::matches(&policy.spec.selector, &view.labels).unwrap_or(false),
                    Err(_) => true,
                };
                if selects {
                    targets.push(view.name().to_owned());
                }
            }
        }
        targets.sort();
        targets.dedup();
        for deployment in targets {
            self.ctx.triggers.deployment(namespace, &deployment);
        }
    }

    pub fn cluster_policy_event(&self, event: &Event<GuardedClusterPolicy>) {
        match event {
            Event::Apply(policy) => self.cluster_policy_seen(policy),
            Event::Delete(policy) => self.cluster_policy_gone(&policy.name_any(), Some(policy)),
            Event::InitDone => {
                self.ctx.policy_sets.invalidate_all();
                let listed = self
                    .ctx
                    .caches
                    .cluster
                    .as_ref()
                    .map(|c| c.policies.state())
                    .unwrap_or_default();
                let mut gone = lock(&self.cluster_policies).clone();
                for policy in &listed {
                    gone.remove(&policy.name_any());
                    self.cluster_policy_seen(policy);
                }
                for name in gone.keys() {
                    self.cluster_policy_gone(name, None);
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    fn cluster_policy_seen(&self, policy: &GuardedClusterPolicy) {
        let now = PolicyKey::of(policy);
        let name = policy.name_any();
        let previous = lock(&self.cluster_policies).insert(name.clone(), now.clone());
        if previous.as_ref() == Some(&now) {
            return;
        }
        self.ctx.policy_sets.invalidate_all();
        self.trigger_involved_anywhere(&name, Some(policy));
        self.ctx.triggers.cluster_policy(&name);
    }

    fn cluster_policy_gone(&self, name: &str, policy: Option<&GuardedClusterPolicy>) {
        lock(&self.cluster_policies).remove(name);
        self.ctx.policy_sets.invalidate_all();
        self.trigger_involved_anywhere(name, policy);
        self.ctx.forget_cluster_policy(name);
    }

    /// Triggers the Deployments a change to ClusterSidecarPolicy `name` may affect, in every
    /// namespace: those whose last outcome involves it, and those `policy` selects (every one
    /// of a namespace the operator may touch if it does not decode).
    fn trigger_involved_anywhere(&self, name: &str, policy: Option<&GuardedClusterPolicy>) {
        let key = cluster::key(name);
        let mut targets: Vec<(String, String)> = self
            .ctx
            .outcomes()
            .involving_anywhere(&key)
            .map(|(ns, d)| (ns.to_owned(), d.to_owned()))
            .collect();
        if let Some(policy) = policy {
            let mut namespaces: HashMap<String, bool> = HashMap::new();
            for view in self.ctx.caches.deployments.state() {
                let namespace = view.namespace();
                let in_namespace = *namespaces.entry(namespace.to_owned()).or_insert_with(|| {
                    let labels = self.ctx.namespace_labels(namespace);
                    match &policy.0 {
                        Ok(policy) => cluster::selects(policy, &labels, &self.ctx.exclusions).unwrap_or(true),
                        Err(_) => !self.ctx.exclusions.contains(namespace),
                    }
                });
                let selects = in_namespace
                    && match &policy.0 {
                        Ok(policy) => {
                            selector::matches(&policy.spec.policy.selector, &view.labels).unwrap_or(true)
                        }
                        Err(_) => true,
                    };
                if selects {
                    targets.push((namespace.to_owned(), view.name().to_owned()));
                }
            }
        }
        targets.sort();
        targets.dedup();
        for (namespace, deployment) in targets {
            self.ctx.triggers.deployment(&namespace, &deployment);
        }
    }

    pub fn namespace_event(&self, event: &Event<PartialObjectMeta<Namespace>>) {
        match event {
            Event::Apply(namespace) => self.namespace_seen(namespace),
            Event::Delete(namespace) => {
                lock(&self.namespaces).remove(&namespace.name_any());
                self.ctx.trigger_all_cluster_policies();
            }
            Event::InitDone => {
                let listed = self
                    .ctx
                    .caches
                    .cluster
                    .as_ref()
                    .map(|c| c.namespaces.state())
                    .unwrap_or_default();
                let mut gone = lock(&self.namespaces).clone();
                for namespace in &listed {
                    gone.remove(&namespace.name_any());
                    self.namespace_seen(namespace);
                }
                for name in gone.keys() {
                    lock(&self.namespaces).remove(name);
                }
                if !gone.is_empty() {
                    self.ctx.trigger_all_cluster_policies();
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }

    fn namespace_seen(&self, namespace: &PartialObjectMeta<Namespace>) {
        let name = namespace.name_any();
        let labels = namespace.metadata.labels.clone().unwrap_or_default();
        let previous = lock(&self.namespaces).insert(name.clone(), labels.clone());
        if previous.as_ref() == Some(&labels) {
            return;
        }
        self.ctx.policy_sets.invalidate(&name);
        let any_cluster_policy = self
            .ctx
            .caches
            .cluster
            .as_ref()
            .is_some_and(|c| !c.policies.is_empty());
        if !any_cluster_policy {
            return;
        }
        for view in self.ctx.caches.deployments.state() {
            if view.namespace() == name {
                self.ctx.triggers.deployment(&name, view.name());
            }
        }
        self.ctx.trigger_all_cluster_policies();
    }

    /// A deleted ControllerRevision of a policy triggers that policy, which re-creates it if it
    /// is still needed (the current revision, or one a Deployment carries).
    pub fn revision_event(&self, event: &Event<ControllerRevision>) {
        if let Event::Delete(revision) = event
            && let (Some(namespace), Some(policy)) =
                (revision.namespace(), revision.labels().get(POLICY_LABEL))
        {
            if revision.labels().contains_key(POLICY_KIND_LABEL) {
                self.ctx.triggers.cluster_policy(policy);
            } else {
                self.ctx.triggers.policy(&namespace, policy);
            }
        }
    }

    /// A HorizontalPodAutoscaler changed: the Deployments it scaled and scales are looked at again
    /// (their warnings may change).
    pub fn hpa_event(&self, event: &Event<HorizontalPodAutoscaler>) {
        self.autoscaler_event(Kind::Hpa, event, |hpa| Hpa::of(hpa).map(Autoscaler::Hpa));
    }

    /// A VerticalPodAutoscaler changed (see [`Dispatch::hpa_event`]).
    pub fn vpa_event(&self, event: &Event<DynamicObject>) {
        self.autoscaler_event(Kind::Vpa, event, |vpa| {
            let object = serde_json::to_value(vpa).ok()?;
            Vpa::of(&object).map(Autoscaler::Vpa)
        });
    }

    fn autoscaler_event<K: Resource>(
        &self,
        kind: Kind,
        event: &Event<K>,
        facts: impl Fn(&K) -> Option<Autoscaler>,
    ) {
        let id = |object: &K| {
            let meta = object.meta();
            (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            )
        };
        let touched: Vec<(String, String)> = match event {
            Event::Apply(object) | Event::Delete(object) => {
                let (namespace, name) = id(object);
                let now = match event {
                    Event::Apply(_) => facts(object),
                    _ => None,
                };
                let deployments = self.ctx.autoscaler_index().apply(kind, &namespace, &name, now);
                deployments.into_iter().map(|d| (namespace.clone(), d)).collect()
            }
            Event::Init => {
                lock(&self.relisted).insert(kind, Vec::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                let (namespace, name) = id(object);
                let listed = (namespace, name, facts(object));
                lock(&self.relisted).entry(kind).or_default().push(listed);
                Vec::new()
            }
            Event::InitDone => {
                let listed = lock(&self.relisted).remove(&kind).unwrap_or_default();
                let touched = self.ctx.autoscaler_index().replace(kind, listed);
                touched.into_iter().collect()
            }
        };
        for (namespace, deployment) in touched {
            self.ctx.triggers.deployment(&namespace, &deployment);
        }
    }
}

fn key(policy: &GuardedPolicy) -> (String, String) {
    (policy.namespace().unwrap_or_default(), policy.name_any())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
