//! Tests of the CIM `EndDeviceEvents` messages: every field of a POA and a PRA, read back
//! with an XML parser, and the escaping of odd characters.

use std::collections::BTreeMap;

use super::super::tests::{T0, alert};
use super::*;

/// What a message says, read back with roxmltree.
#[derive(Debug)]
struct Parsed {
    mrid: String,
    created: Option<String>,
    reason: String,
    device: String,
    event_type: String,
    usage_point: String,
    name: String,
    name_type: String,
    details: BTreeMap<String, String>,
}

fn parse(xml: &str) -> anyhow::Result<Parsed> {
    let doc = roxmltree::Document::parse(xml)?;
    let root = doc.root_element();
    anyhow::ensure!(
        root.has_tag_name((NAMESPACE, "EndDeviceEvents")),
        "root {root:?}"
    );
    let events: Vec<_> = root.children().filter(|n| n.is_element()).collect();
    anyhow::ensure!(events.len() == 1, "one EndDeviceEvent: {events:?}");
    let event = events[0];
    anyhow::ensure!(event.has_tag_name((NAMESPACE, "EndDeviceEvent")));
    let mut details = BTreeMap::new();
    for detail in event
        .children()
        .filter(|n| n.has_tag_name((NAMESPACE, "EndDeviceEventDetails")))
    {
        let previous = details.insert(text(child(detail, "name")?), text(child(detail, "value")?));
        anyhow::ensure!(previous.is_none(), "a detail is repeated");
    }
    let usage_point = child(event, "UsagePoint")?;
    let names = child(usage_point, "Names")?;
    Ok(Parsed {
        mrid: text(child(event, "mRID")?),
        created: child(event, "createdDateTime").ok().map(text),
        reason: text(child(event, "reason")?),
        device: text(child(child(event, "Assets")?, "mRID")?),
        event_type: child(event, "EndDeviceEventType")?
            .attribute("ref")
            .unwrap_or_default()
            .to_owned(),
        usage_point: text(child(usage_point, "mRID")?),
        name: text(child(names, "name")?),
        name_type: text(child(child(names, "NameType")?, "name")?),
        details,
    })
}

/// The child element `name` of `parent`.
fn child<'a, 'input>(
    parent: roxmltree::Node<'a, 'input>,
    name: &str,
) -> anyhow::Result<roxmltree::Node<'a, 'input>> {
    parent
        .children()
        .find(|n| n.has_tag_name((NAMESPACE, name)))
        .ok_or_else(|| anyhow::anyhow!("no {name} in {}", parent.tag_name().name()))
}

fn text(node: roxmltree::Node<'_, '_>) -> String {
    node.text().unwrap_or_default().to_owned()
}

fn details(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn a_poa_is_a_power_down_event_with_every_field() -> anyhow::Result<()> {
    let xml = cim_message(&alert(7))?;
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        "{xml}"
    );
    assert!(!xml.contains('\n'), "one line: {xml}");
    let parsed = parse(&xml)?;
    assert_eq!(parsed.mrid, "poa-00db1234567890a0-0-7");
    assert_eq!(parsed.created.as_deref(), Some("2026-11-30T10:00:00.000Z"));
    assert_eq!(parsed.reason, "POWER_OUTAGE");
    assert_eq!(parsed.device, "00-db-12-34-56-78-90-a0");
    assert_eq!(parsed.event_type, "3.26.0.47");
    assert_eq!(parsed.usage_point, "1200012345671");
    assert_eq!(parsed.name, "1200012345671");
    assert_eq!(parsed.name_type, "MPAN");
    assert_eq!(
        parsed.details,
        details(&[
            ("sequence", "7"),
            ("subscriber", "ukpn"),
            ("distributor_id", "12"),
            ("gsp_group", "_C"),
            ("phase", "PHASE_UNSPECIFIED"),
            ("lost_at", "2026-11-30T10:00:00.000Z"),
            ("due_at", "2026-11-30T10:03:00.000Z"),
            ("deadline", "2026-11-30T10:04:00.000Z"),
            ("emitted_at", "2026-11-30T10:03:00.005Z"),
            ("learned_late", "false"),
        ])
    );
    Ok(())
}

#[test]
fn a_pra_is_a_power_up_event_with_its_duration() -> anyhow::Result<()> {
    let mut pra = alert(8);
    pra.alert_id = "pra-00db1234567890a0-2-8".to_owned();
    pra.kind = AlertKind::PowerRestoration as i32;
    pra.phase = Phase::Phase2 as i32;
    pra.restored_at = Some(UtcMillis(T0 + 600_000).to_proto());
    pra.outage_duration_ms = 600_000;
    pra.learned_late = true;
    pra.gsp_group = "_A".to_owned();
    pra.distributor_id = 10;
    let parsed = parse(&cim_message(&pra)?)?;
    assert_eq!(parsed.mrid, "pra-00db1234567890a0-2-8");
    assert_eq!(parsed.created.as_deref(), Some("2026-11-30T10:10:00.000Z"));
    assert_eq!(parsed.reason, "POWER_RESTORATION");
    assert_eq!(parsed.event_type, "3.26.0.216");
    assert_eq!(parsed.device, "00-db-12-34-56-78-90-a0");
    assert_eq!(parsed.usage_point, "1200012345671");
    assert_eq!(
        parsed.details,
        details(&[
            ("sequence", "8"),
            ("subscriber", "ukpn"),
            ("distributor_id", "10"),
            ("gsp_group", "_A"),
            ("phase", "PHASE_2"),
            ("lost_at", "2026-11-30T10:00:00.000Z"),
            ("restored_at", "2026-11-30T10:10:00.000Z"),
            ("due_at", "2026-11-30T10:03:00.000Z"),
            ("deadline", "2026-11-30T10:04:00.000Z"),
            ("emitted_at", "2026-11-30T10:03:00.005Z"),
            ("outage_duration_ms", "600000"),
            ("learned_late", "true"),
        ])
    );
    Ok(())
}

#[test]
fn odd_characters_are_escaped_and_the_message_stays_on_one_line() -> anyhow::Result<()> {
    let mut odd = alert(9);
    odd.alert_id = "<id> & \"quoted\" 'single'".to_owned();
    odd.subscriber = "line\nbreak\r\ttab \u{1} é </value>".to_owned();
    odd.mpan_core = "]]> <![CDATA[".to_owned();
    let xml = cim_message(&odd)?;
    assert!(!xml.contains('\n') && !xml.contains('\r'), "{xml}");
    assert!(
        xml.contains("&lt;id&gt; &amp; &quot;quoted&quot; &apos;single&apos;"),
        "{xml}"
    );
    let parsed = parse(&xml)?;
    assert_eq!(parsed.mrid, odd.alert_id);
    assert_eq!(
        parsed.details["subscriber"],
        "line\nbreak\r\ttab \u{FFFD} é </value>"
    );
    assert_eq!(parsed.usage_point, odd.mpan_core);
    assert_eq!(parsed.name, odd.mpan_core);
    Ok(())
}

#[test]
fn an_alert_without_a_time_or_a_kind() -> anyhow::Result<()> {
    let mut untimed = alert(10);
    untimed.lost_at = None;
    let parsed = parse(&cim_message(&untimed)?)?;
    assert_eq!(
        parsed.created, None,
        "createdDateTime is left out when unknown"
    );
    assert!(!parsed.details.contains_key("lost_at"));
    let mut odd = alert(11);
    odd.kind = 42;
    let error = cim_message(&odd).err().map(|err| err.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|err| err.contains("no CIM event type")),
        "{error:?}"
    );
    Ok(())
}
