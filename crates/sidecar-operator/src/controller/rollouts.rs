//! The staged rollouts under way: per policy, the revision being rolled out, the Deployments the
//! planner let move to it, and since when each has been rolling.
//!
//! The policy reconcile plans (`sidecar_core::rollout::plan`) from the outcome index and stores
//! its decision here; a Deployment reconcile asks [`Rollouts::allows`] before rendering a policy
//! at its current revision, and otherwise renders the revision the Deployment carries
//! (`revision_at`). Grants live in memory only: after a restart, Deployments that carry the
//! current revision keep it and the others wait for the first plan, which the policy reconcile
//! makes once every Deployment has an outcome.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use sidecar_api::{REVISION_LABEL, SidecarPolicy};
use sidecar_core::outcome::State;
use sidecar_core::rollout::{self, Decision, Member, Phase, Progress, Settings};
use sidecar_core::{cluster, revision, selector};
use tracing::debug;

use super::context::Context;
use super::revisions::{cluster_revision_name, revision_name};

/// One policy's rollout.
#[derive(Debug, Default)]
struct Rollout {
    /// The revision being rolled out.
    target: String,
    /// The Deployments allowed to move to `target`.
    granted: BTreeSet<String>,
    /// When this process first saw each Deployment rolling at `target`.
    rolling_since: HashMap<String, Instant>,
    /// The last plan stopped on a failure.
    stopped: bool,
}

/// Rollouts by (namespace, policy key); a ClusterSidecarPolicy's by ("", key), see [`Reach`].
#[derive(Debug, Default)]
pub struct Rollouts {
    by_policy: Mutex<HashMap<(String, String), Rollout>>,
}

impl Rollouts {
    /// Whether Deployment `deployment` may move to revision `target` of `namespace/policy`.
    pub fn allows(&self, namespace: &str, policy: &str, target: &str, deployment: &str) -> bool {
        self.lock()
            .get(&(namespace.to_owned(), policy.to_owned()))
            .is_some_and(|r| r.target == target && r.granted.contains(deployment))
    }

    /// The Deployments allowed to move to `target` so far (none when the target changed).
    pub fn granted(&self, namespace: &str, policy: &str, target: &str) -> BTreeSet<String> {
        self.lock()
            .get(&(namespace.to_owned(), policy.to_owned()))
            .filter(|r| r.target == target)
            .map(|r| r.granted.clone())
            .unwrap_or_default()
    }

    /// How long each of `rolling` (Deployments rolling at `target`) has been rolling, counted
    /// from when this process first saw it so; the others are forgotten.
    pub fn rolling_for(
        &self,
        namespace: &str,
        policy: &str,
        target: &str,
        rolling: &[&str],
        now: Instant,
    ) -> HashMap<String, Duration> {
        let mut rollouts = self.lock();
        let rollout = rollouts
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        rollout.retarget(target);
        rollout
            .rolling_since
            .retain(|name, _| rolling.contains(&name.as_str()));
        rolling
            .iter()
            .map(|name| {
                let since = *rollout.rolling_since.entry((*name).to_owned()).or_insert(now);
                ((*name).to_owned(), now.saturating_duration_since(since))
            })
            .collect()
    }

    /// Stores the planner's decision for `target`; returns the Deployments granted now that
    /// were not before (to be reconciled).
    pub fn decided(&self, namespace: &str, policy: &str, target: &str, decision: &Decision) -> Vec<String> {
        let mut rollouts = self.lock();
        let rollout = rollouts
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default();
        rollout.retarget(target);
        let new = decision.granted.difference(&rollout.granted).cloned().collect();
        rollout.granted = decision.granted.clone();
        rollout.stopped = matches!(decision.phase, Phase::Stopped { .. });
        new
    }

    /// How many policies' rollouts are stopped on a failure.
    pub fn stopped(&self) -> usize {
        self.lock().values().filter(|r| r.stopped).count()
    }

    /// Forgets a deleted policy's rollout.
    pub fn forget(&self, namespace: &str, policy: &str) {
        self.lock().remove(&(namespace.to_owned(), policy.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Rollout>> {
        self.by_policy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Rollout {
    /// A new revision starts a new rollout.
    fn retarget(&mut self, target: &str) {
        if self.target != target {
            *self = Rollout {
                target: target.to_owned(),
                ..Rollout::default()
            };
        }
    }
}

/// Where a policy's rollout reaches: the Deployments of its own namespace (a SidecarPolicy), or
/// of every namespace (a ClusterSidecarPolicy). Rollouts are kept by (`home`, key), and their
/// Deployments are named by [`Reach::member`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reach<'a> {
    Namespace(&'a str),
    Cluster,
}

impl<'a> Reach<'a> {
    /// The reach of the policy with engine key `key` seen from a Deployment of `namespace`.
    pub fn of(key: &str, namespace: &'a str) -> Self {
        match cluster::cluster_name(key) {
            Some(_) => Reach::Cluster,
            None => Reach::Namespace(namespace),
        }
    }

    /// The first half of the rollout's key: the namespace, or nothing.
    pub fn home(self) -> &'a str {
        match self {
            Reach::Namespace(namespace) => namespace,
            Reach::Cluster => "",
        }
    }

    /// How the rollout names Deployment `name` of `namespace`: by name within a namespace,
    /// `namespace/name` across namespaces.
    pub fn member(self, namespace: &str, name: &str) -> String {
        match self {
            Reach::Namespace(_) => name.to_owned(),
            Reach::Cluster => format!("{namespace}/{name}"),
        }
    }

    /// The namespace and name of member `member` (see [`Reach::member`]).
    fn deployment<'m>(self, member: &'m str) -> (&'m str, &'m str)
    where
        'a: 'm,
    {
        match self {
            Reach::Namespace(namespace) => (namespace, member),
            Reach::Cluster => member.split_once('/').unwrap_or(("", member)),
        }
    }
}

/// Plans the rollout of `policy`'s current revision `target` from the outcome index, stores the
/// grants, and triggers the Deployments allowed to move now. `policy` is as the engine names it
/// (a ClusterSidecarPolicy by its key).
pub(crate) fn plan(ctx: &Context, policy: &SidecarPolicy, reach: Reach<'_>, target: &str) -> Decision {
    let name = policy.name_any();
    let settings_of = policy.spec.rollout.as_ref();
    let canary = settings_of.and_then(|r| r.canary.as_ref()).map(|c| &c.selector);
    // Owned copies: the index stays locked only while they are taken.
    let matched: Vec<(String, Option<String>, Progress)> = {
        let outcomes = ctx.outcomes();
        let involved: Vec<(&str, &str)> = match reach {
            Reach::Namespace(namespace) => outcomes
                .involving(namespace, &name)
                .map(|d| (namespace, d))
                .collect(),
            Reach::Cluster => outcomes.involving_anywhere(&name).collect(),
        };
        involved
            .into_iter()
            .filter_map(|(namespace, deployment)| {
                let outcome = outcomes.get(namespace, deployment)?;
                // A refused or blocked render cannot move, whatever the rollout allows: it would
                // hold a place in the budget forever. Its status lines say why.
                let stuck = matches!(
                    outcome.state,
                    State::Refused(_) | State::Blocked { .. } | State::WriteFailed { conflict: true, .. }
                );
                (outcome.selected.contains(&name) && !stuck).then(|| {
                    let carries = outcome
                        .carried
                        .iter()
                        .find(|(p, _)| *p == name)
                        .map(|(_, r)| r.clone());
                    (
                        reach.member(namespace, deployment),
                        carries,
                        outcome.progress.clone(),
                    )
                })
            })
            .collect()
    };
    let is_canary = |member: &str| {
        canary.is_some_and(|selector| {
            let (namespace, deployment) = reach.deployment(member);
            ctx.caches
                .deployments
                .get(&ObjectRef::new(deployment).within(namespace))
                .is_some_and(|view| selector::matches(selector, &view.labels).unwrap_or(false))
        })
    };
    let home = reach.home();
    let granted = ctx.rollouts.granted(home, &name, target);
    let rolling: Vec<&str> = matched
        .iter()
        .filter(|(d, carries, progress)| {
            carries.as_deref() == Some(target)
                && (*progress == Progress::Rolling || (granted.contains(d) && *progress == Progress::Idle))
        })
        .map(|(d, _, _)| d.as_str())
        .collect();
    let rolling_for = ctx
        .rollouts
        .rolling_for(home, &name, target, &rolling, Instant::now());
    let members: Vec<Member<'_>> = matched
        .iter()
        .map(|(d, carries, progress)| Member {
            name: d,
            carries: carries.as_deref(),
            progress,
            canary: is_canary(d),
            rolling_for: rolling_for.get(d).copied(),
        })
        .collect();
    let settings = Settings::of(settings_of, members.len(), target);
    let decision = rollout::plan(target, &settings, &members, &granted);
    for member in ctx.rollouts.decided(home, &name, target, &decision) {
        debug!(policy = %name, deployment = %member, revision = target, "may move to the current revision");
        let (namespace, deployment) = reach.deployment(&member);
        ctx.triggers.deployment(namespace, deployment);
    }
    ctx.metrics.set_rollouts_stopped(ctx.rollouts.stopped());
    decision
}

/// `policy` (as the engine names it) as it was at revision `hash`, from its stored
/// ControllerRevision; `None` if the cache does not hold it (yet), or its content does not hash
/// to `hash` (a revision written by a release whose content this one reads differently:
/// rendering it would be a change).
pub fn revision_at(ctx: &Context, policy: &SidecarPolicy, hash: &str) -> Option<SidecarPolicy> {
    let uid = policy.uid()?;
    let key = policy.name_any();
    let (namespace, name) = match cluster::cluster_name(&key) {
        Some(cluster_name) => (
            ctx.revision_namespace.clone(),
            cluster_revision_name(cluster_name, hash),
        ),
        None => (policy.namespace()?, revision_name(&key, hash)),
    };
    let stored = ctx
        .caches
        .revisions
        .get(&ObjectRef::new(&name).within(&namespace))?;
    let owned = stored
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    if !owned || stored.labels().get(REVISION_LABEL).map(String::as_str) != Some(hash) {
        return None;
    }
    let earlier = revision::at(policy, stored.data.0.get("spec")?).ok()?;
    (revision::of(&earlier) == hash).then_some(earlier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_target_starts_a_new_rollout() {
        let rollouts = Rollouts::default();
        let decision = |names: &[&str], phase| Decision {
            granted: names.iter().map(|n| (*n).to_owned()).collect(),
            counts: rollout::Counts::default(),
            phase,
            recheck: None,
        };
        let both = decision(&["a", "b"], Phase::Progressing);
        assert_eq!(rollouts.decided("ns", "p", "r1", &both), ["a", "b"]);
        assert!(rollouts.allows("ns", "p", "r1", "a"));
        assert!(rollouts.decided("ns", "p", "r1", &both).is_empty(), "nothing new");
        assert!(!rollouts.allows("ns", "p", "r2", "a"), "granted for r1 only");
        assert!(rollouts.granted("ns", "p", "r2").is_empty());
        let stopped = Phase::Stopped {
            deployment: "c".into(),
            message: "failed".into(),
        };
        assert_eq!(
            rollouts.decided("ns", "p", "r2", &decision(&["c"], stopped)),
            ["c"]
        );
        assert!(!rollouts.allows("ns", "p", "r1", "a"));
        assert_eq!(rollouts.stopped(), 1);
        rollouts.forget("ns", "p");
        assert!(!rollouts.allows("ns", "p", "r2", "c"));
        assert_eq!(rollouts.stopped(), 0);
    }

    #[test]
    fn rolling_time_counts_from_first_sight() {
        let rollouts = Rollouts::default();
        let start = Instant::now();
        let first = rollouts.rolling_for("ns", "p", "r1", &["a"], start);
        assert_eq!(first["a"], Duration::ZERO);
        let later = start + Duration::from_secs(30);
        let second = rollouts.rolling_for("ns", "p", "r1", &["a", "b"], later);
        assert_eq!(
            (second["a"], second["b"]),
            (Duration::from_secs(30), Duration::ZERO)
        );
        let done = rollouts.rolling_for("ns", "p", "r1", &["b"], later);
        assert!(!done.contains_key("a"));
        let again = rollouts.rolling_for("ns", "p", "r1", &["a"], later + Duration::from_secs(5));
        assert_eq!(
            again["a"],
            Duration::ZERO,
            "a new rollout of a starts its clock again"
        );
    }
}
