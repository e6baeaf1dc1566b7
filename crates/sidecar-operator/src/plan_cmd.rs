//! `sidecar-operator plan`: what a policy change would do to the cluster's Deployments, before it
//! is merged. Read-only.
//!
//! [`plan`] is a pure function of the cluster's state (read by [`crate::cluster_state`]) and the
//! change; it renders every Deployment twice with the engine, with the current policies and with
//! the planned ones, and compares. The live Deployment is compared with the current render only
//! to say that it is *pending* (the operator has not applied the current policies yet, or a
//! staged rollout holds it back), so that this is never blamed on the change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::autoscaling::Autoscalers;
use sidecar_core::cluster::{self, Exclusions};
use sidecar_core::{Guardrails, InjectionRecord, PolicySet, Problem, Rendered, contains, is_up_to_date};
use similar::TextDiff;

use crate::cluster_state::{ClusterState, FetchError, Unreadable};
use crate::input::{self, Document, InputError, Parsed, Sources};

/// The change to plan: policies added or replaced, and policies deleted.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// SidecarPolicies, each with its namespace set; one of the same namespace and name in the
    /// cluster is replaced.
    pub policies: Vec<SidecarPolicy>,
    pub cluster_policies: Vec<ClusterSidecarPolicy>,
    pub deleted_policies: Vec<PolicyName>,
    pub deleted_cluster_policies: Vec<String>,
}

/// A SidecarPolicy named on the command line: `NAME` (in the default namespace) or
/// `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyName {
    pub namespace: Option<String>,
    pub name: String,
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected NAME or NAMESPACE/NAME, e.g. `log-shipper` or `demo/log-shipper`";
        let parts: Vec<&str> = text.split('/').collect();
        let (namespace, name) = match parts[..] {
            [name] => (None, name),
            [namespace, name] => (Some(namespace), name),
            _ => return Err(format!("{text:?} has more than one `/`: {usage}")),
        };
        if let Some(namespace) = namespace {
            object_name(namespace).map_err(|e| format!("namespace {namespace:?} {e}: {usage}"))?;
        }
        object_name(name).map_err(|e| format!("name {name:?} {e}: {usage}"))?;
        Ok(PolicyName {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        })
    }
}

/// `--delete-cluster-policy NAME`: a ClusterSidecarPolicy name (no namespace).
pub fn parse_cluster_policy_name(text: &str) -> Result<String, String> {
    if text.contains('/') {
        return Err(format!(
            "{text:?}: a ClusterSidecarPolicy has no namespace; give its NAME only"
        ));
    }
    object_name(text).map_err(|e| format!("name {text:?} {e}"))?;
    Ok(text.to_owned())
}

/// Checks a DNS-1123 subdomain, the names Kubernetes gives these objects.
fn object_name(text: &str) -> Result<(), &'static str> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if text.is_empty() {
        Err("is empty")
    } else if text.len() > 253 {
        Err("is longer than 253 characters")
    } else if !text.chars().all(valid_char)
        || !alphanumeric(text.chars().next())
        || !alphanumeric(text.chars().last())
    {
        Err("is not a valid object name (lower-case letters, digits, `-` and `.`)")
    } else {
        Ok(())
    }
}

/// How the operator decides, as its flags say.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub guardrails: Guardrails,
    pub exclusions: Exclusions,
    /// Only this namespace's Deployments; all when `None`.
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0} holds no SidecarPolicy or ClusterSidecarPolicy")]
    NoPolicyIn(input::SourceName),
    #[error("{what} is both given (in {at}) and deleted; give it once")]
    GivenAndDeleted {
        what: String,
        at: Box<input::DocumentRef>,
    },
    // Boxed: a kube error would make every PlanError this large.
    #[error(transparent)]
    Fetch(Box<FetchError>),
    #[error("cannot write Deployment {name} as YAML for the diff: {source}")]
    Output {
        name: String,
        #[source]
        source: serde_norway::Error,
    },
}

impl From<FetchError> for PlanError {
    fn from(error: FetchError) -> Self {
        PlanError::Fetch(Box::new(error))
    }
}

/// The `--policy` files as read, before namespaces are filled in (which needs the cluster's
/// default namespace).
#[derive(Debug, Default)]
pub struct PolicyFiles {
    policies: Vec<Parsed<SidecarPolicy>>,
    cluster_policies: Vec<Parsed<ClusterSidecarPolicy>>,
    pub notes: Vec<String>,
}

/// Reads the `--policy` files (`-` is standard input). Each must hold a policy; Deployments,
/// Namespaces and other kinds are set aside with a note.
pub fn read_policy_files(paths: &[PathBuf], stdin: impl Read) -> Result<PolicyFiles, PlanError> {
    let mut sources = Sources::new(stdin);
    let mut files = PolicyFiles::default();
    for path in paths {
        let (name, text) = sources.read(path)?;
        let split = input::split(&name, &text)?;
        let before = files.policies.len() + files.cluster_policies.len();
        let mut ignored: Vec<String> = split.ignored.iter().map(|i| i.kind.clone()).collect();
        for document in split.documents {
            let at = document.at;
            match document.object {
                Document::SidecarPolicy(p) => files.policies.push(Parsed { at, object: *p }),
                Document::ClusterSidecarPolicy(p) => files.cluster_policies.push(Parsed { at, object: *p }),
                Document::Deployment(_) => ignored.push("apps/v1 Deployment".to_owned()),
                Document::Namespace(_) => ignored.push("v1 Namespace".to_owned()),
                Document::HorizontalPodAutoscaler(_) => {
                    ignored.push("autoscaling/v2 HorizontalPodAutoscaler".to_owned())
                }
                Document::VerticalPodAutoscaler(_) => {
                    ignored.push("autoscaling.k8s.io/v1 VerticalPodAutoscaler".to_owned())
                }
            }
        }
        if files.policies.len() + files.cluster_policies.len() == before {
            return Err(PlanError::NoPolicyIn(name));
        }
        if !ignored.is_empty() {
            files.notes.push(format!(
                "{name}: ignored {} document{} that {} not a policy ({}): plan reads the cluster's Deployments, Namespaces and autoscalers",
                ignored.len(),
                if ignored.len() == 1 { "" } else { "s" },
                if ignored.len() == 1 { "is" } else { "are" },
                ignored.join(", ")
            ));
        }
    }
    Ok(files)
}

impl PolicyFiles {
    /// The change: documents and deletions without a namespace are in `namespace`.
    pub fn changes(
        self,
        namespace: &str,
        deleted_policies: &[PolicyName],
        deleted_cluster_policies: &[String],
    ) -> Result<Changes, PlanError> {
        let PolicyFiles {
            mut policies,
            cluster_policies,
            notes: _,
        } = self;
        for policy in &mut policies {
            input::place(&mut policy.object.metadata, namespace);
        }
        input::check_unique_policies(&policies)?;
        input::check_unique_cluster_policies(&cluster_policies)?;
        let deleted_policies: Vec<PolicyName> = deleted_policies
            .iter()
            .map(|p| PolicyName {
                namespace: Some(p.namespace.clone().unwrap_or_else(|| namespace.to_owned())),
                name: p.name.clone(),
            })
            .collect();
        for policy in &policies {
            let (ns, name) = key_of(&policy.object);
            if deleted_policies
                .iter()
                .any(|d| d.namespace.as_deref() == Some(ns) && d.name == name)
            {
                return Err(PlanError::GivenAndDeleted {
                    what: format!("SidecarPolicy {ns}/{name}"),
                    at: Box::new(policy.at.clone()),
                });
            }
        }
        for policy in &cluster_policies {
            let name = policy.object.metadata.name.as_deref().unwrap_or_default();
            if deleted_cluster_policies.iter().any(|d| d == name) {
                return Err(PlanError::GivenAndDeleted {
                    what: format!("ClusterSidecarPolicy {name}"),
                    at: Box::new(policy.at.clone()),
                });
            }
        }
        Ok(Changes {
            policies: policies.into_iter().map(|p| p.object).collect(),
            cluster_policies: cluster_policies.into_iter().map(|p| p.object).collect(),
            deleted_policies,
            deleted_cluster_policies: deleted_cluster_policies.to_vec(),
        })
    }
}

fn key_of(policy: &SidecarPolicy) -> (&str, &str) {
    (
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// What the change does to each Deployment.
#[derive(Debug, Default)]
pub struct PlanReport {
    /// The Deployments that change, are refused, blocked or pending, by namespace and name.
    pub entries: Vec<Entry>,
    /// How many Deployments the change leaves as they are (and that are not pending).
    pub unchanged: usize,
    /// New warnings of the planned policies.
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct Entry {
    pub namespace: String,
    pub name: String,
    pub verdict: Verdict,
    /// The live Deployment is not what the current policies render: the operator has not applied
    /// them yet, or a staged rollout holds it back.
    pub pending: bool,
}

#[derive(Debug)]
pub enum Verdict {
    Unchanged,
    /// The operator would write it.
    Change(Box<Change>),
    /// The planned policies refuse it (and the current ones do not, or for other reasons).
    Refused(Vec<Problem>),
    /// Refused by the current policies for the same reasons: the change does not cause it.
    StillRefused(Vec<Problem>),
    /// A policy that may affect it cannot be read; the operator leaves it as it is.
    Blocked {
        policy: String,
        error: String,
    },
}

#[derive(Debug)]
pub struct Change {
    /// `adds proxy`, `updates agent`, ... (without what `lost` says).
    pub parts: Vec<String>,
    /// Policies it carries now and would no longer carry, with the init containers they added.
    pub lost: Vec<(String, Vec<String>)>,
    /// The Deployment it is compared with: the current render, or the live object when the
    /// current policies refuse it or are blocked.
    pub before: Deployment,
    pub before_is_live: bool,
    /// What the operator would make of it.
    pub after: Rendered,
}

impl PlanReport {
    fn count(&self, matches: impl Fn(&Verdict) -> bool) -> usize {
        self.entries.iter().filter(|e| matches(&e.verdict)).count()
    }

    /// How many Deployments the change makes refused: a CI pipeline fails on these.
    pub fn refused(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Refused(_)))
    }

    pub fn changed(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Change(_)))
    }

    pub fn pending(&self) -> usize {
        self.entries.iter().filter(|e| e.pending).count()
    }

    /// The entry of Deployment `namespace/name`, if it is not simply unchanged.
    pub fn entry(&self, namespace: &str, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.namespace == namespace && e.name == name)
    }

    /// `12 change, 1 refused, 287 unchanged`, with the other counts when there are any.
    pub fn summary(&self) -> String {
        let unchanged = self.unchanged + self.count(|v| matches!(v, Verdict::Unchanged));
        let mut text = format!(
            "{} change, {} refused, {unchanged} unchanged",
            self.changed(),
            self.refused()
        );
        let still = self.count(|v| matches!(v, Verdict::StillRefused(_)));
        if still > 0 {
            let _ = write!(text, ", {still} still refused");
        }
        let blocked = self.count(|v| matches!(v, Verdict::Blocked { .. }));
        if blocked > 0 {
            let _ = write!(text, ", {blocked} blocked");
        }
        if self.pending() > 0 {
            let _ = write!(text, "; {} pending", self.pending());
        }
        text
    }

    /// What `plan` prints on standard output: a line per Deployment, with `diff` a unified diff
    /// per changed one, and the summary.
    pub fn text(&self, diff: bool) -> Result<String, PlanError> {
        let mut out = String::new();
        for entry in &self.entries {
            let id = format!("{}/{}", entry.namespace, entry.name);
            if entry.pending {
                let _ = writeln!(
                    out,
                    "{id}: pending (the live Deployment is not what the current policies render: the operator has not applied them yet, or a staged rollout holds it back)"
                );
            }
            match &entry.verdict {
                Verdict::Unchanged => {}
                Verdict::Change(change) => {
                    let mut parts = Vec::new();
                    if !change.parts.is_empty() {
                        parts.push(format!("change ({})", change.parts.join("; ")));
                    }
                    for (policy, containers) in &change.lost {
                        let mut text = format!("loses {}", cluster::describe(policy));
                        if !containers.is_empty() {
                            let _ = write!(text, " ({})", containers.join(", "));
                        }
                        parts.push(text);
                    }
                    let _ = writeln!(out, "{id}: {}", parts.join("; "));
                }
                Verdict::Refused(problems) => {
                    let _ = writeln!(out, "{id}: refused: {}", join(problems));
                }
                Verdict::StillRefused(problems) => {
                    let _ = writeln!(out, "{id}: still refused, as now: {}", join(problems));
                }
                Verdict::Blocked { policy, error } => {
                    let _ = writeln!(
                        out,
                        "{id}: blocked: {} cannot be read ({error}); the operator leaves the Deployment as it is",
                        cluster::describe(policy)
                    );
                }
            }
        }
        if diff {
            for entry in &self.entries {
                if let Verdict::Change(change) = &entry.verdict {
                    out.push_str(&unified_diff(entry, change)?);
                }
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        Ok(out)
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn unified_diff(entry: &Entry, change: &Change) -> Result<String, PlanError> {
    let id = format!("{}/{}", entry.namespace, entry.name);
    let yaml = |d: &Deployment| {
        serde_norway::to_string(d).map_err(|source| PlanError::Output {
            name: id.clone(),
            source,
        })
    };
    let before = yaml(&change.before)?;
    let after = yaml(&change.after.deployment)?;
    let from = if change.before_is_live {
        format!("{id} (live)")
    } else {
        format!("{id} (current policies)")
    };
    Ok(TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header(&from, &format!("{id} (planned policies)"))
        .to_string())
}

/// What the engine makes of one Deployment with one set of policies.
enum Outcome<'a> {
    Blocked(&'a Unreadable),
    Refused(Vec<Problem>, Vec<String>),
    Rendered(Box<Rendered>),
}

impl Outcome<'_> {
    fn warnings(&self) -> Vec<String> {
        match self {
            Outcome::Blocked(_) => Vec::new(),
            Outcome::Refused(_, warnings) => warnings.clone(),
            Outcome::Rendered(r) => r.warnings.iter().map(ToString::to_string).collect(),
        }
    }
}

/// One side of the comparison: the policies of a namespace, and those that cannot be read.
struct Side<'a> {
    set: PolicySet,
    unreadable: Option<&'a Unreadable>,
}

impl<'a> Side<'a> {
    fn new(
        namespace: &str,
        state: &ClusterState,
        policies: &[SidecarPolicy],
        cluster_policies: &[ClusterSidecarPolicy],
        unreadable: &'a [Unreadable],
        options: &Options,
    ) -> Self {
        let labels = state.namespace(namespace);
        // As the operator: a namespace's own unreadable policies, and every unreadable
        // ClusterSidecarPolicy unless the namespace is excluded, block its Deployments.
        let unreadable = unreadable.iter().find(|u| match &u.namespace {
            Some(ns) => ns == namespace,
            None => !options.exclusions.contains(namespace),
        });
        Side {
            set: PolicySet::for_namespace(
                &labels,
                policies,
                cluster_policies,
                &options.exclusions,
                &options.guardrails,
            ),
            unreadable,
        }
    }

    /// The render of `deployment`, whose autoscalers are `autoscalers` (for their warnings).
    fn outcome(&self, deployment: &Deployment, autoscalers: &Autoscalers) -> Outcome<'a> {
        if let Some(unreadable) = self.unreadable {
            return Outcome::Blocked(unreadable);
        }
        match self.set.render_with_autoscalers(deployment, autoscalers) {
            Ok(rendered) => Outcome::Rendered(Box::new(rendered)),
            Err(refusal) => Outcome::Refused(
                refusal.problems,
                refusal.warnings.iter().map(ToString::to_string).collect(),
            ),
        }
    }
}

/// The cluster's policies with `changes` made, and notes on deletions of nothing.
struct Planned {
    policies: Vec<SidecarPolicy>,
    cluster_policies: Vec<ClusterSidecarPolicy>,
    unreadable: Vec<Unreadable>,
    notes: Vec<String>,
}

fn planned(state: &ClusterState, changes: &Changes) -> Planned {
    let mut notes = Vec::new();
    let replaced_or_deleted = |namespace: &str, name: &str| {
        changes.policies.iter().any(|p| key_of(p) == (namespace, name))
            || changes
                .deleted_policies
                .iter()
                .any(|d| d.namespace.as_deref() == Some(namespace) && d.name == name)
    };
    let cluster_replaced_or_deleted = |name: &str| {
        changes
            .cluster_policies
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(name))
            || changes.deleted_cluster_policies.iter().any(|d| d == name)
    };
    for deleted in &changes.deleted_policies {
        let namespace = deleted.namespace.as_deref().unwrap_or_default();
        let exists = state
            .policies
            .iter()
            .any(|p| key_of(p) == (namespace, &deleted.name))
            || state
                .unreadable
                .iter()
                .any(|u| u.namespace.as_deref() == Some(namespace) && u.key == deleted.name);
        if !exists {
            notes.push(format!(
                "--delete-policy {namespace}/{}: the cluster has no such SidecarPolicy; nothing to delete",
                deleted.name
            ));
        }
    }
    for deleted in &changes.deleted_cluster_policies {
        let exists = state
            .cluster_policies()
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(deleted))
            || state.unreadable.iter().any(|u| u.key == cluster::key(deleted));
        if !exists {
            notes.push(format!(
                "--delete-cluster-policy {deleted}: the cluster has no such ClusterSidecarPolicy; nothing to delete"
            ));
        }
    }
    if !changes.cluster_policies.is_empty() && state.cluster_policies.is_none() {
        notes.push(
            "the cluster does not serve the ClusterSidecarPolicy CRD: the ClusterSidecarPolicies given cannot be created until it is installed"
                .to_owned(),
        );
    }

    let mut policies: Vec<SidecarPolicy> = state
        .policies
        .iter()
        .filter(|p| {
            let (ns, name) = key_of(p);
            !replaced_or_deleted(ns, name)
        })
        .cloned()
        .collect();
    policies.extend(changes.policies.iter().cloned());
    let mut cluster_policies: Vec<ClusterSidecarPolicy> = state
        .cluster_policies()
        .iter()
        .filter(|p| !cluster_replaced_or_deleted(p.metadata.name.as_deref().unwrap_or_default()))
        .cloned()
        .collect();
    cluster_policies.extend(changes.cluster_policies.iter().cloned());
    let unreadable = state
        .unreadable
        .iter()
        .filter(|u| match &u.namespace {
            Some(ns) => !replaced_or_deleted(ns, &u.key),
            None => !cluster_replaced_or_deleted(cluster::cluster_name(&u.key).unwrap_or_default()),
        })
        .cloned()
        .collect();
    Planned {
        policies,
        cluster_policies,
        unreadable,
        notes,
    }
}

/// What `changes` would do to the Deployments of `state` (of `options.namespace` only, if set).
pub fn plan(state: &ClusterState, changes: &Changes, options: &Options) -> PlanReport {
    let planned = planned(state, changes);
    let mut report = PlanReport {
        notes: state.notes.clone(),
        ..PlanReport::default()
    };
    report.notes.extend(planned.notes.iter().cloned());

    let mut by_namespace: BTreeMap<&str, Vec<&Deployment>> = BTreeMap::new();
    for deployment in &state.deployments {
        let namespace = deployment.metadata.namespace.as_deref().unwrap_or_default();
        if options.namespace.as_deref().is_some_and(|only| only != namespace) {
            continue;
        }
        by_namespace.entry(namespace).or_default().push(deployment);
    }
    // Which of the given policies select a Deployment with the planned set: by key, per namespace.
    let mut selected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut warnings: BTreeSet<String> = BTreeSet::new();

    for (namespace, mut deployments) in by_namespace {
        deployments.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let current = Side::new(
            namespace,
            state,
            &state.policies,
            state.cluster_policies(),
            &state.unreadable,
            options,
        );
        let next = Side::new(
            namespace,
            state,
            &planned.policies,
            &planned.cluster_policies,
            &planned.unreadable,
            options,
        );
        for deployment in deployments {
            for policy in next.set.matching(deployment) {
                let key = policy.metadata.name.clone().unwrap_or_default();
                selected.insert((namespace.to_owned(), key));
            }
            let name = deployment.metadata.name.as_deref().unwrap_or_default();
            let autoscalers = state.autoscalers.of(namespace, name);
            let now = current.outcome(deployment, &autoscalers);
            let then = next.outcome(deployment, &autoscalers);
            let known = now.warnings();
            warnings.extend(then.warnings().into_iter().filter(|w| !known.contains(w)));
            let pending = matches!(&now, Outcome::Rendered(r) if !is_up_to_date(deployment, r));
            let verdict = compare(deployment, now, then);
            if matches!(verdict, Verdict::Unchanged) && !pending {
                report.unchanged += 1;
                continue;
            }
            report.entries.push(Entry {
                namespace: namespace.to_owned(),
                name: deployment.metadata.name.clone().unwrap_or_default(),
                verdict,
                pending,
            });
        }
    }

    let scope = match &options.namespace {
        Some(ns) => format!(" in namespace {ns:?}"),
        None => String::new(),
    };
    for policy in &changes.policies {
        let (ns, name) = key_of(policy);
        if options.namespace.as_deref().is_some_and(|only| only != ns) {
            report.notes.push(format!(
                "SidecarPolicy {ns}/{name} is outside namespace {:?}, which is the only one planned",
                options.namespace.as_deref().unwrap_or_default()
            ));
        } else if !selected.contains(&(ns.to_owned(), name.to_owned())) {
            report
                .notes
                .push(format!("SidecarPolicy {ns}/{name} selects no Deployment"));
        }
    }
    for policy in &changes.cluster_policies {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let key = cluster::key(name);
        if !selected.iter().any(|(_, k)| *k == key) {
            report.notes.push(format!(
                "ClusterSidecarPolicy {name} selects no Deployment{scope}"
            ));
        }
    }
    report.warnings = warnings.into_iter().collect();
    report
}

/// The verdict for a Deployment rendered `now` with the current policies and `then` with the
/// planned ones.
fn compare(live: &Deployment, now: Outcome<'_>, then: Outcome<'_>) -> Verdict {
    let after = match then {
        Outcome::Blocked(unreadable) => {
            return Verdict::Blocked {
                policy: unreadable.key.clone(),
                error: unreadable.error.clone(),
            };
        }
        Outcome::Refused(problems, _) => {
            return match now {
                Outcome::Refused(earlier, _) if earlier == problems => Verdict::StillRefused(problems),
                _ => Verdict::Refused(problems),
            };
        }
        Outcome::Rendered(after) => after,
    };
    // When the current policies refuse the Deployment (or are blocked), the operator leaves it
    // as it is: the change is measured from the live object, whose server defaults are no change.
    let (before, before_record, before_is_live) = match now {
        Outcome::Rendered(now) => {
            if now.deployment == after.deployment {
                return Verdict::Unchanged;
            }
            let Rendered {
                deployment, record, ..
            } = *now;
            (deployment, record, false)
        }
        _ => {
            if is_up_to_date(live, &after) {
                return Verdict::Unchanged;
            }
            let record = InjectionRecord::read(live).ok().flatten().unwrap_or_default();
            (live.clone(), record, true)
        }
    };
    let (parts, lost) = describe(&before, &before_record, &after, !before_is_live);
    Verdict::Change(Box::new(Change {
        parts,
        lost,
        before,
        before_is_live,
        after: *after,
    }))
}

/// What changes from `before` (with `before_record`) to `after`, in words, and the policies
/// lost. `exact`: `before` is a render too; otherwise it is the live object, whose server
/// defaults are not a difference.
fn describe(
    before: &Deployment,
    before_record: &InjectionRecord,
    after: &Rendered,
    exact: bool,
) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let kept: BTreeSet<&str> = after.record.policy_names().collect();
    let mut lost = Vec::new();
    let mut lost_containers = BTreeSet::new();
    let mut lost_volumes = BTreeSet::new();
    for entry in &before_record.policies {
        if !kept.contains(entry.name.as_str()) {
            lost.push((
                entry.name.clone(),
                entry.injected.init_containers.iter().cloned().collect(),
            ));
            lost_containers.extend(entry.injected.init_containers.iter().cloned());
            lost_volumes.extend(entry.injected.volumes.iter().cloned());
        }
    }

    let same = |live: serde_json::Value, rendered: serde_json::Value| {
        if exact {
            live == rendered
        } else {
            contains(&live, &rendered)
        }
    };
    let empty = PodSpec::default();
    let old = before.spec.template.spec.as_ref().unwrap_or(&empty);
    let new = after.deployment.spec.template.spec.as_ref().unwrap_or(&empty);
    let mut parts = Vec::new();

    let old_init: &[Container] = old.init_containers.as_deref().unwrap_or_default();
    let new_init: &[Container] = new.init_containers.as_deref().unwrap_or_default();
    named_changes(
        old_init,
        new_init,
        |c| c.name.as_str(),
        "",
        &lost_containers,
        |a, b| same(value(a), value(b)),
        &mut parts,
    );
    let common: BTreeSet<&str> = old_init
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| new_init.iter().any(|c| c.name == *n))
        .collect();
    let order = |list: &[Container]| -> Vec<String> {
        list.iter()
            .map(|c| c.name.clone())
            .filter(|n| common.contains(n.as_str()))
            .collect()
    };
    if order(old_init) != order(new_init) {
        parts.push("reorders init containers".to_owned());
    }

    let old_volumes: &[Volume] = old.volumes.as_deref().unwrap_or_default();
    let new_volumes: &[Volume] = new.volumes.as_deref().unwrap_or_default();
    named_changes(
        old_volumes,
        new_volumes,
        |v| v.name.as_str(),
        "volume ",
        &lost_volumes,
        |a, b| same(value(a), value(b)),
        &mut parts,
    );
    for container in &new.containers {
        if let Some(earlier) = old.containers.iter().find(|c| c.name == container.name)
            && !same(value(earlier), value(container))
        {
            parts.push(format!("updates app container {}", container.name));
        }
    }
    let meta = |d: &Deployment| d.spec.template.metadata.clone().unwrap_or_default();
    let (old_meta, new_meta) = (meta(before), meta(&after.deployment));
    if old_meta.labels != new_meta.labels {
        parts.push("updates pod labels".to_owned());
    }
    if old_meta.annotations != new_meta.annotations {
        parts.push("updates pod annotations".to_owned());
    }
    if old.share_process_namespace != new.share_process_namespace {
        parts.push("updates shareProcessNamespace".to_owned());
    }
    if parts.is_empty() && lost.is_empty() {
        parts.push("records new policy revisions; the pod template does not change".to_owned());
    }
    (parts, lost)
}

/// `adds X`, `removes X`, `updates X` for items keyed by name; removals in `lost` are left to
/// the lost policies' description.
fn named_changes<T>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &str,
    what: &str,
    lost: &BTreeSet<String>,
    same: impl Fn(&T, &T) -> bool,
    parts: &mut Vec<String>,
) {
    for item in new {
        match old.iter().find(|o| name(o) == name(item)) {
            None => parts.push(format!("adds {what}{}", name(item))),
            Some(earlier) if !same(earlier, item) => parts.push(format!("updates {what}{}", name(item))),
            Some(_) => {}
        }
    }
    for item in old {
        if !new.iter().any(|n| name(n) == name(item)) && !lost.contains(name(item)) {
            parts.push(format!("removes {what}{}", name(item)));
        }
    }
}

/// An API object as JSON, for comparison with `contains`.
fn value<T: serde::Serialize>(item: &T) -> serde_json::Value {
    // API types serialise to JSON without fail (no non-string map keys).
    serde_json::to_value(item).unwrap_or(serde_json::Value::Null)
}
