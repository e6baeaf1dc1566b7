//! One Deployment: plan it against its namespace's prepared policies, write only if the stored
//! object differs, verify the order the server stored, record the outcome, and tell the user
//! what changed (once: Events go out on transitions only).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sidecar_api::SidecarPolicy;
use sidecar_core::outcome::{Outcome, State};
use sidecar_core::rollout::Progress;
use sidecar_core::status::reasons;
use sidecar_core::{DeploymentFacts, InjectionRecord, Plan, PolicySet, Refusal, Warning, cluster};
use tracing::{debug, info, instrument, warn};

use super::FIELD_MANAGER;
use super::context::{CACHE_RETRY, Context, Transition, Written};
use super::error::{Error, backoff};
use super::events::{EventType, Report};
use super::hold::{self, Release};
use super::rollouts::Reach;
use super::view::DeploymentView;
use super::{revisions, rollouts};

#[instrument(skip_all, fields(deployment = %view.name(), namespace = %view.namespace()))]
pub async fn reconcile(view: Arc<DeploymentView>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(&*view);
    let held = view.held_for().is_some();
    let resource_version = view.metadata.resource_version.as_deref().unwrap_or_default();
    let generation = view.metadata.generation.unwrap_or_default();
    if !held {
        ctx.not_held(&key);
    }
    if held && ctx.hold_age(&key) >= ctx.max_hold {
        // Something keeps failing (its reconciles said what): the owner's pods must not wait
        // forever for sidecars.
        let why = Release::WithoutSidecars {
            reason: "HoldTimedOut",
            why: format!(
                "not rendered within --max-hold-seconds={}",
                ctx.max_hold.as_secs()
            ),
        };
        hold::release(&ctx, &view, generation, why).await?;
        return Ok(Action::await_change());
    }
    if let Some(reason) = &ctx.unsupported_server {
        if held {
            let why = Release::WithoutSidecars {
                reason: "UnsupportedServer",
                why: reason.clone(),
            };
            hold::release(&ctx, &view, generation, why).await?;
        }
        return Ok(Action::await_change()); // every policy's status says why
    }
    // Planning against a cache that is still filling would strip every sidecar.
    if !ctx.caches_filled() {
        return Ok(Action::requeue(CACHE_RETRY));
    }
    let (namespace, name) = (view.namespace(), view.name());
    let facts = view.facts();
    let metadata = view.planning_metadata();
    let policies = ctx.namespace_policies(namespace);
    let selected: Vec<String> = policies
        .set
        .matching_meta(&metadata)
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let outcome = |state, held, warnings| Outcome {
        selected: selected.clone(),
        carried: facts.carried(),
        state,
        held,
        progress: view.progress.clone(),
        warnings,
    };

    if let Some(invalid) = policies.unreadable.first() {
        // It may select this Deployment, or have injected into it: planning without it could
        // strip what it asked for. Leave the Deployment as it is until the policy is fixed.
        let policy = invalid.metadata.name.clone().unwrap_or_default();
        let released = if held {
            let why = Release::WithoutSidecars {
                reason: "UnreadablePolicy",
                why: format!("{} cannot be read: {}", cluster::describe(&policy), invalid.error),
            };
            hold::release(&ctx, &view, generation, why).await
        } else {
            Ok(())
        };
        let state = State::Blocked {
            policy: policy.clone(),
            message: invalid.error.clone(),
        };
        let transition = ctx.record_outcome(namespace, name, outcome(state, released.is_err(), Vec::new()));
        released?;
        if transition.changed {
            warn!(%policy, "policy cannot be decoded: {}", invalid.error);
            let note = format!(
                "not changed: {} cannot be read: {}",
                cluster::describe(&policy),
                invalid.error
            );
            let report = Report::new(
                reference(&view),
                EventType::Warning,
                "UnreadablePolicy",
                "Render",
                note,
            );
            ctx.events.publish(report.once(transition.first)).await;
        }
        ctx.deployment_succeeded(&key);
        return Ok(Action::await_change());
    }

    let pins = match staged_pins(&ctx, &view, &policies.set, &selected, &facts.carried()) {
        Ok(pins) => pins,
        Err(missing) => {
            // Written moments ago, or deleted and being re-created by the policy's reconcile.
            debug!(%missing, "waiting for a revision in the revision cache");
            let state = State::Pending;
            ctx.record_outcome(namespace, name, outcome(state, held, Vec::new()));
            return Ok(Action::requeue(REVISION_RETRY));
        }
    };
    let pinned = (!pins.is_empty()).then(|| policies.set.pinned(&pins, &ctx.guardrails));
    let set = pinned.as_ref().unwrap_or(&policies.set);
    let plan = match set.plan(&metadata, &facts) {
        Ok(plan) => plan,
        Err(refusal) => {
            let released = if held {
                let why = Release::WithoutSidecars {
                    reason: "ReleasedWithoutSidecars",
                    why: format!("the render was refused: {refusal}"),
                };
                hold::release(&ctx, &view, generation, why).await
            } else {
                Ok(())
            };
            let state = State::Refused(refusal.problems.clone());
            let warnings = set.deployment_warnings(&refusal.warnings);
            let transition = ctx.record_outcome(
                namespace,
                name,
                outcome(state, released.is_err(), warnings.clone()),
            );
            released?;
            if transition.changed {
                warn!(problems = refusal.problems.len(), "render refused: {refusal}");
                report_refusal(&ctx, &view, &refusal, transition.first).await;
            }
            report_warnings(&ctx, &view, &warnings, transition).await;
            ctx.deployment_succeeded(&key);
            return Ok(Action::await_change());
        }
    };
    let warnings = deployment_warnings(&ctx, &view, set, &facts, &plan);
    let applied = |held, progress| Outcome {
        selected: selected.clone(),
        carried: plan.record.carried(),
        state: State::Applied,
        held,
        progress,
        warnings: warnings.clone(),
    };
    if plan.is_applied(&facts) {
        if held && ctx.released_already(&key, view.metadata.generation) {
            // The cache shows the write before the release; the release's update follows.
            debug!("released already, waiting for the cache");
            return Ok(Action::await_change());
        }
        ctx.settled(&key);
        if held {
            let why = if selected.is_empty() {
                Release::NothingSelects
            } else {
                Release::Rendered
            };
            let released = hold::release(&ctx, &view, generation, why).await;
            let transition =
                ctx.record_outcome(namespace, name, applied(released.is_err(), view.progress.clone()));
            report_warnings(&ctx, &view, &warnings, transition).await;
            released?;
        } else {
            let transition = ctx.record_outcome(namespace, name, applied(false, view.progress.clone()));
            report_warnings(&ctx, &view, &warnings, transition).await;
        }
        ctx.deployment_succeeded(&key);
        return Ok(Action::await_change());
    }
    let digest = digest(&plan);
    if ctx.written_already(&key, resource_version, digest) {
        // This plan was written; the cache has not caught up. Its update will trigger again (and
        // release a held Deployment if the release after the write failed).
        debug!("write already done, waiting for the cache");
        return Ok(Action::await_change());
    }
    match write(&ctx, &view, &plan).await {
        Ok((mut resource_versions, written_generation)) => {
            // The release is guarded by the generation of the operator's own last write: a spec
            // change by anyone else in between is rendered before the Deployment goes.
            let released = match written_generation {
                Some(written) if held => hold::release(&ctx, &view, written, Release::Rendered).await,
                _ => Ok(()),
            };
            resource_versions.push(resource_version.to_owned());
            ctx.wrote(
                key.clone(),
                Written {
                    resource_versions,
                    plan: digest,
                    generation: written_generation,
                    released: held && released.is_ok(),
                },
            );
            // Until the cache shows the write, a staged rollout counts the Deployment as rolling.
            let progress = match view.progress {
                Progress::Idle => Progress::Idle,
                _ => Progress::Rolling,
            };
            let transition = ctx.record_outcome(namespace, name, applied(released.is_err(), progress));
            report_change(&ctx, &view, &facts, &plan).await;
            report_warnings(&ctx, &view, &warnings, transition).await;
            released?;
            ctx.deployment_succeeded(&key);
            Ok(Action::await_change())
        }
        Err(error) => {
            let conflict = matches!(error, Error::FieldConflict { .. });
            let state = State::WriteFailed {
                conflict,
                message: error.to_string(),
            };
            let transition = ctx.record_outcome(namespace, name, outcome(state, held, warnings.clone()));
            if conflict && transition.changed {
                // Needs a person (the other field manager's owner): say so once, where
                // `kubectl describe` shows it; the policies' status says it too.
                let report = Report::new(
                    reference(&view),
                    EventType::Warning,
                    reasons::FIELD_CONFLICT,
                    "Apply",
                    format!("not changed: {error}"),
                );
                ctx.events.publish(report.once(transition.first)).await;
            }
            Err(error)
        }
    }
}

/// What the plan warns of this Deployment (not its policies' own warnings, which their status
/// says), and what its autoscalers make of the sidecars the plan injects.
fn deployment_warnings(
    ctx: &Context,
    view: &DeploymentView,
    set: &PolicySet,
    facts: &DeploymentFacts,
    plan: &Plan,
) -> Vec<Warning> {
    let mut warnings = set.deployment_warnings(&plan.warnings);
    let autoscalers = ctx.autoscalers_of(view.namespace(), view.name());
    if !autoscalers.is_empty() {
        warnings.extend(set.autoscaler_warnings(&facts.owner, &plan.record, &autoscalers));
        warnings.sort();
        warnings.dedup();
    }
    warnings
}

/// A Warning Event on the Deployment when its warnings appear or change, once: the status of
/// each policy they concern keeps saying so.
async fn report_warnings(ctx: &Context, view: &DeploymentView, warnings: &[Warning], transition: Transition) {
    if !transition.new_warnings {
        return;
    }
    let text = warnings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    debug!(warnings = warnings.len(), "render warnings: {text}");
    let report = Report::new(
        reference(view),
        EventType::Warning,
        reasons::SIDECAR_WARNINGS,
        "Render",
        text,
    );
    ctx.events.publish(report.once(transition.first)).await;
}

/// How soon a Deployment waiting for a revision in the revision cache is looked at again.
const REVISION_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The policies this Deployment is planned against at another revision than their current one,
/// for their staged rollouts: a selected policy is planned at its current revision if the
/// Deployment carries it already, has nothing running (or is held at admission: its first pods
/// are at stake), or is allowed to move by the policy's rollout; otherwise at the revision the
/// Deployment carries (`Some`, from the revision history), or not at all if it carries none yet
/// (`None`). An invalid policy is not pinned: it refuses the render as it is. `Err` names a
/// revision the cache does not hold.
fn staged_pins(
    ctx: &Context,
    view: &DeploymentView,
    set: &PolicySet,
    selected: &[String],
    carried: &[(String, String)],
) -> Result<Vec<(String, Option<SidecarPolicy>)>, String> {
    let mut pins = Vec::new();
    if view.progress == Progress::Idle || view.held_for().is_some() {
        return Ok(pins);
    }
    for name in selected {
        let Some(current) = set.revision(name) else {
            continue;
        };
        let reach = Reach::of(name, view.namespace());
        let member = reach.member(view.namespace(), view.name());
        let carries = carried.iter().find(|(p, _)| p == name).map(|(_, r)| r.as_str());
        if carries == Some(current)
            || !set.problems(name).is_empty()
            || ctx.rollouts.allows(reach.home(), name, current, &member)
        {
            continue;
        }
        let earlier = match carries {
            None => None,
            Some(hash) => {
                let policy = set
                    .policies()
                    .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
                let at = policy.and_then(|p| rollouts::revision_at(ctx, p, hash));
                let missing = || match cluster::cluster_name(name) {
                    Some(cluster_name) => revisions::cluster_revision_name(cluster_name, hash),
                    None => revisions::revision_name(name, hash),
                };
                Some(at.ok_or_else(missing)?)
            }
        };
        pins.push((name.clone(), earlier));
    }
    Ok(pins)
}

/// Retries with exponential backoff per Deployment; a field conflict waits longer, since it
/// needs a person.
///
/// A held Deployment is retried no later than when its `--max-hold-seconds` run out: it is then
/// released whatever the error.
pub fn error_policy(view: Arc<DeploymentView>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*view);
    let failures = ctx.deployment_failed(key.clone());
    warn!(deployment = %view.name(), namespace = %view.namespace(), category = error.category(), failures, "reconcile failed: {error}");
    let wait = match error {
        Error::FieldConflict { .. } => backoff(failures.max(6)),
        _ => backoff(failures),
    };
    if view.held_for().is_some() {
        let left = ctx.max_hold.saturating_sub(ctx.hold_age(&key));
        return Action::requeue(wait.min(left.max(CACHE_RETRY)));
    }
    Action::requeue(wait)
}

/// A digest of what a plan writes: the apply configuration (record included) and the order.
fn digest(plan: &Plan) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    plan.patch.to_string().hash(&mut hasher);
    plan.init_order.hash(&mut hasher);
    hasher.finish()
}

/// Server-side apply of the plan, then the order check. Returns the resourceVersions the writes
/// produced, and the generation of the last.
async fn write(
    ctx: &Context,
    view: &DeploymentView,
    plan: &Plan,
) -> Result<(Vec<String>, Option<i64>), Error> {
    let (namespace, name) = (view.namespace(), view.name());
    // The answer is read as a view too: only its order, resourceVersion and generation matter.
    let api: Api<DeploymentView> = Api::namespaced(ctx.client.clone(), namespace);
    let stored = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&plan.patch),
        )
        .await
        .map_err(|e| Error::from_deployment_write(namespace, name, e))?;
    ctx.metrics.wrote("apply");
    ctx.events.deployment_written();
    let mut resource_versions: Vec<String> = stored.resource_version().into_iter().collect();
    let mut generation = stored.metadata.generation;
    let have = stored.facts().init_order;
    if have != plan.init_order {
        let reordered = reorder(ctx, &stored, &have, &plan.init_order)
            .await
            // A failed guard here is a spec changed meanwhile, not a field conflict: retry soon.
            .map_err(|source| Error::WriteDeployment {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        resource_versions.extend(reordered.metadata.resource_version);
        generation = reordered.metadata.generation;
    }
    Ok((resource_versions, generation))
}

/// Server-side apply merges list entries and may not keep the order the engine computed when
/// several field managers share `initContainers` (kubernetes/kubernetes#104641: entries only
/// the stored object has keep their place, new ones follow). If the stored order is not the
/// computed one, reorder the stored list with a JSON Patch of `move`s, guarded by a `test` of
/// its generation so that no spec change written in between is lost (not the resourceVersion:
/// kube-controller-manager writes the Deployment's status right after the apply, which would
/// fail the guard for nothing). A move changes no field
/// value, so no field changes owner, and the patch needs no copy of the entries (no read of the
/// whole Deployment). Returns the reordered Deployment.
async fn reorder(
    ctx: &Context,
    stored: &DeploymentView,
    have: &[String],
    want: &[String],
) -> Result<DeploymentView, kube::Error> {
    info!(
        ?have,
        ?want,
        "server-side apply stored the init containers out of order; reordering"
    );
    let patch = reorder_patch(stored.metadata.generation.unwrap_or_default(), have, want);
    let api: Api<DeploymentView> = Api::namespaced(ctx.client.clone(), stored.namespace());
    let reordered = api
        .patch(
            stored.name(),
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch).map_err(kube::Error::SerdeError)?),
        )
        .await?;
    ctx.metrics.wrote("reorder");
    Ok(reordered)
}

/// The JSON Patch that turns the init container order `have` into `want`, if the spec is still at
/// `generation`. Entries `want` does not name keep their relative order after the others.
fn reorder_patch(generation: i64, have: &[String], want: &[String]) -> serde_json::Value {
    const LIST: &str = "/spec/template/spec/initContainers";
    let mut operations = vec![json!({"op": "test", "path": "/metadata/generation", "value": generation})];
    let mut current = have.to_vec();
    let mut next = 0;
    for name in want {
        let Some(at) = current
            .iter()
            .skip(next)
            .position(|c| c == name)
            .map(|i| i + next)
        else {
            continue;
        };
        if at != next {
            let entry = current.remove(at);
            current.insert(next, entry);
            operations.push(
                json!({"op": "move", "from": format!("{LIST}/{at}"), "path": format!("{LIST}/{next}")}),
            );
        }
        next += 1;
    }
    serde_json::Value::Array(operations)
}

fn reference(view: &DeploymentView) -> ObjectReference {
    view.object_ref(&())
}

/// A Normal Event on the Deployment saying what the write changed.
async fn report_change(ctx: &Context, view: &DeploymentView, facts: &DeploymentFacts, plan: &Plan) {
    let before = match &facts.record {
        Ok(Some(record)) => record.clone(),
        _ => InjectionRecord::default(),
    };
    let Some((reason, note)) = describe_change(&before, &plan.record) else {
        info!("record migrated to version {}", sidecar_core::RECORD_VERSION);
        return;
    };
    info!(reason, "{note}");
    let report = Report::new(reference(view), EventType::Normal, reason, "Reconcile", note);
    ctx.events.publish(report).await;
}

/// The Event reason and note for a change from `before` to `after`; `None` when only the record's
/// bookkeeping changed (a record of the first release rewritten), which rolls nothing.
fn describe_change(before: &InjectionRecord, after: &InjectionRecord) -> Option<(&'static str, String)> {
    let (old, new) = (before.injected(), after.injected());
    let names = |record: &InjectionRecord| {
        record
            .policy_names()
            .map(cluster::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = |injected: &sidecar_core::Injected| {
        injected
            .init_containers
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    if before.is_legacy() && old == new && names(before) == names(after) {
        return None;
    }
    Some(if after.is_empty() {
        (
            "SidecarsRemoved",
            format!("removed what policies injected ({})", list(&old)),
        )
    } else if before.is_empty() {
        (
            "SidecarsInjected",
            format!("injected {} from {}", list(&new), names(after)),
        )
    } else {
        (
            "SidecarsUpdated",
            format!("updated to {} from {}", list(&new), names(after)),
        )
    })
}

/// A Warning Event on the Deployment, and one on every policy at fault, each reported once: when
/// `first` (this process has not seen the Deployment before), a refusal an earlier process
/// reported already is not reported again.
async fn report_refusal(ctx: &Context, view: &DeploymentView, refusal: &Refusal, first: bool) {
    let text = refusal
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let reason = refusal.problems.first().map_or("Refused", |p| p.kind.reason());
    let on_deployment = Report::new(
        reference(view),
        EventType::Warning,
        reason,
        "Render",
        format!("not changed: {text}"),
    );
    ctx.events.publish(on_deployment.once(first)).await;
    let mut at_fault: Vec<&str> = refusal
        .problems
        .iter()
        .map(|p| p.policy.as_str())
        .filter(|p| !p.is_empty())
        .collect();
    at_fault.sort_unstable();
    at_fault.dedup();
    for policy in at_fault {
        let own: Vec<String> = refusal
            .problems
            .iter()
            .filter(|p| p.policy == policy)
            .map(ToString::to_string)
            .collect();
        let Some(problem) = refusal.problems.iter().find(|p| p.policy == policy) else {
            continue;
        };
        // A ClusterSidecarPolicy's Events name the Deployment's namespace too.
        let (regarding, deployment) = match cluster::cluster_name(policy) {
            Some(name) => (
                ctx.caches
                    .cluster
                    .as_ref()
                    .and_then(|c| c.policies.get(&ObjectRef::new(name)))
                    .map(|p| p.object_ref(&())),
                format!("{}/{}", view.namespace(), refusal.deployment),
            ),
            None => (
                ctx.caches
                    .policies
                    .get(&ObjectRef::new(policy).within(view.namespace()))
                    .map(|p| p.object_ref(&())),
                refusal.deployment.clone(),
            ),
        };
        let Some(regarding) = regarding else {
            continue;
        };
        let note = format!("Deployment {deployment:?} not changed: {}", own.join("; "));
        let report = Report::new(
            regarding,
            EventType::Warning,
            problem.kind.reason(),
            "Render",
            note,
        );
        ctx.events.publish(report.once(first)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the moves of a reorder patch to `have`, as the API server would.
    fn moved(patch: &serde_json::Value, have: &[&str]) -> Vec<String> {
        let mut list: Vec<String> = have.iter().map(|s| (*s).to_owned()).collect();
        let index = |path: &serde_json::Value| -> usize {
            path.as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        for op in patch.as_array().unwrap().iter().filter(|op| op["op"] == "move") {
            let entry = list.remove(index(&op["from"]));
            list.insert(index(&op["path"]), entry);
        }
        list
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_reorder_is_guarded_moves_only() {
        let cases: [(&[&str], &[&str]); 4] = [
            (&["migrate", "shipper"], &["shipper", "migrate"]),
            (&["a", "b", "c", "d"], &["d", "c", "b", "a"]),
            (&["migrate", "proxy", "agent"], &["proxy", "agent", "migrate"]),
            (&["x", "y"], &["x", "y"]),
        ];
        for (have, want) in cases {
            let patch = reorder_patch(8, &names(have), &names(want));
            assert_eq!(
                patch[0],
                json!({"op": "test", "path": "/metadata/generation", "value": 8})
            );
            assert!(patch.as_array().unwrap()[1..].iter().all(|op| op["op"] == "move"));
            assert_eq!(moved(&patch, have), names(want), "{have:?} -> {want:?}");
        }
        let unchanged = reorder_patch(8, &names(&["x", "y"]), &names(&["x", "y"]));
        assert_eq!(unchanged.as_array().unwrap().len(), 1, "no moves when in order");
    }

    #[test]
    fn entries_the_plan_does_not_name_keep_their_order_after_the_others() {
        let patch = reorder_patch(1, &names(&["m", "a", "n", "b"]), &names(&["b", "a"]));
        assert_eq!(moved(&patch, &["m", "a", "n", "b"]), names(&["b", "a", "m", "n"]));
    }
}
