//! Binary encoding of stored records (little-endian, fixed layouts, version byte first).
//!
//! | record | layout |
//! |---|---|
//! | log entry | `v=1` u8, kind u8, device u64, phase u8, lost_at i64, restored_at i64 (`i64::MIN` = none), due_at i64, deadline i64, emitted_at i64, received_at i64, learned_late u8, event_mpan u64 (`u64::MAX` = none), destination tag u8, then routed: subscriber u16, mpan u64, distributor u8, gsp letter u8 (0 = none); parked: reason u8, distributor u8 |
//! | open outage | lost_at i64, received_at i64, state u8 (1 pending, 2 alerted), mpan u64 (`u64::MAX` = none) |
//!
//! Decoding re-validates MPANs and enums; a record that fails is reported as corruption,
//! never turned into a default.

use crate::debounce::{OpenOutage, OutageState};
use crate::domain::{
    Alert, AlertKind, DeviceId, DistributorId, GspGroup, MpanCore, Phase, SupplyPoint, UtcMillis,
};
use crate::route::{ParkReason, Route, SubscriberId};

use super::Destination;

const ENTRY_VERSION: u8 = 1;
const NONE_TIME: i64 = i64::MIN;
const NONE_MPAN: u64 = u64::MAX;

/// A stored record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {0} record")]
pub struct Corrupt(pub &'static str);

/// Encodes an alert and its destination.
pub fn encode_entry(alert: &Alert, destination: &Destination) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(ENTRY_VERSION);
    out.push(match alert.kind {
        AlertKind::Outage => 1,
        AlertKind::Restoration => 2,
    });
    out.extend_from_slice(&alert.point.device.0.to_le_bytes());
    out.push(u8::try_from(alert.point.phase.to_proto()).unwrap_or(0));
    for time in [
        alert.lost_at.0,
        alert.restored_at.map_or(NONE_TIME, |t| t.0),
        alert.due_at.0,
        alert.deadline.0,
        alert.emitted_at.0,
        alert.received_at.0,
    ] {
        out.extend_from_slice(&time.to_le_bytes());
    }
    out.push(u8::from(alert.learned_late));
    out.extend_from_slice(
        &alert
            .event_mpan
            .map_or(NONE_MPAN, MpanCore::value)
            .to_le_bytes(),
    );
    match destination {
        Destination::Routed(route) => {
            out.push(0);
            out.extend_from_slice(&route.subscriber.0.to_le_bytes());
            out.extend_from_slice(&route.mpan.value().to_le_bytes());
            out.push(route.distributor.0);
            out.push(route.gsp.map_or(0, GspGroup::letter));
        }
        Destination::Parked(reason) => {
            out.push(1);
            let (tag, distributor) = match reason {
                ParkReason::UnknownDevice => (0, 0),
                ParkReason::NoSubscriber(d) => (1, d.0),
                ParkReason::IdnoWithoutGsp(d) => (2, d.0),
            };
            out.push(tag);
            out.push(distributor);
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(Corrupt(self.what))?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn time(&mut self) -> Result<UtcMillis, Corrupt> {
        Ok(UtcMillis(i64::from_le_bytes(self.take()?)))
    }

    fn mpan(&mut self) -> Result<Option<MpanCore>, Corrupt> {
        match self.u64()? {
            NONE_MPAN => Ok(None),
            value => MpanCore::from_value(value)
                .map(Some)
                .ok_or(Corrupt(self.what)),
        }
    }

    fn done(&self) -> Result<(), Corrupt> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Corrupt(self.what))
        }
    }
}

/// Decodes [`encode_entry`]'s output.
pub fn decode_entry(bytes: &[u8]) -> Result<(Alert, Destination), Corrupt> {
    let what = "log entry";
    let mut r = Reader { bytes, what };
    if r.u8()? != ENTRY_VERSION {
        return Err(Corrupt(what));
    }
    let kind = AlertKind::from_proto(i32::from(r.u8()?)).ok_or(Corrupt(what))?;
    let device = DeviceId(r.u64()?);
    let phase = Phase::from_proto(i32::from(r.u8()?)).ok_or(Corrupt(what))?;
    let lost_at = r.time()?;
    let restored_at = Some(r.time()?).filter(|t| t.0 != NONE_TIME);
    let (due_at, deadline, emitted_at, received_at) = (r.time()?, r.time()?, r.time()?, r.time()?);
    let learned_late = r.u8()? != 0;
    let event_mpan = r.mpan()?;
    let destination = match r.u8()? {
        0 => {
            let subscriber = SubscriberId(r.u16()?);
            let mpan = r.mpan()?.ok_or(Corrupt(what))?;
            let distributor = DistributorId(r.u8()?);
            let gsp = match r.u8()? {
                0 => None,
                letter => Some(GspGroup::from_letter(letter).ok_or(Corrupt(what))?),
            };
            Destination::Routed(Route {
                subscriber,
                mpan,
                distributor,
                gsp,
            })
        }
        1 => {
            let (tag, distributor) = (r.u8()?, DistributorId(r.u8()?));
            Destination::Parked(match tag {
                0 => ParkReason::UnknownDevice,
                1 => ParkReason::NoSubscriber(distributor),
                2 => ParkReason::IdnoWithoutGsp(distributor),
                _ => return Err(Corrupt(what)),
            })
        }
        _ => return Err(Corrupt(what)),
    };
    r.done()?;
    let alert = Alert {
        kind,
        point: SupplyPoint { device, phase },
        lost_at,
        restored_at,
        due_at,
        deadline,
        emitted_at,
        received_at,
        learned_late,
        event_mpan,
    };
    Ok((alert, destination))
}

/// Encodes an open outage (25 bytes).
pub fn encode_outage(outage: &OpenOutage) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[..8].copy_from_slice(&outage.lost_at.0.to_le_bytes());
    out[8..16].copy_from_slice(&outage.received_at.0.to_le_bytes());
    out[16] = match outage.state {
        OutageState::Pending => 1,
        OutageState::Alerted => 2,
    };
    out[17..].copy_from_slice(&outage.mpan.map_or(NONE_MPAN, MpanCore::value).to_le_bytes());
    out
}

/// Decodes [`encode_outage`]'s output.
pub fn decode_outage(bytes: &[u8]) -> Result<OpenOutage, Corrupt> {
    let what = "open outage";
    let mut r = Reader { bytes, what };
    let lost_at = r.time()?;
    let received_at = r.time()?;
    let state = match r.u8()? {
        1 => OutageState::Pending,
        2 => OutageState::Alerted,
        _ => return Err(Corrupt(what)),
    };
    let mpan = r.mpan()?;
    r.done()?;
    Ok(OpenOutage {
        lost_at,
        received_at,
        state,
        mpan,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_alert() -> impl Strategy<Value = Alert> {
        (
            any::<bool>(),
            any::<u64>(),
            0i32..4,
            any::<[i64; 6]>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0u64..1_000_000_000_000),
        )
            .prop_map(
                |(pra, device, phase, t, has_restored, learned_late, mpan)| Alert {
                    kind: if pra {
                        AlertKind::Restoration
                    } else {
                        AlertKind::Outage
                    },
                    point: SupplyPoint {
                        device: DeviceId(device),
                        phase: Phase::from_proto(phase).unwrap_or_default(),
                    },
                    lost_at: UtcMillis(t[0]),
                    restored_at: (has_restored && t[1] != NONE_TIME).then_some(UtcMillis(t[1])),
                    due_at: UtcMillis(t[2]),
                    deadline: UtcMillis(t[3]),
                    emitted_at: UtcMillis(t[4]),
                    received_at: UtcMillis(t[5]),
                    learned_late,
                    event_mpan: mpan.and_then(MpanCore::with_check_digit),
                },
            )
    }

    fn arb_destination() -> impl Strategy<Value = Destination> {
        prop_oneof![
            (
                any::<u16>(),
                0u64..1_000_000_000_000,
                any::<u8>(),
                proptest::option::of(0usize..14)
            )
                .prop_map(|(sub, mpan, distributor, gsp)| {
                    Destination::Routed(Route {
                        subscriber: SubscriberId(sub),
                        mpan: MpanCore::with_check_digit(mpan).unwrap_or_else(|| unreachable!()),
                        distributor: DistributorId(distributor),
                        gsp: gsp.and_then(|i| GspGroup::of_area(DistributorId(10 + i as u8))),
                    })
                }),
            Just(Destination::Parked(ParkReason::UnknownDevice)),
            any::<u8>()
                .prop_map(|d| Destination::Parked(ParkReason::NoSubscriber(DistributorId(d)))),
            any::<u8>()
                .prop_map(|d| Destination::Parked(ParkReason::IdnoWithoutGsp(DistributorId(d)))),
        ]
    }

    proptest! {
        #[test]
        fn entries_round_trip(alert in arb_alert(), destination in arb_destination()) {
            let bytes = encode_entry(&alert, &destination);
            prop_assert_eq!(decode_entry(&bytes), Ok((alert, destination)));
        }

        #[test]
        fn truncated_or_garbage_entries_are_corrupt_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_entry(&bytes);
        }

        #[test]
        fn a_truncated_entry_is_refused(alert in arb_alert(), destination in arb_destination(), cut in 1usize..20) {
            let bytes = encode_entry(&alert, &destination);
            prop_assert!(decode_entry(&bytes[..bytes.len() - cut.min(bytes.len())]).is_err());
        }

        #[test]
        fn outages_round_trip(lost in any::<i64>(), received in any::<i64>(), alerted in any::<bool>(), mpan in proptest::option::of(0u64..1_000_000_000_000)) {
            let outage = OpenOutage {
                lost_at: UtcMillis(lost),
                received_at: UtcMillis(received),
                state: if alerted { OutageState::Alerted } else { OutageState::Pending },
                mpan: mpan.and_then(MpanCore::with_check_digit),
            };
            prop_assert_eq!(decode_outage(&encode_outage(&outage)), Ok(outage));
        }
    }
}
