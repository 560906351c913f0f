//! Domain vocabulary shared by every pipeline stage: device and supply-point identities, MPAN
//! cores and GSP groups, timestamps, validated events and alerts. Pure types, no I/O.

pub mod alert;
pub mod device;
pub mod event;
pub mod mpan;
pub mod time;

pub use alert::{Alert, AlertKind, BreachCause};
pub use device::{DeviceId, Phase, SupplyPoint};
pub use event::{DeviceEvent, EventKind};
pub use mpan::{DistributorId, GspGroup, MpanCore};
pub use time::{Clock, UtcMillis};
