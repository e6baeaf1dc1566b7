//! Operator-level settings that allow privileged asks. Everything here defaults to "refuse".
//!
//! Creating a SidecarPolicy is equivalent to editing the pod spec of every Deployment it selects,
//! so a policy may ask for privileges only where the operator's administrator allowed them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, SecurityContext};
use sidecar_api::SidecarPolicy;

use crate::problem::{Problem, ProblemKind};
use crate::site::Site;

/// Which privileged asks a SidecarPolicy may make. The default refuses all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guardrails {
    /// Allow `securityContext.privileged: true` on injected containers.
    pub allow_privileged: bool,
    /// Allow `hostPath` volumes.
    pub allow_host_path: bool,
    /// Allow injected containers to run as root (`runAsUser: 0` or `runAsNonRoot: false`).
    pub allow_run_as_root: bool,
    /// Linux capabilities that injected containers may add, normalised by [`Guardrails::allow_capability`].
    pub allowed_capabilities: BTreeSet<String>,
}

impl Guardrails {
    /// Allows a capability; `CAP_NET_ADMIN`, `net_admin` and `NET_ADMIN` are the same one.
    pub fn allow_capability(&mut self, capability: &str) {
        self.allowed_capabilities.insert(normalise_capability(capability));
    }

    /// Every guardrail a policy breaks, whatever Deployment it is applied to.
    pub(crate) fn check(&self, policy: &SidecarPolicy, name: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let spec = &policy.spec;
        for (path, container) in crate::validate::containers(policy) {
            self.check_container(name, path, container, &mut problems);
        }
        if !self.allow_host_path {
            for (i, volume) in spec.volumes.iter().enumerate() {
                if volume.host_path.is_some() {
                    problems.push(refused(
                        name,
                        format!("spec.volumes[{i}].hostPath"),
                        format!(
                            "volume {:?} is a hostPath volume, which gives the pod access to the node's filesystem; \
                             the operator allows it only with --allow-host-path",
                            volume.name
                        ),
                    ));
                }
            }
        }
        problems
    }

    fn check_container(
        &self,
        policy: &str,
        path: Site<'_>,
        container: &Container,
        problems: &mut Vec<Problem>,
    ) {
        let Some(security) = &container.security_context else {
            return;
        };
        if security.privileged == Some(true) && !self.allow_privileged {
            problems.push(refused(
                policy,
                format!("{path}.securityContext.privileged"),
                format!(
                    "container {:?} asks to run privileged; the operator allows it only with --allow-privileged",
                    container.name
                ),
            ));
        }
        for (i, capability) in added_capabilities(security).iter().enumerate() {
            if !self
                .allowed_capabilities
                .contains(&normalise_capability(capability))
            {
                problems.push(refused(
                    policy,
                    format!("{path}.securityContext.capabilities.add[{i}]"),
                    format!(
                        "container {:?} adds capability {capability:?}; the operator allows it only with --allow-capability {}",
                        container.name,
                        normalise_capability(capability)
                    ),
                ));
            }
        }
        if !self.allow_run_as_root {
            if security.run_as_user == Some(0) {
                problems.push(refused(
                    policy,
                    format!("{path}.securityContext.runAsUser"),
                    format!(
                        "container {:?} asks to run as root (runAsUser: 0); the operator allows it only with --allow-run-as-root",
                        container.name
                    ),
                ));
            }
            if security.run_as_non_root == Some(false) {
                problems.push(refused(
                    policy,
                    format!("{path}.securityContext.runAsNonRoot"),
                    format!(
                        "container {:?} sets runAsNonRoot: false; the operator allows it only with --allow-run-as-root",
                        container.name
                    ),
                ));
            }
        }
    }
}

fn added_capabilities(security: &SecurityContext) -> &[String] {
    security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_deref())
        .unwrap_or_default()
}

fn normalise_capability(capability: &str) -> String {
    let upper = capability.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").map(str::to_owned).unwrap_or(upper)
}

fn refused(policy: &str, field: String, message: String) -> Problem {
    Problem {
        kind: ProblemKind::Refused,
        policy: policy.to_owned(),
        field,
        message,
    }
}
