//! The controllers. Deployments are the reconciled objects; a SidecarPolicy change re-triggers
//! the Deployments it selects now or was applied to before (the record lists it), so a deleted or
//! narrowed policy is cleaned up without finalizers. A second controller keeps each policy's
//! status.

mod context;
mod error;
mod reconcile;
mod status;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use sidecar_api::SidecarPolicy;
use sidecar_core::{Guardrails, InjectionRecord, selector, supports_native_sidecars};
use tracing::{error, info, warn};

use crate::metrics::Metrics;

pub use context::{Context, NamespacePolicies};
pub use error::Error;
pub use reconcile::{error_policy, reconcile};
pub use status::{policies_for, reconcile_status, status_error_policy};

/// A SidecarPolicy as the watches decode it: one that does not decode is kept as an error
/// instead of failing the whole list, so it cannot stall the watch.
pub type GuardedPolicy = DeserializeGuard<SidecarPolicy>;

/// The field manager of every write, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "sidecar-operator";

/// The two controllers for one namespace, or for all.
///
/// Each controller reads caches that are filled by the very streams that trigger it: a trigger is
/// only emitted after the object it carries is in the cache. With a cache filled by another
/// watch, a reconcile triggered by a new policy could still read the old set of policies, find
/// nothing to do, and never be triggered again. So each resource is watched twice (once per
/// controller), which costs a second cache but keeps every reconcile consistent with its trigger.
#[allow(missing_debug_implementations)] // kube's Controller has no Debug
pub struct Scope {
    deployment_controller: Controller<Deployment>,
    policy_controller: Controller<GuardedPolicy>,
    deployments: Api<Deployment>,
    policies: Api<GuardedPolicy>,
    /// Fills the injecting controller's policy cache from its policy trigger stream.
    policy_writer: Writer<GuardedPolicy>,
    /// Fills the status controller's Deployment cache from its Deployment trigger stream.
    deployment_writer: Writer<Deployment>,
    injecting: Arc<Context>,
    reporting: Arc<Context>,
}

impl Scope {
    /// Sets up the controllers for `namespace` (all namespaces when `None`) and checks that the
    /// API server runs native sidecars.
    pub async fn new(
        client: Client,
        namespace: Option<&str>,
        guardrails: Guardrails,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (deployments, policies): (Api<Deployment>, Api<GuardedPolicy>) = match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let unsupported_server = check_server(&client).await;
        let deployment_controller = Controller::new(deployments.clone(), watcher::Config::default());
        let policy_controller = Controller::new(policies.clone(), watcher::Config::default());
        let (policy_cache, policy_writer) = reflector::store();
        let (deployment_cache, deployment_writer) = reflector::store();
        let context = |policies, deployments| {
            let ctx = Context::new(client.clone(), policies, deployments, guardrails.clone())
                .with_unsupported_server(unsupported_server.clone())
                .with_metrics(metrics.clone());
            Arc::new(ctx)
        };
        let injecting = context(policy_cache, deployment_controller.store());
        let reporting = context(policy_controller.store(), deployment_cache);
        Scope {
            deployment_controller,
            policy_controller,
            deployments,
            policies,
            policy_writer,
            deployment_writer,
            injecting,
            reporting,
        }
    }

    /// The Deployment cache (for the `deployments_managed` metric).
    pub fn deployment_cache(&self) -> Store<Deployment> {
        self.injecting.deployments.clone()
    }

    /// Resolves once every cache is filled.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (injecting, reporting) = (self.injecting.clone(), self.reporting.clone());
        async move {
            injecting.wait_until_filled().await;
            reporting.wait_until_filled().await;
        }
    }

    /// Runs until SIGTERM or Ctrl-C.
    pub async fn run(self) {
        let Scope {
            deployment_controller,
            policy_controller,
            deployments,
            policies,
            policy_writer,
            deployment_writer,
            injecting,
            reporting,
        } = self;
        let policy_events = watcher(policies, watcher::Config::default())
            .default_backoff()
            .reflect(policy_writer)
            .touched_objects();
        let deployment_events = watcher(deployments, watcher::Config::default())
            .default_backoff()
            .reflect(deployment_writer)
            .touched_objects();
        let deployment_store = injecting.deployments.clone();
        let policy_store = reporting.policies.clone();
        let injection = deployment_controller
            .watches_stream(policy_events, move |policy| affected(&deployment_store, &policy))
            .shutdown_on_signal()
            .run(measured_reconcile, error_policy, injecting)
            .for_each(log_result);
        let status = policy_controller
            .watches_stream(deployment_events, move |deployment| {
                policies_for(&policy_store, &deployment)
            })
            .shutdown_on_signal()
            .run(measured_status, status_error_policy, reporting)
            .for_each(log_result);
        futures::join!(injection, status);
        info!("controllers stopped");
    }
}

async fn measured_reconcile(deployment: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured("deployment", &ctx.clone(), reconcile(deployment, ctx)).await
}

async fn measured_status(policy: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured("policy", &ctx.clone(), reconcile_status(policy, ctx)).await
}

/// Runs a reconcile and records its count, duration and failure category.
async fn measured(
    controller: &'static str,
    ctx: &Context,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let start = Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciled(
        controller,
        start.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// A Deployment's labels, without cloning them (the mappers run for every cached Deployment).
pub(crate) fn labels(deployment: &Deployment) -> &std::collections::BTreeMap<String, String> {
    static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    deployment.metadata.labels.as_ref().unwrap_or(&NONE)
}

/// Native sidecars need Kubernetes >= 1.29. On an older server the operator writes nothing to
/// Deployments and sets every policy's Ready condition to False with the reason.
async fn check_server(client: &Client) -> Option<String> {
    match client.apiserver_version().await {
        Ok(info) => {
            let verdict = supports_native_sidecars(&info.major, &info.minor).err();
            match &verdict {
                Some(reason) => error!("{reason}"),
                None => info!(version = %info.git_version, "API server supports native sidecars"),
            }
            verdict
        }
        Err(e) => {
            warn!("could not read the API server version ({e}); assuming it supports native sidecars");
            None
        }
    }
}

fn log_result<T, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    if let Err(e) = result {
        warn!("controller: {e}");
    }
    futures::future::ready(())
}

/// The Deployments a change to `policy` may affect: those it selects now, and those whose record
/// says it was applied (it may have been narrowed or deleted since). An unreadable policy affects
/// every Deployment of its namespace.
pub fn affected(deployments: &Store<Deployment>, policy: &GuardedPolicy) -> Vec<ObjectRef<Deployment>> {
    let name = policy.name_any();
    let namespace = policy.namespace();
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace() == namespace)
        .filter(|d| {
            let Ok(policy) = &policy.0 else {
                return true; // unreadable: it may select any Deployment of its namespace
            };
            let selected = selector::matches(&policy.spec.selector, labels(d)).unwrap_or(false);
            let recorded = InjectionRecord::read(d)
                .ok()
                .flatten()
                .is_some_and(|r| r.policies.contains(&name));
            selected || recorded
        })
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}
