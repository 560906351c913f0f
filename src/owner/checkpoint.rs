//! The owner's state as a checkpoint stores it: what a [`PartitionState`] keeps (open
//! outages, tombstones, the event-id window: see [`PartitionState::restore`]), plus the alert
//! logs' heads at that moment (alerts stored after them may be emitted again by a replay from
//! this checkpoint, and are recognised as duplicates).
//!
//! Layout (little-endian): `ORCK`, version u8 = 1, log time i64; outage count u32, then per
//! outage device u64, phase u8 and the open outage of `log::codec`; tombstone count u32, then
//! per tombstone device u64, phase u8, restored_at i64, closed_at i64; key count u32, then
//! per key seen_at i64, key u128; head count u16, then per log name length u8, name, head
//! u64. The backend frames and checksums the whole.
//!
//! [`PartitionState`]: super::state::PartitionState
//! [`PartitionState::restore`]: super::state::PartitionState::restore

use crate::debounce::Tombstone;
use crate::domain::event::EventKey;
use crate::log::AlertHeads;
use crate::log::codec::{Corrupt, Reader, decode_outage, encode_outage, push_point};

use super::state::{PartitionState, Saved};

const MAGIC: &[u8; 4] = b"ORCK";
const VERSION: u8 = 1;

fn push_count(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
}

/// Encodes `state` and the alert heads that go with it, straight from the live state (no
/// copy of it is made: at a million open outages a copy would cost more memory than the
/// encoding).
pub fn encode_state(state: &PartitionState, heads: &AlertHeads) -> Vec<u8> {
    let outages = state.open_outages();
    let seen = state.seen();
    let mut out = Vec::with_capacity(32 + outages.len() * 34 + seen.len() * 24);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&state.log_time().0.to_le_bytes());
    push_count(&mut out, outages.len());
    for (point, outage) in outages {
        push_point(&mut out, point);
        out.extend_from_slice(&encode_outage(&outage));
    }
    let count_at = out.len();
    push_count(&mut out, 0);
    let mut count = 0;
    for tombstone in state.tombstones() {
        push_point(&mut out, tombstone.point);
        out.extend_from_slice(&tombstone.restored_at.0.to_le_bytes());
        out.extend_from_slice(&tombstone.closed_at.0.to_le_bytes());
        count += 1;
    }
    out[count_at..count_at + 4]
        .copy_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
    push_count(&mut out, seen.len());
    for (seen_at, key) in seen {
        out.extend_from_slice(&seen_at.0.to_le_bytes());
        out.extend_from_slice(&key.0.to_le_bytes());
    }
    let heads: Vec<&(String, u64)> = heads
        .0
        .iter()
        .filter(|(name, _)| name.len() <= usize::from(u8::MAX))
        .collect();
    out.extend_from_slice(&u16::try_from(heads.len()).unwrap_or(u16::MAX).to_le_bytes());
    for (name, head) in heads {
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&head.to_le_bytes());
    }
    out
}

/// Decodes [`encode_state`]'s output.
pub fn decode(bytes: &[u8]) -> Result<(Saved, AlertHeads), Corrupt> {
    let mut r = Reader::new(bytes, "checkpoint");
    if r.take::<4>()? != *MAGIC || r.u8()? != VERSION {
        return Err(Corrupt("checkpoint"));
    }
    let log_time = r.time()?;
    let count = r.u32()? as usize;
    let mut outages = Vec::with_capacity(count.min(bytes.len() / 34));
    for _ in 0..count {
        let point = r.point()?;
        outages.push((point, decode_outage(&r.take::<25>()?)?));
    }
    let count = r.u32()? as usize;
    let mut tombstones = Vec::with_capacity(count.min(bytes.len() / 25));
    for _ in 0..count {
        let point = r.point()?;
        let restored_at = r.time()?;
        let closed_at = r.time()?;
        tombstones.push(Tombstone {
            point,
            restored_at,
            closed_at,
        });
    }
    let count = r.u32()? as usize;
    let mut seen = Vec::with_capacity(count.min(bytes.len() / 24));
    for _ in 0..count {
        let seen_at = r.time()?;
        seen.push((seen_at, EventKey(u128::from_le_bytes(r.take()?))));
    }
    let count = r.u16()?;
    let mut heads = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let length = usize::from(r.u8()?);
        let name = r.bytes(length)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| Corrupt("checkpoint"))?;
        heads.push((name, r.u64()?));
    }
    r.done()?;
    Ok((
        Saved {
            log_time,
            outages,
            tombstones,
            seen,
        },
        AlertHeads(heads),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::debounce::dedup::EventIdWindow;
    use crate::debounce::{OpenOutage, OutageState, Settings};
    use crate::domain::{DeviceId, Phase, SupplyPoint, UtcMillis};

    fn point(device: u64) -> SupplyPoint {
        SupplyPoint {
            device: DeviceId(device),
            phase: Phase::L2,
        }
    }

    fn settings() -> Settings {
        Settings {
            debounce: Duration::from_secs(180),
            poa_sla: Duration::from_secs(60),
            pra_sla: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(3600),
        }
    }

    /// `saved` through a live state, encoded and decoded; outages sorted (a map keeps them
    /// in no order).
    fn round_trip(saved: Saved, heads: &AlertHeads) -> Result<(Saved, AlertHeads), Corrupt> {
        let window = EventIdWindow::new(Duration::from_secs(u64::MAX / 4_000), usize::MAX);
        let state = PartitionState::restore(settings(), window, saved);
        let (mut back, heads) = decode(&encode_state(&state, heads))?;
        back.outages.sort_by_key(|(point, _)| *point);
        Ok((back, heads))
    }

    proptest! {
        #[test]
        fn a_checkpoint_reads_back_as_written(
            log_time in any::<i64>(),
            outages in prop::collection::btree_map(any::<u64>(), (0i64..1 << 50, any::<bool>()), 0..20),
            tombstones in prop::collection::btree_map(any::<u64>(), (any::<i64>(), 0i64..1 << 50), 0..20),
            seen in prop::collection::btree_map(any::<u128>(), 0i64..1 << 50, 0..20),
            heads in prop::collection::vec(("[a-z()]{0,12}", any::<u64>()), 0..8),
        ) {
            let mut seen: Vec<(UtcMillis, EventKey)> =
                seen.into_iter().map(|(key, at)| (UtcMillis(at), EventKey(key))).collect();
            seen.sort_by_key(|(at, key)| (*at, key.0));
            let mut tombstones: Vec<Tombstone> = tombstones
                .into_iter()
                .map(|(device, (restored, closed))| Tombstone {
                    point: point(device),
                    restored_at: UtcMillis(restored),
                    closed_at: UtcMillis(closed),
                })
                .collect();
            tombstones.sort_by_key(|t| t.closed_at);
            let saved = Saved {
                log_time: UtcMillis(log_time),
                outages: outages
                    .into_iter()
                    .map(|(device, (lost, alerted))| {
                        (point(device), OpenOutage {
                            lost_at: UtcMillis(lost),
                            received_at: UtcMillis(lost / 2),
                            state: if alerted { OutageState::Alerted } else { OutageState::Pending },
                            mpan: None,
                        })
                    })
                    .collect(),
                tombstones,
                seen,
            };
            let heads = AlertHeads(heads);
            prop_assert_eq!(round_trip(saved.clone(), &heads), Ok((saved, heads)));
        }

        #[test]
        fn garbage_is_corrupt_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_cut_checkpoint_is_refused() {
        let saved = Saved {
            outages: vec![(
                point(7),
                OpenOutage {
                    lost_at: UtcMillis(1),
                    received_at: UtcMillis(2),
                    state: OutageState::Pending,
                    mpan: None,
                },
            )],
            ..Saved::default()
        };
        let window = EventIdWindow::new(Duration::from_secs(60), 10);
        let state = PartitionState::restore(settings(), window, saved);
        let bytes = encode_state(&state, &AlertHeads(vec![("ukpn".into(), 9)]));
        assert!(decode(&bytes).is_ok());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
