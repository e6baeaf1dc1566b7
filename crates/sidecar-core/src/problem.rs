//! What the engine reports: problems that refuse a render, and warnings that do not.

use std::fmt;

/// Why a policy cannot be applied to a Deployment. Each kind maps to one status condition type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// The policy itself is invalid (what the CRD schema would also reject).
    Invalid,
    /// The policy asks for something the operator's guardrails do not allow.
    Refused,
    /// A name, mount path, env var, port or pod setting is already used by the Deployment or
    /// another policy.
    Conflict,
}

impl ProblemKind {
    /// A stable, CamelCase reason for conditions, Events and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            ProblemKind::Invalid => "InvalidPolicy",
            ProblemKind::Refused => "GuardrailRefused",
            ProblemKind::Conflict => "Conflict",
        }
    }
}

/// One reason a render was refused. It names the policy, the field and the other party.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The key of the policy at fault: a SidecarPolicy's name or `ClusterSidecarPolicy/<name>`
    /// (empty when the Deployment alone is at fault, such as a
    /// damaged bookkeeping annotation).
    pub policy: String,
    /// JSON path of the offending field in the policy (or the Deployment), e.g.
    /// `spec.sidecars[0].name`.
    pub field: String,
    pub message: String,
}

impl Problem {
    /// The field and message, without the policy name (for the policy's own status).
    pub fn field_message(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.policy.is_empty() {
            write!(f, "{}: {}", self.field, self.message)
        } else {
            write!(
                f,
                "{} {}: {}",
                crate::cluster::describe(&self.policy),
                self.field,
                self.message
            )
        }
    }
}

/// Something a careful user wants to know that does not block the render.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    pub policy: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            crate::cluster::describe(&self.policy),
            self.field,
            self.message
        )
    }
}

/// A render that was refused: nothing is applied, and every problem found is listed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("refusing to render Deployment {deployment:?}: {}", summary(.problems))]
pub struct Refusal {
    pub deployment: String,
    /// Sorted, never empty.
    pub problems: Vec<Problem>,
    /// Warnings found on the way, for the same reporting channels.
    pub warnings: Vec<Warning>,
}

fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
