//! Debounce stage: the per-supply-point outage state machine ([`machine`], pure and
//! synchronous), event-id de-duplication ([`dedup`]), and the shard task ([`shard`]) that
//! owns one slice of the supply points and drives the machine from its input queue and a
//! `tokio_util::time::DelayQueue` timing wheel.

pub mod dedup;
pub mod machine;
pub mod shard;

pub use machine::{
    Arrival, Debouncer, Effects, OpenOutage, OutageChange, OutageState, Outcome, Settings,
    Tombstone,
};
pub use shard::{ApplyReport, ShardCommand, ShardHandle};

use crate::domain::DeviceId;

/// The shard that owns every supply point of `device` (all its phases), out of `shards`.
pub fn shard_of(device: DeviceId, shards: usize) -> usize {
    // Fibonacci hashing spreads sequential EUIs evenly.
    let mixed = device.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    usize::try_from(mixed).unwrap_or(0) % shards.max(1)
}
