//! Debounce: the per-supply-point outage state machine ([`machine`], pure and synchronous,
//! its open outages packed in [`open_table`]) and event-id de-duplication ([`dedup`]). The
//! partition owner (`crate::owner`) drives them in log-time order.

pub mod dedup;
pub mod machine;
pub mod open_table;

pub use machine::{
    Arrival, Debouncer, Effects, OpenOutage, OutageState, Outcome, Settings, Tombstone,
};
