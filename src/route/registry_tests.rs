use std::io::Write as _;

use super::*;

/// A valid MPAN core of `distributor`, varied by `n`.
fn mpan(distributor: u8, n: u64) -> MpanCore {
    MpanCore::with_check_digit(u64::from(distributor) * 10_000_000_000 + n).expect("12 digits")
}

fn gsp(text: &str) -> GspGroup {
    text.parse().expect("GSP group")
}

fn device(text: &str) -> DeviceId {
    text.parse().expect("device id")
}

fn load(text: &str) -> Result<Registry, RegistryError> {
    Registry::from_reader(text.as_bytes(), "registry.csv")
}

fn row_errors(text: &str) -> (Vec<(u64, String)>, usize) {
    match load(text) {
        Err(RegistryError::Rows { errors, total, .. }) => (
            errors.into_iter().map(|e| (e.line, e.reason)).collect(),
            total,
        ),
        other => panic!("expected row errors, got {other:?}"),
    }
}

#[test]
fn loads_a_well_formed_registry() {
    let idno = mpan(27, 42);
    let text = format!(
        "device_id,mpan_core,gsp_group\n\
         00-db-12-34-56-78-90-a0,1234567890126,_C\n  \
         00:DB:12:34:56:78:90:A1 , {idno} ,p\r\n\
         \"00db1234567890a2\",{},_M",
        mpan(23, 7)
    );
    let registry = load(&text).expect("loads");
    assert_eq!(registry.len(), 3);
    assert!(!registry.is_empty());
    assert_eq!(
        registry.get(device("00-db-12-34-56-78-90-a0")),
        Some(RegistryEntry {
            mpan: "1234567890126".parse().expect("valid"),
            gsp: gsp("_C"),
        })
    );
    assert_eq!(
        registry.get(device("00-db-12-34-56-78-90-a1")),
        Some(RegistryEntry {
            mpan: idno,
            gsp: gsp("_P"),
        })
    );
    assert_eq!(
        registry
            .get(device("00-db-12-34-56-78-90-a2"))
            .map(|e| e.mpan),
        Some(mpan(23, 7))
    );
    assert_eq!(registry.get(device("00-db-12-34-56-78-90-a3")), None);
}

#[test]
fn a_header_only_file_is_an_empty_registry() {
    for text in [
        "device_id,mpan_core,gsp_group",
        "device_id, mpan_core ,gsp_group\r\n",
    ] {
        let registry = load(text).expect("loads");
        assert!(registry.is_empty());
        assert_eq!(registry, Registry::empty());
    }
}

#[test]
fn every_kind_of_bad_row_is_reported_at_its_line() {
    let good = |n: u64| format!("00-00-00-00-00-00-00-{n:02x},{},_C", mpan(12, n));
    let text = [
        "device_id,mpan_core,gsp_group".to_owned(),            // 1
        good(1),                                               // 2
        "00-00-00-00-00-00-00-02,1234567890126".to_owned(),    // 3
        "00-00-00-00-00-00-00-zz,1234567890126,_C".to_owned(), // 4
        "00-00-00-00-00-00-00-04,123456789012,_C".to_owned(),  // 5
        "00-00-00-00-00-00-00-05,1234567890127,_C".to_owned(), // 6
        "00-00-00-00-00-00-00-06,1234567890126,_I".to_owned(), // 7
        "00-00-00-00-00-00-00-07,1234567890126,_A".to_owned(), // 8
        String::new(),                                         // 9
        good(1),                                               // 10
        "   ".to_owned(),                                      // 11
        "00-00-00-00-00-00-00-0c,1234567890126,_C,x".to_owned(), // 12
        good(13),                                              // 13
        String::new(),                                         // 14
        String::new(),                                         // the final newline, ending line 14
    ]
    .join("\n");
    let (errors, total) = row_errors(&text);
    let lines: Vec<u64> = errors.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]);
    assert_eq!(total, 11);
    let reason = |line: u64| {
        errors
            .iter()
            .find(|(l, _)| *l == line)
            .map(|(_, reason)| reason.as_str())
            .expect("reported")
    };
    assert_eq!(
        reason(3),
        "expected 3 fields (device_id,mpan_core,gsp_group), found 2"
    );
    assert!(
        reason(4).starts_with("device_id is not an EUI-64"),
        "{}",
        reason(4)
    );
    assert_eq!(reason(5), "mpan_core is not 13 digits");
    assert_eq!(reason(6), "mpan_core fails its check digit (expected 6)");
    assert!(
        reason(7).starts_with("gsp_group is not one of"),
        "{}",
        reason(7)
    );
    assert!(
        reason(8).contains("GSP group is _C, but gsp_group is _A"),
        "{}",
        reason(8)
    );
    assert_eq!(reason(9), "blank line");
    assert_eq!(
        reason(10),
        "device 00-00-00-00-00-00-00-01 is listed twice (lines 2 and 10)"
    );
    assert_eq!(reason(11), "blank line");
    assert!(reason(12).contains("found 4"), "{}", reason(12));
    assert_eq!(reason(14), "blank line");
}

#[test]
fn line_numbers_hold_with_crlf_and_multi_line_quoted_fields() {
    let text = "device_id,mpan_core,gsp_group\r\n\r\n\"00-00\n00\",1234567890126,_C\r\n\
                00-00-00-00-00-00-00-01,1234567890127,_C\r\n";
    let (errors, total) = row_errors(text);
    let lines: Vec<u64> = errors.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, [2, 3, 5]);
    assert_eq!(total, 3);
}

#[test]
fn a_device_listed_three_times_names_its_first_line_each_time() {
    let row = "00-db-12-34-56-78-90-a0,1234567890126,_C";
    let text = format!("device_id,mpan_core,gsp_group\n{row}\n{row}\n{row}\n");
    let (errors, total) = row_errors(&text);
    assert_eq!(total, 2);
    assert_eq!(
        errors,
        [
            (
                3,
                "device 00-db-12-34-56-78-90-a0 is listed twice (lines 2 and 3)".to_owned()
            ),
            (
                4,
                "device 00-db-12-34-56-78-90-a0 is listed twice (lines 2 and 4)".to_owned()
            ),
        ]
    );
}

#[test]
fn a_wrong_or_missing_header_is_refused() {
    for (text, found) in [
        ("", 0),
        ("\ndevice_id,mpan_core,gsp_group\n", 0),
        ("   \n", 0),
        ("device,mpan,gsp\n", 3),
        ("device_id,mpan_core,gsp_group,extra\n", 4),
        ("00-db-12-34-56-78-90-a0,1234567890126,_C\n", 3),
    ] {
        match load(text) {
            Err(RegistryError::Header {
                source_name,
                fields,
            }) => {
                assert_eq!(source_name, "registry.csv");
                assert_eq!(fields, found, "{text:?}");
            }
            other => panic!("{text:?}: expected a header error, got {other:?}"),
        }
    }
    assert!(load("\u{feff}device_id,mpan_core,gsp_group\n").is_ok());
}

#[test]
fn errors_are_capped_but_all_counted_and_displayed_one_per_line() {
    let mut text = String::from("device_id,mpan_core,gsp_group\n");
    for n in 0..150 {
        text.push_str(&format!(
            "00-00-00-00-00-00-{:02x}-{:02x},1234567890127,_C\n",
            n / 256,
            n % 256
        ));
    }
    let err = load(&text).expect_err("bad rows");
    let message = err.to_string();
    match err {
        RegistryError::Rows { errors, total, .. } => {
            assert_eq!(total, 150);
            assert_eq!(errors.len(), MAX_REPORTED_ROWS);
            assert_eq!(errors.last().map(|e| e.line), Some(101));
        }
        other => panic!("expected row errors, got {other:?}"),
    }
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(
        lines[0],
        "registry registry.csv: 150 bad rows, nothing loaded"
    );
    assert_eq!(
        lines[1],
        "registry.csv line 2: mpan_core fails its check digit (expected 6)"
    );
    assert_eq!(lines.len(), 102);
    assert_eq!(lines[101], "… and 50 more");
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(
        file,
        "device_id,mpan_core,gsp_group\n00-db-12-34-56-78-90-a0,1234567890126,_C"
    )
    .expect("write");
    let registry = Registry::load(file.path()).expect("loads");
    assert_eq!(registry.len(), 1);

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.csv");
    let err = Registry::load(&missing).expect_err("missing");
    assert!(matches!(err, RegistryError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.csv"), "{err}");
}

#[test]
fn write_csv_sorts_by_device_and_loads_back_identically() {
    let mut registry = Registry::empty();
    let entries = [
        ("00-00-00-00-00-00-00-02", mpan(10, 5), "_A"),
        ("00-00-00-00-00-00-00-01", mpan(31, 9), "_H"),
        ("ff-ff-ff-ff-ff-ff-ff-ff", mpan(99, 9_999_999_999), "_P"),
    ];
    for (id, mpan, group) in entries {
        let entry = RegistryEntry {
            mpan,
            gsp: gsp(group),
        };
        assert_eq!(registry.insert(device(id), entry), None);
    }
    let mut out = Vec::new();
    registry.write_csv(&mut out).expect("written");
    let text = String::from_utf8(out).expect("UTF-8");
    assert_eq!(
        text,
        format!(
            "device_id,mpan_core,gsp_group\n\
             00-00-00-00-00-00-00-01,{},_H\n\
             00-00-00-00-00-00-00-02,{},_A\n\
             ff-ff-ff-ff-ff-ff-ff-ff,{},_P\n",
            mpan(31, 9),
            mpan(10, 5),
            mpan(99, 9_999_999_999)
        )
    );
    assert_eq!(load(&text).expect("loads back"), registry);
    assert_eq!(format!("{registry:?}"), "Registry { devices: 3 }");
}

#[test]
fn insert_replaces_and_returns_the_previous_entry() {
    let mut registry = Registry::empty();
    let first = RegistryEntry {
        mpan: mpan(12, 1),
        gsp: gsp("_C"),
    };
    let second = RegistryEntry {
        mpan: mpan(28, 2),
        gsp: gsp("_G"),
    };
    let id = device("00-db-12-34-56-78-90-a0");
    assert_eq!(registry.insert(id, first), None);
    assert_eq!(registry.insert(id, second), Some(first));
    assert_eq!(registry.get(id), Some(second));
    assert_eq!(registry.iter().collect::<Vec<_>>(), [(id, second)]);
}

#[test]
fn no_error_quotes_what_the_file_holds() {
    const SECRET: &str = "root:x:0:0:root:/root:/bin/bash";
    let not_a_registry = format!("{SECRET}\nanother line\n");
    let err = load(&not_a_registry).expect_err("not a registry");
    assert_eq!(
        err.to_string(),
        "registry registry.csv line 1: not the header \"device_id,mpan_core,gsp_group\" or \
         \"device_id,mpan_core,gsp_group,substation_id,feeder_id\" (1 field)"
    );
    let rows = [
        SECRET.to_owned(),
        format!("{SECRET},1234567890126,_C"),
        format!("00-db-12-34-56-78-90-a0,{SECRET},_C"),
        format!("00-db-12-34-56-78-90-a1,1234567890126,{SECRET}"),
        format!("00-db-12-34-56-78-90-a2,1234567890126,_C,{SECRET}"),
    ];
    let text = format!("device_id,mpan_core,gsp_group\n{}\n", rows.join("\n"));
    let err = load(&text).expect_err("bad rows");
    let message = err.to_string();
    assert!(!message.contains("root"), "{message}");
    for line in 2..=6 {
        assert!(message.contains(&format!("line {line}: ")), "{message}");
    }
}

#[test]
fn a_five_column_registry_names_each_devices_feeder_and_counts_its_supplies() {
    let text = format!(
        "device_id,mpan_core,gsp_group,substation_id,feeder_id\n\
         00-00-00-00-00-00-00-01,{},_C, SS-1 ,F1\n\
         00-00-00-00-00-00-00-02,{},_C,SS-1,F1\n\
         00-00-00-00-00-00-00-03,{},_C,SS-2,F1\n\
         00-00-00-00-00-00-00-04,{},_C,,\n",
        mpan(12, 1),
        mpan(12, 2),
        mpan(12, 3),
        mpan(12, 4)
    );
    let registry = load(&text).expect("loads");
    assert_eq!(registry.len(), 4);
    let feeder = |n: &str| {
        registry
            .feeder_of(device(n))
            .and_then(|id| registry.feeder(id))
            .map(|f| (f.substation.to_owned(), f.feeder.to_owned(), f.supplies))
    };
    assert_eq!(
        feeder("00-00-00-00-00-00-00-01"),
        Some(("SS-1".into(), "F1".into(), 2))
    );
    assert_eq!(
        registry.feeder_of(device("00-00-00-00-00-00-00-01")),
        registry.feeder_of(device("00-00-00-00-00-00-00-02"))
    );
    assert_eq!(
        feeder("00-00-00-00-00-00-00-03"),
        Some(("SS-2".into(), "F1".into(), 1))
    );
    assert_eq!(feeder("00-00-00-00-00-00-00-04"), None);
    assert_eq!(
        registry.get(device("00-00-00-00-00-00-00-03")),
        Some(RegistryEntry {
            mpan: mpan(12, 3),
            gsp: gsp("_C"),
        }),
        "the feeder index leaves the packed entry intact"
    );
    let mut out = Vec::new();
    registry.write_csv(&mut out).expect("written");
    let written = String::from_utf8(out).expect("UTF-8");
    assert!(written.starts_with(HEADER_WITH_FEEDERS), "{written}");
    assert_eq!(load(&written).expect("loads back"), registry);
    assert_eq!(
        format!("{registry:?}"),
        "Registry { devices: 4, feeders: 2 }"
    );
}

#[test]
fn feeder_columns_are_checked_row_by_row() {
    let long = "x".repeat(65);
    let text = format!(
        "device_id,mpan_core,gsp_group,substation_id,feeder_id\n\
         00-00-00-00-00-00-00-01,{},_C,SS-1,\n\
         00-00-00-00-00-00-00-02,{},_C\n\
         00-00-00-00-00-00-00-03,{},_C,{long},F1\n\
         00-00-00-00-00-00-00-04,{},_C,SS-1,F1\n",
        mpan(12, 1),
        mpan(12, 2),
        mpan(12, 3),
        mpan(12, 4)
    );
    let (errors, total) = row_errors(&text);
    assert_eq!(total, 3);
    assert_eq!(
        errors,
        [
            (
                2,
                "substation_id and feeder_id must be both given or both empty".to_owned()
            ),
            (
                3,
                "expected 5 fields (device_id,mpan_core,gsp_group,substation_id,feeder_id), \
                 found 3"
                    .to_owned()
            ),
            (4, "substation_id is longer than 64 bytes".to_owned()),
        ]
    );
    let three = format!(
        "device_id,mpan_core,gsp_group\n00-00-00-00-00-00-00-01,{},_C,SS-1,F1\n",
        mpan(12, 1)
    );
    let (errors, _) = row_errors(&three);
    assert_eq!(
        errors,
        [(
            2,
            "expected 3 fields (device_id,mpan_core,gsp_group), found 5".to_owned()
        )]
    );
}

#[test]
fn insert_on_feeder_registers_a_new_device_only() {
    let mut registry = Registry::empty();
    let entry = RegistryEntry {
        mpan: mpan(12, 1),
        gsp: gsp("_C"),
    };
    let id = device("00-db-12-34-56-78-90-a0");
    assert!(registry.insert_on_feeder(id, entry, "SS-1", "F1"));
    assert!(!registry.insert_on_feeder(id, entry, "SS-1", "F2"));
    assert_eq!(registry.get(id), Some(entry));
    let feeder = registry.feeder_of(id).and_then(|f| registry.feeder(f));
    assert_eq!(feeder.map(|f| (f.feeder, f.supplies)), Some(("F1", 1)));

    // A loaded registry (its name maps dropped) still interns an added device's feeder.
    let text = format!(
        "{HEADER_WITH_FEEDERS}\n00-00-00-00-00-00-00-01,{},_C,SS-1,F1\n",
        mpan(12, 2)
    );
    let mut loaded = load(&text).expect("loads");
    let other = device("00-00-00-00-00-00-00-02");
    assert!(loaded.insert_on_feeder(other, entry, "SS-1", "F1"));
    let id = loaded.feeder_of(other).expect("on a feeder");
    assert_eq!(
        loaded.feeder_of(device("00-00-00-00-00-00-00-01")),
        Some(id)
    );
    assert_eq!(loaded.feeder(id).map(|f| f.supplies), Some(2));
}
