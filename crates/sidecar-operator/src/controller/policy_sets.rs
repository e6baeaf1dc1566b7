//! The prepared policies of each namespace (its SidecarPolicies and the ClusterSidecarPolicies
//! that select it), shared by every reconcile until one of them, or the namespace's labels,
//! change.
//!
//! Preparing a `PolicySet` sorts, validates, checks guardrails and hashes revisions; doing it once
//! per policy change instead of once per reconcile is what keeps a reconcile in microseconds.
//! The watch hook invalidates a namespace after the policy cache holds the change and before
//! anything is triggered by it, so a reconcile triggered by a policy change always sees it.
//! A set is built from the cache on first use; an invalidation that races with a build wins
//! (each namespace has an epoch, and a set built under an older epoch is used once, not kept).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::core::error_boundary::InvalidObject;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::cluster::{self, Exclusions, NamespaceLabels};
use sidecar_core::{Guardrails, PolicySet};

use super::{GuardedClusterPolicy, GuardedPolicy};

/// The policies that apply in one namespace.
#[derive(Debug)]
pub struct NamespacePolicies {
    /// Those that decode, prepared.
    pub set: PolicySet,
    /// Those whose stored form does not decode (for example written under an older CRD), named
    /// by their keys: the namespace's SidecarPolicies, and every ClusterSidecarPolicy (it cannot
    /// be told which namespaces one that does not decode selects).
    pub unreadable: Vec<InvalidObject>,
}

impl NamespacePolicies {
    /// The policies of `namespace` from `policies` and `cluster_policies`, prepared against
    /// `guardrails`.
    pub fn build(
        namespace: &NamespaceLabels,
        policies: &[Arc<GuardedPolicy>],
        cluster_policies: &[Arc<GuardedClusterPolicy>],
        exclusions: &Exclusions,
        guardrails: &Guardrails,
    ) -> Self {
        let mut readable: Vec<SidecarPolicy> = Vec::new();
        let mut unreadable = Vec::new();
        for guarded in policies {
            if guarded.namespace().as_deref() != Some(namespace.name.as_str()) {
                continue;
            }
            match &guarded.0 {
                Ok(policy) => readable.push(policy.clone()),
                Err(invalid) => unreadable.push(invalid.clone()),
            }
        }
        let mut readable_cluster: Vec<ClusterSidecarPolicy> = Vec::new();
        if !exclusions.contains(&namespace.name) {
            for guarded in cluster_policies {
                match &guarded.0 {
                    Ok(policy) => readable_cluster.push(policy.clone()),
                    Err(invalid) => {
                        let mut invalid = invalid.clone();
                        invalid.metadata.name = Some(cluster::key(&guarded.name_any()));
                        unreadable.push(invalid);
                    }
                }
            }
        }
        unreadable.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        NamespacePolicies {
            set: PolicySet::for_namespace(namespace, &readable, &readable_cluster, exclusions, guardrails),
            unreadable,
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    epoch: u64,
    /// The set built under `epoch`, if any.
    built: Option<Arc<NamespacePolicies>>,
}

/// Prepared policies by namespace.
#[derive(Debug, Default)]
pub struct PolicySets {
    slots: Mutex<HashMap<String, Slot>>,
}

impl PolicySets {
    /// A policy of `namespace` changed: the next [`PolicySets::get`] rebuilds its set.
    pub fn invalidate(&self, namespace: &str) {
        let mut slots = self.lock();
        let slot = slots.entry(namespace.to_owned()).or_default();
        slot.epoch += 1;
        slot.built = None;
    }

    /// Every namespace may have changed (the policy watch listed again).
    pub fn invalidate_all(&self) {
        for slot in self.lock().values_mut() {
            slot.epoch += 1;
            slot.built = None;
        }
    }

    /// The prepared policies of `namespace`, built by `build` if they are not current.
    pub fn get(&self, namespace: &str, build: impl FnOnce() -> NamespacePolicies) -> Arc<NamespacePolicies> {
        let epoch = {
            let mut slots = self.lock();
            let slot = slots.entry(namespace.to_owned()).or_default();
            if let Some(built) = &slot.built {
                return built.clone();
            }
            slot.epoch
        };
        // Built outside the lock: reading the cache and preparing policies takes a while, and
        // other namespaces' reconciles need not wait for it.
        let built = Arc::new(build());
        let mut slots = self.lock();
        let slot = slots.entry(namespace.to_owned()).or_default();
        if slot.epoch == epoch {
            slot.built = Some(built.clone());
        }
        built
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
