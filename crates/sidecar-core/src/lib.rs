//! The pure logic of sidecar-operator: which SidecarPolicies match a Deployment, and what the
//! Deployment's pod template should become. No I/O and no Kubernetes client: everything here is
//! a function of its arguments, so it is tested without a cluster and shared by the offline
//! `render` command and the controller.
//!
//! The entry point is [`render()`]: given a Deployment and the policies of its namespace (a
//! ClusterSidecarPolicy that selects the namespace counts as one of them, see [`cluster`]), it
//! strips what an earlier render injected (as recorded in the `sidecar.dev/injected` annotation),
//! then injects what the matching policies ask for, or refuses with every problem it found.

mod apply;
pub mod autoscaling;
pub mod cluster;
mod facts;
mod guardrails;
pub mod hold;
mod inject;
pub mod outcome;
mod problem;
pub mod quantity;
mod record;
mod render;
pub mod revision;
pub mod rollout;
pub mod selector;
mod site;
pub mod status;
mod validate;

pub use apply::{apply_patch, contains, init_container_names, init_container_order, is_up_to_date};
pub use facts::{AppContainerFacts, DeploymentFacts, InitContainerFacts, PodFacts, Port};
pub use guardrails::Guardrails;
pub use problem::{Problem, ProblemKind, Refusal, Warning};
pub use record::{Injected, InjectionRecord, PolicyEntry, RECORD_VERSION, RecordError};
pub use render::{Plan, PolicySet, Rendered, matching_policies, opted_out, opted_out_meta, render};
pub use status::{policy_status, supports_native_sidecars, unsupported_server_status};
pub use validate::ORDER_RANGE;
