//! The engine's entry point: from a Deployment and the policies of its namespace to the
//! Deployment as it should be.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sidecar_api::{ClusterSidecarPolicy, INJECT_ANNOTATION, INJECTED_ANNOTATION, SidecarPolicy};

use crate::autoscaling::{self, Autoscalers, InjectedSidecar};
use crate::cluster::{self, Exclusions, NamespaceLabels};
use crate::facts::{DeploymentFacts, PodFacts};
use crate::revision;

use crate::guardrails::Guardrails;
use crate::inject::{self, Injection};
use crate::problem::{Problem, ProblemKind, Refusal, Warning};
use crate::record::InjectionRecord;
use crate::selector;
use crate::validate;

/// A successful render.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The Deployment as it should be: the owner's fields untouched, the injected parts added in
    /// their order, and the `sidecar.dev/injected` record updated.
    pub deployment: Deployment,
    /// What was injected (also written to the record annotation).
    pub record: InjectionRecord,
    pub warnings: Vec<Warning>,
}

impl Rendered {
    /// Names of the policies applied, in injection order.
    pub fn applied(&self) -> Vec<&str> {
        self.record.policy_names().collect()
    }

    /// Whether the render changes the Deployment it was given.
    pub fn changes(&self, deployment: &Deployment) -> bool {
        &self.deployment != deployment
    }
}

/// Renders `deployment` against `policies` (those of other namespaces are ignored).
///
/// All or nothing: if any matching policy is invalid, refused by a guardrail or in conflict with
/// the Deployment or another policy, the result is a [`Refusal`] listing every problem, and the
/// caller must leave the Deployment as it is. To render many Deployments against the same
/// policies, build a [`PolicySet`] once instead.
pub fn render(
    deployment: &Deployment,
    policies: &[SidecarPolicy],
    guardrails: &Guardrails,
) -> Result<Rendered, Refusal> {
    PolicySet::new(policies, guardrails).render(deployment)
}

/// The policies that select `deployment`, in injection order: by `spec.order`, then by name.
/// Policies of other namespaces and policies with invalid selectors are left out; an opted-out
/// Deployment matches nothing.
pub fn matching_policies<'a>(
    deployment: &Deployment,
    policies: &'a [SidecarPolicy],
) -> Vec<&'a SidecarPolicy> {
    let mut sorted: Vec<&SidecarPolicy> = policies.iter().collect();
    sort(&mut sorted);
    select(&deployment.metadata, sorted.into_iter().map(|p| (p, p))).0
}

/// Policies prepared for rendering: sorted into injection order, validated, checked against
/// the guardrails and hashed into revisions once, however many Deployments are rendered against
/// them. It owns its policies, so the controller builds one per namespace and shares it.
#[derive(Debug)]
pub struct PolicySet {
    /// In injection order.
    policies: Vec<Prepared>,
}

#[derive(Clone, Debug)]
struct Prepared {
    policy: SidecarPolicy,
    revision: String,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

/// What the controller sends for one Deployment, planned without rendering it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The record the Deployment will carry.
    pub record: InjectionRecord,
    /// The names of all init containers, in the order the pod must have them.
    pub init_order: Vec<String>,
    /// The server-side apply configuration: only the fields the operator owns.
    pub patch: serde_json::Value,
    pub warnings: Vec<Warning>,
}

impl Plan {
    /// Whether the stored Deployment described by `facts` already is what this plan asks for: the
    /// same record (so the same policies at the same revisions), the init containers in the
    /// planned order, and every field the operator would send (server defaults in the stored
    /// object are not drift). The controller writes only when this is false.
    pub fn is_applied(&self, facts: &DeploymentFacts) -> bool {
        let live = match &facts.record {
            Ok(record) => record.clone().unwrap_or_default(),
            Err(_) => return false,
        };
        if live != self.record || facts.init_order != self.init_order {
            return false;
        }
        match self.patch.get("spec") {
            None => true,
            Some(spec) => crate::apply::contains(&facts.owned_value(), spec),
        }
    }
}

impl Prepared {
    fn new(policy: &SidecarPolicy, guardrails: &Guardrails) -> Self {
        Prepared::with_problems(policy, guardrails, Vec::new())
    }

    /// Prepared with `problems` found beyond the policy's spec (a ClusterSidecarPolicy's).
    fn with_problems(policy: &SidecarPolicy, guardrails: &Guardrails, mut problems: Vec<Problem>) -> Self {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        problems.extend(validate::problems(policy, name));
        problems.extend(guardrails.check(policy, name));
        Prepared {
            revision: revision::of(policy),
            warnings: validate::warnings(policy, name),
            problems,
            policy: policy.clone(),
        }
    }
}

impl PolicySet {
    pub fn new(policies: &[SidecarPolicy], guardrails: &Guardrails) -> Self {
        let mut sorted: Vec<&SidecarPolicy> = policies.iter().collect();
        sort(&mut sorted);
        let policies = sorted
            .into_iter()
            .map(|policy| Prepared::new(policy, guardrails))
            .collect();
        PolicySet { policies }
    }

    /// The policies that apply in `namespace`: its own SidecarPolicies (those of other
    /// namespaces are left out) and the ClusterSidecarPolicies that select it (see
    /// [`cluster::selects`]), each named by its key (see [`crate::cluster`]).
    pub fn for_namespace(
        namespace: &NamespaceLabels,
        policies: &[SidecarPolicy],
        cluster_policies: &[ClusterSidecarPolicy],
        exclusions: &Exclusions,
        guardrails: &Guardrails,
    ) -> Self {
        let mut prepared: Vec<Prepared> = policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.name.as_str()))
            .map(|p| Prepared::new(p, guardrails))
            .collect();
        for policy in cluster_policies {
            // An invalid namespaceSelector selects every namespace: cluster::problems names it.
            if cluster::selects(policy, namespace, exclusions) == Ok(false) {
                continue;
            }
            let problems = cluster::problems(policy);
            let converted = cluster::in_namespace(policy, &namespace.name);
            prepared.push(Prepared::with_problems(&converted, guardrails, problems));
        }
        prepared.sort_by(|a, b| injection_order(&a.policy).cmp(&injection_order(&b.policy)));
        PolicySet { policies: prepared }
    }

    /// ClusterSidecarPolicy `policy` alone, named by its key: what its status reads (its
    /// problems on its own, warnings and revision), independent of any namespace.
    pub fn for_cluster_policy(policy: &ClusterSidecarPolicy, guardrails: &Guardrails) -> Self {
        let converted = cluster::in_namespace(policy, "");
        PolicySet {
            policies: vec![Prepared::with_problems(
                &converted,
                guardrails,
                cluster::problems(policy),
            )],
        }
    }

    /// This set as one Deployment of a staged rollout sees it: each policy named in `pins` as it
    /// was at the revision the Deployment carries (`Some`, see [`revision::at`]), or left out
    /// when the Deployment does not carry it yet (`None`: it waits for its turn, so nothing of
    /// the policy is injected). The others are shared as prepared.
    pub fn pinned(&self, pins: &[(String, Option<SidecarPolicy>)], guardrails: &Guardrails) -> PolicySet {
        let mut policies: Vec<Prepared> = Vec::with_capacity(self.policies.len());
        for prepared in &self.policies {
            let name = prepared.policy.metadata.name.as_deref().unwrap_or_default();
            match pins.iter().find(|(pinned, _)| pinned == name) {
                None => policies.push(prepared.clone()),
                Some((_, Some(earlier))) => policies.push(Prepared::new(earlier, guardrails)),
                Some((_, None)) => {}
            }
        }
        // An earlier revision may have had another `order`.
        policies.sort_by(|a, b| injection_order(&a.policy).cmp(&injection_order(&b.policy)));
        PolicySet { policies }
    }

    /// The policies, in injection order.
    pub fn policies(&self) -> impl Iterator<Item = &SidecarPolicy> {
        self.policies.iter().map(|p| &p.policy)
    }

    /// The problems of a policy on its own (invalid, or refused by the guardrails), which refuse
    /// every Deployment it selects.
    pub fn problems(&self, policy: &str) -> &[Problem] {
        self.find(policy).map(|p| &p.problems[..]).unwrap_or_default()
    }

    /// The sidecars `record` says were injected, with the policy (of this set) that asks for
    /// each, in injection order: what the autoscaler warnings look at.
    pub fn injected_sidecars(&self, record: &InjectionRecord) -> Vec<InjectedSidecar<'_>> {
        let mut sidecars = Vec::new();
        for entry in &record.policies {
            let Some(prepared) = self.find(&entry.name) else {
                continue;
            };
            let policy = prepared.policy.metadata.name.as_deref().unwrap_or_default();
            for (index, container) in prepared.policy.spec.sidecars.iter().enumerate() {
                if entry.injected.init_containers.contains(&container.name) {
                    sidecars.push(InjectedSidecar {
                        policy,
                        index,
                        container,
                    });
                }
            }
        }
        sidecars
    }

    /// The warnings of a render that are about the Deployment (those that are not a policy's
    /// own, which its status says anyway): what a Deployment's outcome keeps.
    pub fn deployment_warnings(&self, warnings: &[Warning]) -> Vec<Warning> {
        warnings
            .iter()
            .filter(|w| !self.warnings(&w.policy).contains(w))
            .cloned()
            .collect()
    }

    /// The warnings of a policy on its own.
    pub fn warnings(&self, policy: &str) -> &[Warning] {
        self.find(policy).map(|p| &p.warnings[..]).unwrap_or_default()
    }

    /// The current revision of a policy (see [`crate::revision`]).
    pub fn revision(&self, policy: &str) -> Option<&str> {
        self.find(policy).map(|p| p.revision.as_str())
    }

    fn find(&self, policy: &str) -> Option<&Prepared> {
        self.policies
            .iter()
            .find(|p| p.policy.metadata.name.as_deref() == Some(policy))
    }

    /// The policies that select `deployment`, in injection order (see [`matching_policies`]).
    pub fn matching(&self, deployment: &Deployment) -> Vec<&SidecarPolicy> {
        self.matching_meta(&deployment.metadata)
    }

    /// The policies that select the Deployment with `metadata`, in injection order.
    pub fn matching_meta(&self, metadata: &ObjectMeta) -> Vec<&SidecarPolicy> {
        self.select(metadata).0.into_iter().map(|p| &p.policy).collect()
    }

    /// Plans the controller's write for the stored Deployment with `metadata` and `facts`; see
    /// [`render()`] for what is refused.
    pub fn plan(&self, metadata: &ObjectMeta, facts: &DeploymentFacts) -> Result<Plan, Refusal> {
        let name = metadata.name.as_deref().unwrap_or_default();
        let namespace = metadata.namespace.as_deref().unwrap_or_default();
        if let Err(e) = &facts.record {
            return Err(damaged_record(name, e));
        }
        let (injection, warnings) = self.injection(metadata, &facts.owner)?;
        let record = injection.record(&facts.owner);
        Ok(Plan {
            patch: injection.patch(name, namespace, &facts.owner, &record),
            init_order: injection.init_order(&facts.owner),
            record,
            warnings,
        })
    }

    /// Renders `deployment`; see [`render()`].
    pub fn render(&self, deployment: &Deployment) -> Result<Rendered, Refusal> {
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        let mut desired = deployment.clone();
        match InjectionRecord::read(deployment) {
            Ok(Some(record)) => record.strip(&mut desired),
            Ok(None) => {}
            Err(e) => return Err(damaged_record(name, &e)),
        }
        let owner = PodFacts::of(&desired.spec.template);
        let (injection, warnings) = self.injection(&deployment.metadata, &owner)?;
        let record = injection.record(&owner);
        injection.apply(&mut desired.spec.template);
        record.write(&mut desired);
        Ok(Rendered {
            deployment: desired,
            record,
            warnings,
        })
    }

    /// [`PolicySet::render`], with the warnings of the `autoscalers` that scale the Deployment
    /// (see [`crate::autoscaling`]): what `render`, `plan` and `explain` show.
    pub fn render_with_autoscalers(
        &self,
        deployment: &Deployment,
        autoscalers: &Autoscalers,
    ) -> Result<Rendered, Refusal> {
        let mut rendered = self.render(deployment)?;
        if autoscalers.is_empty() {
            return Ok(rendered);
        }
        let owner = DeploymentFacts::of(deployment).owner;
        let skewed = self.autoscaler_warnings(&owner, &rendered.record, autoscalers);
        rendered.warnings.extend(skewed);
        rendered.warnings.sort();
        rendered.warnings.dedup();
        Ok(rendered)
    }

    /// What `autoscalers` make of the sidecars `record` injects (with this set's policies) into a
    /// Deployment whose owner's pod template is `owner` (see [`crate::autoscaling`]).
    pub fn autoscaler_warnings(
        &self,
        owner: &PodFacts,
        record: &InjectionRecord,
        autoscalers: &Autoscalers,
    ) -> Vec<Warning> {
        if autoscalers.is_empty() {
            return Vec::new();
        }
        autoscaling::warnings(owner, &self.injected_sidecars(record), autoscalers)
    }

    /// The selected policies' injection into the Deployment with `metadata`, whose owner's pod
    /// template is `owner`, or every problem that refuses it.
    fn injection(
        &self,
        metadata: &ObjectMeta,
        owner: &PodFacts,
    ) -> Result<(Injection<'_>, Vec<Warning>), Refusal> {
        let name = metadata.name.as_deref().unwrap_or_default();
        let (selected, mut problems) = self.select(metadata);
        let mut warnings: Vec<Warning> = opt_out_warning(metadata).into_iter().collect();
        for prepared in &selected {
            problems.extend_from_slice(&prepared.problems);
            warnings.extend_from_slice(&prepared.warnings);
        }
        if !problems.is_empty() {
            return Err(refusal(name, problems, warnings));
        }
        let policies: Vec<(&SidecarPolicy, &str)> = selected
            .iter()
            .map(|p| (&p.policy, p.revision.as_str()))
            .collect();
        let (planned, plan_warnings) = inject::plan(name, owner, &policies);
        warnings.extend(plan_warnings);
        match planned {
            Ok(injection) => {
                warnings.sort();
                warnings.dedup();
                Ok((injection, warnings))
            }
            Err(conflicts) => Err(refusal(name, conflicts, warnings)),
        }
    }

    /// The selecting policies, in injection order, and a problem for each same-namespace policy
    /// whose selector is invalid.
    fn select(&self, metadata: &ObjectMeta) -> (Vec<&Prepared>, Vec<Problem>) {
        let (selected, problems) = select(metadata, self.policies.iter().map(|p| (&p.policy, p)));
        (selected, problems)
    }
}

fn refusal(deployment: &str, mut problems: Vec<Problem>, mut warnings: Vec<Warning>) -> Refusal {
    problems.sort();
    problems.dedup();
    warnings.sort();
    warnings.dedup();
    Refusal {
        deployment: deployment.to_owned(),
        problems,
        warnings,
    }
}

fn damaged_record(deployment: &str, error: &crate::record::RecordError) -> Refusal {
    let problem = Problem {
        kind: ProblemKind::Conflict,
        policy: String::new(),
        field: format!("metadata.annotations[{INJECTED_ANNOTATION:?}]"),
        message: error.to_string(),
    };
    refusal(deployment, vec![problem], Vec::new())
}

fn sort(policies: &mut [&SidecarPolicy]) {
    policies.sort_by(|a, b| injection_order(a).cmp(&injection_order(b)));
}

/// Where a policy goes in injection order: by `spec.order`, then ClusterSidecarPolicies before
/// SidecarPolicies (the platform's sidecars start first and stop last), then by name.
fn injection_order(policy: &SidecarPolicy) -> (i32, bool, &Option<String>) {
    let name = &policy.metadata.name;
    let namespaced = name.as_deref().and_then(cluster::cluster_name).is_none();
    (policy.spec.order, namespaced, name)
}

/// Whether the Deployment's owner opted out with `sidecar.dev/inject: "false"`.
pub fn opted_out(deployment: &Deployment) -> bool {
    opted_out_meta(&deployment.metadata)
}

/// Whether the Deployment with `metadata` is opted out (see [`opted_out`]).
pub fn opted_out_meta(metadata: &ObjectMeta) -> bool {
    inject_annotation(metadata).is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

fn inject_annotation(metadata: &ObjectMeta) -> Option<&str> {
    metadata
        .annotations
        .as_ref()?
        .get(INJECT_ANNOTATION)
        .map(String::as_str)
}

fn opt_out_warning(metadata: &ObjectMeta) -> Option<Warning> {
    let value = inject_annotation(metadata)?;
    let understood = value.eq_ignore_ascii_case("false") || value.eq_ignore_ascii_case("true");
    (!understood).then(|| Warning {
        policy: String::new(),
        field: format!("metadata.annotations[{INJECT_ANNOTATION:?}]"),
        message: format!(
            "value {value:?} is neither \"true\" nor \"false\"; only \"false\" opts the Deployment out"
        ),
    })
}

/// The selecting policies, in the order given, and a problem for each same-namespace policy whose
/// selector is invalid (it cannot be told whether it selects the Deployment, so the render must
/// not go on). Each policy comes with a companion value that is returned with it.
fn select<'a, T>(
    metadata: &ObjectMeta,
    policies: impl Iterator<Item = (&'a SidecarPolicy, T)>,
) -> (Vec<T>, Vec<Problem>) {
    if opted_out_meta(metadata) {
        return (Vec::new(), Vec::new());
    }
    let no_labels = BTreeMap::new();
    let labels = metadata.labels.as_ref().unwrap_or(&no_labels);
    let mut selected = Vec::new();
    let mut problems = Vec::new();
    for (policy, companion) in policies.filter(|(p, _)| p.metadata.namespace == metadata.namespace) {
        match selector::matches(&policy.spec.selector, labels) {
            Ok(true) => selected.push(companion),
            Ok(false) => {}
            Err(e) => problems.push(Problem {
                kind: ProblemKind::Invalid,
                policy: policy.metadata.name.clone().unwrap_or_default(),
                field: format!("spec.selector.{}", e.field()),
                message: e.to_string(),
            }),
        }
    }
    (selected, problems)
}
