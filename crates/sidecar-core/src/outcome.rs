//! The outcome of each Deployment's last reconcile, indexed by the policies involved, so that a
//! policy's status is an aggregation of recorded outcomes and never re-renders a Deployment.
//!
//! The controller records an [`Outcome`] after every Deployment reconcile. Recording says which
//! policies' status may have changed (those involved before or after, when the outcome differs),
//! and the controller recomputes exactly those: when a second policy starts to conflict with the
//! first one's Deployment, the first one's status changes too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::problem::{Problem, ProblemKind};

/// How the last reconcile of a Deployment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The Deployment carries what its policies ask for: found so, or written.
    Applied,
    /// Planned but not carried yet (a write is on its way, or the caller only looked).
    Pending,
    /// The engine refused the render; the Deployment was left as it was.
    Refused(Vec<Problem>),
    /// The write failed and is retried with backoff. `conflict` when another field manager owns
    /// a field the operator would set (it never forces).
    WriteFailed { conflict: bool, message: String },
    /// A policy of the namespace cannot be decoded, so the Deployment was left as it was.
    Blocked { policy: String, message: String },
}

/// The last reconcile of one Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The policies that select it, in injection order.
    pub selected: Vec<String>,
    /// The policies it carries, with their revisions: its record, or what was just written.
    pub carried: Vec<(String, String)>,
    pub state: State,
}

impl Outcome {
    /// Every policy this outcome says something about.
    fn involved(&self) -> impl Iterator<Item = &str> {
        let problems = match &self.state {
            State::Refused(problems) => &problems[..],
            _ => &[],
        };
        let blocked = match &self.state {
            State::Blocked { policy, .. } => Some(policy.as_str()),
            _ => None,
        };
        self.selected
            .iter()
            .map(String::as_str)
            .chain(self.carried.iter().map(|(name, _)| name.as_str()))
            .chain(
                problems
                    .iter()
                    .map(|p| p.policy.as_str())
                    .filter(|p| !p.is_empty()),
            )
            .chain(blocked)
    }
}

/// One policy's view of the outcomes: the input of its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Deployments it selects.
    pub matched: i32,
    /// Of those, the ones that carry its current revision and are applied.
    pub up_to_date: i32,
    /// Its own conflicts, one line per Deployment: `Deployment "x": field: message`.
    pub conflicts: Vec<String>,
    /// Deployments it selects that something else blocks (another policy, an unreadable one).
    pub blocked: Vec<String>,
    /// Deployments whose write failed because another field manager owns a field.
    pub field_conflicts: Vec<String>,
    /// Deployments whose write failed for another reason (retried).
    pub write_failures: Vec<String>,
}

impl Summary {
    /// Adds what the outcome of Deployment `deployment` says about policy `policy`, whose current
    /// revision is `revision`. Deployments must be added in name order, so that messages name
    /// the same ones every time.
    pub fn add(&mut self, policy: &str, revision: &str, deployment: &str, outcome: &Outcome) {
        if !outcome.selected.iter().any(|p| p == policy) {
            return;
        }
        self.matched += 1;
        match &outcome.state {
            State::Applied => {
                if outcome.carried.iter().any(|(p, r)| p == policy && r == revision) {
                    self.up_to_date += 1;
                }
            }
            State::Pending => {}
            State::Refused(problems) => {
                let own = problems
                    .iter()
                    .find(|p| p.policy == policy && p.kind == ProblemKind::Conflict);
                match own {
                    Some(problem) => self.conflicts.push(format!(
                        "Deployment {deployment:?}: {}",
                        problem.field_message()
                    )),
                    None => {
                        if let Some(other) = problems.iter().find(|p| p.policy != policy) {
                            self.blocked.push(format!("Deployment {deployment:?}: {other}"));
                        }
                    }
                }
            }
            State::WriteFailed { conflict, message } => {
                let line = format!("Deployment {deployment:?}: {message}");
                if *conflict {
                    self.field_conflicts.push(line);
                } else {
                    self.write_failures.push(line);
                }
            }
            State::Blocked { policy: other, message } => self.blocked.push(format!(
                "Deployment {deployment:?}: SidecarPolicy {other:?} cannot be read, so the Deployment is left as it is: {message}"
            )),
        }
    }
}

/// The outcomes of the Deployments of every watched namespace.
#[derive(Debug, Default)]
pub struct OutcomeIndex {
    /// By namespace, then by Deployment name (ordered, for stable messages).
    outcomes: HashMap<String, BTreeMap<String, Outcome>>,
    /// By (namespace, policy): the Deployments whose outcome involves the policy.
    involved: HashMap<(String, String), BTreeSet<String>>,
    /// Deployments that must have an outcome before statuses are worth writing; `None` until the
    /// caller says which (see [`OutcomeIndex::expect`]).
    awaited: Option<HashSet<(String, String)>>,
}

impl OutcomeIndex {
    /// Records the outcome of Deployment `namespace/name`. Returns the policies whose status may
    /// have changed: empty when the outcome is the one recorded before.
    pub fn record(&mut self, namespace: &str, name: &str, outcome: Outcome) -> BTreeSet<String> {
        if let Some(awaited) = &mut self.awaited {
            awaited.remove(&(namespace.to_owned(), name.to_owned()));
        }
        let outcomes = self.outcomes.entry(namespace.to_owned()).or_default();
        if outcomes.get(name) == Some(&outcome) {
            return BTreeSet::new();
        }
        let now: BTreeSet<String> = outcome.involved().map(str::to_owned).collect();
        let before: BTreeSet<String> = outcomes
            .insert(name.to_owned(), outcome)
            .map(|previous| previous.involved().map(str::to_owned).collect())
            .unwrap_or_default();
        for policy in before.difference(&now) {
            self.unlink(namespace, policy, name);
        }
        for policy in &now {
            self.involved
                .entry((namespace.to_owned(), policy.clone()))
                .or_default()
                .insert(name.to_owned());
        }
        before.union(&now).cloned().collect()
    }

    /// Forgets a deleted Deployment. Returns the policies whose status may have changed.
    pub fn forget(&mut self, namespace: &str, name: &str) -> BTreeSet<String> {
        if let Some(awaited) = &mut self.awaited {
            awaited.remove(&(namespace.to_owned(), name.to_owned()));
        }
        let Some(outcomes) = self.outcomes.get_mut(namespace) else {
            return BTreeSet::new();
        };
        let Some(previous) = outcomes.remove(name) else {
            return BTreeSet::new();
        };
        if outcomes.is_empty() {
            self.outcomes.remove(namespace);
        }
        let touched: BTreeSet<String> = previous.involved().map(str::to_owned).collect();
        for policy in &touched {
            self.unlink(namespace, policy, name);
        }
        touched
    }

    /// The outcome recorded for Deployment `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Outcome> {
        self.outcomes.get(namespace)?.get(name)
    }

    /// The Deployments of `namespace` whose outcome involves `policy`, in name order.
    pub fn involving(&self, namespace: &str, policy: &str) -> impl Iterator<Item = &str> {
        self.involved
            .get(&(namespace.to_owned(), policy.to_owned()))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every Deployment of every namespace with a recorded outcome, as (namespace, name).
    pub fn deployments(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |name| (ns.as_str(), name.as_str())))
    }

    /// What the outcomes say about `policy` of `namespace`, whose current revision is `revision`.
    pub fn summary(&self, namespace: &str, policy: &str, revision: &str) -> Summary {
        let mut summary = Summary::default();
        let Some(outcomes) = self.outcomes.get(namespace) else {
            return summary;
        };
        for name in self.involving(namespace, policy) {
            if let Some(outcome) = outcomes.get(name) {
                summary.add(policy, revision, name, outcome);
            }
        }
        summary
    }

    /// The revisions of `policy` that Deployments of `namespace` carry, with how many carry each.
    pub fn carried_revisions(&self, namespace: &str, policy: &str) -> BTreeMap<String, usize> {
        let mut revisions = BTreeMap::new();
        let Some(outcomes) = self.outcomes.get(namespace) else {
            return revisions;
        };
        for name in self.involving(namespace, policy) {
            let carried = outcomes.get(name).into_iter().flat_map(|o| &o.carried);
            for (_, revision) in carried.filter(|(p, _)| p == policy) {
                *revisions.entry(revision.clone()).or_insert(0) += 1;
            }
        }
        revisions
    }

    /// Says which Deployments exist when the controller starts: until each has an outcome (or is
    /// forgotten), [`OutcomeIndex::is_synced`] is false, and statuses computed from a half-filled
    /// index are not written. Only the first call counts.
    pub fn expect<'a>(&mut self, deployments: impl IntoIterator<Item = (&'a str, &'a str)>) {
        if self.awaited.is_some() {
            return;
        }
        let awaited = deployments
            .into_iter()
            .filter(|(ns, name)| self.get(ns, name).is_none())
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
            .collect();
        self.awaited = Some(awaited);
    }

    /// Whether every Deployment that existed at start has an outcome.
    pub fn is_synced(&self) -> bool {
        self.awaited.as_ref().is_some_and(HashSet::is_empty)
    }

    /// How many Deployments that existed at start still have no outcome (`None` before
    /// [`OutcomeIndex::expect`]).
    pub fn awaited(&self) -> Option<usize> {
        self.awaited.as_ref().map(HashSet::len)
    }

    fn unlink(&mut self, namespace: &str, policy: &str, name: &str) {
        let key = (namespace.to_owned(), policy.to_owned());
        if let Some(names) = self.involved.get_mut(&key) {
            names.remove(name);
            if names.is_empty() {
                self.involved.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(selected: &[&str], carried: &[(&str, &str)]) -> Outcome {
        Outcome {
            selected: selected.iter().map(|s| (*s).to_owned()).collect(),
            carried: carried
                .iter()
                .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
                .collect(),
            state: State::Applied,
        }
    }

    fn conflict(policy: &str) -> Problem {
        Problem {
            kind: ProblemKind::Conflict,
            policy: policy.into(),
            field: "spec.sidecars[0].name".into(),
            message: "container name \"agent\" is already used".into(),
        }
    }

    #[test]
    fn recording_reports_the_policies_involved_before_and_after() {
        let mut index = OutcomeIndex::default();
        let first = index.record("ns", "web", applied(&["p1"], &[("p1", "r1")]));
        assert_eq!(first, BTreeSet::from(["p1".to_owned()]));
        assert!(
            index
                .record("ns", "web", applied(&["p1"], &[("p1", "r1")]))
                .is_empty()
        );

        // p2 arrives and conflicts: both statuses change.
        let refused = Outcome {
            selected: vec!["p1".into(), "p2".into()],
            carried: vec![("p1".into(), "r1".into())],
            state: State::Refused(vec![conflict("p2")]),
        };
        let touched = index.record("ns", "web", refused);
        assert_eq!(touched, BTreeSet::from(["p1".to_owned(), "p2".to_owned()]));
        let p1 = index.summary("ns", "p1", "r1");
        assert_eq!((p1.matched, p1.up_to_date), (1, 0));
        assert_eq!(p1.blocked.len(), 1, "{p1:?}");
        assert!(p1.blocked[0].contains("SidecarPolicy \"p2\""), "{p1:?}");
        let p2 = index.summary("ns", "p2", "r9");
        assert_eq!(p2.conflicts.len(), 1);

        // p2 goes away: p2 is no longer involved.
        let touched = index.record("ns", "web", applied(&["p1"], &[("p1", "r1")]));
        assert_eq!(touched, BTreeSet::from(["p1".to_owned(), "p2".to_owned()]));
        assert_eq!(index.involving("ns", "p2").count(), 0);
        assert_eq!(index.summary("ns", "p1", "r1").up_to_date, 1);
        assert_eq!(
            index.summary("ns", "p1", "r2").up_to_date,
            0,
            "an older revision is not up to date"
        );
    }

    #[test]
    fn forgetting_a_deployment_releases_its_policies() {
        let mut index = OutcomeIndex::default();
        index.record("ns", "a", applied(&["p"], &[("p", "r")]));
        index.record("ns", "b", applied(&["p"], &[("p", "old")]));
        assert_eq!(
            index.carried_revisions("ns", "p"),
            BTreeMap::from([("old".to_owned(), 1), ("r".to_owned(), 1)])
        );
        assert_eq!(index.forget("ns", "a"), BTreeSet::from(["p".to_owned()]));
        assert_eq!(index.summary("ns", "p", "r").matched, 1);
        assert!(index.forget("ns", "a").is_empty());
        assert!(index.forget("other", "a").is_empty());
    }

    #[test]
    fn synced_once_every_expected_deployment_has_an_outcome() {
        let mut index = OutcomeIndex::default();
        assert!(!index.is_synced(), "nothing is known before the first list");
        index.expect([("ns", "a"), ("ns", "b")]);
        assert_eq!(index.awaited(), Some(2));
        index.record("ns", "a", applied(&[], &[]));
        assert!(!index.is_synced());
        index.forget("ns", "b");
        assert!(index.is_synced());
        index.expect([("ns", "c")]);
        assert!(index.is_synced(), "only the first list counts");
    }
}
