//! What `plan` and `explain` read from the cluster: Deployments, SidecarPolicies,
//! ClusterSidecarPolicies, Namespace labels and the autoscalers (HPAs, and VPAs when served).
//! Read-only: every request is a list or a get.
//!
//! The commands themselves are pure functions of a [`ClusterState`], so they are tested without
//! a cluster; this module is the only part that talks to the API server.

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::autoscaling::{Autoscaler, AutoscalerIndex, Hpa, Kind, Vpa};
use sidecar_core::cluster::{self, NamespaceLabels};

/// Objects per list request: a fleet's Deployments come in pages, not in one answer.
const PAGE: u32 = 500;

/// A policy whose stored form does not decode (say, written under an older CRD). The operator
/// leaves every Deployment it may affect as it is; so do `plan` and `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The policy's key: a SidecarPolicy's name or `ClusterSidecarPolicy/<name>`.
    pub key: String,
    /// A SidecarPolicy's namespace; `None` for a ClusterSidecarPolicy (it may select any).
    pub namespace: Option<String>,
    pub error: String,
}

/// The objects the operator decides from, as read from the cluster (or built by a test).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub deployments: Vec<Deployment>,
    pub policies: Vec<SidecarPolicy>,
    /// `None` when the ClusterSidecarPolicy CRD is not served: there are none.
    pub cluster_policies: Option<Vec<ClusterSidecarPolicy>>,
    pub namespaces: Vec<NamespaceLabels>,
    pub unreadable: Vec<Unreadable>,
    /// The HPAs and VPAs that scale Deployments, for the warnings of the sidecars they skew.
    pub autoscalers: AutoscalerIndex,
    /// What the reader wants to know about how the state was read.
    pub notes: Vec<String>,
}

impl ClusterState {
    /// The labels of `namespace`, or only its name label when it was not read.
    pub fn namespace(&self, namespace: &str) -> NamespaceLabels {
        self.namespaces
            .iter()
            .find(|ns| ns.name == namespace)
            .cloned()
            .unwrap_or_else(|| NamespaceLabels::named(namespace))
    }

    /// The ClusterSidecarPolicies (none when their CRD is not served).
    pub fn cluster_policies(&self) -> &[ClusterSidecarPolicy] {
        self.cluster_policies.as_deref().unwrap_or_default()
    }
}

/// What could not be read. Each variant names the request.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to the cluster of the current kubeconfig: {source}")]
    Connect {
        #[source]
        source: kube::Error,
    },
    #[error("cannot list {what} {scope}: {source}")]
    List {
        what: &'static str,
        scope: Scope,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read {what} {name:?}{}: {source}", .namespace.as_ref().map(|ns| format!(" in namespace {ns:?}")).unwrap_or_default())]
    Get {
        what: &'static str,
        name: String,
        namespace: Option<String>,
        #[source]
        source: kube::Error,
    },
    #[error("Deployment {name:?} not found in namespace {namespace:?}")]
    DeploymentNotFound { namespace: String, name: String },
}

/// Where a list looked: one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope(pub Option<String>);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(ns) => write!(f, "in namespace {ns:?}"),
            None => f.write_str("in all namespaces"),
        }
    }
}

/// A client for the current kubeconfig (or the in-cluster service account).
pub async fn connect() -> Result<Client, FetchError> {
    Client::try_default()
        .await
        .map_err(|source| FetchError::Connect { source })
}

/// Everything in `namespace` (or in all namespaces), with the ClusterSidecarPolicies and the
/// labels of the namespaces read.
pub async fn fetch(client: &Client, namespace: Option<&str>) -> Result<ClusterState, FetchError> {
    let scope = Scope(namespace.map(str::to_owned));
    let deployments: Api<Deployment> = api(client, namespace);
    let (deployments, (policies, unreadable), cluster, namespaces) = futures::try_join!(
        list_all(&deployments, "Deployments", &scope),
        list_policies(client, namespace),
        list_cluster_policies(client),
        read_namespaces(client, namespace),
    )?;
    let mut state = assemble(deployments, policies, unreadable, cluster, namespaces);
    read_autoscalers(client, namespace, &mut state).await;
    Ok(state)
}

/// Deployment `name` of `namespace`, with the policies of its namespace, the
/// ClusterSidecarPolicies and the namespace's labels.
pub async fn fetch_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<ClusterState, FetchError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let get = async {
        deployments
            .get_opt(name)
            .await
            .map_err(|source| FetchError::Get {
                what: "Deployment",
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
                source,
            })?
            .ok_or_else(|| FetchError::DeploymentNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    };
    let (deployment, (policies, unreadable), cluster, namespaces) = futures::try_join!(
        get,
        list_policies(client, Some(namespace)),
        list_cluster_policies(client),
        read_namespaces(client, Some(namespace)),
    )?;
    let mut state = assemble(vec![deployment], policies, unreadable, cluster, namespaces);
    read_autoscalers(client, Some(namespace), &mut state).await;
    Ok(state)
}

fn assemble(
    mut deployments: Vec<Deployment>,
    policies: Vec<SidecarPolicy>,
    mut unreadable: Vec<Unreadable>,
    cluster: ClusterPolicies,
    namespaces: Vec<NamespaceLabels>,
) -> ClusterState {
    // Who wrote which field is not what decides; it only takes memory and clutters diffs.
    for deployment in &mut deployments {
        deployment.metadata.managed_fields = None;
    }
    let mut notes = Vec::new();
    let cluster_policies = match cluster {
        ClusterPolicies::NotServed => {
            notes.push(
                "the ClusterSidecarPolicy CRD is not served by this cluster: only SidecarPolicies apply"
                    .to_owned(),
            );
            None
        }
        ClusterPolicies::Listed(policies, mut invalid) => {
            unreadable.append(&mut invalid);
            Some(policies)
        }
    };
    ClusterState {
        deployments,
        policies,
        cluster_policies,
        namespaces,
        unreadable,
        autoscalers: AutoscalerIndex::default(),
        notes,
    }
}

/// The HPAs (autoscaling/v2) and, when their CRD is served, the VPAs of `namespace` (or of all),
/// into `state`. They only add warnings: one that cannot be listed is a note, not an error.
async fn read_autoscalers(client: &Client, namespace: Option<&str>, state: &mut ClusterState) {
    let scope = Scope(namespace.map(str::to_owned));
    let hpas: Api<HorizontalPodAutoscaler> = api(client, namespace);
    match list_all(&hpas, "HorizontalPodAutoscalers", &scope).await {
        Ok(hpas) => {
            for hpa in &hpas {
                let facts = Hpa::of(hpa).map(Autoscaler::Hpa);
                let (ns, name) = (hpa.namespace().unwrap_or_default(), hpa.name_any());
                state.autoscalers.apply(Kind::Hpa, &ns, &name, facts);
            }
        }
        Err(e) => state.notes.push(format!("{e}: HPA warnings are not shown")),
    }
    let gvk = GroupVersionKind::gvk("autoscaling.k8s.io", "v1", "VerticalPodAutoscaler");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "verticalpodautoscalers");
    let vpas: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    match list_all(&vpas, "VerticalPodAutoscalers", &scope).await {
        Ok(vpas) => {
            for vpa in &vpas {
                let Ok(object) = serde_json::to_value(vpa) else {
                    continue;
                };
                let facts = Vpa::of(&object).map(Autoscaler::Vpa);
                let (ns, name) = (vpa.namespace().unwrap_or_default(), vpa.name_any());
                state.autoscalers.apply(Kind::Vpa, &ns, &name, facts);
            }
        }
        // The VPA is an add-on: not served is the usual case, and nothing to say.
        Err(e) if not_served(&e) => {}
        Err(e) => state.notes.push(format!("{e}: VPA warnings are not shown")),
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Every object `api` lists, page by page.
async fn list_all<K>(api: &Api<K>, what: &'static str, scope: &Scope) -> Result<Vec<K>, FetchError>
where
    K: Clone + DeserializeOwned + fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|source| FetchError::List {
            what,
            scope: scope.clone(),
            source,
        })?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    tracing::debug!(what, %scope, count = items.len(), "listed");
    Ok(items)
}

/// Whether the API server answered that the resource is not served (no such CRD).
fn not_served(error: &FetchError) -> bool {
    matches!(error, FetchError::List { source: kube::Error::Api(status), .. } if status.code == 404)
}

async fn list_policies(
    client: &Client,
    namespace: Option<&str>,
) -> Result<(Vec<SidecarPolicy>, Vec<Unreadable>), FetchError> {
    let scope = Scope(namespace.map(str::to_owned));
    let api: Api<DeserializeGuard<SidecarPolicy>> = api(client, namespace);
    let listed = match list_all(&api, "SidecarPolicies", &scope).await {
        Err(e) if not_served(&e) => {
            tracing::warn!("the SidecarPolicy CRD is not served: there are no SidecarPolicies");
            Vec::new()
        }
        listed => listed?,
    };
    let mut policies = Vec::new();
    let mut unreadable = Vec::new();
    for guarded in listed {
        match guarded.0 {
            Ok(mut policy) => {
                policy.metadata.managed_fields = None;
                policies.push(policy);
            }
            Err(invalid) => unreadable.push(Unreadable {
                key: invalid.metadata.name.clone().unwrap_or_default(),
                namespace: invalid.metadata.namespace.clone(),
                error: invalid.error,
            }),
        }
    }
    Ok((policies, unreadable))
}

enum ClusterPolicies {
    NotServed,
    Listed(Vec<ClusterSidecarPolicy>, Vec<Unreadable>),
}

async fn list_cluster_policies(client: &Client) -> Result<ClusterPolicies, FetchError> {
    let api: Api<DeserializeGuard<ClusterSidecarPolicy>> = Api::all(client.clone());
    let listed = match list_all(&api, "ClusterSidecarPolicies", &Scope(None)).await {
        Err(e) if not_served(&e) => return Ok(ClusterPolicies::NotServed),
        listed => listed?,
    };
    let mut policies = Vec::new();
    let mut unreadable = Vec::new();
    for guarded in listed {
        let name = guarded.name_any();
        match guarded.0 {
            Ok(mut policy) => {
                policy.metadata.managed_fields = None;
                policies.push(policy);
            }
            Err(invalid) => unreadable.push(Unreadable {
                key: cluster::key(&name),
                namespace: None,
                error: invalid.error,
            }),
        }
    }
    Ok(ClusterPolicies::Listed(policies, unreadable))
}

/// The labels of `namespace` (a get), or of every namespace (a list).
async fn read_namespaces(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<NamespaceLabels>, FetchError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespaces = match namespace {
        Some(name) => api
            .get_opt(name)
            .await
            .map_err(|source| FetchError::Get {
                what: "Namespace",
                name: name.to_owned(),
                namespace: None,
                source,
            })?
            .into_iter()
            .collect(),
        None => list_all(&api, "Namespaces", &Scope(None)).await?,
    };
    Ok(namespaces
        .iter()
        .map(|ns| NamespaceLabels::of(&ns.metadata))
        .collect())
}
