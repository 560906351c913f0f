//! Tests of event validation: every field's rule, and properties over random input.

use proptest::prelude::*;

use super::*;
use crate::proto::{SupplyLost, SupplyRestored};

const NOW: UtcMillis = UtcMillis(1_764_000_000_000);

fn lost_event() -> proto::DeviceEvent {
    proto::DeviceEvent {
        event_id: "e-1".into(),
        device_id: "00-db-12-34-56-78-90-a0".into(),
        phase: 0,
        mpan_core: None,
        kind: Some(Kind::Lost(SupplyLost {
            lost_at: Some(UtcMillis(NOW.0 - 1_000).to_proto()),
        })),
        alert_code: 0,
    }
}

fn check(event: &proto::DeviceEvent) -> Result<DeviceEvent, Rejection> {
    super::event(event, &IngestConfig::default(), NOW)
}

fn field_of(event: &proto::DeviceEvent) -> &'static str {
    check(event).expect_err("should be rejected").field
}

#[test]
fn a_well_formed_loss_is_accepted() {
    let event = check(&lost_event()).expect("valid");
    assert_eq!(event.point.device, DeviceId(0x00db_1234_5678_90a0));
    assert_eq!(
        event.kind,
        EventKind::Lost {
            lost_at: UtcMillis(NOW.0 - 1_000)
        }
    );
}

#[test]
fn each_bad_field_is_named() {
    let mut e = lost_event();
    e.event_id = String::new();
    assert_eq!(field_of(&e), "event_id");
    e.event_id = "x".repeat(129);
    assert_eq!(field_of(&e), "event_id");
    e.event_id = "a\nb".into();
    assert_eq!(field_of(&e), "event_id");

    let mut e = lost_event();
    e.device_id = "00-db".into();
    assert_eq!(field_of(&e), "device_id");

    let mut e = lost_event();
    e.phase = 4;
    assert_eq!(field_of(&e), "phase");

    let mut e = lost_event();
    e.mpan_core = Some("1234567890127".into());
    let rejection = check(&e).expect_err("bad check digit");
    assert_eq!(rejection.field, "mpan_core");
    assert!(
        rejection.message.contains("check digit"),
        "{}",
        rejection.message
    );

    let mut e = lost_event();
    e.kind = None;
    assert_eq!(field_of(&e), "kind");
}

#[test]
fn timestamps_must_be_present_sane_and_ordered() {
    let mut e = lost_event();
    e.kind = Some(Kind::Lost(SupplyLost { lost_at: None }));
    assert!(check(&e).expect_err("missing").message.contains("missing"));

    e.kind = Some(Kind::Lost(SupplyLost {
        lost_at: Some(UtcMillis(NOW.0 + 10 * 60_000).to_proto()),
    }));
    assert!(
        check(&e)
            .expect_err("future")
            .message
            .contains("ahead of the relay clock")
    );

    e.kind = Some(Kind::Lost(SupplyLost {
        lost_at: Some(UtcMillis(NOW.0 - 8 * 24 * 3_600_000).to_proto()),
    }));
    assert!(check(&e).expect_err("old").message.contains("older than"));

    e.kind = Some(Kind::Restored(SupplyRestored {
        restored_at: Some(UtcMillis(NOW.0 - 60_000).to_proto()),
        lost_at: Some(NOW.to_proto()),
    }));
    assert!(check(&e).expect_err("order").message.contains("later than"));
}

#[test]
fn an_empty_mpan_is_treated_as_absent() {
    let mut e = lost_event();
    e.mpan_core = Some(String::new());
    assert_eq!(check(&e).expect("valid").mpan, None);
}

#[test]
fn the_event_key_depends_on_device_and_id() {
    let a = check(&lost_event()).expect("valid");
    let mut other_device = lost_event();
    other_device.device_id = "00-db-12-34-56-78-90-a1".into();
    let mut other_id = lost_event();
    other_id.event_id = "e-2".into();
    assert_ne!(a.key, check(&other_device).expect("valid").key);
    assert_ne!(a.key, check(&other_id).expect("valid").key);
    assert_eq!(a.key, check(&lost_event()).expect("valid").key);
}

proptest! {
    #[test]
    fn random_field_values_never_panic(
        id in ".{0,200}",
        device in ".{0,30}",
        phase in any::<i32>(),
        mpan in proptest::option::of(".{0,20}"),
        seconds in any::<i64>(),
        nanos in any::<i32>(),
    ) {
        let event = proto::DeviceEvent {
            event_id: id,
            device_id: device,
            phase,
            mpan_core: mpan,
            kind: Some(Kind::Restored(SupplyRestored {
                restored_at: Some(prost_types::Timestamp { seconds, nanos }),
                lost_at: Some(prost_types::Timestamp { seconds: seconds / 2, nanos }),
            })),
            alert_code: 0,
        };
        let _ = check(&event);
    }

    #[test]
    fn valid_events_always_pass(
        device in any::<u64>(),
        phase in 0i32..4,
        mpan_first in proptest::option::of(0u64..1_000_000_000_000),
        age_ms in 0i64..6 * 24 * 3_600_000,
        duration_ms in 0i64..3_600_000,
        id in "[a-zA-Z0-9_-]{1,64}",
    ) {
        let restored_at = UtcMillis(NOW.0 - age_ms);
        let event = proto::DeviceEvent {
            event_id: id,
            device_id: DeviceId(device).to_string(),
            phase,
            mpan_core: mpan_first.and_then(MpanCore::with_check_digit).map(|m| m.to_string()),
            kind: Some(Kind::Restored(SupplyRestored {
                restored_at: Some(restored_at.to_proto()),
                lost_at: Some(UtcMillis(restored_at.0 - duration_ms).to_proto()),
            })),
            alert_code: 0,
        };
        prop_assert!(check(&event).is_ok());
    }
}
