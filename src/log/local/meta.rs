//! The bookkeeping records of the embedded logs, kept in small segment logs of their own next
//! to the data they describe.
//!
//! | record | layout (little-endian) | kept in |
//! |---|---|---|
//! | cursor | tag 1 u8, acked u64, first_retained u64, SLA seen u64, SLA checked through i64, breaches u64 | a subscriber's `cursor/` log; the last record wins |
//! | parked | tag 2 u8, then a log entry (`log::codec`) | a partition's `parked/` log; the record's position is its key |
//! | unparked | tag 3 u8, count u32, keys u64… | the same log: those keys are gone |
//! | moving | tag 4 u8, count u16, then per subscriber log name length u8, name, head u64 | the same log: a move began with the logs at these heads |
//! | moved | tag 5 u8 | the same log: the move ended |

use crate::domain::Alert;
use crate::log::codec::{Corrupt, Reader, decode_entry, encode_entry};
use crate::log::{AlertHeads, Destination, LogStatus, SlaMark};

const CURSOR: u8 = 1;
const PARKED: u8 = 2;
const UNPARKED: u8 = 3;
const MOVING: u8 = 4;
const MOVED: u8 = 5;

/// A subscriber log's cursors and SLA watch progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Acknowledged up to here.
    pub acked: u64,
    /// Readable from here (retention moves it).
    pub first_retained: u64,
    /// The SLA watch's progress.
    pub sla: SlaMark,
}

impl Cursor {
    /// The log's status with `head`.
    pub fn status(&self, head: u64) -> LogStatus {
        LogStatus {
            head,
            acked: self.acked,
            first_retained: self.first_retained,
        }
    }
}

/// Encodes a cursor record.
pub fn encode_cursor(cursor: &Cursor) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    out.push(CURSOR);
    for value in [
        cursor.acked,
        cursor.first_retained,
        cursor.sla.seen,
        cursor.sla.checked_through.0.cast_unsigned(),
        cursor.sla.breaches,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// Decodes [`encode_cursor`]'s output.
pub fn decode_cursor(bytes: &[u8]) -> Result<Cursor, Corrupt> {
    let mut r = Reader::new(bytes, "cursor");
    if r.u8()? != CURSOR {
        return Err(Corrupt("cursor"));
    }
    let (acked, first_retained, seen) = (r.u64()?, r.u64()?, r.u64()?);
    let checked_through = r.time()?;
    let breaches = r.u64()?;
    r.done()?;
    Ok(Cursor {
        acked,
        first_retained,
        sla: SlaMark {
            seen,
            checked_through,
            breaches,
        },
    })
}

/// One record of a partition's parked log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkedRecord {
    /// An alert parked.
    Parked(Alert, Destination),
    /// Parked alerts removed, by key.
    Unparked(Vec<u64>),
    /// A move of parked alerts began, with the subscriber logs at these heads.
    Moving(AlertHeads),
    /// The move ended.
    Moved,
}

/// Encodes a parked-log record.
pub fn encode_parked(record: &ParkedRecord) -> Vec<u8> {
    match record {
        ParkedRecord::Parked(alert, destination) => {
            let mut out = vec![PARKED];
            out.extend_from_slice(&encode_entry(alert, destination));
            out
        }
        ParkedRecord::Unparked(keys) => {
            let mut out = Vec::with_capacity(5 + keys.len() * 8);
            out.push(UNPARKED);
            let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&count.to_le_bytes());
            for key in keys.iter().take(count as usize) {
                out.extend_from_slice(&key.to_le_bytes());
            }
            out
        }
        ParkedRecord::Moving(heads) => {
            let mut out = vec![MOVING];
            let heads: Vec<&(String, u64)> = heads
                .0
                .iter()
                .filter(|(name, _)| name.len() <= usize::from(u8::MAX))
                .collect();
            out.extend_from_slice(&u16::try_from(heads.len()).unwrap_or(0).to_le_bytes());
            for (name, head) in heads {
                out.push(u8::try_from(name.len()).unwrap_or(0));
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&head.to_le_bytes());
            }
            out
        }
        ParkedRecord::Moved => vec![MOVED],
    }
}

/// Decodes [`encode_parked`]'s output.
pub fn decode_parked(bytes: &[u8]) -> Result<ParkedRecord, Corrupt> {
    let what = "parked log record";
    let (&tag, rest) = bytes.split_first().ok_or(Corrupt(what))?;
    match tag {
        PARKED => {
            let (alert, destination) = decode_entry(rest)?;
            Ok(ParkedRecord::Parked(alert, destination))
        }
        UNPARKED => {
            let mut r = Reader::new(rest, what);
            let count = r.u32()? as usize;
            if count > rest.len() / 8 {
                return Err(Corrupt(what));
            }
            let keys = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
            r.done()?;
            Ok(ParkedRecord::Unparked(keys))
        }
        MOVING => {
            let mut r = Reader::new(rest, what);
            let count = r.u16()?;
            let mut heads = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let length = usize::from(r.u8()?);
                let name =
                    String::from_utf8(r.bytes(length)?.to_vec()).map_err(|_| Corrupt(what))?;
                heads.push((name, r.u64()?));
            }
            r.done()?;
            Ok(ParkedRecord::Moving(AlertHeads(heads)))
        }
        MOVED if rest.is_empty() => Ok(ParkedRecord::Moved),
        _ => Err(Corrupt(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertKind, DeviceId, Phase, SupplyPoint, UtcMillis};
    use crate::route::ParkReason;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let cursor = Cursor {
            acked: 7,
            first_retained: 3,
            sla: SlaMark {
                seen: 9,
                checked_through: UtcMillis(-5),
                breaches: 2,
            },
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Ok(cursor));
        assert!(decode_cursor(&encode_cursor(&cursor)[..40]).is_err());
    }

    #[test]
    fn parked_records_read_back_as_written() {
        let alert = Alert {
            kind: AlertKind::Outage,
            point: SupplyPoint {
                device: DeviceId(5),
                phase: Phase::Whole,
            },
            lost_at: UtcMillis(1),
            restored_at: None,
            due_at: UtcMillis(2),
            deadline: UtcMillis(3),
            emitted_at: UtcMillis(4),
            received_at: UtcMillis(5),
            learned_late: false,
            event_mpan: None,
        };
        for record in [
            ParkedRecord::Parked(alert, Destination::Parked(ParkReason::UnknownDevice)),
            ParkedRecord::Unparked(vec![1, 5, 9]),
            ParkedRecord::Moving(AlertHeads(vec![("ukpn".into(), 4), ("npg".into(), 0)])),
            ParkedRecord::Moved,
        ] {
            assert_eq!(decode_parked(&encode_parked(&record)), Ok(record));
        }
        assert!(decode_parked(&[9]).is_err());
        assert!(decode_parked(&[]).is_err());
    }
}
