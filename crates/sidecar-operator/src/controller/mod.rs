//! The controllers. Deployments are the reconciled objects; a SidecarPolicy change re-triggers
//! the Deployments it selects now or whose last outcome involves it, so a deleted or narrowed
//! policy is cleaned up without finalizers. A second controller keeps each policy's revision
//! history and status, aggregated from the Deployments' recorded outcomes.
//!
//! Each kind is watched once (Deployments, SidecarPolicies, the policies' ControllerRevisions,
//! and when every namespace is watched, ClusterSidecarPolicies and Namespaces' metadata); the
//! controllers read the same caches. HorizontalPodAutoscalers and VerticalPodAutoscalers are
//! watched when served and allowed, into an index of what the warnings need, not a cache. A ClusterSidecarPolicy is rendered in each namespace it
//! selects as one of the namespace's policies (`sidecar_core::cluster`); a third controller keeps
//! its status. Every watch event goes through
//! [`dispatch::Dispatch`] after its cache holds it, which decides what it triggers.

mod autoscalers;
mod context;
mod dispatch;
mod error;
mod events;
mod hold;
mod policy_sets;
mod reconcile;
mod revisions;
mod rollouts;
mod status;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use sidecar_api::{ClusterSidecarPolicy, POLICY_LABEL, SidecarPolicy};
use sidecar_core::{Guardrails, supports_native_sidecars};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use autoscalers::AutoscalerApis;

pub use context::{
    CACHE_RETRY, Caches, ClusterCaches, ClusterOptions, Context, DEFAULT_EXCLUDED_NAMESPACES,
    DEFAULT_MAX_HOLD, DEFAULT_REVISION_NAMESPACE, Transition, TriggerStreams, Triggers,
};
pub use dispatch::Dispatch;
pub use error::Error;
pub use hold::{BINDING as ADMISSION_HOLD_BINDING, check_active as admission_hold_active, unwatched_hold};
pub use policy_sets::{NamespacePolicies, PolicySets};
pub use reconcile::{error_policy, reconcile};
pub use revisions::{cluster_revision_name, revision_name};
pub use status::{
    cluster_status_error_policy, reconcile_cluster_status, reconcile_status, status_error_policy,
};
pub use view::DeploymentView;

/// A SidecarPolicy as the watch decodes it: one that does not decode is kept as an error
/// instead of failing the whole list, so it cannot stall the watch.
pub type GuardedPolicy = DeserializeGuard<SidecarPolicy>;

/// A ClusterSidecarPolicy as the watch decodes it (see [`GuardedPolicy`]).
pub type GuardedClusterPolicy = DeserializeGuard<ClusterSidecarPolicy>;

/// The field manager of every write, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "sidecar-operator";

/// Default of how many Deployments are reconciled at once.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// The watches and controllers for one namespace, or for all.
#[allow(missing_debug_implementations)] // kube's reflector writers have no Debug
pub struct Scope {
    ctx: Arc<Context>,
    streams: TriggerStreams,
    apis: Apis,
    writers: Writers,
    concurrency: u16,
}

struct Apis {
    deployments: Api<DeploymentView>,
    policies: Api<GuardedPolicy>,
    revisions: Api<ControllerRevision>,
    /// Only when every namespace is watched.
    cluster: Option<(Api<GuardedClusterPolicy>, Api<PartialObjectMeta<Namespace>>)>,
    autoscalers: AutoscalerApis,
}

struct Writers {
    deployments: reflector::store::Writer<DeploymentView>,
    policies: reflector::store::Writer<GuardedPolicy>,
    revisions: reflector::store::Writer<ControllerRevision>,
    cluster: Option<(
        reflector::store::Writer<GuardedClusterPolicy>,
        reflector::store::Writer<PartialObjectMeta<Namespace>>,
    )>,
}

impl Scope {
    /// Sets up the watches and controllers for `namespace` (all namespaces when `None`, and then
    /// ClusterSidecarPolicies too, as `cluster` says) and checks that the API server runs native
    /// sidecars.
    pub async fn new(
        client: Client,
        namespace: Option<&str>,
        guardrails: Guardrails,
        metrics: Arc<Metrics>,
        concurrency: u16,
        max_hold: Duration,
        cluster: ClusterOptions,
    ) -> Self {
        let autoscalers = AutoscalerApis::discover(&client, namespace).await;
        let apis = match namespace {
            Some(ns) => Apis {
                deployments: Api::namespaced(client.clone(), ns),
                policies: Api::namespaced(client.clone(), ns),
                revisions: Api::namespaced(client.clone(), ns),
                cluster: None,
                autoscalers,
            },
            None => Apis {
                deployments: Api::all(client.clone()),
                policies: Api::all(client.clone()),
                revisions: Api::all(client.clone()),
                cluster: match check_cluster_policies(&client).await {
                    Ok(()) => Some((Api::all(client.clone()), Api::all(client.clone()))),
                    Err(why) => {
                        warn!("ClusterSidecarPolicies are not watched: {why}");
                        None
                    }
                },
                autoscalers,
            },
        };
        let unsupported_server = check_server(&client).await;
        let (deployments, deployment_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let (revisions, revision_writer) = reflector::store();
        let (cluster_caches, cluster_writers) = match apis.cluster {
            Some(_) => {
                let (policies, policy_writer) = reflector::store();
                let (namespaces, namespace_writer) = reflector::store();
                (
                    Some(ClusterCaches { policies, namespaces }),
                    Some((policy_writer, namespace_writer)),
                )
            }
            None => (None, None),
        };
        let caches = Caches {
            deployments,
            policies,
            revisions,
            cluster: cluster_caches,
        };
        let (triggers, streams) = Triggers::new();
        let ctx = Context::new(client, caches, guardrails, triggers)
            .with_unsupported_server(unsupported_server)
            .with_metrics(metrics)
            .with_max_hold(max_hold)
            .with_cluster_options(cluster)
            .with_background_events();
        Scope {
            ctx: Arc::new(ctx),
            streams,
            apis,
            writers: Writers {
                deployments: deployment_writer,
                policies: policy_writer,
                revisions: revision_writer,
                cluster: cluster_writers,
            },
            concurrency,
        }
    }

    /// The Deployment cache (for the `deployments_managed` metric).
    pub fn deployment_cache(&self) -> Store<DeploymentView> {
        self.ctx.caches.deployments.clone()
    }

    /// The shared context (for the metrics endpoint).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Resolves once every cache is filled.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        let ctx = self.ctx.clone();
        async move { ctx.wait_until_filled().await }
    }

    /// Runs until SIGTERM or Ctrl-C.
    pub async fn run(self) {
        let Scope {
            ctx,
            streams,
            apis,
            writers,
            concurrency,
        } = self;
        let dispatch = Arc::new(Dispatch::new(ctx.clone()));
        // The initial lists are served from the API server's watch cache (resourceVersion=0):
        // cheaper for it, and a restart over thousands of Deployments is ready sooner.
        let config = watcher::Config::default().any_semantic();
        let deployment_watch = {
            let dispatch = dispatch.clone();
            watcher(apis.deployments, config.clone())
                .default_backoff()
                .reflect(writers.deployments)
                .for_each(move |event| {
                    match event {
                        Ok(event) => dispatch.deployment_event(&event),
                        Err(e) => warn!("Deployment watch: {e}"),
                    }
                    futures::future::ready(())
                })
        };
        let policy_watch = {
            let dispatch = dispatch.clone();
            watcher(apis.policies, config.clone())
                .default_backoff()
                .modify(lean_policy)
                .reflect(writers.policies)
                .for_each(move |event| {
                    match event {
                        Ok(event) => dispatch.policy_event(&event),
                        Err(e) => warn!("SidecarPolicy watch: {e}"),
                    }
                    futures::future::ready(())
                })
        };
        let revision_watch = {
            let dispatch = dispatch.clone();
            watcher(apis.revisions, config.clone().labels(POLICY_LABEL))
                .default_backoff()
                .modify(|revision| revision.managed_fields_mut().clear())
                .reflect(writers.revisions)
                .for_each(move |event| {
                    match event {
                        Ok(event) => dispatch.revision_event(&event),
                        Err(e) => warn!("ControllerRevision watch: {e}"),
                    }
                    futures::future::ready(())
                })
        };

        let cluster_watches = cluster_watches(apis.cluster, writers.cluster, &dispatch, config.clone());
        let autoscaler_watches = apis.autoscalers.watches(&dispatch, config.clone());

        let controller_config = controller::Config::default().concurrency(concurrency);
        // Every trigger comes from dispatch (`reconcile_on`), none from a stream of objects.
        let injection =
            Controller::for_shared_stream(futures::stream::pending(), ctx.caches.deployments.clone())
                .with_config(controller_config.clone())
                .reconcile_on(streams.deployments)
                .shutdown_on_signal()
                .run(measured_reconcile, error_policy, ctx.clone())
                .for_each(log_result);
        let status = Controller::for_shared_stream(futures::stream::pending(), ctx.caches.policies.clone())
            .with_config(controller_config)
            .reconcile_on(streams.policies)
            .shutdown_on_signal()
            .run(measured_status, status_error_policy, ctx.clone())
            .for_each(log_result);
        let cluster_status = ctx.caches.cluster.as_ref().map(|cluster| {
            Controller::for_shared_stream(futures::stream::pending(), cluster.policies.clone())
                .with_config(controller::Config::default().concurrency(concurrency))
                .reconcile_on(streams.cluster_policies)
                .shutdown_on_signal()
                .run(measured_cluster_status, cluster_status_error_policy, ctx.clone())
                .for_each(log_result)
        });
        // The watches never end on their own; the controllers end on a signal.
        let controllers = async {
            match cluster_status {
                Some(cluster_status) => {
                    futures::join!(injection, status, cluster_status);
                }
                None => {
                    futures::join!(injection, status);
                }
            }
        };
        let watches = async {
            futures::join!(
                deployment_watch,
                policy_watch,
                revision_watch,
                cluster_watches,
                autoscaler_watches
            );
        };
        tokio::select! {
            () = controllers => info!("controllers stopped"),
            () = watches => error!("a watch ended"),
        }
    }
}

/// The ClusterSidecarPolicy and Namespace watches, when every namespace is watched; otherwise a
/// future that never ends.
fn cluster_watches(
    apis: Option<(Api<GuardedClusterPolicy>, Api<PartialObjectMeta<Namespace>>)>,
    writers: Option<(
        reflector::store::Writer<GuardedClusterPolicy>,
        reflector::store::Writer<PartialObjectMeta<Namespace>>,
    )>,
    dispatch: &Arc<Dispatch>,
    config: watcher::Config,
) -> futures::future::BoxFuture<'static, ()> {
    let (Some((policies, namespaces)), Some((policy_writer, namespace_writer))) = (apis, writers) else {
        return Box::pin(futures::future::pending());
    };
    let policy_watch = {
        let dispatch = dispatch.clone();
        watcher(policies, config.clone())
            .default_backoff()
            .modify(lean_policy)
            .reflect(policy_writer)
            .for_each(move |event| {
                match event {
                    Ok(event) => dispatch.cluster_policy_event(&event),
                    Err(e) => warn!("ClusterSidecarPolicy watch: {e}"),
                }
                futures::future::ready(())
            })
    };
    // Metadata only (an `Api<PartialObjectMeta<_>>` asks for it): labels are all a
    // namespaceSelector reads.
    let namespace_watch = {
        let dispatch = dispatch.clone();
        watcher(namespaces, config)
            .default_backoff()
            .modify(|namespace| {
                namespace.metadata.managed_fields = None;
                namespace.metadata.annotations = None;
            })
            .reflect(namespace_writer)
            .for_each(move |event| {
                match event {
                    Ok(event) => dispatch.namespace_event(&event),
                    Err(e) => warn!("Namespace watch: {e}"),
                }
                futures::future::ready(())
            })
    };
    Box::pin(async move {
        futures::join!(policy_watch, namespace_watch);
    })
}

/// A watch of `api` whose every event goes to `handle`, with no cache; its errors are logged
/// (and retried with backoff) under `what`.
fn uncached_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    handle: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> futures::future::BoxFuture<'static, ()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(event) => handle(&event),
                Err(e) => warn!("{what} watch: {e}"),
            }
            futures::future::ready(())
        })
        .boxed()
}

/// A policy of either kind as cached: what the API server's bookkeeping adds is dropped.
fn lean_policy<K: Resource>(policy: &mut DeserializeGuard<K>) {
    let metadata = match &mut policy.0 {
        Ok(policy) => policy.meta_mut(),
        Err(invalid) => &mut invalid.metadata,
    };
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

async fn measured_cluster_status(
    policy: Arc<GuardedClusterPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    measured(
        "cluster-policy",
        &ctx.clone(),
        reconcile_cluster_status(policy, ctx),
    )
    .await
}

async fn measured_reconcile(view: Arc<DeploymentView>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured("deployment", &ctx.clone(), reconcile(view, ctx)).await
}

async fn measured_status(policy: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured("policy", &ctx.clone(), reconcile_status(policy, ctx)).await
}

/// Runs a reconcile and records its count, duration and failure category.
async fn measured(
    controller: &'static str,
    ctx: &Context,
    reconcile: impl Future<Output = Result<Action, Error>>,
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

/// Whether ClusterSidecarPolicies can be watched: their CRD is served and the operator may list
/// them and Namespaces. An install upgraded without the new CRD or ClusterRole keeps working for
/// SidecarPolicies (a watch that can never list would keep every reconcile waiting); `Err` says
/// what is missing.
async fn check_cluster_policies(client: &Client) -> Result<(), String> {
    let served = client
        .list_api_group_resources("sidecar.dev/v1alpha1")
        .await
        .map_err(|e| format!("could not discover sidecar.dev/v1alpha1 ({e})"))?
        .resources
        .iter()
        .any(|r| r.name == "clustersidecarpolicies");
    if !served {
        return Err(
            "their CRD is not installed (kubectl apply --server-side -f crds/clustersidecarpolicy.yaml, then restart)"
                .to_owned(),
        );
    }
    let probe = kube::api::ListParams::default().limit(1);
    let forbidden = |what: &str, e: kube::Error| match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the operator may not list {what} (the install's ClusterRole sidecar-operator-cluster and its binding are missing)"
        ),
        e => format!("could not list {what} ({e})"),
    };
    Api::<ClusterSidecarPolicy>::all(client.clone())
        .list_metadata(&probe)
        .await
        .map_err(|e| forbidden("ClusterSidecarPolicies", e))?;
    Api::<Namespace>::all(client.clone())
        .list_metadata(&probe)
        .await
        .map_err(|e| forbidden("Namespaces", e))?;
    Ok(())
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

fn log_result<T, E1, E2>(result: Result<T, controller::Error<E1, E2>>) -> futures::future::Ready<()>
where
    E1: std::error::Error,
    E2: std::error::Error,
{
    match result {
        // A trigger for an object deleted meanwhile: nothing to do.
        Err(controller::Error::ObjectNotFound(reference)) => {
            tracing::debug!("{reference} is gone; nothing to reconcile");
        }
        Err(e) => warn!("controller: {e}"),
        Ok(_) => {}
    }
    futures::future::ready(())
}
