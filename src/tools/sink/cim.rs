//! The alert as an IEC 61968-9 `EndDeviceEvents` message (CIM XML), for `--format cim`.
//!
//! One standalone document per alert, on one line: newlines and carriage returns inside
//! values are written as character references, and characters XML 1.0 cannot carry at all
//! (other C0 controls, U+FFFE, U+FFFF) are replaced with U+FFFD.

use std::borrow::Cow;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::*;
use crate::proto::Phase;

/// The namespace of IEC 61968-9 (2011) `EndDeviceEvents` messages.
pub(super) const NAMESPACE: &str = "http://iec.ch/TC57/2011/EndDeviceEvents#";
/// `EndDeviceEventType` of a power outage alert (POA): electric meter (3), power (26), no
/// subdomain (0), power down / loss detected (47).
pub(super) const POWER_DOWN: &str = "3.26.0.47";
/// `EndDeviceEventType` of a power restoration alert (PRA): electric meter (3), power (26),
/// no subdomain (0), power up / restored (216).
pub(super) const POWER_UP: &str = "3.26.0.216";

/// The alert's `EndDeviceEvents` document (without a trailing newline). Fails for an alert
/// whose kind has no event type.
pub(super) fn cim_message(alert: &Alert) -> io::Result<String> {
    let (event_type, event_time) = match AlertKind::try_from(alert.kind) {
        Ok(AlertKind::PowerOutage) => (POWER_DOWN, alert.lost_at.as_ref()),
        Ok(AlertKind::PowerRestoration) => (POWER_UP, alert.restored_at.as_ref()),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "alert {:?} has kind {}, which has no CIM event type",
                    alert.alert_id, alert.kind
                ),
            ));
        }
    };
    let mut xml = Xml(Writer::new(Vec::new()));
    xml.0
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    xml.0.write_event(Event::Start(
        BytesStart::new("EndDeviceEvents").with_attributes([("xmlns", NAMESPACE)]),
    ))?;
    xml.start("EndDeviceEvent")?;
    xml.leaf("mRID", &alert.alert_id)?;
    if let Some(at) = rfc3339(event_time) {
        xml.leaf("createdDateTime", &at)?;
    }
    xml.leaf(
        "reason",
        AlertKind::try_from(alert.kind).map_or("", |kind| kind.as_str_name()),
    )?;
    xml.start("Assets")?;
    xml.leaf("mRID", &alert.device_id)?;
    xml.end("Assets")?;
    for (name, value) in details(alert) {
        xml.start("EndDeviceEventDetails")?;
        xml.leaf("name", name)?;
        xml.leaf("value", &value)?;
        xml.end("EndDeviceEventDetails")?;
    }
    xml.0.write_event(Event::Empty(
        BytesStart::new("EndDeviceEventType").with_attributes([("ref", event_type)]),
    ))?;
    xml.start("UsagePoint")?;
    xml.leaf("mRID", &alert.mpan_core)?;
    xml.start("Names")?;
    xml.leaf("name", &alert.mpan_core)?;
    xml.start("NameType")?;
    xml.leaf("name", "MPAN")?;
    xml.end("NameType")?;
    xml.end("Names")?;
    xml.end("UsagePoint")?;
    xml.end("EndDeviceEvent")?;
    xml.end("EndDeviceEvents")?;
    String::from_utf8(xml.0.into_inner()).map_err(io::Error::other)
}

/// The alert's fields that CIM has no element for, as `EndDeviceEventDetails` name/value
/// pairs; unset timestamps are left out, `outage_duration_ms` is given for restorations.
fn details(alert: &Alert) -> Vec<(&'static str, String)> {
    let mut details = vec![
        ("sequence", alert.sequence.to_string()),
        ("subscriber", alert.subscriber.clone()),
        ("distributor_id", alert.distributor_id.to_string()),
        ("gsp_group", alert.gsp_group.clone()),
        (
            "phase",
            Phase::try_from(alert.phase).map_or_else(
                |_| alert.phase.to_string(),
                |phase| phase.as_str_name().to_owned(),
            ),
        ),
    ];
    let times = [
        ("lost_at", alert.lost_at.as_ref()),
        ("restored_at", alert.restored_at.as_ref()),
        ("due_at", alert.due_at.as_ref()),
        ("deadline", alert.deadline.as_ref()),
        ("emitted_at", alert.emitted_at.as_ref()),
    ];
    for (name, at) in times {
        if let Some(at) = rfc3339(at) {
            details.push((name, at));
        }
    }
    if alert.kind == AlertKind::PowerRestoration as i32 {
        details.push(("outage_duration_ms", alert.outage_duration_ms.to_string()));
    }
    details.push(("learned_late", alert.learned_late.to_string()));
    details
}

/// A timestamp as the JSON record writes it (RFC 3339, UTC, milliseconds).
fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.and_then(UtcMillis::from_proto).map(|at| at.to_string())
}

/// A quick-xml writer with element helpers.
struct Xml(Writer<Vec<u8>>);

impl Xml {
    fn start(&mut self, name: &str) -> io::Result<()> {
        self.0.write_event(Event::Start(BytesStart::new(name)))
    }

    fn end(&mut self, name: &str) -> io::Result<()> {
        self.0.write_event(Event::End(BytesEnd::new(name)))
    }

    /// `<name>text</name>`, the text escaped (see [`escape_text`]).
    fn leaf(&mut self, name: &str, text: &str) -> io::Result<()> {
        self.start(name)?;
        self.0
            .write_event(Event::Text(BytesText::from_escaped(escape_text(text))))?;
        self.end(name)
    }
}

/// Escapes element text: quick-xml's escaping of `<`, `>`, `&`, `'` and `"`, plus newlines
/// and carriage returns as character references (so a message stays on one line) and
/// characters XML 1.0 does not allow replaced with U+FFFD.
fn escape_text(text: &str) -> Cow<'_, str> {
    let escaped = quick_xml::escape::escape(text);
    if !escaped
        .chars()
        .any(|c| c == '\n' || c == '\r' || !allowed_in_xml(c))
    {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for c in escaped.chars() {
        match c {
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if allowed_in_xml(c) => out.push(c),
            _ => out.push(char::REPLACEMENT_CHARACTER),
        }
    }
    Cow::Owned(out)
}

/// Whether XML 1.0 allows `c` in a document (its `Char` production).
fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
#[path = "cim_tests.rs"]
mod tests;
