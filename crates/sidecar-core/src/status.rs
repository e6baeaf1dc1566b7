//! The status of a SidecarPolicy, from what the Deployments of its namespace say of it.
//!
//! Pure: the caller passes the current time and the previous conditions, so that a condition keeps
//! its `lastTransitionTime` while its status stays the same and an unchanged situation produces
//! an identical status (and so no write).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy, SidecarPolicyStatus, conditions};

use crate::apply::is_up_to_date;
use crate::cluster::{self, Exclusions, NamespaceLabels};
use crate::guardrails::Guardrails;
use crate::outcome::{Named, Outcome, State, Summary};
use crate::problem::ProblemKind;
use crate::record::InjectionRecord;
use crate::render::PolicySet;
use crate::rollout::{Counts, Phase, Progress};

/// Reasons of the `Ready` condition beyond the problem kinds' reasons.
pub mod reasons {
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const NO_MATCH: &str = "NoMatchingDeployments";
    pub const PROGRESSING: &str = "Progressing";
    pub const BLOCKED: &str = "BlockedByOtherPolicy";
    /// A write failed because another field manager owns a field the operator would set.
    pub const FIELD_CONFLICT: &str = "FieldConflict";
    /// A write failed and is being retried.
    pub const WRITE_FAILED: &str = "WriteFailed";
    pub const UNSUPPORTED_SERVER: &str = "UnsupportedServer";
    /// `spec.rollout.paused`: Deployments keep the revision they carry.
    pub const ROLLOUT_PAUSED: &str = "RolloutPaused";
    /// A Deployment failed its rollout to the current revision; nothing more moves.
    pub const ROLLOUT_STOPPED: &str = "RolloutStopped";
    /// The `Warnings` condition's reason: the policy's spec has warnings (see `validate`).
    pub const POLICY_WARNINGS: &str = "PolicyWarnings";
    /// The `Warnings` condition's reason when only renders of Deployments it selects warn (an
    /// autoscaler its sidecars skew, an `appContainers` name a Deployment lacks).
    pub const DEPLOYMENT_WARNINGS: &str = "DeploymentWarnings";
    /// The Warning Event on a Deployment whose render's warnings appear or change.
    pub const SIDECAR_WARNINGS: &str = "SidecarWarnings";
}

/// The first Kubernetes minor version with native sidecar containers (beta, on by default).
pub const NATIVE_SIDECARS_MINOR: u32 = 29;

/// Whether a server of this version (`major`, `minor` as `/version` reports them, e.g. `"1"`,
/// `"29+"`) runs native sidecars. `Err` says why not, for the policies' status.
pub fn supports_native_sidecars(major: &str, minor: &str) -> Result<(), String> {
    let digits = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    match (digits(major), digits(minor)) {
        (Some(1), Some(minor)) if minor >= NATIVE_SIDECARS_MINOR => Ok(()),
        (Some(major), _) if major > 1 => Ok(()),
        _ => Err(format!(
            "native sidecar containers need Kubernetes 1.{NATIVE_SIDECARS_MINOR} or newer, but the API server is {major}.{minor}; \
             nothing is written until it is upgraded"
        )),
    }
}

/// The status of every policy on a server without native sidecars: not ready, nothing written.
pub fn unsupported_server_status(
    policy: &SidecarPolicy,
    message: &str,
    previous: Option<&SidecarPolicyStatus>,
    now: &Time,
) -> SidecarPolicyStatus {
    let generation = policy.metadata.generation;
    let list = [
        (conditions::READY, false),
        (conditions::DEGRADED, true),
        (conditions::STALLED, true),
    ]
    .into_iter()
    .map(|(type_, status)| {
        condition(
            type_,
            status,
            reasons::UNSUPPORTED_SERVER,
            message.to_owned(),
            generation,
            previous,
            now,
        )
    })
    .collect();
    SidecarPolicyStatus {
        observed_generation: generation,
        current_revision: previous.and_then(|p| p.current_revision.clone()),
        matched_deployments: previous.map_or(0, |p| p.matched_deployments),
        up_to_date_deployments: previous.map_or(0, |p| p.up_to_date_deployments),
        held_deployments: previous.map_or(0, |p| p.held_deployments),
        conditions: list,
        ..previous.cloned().unwrap_or_default()
    }
}

/// The status of `policy` computed by rendering every Deployment of its namespace. `set` must
/// hold the namespace's policies (including `policy`).
///
/// This is the reference: the controller aggregates recorded outcomes instead
/// ([`crate::outcome::OutcomeIndex::summary`] and [`from_summary`]), and a property test holds the two
/// equal.
pub fn policy_status(
    policy: &SidecarPolicy,
    set: &PolicySet,
    deployments: &[&Deployment],
    previous: Option<&SidecarPolicyStatus>,
    now: &Time,
) -> SidecarPolicyStatus {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let summary = summary_by_rendering(name, set, deployments);
    from_summary(policy, set, &summary, previous, now)
}

/// The status of ClusterSidecarPolicy `policy` computed by rendering every Deployment of every
/// namespace: `namespaces` holds each namespace's labels, policy set (as
/// [`PolicySet::for_namespace`] builds it with `exclusions`) and Deployments.
///
/// This is the reference for what the controller aggregates across namespaces
/// ([`crate::outcome::OutcomeIndex::summary_across`]); its messages name Deployments as
/// `namespace/name`.
pub fn cluster_policy_status(
    policy: &ClusterSidecarPolicy,
    namespaces: &[(&NamespaceLabels, &PolicySet, Vec<&Deployment>)],
    exclusions: &Exclusions,
    guardrails: &Guardrails,
    previous: Option<&SidecarPolicyStatus>,
    now: &Time,
) -> SidecarPolicyStatus {
    let key = cluster::key(policy.metadata.name.as_deref().unwrap_or_default());
    let mut sorted: Vec<&(&NamespaceLabels, &PolicySet, Vec<&Deployment>)> = namespaces.iter().collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut summary = Summary::default();
    let mut matched_namespaces = 0;
    for (labels, set, deployments) in sorted {
        match cluster::selects(policy, labels, exclusions) {
            Ok(false) => continue,
            Ok(true) => matched_namespaces += 1,
            // An invalid namespaceSelector applies everywhere, with its problem (as
            // `PolicySet::for_namespace` has it), but selects no namespace to count.
            Err(_) => {}
        }
        add_by_rendering(&mut summary, &key, set, deployments, &format!("{}/", labels.name));
    }
    let set = PolicySet::for_cluster_policy(policy, guardrails);
    let converted = cluster::in_namespace(policy, "");
    let mut status = from_summary(&converted, &set, &summary, previous, now);
    status.matched_namespaces = Some(matched_namespaces);
    status
}

/// What rendering every one of `deployments` says about policy `name` of `set`.
pub fn summary_by_rendering(name: &str, set: &PolicySet, deployments: &[&Deployment]) -> Summary {
    let mut summary = Summary::default();
    add_by_rendering(&mut summary, name, set, deployments, "");
    summary
}

/// Adds to `summary` what rendering every one of `deployments` says about policy `name` of
/// `set`, naming each Deployment with `prefix` before its name.
fn add_by_rendering(
    summary: &mut Summary,
    name: &str,
    set: &PolicySet,
    deployments: &[&Deployment],
    prefix: &str,
) {
    let revision = set.revision(name).unwrap_or_default();
    let mut sorted: Vec<&Deployment> = deployments.to_vec();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for deployment in sorted {
        let selected: Vec<String> = set
            .matching(deployment)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let carried = InjectionRecord::read(deployment)
            .ok()
            .flatten()
            .map(|record| record.carried())
            .unwrap_or_default();
        let (state, warnings) = match set.render(deployment) {
            Ok(rendered) if is_up_to_date(deployment, &rendered) => (State::Applied, rendered.warnings),
            Ok(rendered) => (State::Pending, rendered.warnings),
            Err(refusal) => (State::Refused(refusal.problems), refusal.warnings),
        };
        let outcome = Outcome {
            selected,
            carried,
            state,
            held: crate::hold::held_for(&deployment.metadata).is_some(),
            progress: Progress::Complete,
            warnings: set.deployment_warnings(&warnings),
        };
        let deployment_name = deployment.metadata.name.as_deref().unwrap_or_default();
        if prefix.is_empty() {
            summary.add(name, revision, deployment_name, &outcome);
        } else {
            summary.add(name, revision, &format!("{prefix}{deployment_name}"), &outcome);
        }
    }
}

/// The status of `policy` (one of `set`'s) from what the Deployments' outcomes say of it.
pub fn from_summary(
    policy: &SidecarPolicy,
    set: &PolicySet,
    summary: &Summary,
    previous: Option<&SidecarPolicyStatus>,
    now: &Time,
) -> SidecarPolicyStatus {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let generation = policy.metadata.generation;
    let (matched, up_to_date) = (summary.matched, summary.up_to_date);

    let own_problems = set.problems(name);
    let invalid = own_problems.first().map(|first| {
        let mut named = Named::default();
        for problem in own_problems {
            named.push_line(problem.field_message());
        }
        (first.kind.reason(), named.text())
    });
    let conflict = if !summary.conflicts.is_empty() {
        Some((ProblemKind::Conflict.reason(), summary.conflicts.text()))
    } else if !summary.field_conflicts.is_empty() {
        Some((reasons::FIELD_CONFLICT, summary.field_conflicts.text()))
    } else {
        None
    };
    let degraded = if !summary.blocked.is_empty() {
        Some((reasons::BLOCKED, summary.blocked.text()))
    } else if !summary.write_failures.is_empty() {
        Some((reasons::WRITE_FAILED, summary.write_failures.text()))
    } else {
        None
    };

    let revision = set.revision(name).unwrap_or_default();
    let (counts, phase) = match &summary.rollout {
        Some((counts, phase)) => (*counts, Some(phase)),
        None => (Counts::default(), None),
    };
    let waiting = match counts.waiting {
        0 => String::new(),
        n => format!(", {n} waiting for their turn"),
    };
    let ready = if let Some((reason, message)) = invalid.as_ref().or(conflict.as_ref()) {
        (false, *reason, message.clone())
    } else if matched == 0 {
        let message = match crate::cluster::cluster_name(name) {
            Some(_) => "the selector matches no Deployment in the namespaces the namespaceSelector selects",
            None => "the selector matches no Deployment in this namespace",
        };
        (true, reasons::NO_MATCH, message.to_owned())
    } else if let Some(Phase::Stopped { deployment, message }) = phase {
        (
            false,
            reasons::ROLLOUT_STOPPED,
            format!(
                "the rollout of revision {revision} stopped: Deployment {deployment:?} failed: {message}; \
                 {up_to_date} of {matched} matched Deployments carry it{waiting}. To go on, change the \
                 policy (a new revision, or a rollback to an earlier one) or set \
                 spec.rollout.acknowledgedRevision: {revision:?}"
            ),
        )
    } else if up_to_date == matched && counts.rolling == 0 {
        (
            true,
            reasons::UP_TO_DATE,
            format!("{matched} of {matched} matched Deployments carry this policy"),
        )
    } else if let Some((reason, message)) = &degraded {
        (false, *reason, message.clone())
    } else if let Some(Phase::Paused) = phase {
        (
            false,
            reasons::ROLLOUT_PAUSED,
            format!(
                "the rollout of revision {revision} is paused (spec.rollout.paused): {up_to_date} of \
                 {matched} matched Deployments carry it{waiting}"
            ),
        )
    } else {
        let rolling = match counts.rolling {
            0 => String::new(),
            n => format!(", {n} rolling"),
        };
        (
            false,
            reasons::PROGRESSING,
            format!("{up_to_date} of {matched} matched Deployments carry this policy{rolling}{waiting}"),
        )
    };
    // kstatus' pair, read from Ready: not ready only for lack of time (or a write being retried)
    // is Reconciling; not ready for any other reason waits on someone's change, which is Stalled.
    let (ready_status, ready_reason, ready_message) = ready;
    let (reconciling, stalled) = match (ready_status, ready_reason) {
        (true, _) => (None, None),
        (false, reasons::PROGRESSING | reasons::WRITE_FAILED) => {
            (Some((ready_reason, ready_message.clone())), None)
        }
        // Paused by intent: neither in progress nor stuck (Argo CD reads it as Suspended).
        (false, reasons::ROLLOUT_PAUSED) => (None, None),
        (false, _) => (None, Some((ready_reason, ready_message.clone()))),
    };
    // What the policy's own spec leaves to chance (no startupProbe, no requests, an unpinned
    // image), then what it leaves to chance in the Deployments it selects (autoscalers its
    // sidecars skew): said in the status, never held against Ready.
    let own = own_warnings(set, name);
    let warnings = match (own, summary.warnings.is_empty()) {
        (None, true) => None,
        (Some(own), true) => Some((reasons::POLICY_WARNINGS, own)),
        (None, false) => Some((reasons::DEPLOYMENT_WARNINGS, summary.warnings.text())),
        (Some(own), false) => Some((
            reasons::POLICY_WARNINGS,
            format!("{own}; {}", summary.warnings.text()),
        )),
    };
    let paused = policy.spec.rollout.as_ref().filter(|r| r.paused).map(|_| {
        (
            reasons::ROLLOUT_PAUSED,
            "spec.rollout.paused: no Deployment moves to a new revision".to_owned(),
        )
    });
    let mut list = vec![condition(
        conditions::READY,
        ready_status,
        ready_reason,
        ready_message,
        generation,
        previous,
        now,
    )];
    for (kind, entry) in [
        (conditions::INVALID, invalid),
        (conditions::CONFLICT, conflict),
        (conditions::DEGRADED, degraded),
        (conditions::PAUSED, paused),
        (conditions::WARNINGS, warnings),
        (conditions::RECONCILING, reconciling),
        (conditions::STALLED, stalled),
    ] {
        if let Some((reason, message)) = entry {
            list.push(condition(kind, true, reason, message, generation, previous, now));
        }
    }

    SidecarPolicyStatus {
        observed_generation: generation,
        matched_namespaces: None,
        current_revision: set.revision(name).map(str::to_owned),
        matched_deployments: matched,
        up_to_date_deployments: up_to_date,
        held_deployments: summary.held,
        progress: Some(format!("{up_to_date}/{matched}")),
        rolling_deployments: saturating_i32(counts.rolling),
        waiting_deployments: saturating_i32(counts.waiting),
        failed_deployments: saturating_i32(counts.failed),
        conditions: list,
    }
}

/// The policy's own warnings as the `Warnings` condition's message starts: `field: message`
/// lines, the first few named. `None` when it has none.
pub fn own_warnings(set: &PolicySet, name: &str) -> Option<String> {
    let own = set.warnings(name);
    (!own.is_empty()).then(|| {
        let mut named = Named::default();
        for warning in own {
            named.push_line(format!("{}: {}", warning.field, warning.message));
        }
        named.text()
    })
}

fn saturating_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&SidecarPolicyStatus>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let earlier = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match earlier {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
