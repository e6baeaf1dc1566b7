//! One Deployment: render it against its namespace's policies, write only if the stored object
//! differs, verify the order the server stored, and tell the user what happened.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::{
    InjectionRecord, PolicySet, Refusal, Rendered, apply_patch, init_container_names, init_container_order,
    is_up_to_date,
};
use tracing::{info, instrument, warn};

use super::FIELD_MANAGER;
use super::context::{CACHE_RETRY, Context, NamespacePolicies};
use super::error::{Error, backoff};

/// Events carry at most this much text (the API server limits notes to 1 kB).
const NOTE_LIMIT: usize = 1000;

#[instrument(skip_all, fields(deployment = %deployment.name_any(), namespace = deployment.namespace().unwrap_or_default()))]
pub async fn reconcile(deployment: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.unsupported_server.is_some() {
        return Ok(Action::await_change()); // every policy's status says why
    }
    // Rendering against a cache that is still filling would strip every sidecar.
    if !ctx.caches_filled() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let namespace = deployment.namespace().unwrap_or_default();
    let NamespacePolicies {
        readable: policies,
        unreadable,
    } = ctx.namespace_policies(&namespace);
    if let Some(invalid) = unreadable.first() {
        // It may select this Deployment, or have injected into it: rendering without it could
        // strip what it asked for. Leave the Deployment as it is until the policy is fixed.
        let name = invalid.metadata.name.clone().unwrap_or_default();
        warn!(policy = %name, "SidecarPolicy cannot be decoded: {}", invalid.error);
        let note = format!(
            "not changed: SidecarPolicy {name:?} in this namespace cannot be read: {}",
            invalid.error
        );
        publish(
            &ctx,
            deployment.object_ref(&()),
            EventType::Warning,
            "UnreadablePolicy",
            "Render",
            note,
        )
        .await;
        ctx.succeeded(&ObjectRef::from_obj(&*deployment));
        return Ok(Action::await_change());
    }
    let set = PolicySet::new(&policies, &ctx.guardrails);
    let rendered = match set.render(&deployment) {
        Ok(rendered) => rendered,
        Err(refusal) => {
            warn!(problems = refusal.problems.len(), "render refused: {refusal}");
            report_refusal(&ctx, &deployment, &policies, &refusal).await;
            ctx.succeeded(&ObjectRef::from_obj(&*deployment));
            return Ok(Action::await_change());
        }
    };
    if is_up_to_date(&deployment, &rendered) {
        ctx.succeeded(&ObjectRef::from_obj(&*deployment));
        return Ok(Action::await_change());
    }
    write(&ctx, &deployment, &rendered).await?;
    ctx.succeeded(&ObjectRef::from_obj(&*deployment));
    Ok(Action::await_change())
}

/// Retries with exponential backoff per Deployment; a field conflict waits longer, since it
/// needs a person.
pub fn error_policy(deployment: Arc<Deployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failed(ObjectRef::from_obj(&*deployment));
    warn!(deployment = %deployment.name_any(), category = error.category(), failures, "reconcile failed: {error}");
    match error {
        Error::FieldConflict { .. } => Action::requeue(backoff(failures.max(6))),
        _ => Action::requeue(backoff(failures)),
    }
}

async fn write(ctx: &Context, deployment: &Deployment, rendered: &Rendered) -> Result<(), Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let stored = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(apply_patch(rendered)),
        )
        .await
        .map_err(|e| Error::from_write(&namespace, &name, e))?;
    ctx.metrics.wrote("apply");
    ensure_order(ctx, &api, &stored, &init_container_order(rendered))
        .await
        // A 409 here is a stale resourceVersion, not a field conflict: retry soon.
        .map_err(|source| Error::Write {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;

    let before = InjectionRecord::read(deployment)
        .ok()
        .flatten()
        .unwrap_or_default();
    let (reason, note) = describe_change(&before, &rendered.record);
    info!(reason, "{note}");
    publish(
        ctx,
        deployment.object_ref(&()),
        EventType::Normal,
        reason,
        "Reconcile",
        note,
    )
    .await;
    for warning in &rendered.warnings {
        warn!("{warning}");
    }
    Ok(())
}

/// Server-side apply merges list entries and may not keep the order the engine computed when
/// several field managers share `initContainers` (kubernetes/kubernetes#104641: entries only
/// the stored object has keep their place, new ones follow). If the stored order is not the
/// computed one, reorder the stored list, guarded by its resourceVersion so that nothing written
/// in between is lost. A reorder changes no field value, so no field changes owner.
async fn ensure_order(
    ctx: &Context,
    api: &Api<Deployment>,
    stored: &Deployment,
    want: &[&str],
) -> Result<(), kube::Error> {
    let have = init_container_names(stored);
    if have == want {
        return Ok(());
    }
    let current = stored
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.init_containers.as_ref());
    let mut reordered = current.cloned().unwrap_or_default();
    reordered.sort_by_key(|c| want.iter().position(|w| *w == c.name).unwrap_or(usize::MAX));
    info!(
        ?have,
        ?want,
        "server-side apply stored the init containers out of order; reordering"
    );
    let patch = json!({
        "metadata": {"resourceVersion": stored.metadata.resource_version},
        "spec": {"template": {"spec": {"initContainers": reordered}}},
    });
    api.patch(&stored.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    ctx.metrics.wrote("reorder");
    Ok(())
}

fn describe_change(before: &InjectionRecord, after: &InjectionRecord) -> (&'static str, String) {
    let list = |record: &InjectionRecord| {
        record
            .init_containers
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    if after.is_empty() {
        let note = format!("removed what SidecarPolicies injected ({})", list(before));
        ("SidecarsRemoved", note)
    } else if before.is_empty() {
        let note = format!(
            "injected {} from SidecarPolicy {}",
            list(after),
            after.policies.join(", ")
        );
        ("SidecarsInjected", note)
    } else {
        let note = format!(
            "updated to {} from SidecarPolicy {}",
            list(after),
            after.policies.join(", ")
        );
        ("SidecarsUpdated", note)
    }
}

/// A Warning Event on the Deployment and on every policy at fault.
async fn report_refusal(
    ctx: &Context,
    deployment: &Deployment,
    policies: &[SidecarPolicy],
    refusal: &Refusal,
) {
    let text = refusal
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = refusal.problems.first().map_or("Refused", |p| p.kind.reason());
    publish(
        ctx,
        deployment.object_ref(&()),
        EventType::Warning,
        reason,
        "Render",
        format!("not changed: {text}"),
    )
    .await;
    for policy in policies {
        let name = policy.name_any();
        let own: Vec<String> = refusal
            .problems
            .iter()
            .filter(|p| p.policy == name)
            .map(ToString::to_string)
            .collect();
        if let Some(first) = refusal.problems.iter().find(|p| p.policy == name) {
            let note = format!(
                "Deployment {:?} not changed: {}",
                refusal.deployment,
                own.join("; ")
            );
            publish(
                ctx,
                policy.object_ref(&()),
                EventType::Warning,
                first.kind.reason(),
                "Render",
                note,
            )
            .await;
        }
    }
}

async fn publish(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    mut note: String,
) {
    if note.len() > NOTE_LIMIT {
        let mut cut = NOTE_LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        // An Event is best effort; the log has the same information.
        warn!("could not publish Event {reason}: {e}");
    }
}
