//! Routing: which subscriber (DNO) an alert goes to.
//!
//! A device is looked up in the [`Registry`] (device EUI-64 → MPAN core, GSP group, and the
//! feeder it is on when the registry names one, for storm summaries); a device
//! that is not registered is routed by the MPAN its event carried, if any. The MPAN's first
//! two digits are the distributor ID, and the [`RoutingTable`] names its owner:
//!
//! - 10–23 (the 14 licensed DNO areas): the subscriber that lists the ID;
//! - 24–99 (IDNOs): a subscriber that lists the ID itself; else `routing.idno_subscriber`;
//!   else the owner of the host area of the supply's GSP group;
//! - anything else, or an ID nobody owns: no subscriber.
//!
//! An alert that routes nowhere is parked with a [`ParkReason`], never dropped. The registry
//! can be replaced at run time ([`Router::replace_registry`]); the table is fixed at start.

pub mod feeders;
pub mod registry;
pub mod table;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use feeders::{Feeder, FeederId};
pub use registry::{Registry, RegistryEntry, RegistryError, RowError};
pub use table::{RoutingTable, SubscriberId};

use crate::domain::{DeviceId, DistributorId, GspGroup, MpanCore};

/// Where an alert goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The subscriber that receives it.
    pub subscriber: SubscriberId,
    /// The supply's MPAN core.
    pub mpan: MpanCore,
    /// The supply's distributor ID (first two MPAN digits).
    pub distributor: DistributorId,
    /// The supply's GSP group, when known.
    pub gsp: Option<GspGroup>,
}

/// Why an alert routes nowhere (it is then parked, never dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParkReason {
    /// The device is not in the registry and its event carried no MPAN core.
    #[error("device is not in the registry and its event carried no mpan_core")]
    UnknownDevice,
    /// No subscriber owns this distributor ID (nor, for an IDNO, its host area).
    #[error("no subscriber owns distributor id {}", .0.0)]
    NoSubscriber(DistributorId),
    /// An IDNO supply with no `idno_subscriber` configured and no GSP group known.
    #[error(
        "IDNO distributor id {} has no subscriber of its own, no routing.idno_subscriber is \
         configured, and the supply's GSP group is unknown",
        .0.0
    )]
    IdnoWithoutGsp(DistributorId),
}

impl ParkReason {
    /// A short, stable label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            Self::UnknownDevice => "unknown_device",
            Self::NoSubscriber(_) => "no_subscriber",
            Self::IdnoWithoutGsp(_) => "idno_without_gsp",
        }
    }
}

/// The registry (hot-swappable) and the routing table (fixed at start).
#[derive(Debug)]
pub struct Router {
    table: RoutingTable,
    registry: ArcSwap<Registry>,
}

impl Router {
    /// A router over `table`, starting with `registry`.
    pub fn new(table: RoutingTable, registry: Registry) -> Self {
        Self {
            table,
            registry: ArcSwap::from_pointee(registry),
        }
    }

    /// Routes an alert for `device`: by its registry entry first; if the device is not
    /// registered, by the event's own MPAN, whose GSP group is then the DNO area's own (none
    /// for an IDNO MPAN).
    pub fn route(
        &self,
        device: DeviceId,
        event_mpan: Option<MpanCore>,
    ) -> Result<Route, ParkReason> {
        self.route_in(&self.registry.load(), device, event_mpan)
    }

    /// Routes like [`Router::route`], with `registry` instead of the one in use now (a
    /// partition owner keeps routing with the registry it started with until it has moved
    /// its parked alerts under a new one, so a point's alerts stay in order).
    pub fn route_in(
        &self,
        registry: &Registry,
        device: DeviceId,
        event_mpan: Option<MpanCore>,
    ) -> Result<Route, ParkReason> {
        let (mpan, gsp) = match registry.get(device) {
            Some(entry) => (entry.mpan, Some(entry.gsp)),
            None => {
                let mpan = event_mpan.ok_or(ParkReason::UnknownDevice)?;
                (mpan, GspGroup::of_area(mpan.distributor()))
            }
        };
        let distributor = mpan.distributor();
        let subscriber = self.table.subscriber_for(distributor, gsp)?;
        Ok(Route {
            subscriber,
            mpan,
            distributor,
            gsp,
        })
    }

    /// The registry in use now. Later replacements do not affect the returned one.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Atomically swaps in a new registry (readers never see a half-loaded one); returns its
    /// device count. The old registry is freed when its last reader lets go.
    pub fn replace_registry(&self, registry: Registry) -> usize {
        let devices = registry.len();
        self.registry.store(Arc::new(registry));
        devices
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
