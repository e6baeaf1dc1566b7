//! Staged rollout: which of a policy's matched Deployments move to its current revision now.
//!
//! A policy change must not roll every matched Deployment in the same second. Each Deployment's
//! own rollout is the health signal: the planner lets at most `maxConcurrent` of them roll to the
//! current revision at once, canaries first, none while the rollout is paused, and none more once
//! one has failed. Deployments not allowed to move keep the revision they carry (the controller
//! renders them against it).
//!
//! Pure: the caller passes what the Deployments' status says ([`Progress`]), how long each has
//! been rolling, and the Deployments it allowed to move before ("granted").

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sidecar_api::{DEFAULT_MAX_CONCURRENT, Rollout};

/// Where a Deployment's own rollout stands, from its status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Progress {
    /// Nothing runs (no replica wanted or available, or paused by its owner): moving it disturbs
    /// nothing.
    Idle,
    /// Its controller observed its spec, and every replica is updated and available.
    Complete,
    /// A rollout is under way.
    Rolling,
    /// Its controller gave up: `Progressing` is False (`ProgressDeadlineExceeded`). The message.
    Failed(String),
}

/// What [`Progress::of`] reads of a Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentState {
    pub generation: Option<i64>,
    pub paused: bool,
    /// `spec.replicas` (Kubernetes defaults it to 1).
    pub replicas: Option<i32>,
    pub observed_generation: Option<i64>,
    /// `status.replicas`, `updatedReplicas`, `availableReplicas`.
    pub status_replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub available_replicas: Option<i32>,
    /// The `Progressing` condition's status and reason, and its message.
    pub progressing: Option<(String, String, String)>,
}

/// The reason with which the Deployment controller gives up a rollout.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

impl Progress {
    /// The progress of a Deployment in `state`, as `kubectl rollout status` judges it.
    pub fn of(state: &DeploymentState) -> Progress {
        let observed = match (state.observed_generation, state.generation) {
            (Some(observed), Some(generation)) => observed >= generation,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if observed
            && let Some((status, reason, message)) = &state.progressing
            && status == "False"
            && reason == PROGRESS_DEADLINE_EXCEEDED
        {
            return Progress::Failed(message.clone());
        }
        if state.paused {
            // Paused by its owner: a write rolls nothing until it is resumed.
            return Progress::Idle;
        }
        let want = state.replicas.unwrap_or(1);
        if want == 0 {
            return Progress::Idle;
        }
        let complete = observed
            && state.updated_replicas.unwrap_or(0) >= want
            && state.status_replicas.unwrap_or(0) <= state.updated_replicas.unwrap_or(0)
            && state.available_replicas.unwrap_or(0) >= state.updated_replicas.unwrap_or(0);
        if complete {
            Progress::Complete
        } else if state.available_replicas.unwrap_or(0) == 0 {
            Progress::Idle
        } else {
            Progress::Rolling
        }
    }
}

/// A policy's rollout settings, resolved for the number of Deployments it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// At least 1.
    pub max_concurrent: usize,
    pub paused: bool,
    /// Failures at the current revision are acknowledged: they no longer stop the rollout.
    pub acknowledged: bool,
    /// How long a Deployment may roll before it counts as failed (`None`: only its own deadline).
    pub deadline: Option<Duration>,
}

impl Settings {
    /// The settings of `rollout` (absent: the defaults) for `matched` Deployments and the
    /// current revision `target`.
    pub fn of(rollout: Option<&Rollout>, matched: usize, target: &str) -> Settings {
        let default = IntOrString::Int(DEFAULT_MAX_CONCURRENT);
        let max = rollout
            .and_then(|r| r.max_concurrent.as_ref())
            .unwrap_or(&default);
        Settings {
            max_concurrent: resolve(max, matched),
            paused: rollout.is_some_and(|r| r.paused),
            acknowledged: rollout.and_then(|r| r.acknowledged_revision.as_deref()) == Some(target),
            deadline: rollout
                .and_then(|r| r.progress_deadline_seconds)
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
        }
    }
}

/// `maxConcurrent` as a count: an integer, or a percentage of `matched` rounded up; at least 1
/// (the schema rejects anything else; a value from an older schema falls back to the default).
fn resolve(value: &IntOrString, matched: usize) -> usize {
    let count = match value {
        IntOrString::Int(n) => usize::try_from(*n).ok(),
        IntOrString::String(text) => text
            .strip_suffix('%')
            .and_then(|p| p.parse::<usize>().ok())
            .map(|percent| (matched * percent).div_ceil(100)),
    };
    count.unwrap_or(DEFAULT_MAX_CONCURRENT as usize).max(1)
}

/// One matched Deployment, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    /// The revision of the policy it carries; `None` when it does not carry the policy yet.
    pub carries: Option<&'a str>,
    pub progress: &'a Progress,
    /// Selected by the policy's canary selector.
    pub canary: bool,
    /// How long it has been rolling at the current revision, as far as the caller has seen.
    pub rolling_for: Option<Duration>,
}

/// Where a policy's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every matched Deployment carries the current revision and none is rolling.
    Complete,
    /// Deployments are rolling or waiting for their turn.
    Progressing,
    /// `spec.rollout.paused`: nothing moves.
    Paused,
    /// A Deployment failed its rollout to the current revision: nothing moves.
    Stopped { deployment: String, message: String },
}

/// How many matched Deployments are where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Carry the current revision (rolling and failed ones included).
    pub updated: usize,
    /// Allowed to move and not complete yet.
    pub rolling: usize,
    /// Keep an earlier revision (or none) until their turn.
    pub waiting: usize,
    /// Failed their rollout to the current revision.
    pub failed: usize,
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The Deployments allowed to move to the current revision in this rollout, those that
    /// carry it already included; the rest (unless idle) keep what they carry.
    pub granted: BTreeSet<String>,
    pub counts: Counts,
    pub phase: Phase,
    /// When a rolling Deployment's deadline passes, if one has a deadline.
    pub recheck: Option<Duration>,
}

impl Decision {
    /// Whether Deployment `name` may move to the current revision.
    pub fn allows(&self, name: &str) -> bool {
        self.granted.contains(name)
    }
}

/// Decides who moves to revision `target` now. `granted` is the previous decision's (for the same
/// target): a Deployment granted before and not complete yet keeps its place in the budget, even
/// if its status does not show the rollout yet.
pub fn plan(
    target: &str,
    settings: &Settings,
    members: &[Member<'_>],
    granted: &BTreeSet<String>,
) -> Decision {
    let at_target = |m: &Member<'_>| m.carries == Some(target);
    let mut counts = Counts::default();
    let mut next: BTreeSet<String> = BTreeSet::new();
    // Rolling at the target revision, and allowed to move but not there yet.
    let (mut rolling, mut pending) = (0, 0);
    let mut failed: Option<(&str, String)> = None;
    let mut recheck: Option<Duration> = None;
    let mut canaries_done = true;
    for member in members {
        let was_granted = granted.contains(member.name);
        let done = matches!(member.progress, Progress::Complete)
            || (matches!(member.progress, Progress::Idle) && !was_granted);
        if member.canary && !(at_target(member) && done) {
            canaries_done = false;
        }
        if !at_target(member) {
            if was_granted {
                // Allowed before; its write is on its way.
                next.insert(member.name.to_owned());
                pending += 1;
            }
            continue;
        }
        counts.updated += 1;
        if was_granted {
            next.insert(member.name.to_owned());
        }
        if done {
            continue;
        }
        let over = match (settings.deadline, member.rolling_for) {
            (Some(deadline), Some(took)) if took >= deadline => Some(format!(
                "its rollout did not complete within spec.rollout.progressDeadlineSeconds ({}s)",
                deadline.as_secs()
            )),
            (Some(deadline), Some(took)) => {
                let left = deadline - took;
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
                None
            }
            _ => None,
        };
        let failure = match member.progress {
            Progress::Failed(message) => Some(format!("{PROGRESS_DEADLINE_EXCEEDED}: {message}")),
            _ => over,
        };
        match failure {
            Some(message) => {
                counts.failed += 1;
                if !settings.acknowledged && failed.is_none() {
                    failed = Some((member.name, message));
                }
            }
            None if matches!(member.progress, Progress::Rolling) || was_granted => rolling += 1,
            None => {}
        }
    }

    let phase = if let Some((deployment, message)) = failed {
        Phase::Stopped {
            deployment: deployment.to_owned(),
            message,
        }
    } else if settings.paused {
        Phase::Paused
    } else {
        Phase::Progressing
    };
    if phase == Phase::Progressing {
        let budget = settings.max_concurrent.saturating_sub(rolling + pending);
        let mut candidates: Vec<&Member<'_>> = members
            .iter()
            .filter(|m| !at_target(m) && !next.contains(m.name))
            .filter(|m| !matches!(m.progress, Progress::Idle))
            .filter(|m| canaries_done || m.canary)
            .collect();
        // Canaries first, then by name: the same order every time.
        candidates.sort_by_key(|m| (!m.canary, m.name));
        for member in candidates.into_iter().take(budget) {
            next.insert(member.name.to_owned());
            pending += 1;
        }
    } else {
        // Paused or stopped: a grant whose write has not happened is taken back.
        next.retain(|name| members.iter().any(|m| m.name == name && at_target(m)));
        pending = 0;
    }
    counts.rolling = rolling + pending;
    counts.waiting = members.len() - counts.updated - pending;
    let phase = match phase {
        Phase::Progressing
            if counts.updated == members.len() && counts.rolling == 0 && counts.failed == 0 =>
        {
            Phase::Complete
        }
        other => other,
    };
    Decision {
        granted: next,
        counts,
        phase,
        recheck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_the_status_as_kubectl_does() {
        let complete = DeploymentState {
            generation: Some(3),
            replicas: Some(2),
            observed_generation: Some(3),
            status_replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..DeploymentState::default()
        };
        assert_eq!(Progress::of(&complete), Progress::Complete);
        let unobserved = DeploymentState {
            generation: Some(4),
            ..complete.clone()
        };
        assert_eq!(Progress::of(&unobserved), Progress::Rolling);
        let old_pods_left = DeploymentState {
            status_replicas: Some(3),
            ..complete.clone()
        };
        assert_eq!(Progress::of(&old_pods_left), Progress::Rolling);
        let scaled_to_zero = DeploymentState {
            replicas: Some(0),
            status_replicas: Some(0),
            updated_replicas: Some(0),
            available_replicas: Some(0),
            ..complete.clone()
        };
        assert_eq!(Progress::of(&scaled_to_zero), Progress::Idle);
        let nothing_available = DeploymentState {
            available_replicas: Some(0),
            updated_replicas: Some(1),
            ..complete.clone()
        };
        assert_eq!(Progress::of(&nothing_available), Progress::Idle);
        let new = DeploymentState {
            generation: Some(1),
            ..DeploymentState::default()
        };
        assert_eq!(Progress::of(&new), Progress::Idle);
        let failed = DeploymentState {
            updated_replicas: Some(1),
            progressing: Some((
                "False".into(),
                PROGRESS_DEADLINE_EXCEEDED.into(),
                "ReplicaSet \"web-2\" has timed out progressing.".into(),
            )),
            ..complete
        };
        assert!(matches!(Progress::of(&failed), Progress::Failed(m) if m.contains("timed out")));
    }

    #[test]
    fn max_concurrent_resolves_integers_and_percentages() {
        assert_eq!(resolve(&IntOrString::Int(3), 100), 3);
        assert_eq!(resolve(&IntOrString::String("10%".into()), 95), 10);
        assert_eq!(resolve(&IntOrString::String("1%".into()), 5), 1);
        assert_eq!(resolve(&IntOrString::String("bad".into()), 5), 5);
        assert_eq!(resolve(&IntOrString::Int(0), 5), 1);
        let settings = Settings::of(None, 40, "r2");
        assert_eq!(settings.max_concurrent, DEFAULT_MAX_CONCURRENT as usize);
        assert!(!settings.paused && !settings.acknowledged && settings.deadline.is_none());
    }
}
