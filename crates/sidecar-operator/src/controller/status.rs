//! The status of each SidecarPolicy: counts and conditions from the Deployments of its
//! namespace, written to the status subresource only when it changed.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::{InjectionRecord, PolicySet, policy_status, selector, unsupported_server_status};
use tracing::{debug, instrument, warn};

use super::context::{CACHE_RETRY, Context};
use super::error::{Error, backoff};
use super::{FIELD_MANAGER, GuardedPolicy};

#[instrument(skip_all, fields(policy = %guarded.name_any(), namespace = guarded.namespace().unwrap_or_default()))]
pub async fn reconcile_status(guarded: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let policy = match &guarded.0 {
        Ok(policy) => policy,
        Err(invalid) => {
            // Its status cannot be compared without decoding it; an Event says what is wrong.
            let note = format!(
                "cannot be decoded, so no Deployment in this namespace is changed: {}",
                invalid.error
            );
            let event = Event {
                type_: EventType::Warning,
                reason: "UnreadablePolicy".to_owned(),
                note: Some(note),
                action: "Decode".to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &guarded.object_ref(&())).await {
                warn!("could not publish Event UnreadablePolicy: {e}");
            }
            return Ok(Action::await_change());
        }
    };
    if !ctx.caches_filled() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let namespace = policy.namespace().unwrap_or_default();
    let policies = ctx.namespace_policies(&namespace).readable;
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
        Some(reason) => unsupported_server_status(policy, reason, policy.status.as_ref(), &now),
        None => policy_status(policy, &set, &refs, policy.status.as_ref(), &now),
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

pub fn status_error_policy(policy: Arc<GuardedPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = %policy.name_any(), category = error.category(), "status update failed: {error}");
    Action::requeue(backoff(2))
}

/// The policies whose status a change to `deployment` may change: those of its namespace that
/// select it or were applied to it.
pub fn policies_for(
    policies: &Store<GuardedPolicy>,
    deployment: &Deployment,
) -> Vec<ObjectRef<GuardedPolicy>> {
    let labels = super::labels(deployment);
    let record = InjectionRecord::read(deployment)
        .ok()
        .flatten()
        .unwrap_or_default();
    policies
        .state()
        .iter()
        .filter(|p| p.namespace() == deployment.namespace())
        .filter(|p| {
            let selects =
                p.0.as_ref()
                    .is_ok_and(|p| selector::matches(&p.spec.selector, labels).unwrap_or(false));
            selects || record.policies.contains(&p.name_any())
        })
        .map(|p| ObjectRef::from_obj(&**p))
        .collect()
}
