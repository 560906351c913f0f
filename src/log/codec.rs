//! Binary encoding of stored records (little-endian, fixed layouts, version byte first).
//!
//! | record | layout |
//! |---|---|
//! | log entry | `v=1` u8, kind u8, device u64, phase u8, lost_at i64, restored_at i64 (`i64::MIN` = none), due_at i64, deadline i64, emitted_at i64, received_at i64, learned_late u8, event_mpan u64 (`u64::MAX` = none), destination tag u8, then routed: subscriber u16, mpan u64, distributor u8, gsp letter u8 (0 = none); parked: reason u8, distributor u8 |
//! | open outage | lost_at i64, received_at i64, state u8 (1 pending, 2 alerted), mpan u64 (`u64::MAX` = none) |
//! | device event (JetStream messages of earlier versions; read only) | `v=1` u8, device u64, phase u8, event key u128, mpan u64, kind u8 (1 lost, 2 restored), lost_at or restored_at i64, restored's lost_at i64 (`i64::MIN` = none) |
//! | journal record (embedded `journal/` logs; JetStream journal messages) | tag u8 (6 acked, 7 removed by retention), from u64, upto u64, at i64: sequences `from..=upto` settled at `at` |
//! | event record (a segment record; a JetStream event message) | `v=1` u8, arrival i64, received i64, event count u32, then per event: device u64, phase u8, event key u128, mpan u64, kind u8, lost_at or restored_at i64, restored's lost_at i64 (50 bytes) |
//!
//! Decoding re-validates MPANs and enums; a record that fails is reported as corruption,
//! never turned into a default.

use crate::debounce::{OpenOutage, OutageState};
use crate::domain::event::EventKey;
use crate::domain::{
    Alert, AlertKind, DeviceEvent, DeviceId, DistributorId, EventKind, GspGroup, MpanCore, Phase,
    SupplyPoint, UtcMillis,
};
use crate::route::{ParkReason, Route, SubscriberId};

use super::{Destination, EventRecord, Settled};

const ENTRY_VERSION: u8 = 1;
const NONE_TIME: i64 = i64::MIN;
const NONE_MPAN: u64 = u64::MAX;

/// A stored record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {0} record")]
pub struct Corrupt(pub &'static str);

impl From<Corrupt> for super::LogError {
    fn from(err: Corrupt) -> Self {
        Self::Corrupt(err.to_string())
    }
}

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

/// Reads little-endian fields off a record, failing with [`Corrupt`] when it runs short.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which hold a record of kind `what` (named in errors).
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(Corrupt(self.what))?;
        self.bytes = rest;
        Ok(*head)
    }

    /// The next `n` bytes as they are.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.bytes.len() < n {
            return Err(Corrupt(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    pub(crate) fn time(&mut self) -> Result<UtcMillis, Corrupt> {
        Ok(UtcMillis(i64::from_le_bytes(self.take()?)))
    }

    pub(crate) fn mpan(&mut self) -> Result<Option<MpanCore>, Corrupt> {
        match self.u64()? {
            NONE_MPAN => Ok(None),
            value => MpanCore::from_value(value)
                .map(Some)
                .ok_or(Corrupt(self.what)),
        }
    }

    pub(crate) fn done(&self) -> Result<(), Corrupt> {
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
    let mut r = Reader::new(bytes, what);
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
    let mut r = Reader::new(bytes, what);
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

const JOURNAL_ACKED: u8 = 6;
const JOURNAL_EXPIRED: u8 = 7;

/// Encodes a journal record.
pub fn encode_settled(settled: &Settled) -> Vec<u8> {
    let mut out = Vec::with_capacity(25);
    out.push(if settled.expired {
        JOURNAL_EXPIRED
    } else {
        JOURNAL_ACKED
    });
    out.extend_from_slice(&settled.from.to_le_bytes());
    out.extend_from_slice(&settled.upto.to_le_bytes());
    out.extend_from_slice(&settled.at.0.to_le_bytes());
    out
}

/// Decodes [`encode_settled`]'s output.
pub fn decode_settled(bytes: &[u8]) -> Result<Settled, Corrupt> {
    let mut r = Reader::new(bytes, "journal record");
    let expired = match r.u8()? {
        JOURNAL_ACKED => false,
        JOURNAL_EXPIRED => true,
        _ => return Err(Corrupt("journal record")),
    };
    let (from, upto) = (r.u64()?, r.u64()?);
    let at = r.time()?;
    r.done()?;
    Ok(Settled {
        from,
        upto,
        at,
        expired,
    })
}

const EVENT_VERSION: u8 = 1;

/// Encodes a validated device event as earlier versions wrote each JetStream event message
/// (now written only by tests: messages hold records).
#[cfg(test)]
pub fn encode_event(event: &DeviceEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + EVENT_BYTES);
    out.push(EVENT_VERSION);
    push_event(&mut out, event);
    out
}

/// Bytes of one event in a record (and after the version byte of a single event).
const EVENT_BYTES: usize = 50;

fn push_event(out: &mut Vec<u8>, event: &DeviceEvent) {
    push_point(out, event.point);
    out.extend_from_slice(&event.key.0.to_le_bytes());
    out.extend_from_slice(&event.mpan.map_or(NONE_MPAN, MpanCore::value).to_le_bytes());
    let (kind, first, second) = match event.kind {
        EventKind::Lost { lost_at } => (1u8, lost_at.0, NONE_TIME),
        EventKind::Restored {
            restored_at,
            lost_at,
        } => (2u8, restored_at.0, lost_at.map_or(NONE_TIME, |t| t.0)),
    };
    out.push(kind);
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&second.to_le_bytes());
}

/// Writes a supply point: device u64, phase u8.
pub(crate) fn push_point(out: &mut Vec<u8>, point: SupplyPoint) {
    out.extend_from_slice(&point.device.0.to_le_bytes());
    out.push(u8::try_from(point.phase.to_proto()).unwrap_or(0));
}

impl Reader<'_> {
    pub(crate) fn point(&mut self) -> Result<SupplyPoint, Corrupt> {
        let device = DeviceId(self.u64()?);
        let phase = Phase::from_proto(i32::from(self.u8()?)).ok_or(Corrupt(self.what))?;
        Ok(SupplyPoint { device, phase })
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take()?))
    }
}

/// Decodes one device event as earlier versions wrote each JetStream event message.
pub fn decode_event(bytes: &[u8]) -> Result<DeviceEvent, Corrupt> {
    let mut r = Reader::new(bytes, "device event");
    if r.u8()? != EVENT_VERSION {
        return Err(Corrupt(r.what));
    }
    let event = r.event()?;
    r.done()?;
    Ok(event)
}

impl Reader<'_> {
    /// Reads one event in the layout of [`push_event`].
    fn event(&mut self) -> Result<DeviceEvent, Corrupt> {
        let point = self.point()?;
        let key = EventKey(u128::from_le_bytes(self.take()?));
        let mpan = self.mpan()?;
        let kind = self.u8()?;
        let first = self.time()?;
        let second = Some(self.time()?).filter(|t| t.0 != NONE_TIME);
        let kind = match (kind, second) {
            (1, None) => EventKind::Lost { lost_at: first },
            (2, lost_at) => EventKind::Restored {
                restored_at: first,
                lost_at,
            },
            _ => return Err(Corrupt(self.what)),
        };
        Ok(DeviceEvent {
            key,
            point,
            mpan,
            kind,
        })
    }
}

const RECORD_VERSION: u8 = 1;

/// Encodes an event record (a partition's log record).
pub fn encode_record(record: &EventRecord) -> Vec<u8> {
    encode_record_of(record.arrival, record.received, &record.events)
}

/// Encodes the record of `events` with those times, as [`encode_record`] does (for a part of
/// a record, without copying the events).
pub fn encode_record_of(
    arrival: UtcMillis,
    received: UtcMillis,
    events: &[DeviceEvent],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + events.len() * EVENT_BYTES);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&arrival.0.to_le_bytes());
    out.extend_from_slice(&received.0.to_le_bytes());
    let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for event in events {
        push_event(&mut out, event);
    }
    out
}

/// Decodes [`encode_record`]'s output.
pub fn decode_record(bytes: &[u8]) -> Result<EventRecord, Corrupt> {
    let mut r = Reader::new(bytes, "event record");
    if r.u8()? != RECORD_VERSION {
        return Err(Corrupt(r.what));
    }
    let arrival = r.time()?;
    let received = r.time()?;
    let count = r.u32()? as usize;
    if count > bytes.len() / EVENT_BYTES {
        return Err(Corrupt(r.what));
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(r.event()?);
    }
    r.done()?;
    Ok(EventRecord {
        arrival,
        received,
        events,
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

    fn arb_event() -> impl Strategy<Value = DeviceEvent> {
        (
            any::<u64>(),
            0i32..4,
            any::<u128>(),
            prop::option::of(0u64..10_000_000_000),
            any::<bool>(),
            any::<i64>().prop_filter("not the none marker", |t| *t != NONE_TIME),
            prop::option::of(any::<i64>().prop_filter("not none", |t| *t != NONE_TIME)),
        )
            .prop_map(
                |(device, phase, key, mpan, lost, first, second)| DeviceEvent {
                    key: EventKey(key),
                    point: SupplyPoint {
                        device: DeviceId(device),
                        phase: Phase::from_proto(phase).unwrap_or(Phase::Whole),
                    },
                    mpan: mpan.and_then(|n| MpanCore::with_check_digit(10_000_000_000 + n)),
                    kind: if lost {
                        EventKind::Lost {
                            lost_at: UtcMillis(first),
                        }
                    } else {
                        EventKind::Restored {
                            restored_at: UtcMillis(first),
                            lost_at: second.map(UtcMillis),
                        }
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn events_round_trip(event in arb_event()) {
            prop_assert_eq!(decode_event(&encode_event(&event)), Ok(event));
        }

        #[test]
        fn records_round_trip(
            arrival in any::<i64>(),
            received in any::<i64>(),
            events in prop::collection::vec(arb_event(), 0..20),
        ) {
            let record = EventRecord { arrival: UtcMillis(arrival), received: UtcMillis(received), events };
            prop_assert_eq!(decode_record(&encode_record(&record)), Ok(record));
        }

        #[test]
        fn truncated_records_are_corrupt_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
            let _ = decode_event(&bytes);
        }
    }
}
