//! The status of each SidecarPolicy: counts and conditions from the Deployments of its
//! namespace, written to the status subresource only when it changed.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::{InjectionRecord, PolicySet, policy_status, selector, unsupported_server_status};
use tracing::{debug, instrument, warn};

use super::FIELD_MANAGER;
use super::context::Context;
use super::error::{Error, backoff};

#[instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
pub async fn reconcile_status(policy: Arc<SidecarPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.policies
        .wait_until_ready()
        .await
        .map_err(Error::CacheNotReady)?;
    ctx.deployments
        .wait_until_ready()
        .await
        .map_err(Error::CacheNotReady)?;
    let namespace = policy.namespace().unwrap_or_default();
    let policies: Vec<SidecarPolicy> = ctx
        .policies
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| SidecarPolicy::clone(p))
        .collect();
    let set = PolicySet::new(&policies, &ctx.guardrails);
    let deployments: Vec<Arc<Deployment>> = ctx
        .deployments
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    let refs: Vec<&Deployment> = deployments.iter().map(|d| &**d).collect();
    let now = Time(Timestamp::now());
    let status = match &ctx.unsupported_server {
        Some(reason) => unsupported_server_status(&policy, reason, policy.status.as_ref(), &now),
        None => policy_status(&policy, &set, &refs, policy.status.as_ref(), &now),
    };
    if policy.status.as_ref() == Some(&status) {
        debug!("status unchanged");
        return Ok(Action::await_change());
    }
    let api: Api<SidecarPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = policy.name_any();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&name, &params, &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(|source| Error::Write {
            namespace: namespace.clone(),
            name,
            source,
        })?;
    ctx.metrics.wrote("status");
    Ok(Action::await_change())
}

pub fn status_error_policy(policy: Arc<SidecarPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), category = error.category(), "status update failed: {error}");
    Action::requeue(backoff(2))
}

/// The policies whose status a change to `deployment` may change: those of its namespace that
/// select it or were applied to it.
pub fn policies_for(
    policies: &Store<SidecarPolicy>,
    deployment: &Deployment,
) -> Vec<ObjectRef<SidecarPolicy>> {
    let labels = deployment.metadata.labels.clone().unwrap_or_default();
    let record = InjectionRecord::read(deployment)
        .ok()
        .flatten()
        .unwrap_or_default();
    policies
        .state()
        .iter()
        .filter(|p| p.namespace() == deployment.namespace())
        .filter(|p| {
            selector::matches(&p.spec.selector, &labels).unwrap_or(false)
                || record.policies.contains(&p.name_any())
        })
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}
