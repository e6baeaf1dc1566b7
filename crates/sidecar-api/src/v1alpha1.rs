//! `sidecar.dev/v1alpha1`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// Adds sidecar containers, init containers, volumes and pod settings to the pod template of every
/// Deployment in its namespace that its selector matches.
///
/// Sidecars are injected as native sidecar containers (init containers with
/// `restartPolicy: Always`): they start before the Deployment's app containers, each gated by its
/// startupProbe, and stop after them in reverse order.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sidecar.dev",
    version = "v1alpha1",
    kind = "SidecarPolicy",
    plural = "sidecarpolicies",
    shortname = "scp",
    namespaced,
    status = "SidecarPolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Order","type":"integer","jsonPath":".spec.order","priority":1}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","description":"Deployments the selector matches","jsonPath":".status.matchedDeployments"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","description":"Matched Deployments that carry the current revision, of all matched","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Rolling","type":"integer","priority":1,"description":"Matched Deployments rolling to the current revision","jsonPath":".status.rollingDeployments"}"#,
    printcolumn = r#"{"name":"Waiting","type":"integer","priority":1,"description":"Matched Deployments waiting for their turn in the rollout","jsonPath":".status.waitingDeployments"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"description":"The current revision (a ControllerRevision named <policy>-<revision>)","jsonPath":".status.currentRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name: a SidecarPolicy's name must be at most 63 characters: it is a label value on the policy's revisions"),
    validation = kube::core::Rule::new(
        "(has(self.spec.sidecars) && size(self.spec.sidecars) > 0) || (has(self.spec.initContainers) && size(self.spec.initContainers) > 0)"
    ).message("spec: a SidecarPolicy must inject at least one entry in spec.sidecars or spec.initContainers").field_path(".spec"),
    validation = kube::core::Rule::new(
        "!has(self.spec.sidecars) || !has(self.spec.initContainers) || self.spec.sidecars.all(s, self.spec.initContainers.all(i, i.name != s.name))"
    ).message("spec: a name is used both in spec.sidecars and spec.initContainers; container names must be unique within the pod").field_path(".spec"),
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPolicySpec {
    /// Which Deployments in this namespace get the policy, by their labels (Deployment
    /// `metadata.labels`, not the pod template's). `{}` selects every Deployment in the
    /// namespace. A Deployment annotated `sidecar.dev/inject: "false"` is never selected.
    #[schemars(schema_with = "schema::label_selector")]
    pub selector: LabelSelector,

    /// Position of this policy among all policies matching the same Deployment. Lower orders are
    /// injected first, so their sidecars start earlier and (being native sidecars) stop later.
    /// Ties are broken by policy name; within a policy, list order is kept. Default 0.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub order: i32,

    /// Where the injected containers go relative to the Deployment's own init containers.
    /// `BeforeAppInitContainers` (default) lets the app's init steps use the sidecars (for example
    /// a database proxy needed by a migration). `AfterAppInitContainers` starts them only once the
    /// app's init steps have finished.
    #[serde(default)]
    pub placement: Placement,

    /// Run-to-completion init containers, injected before this policy's sidecars (for example a
    /// step that sets up traffic redirection for a proxy). They must not set `restartPolicy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::init_containers")]
    pub init_containers: Vec<Container>,

    /// Sidecar containers. Each is injected as a native sidecar: an init container with
    /// `restartPolicy: Always`, which the operator sets. Give each a startupProbe: the next
    /// container (and finally the app) starts only once the probe succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::sidecars")]
    pub sidecars: Vec<Container>,

    /// Pod volumes to add, for the injected containers and the app-container mounts below. A
    /// volume name the Deployment already uses is a conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::volumes")]
    pub volumes: Vec<Volume>,

    /// Volume mounts and environment variables to add to the Deployment's own (app) containers.
    /// Each entry names the containers it applies to, or applies to all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::app_containers")]
    pub app_containers: Vec<AppContainersPatch>,

    /// Pod-level settings to add to the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,

    /// How many earlier revisions of this policy to keep, besides the current one and any that a
    /// Deployment still carries. Each distinct content of this spec (everything but `selector`
    /// and this field) is a revision, stored as a ControllerRevision owned by the policy and
    /// deleted with it: `kubectl get controllerrevisions -l sidecar.dev/policy=NAME`. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub revision_history_limit: Option<i32>,

    /// Whether a Deployment this policy selects waits, paused, from its creation until the
    /// operator has injected the sidecars, so that its first pods already have them (requires
    /// the install's admission-hold component and Kubernetes 1.36+). Default true: if the
    /// operator is down, new Deployments wait for it. Set false for a sidecar the app can start
    /// without (log shipping): new Deployments then start at once, without the sidecars, and
    /// roll again once the operator has injected them. Not part of a revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_new_deployments: Option<bool>,

    /// How a new revision reaches the Deployments that already run: a few at a time, each
    /// Deployment's own rollout being the health signal. Absent: the defaults (5 at a time, no
    /// canary, not paused). Not part of a revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A SidecarPolicy for many namespaces: adds its sidecars to the Deployments its `selector`
/// matches in every namespace its `namespaceSelector` selects. Cluster-scoped, so that one
/// platform team's mesh proxy or log agent reaches every team's namespace without a copy per
/// namespace; only cluster administrators should be able to write it.
///
/// Everything else works as for a SidecarPolicy, across both kinds: ordering, conflicts (a
/// container name used by a SidecarPolicy and a ClusterSidecarPolicy is a conflict naming both),
/// guardrails, exact removal. The operator's `--exclude-namespace` list (default `kube-system`
/// and its own namespace) is never selected, and a namespace labelled
/// `sidecar.dev/inject: "false"` opts out of every ClusterSidecarPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sidecar.dev",
    version = "v1alpha1",
    kind = "ClusterSidecarPolicy",
    plural = "clustersidecarpolicies",
    shortname = "cscp",
    status = "SidecarPolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Order","type":"integer","jsonPath":".spec.order","priority":1}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","description":"Namespaces the namespaceSelector selects","jsonPath":".status.matchedNamespaces"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","description":"Deployments the selectors match","jsonPath":".status.matchedDeployments"}"#,
    printcolumn = r#"{"name":"Updated","type":"string","description":"Matched Deployments that carry the current revision, of all matched","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Rolling","type":"integer","priority":1,"description":"Matched Deployments rolling to the current revision","jsonPath":".status.rollingDeployments"}"#,
    printcolumn = r#"{"name":"Waiting","type":"integer","priority":1,"description":"Matched Deployments waiting for their turn in the rollout","jsonPath":".status.waitingDeployments"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"description":"The current revision (a ControllerRevision named clustersidecarpolicy.<policy>-<revision> in the operator's namespace)","jsonPath":".status.currentRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name: a ClusterSidecarPolicy's name must be at most 63 characters: it is a label value"),
    validation = kube::core::Rule::new(
        "(has(self.spec.sidecars) && size(self.spec.sidecars) > 0) || (has(self.spec.initContainers) && size(self.spec.initContainers) > 0)"
    ).message("spec: a ClusterSidecarPolicy must inject at least one entry in spec.sidecars or spec.initContainers").field_path(".spec"),
    validation = kube::core::Rule::new(
        "!has(self.spec.sidecars) || !has(self.spec.initContainers) || self.spec.sidecars.all(s, self.spec.initContainers.all(i, i.name != s.name))"
    ).message("spec: a name is used both in spec.sidecars and spec.initContainers; container names must be unique within the pod").field_path(".spec"),
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSidecarPolicySpec {
    /// Which namespaces the policy applies in, by their labels (`kubernetes.io/metadata.name`
    /// holds each namespace's name). Required; `{}` selects every namespace but those the
    /// operator never touches.
    #[schemars(schema_with = "schema::label_selector")]
    pub namespace_selector: LabelSelector,

    /// The same fields as a SidecarPolicy's spec; `selector` picks Deployments within each
    /// selected namespace.
    #[serde(flatten)]
    pub policy: SidecarPolicySpec,
}

/// How a new revision of a policy is rolled out to the Deployments it selects.
///
/// A Deployment that has nothing running (no available replica, or paused by its owner) gets the
/// current revision at once: moving it disturbs nothing. Every other one keeps the revision it
/// carries until its turn; it is rendered against that revision (from the policy's
/// ControllerRevisions) whatever else changes. Removal (the policy deleted, or no longer
/// selecting the Deployment) is not staged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// How many matched Deployments may be rolling to the current revision at once: an integer
    /// (at least 1) or a percentage of the matched Deployments (`"10%"`, rounded up). A
    /// Deployment counts from the operator's write until its own rollout is complete (its
    /// controller observed the change, and every replica is updated and available). Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::max_concurrent")]
    pub max_concurrent: Option<IntOrString>,

    /// Stops moving Deployments to the current revision; those rolling finish. Deployments with
    /// nothing running still get the current revision. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,

    /// Deployments that go first: the others wait until every canary carries the current
    /// revision and has completed its rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,

    /// How long a Deployment may take to complete its rollout to a new revision before the
    /// rollout counts as failed. Absent: only the Deployment's own
    /// `spec.progressDeadlineSeconds` (its `Progressing` condition turning False with
    /// `ProgressDeadlineExceeded`) says so. A failure stops the policy's rollout: no further
    /// Deployment moves until the policy changes (a new revision, for example a fixed image or a
    /// rollback) or the failure is acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,

    /// A revision (`status.currentRevision`) whose failed Deployments no longer stop the
    /// rollout: set it to the current revision to continue a stopped rollout without changing
    /// what the policy injects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{10}$"))]
    pub acknowledged_revision: Option<String>,
}

/// The Deployments a rollout moves first.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// The canaries among the matched Deployments, by their labels. If none matches, the rollout
    /// proceeds without canaries.
    #[schemars(schema_with = "schema::label_selector")]
    pub selector: LabelSelector,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Where injected containers go relative to the Deployment's own init containers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Placement {
    /// Injected containers come first; the app's own init containers can use the sidecars.
    #[default]
    BeforeAppInitContainers,
    /// Injected containers come after the app's own init containers.
    AfterAppInitContainers,
}

/// Additions to some or all of the Deployment's own containers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppContainersPatch {
    /// Names of the Deployment's containers (`spec.template.spec.containers`) this entry applies
    /// to. Empty or absent: every container. A name that the Deployment does not have is skipped
    /// with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::container_names")]
    pub container_names: Vec<String>,

    /// Volume mounts to add. A mount path that the container already uses is a conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::volume_mounts")]
    pub volume_mounts: Vec<VolumeMount>,

    /// Environment variables to add. A name that the container already sets is a conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::env")]
    pub env: Vec<EnvVar>,
}

/// Pod-level settings. A value the Deployment already sets differently is a conflict.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Share one process namespace between all containers of the pod, so that a sidecar can see
    /// and signal the app's processes (for example to send SIGHUP after a config change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<bool>,

    /// Labels to add to the pod template (not to the Deployment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations to add to the pod template (for example `prometheus.io/scrape`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator observed the last time it reconciled this policy.
///
/// Until the operator first writes it, the API server shows the default, `observedGeneration: 0`:
/// a policy the operator has not looked at yet reads as in progress, not as healthy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::unobserved_status)]
pub struct SidecarPolicyStatus {
    /// The `metadata.generation` of the policy that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The revision of this policy's current spec: a hash of what it injects. Deployments record
    /// the revision they carry; the ControllerRevision `<policy name>-<revision>` holds its
    /// content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,

    /// ClusterSidecarPolicy only: how many namespaces its `namespaceSelector` selects (those the
    /// operator never touches, or that opted out, excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_namespaces: Option<i32>,

    /// How many Deployments the selector matches (opted-out Deployments excluded).
    #[serde(default)]
    pub matched_deployments: i32,

    /// How many matched Deployments carry the current revision of this policy.
    #[serde(default)]
    pub up_to_date_deployments: i32,

    /// How many matched Deployments are still held at admission (created paused, waiting for
    /// the operator to inject the sidecars and release them). Normally 0: a release takes well
    /// under a second. Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_deployments: i32,

    /// `<carrying the current revision>/<matched>`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// How many matched Deployments are rolling to the current revision (written, their own
    /// rollout not complete yet). Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rolling_deployments: i32,

    /// How many matched Deployments wait for their turn to move to the current revision (they
    /// keep the revision they carry). Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting_deployments: i32,

    /// How many matched Deployments failed their rollout to the current revision. Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_deployments: i32,

    /// `Ready`, and `Conflict`, `Invalid`, `Degraded`, `Paused`, `Warnings`, `Reconciling` or
    /// `Stalled` when they apply.
    /// Reasons and messages name the Deployment and field concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
