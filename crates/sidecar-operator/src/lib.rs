//! The `sidecar-operator` command: offline rendering of SidecarPolicies against Deployments, and
//! the CRD. `main.rs` only parses arguments and maps results to exit codes.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod input;
pub mod leader;
pub mod metrics;
pub mod render_cmd;
