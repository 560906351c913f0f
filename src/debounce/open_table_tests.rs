//! The packed table behaves as the `HashMap` it replaces, under any mix of operations.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, i64, bool),
    Remove(u8),
    Alert(u8),
}

fn point(n: u8) -> SupplyPoint {
    SupplyPoint {
        device: DeviceId(u64::from(n / 4) * 0x1_0000_0001),
        phase: [Phase::Whole, Phase::L1, Phase::L2, Phase::L3][usize::from(n % 4)],
    }
}

fn outage(lost_at: i64, with_mpan: bool) -> OpenOutage {
    OpenOutage {
        lost_at: UtcMillis(lost_at),
        received_at: UtcMillis(lost_at + 7),
        state: OutageState::Pending,
        mpan: with_mpan
            .then(|| MpanCore::with_check_digit(1_200_000_000_000 + lost_at.unsigned_abs() % 1000))
            .flatten(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..48, any::<i64>(), any::<bool>()).prop_map(|(p, t, m)| Op::Insert(p, t >> 2, m)),
        2 => (0u8..48).prop_map(Op::Remove),
        1 => (0u8..48).prop_map(Op::Alert),
    ]
}

proptest! {
    #[test]
    fn it_answers_as_a_hash_map_does(ops in proptest::collection::vec(op(), 0..400)) {
        let mut table = OpenOutages::new();
        let mut model: HashMap<SupplyPoint, OpenOutage> = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(p, at, mpan) => {
                    let o = outage(at, mpan);
                    prop_assert_eq!(table.insert(point(p), o), model.insert(point(p), o));
                }
                Op::Remove(p) => {
                    prop_assert_eq!(table.remove(&point(p)), model.remove(&point(p)));
                }
                Op::Alert(p) => {
                    let modelled = model.get_mut(&point(p)).map(|o| o.state = OutageState::Alerted);
                    prop_assert_eq!(table.set_state(&point(p), OutageState::Alerted), modelled.is_some());
                }
            }
            prop_assert_eq!(table.len(), model.len());
            for n in 0..48 {
                prop_assert_eq!(table.get(&point(n)), model.get(&point(n)).copied());
                prop_assert_eq!(table.contains(&point(n)), model.contains_key(&point(n)));
            }
        }
        let mut listed: Vec<(SupplyPoint, OpenOutage)> = table.iter().collect();
        let mut expected: Vec<(SupplyPoint, OpenOutage)> = model.into_iter().collect();
        listed.sort_by_key(|(p, _)| *p);
        expected.sort_by_key(|(p, _)| *p);
        prop_assert_eq!(listed, expected);
    }
}

#[test]
fn a_row_is_forty_bytes() {
    assert_eq!(std::mem::size_of::<Row>(), 40);
}

#[test]
fn reserving_keeps_what_is_there() {
    let mut table = OpenOutages::new();
    table.insert(point(1), outage(5, true));
    table.reserve(10_000);
    assert!(table.allocated_bytes() >= 10_000 * 44);
    assert_eq!(table.get(&point(1)), Some(outage(5, true)));
    assert_eq!(table.len(), 1);
}
