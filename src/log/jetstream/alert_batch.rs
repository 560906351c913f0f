//! How alerts are grouped into the messages of a subscriber's stream.
//!
//! A message holds one or more alerts with consecutive sequences of the DNO's log. Its
//! headers say where it sits: `Outage-Relay-First` (the sequence of its first alert) and
//! `Outage-Relay-Count`; its payload is `[version][count: u32]` then, per alert,
//! `[len: u32][entry]` (the entry as [`encode_entry`] writes it). A message without those
//! headers was written one alert per message (before alerts were grouped): its alert's
//! sequence is the message's stream sequence, which holds because such messages only ever
//! precede grouped ones.
//!
//! A message's `Nats-Msg-Id` is an xxh3-128 of its alerts' ids, so the same alerts in the
//! same order, sent again, are dropped by the stream and acknowledged with the first copy.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::domain::Alert;
use crate::log::codec::{Corrupt, decode_entry, encode_entry};
use crate::log::{Destination, LogEntry};

/// Header: the sequence of the message's first alert.
pub const FIRST: &str = "Outage-Relay-First";
/// Header: how many alerts the message holds.
pub const COUNT: &str = "Outage-Relay-Count";
/// Most alerts in one message.
pub const ALERTS_PER_MESSAGE: usize = 4096;
/// A message is closed once its payload passes this size (NATS refuses payloads over its
/// `max_payload`, 1 MiB by default; an entry is about 100 bytes).
pub const MESSAGE_BYTES: usize = 512 * 1024;

const BATCH_VERSION: u8 = 2;

/// Where a message's alerts sit in the DNO's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The sequence of its first alert.
    pub first: u64,
    /// How many alerts it holds.
    pub count: u64,
}

impl Placed {
    /// The sequence of its last alert; of a barrier (no alerts), the one before `first`.
    pub fn last(&self) -> u64 {
        (self.first + self.count).saturating_sub(1)
    }

    /// Reads the headers of a message stored at `stream_sequence`.
    pub fn of(headers: Option<&HeaderMap>, stream_sequence: u64) -> Result<Self, Corrupt> {
        let field = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().parse::<u64>())
        };
        match (field(FIRST), field(COUNT)) {
            (None, None) => Ok(Self {
                first: stream_sequence,
                count: 1,
            }),
            (Some(Ok(first)), Some(Ok(count))) if first >= 1 => Ok(Self { first, count }),
            _ => Err(Corrupt("alert message headers")),
        }
    }
}

/// A message's payload: `alerts` in order.
pub fn encode(alerts: &[(Alert, Destination)]) -> Bytes {
    let mut out = Vec::with_capacity(5 + alerts.len() * 104);
    out.push(BATCH_VERSION);
    out.extend_from_slice(
        &u32::try_from(alerts.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (alert, destination) in alerts {
        let entry = encode_entry(alert, destination);
        out.extend_from_slice(&u32::try_from(entry.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&entry);
    }
    Bytes::from(out)
}

/// The entries of a message stored at `stream_sequence`, with their sequences.
pub fn decode(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    stream_sequence: u64,
) -> Result<Vec<LogEntry>, Corrupt> {
    let placed = Placed::of(headers, stream_sequence)?;
    let emitted_by = headers
        .and_then(|headers| headers.get(super::EMITTED_BY))
        .map(|value| std::sync::Arc::<str>::from(value.as_str()));
    let entry = |sequence: u64, (alert, destination): (Alert, Destination)| LogEntry {
        sequence,
        alert,
        destination,
        emitted_by: emitted_by.clone(),
    };
    if headers.and_then(|headers| headers.get(FIRST)).is_none() {
        return Ok(vec![entry(placed.first, decode_entry(payload)?)]);
    }
    const WHAT: &str = "alert message";
    let what = || Corrupt(WHAT);
    let (&version, mut rest) = payload.split_first().ok_or_else(what)?;
    let count = take_u32(&mut rest).ok_or_else(what)?;
    if version != BATCH_VERSION || u64::from(count) != placed.count {
        return Err(what());
    }
    let mut entries = Vec::with_capacity(count as usize);
    for index in 0..u64::from(count) {
        let len = take_u32(&mut rest).ok_or_else(what)? as usize;
        if rest.len() < len {
            return Err(what());
        }
        let (bytes, tail) = rest.split_at(len);
        entries.push(entry(placed.first + index, decode_entry(bytes)?));
        rest = tail;
    }
    if rest.is_empty() {
        Ok(entries)
    } else {
        Err(what())
    }
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    let (head, tail) = bytes.split_first_chunk::<4>()?;
    *bytes = tail;
    Some(u32::from_le_bytes(*head))
}

/// The `Nats-Msg-Id` of a message holding `alerts`: the same alerts in the same order give
/// the same id.
pub fn message_id(alerts: &[(Alert, Destination)]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (alert, _) in alerts {
        hasher.update(alert.id().to_string().as_bytes());
        hasher.update(b"\n");
    }
    format!("{:032x}", hasher.digest128())
}

/// How many of `alerts` (from the front) go in the next message: at most
/// [`ALERTS_PER_MESSAGE`], closed once the payload passes [`MESSAGE_BYTES`].
pub fn next_cut(alerts: &[(Alert, Destination)]) -> usize {
    let mut bytes = 5;
    let mut taken = 0;
    for (alert, destination) in alerts.iter().take(ALERTS_PER_MESSAGE) {
        bytes += 4 + encode_entry(alert, destination).len();
        taken += 1;
        if bytes >= MESSAGE_BYTES {
            break;
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceId;
    use crate::log::conformance::{poa, route};
    use crate::route::{ParkReason, SubscriberId};

    fn routed(device: u64) -> (Alert, Destination) {
        (
            poa(DeviceId(device), 0),
            Destination::Routed(route(SubscriberId(0))),
        )
    }

    fn headers(first: u64, count: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(FIRST, first.to_string().as_str());
        headers.insert(COUNT, count.to_string().as_str());
        headers.insert(super::super::EMITTED_BY, "relay-a");
        headers
    }

    #[test]
    fn a_message_gives_back_its_alerts_with_consecutive_sequences() {
        let alerts = vec![
            routed(1),
            (
                poa(DeviceId(2), 5),
                Destination::Parked(ParkReason::UnknownDevice),
            ),
        ];
        let entries = decode(Some(&headers(41, 2)), &encode(&alerts), 9).expect("decodes");
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.sequence, e.alert, e.destination, e.emitted_by.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (41, alerts[0].0, alerts[0].1, Some("relay-a")),
                (42, alerts[1].0, alerts[1].1, Some("relay-a")),
            ]
        );
    }

    #[test]
    fn a_message_without_placement_headers_is_one_alert_at_its_stream_sequence() {
        let (alert, destination) = routed(3);
        let payload = encode_entry(&alert, &destination);
        let entries = decode(None, &payload, 17).expect("decodes");
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].sequence, entries[0].alert), (17, alert));
        assert_eq!(
            Placed::of(None, 17).expect("placed"),
            Placed {
                first: 17,
                count: 1
            }
        );
    }

    #[test]
    fn a_barrier_holds_no_alerts_and_ends_at_the_head_before_it() {
        let entries = decode(Some(&headers(8, 0)), &encode(&[]), 30).expect("decodes");
        assert!(entries.is_empty());
        let placed = Placed::of(Some(&headers(8, 0)), 30).expect("placed");
        assert_eq!(placed.last(), 7, "the head stays where it was");
        assert_eq!(
            Placed { first: 1, count: 0 }.last(),
            0,
            "an empty log's barrier"
        );
        assert_eq!(Placed { first: 8, count: 3 }.last(), 10);
    }

    #[test]
    fn a_count_that_disagrees_with_the_payload_is_corrupt_not_a_gap() {
        let alerts = vec![routed(1)];
        let payload = encode(&alerts);
        assert!(decode(Some(&headers(5, 2)), &payload, 1).is_err());
        assert!(decode(Some(&headers(5, 1)), &payload[..payload.len() - 1], 1).is_err());
        let mut bad = HeaderMap::new();
        bad.insert(FIRST, "5");
        assert!(Placed::of(Some(&bad), 1).is_err());
    }

    #[test]
    fn the_id_follows_the_alerts_and_their_order_only() {
        let (a, b) = (routed(1), routed(2));
        assert_eq!(message_id(&[a, b]), message_id(&[a, b]));
        assert_ne!(message_id(&[a, b]), message_id(&[b, a]));
        assert_ne!(message_id(&[a, b]), message_id(&[a]));
    }

    #[test]
    fn a_cut_stays_under_the_message_limits() {
        let many: Vec<_> = (0..(ALERTS_PER_MESSAGE as u64 + 10)).map(routed).collect();
        let cut = next_cut(&many);
        assert_eq!(cut, ALERTS_PER_MESSAGE);
        assert!(encode(&many[..cut]).len() <= MESSAGE_BYTES + 512);
        assert_eq!(next_cut(&many[..3]), 3);
    }
}
