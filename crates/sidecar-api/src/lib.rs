//! The `SidecarPolicy` and `ClusterSidecarPolicy` custom resources (`sidecar.dev/v1alpha1`).
//!
//! This crate holds the types and their OpenAPI schema only: no logic, no client. Doc comments on
//! the spec fields are user documentation; `kubectl explain sidecarpolicy.spec` shows them.

pub mod schema;
mod v1alpha1;

pub use v1alpha1::*;

/// Annotation on a Deployment that opts it out of injection when set to `"false"`.
pub const INJECT_ANNOTATION: &str = "sidecar.dev/inject";

/// Label on a Namespace that opts it out of every ClusterSidecarPolicy when set to `"false"`
/// (its own SidecarPolicies still apply: its owners wrote them).
pub const NAMESPACE_INJECT_LABEL: &str = "sidecar.dev/inject";

/// How the engine, the injection record and the admission hold name a ClusterSidecarPolicy:
/// `ClusterSidecarPolicy/<name>`. A SidecarPolicy is named by its bare name; an object name
/// cannot contain `/`, so the two never collide.
pub const CLUSTER_POLICY_PREFIX: &str = "ClusterSidecarPolicy/";

/// Annotation on a Deployment where the operator records what it injected, so that it can remove
/// exactly that and nothing the Deployment's owner wrote.
pub const INJECTED_ANNOTATION: &str = "sidecar.dev/injected";

/// Annotation the admission hold (a MutatingAdmissionPolicy) puts on a Deployment it creates
/// paused: the SidecarPolicies, comma-separated, whose sidecars it waits for. The operator
/// renders the Deployment, then removes this annotation and `spec.paused` together.
pub const HELD_FOR_ANNOTATION: &str = "sidecar.dev/held-for";

/// Label on a policy's ControllerRevisions: the policy's name.
pub const POLICY_LABEL: &str = "sidecar.dev/policy";

/// Label on a ClusterSidecarPolicy's ControllerRevisions: `ClusterSidecarPolicy` (they live in the
/// operator's namespace, beside any SidecarPolicy's there).
pub const POLICY_KIND_LABEL: &str = "sidecar.dev/policy-kind";

/// Label on a policy's ControllerRevisions: the revision hash.
pub const REVISION_LABEL: &str = "sidecar.dev/revision";

/// Default of `spec.revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// Default of `spec.rollout.maxConcurrent`.
pub const DEFAULT_MAX_CONCURRENT: i32 = 5;

/// Condition types and reasons written to `SidecarPolicy.status.conditions`.
pub mod conditions {
    /// The policy is valid and every matched Deployment carries what it asks for.
    pub const READY: &str = "Ready";
    /// At least one matched Deployment cannot take the policy: a name, path, port or pod setting
    /// is already used by someone else.
    pub const CONFLICT: &str = "Conflict";
    /// The policy itself is invalid, or asks for something the operator's guardrails refuse.
    pub const INVALID: &str = "Invalid";
    /// The policy is valid but could not be applied everywhere (API errors, unsupported server).
    pub const DEGRADED: &str = "Degraded";
    /// kstatus' standard condition (abnormal-true): the operator is still bringing matched
    /// Deployments up to date. Present, `True`, only then.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus' standard condition (abnormal-true): the operator cannot make progress until
    /// someone changes a policy or a Deployment (or upgrades the cluster). Present, `True`, only
    /// then. With `Reconciling`, it lets kstatus users (Flux's health checks, kpt, Config Sync)
    /// read a policy's health without configuration.
    pub const STALLED: &str = "Stalled";
    /// `spec.rollout.paused` holds Deployments back on the revision they carry. Present, `True`,
    /// only then.
    pub const PAUSED: &str = "Paused";
    /// The policy works, but its spec leaves something to chance (a sidecar without a
    /// startupProbe, a container without resource requests, an unpinned image); the message
    /// names the fields. Present, `True`, only then; it never makes the policy not Ready.
    pub const WARNINGS: &str = "Warnings";
}
