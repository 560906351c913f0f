//! Storm summaries: what is happening now in each subscriber's areas, sent every interval on
//! `AlertFeed.WatchSummaries`, beside the POAs and PRAs and never instead of them.
//!
//! ## Path
//!
//! Owners never wait for summaries. After applying a record, an owner hands the summaries
//! task one cheap [`Input::Notes`] batch (supply point, MPAN, log time, [`Change`]) with
//! `try_send` on a bounded channel; a full channel drops the batch and counts its notes in
//! `outage_relay_summary_notes_dropped_total`. Once an owner has recovered its partition it
//! sends the outages open in it ([`Input::Opened`]), so open counts start from the owners'
//! truth after a restart or a take-over, and when it stops it sends [`Input::Released`].
//! The summaries task ([`task`]) keeps the pure [`Summariser`] and the watchers, and sends
//! each watcher its summary when its interval comes round.
//!
//! ## What counts
//!
//! - A **loss** is a device's report that opened an outage, counted when it is applied:
//!   before its debounce completes, since a summary is about what is happening now (a loss
//!   that is later restored short still counted as lost). Repeated and stale reports count
//!   nothing. A POA is not a loss: the timer firing changes no count.
//! - A **restoration** is a report that closed an open outage (short or not); one that
//!   reveals an outage learned late counts as restored only (it was never open here).
//! - **Open** is the number of supply points (device × phase) with an outage open, pending
//!   or alerted, as the owners hold them.
//! - Times are log times (when the relay applied the report), not device times.
//! - A supply routes to the area GSP group × distributor × substation × feeder through the
//!   registry (an unregistered device by its event's MPAN, with no feeder); one that routes
//!   to no subscriber (a parked alert's) is in no summary.

pub mod summariser;
pub mod task;
pub mod window;

pub use summariser::{
    AreaCount, AreaKey, Inference, InferenceKind, Locate, Place, Settings, Summariser, Summary,
    WatchId,
};
pub use task::{NoteSender, Summaries, TaskSettings, start};

use crate::debounce::Outcome;
use crate::domain::{MpanCore, SupplyPoint, UtcMillis};
use crate::log::Partition;

/// What a report did to a supply point, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An outage opened.
    Lost,
    /// An open outage ended.
    Restored,
    /// A restoration revealed an outage the relay never saw open (learned late).
    LearnedLate,
}

impl Change {
    /// The change an event's outcome makes, if it makes one.
    pub fn of(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Opened | Outcome::AlertedAtOnce => Some(Self::Lost),
            Outcome::ShortInterruption | Outcome::Restored => Some(Self::Restored),
            Outcome::LearnedLate => Some(Self::LearnedLate),
            Outcome::AlreadyOpen | Outcome::Unmatched | Outcome::Stale | Outcome::Duplicate => None,
        }
    }
}

/// One report's change, as an owner notes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// The supply point.
    pub point: SupplyPoint,
    /// The MPAN its event carried (routes an unregistered device).
    pub mpan: Option<MpanCore>,
    /// The log time it was applied at.
    pub at: UtcMillis,
    /// What changed.
    pub change: Change,
}

/// An outage open in a partition when its owner started serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenPoint {
    /// The supply point.
    pub point: SupplyPoint,
    /// The MPAN its loss carried.
    pub mpan: Option<MpanCore>,
    /// Device-reported start of the outage.
    pub lost_at: UtcMillis,
}

/// What owners send the summaries task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The changes one record made, in order.
    Notes(Vec<Note>),
    /// Every outage open in `partition` as its owner starts serving it: replaces what the
    /// summaries knew of that partition.
    Opened {
        /// The partition.
        partition: Partition,
        /// Its open outages.
        open: Vec<OpenPoint>,
    },
    /// The partition's owner stopped here: its outages are no longer known.
    Released {
        /// The partition.
        partition: Partition,
    },
}
