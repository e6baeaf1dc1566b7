//! The `sidecar-operator` command: the controller (`run`: watches, reconciles, writes, health and
//! metrics, leader election), offline rendering of policies against Deployments (`render`), the
//! read-only `plan` and `explain` against a cluster, and the CRDs (`crd`). `main.rs` only parses
//! arguments and maps results to exit codes.

pub mod cli;
pub mod cluster_state;
pub mod controller;
pub mod crd;
pub mod explain_cmd;
pub mod http;
pub mod input;
pub mod leader;
pub mod metrics;
pub mod plan_cmd;
pub mod render_cmd;
