//! The engine's entry point: from a Deployment and the policies of its namespace to the
//! Deployment as it should be.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use sidecar_api::{INJECT_ANNOTATION, INJECTED_ANNOTATION, SidecarPolicy};

use crate::guardrails::Guardrails;
use crate::inject;
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
    pub fn applied(&self) -> &[String] {
        &self.record.policies
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
    select(deployment, sorted.into_iter()).0
}

/// Policies prepared for rendering: sorted into injection order, validated and checked against
/// the guardrails once, however many Deployments are rendered against them.
#[derive(Debug)]
pub struct PolicySet<'a> {
    /// In injection order.
    policies: Vec<Prepared<'a>>,
}

#[derive(Debug)]
struct Prepared<'a> {
    policy: &'a SidecarPolicy,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

impl<'a> PolicySet<'a> {
    pub fn new(policies: &'a [SidecarPolicy], guardrails: &Guardrails) -> Self {
        let mut sorted: Vec<&SidecarPolicy> = policies.iter().collect();
        sort(&mut sorted);
        let policies = sorted
            .into_iter()
            .map(|policy| {
                let name = policy.metadata.name.as_deref().unwrap_or_default();
                let mut problems = validate::problems(policy, name);
                problems.extend(guardrails.check(policy, name));
                Prepared {
                    policy,
                    problems,
                    warnings: validate::warnings(policy, name),
                }
            })
            .collect();
        PolicySet { policies }
    }

    /// The problems of a policy on its own (invalid, or refused by the guardrails), which refuse
    /// every Deployment it selects.
    pub fn problems(&self, policy: &str) -> &[Problem] {
        self.find(policy).map(|p| &p.problems[..]).unwrap_or_default()
    }

    /// The warnings of a policy on its own.
    pub fn warnings(&self, policy: &str) -> &[Warning] {
        self.find(policy).map(|p| &p.warnings[..]).unwrap_or_default()
    }

    fn find(&self, policy: &str) -> Option<&Prepared<'a>> {
        self.policies
            .iter()
            .find(|p| p.policy.metadata.name.as_deref() == Some(policy))
    }

    /// The policies that select `deployment`, in injection order (see [`matching_policies`]).
    pub fn matching(&self, deployment: &Deployment) -> Vec<&'a SidecarPolicy> {
        select(deployment, self.policies.iter().map(|p| p.policy)).0
    }

    /// Renders `deployment`; see [`render()`].
    pub fn render(&self, deployment: &Deployment) -> Result<Rendered, Refusal> {
        let name = deployment.metadata.name.as_deref().unwrap_or_default();
        let refuse = |mut problems: Vec<Problem>, mut warnings: Vec<Warning>| {
            problems.sort();
            problems.dedup();
            warnings.sort();
            warnings.dedup();
            Refusal {
                deployment: name.to_owned(),
                problems,
                warnings,
            }
        };

        let mut desired = deployment.clone();
        match InjectionRecord::read(deployment) {
            Ok(Some(record)) => record.strip(&mut desired),
            Ok(None) => {}
            Err(e) => {
                let field = format!("metadata.annotations[{INJECTED_ANNOTATION:?}]");
                let problem = Problem {
                    kind: ProblemKind::Conflict,
                    policy: String::new(),
                    field,
                    message: e.to_string(),
                };
                return Err(refuse(vec![problem], Vec::new()));
            }
        }

        let (selected, mut problems) = select(deployment, self.policies.iter().map(|p| p.policy));
        let mut warnings: Vec<Warning> = opt_out_warning(deployment).into_iter().collect();
        for prepared in self
            .policies
            .iter()
            .filter(|p| selected.iter().any(|s| std::ptr::eq(*s, p.policy)))
        {
            problems.extend_from_slice(&prepared.problems);
            warnings.extend_from_slice(&prepared.warnings);
        }
        if !problems.is_empty() {
            return Err(refuse(problems, warnings));
        }

        let template = &mut desired.spec.template;
        let (planned, plan_warnings) = inject::plan(name, template, &selected);
        warnings.extend(plan_warnings);
        let mut record = match planned {
            Ok(injection) => injection.apply(template),
            Err(conflicts) => return Err(refuse(conflicts, warnings)),
        };
        if !record.is_empty() {
            record.fingerprint = crate::apply::fingerprint(&desired, &record);
        }
        record.write(&mut desired);
        warnings.sort();
        warnings.dedup();
        Ok(Rendered {
            deployment: desired,
            record,
            warnings,
        })
    }
}

fn sort(policies: &mut [&SidecarPolicy]) {
    policies.sort_by(|a, b| (a.spec.order, &a.metadata.name).cmp(&(b.spec.order, &b.metadata.name)));
}

/// Whether the Deployment's owner opted out with `sidecar.dev/inject: "false"`.
pub fn opted_out(deployment: &Deployment) -> bool {
    inject_annotation(deployment).is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

fn inject_annotation(deployment: &Deployment) -> Option<&str> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(INJECT_ANNOTATION)
        .map(String::as_str)
}

fn opt_out_warning(deployment: &Deployment) -> Option<Warning> {
    let value = inject_annotation(deployment)?;
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
/// not go on).
fn select<'a>(
    deployment: &Deployment,
    policies: impl Iterator<Item = &'a SidecarPolicy>,
) -> (Vec<&'a SidecarPolicy>, Vec<Problem>) {
    if opted_out(deployment) {
        return (Vec::new(), Vec::new());
    }
    let no_labels = BTreeMap::new();
    let labels = deployment.metadata.labels.as_ref().unwrap_or(&no_labels);
    let mut selected = Vec::new();
    let mut problems = Vec::new();
    for policy in policies.filter(|p| p.metadata.namespace == deployment.metadata.namespace) {
        match selector::matches(&policy.spec.selector, labels) {
            Ok(true) => selected.push(policy),
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
