//! The outcome of each Deployment's last reconcile, indexed by the policies involved, so that a
//! policy's status is an aggregation of recorded outcomes and never re-renders a Deployment.
//!
//! The controller records an [`Outcome`] after every Deployment reconcile. Recording says which
//! policies' status may have changed (those involved before or after, when the outcome differs),
//! and the controller recomputes exactly those: when a second policy starts to conflict with the
//! first one's Deployment, the first one's status changes too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::problem::{Problem, ProblemKind, Warning};
use crate::rollout::{Counts, Phase, Progress};

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
    /// Still held at admission (created paused until its sidecars are rendered) after this
    /// reconcile: the release is retried, and the Deployment's pods wait.
    pub held: bool,
    /// Where its own rollout stands (a staged policy rollout waits for it).
    pub progress: Progress,
    /// What the render warns of this Deployment (not the policies' own warnings): an
    /// `appContainers` name it lacks, an opt-out value that means nothing, autoscalers the
    /// sidecars skew. Sorted.
    pub warnings: Vec<Warning>,
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

/// Messages name at most this many Deployments, then say how many more.
pub const NAMED: usize = 3;

/// Lines about Deployments: the first few (in Deployment name order), and how many in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub first: Vec<String>,
    pub total: usize,
}

impl Named {
    /// Adds a line (formatted only if it is among the first few).
    fn push(&mut self, line: impl FnOnce() -> String) {
        if self.first.len() < NAMED {
            self.first.push(line());
        }
        self.total += 1;
    }

    /// Adds a line.
    pub fn push_line(&mut self, line: String) {
        self.push(|| line);
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// `a; b; c; and 4 more`.
    pub fn text(&self) -> String {
        let mut text = self.first.join("; ");
        let more = self.total.saturating_sub(self.first.len());
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        text
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
    pub conflicts: Named,
    /// Deployments it selects that something else blocks (another policy, an unreadable one).
    pub blocked: Named,
    /// Deployments whose write failed because another field manager owns a field.
    pub field_conflicts: Named,
    /// Deployments whose write failed for another reason (retried).
    pub write_failures: Named,
    /// Deployments it selects that are still held at admission (their release is retried).
    pub held: i32,
    /// Where the policy's staged rollout stands, when the caller planned it.
    pub rollout: Option<(Counts, Phase)>,
    /// What renders warn of the Deployments it selects, one line per warning:
    /// `Deployment "x": field: message`.
    pub warnings: Named,
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
        self.held += i32::from(outcome.held);
        if outcome.state == State::Applied && carries(outcome, policy, revision) {
            self.up_to_date += 1;
        }
        self.add_problems(policy, deployment, outcome);
        self.add_warnings(policy, deployment, outcome);
    }

    /// Adds the lines about the warnings of a Deployment the policy selects that concern it.
    fn add_warnings(&mut self, policy: &str, deployment: &str, outcome: &Outcome) {
        for warning in outcome.warnings.iter().filter(|w| concerns(w, policy)) {
            self.warnings.push(|| {
                format!(
                    "Deployment {deployment:?}: {}: {}",
                    warning.field, warning.message
                )
            });
        }
    }

    /// Adds the lines about a Deployment the policy selects that is not simply applied or
    /// pending (see [`is_troubled`]).
    fn add_problems(&mut self, policy: &str, deployment: &str, outcome: &Outcome) {
        match &outcome.state {
            State::Applied | State::Pending => {}
            State::Refused(problems) => {
                let own = problems
                    .iter()
                    .find(|p| p.policy == policy && p.kind == ProblemKind::Conflict);
                match own {
                    Some(problem) => self
                        .conflicts
                        .push(|| format!("Deployment {deployment:?}: {}", problem.field_message())),
                    None => {
                        if let Some(other) = problems.iter().find(|p| p.policy != policy) {
                            self.blocked.push(|| format!("Deployment {deployment:?}: {other}"));
                        }
                    }
                }
            }
            State::WriteFailed { conflict, message } => {
                let line = || format!("Deployment {deployment:?}: {message}");
                if *conflict {
                    self.field_conflicts.push(line);
                } else {
                    self.write_failures.push(line);
                }
            }
            State::Blocked { policy: other, message } => self.blocked.push(|| {
                format!(
                    "Deployment {deployment:?}: {} cannot be read, so the Deployment is left as it is: {message}",
                    crate::cluster::describe(other)
                )
            }),
        }
    }
}

fn carries(outcome: &Outcome, policy: &str, revision: &str) -> bool {
    outcome.carried.iter().any(|(p, r)| p == policy && r == revision)
}

/// Whether `warning` (of a Deployment's render) concerns `policy`: it names it, or it is about
/// the Deployment alone (such as its opt-out annotation) and so concerns every selecting policy.
fn concerns(warning: &Warning, policy: &str) -> bool {
    warning.policy.is_empty() || warning.policy == policy
}

/// Whether an outcome warns of something that concerns `policy`.
fn warns(outcome: &Outcome, policy: &str) -> bool {
    outcome.warnings.iter().any(|w| concerns(w, policy))
}

/// Whether an outcome puts lines in its policies' status (refused, failed, blocked).
fn is_troubled(outcome: &Outcome) -> bool {
    !matches!(outcome.state, State::Applied | State::Pending)
}

/// What the outcomes of a namespace's Deployments add up to for one policy, kept as outcomes are
/// recorded, so that a status costs the number of troubled or warned Deployments, not of matched
/// ones.
#[derive(Debug, Default)]
struct Tally {
    /// Every Deployment whose outcome involves the policy.
    involved: BTreeSet<String>,
    /// Deployments it selects.
    matched: i32,
    /// Selected Deployments still held at admission.
    held: i32,
    /// Selected and applied Deployments, by the policy revision they carry.
    applied: HashMap<String, i32>,
    /// Deployments (any state) by the policy revision they carry.
    carried: BTreeMap<String, usize>,
    /// Selected Deployments that are refused, failed or blocked.
    troubled: BTreeSet<String>,
    /// Selected Deployments whose render warns of something that concerns the policy.
    warned: BTreeSet<String>,
}

impl Tally {
    /// Adds (`sign` 1) or removes (`sign` -1) the contribution of `deployment`'s `outcome`.
    fn count(&mut self, policy: &str, deployment: &str, outcome: &Outcome, sign: i32) {
        let selected = outcome.selected.iter().any(|p| p == policy);
        if selected {
            self.matched += sign;
            if outcome.held {
                self.held += sign;
            }
            if outcome.state == State::Applied {
                for (_, revision) in outcome.carried.iter().filter(|(p, _)| p == policy) {
                    *self.applied.entry(revision.clone()).or_insert(0) += sign;
                }
            }
            for (set, holds) in [
                (&mut self.troubled, is_troubled(outcome)),
                (&mut self.warned, warns(outcome, policy)),
            ] {
                if !holds {
                    continue;
                }
                if sign > 0 {
                    set.insert(deployment.to_owned());
                } else {
                    set.remove(deployment);
                }
            }
        }
        for (_, revision) in outcome.carried.iter().filter(|(p, _)| p == policy) {
            let count = self.carried.entry(revision.clone()).or_insert(0);
            if sign > 0 {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
            }
        }
        self.applied.retain(|_, n| *n != 0);
        self.carried.retain(|_, n| *n != 0);
    }
}

/// The outcomes of the Deployments of every watched namespace.
#[derive(Debug, Default)]
pub struct OutcomeIndex {
    /// By namespace, then by Deployment name.
    outcomes: HashMap<String, HashMap<String, Outcome>>,
    /// By (namespace, policy).
    tallies: HashMap<(String, String), Tally>,
    /// Deployments that must have an outcome before statuses are worth writing; `None` until the
    /// caller says which (see [`OutcomeIndex::expect`]).
    awaited: Option<HashSet<(String, String)>>,
    /// Deployments whose last outcome says they are still held, in every namespace.
    held: usize,
}

impl OutcomeIndex {
    /// Records the outcome of Deployment `namespace/name`. Returns the policies whose status may
    /// have changed: empty when the outcome is the one recorded before.
    pub fn record(&mut self, namespace: &str, name: &str, outcome: Outcome) -> BTreeSet<String> {
        if let Some(awaited) = &mut self.awaited {
            awaited.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if self.get(namespace, name) == Some(&outcome) {
            return BTreeSet::new();
        }
        let previous = self.forget_quietly(namespace, name);
        self.held += usize::from(outcome.held);
        let mut touched: BTreeSet<String> = involved(&outcome).collect();
        for policy in &touched {
            let tally = self.tally(namespace, policy);
            tally.involved.insert(name.to_owned());
            tally.count(policy, name, &outcome, 1);
        }
        touched.extend(previous);
        self.outcomes
            .entry(namespace.to_owned())
            .or_default()
            .insert(name.to_owned(), outcome);
        touched
    }

    /// Forgets a deleted Deployment. Returns the policies whose status may have changed.
    pub fn forget(&mut self, namespace: &str, name: &str) -> BTreeSet<String> {
        if let Some(awaited) = &mut self.awaited {
            awaited.remove(&(namespace.to_owned(), name.to_owned()));
        }
        self.forget_quietly(namespace, name)
    }

    /// Removes a Deployment's outcome and its contribution; returns the policies it involved.
    fn forget_quietly(&mut self, namespace: &str, name: &str) -> BTreeSet<String> {
        let Some(outcomes) = self.outcomes.get_mut(namespace) else {
            return BTreeSet::new();
        };
        let Some(previous) = outcomes.remove(name) else {
            return BTreeSet::new();
        };
        if outcomes.is_empty() {
            self.outcomes.remove(namespace);
        }
        self.held = self.held.saturating_sub(usize::from(previous.held));
        let touched: BTreeSet<String> = involved(&previous).collect();
        for policy in &touched {
            let key = (namespace.to_owned(), policy.clone());
            if let Some(tally) = self.tallies.get_mut(&key) {
                tally.count(policy, name, &previous, -1);
                tally.involved.remove(name);
                if tally.involved.is_empty() {
                    self.tallies.remove(&key);
                }
            }
        }
        touched
    }

    fn tally(&mut self, namespace: &str, policy: &str) -> &mut Tally {
        self.tallies
            .entry((namespace.to_owned(), policy.to_owned()))
            .or_default()
    }

    /// The outcome recorded for Deployment `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Outcome> {
        self.outcomes.get(namespace)?.get(name)
    }

    /// The Deployments of `namespace` whose outcome involves `policy`, in name order.
    pub fn involving(&self, namespace: &str, policy: &str) -> impl Iterator<Item = &str> {
        self.tallies
            .get(&(namespace.to_owned(), policy.to_owned()))
            .into_iter()
            .flat_map(|t| &t.involved)
            .map(String::as_str)
    }

    /// Every Deployment, as (namespace, name), whose outcome involves `policy` in any namespace
    /// (a ClusterSidecarPolicy's key).
    pub fn involving_anywhere<'a>(&'a self, policy: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.tallies
            .iter()
            .filter(move |((_, p), _)| p == policy)
            .flat_map(|((ns, _), tally)| {
                tally
                    .involved
                    .iter()
                    .map(move |name| (ns.as_str(), name.as_str()))
            })
    }

    /// What the outcomes in every namespace say about `policy` (a ClusterSidecarPolicy's key),
    /// whose current revision is `revision`; lines name Deployments as `namespace/name`.
    pub fn summary_across(&self, policy: &str, revision: &str) -> Summary {
        let mut namespaces: Vec<&str> = self
            .tallies
            .keys()
            .filter(|(_, p)| p == policy)
            .map(|(ns, _)| ns.as_str())
            .collect();
        namespaces.sort_unstable();
        let mut summary = Summary::default();
        for namespace in namespaces {
            let Some(tally) = self.tallies.get(&(namespace.to_owned(), policy.to_owned())) else {
                continue;
            };
            summary.matched += tally.matched;
            summary.held += tally.held;
            summary.up_to_date += tally.applied.get(revision).copied().unwrap_or(0);
            for name in &tally.troubled {
                if let Some(outcome) = self.get(namespace, name) {
                    summary.add_problems(policy, &format!("{namespace}/{name}"), outcome);
                }
            }
            for name in &tally.warned {
                if let Some(outcome) = self.get(namespace, name) {
                    summary.add_warnings(policy, &format!("{namespace}/{name}"), outcome);
                }
            }
        }
        summary
    }

    /// Every Deployment of every namespace with a recorded outcome, as (namespace, name).
    pub fn deployments(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |name| (ns.as_str(), name.as_str())))
    }

    /// What the outcomes say about `policy` of `namespace`, whose current revision is `revision`.
    /// It costs the number of Deployments in trouble or warned of, not of those matched.
    pub fn summary(&self, namespace: &str, policy: &str, revision: &str) -> Summary {
        let Some(tally) = self.tallies.get(&(namespace.to_owned(), policy.to_owned())) else {
            return Summary::default();
        };
        let mut summary = Summary {
            matched: tally.matched,
            held: tally.held,
            up_to_date: tally.applied.get(revision).copied().unwrap_or(0),
            ..Summary::default()
        };
        for name in &tally.troubled {
            if let Some(outcome) = self.get(namespace, name) {
                summary.add_problems(policy, name, outcome);
            }
        }
        for name in &tally.warned {
            if let Some(outcome) = self.get(namespace, name) {
                summary.add_warnings(policy, name, outcome);
            }
        }
        summary
    }

    /// How many Deployments are still held at admission, in every namespace.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The revisions of `policy` that Deployments of `namespace` carry, with how many carry each.
    pub fn carried_revisions(&self, namespace: &str, policy: &str) -> BTreeMap<String, usize> {
        self.tallies
            .get(&(namespace.to_owned(), policy.to_owned()))
            .map(|t| t.carried.clone())
            .unwrap_or_default()
    }

    /// The revisions of `policy` (a ClusterSidecarPolicy's key) that Deployments carry, in any
    /// namespace, with how many carry each.
    pub fn carried_revisions_across(&self, policy: &str) -> BTreeMap<String, usize> {
        let mut carried: BTreeMap<String, usize> = BTreeMap::new();
        for ((_, p), tally) in &self.tallies {
            if p == policy {
                for (revision, n) in &tally.carried {
                    *carried.entry(revision.clone()).or_insert(0) += n;
                }
            }
        }
        carried
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
}

/// Every policy an outcome says something about, once each.
fn involved(outcome: &Outcome) -> impl Iterator<Item = String> {
    outcome
        .involved()
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
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
            held: false,
            progress: Progress::Complete,
            warnings: Vec::new(),
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
    fn a_cluster_policy_is_summed_across_namespaces_and_names_namespace_and_deployment() {
        let key = "ClusterSidecarPolicy/mesh";
        let mut index = OutcomeIndex::default();
        index.record("a", "web", applied(&[key], &[(key, "r1")]));
        index.record("b", "web", applied(&[key], &[(key, "r0")]));
        index.record(
            "b",
            "api",
            Outcome {
                state: State::Refused(vec![conflict(key)]),
                ..applied(&[key], &[])
            },
        );
        index.record("b", "other", applied(&["p1"], &[("p1", "r1")]));
        let summary = index.summary_across(key, "r1");
        assert_eq!((summary.matched, summary.up_to_date), (3, 1));
        assert_eq!(summary.conflicts.first.len(), 1);
        assert!(
            summary.conflicts.first[0].starts_with("Deployment \"b/api\""),
            "{summary:?}"
        );
        let mut involved: Vec<_> = index.involving_anywhere(key).collect();
        involved.sort_unstable();
        assert_eq!(involved, [("a", "web"), ("b", "api"), ("b", "web")]);
    }

    #[test]
    fn held_deployments_are_counted_per_policy_and_in_all() {
        let mut index = OutcomeIndex::default();
        let held = Outcome {
            held: true,
            ..applied(&["p1", "p2"], &[("p1", "r1")])
        };
        index.record("ns", "web", held.clone());
        index.record("ns", "api", applied(&["p1"], &[("p1", "r1")]));
        index.record("other", "web", held);
        assert_eq!(index.held(), 2);
        assert_eq!(index.summary("ns", "p1", "r1").held, 1);
        assert_eq!(index.summary("ns", "p2", "r1").held, 1);
        // Released: the next outcome says so.
        index.record("ns", "web", applied(&["p1", "p2"], &[("p1", "r1")]));
        assert_eq!(index.summary("ns", "p1", "r1").held, 0);
        assert_eq!(index.held(), 1);
        index.forget("other", "web");
        assert_eq!(index.held(), 0);
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
            held: false,
            progress: Progress::Complete,
            warnings: Vec::new(),
        };
        let touched = index.record("ns", "web", refused);
        assert_eq!(touched, BTreeSet::from(["p1".to_owned(), "p2".to_owned()]));
        let p1 = index.summary("ns", "p1", "r1");
        assert_eq!((p1.matched, p1.up_to_date), (1, 0));
        assert_eq!(p1.blocked.total, 1, "{p1:?}");
        assert!(p1.blocked.first[0].contains("SidecarPolicy \"p2\""), "{p1:?}");
        let p2 = index.summary("ns", "p2", "r9");
        assert_eq!(p2.conflicts.total, 1);

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
    fn a_summary_names_the_first_few_and_counts_the_rest() {
        let mut index = OutcomeIndex::default();
        for i in 0..5 {
            let refused = Outcome {
                selected: vec!["p".into()],
                carried: vec![],
                state: State::Refused(vec![conflict("p")]),
                held: false,
                progress: Progress::Complete,
                warnings: Vec::new(),
            };
            index.record("ns", &format!("d{i}"), refused);
        }
        index.record("ns", "ok", applied(&["p"], &[("p", "r")]));
        let summary = index.summary("ns", "p", "r");
        assert_eq!((summary.matched, summary.up_to_date), (6, 1));
        assert_eq!(summary.conflicts.total, 5);
        assert_eq!(summary.conflicts.first.len(), NAMED);
        assert!(summary.conflicts.first[0].starts_with("Deployment \"d0\""));
        assert!(
            summary.conflicts.text().ends_with("; and 2 more"),
            "{}",
            summary.conflicts.text()
        );
        // A Deployment that recovers leaves the tally.
        index.record("ns", "d0", applied(&["p"], &[("p", "r")]));
        let summary = index.summary("ns", "p", "r");
        assert_eq!((summary.up_to_date, summary.conflicts.total), (2, 4));
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
