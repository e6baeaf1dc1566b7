//! What can go wrong while reconciling, each error naming the object it concerns.

use std::time::Duration;

/// A failed reconcile. Invalid user input is not an error here: it is reported (Events, status)
/// and waits for a change. These are the failures worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "server-side apply of Deployment {namespace}/{name} conflicts with fields another field manager owns \
         (the operator never forces): {message}"
    )]
    FieldConflict {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("writing Deployment {namespace}/{name}: {source}")]
    WriteDeployment {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of SidecarPolicy {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of ClusterSidecarPolicy {name}: {source}")]
    WriteClusterStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing ControllerRevision {namespace}/{name} of SidecarPolicy {policy}: {source}")]
    WriteRevision {
        namespace: String,
        name: String,
        policy: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ControllerRevision {namespace}/{name} holds other content than revision {revision} of SidecarPolicy \
         {policy} (a hash collision, or an edit by hand); delete it and the operator re-creates it"
    )]
    RevisionMismatch {
        namespace: String,
        name: String,
        policy: String,
        revision: String,
    },
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::FieldConflict { .. } => "field_conflict",
            Error::WriteDeployment { .. }
            | Error::WriteStatus { .. }
            | Error::WriteClusterStatus { .. }
            | Error::WriteRevision { .. } => "api",
            Error::RevisionMismatch { .. } => "revision_mismatch",
        }
    }

    /// Sorts a failed Deployment apply into a field conflict (HTTP 409) or a plain API error.
    pub(crate) fn from_deployment_write(namespace: &str, name: &str, source: kube::Error) -> Self {
        match &source {
            kube::Error::Api(status) if status.code == 409 => Error::FieldConflict {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message: status.message.clone(),
            },
            _ => Error::WriteDeployment {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            },
        }
    }
}

/// Exponential backoff for the `failures`-th consecutive failure of one object: 5 s doubling to
/// at most 5 minutes.
pub(crate) fn backoff(failures: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let steps: Vec<_> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(steps, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(5));
    }
}
