//! The engine's entry point: from a Deployment and the policies of its namespace to the
//! Deployment as it should be.

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
    /// Names of the policies applied, in injection order.
    pub applied: Vec<String>,
    /// What was injected (also written to the record annotation).
    pub record: InjectionRecord,
    pub warnings: Vec<Warning>,
}

impl Rendered {
    /// Whether the render changes the Deployment it was given.
    pub fn changes(&self, deployment: &Deployment) -> bool {
        &self.deployment != deployment
    }
}

/// Renders `deployment` against `policies` (those of other namespaces are ignored).
///
/// All or nothing: if any matching policy is invalid, refused by a guardrail or in conflict with
/// the Deployment or another policy, the result is a [`Refusal`] listing every problem, and the
/// caller must leave the Deployment as it is.
pub fn render(
    deployment: &Deployment,
    policies: &[SidecarPolicy],
    guardrails: &Guardrails,
) -> Result<Rendered, Refusal> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let refuse = |mut problems: Vec<Problem>, mut warnings: Vec<Warning>| {
        problems.sort();
        problems.dedup();
        warnings.sort();
        warnings.dedup();
        Refusal {
            deployment: name.clone(),
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

    let (selected, mut problems) = select(deployment, policies);
    let mut warnings = opt_out_warning(deployment).into_iter().collect::<Vec<_>>();
    for policy in &selected {
        let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
        problems.extend(validate::problems(policy, policy_name));
        problems.extend(guardrails.check(policy, policy_name));
        warnings.extend(validate::warnings(policy, policy_name));
    }
    if !problems.is_empty() {
        return Err(refuse(problems, warnings));
    }

    let template = &mut desired.spec.template;
    let (planned, plan_warnings) = inject::plan(&name, template, &selected);
    warnings.extend(plan_warnings);
    let record = match planned {
        Ok(injection) => injection.apply(template),
        Err(conflicts) => return Err(refuse(conflicts, warnings)),
    };
    record.write(&mut desired);
    warnings.sort();
    warnings.dedup();
    Ok(Rendered {
        deployment: desired,
        applied: record.policies.clone(),
        record,
        warnings,
    })
}

/// The policies that select `deployment`, in injection order: by `spec.order`, then by name.
/// Policies of other namespaces and policies with invalid selectors are left out; an opted-out
/// Deployment matches nothing.
pub fn matching_policies<'a>(
    deployment: &Deployment,
    policies: &'a [SidecarPolicy],
) -> Vec<&'a SidecarPolicy> {
    select(deployment, policies).0
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

/// The selecting policies, sorted, and a problem for each same-namespace policy whose selector is
/// invalid (it cannot be told whether it selects the Deployment, so the render must not go on).
fn select<'a>(
    deployment: &Deployment,
    policies: &'a [SidecarPolicy],
) -> (Vec<&'a SidecarPolicy>, Vec<Problem>) {
    if opted_out(deployment) {
        return (Vec::new(), Vec::new());
    }
    let labels = deployment.metadata.labels.clone().unwrap_or_default();
    let mut selected = Vec::new();
    let mut problems = Vec::new();
    for policy in policies
        .iter()
        .filter(|p| p.metadata.namespace == deployment.metadata.namespace)
    {
        match selector::matches(&policy.spec.selector, &labels) {
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
    selected.sort_by(|a, b| (a.spec.order, &a.metadata.name).cmp(&(b.spec.order, &b.metadata.name)));
    (selected, problems)
}
