//! Ownership and peers of a relay that runs alone (the embedded and in-memory backends):
//! every partition and subscriber is owned here from start to shutdown, and there is no other
//! instance to ask.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{
    ClusterView, Lease, OwnerAnswer, OwnerQuery, Ownership, Partition, Peers, StartUnit, Unit,
};
use crate::error::RelayError;
use crate::proto;

/// Owns everything, for ever.
#[derive(Debug)]
pub struct AllHere {
    backend: &'static str,
    partitions: u16,
}

impl AllHere {
    /// Ownership of all `partitions` for a backend named `backend`.
    pub fn new(backend: &'static str, partitions: u16) -> Self {
        Self {
            backend,
            partitions,
        }
    }
}

#[async_trait]
impl Ownership for AllHere {
    async fn run(&self, units: Vec<Unit>, start: StartUnit, stop: CancellationToken) {
        let tasks: Vec<_> = units
            .into_iter()
            .map(|unit| start(unit, Lease::until(stop.clone())))
            .collect();
        stop.cancelled().await;
        for task in tasks {
            if let Err(err) = task.await
                && err.is_panic()
            {
                tracing::error!("an owner task panicked");
            }
        }
    }

    fn view(&self) -> ClusterView {
        ClusterView {
            backend: self.backend.to_owned(),
            instance: String::new(),
            partitions: self.partitions,
            live: Vec::new(),
            owned_here: (0..self.partitions).collect(),
            owners: Vec::new(),
        }
    }
}

/// Reloads the registry on this instance; answers what `ReloadRegistry` answers.
pub type ReloadHere = Arc<
    dyn Fn(
            proto::ReloadRegistryRequest,
        ) -> BoxFuture<'static, Result<proto::ReloadRegistryResponse, RelayError>>
        + Send
        + Sync,
>;

/// No other instance: every question is this instance's.
pub struct NoPeers {
    reload_here: ReloadHere,
}

impl NoPeers {
    /// Peers of a lone instance, reloading through `reload_here`.
    pub fn new(reload_here: ReloadHere) -> Self {
        Self { reload_here }
    }
}

impl std::fmt::Debug for NoPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoPeers")
    }
}

#[async_trait]
impl Peers for NoPeers {
    async fn ask(
        &self,
        partition: Partition,
        _query: OwnerQuery,
    ) -> Result<OwnerAnswer, RelayError> {
        Err(RelayError::Unavailable(format!(
            "partition {partition} is not served yet (starting or stopping); retry"
        )))
    }

    async fn reload(
        &self,
        request: proto::ReloadRegistryRequest,
    ) -> Result<proto::ReloadRegistryResponse, RelayError> {
        (self.reload_here)(request).await
    }
}
