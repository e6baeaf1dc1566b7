//! One SidecarPolicy: keep its revision history, then aggregate its status from the outcome
//! index and write it only when it changed. Nothing here renders a Deployment.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy, SidecarPolicyStatus, conditions};
use sidecar_core::PolicySet;
use sidecar_core::cluster::{self, NamespaceLabels};
use sidecar_core::outcome::Summary;
use sidecar_core::status::{from_summary, own_warnings, reasons, unsupported_server_status};
use tracing::{debug, instrument, warn};

use super::context::{CACHE_RETRY, Context, PolicyId, cluster_policy_id, policy_id};
use super::error::{Error, backoff};
use super::events::{EventType, Report};
use super::revisions::{Owner, sync_history};
use super::rollouts::{self, Reach};
use super::{FIELD_MANAGER, GuardedClusterPolicy, GuardedPolicy};

#[instrument(skip_all, fields(policy = %guarded.name_any(), namespace = guarded.namespace().unwrap_or_default()))]
pub async fn reconcile_status(guarded: Arc<GuardedPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = policy_id(&ObjectRef::from_obj(&*guarded));
    let policy = match &guarded.0 {
        Ok(policy) => policy,
        Err(invalid) => {
            report_unreadable(&ctx, guarded.object_ref(&()), "in this namespace", &invalid.error).await;
            return Ok(Action::await_change());
        }
    };
    let now = Time(Timestamp::now());
    if let Some(reason) = &ctx.unsupported_server {
        let status = unsupported_server_status(policy, reason, policy.status.as_ref(), &now);
        if policy.status.as_ref() != Some(&status) {
            write_status(&ctx, policy, &status).await?;
        }
        ctx.policy_succeeded(&key);
        return Ok(Action::await_change());
    }
    if !ctx.caches_filled() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    if !ctx.outcomes_synced() {
        // A status from a half-filled index would be wrong, and rewritten a moment later. Every
        // policy is triggered once every Deployment has an outcome.
        debug!("waiting for every Deployment's first reconcile");
        return Ok(Action::await_change());
    }
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let policies = ctx.namespace_policies(&namespace);
    let Some(revision) = policies.set.revision(&name).map(str::to_owned) else {
        // The prepared set predates this policy: the invalidation that follows its arrival
        // triggers this reconcile again.
        return Ok(Action::requeue(CACHE_RETRY));
    };
    sync_history(&ctx, &Owner::policy(policy), &revision).await?;

    let decision = rollouts::plan(&ctx, policy, Reach::Namespace(&namespace), &revision);
    // A rolling Deployment's deadline passes without an event.
    let next = || {
        decision
            .recheck
            .map_or_else(Action::await_change, Action::requeue)
    };
    let mut summary = ctx.outcomes().summary(&namespace, &name, &revision);
    summary.rollout = Some((decision.counts, decision.phase.clone()));
    let subject = Subject {
        id: key,
        policy,
        stored: policy.status.as_ref(),
        reference: policy.object_ref(&()),
        matched_namespaces: None,
    };
    settle(&ctx, &subject, &policies.set, &summary, next()).await
}

/// One ClusterSidecarPolicy: keep its revision history (in the operator's namespace), plan its
/// rollout across namespaces, then aggregate its status from the outcomes in every namespace and
/// write it when it changed.
#[instrument(skip_all, fields(cluster_policy = %guarded.name_any()))]
pub async fn reconcile_cluster_status(
    guarded: Arc<GuardedClusterPolicy>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = guarded.name_any();
    let id = cluster_policy_id(&name);
    let cluster_policy = match &guarded.0 {
        Ok(policy) => policy,
        Err(invalid) => {
            report_unreadable(&ctx, guarded.object_ref(&()), "in any namespace", &invalid.error).await;
            return Ok(Action::await_change());
        }
    };
    let now = Time(Timestamp::now());
    // The engine's view of it: a policy named by its key.
    let policy = cluster::in_namespace(cluster_policy, "");
    if let Some(reason) = &ctx.unsupported_server {
        let status = unsupported_server_status(&policy, reason, cluster_policy.status.as_ref(), &now);
        if cluster_policy.status.as_ref() != Some(&status) {
            write_cluster_status(&ctx, &name, &status).await?;
        }
        ctx.policy_succeeded(&id);
        return Ok(Action::await_change());
    }
    if !ctx.caches_filled() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    if !ctx.outcomes_synced() {
        debug!("waiting for every Deployment's first reconcile");
        return Ok(Action::await_change());
    }
    let set = PolicySet::for_cluster_policy(cluster_policy, &ctx.guardrails);
    let revision = set.revision(&id.1).unwrap_or_default().to_owned();
    sync_history(
        &ctx,
        &Owner::cluster_policy(cluster_policy, &ctx.revision_namespace),
        &revision,
    )
    .await?;
    let decision = rollouts::plan(&ctx, &policy, Reach::Cluster, &revision);
    let next = decision
        .recheck
        .map_or_else(Action::await_change, Action::requeue);
    let mut summary = ctx.outcomes().summary_across(&id.1, &revision);
    summary.rollout = Some((decision.counts, decision.phase.clone()));
    let subject = Subject {
        id,
        policy: &policy,
        stored: cluster_policy.status.as_ref(),
        reference: guarded.object_ref(&()),
        matched_namespaces: Some(matched_namespaces(&ctx, cluster_policy)),
    };
    settle(&ctx, &subject, &set, &summary, next).await
}

/// A Warning Event on a policy that does not decode: its status cannot be compared without
/// decoding it, so the Event says what is wrong. It is sent when the policy changes, not on every
/// event; after a restart, an earlier process may have said so already (`once`).
async fn report_unreadable(ctx: &Context, policy: ObjectReference, where_: &str, error: &str) {
    let note = format!("cannot be decoded, so no Deployment {where_} is changed: {error}");
    let report = Report::new(policy, EventType::Warning, "UnreadablePolicy", "Decode", note);
    ctx.events.publish(report.once(true)).await;
}

/// How many namespaces `policy`'s namespaceSelector selects.
fn matched_namespaces(ctx: &Context, policy: &ClusterSidecarPolicy) -> i32 {
    let Some(cluster) = &ctx.caches.cluster else {
        return 0;
    };
    let selected = cluster
        .namespaces
        .state()
        .iter()
        .filter(|ns| {
            cluster::selects(policy, &NamespaceLabels::of(&ns.metadata), &ctx.exclusions) == Ok(true)
        })
        .count();
    i32::try_from(selected).unwrap_or(i32::MAX)
}

/// A policy of either kind, as its status is settled.
struct Subject<'a> {
    id: PolicyId,
    /// As the engine names it (a ClusterSidecarPolicy by its key).
    policy: &'a SidecarPolicy,
    /// The status the cache shows.
    stored: Option<&'a SidecarPolicyStatus>,
    /// The object, for Events.
    reference: ObjectReference,
    /// ClusterSidecarPolicy only.
    matched_namespaces: Option<i32>,
}

/// Computes the status of `subject` from `summary` and writes it if it changed; `next` is what
/// to do after.
async fn settle(
    ctx: &Context,
    subject: &Subject<'_>,
    set: &PolicySet,
    summary: &Summary,
    next: Action,
) -> Result<Action, Error> {
    let now = Time(Timestamp::now());
    let policy = subject.policy;
    // The status this process wrote last is newer than the cached one until the cache catches
    // up; comparing with the cached one would write the same status again.
    let written = ctx.written_status(&subject.id);
    let previous = match &written {
        Some((status, _))
            if subject.stored != Some(status) && policy.metadata.generation == status.observed_generation =>
        {
            Some(status)
        }
        _ => subject.stored,
    };
    let mut status = from_summary(policy, set, summary, previous, &now);
    status.matched_namespaces = subject.matched_namespaces;
    if previous == Some(&status) {
        debug!("status unchanged");
        ctx.policy_succeeded(&subject.id);
        return Ok(next);
    }
    // While a thousand Deployments converge, counts change a thousand times: progress is written
    // at most once per interval; a condition that changes is written at once.
    if only_progress(previous, &status)
        && let Some((_, ago)) = written
        && let Some(wait) = PROGRESS_INTERVAL.checked_sub(ago).filter(|w| !w.is_zero())
    {
        return Ok(Action::requeue(wait));
    }
    report_invalid(ctx, &subject.reference, previous, &status).await;
    let own = own_warnings(set, subject.id.1.as_str());
    report_warnings(ctx, &subject.reference, own, previous).await;
    report_stopped(ctx, &subject.reference, previous, &status).await;
    match cluster::cluster_name(&subject.id.1) {
        Some(name) => write_cluster_status(ctx, name, &status).await?,
        None => write_status(ctx, policy, &status).await?,
    }
    ctx.status_was_written(subject.id.clone(), status);
    ctx.policy_succeeded(&subject.id);
    Ok(next)
}

/// How often a status that only reports progress (counts, messages) is written, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Whether `next` differs from `previous` in counts and messages only: the same generation,
/// revision, and conditions (type, status, reason).
fn only_progress(previous: Option<&SidecarPolicyStatus>, next: &SidecarPolicyStatus) -> bool {
    let Some(previous) = previous else {
        return false;
    };
    /// A condition's type, status and reason.
    type Shape<'s> = (&'s str, &'s str, &'s str);
    fn shape(s: &SidecarPolicyStatus) -> (Option<i64>, Option<&str>, Vec<Shape<'_>>) {
        let conditions = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        (s.observed_generation, s.current_revision.as_deref(), conditions)
    }
    shape(previous) == shape(next)
}

/// Retries with exponential backoff per ClusterSidecarPolicy.
pub fn cluster_status_error_policy(
    policy: Arc<GuardedClusterPolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.policy_failed(cluster_policy_id(&policy.name_any()));
    warn!(cluster_policy = %policy.name_any(), category = error.category(), failures, "ClusterSidecarPolicy reconcile failed: {error}");
    Action::requeue(backoff(failures))
}

/// Retries with exponential backoff per policy.
pub fn status_error_policy(policy: Arc<GuardedPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.policy_failed(policy_id(&ObjectRef::from_obj(&*policy)));
    warn!(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default(), category = error.category(), failures, "policy reconcile failed: {error}");
    Action::requeue(backoff(failures))
}

/// Status fields left out of the serialized status when zero or empty.
const OMITTED_WHEN_EMPTY: [&str; 9] = [
    "observedGeneration",
    "matchedNamespaces",
    "currentRevision",
    "heldDeployments",
    "progress",
    "rollingDeployments",
    "waitingDeployments",
    "failedDeployments",
    "conditions",
];

/// `status` as a merge patch: a field the status leaves out (a count back to 0) is sent as
/// `null`, which removes it; left out of the patch, the server would keep its old value.
fn merge_body(status: &SidecarPolicyStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(fields) = body.as_object_mut() {
        for field in OMITTED_WHEN_EMPTY {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    body
}

/// Writes `status` to the status subresource, unless the policy already has it.
async fn write_status(
    ctx: &Context,
    policy: &SidecarPolicy,
    status: &SidecarPolicyStatus,
) -> Result<(), Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let api: Api<SidecarPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(
        &name,
        &params,
        &Patch::Merge(json!({ "status": merge_body(status) })),
    )
    .await
    .map_err(|source| Error::WriteStatus {
        namespace,
        name,
        source,
    })?;
    ctx.metrics.wrote("status");
    Ok(())
}

/// Writes `status` to ClusterSidecarPolicy `name`'s status subresource.
async fn write_cluster_status(ctx: &Context, name: &str, status: &SidecarPolicyStatus) -> Result<(), Error> {
    let api: Api<ClusterSidecarPolicy> = Api::all(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(
        name,
        &params,
        &Patch::Merge(json!({ "status": merge_body(status) })),
    )
    .await
    .map_err(|source| Error::WriteClusterStatus {
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics.wrote("status");
    Ok(())
}

/// The condition of type `type_` in `status`, if it is `True` (an abnormal-true condition that
/// holds).
fn holding<'s>(status: Option<&'s SidecarPolicyStatus>, type_: &str) -> Option<&'s Condition> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// A Warning Event on the policy when it turns invalid (or refused by the guardrails), once: the
/// Deployments it selects each get their own Event when they are refused.
async fn report_invalid(
    ctx: &Context,
    policy: &ObjectReference,
    previous: Option<&SidecarPolicyStatus>,
    status: &SidecarPolicyStatus,
) {
    let invalid = |s: Option<&SidecarPolicyStatus>| {
        holding(s, conditions::INVALID).map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = invalid(Some(status))
        && invalid(previous) != Some((reason.clone(), message.clone()))
    {
        let note = format!("no Deployment gets this policy until it is fixed: {message}");
        let report = Report::new(policy.clone(), EventType::Warning, &reason, "Validate", note);
        ctx.events.publish(report).await;
    }
}

/// A Warning Event on the policy when its spec's own warnings appear or change, once: the
/// `Warnings` condition keeps saying so. (The warnings of the Deployments it selects are Events on
/// those Deployments.)
async fn report_warnings(
    ctx: &Context,
    policy: &ObjectReference,
    own: Option<String>,
    previous: Option<&SidecarPolicyStatus>,
) {
    let Some(own) = own else {
        return;
    };
    // The condition's message starts with the policy's own warnings (see `from_summary`).
    let reported = holding(previous, conditions::WARNINGS).is_some_and(|c| {
        c.reason == reasons::POLICY_WARNINGS
            && (c.message == own || c.message.starts_with(&format!("{own}; Deployment ")))
    });
    if reported {
        return;
    }
    let report = Report::new(
        policy.clone(),
        EventType::Warning,
        reasons::POLICY_WARNINGS,
        "Validate",
        own,
    );
    ctx.events.publish(report).await;
}

/// A Warning Event on the policy when its rollout stops on a failure, once per stop: the status'
/// `Stalled` condition keeps saying so.
async fn report_stopped(
    ctx: &Context,
    policy: &ObjectReference,
    previous: Option<&SidecarPolicyStatus>,
    status: &SidecarPolicyStatus,
) {
    let stopped = |s: Option<&SidecarPolicyStatus>| {
        holding(s, conditions::STALLED)
            .filter(|c| c.reason == reasons::ROLLOUT_STOPPED)
            .map(|c| (c.message.clone(), s.and_then(|s| s.current_revision.clone())))
    };
    let Some((message, revision)) = stopped(Some(status)) else {
        return;
    };
    if stopped(previous).is_some_and(|(_, earlier)| earlier == revision) {
        return;
    }
    warn!("rollout stopped: {message}");
    let report = Report::new(
        policy.clone(),
        EventType::Warning,
        reasons::ROLLOUT_STOPPED,
        "Rollout",
        message,
    );
    ctx.events.publish(report).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_back_to_zero_is_removed_not_kept() {
        let status = SidecarPolicyStatus {
            matched_deployments: 3,
            ..SidecarPolicyStatus::default()
        };
        let body = merge_body(&status);
        for field in OMITTED_WHEN_EMPTY {
            assert_eq!(body[field], serde_json::Value::Null, "{field}");
            assert!(body.as_object().unwrap().contains_key(field), "{field} is sent");
        }
        assert_eq!(body["matchedDeployments"], 3);
        // Every field the status may leave out is in the list.
        let full = SidecarPolicyStatus {
            current_revision: Some("r".into()),
            held_deployments: 1,
            progress: Some("1/3".into()),
            rolling_deployments: 1,
            waiting_deployments: 1,
            failed_deployments: 1,
            observed_generation: Some(2),
            conditions: vec![
                serde_json::from_value(json!({"type": "Ready", "status": "True", "reason": "UpToDate", "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}))
                    .unwrap(),
            ],
            ..status
        };
        let all = serde_json::to_value(&full).unwrap();
        let empty = serde_json::to_value(SidecarPolicyStatus::default()).unwrap();
        for key in all.as_object().unwrap().keys() {
            if !empty.as_object().unwrap().contains_key(key) {
                assert!(
                    OMITTED_WHEN_EMPTY.contains(&key.as_str()),
                    "{key} may be left out"
                );
            }
        }
    }
}
