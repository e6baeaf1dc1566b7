//! The controller: Deployments are the reconciled objects; a SidecarPolicy change re-triggers the
//! Deployments it selects now or was applied to before (the record lists it), so a deleted or
//! narrowed policy is cleaned up without finalizers.

mod context;
mod error;
mod reconcile;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sidecar_api::SidecarPolicy;
use sidecar_core::{Guardrails, InjectionRecord, selector};
use tracing::{info, warn};

pub use context::Context;
pub use error::Error;
pub use reconcile::{error_policy, reconcile};

/// The field manager of every write, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "sidecar-operator";

/// Runs the controller for one namespace, or for all when `namespace` is `None`, until SIGTERM or
/// Ctrl-C.
pub async fn run(client: Client, namespace: Option<String>, guardrails: Guardrails) {
    let (deployments, policies): (Api<Deployment>, Api<SidecarPolicy>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    info!(
        namespace = namespace.as_deref().unwrap_or("*"),
        "starting controller"
    );

    // The policy cache that reconciles read; the controller's own watch of policies only triggers.
    let (policy_store, writer) = reflector::store();
    let policy_cache = watcher(policies.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|event| {
            if let Err(e) = event {
                warn!("SidecarPolicy watch failed (retrying): {e}");
            }
            futures::future::ready(())
        });
    tokio::spawn(policy_cache);

    let controller = Controller::new(deployments, watcher::Config::default());
    let deployment_store = controller.store();
    let ctx = Arc::new(Context::new(client, policy_store, guardrails));
    controller
        .watches(policies, watcher::Config::default(), move |policy| {
            affected(&deployment_store, &policy)
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                warn!("controller: {e}");
            }
            futures::future::ready(())
        })
        .await;
    info!("controller stopped");
}

/// The Deployments a change to `policy` may affect: those it selects now, and those whose record
/// says it was applied (it may have been narrowed or deleted since).
pub fn affected(deployments: &Store<Deployment>, policy: &SidecarPolicy) -> Vec<ObjectRef<Deployment>> {
    let name = policy.name_any();
    let namespace = policy.namespace();
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace() == namespace)
        .filter(|d| {
            let labels = d.metadata.labels.clone().unwrap_or_default();
            let selected = selector::matches(&policy.spec.selector, &labels).unwrap_or(false);
            let recorded = InjectionRecord::read(d)
                .ok()
                .flatten()
                .is_some_and(|r| r.policies.contains(&name));
            selected || recorded
        })
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}
