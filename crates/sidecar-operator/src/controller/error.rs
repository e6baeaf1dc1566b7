//! What can go wrong while reconciling a Deployment.

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
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::FieldConflict { .. } => "field_conflict",
            Error::Write { .. } => "api",
        }
    }

    /// Sorts a failed write into a field conflict (HTTP 409 on apply) or a plain API error.
    pub(crate) fn from_write(namespace: &str, name: &str, source: kube::Error) -> Self {
        match &source {
            kube::Error::Api(status) if status.code == 409 => Error::FieldConflict {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message: status.message.clone(),
            },
            _ => Error::Write {
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
