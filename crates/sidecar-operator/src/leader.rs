//! Lease-based leader election, so that two replicas are safe: only the holder of the Lease runs
//! the controllers, and so only it writes.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tracing::info;

use crate::controller::FIELD_MANAGER;

/// Where the Lease lives and who is asking for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// Unique per replica: the pod name in a cluster.
    pub identity: String,
}

/// Seconds a Lease stays valid without renewal; a standby takes over this long after the leader
/// stops renewing.
const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before its Lease expires.
const GRACE_SECONDS: u64 = 5;

/// Leadership held; [`Leadership::lost`] resolves when it is gone.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        while *self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                return; // the lease task ended: treat as lost
            }
        }
    }
}

/// Waits until this replica holds the Lease. The background task keeps renewing it.
pub async fn acquire(client: Client, election: &Election) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(GRACE_SECONDS)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await?;
    let (mut state, _task) = manager.watch().await;
    info!(lease = %election.lease, namespace = %election.namespace, identity = %election.identity, "waiting for leadership");
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            break;
        }
    }
    info!("leader: starting the controllers");
    Ok(Leadership { state })
}

/// This replica's identity: the pod name when running in a cluster, else host name and process id.
pub fn default_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar-operator".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn losing_the_lease_is_noticed() {
        let (tx, rx) = watch::channel(true);
        let mut leadership = Leadership { state: rx };
        let lose = tokio::spawn(async move {
            tx.send(true).unwrap(); // a renewal is not a loss
            tx.send(false).unwrap();
            tx // keep the channel open: only the value says "lost"
        });
        leadership.lost().await;
        assert!(!*leadership.state.borrow());
        drop(lose.await.unwrap());
    }

    #[tokio::test]
    async fn a_stopped_lease_task_counts_as_lost() {
        let (tx, rx) = watch::channel(true);
        drop(tx);
        Leadership { state: rx }.lost().await;
    }
}
