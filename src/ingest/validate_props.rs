//! Hostile-input properties: event batches decoded from arbitrary bytes and validated, events
//! with arbitrary field values, generated valid events, and the registry and config parsers
//! fed arbitrary or mutated text. Nothing may panic; refusals name a known field; valid input
//! passes unchanged. The fuzz targets in `tests/fuzz` cover the same entry points at depth.

use std::time::Duration;

use proptest::prelude::*;
use prost::Message as _;
use prost_types::Timestamp;

use crate::config::{Config, IngestConfig};
use crate::domain::event::EventKey;
use crate::domain::{DeviceId, EventKind, Phase, UtcMillis};
use crate::proto::{DeviceEvent, EventBatch, SupplyLost, SupplyRestored, device_event::Kind};
use crate::route::Registry;
use crate::telemetry::REJECT_REASONS;

const NOW: UtcMillis = UtcMillis(1_764_000_000_000);
/// Last millisecond of year 9999, the end of what RFC 3339 can write.
const YEAR_9999_END: i64 = 253_402_300_799_999;

/// Validates `event` and checks the outcome's shape: a pass, or a known field and a message.
fn check_shape(
    event: &DeviceEvent,
    limits: &IngestConfig,
    now: UtcMillis,
) -> Result<(), TestCaseError> {
    if let Err(rejection) = super::event(event, limits, now) {
        prop_assert!(
            REJECT_REASONS.contains(&rejection.field),
            "unknown field {:?}",
            rejection.field
        );
        prop_assert!(!rejection.message.is_empty());
    }
    Ok(())
}

fn a_valid_batch() -> EventBatch {
    let lost = DeviceEvent {
        event_id: "csp-1/0001".into(),
        device_id: "00-db-12-34-56-78-90-a0".into(),
        phase: 2,
        mpan_core: Some("1234567890126".into()),
        kind: Some(Kind::Lost(SupplyLost {
            lost_at: Some(UtcMillis(NOW.0 - 5_000).to_proto()),
        })),
        alert_code: 0x8F36,
    };
    let restored = DeviceEvent {
        event_id: "csp-1/0002".into(),
        kind: Some(Kind::Restored(SupplyRestored {
            restored_at: Some(UtcMillis(NOW.0 - 1_000).to_proto()),
            lost_at: Some(UtcMillis(NOW.0 - 5_000).to_proto()),
        })),
        ..lost.clone()
    };
    EventBatch {
        events: vec![lost, restored],
        batch_id: 7,
    }
}

/// Decodes `bytes` as a batch and validates every event it holds, checking each outcome.
fn decode_and_validate(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(batch) = EventBatch::decode(bytes) {
        for event in &batch.events {
            check_shape(event, &IngestConfig::default(), NOW)?;
        }
    }
    Ok(())
}

/// Byte edits: overwrite, insert or delete at a position, or truncate.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<prop::sample::Index>().prop_map(Edit::Remove),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            Edit::Set(at, b) => {
                let i = at.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
            Edit::Remove(at) => {
                bytes.remove(at.index(bytes.len()));
            }
            Edit::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        }
    }
    bytes
}

/// Timestamps from anywhere: random, near `NOW`, at the edges of the representable range and
/// past year 9999, with nanos in and out of range.
fn any_timestamp() -> impl Strategy<Value = Timestamp> {
    let seconds = prop_oneof![
        any::<i64>(),
        (NOW.0 / 1000 - 30 * 24 * 3600)..(NOW.0 / 1000 + 30 * 24 * 3600),
        (-1_000_000_000_000i64..1_000_000_000_000),
        prop::sample::select(vec![
            i64::MIN,
            i64::MIN / 1000,
            -1,
            0,
            YEAR_9999_END / 1000,
            YEAR_9999_END / 1000 + 1,
            i64::MAX / 1000 - 1,
            i64::MAX / 1000,
            i64::MAX / 1000 + 1,
            i64::MAX,
        ]),
    ];
    let nanos = prop_oneof![
        any::<i32>(),
        0..1_000_000_000,
        prop::sample::select(vec![i32::MIN, -1, 0, 999_999_999, 1_000_000_000, i32::MAX]),
    ];
    (seconds, nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

fn any_kind() -> impl Strategy<Value = Option<Kind>> {
    let ts = || proptest::option::weighted(0.9, any_timestamp());
    prop_oneof![
        1 => Just(None),
        3 => ts().prop_map(|lost_at| Some(Kind::Lost(SupplyLost { lost_at }))),
        3 => (ts(), ts()).prop_map(|(restored_at, lost_at)| Some(Kind::Restored(
            SupplyRestored { restored_at, lost_at }
        ))),
    ]
}

fn any_event() -> impl Strategy<Value = DeviceEvent> {
    let event_id = prop_oneof![
        ".{0,200}",
        "[ -~]{126,130}",
        "\\PC{30,34}",
        Just(String::new())
    ];
    let device_id = prop_oneof![
        any::<u64>().prop_map(|raw| DeviceId(raw).to_string()),
        "[0-9a-fA-F:-]{14,25}",
        ".{0,30}",
        "[0-9a-f]{2}(-[0-9a-fß]{2}){7}",
    ];
    let phase = prop_oneof![any::<i32>(), -1..5];
    let mpan = proptest::option::of(prop_oneof![
        (0u64..1_000_000_000_000).prop_map(|first| valid_mpan(first).0),
        "[0-9]{13}",
        "[0-9]{0,15}",
        ".{0,20}",
    ]);
    (event_id, device_id, phase, mpan, any_kind(), any::<u32>()).prop_map(
        |(event_id, device_id, phase, mpan_core, kind, alert_code)| DeviceEvent {
            event_id,
            device_id,
            phase,
            mpan_core,
            kind,
            alert_code,
        },
    )
}

/// Limits from the defaults to the absurd (zero, `Duration::MAX`).
fn any_limits() -> impl Strategy<Value = IngestConfig> {
    let duration = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..10_000_000).prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ];
    (
        prop_oneof![Just(128usize), 0usize..300],
        duration.clone(),
        duration,
    )
        .prop_map(
            |(max_event_id_len, max_future_skew, max_event_age)| IngestConfig {
                max_event_id_len,
                max_future_skew,
                max_event_age,
                ..IngestConfig::default()
            },
        )
}

/// An MPAN core whose check digit is computed here, independently of `domain::mpan`: the
/// text and the value of its first 12 digits.
fn valid_mpan(first_twelve: u64) -> (String, u64) {
    const WEIGHTS: [u64; 12] = [3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43];
    let digits = format!("{first_twelve:012}");
    let sum: u64 = digits
        .bytes()
        .zip(WEIGHTS)
        .map(|(digit, weight)| u64::from(digit - b'0') * weight)
        .sum();
    (format!("{digits}{}", sum % 11 % 10), first_twelve)
}

/// An EUI-64 in any accepted spelling: dashes or colons, bare, any case.
fn device_text() -> impl Strategy<Value = (String, u64)> {
    (any::<u64>(), 0u8..3, any::<bool>()).prop_map(|(raw, style, upper)| {
        let bytes = raw.to_be_bytes().map(|b| format!("{b:02x}"));
        let text = match style {
            0 => bytes.join("-"),
            1 => bytes.join(":"),
            _ => bytes.concat(),
        };
        let text = if upper {
            text.to_ascii_uppercase()
        } else {
            text
        };
        (text, raw)
    })
}

/// Event ids within the default 128-byte limit, with no control characters.
fn valid_event_id() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{1,128}", "[\\PC&&[^ -~]]{1,32}", "[ -~é€😀]{1,32}"]
}

/// A time within the default limits of `NOW` (5 minutes ahead to 7 days back, both
/// inclusive), plus sub-millisecond nanos the conversion drops.
fn valid_time() -> impl Strategy<Value = (UtcMillis, Timestamp)> {
    let defaults = IngestConfig::default();
    let ahead = i64::try_from(defaults.max_future_skew.as_millis()).unwrap_or(0);
    let back = i64::try_from(defaults.max_event_age.as_millis()).unwrap_or(0);
    let millis = prop_oneof![
        (NOW.0 - back)..=(NOW.0 + ahead),
        prop::sample::select(vec![NOW.0 - back, NOW.0, NOW.0 + ahead]),
    ];
    (millis, 0i32..1_000_000).prop_map(|(millis, sub)| {
        let at = UtcMillis(millis);
        let mut ts = at.to_proto();
        ts.nanos += sub;
        (at, ts)
    })
}

#[derive(Debug, Clone)]
struct ValidCase {
    event: DeviceEvent,
    device: u64,
    mpan: Option<u64>,
    expected: EventKind,
}

fn valid_case() -> impl Strategy<Value = ValidCase> {
    let kind = prop_oneof![
        valid_time().prop_map(|(at, ts)| (
            Kind::Lost(SupplyLost { lost_at: Some(ts) }),
            EventKind::Lost { lost_at: at }
        )),
        (valid_time(), proptest::option::of(valid_time())).prop_map(|(a, b)| {
            // Order the two times so that the loss is not after the restoration.
            let (restored, lost) = match b {
                Some(b) if b.0 > a.0 => (b, Some(a)),
                other => (a, other),
            };
            (
                Kind::Restored(SupplyRestored {
                    restored_at: Some(restored.1),
                    lost_at: lost.as_ref().map(|l| l.1),
                }),
                EventKind::Restored {
                    restored_at: restored.0,
                    lost_at: lost.map(|l| l.0),
                },
            )
        }),
    ];
    (
        valid_event_id(),
        device_text(),
        0i32..=3,
        proptest::option::of(0u64..1_000_000_000_000),
        kind,
    )
        .prop_map(
            |(event_id, (device_id, device), phase, mpan, (kind, expected))| {
                let mpan = mpan.map(valid_mpan);
                ValidCase {
                    event: DeviceEvent {
                        event_id,
                        device_id,
                        phase,
                        mpan_core: mpan.as_ref().map(|m| m.0.clone()),
                        kind: Some(kind),
                        alert_code: 0,
                    },
                    device,
                    mpan: mpan.map(|m| m.1),
                    expected,
                }
            },
        )
}

const A_VALID_REGISTRY: &str = "device_id,mpan_core,gsp_group\n\
    00-db-12-34-56-78-90-a0,1234567890126,_C\n\
    00:DB:12:34:56:78:90:A1,2700000000425,_P\r\n\
    \"00db1234567890a2\",2300000000073,_M\n";

/// Registry-shaped text: a header or not, then rows of near-valid fields, quotes, blank
/// lines and line-end variants.
fn registry_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        device_text().prop_map(|d| d.0),
        (0u64..1_000_000_000_000).prop_map(|first| valid_mpan(first).0),
        "_?[A-Pa-p]",
        "[0-9]{13}",
        "[ \"a-f0-9,:_-]{0,24}",
        "\\PC{0,8}",
        Just(String::new()),
    ];
    let row = prop_oneof![
        prop::collection::vec(field, 0..5).prop_map(|fields| fields.join(",")),
        // A valid row: an IDNO MPAN (distributor 24 and up) may sit in any GSP group.
        (
            device_text(),
            240_000_000_000u64..1_000_000_000_000,
            "_[A-HJ-NP]"
        )
            .prop_map(|((device, _), first, gsp)| format!(
                "{device},{},{gsp}",
                valid_mpan(first).0
            )),
    ];
    let end = prop::sample::select(vec!["\n", "\r\n", "\r", "", "\n\n"]);
    let header = prop_oneof![
        4 => Just("device_id,mpan_core,gsp_group\n".to_owned()),
        1 => Just("\u{feff}device_id , mpan_core,gsp_group\r\n".to_owned()),
        1 => "[a-z_,]{0,40}\n?",
    ];
    (header, prop::collection::vec((row, end), 0..12)).prop_map(|(header, rows)| {
        let mut text = header;
        for (row, end) in rows {
            text.push_str(&row);
            text.push_str(end);
        }
        text
    })
}

/// Loads `bytes` as a registry: a load either round-trips through `write_csv`, or names bad
/// rows after the header, in file order.
fn check_registry(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Registry::from_reader(bytes, "fuzz") {
        Ok(registry) => {
            let mut written = Vec::new();
            prop_assert!(registry.write_csv(&mut written).is_ok());
            let reread = Registry::from_reader(written.as_slice(), "rewritten");
            prop_assert_eq!(reread.ok(), Some(registry));
        }
        Err(crate::route::registry::RegistryError::Rows { errors, total, .. }) => {
            prop_assert!(!errors.is_empty() && total >= errors.len());
            prop_assert!(errors.iter().all(|e| e.line >= 2));
            prop_assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
        }
        Err(_) => {}
    }
    Ok(())
}

const A_VALID_CONFIG: &str = r#"
listen = "127.0.0.1:50051"
metrics_listen = "127.0.0.1:9464"
registry = "/etc/outage-relay/registry.csv"
debounce = "3m"
poa_sla = "60s"
shards = 0
shard_queue = 256

[ingest]
max_batch_events = 10000
max_future_skew = "5m"
max_event_age = "7d"
max_event_id_len = 128

[store]
backend = "embedded"
maintenance_interval = "5s"
retention_max_age = "7d"

[delivery]
push_backoff_initial = "100ms"
push_backoff_max = "30s"

[routing]
idno_subscriber = "idno-hub"

[[routing.subscribers]]
name = "ukpn"
distributor_ids = [10, 12, 19]

[[routing.subscribers]]
name = "idno-hub"
distributor_ids = []
push = { endpoint = "http://10.0.0.5:50061" }
"#;

/// Text edits on characters, so the result stays a `&str`.
fn mutate_text(text: &str, edits: &[(prop::sample::Index, u8, String)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, op, insert) in edits {
        let i = at.index(chars.len() + 1);
        match op % 4 {
            0 => {
                chars.splice(i..i, insert.chars());
            }
            1 => {
                let end = (i + insert.len()).min(chars.len());
                chars.drain(i..end);
            }
            2 => {
                let end = (i + insert.chars().count()).min(chars.len());
                chars.splice(i..end, insert.chars());
            }
            _ => {
                let prefix: Vec<char> = chars[..i].to_vec();
                chars.extend(prefix);
            }
        }
    }
    chars.into_iter().collect()
}

fn parse_and_validate(text: &str) {
    if let Ok(config) = Config::from_toml(text) {
        let _ = config.validate();
    }
}

#[test]
fn the_seed_inputs_are_valid() {
    let batch = a_valid_batch();
    for event in &batch.events {
        assert!(super::event(event, &IngestConfig::default(), NOW).is_ok());
    }
    assert_eq!(
        Registry::from_reader(A_VALID_REGISTRY.as_bytes(), "seed")
            .expect("valid registry")
            .len(),
        3
    );
    Config::from_toml(A_VALID_CONFIG)
        .expect("parses")
        .validate()
        .expect("valid");
}

/// Found by the property above: formatting a time past year 9999 into the rejection message
/// panicked (humantime cannot write it), so one event could panic the ingest handler.
#[test]
fn a_time_past_year_9999_is_refused_not_a_panic() {
    let mut batch = a_valid_batch();
    let event = &mut batch.events[0];
    event.kind = Some(Kind::Lost(SupplyLost {
        lost_at: Some(Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        }),
    }));
    let rejection =
        super::event(event, &IngestConfig::default(), NOW).expect_err("far in the future");
    assert_eq!(rejection.field, "timestamp");
    assert!(
        rejection
            .message
            .starts_with("lost.lost_at 253402300800000 ms since the Unix epoch is more than"),
        "{}",
        rejection.message
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_decode_and_validate_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_and_validate(&bytes)?;
    }

    #[test]
    fn an_edited_valid_batch_decodes_and_validates_without_panic(
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        decode_and_validate(&apply(a_valid_batch().encode_to_vec(), &edits))?;
    }

    #[test]
    fn arbitrary_fields_pass_or_name_a_known_field(event in any_event()) {
        check_shape(&event, &IngestConfig::default(), NOW)?;
    }

    #[test]
    fn arbitrary_fields_limits_and_clocks_never_panic(
        event in any_event(),
        limits in any_limits(),
        now in prop_oneof![Just(NOW), any::<i64>().prop_map(UtcMillis)],
    ) {
        check_shape(&event, &limits, now)?;
    }

    #[test]
    fn valid_events_pass_unchanged(case in valid_case()) {
        let event = super::event(&case.event, &IngestConfig::default(), NOW);
        let event = match event {
            Ok(event) => event,
            Err(rejection) => return Err(TestCaseError::fail(format!("{rejection:?}"))),
        };
        let device = DeviceId(case.device);
        prop_assert_eq!(event.point.device, device);
        prop_assert_eq!(Some(event.point.phase), Phase::from_proto(case.event.phase));
        prop_assert_eq!(event.point.phase.to_proto(), case.event.phase);
        prop_assert_eq!(event.kind, case.expected);
        prop_assert_eq!(event.mpan.map(|m| m.value() / 10), case.mpan);
        prop_assert_eq!(event.key, EventKey::new(device, &case.event.event_id));
    }
}

proptest! {
    // Registry loads allocate a 64 KiB read buffer and configs parse whole TOML documents:
    // fewer cases keep these fast.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_the_registry(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check_registry(&bytes)?;
    }

    #[test]
    fn registry_shaped_text_loads_or_names_bad_rows(text in registry_text()) {
        check_registry(text.as_bytes())?;
    }

    #[test]
    fn an_edited_valid_registry_loads_or_names_bad_rows(
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        check_registry(&apply(A_VALID_REGISTRY.as_bytes().to_vec(), &edits))?;
    }

    #[test]
    fn arbitrary_text_never_panics_the_config(text in "\\PC{0,200}") {
        parse_and_validate(&text);
    }

    #[test]
    fn an_edited_valid_config_never_panics(
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), prop_oneof![
                "[\\[\\]{}=\"',.#\n 0-9a-z_-]{0,6}",
                "\\PC{0,4}",
                prop::sample::select(vec![
                    "\"99999999999999y\"", "-1", "18446744073709551616", "\"0s\"", "inf",
                    "[[routing.subscribers]]\nname=\"x\"\n", "[[[", "\"\\u0000\"",
                ]).prop_map(str::to_owned),
            ]),
            1..5,
        ),
    ) {
        parse_and_validate(&mutate_text(A_VALID_CONFIG, &edits));
    }
}
