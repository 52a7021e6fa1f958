//! Canonical events: CloudEvents 1.0 in JSON, the one shape every event on the bus takes.
//!
//! A [`CanonicalEvent`] is what a listener is handed and what `bus.emit` publishes. On the
//! wire it is the CloudEvents JSON format (`specversion` `1.0`; `data` inline when the payload
//! is JSON, `data_base64` otherwise). Parsing is strict where the platform relies on an
//! attribute (`id`, `source`, `type`) and says exactly what is wrong, so a bad event is
//! rejected with a reason instead of half-handled.

use crate::bindings::types::Event as WitEvent;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

mod binary;
pub use binary::{
    ATTRIBUTE_HEADER_PREFIX, CONTENT_TYPE_HEADER, ContentMode, STRUCTURED_CONTENT_TYPE,
};

/// The CloudEvents spec version this host reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// The de-duplication key of an event with `source` and `id`, sent as [`MSG_ID_HEADER`] when
/// it is published: the stream keeps one event per key within its duplicate window.
///
/// CloudEvents makes an id unique per source, so the key is both, written without ambiguity
/// (`<source length>:<source><id>`). Keyed by id alone, anyone who may publish an event could
/// claim the id of an event a daemon will emit (a run's `sandbus.lease.released`, the next
/// `sandbus.metering`) and have the daemon's real event dropped as a duplicate; no one but a
/// daemon publishes with a daemon's source.
pub fn dedup_key(source: &str, id: &str) -> String {
    format!("{}:{source}{id}", source.len())
}

/// The header the bus de-duplicates on: an event is published with its [`dedup_key`] here,
/// a dead letter with its listener and sequence, and a guest may set it on a publish (the
/// one reserved header it may set).
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The CloudEvents extension attribute that carries [`CanonicalEvent::depth`].
pub const DEPTH_ATTRIBUTE: &str = "sandbusdepth";

/// Deepest chain of listener hops an event may be at: an event emitted while handling an
/// event of this depth is refused. A listener that emits the type it listens to (directly,
/// or through others) would otherwise grow the stream without end.
pub const MAX_DEPTH: u32 = 8;

/// Longest attribute accepted (`id`, `source`, `type`, `subject`, `time`,
/// `datacontenttype`), in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// A CloudEvents 1.0 event with its payload as raw bytes.
///
/// `data` holds the payload exactly as a listener sees it: for a JSON event, the JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalEvent {
    /// Unique per `source`; stable across redeliveries, so listeners de-duplicate on it.
    pub id: String,
    /// Who produced the event, a URI reference such as `/hosts/lab-7`.
    pub source: String,
    /// What happened, dot separated, such as `vm.started`.
    pub ty: String,
    /// What the event is about, within the source.
    pub subject: Option<String>,
    /// When it happened, RFC 3339.
    pub time: Option<String>,
    /// Media type of `data`.
    pub datacontenttype: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
    /// How many listener hops led here: 0 for an event a publisher or a daemon sent, `n + 1`
    /// for one a listener emitted while handling an event of depth `n`. Set by the host,
    /// never by the guest (the WIT event has no such field); on the wire it is the
    /// CloudEvents extension attribute [`DEPTH_ATTRIBUTE`], absent when 0. See [`MAX_DEPTH`].
    pub depth: u32,
}

/// Why a canonical event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The text is not JSON, or not a JSON object.
    #[error("not a CloudEvents JSON object: {0}")]
    NotJson(String),
    /// A required attribute is absent or empty.
    #[error("attribute `{0}` is required and must be a non-empty string")]
    Missing(&'static str),
    /// `specversion` is not `1.0`.
    #[error("specversion must be \"1.0\", found {0}")]
    SpecVersion(String),
    /// An attribute has the wrong JSON type or an invalid value.
    #[error("attribute `{name}` is invalid: {reason}")]
    Invalid {
        /// The attribute.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A binary-mode header cannot be read as an attribute (a value that is not UTF-8 once
    /// percent-decoded, an attribute given twice).
    #[error("header `{header}` is invalid: {reason}")]
    Header {
        /// The header, as the message named it.
        header: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The JSON wire form, used only for (de)serialisation.
#[derive(Serialize, Deserialize)]
struct Wire {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    ty: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<Value>,
    /// Kept as raw JSON text so a JSON payload reaches the guest byte for byte (key order,
    /// number precision and all), and an emitted one reaches the bus as the guest wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbusdepth: Option<u32>,
}

/// The JSON wire form for parsing: every attribute borrowed as raw JSON text, so a parse
/// allocates only the strings it keeps (this is on the path of every delivered event).
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    subject: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    datacontenttype: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    data_base64: Option<&'a RawValue>,
    #[serde(borrow)]
    sandbusdepth: Option<&'a RawValue>,
}

/// What a raw attribute holds.
enum Attr {
    Absent,
    Text(String),
    Other(String),
}

fn attr(raw: Option<&RawValue>) -> Result<Attr, EventError> {
    let Some(raw) = raw else {
        return Ok(Attr::Absent);
    };
    let text = raw.get();
    if text == "null" {
        return Ok(Attr::Absent);
    }
    if text.starts_with('"') {
        return serde_json::from_str::<std::borrow::Cow<'_, str>>(text)
            .map(|s| Attr::Text(s.into_owned()))
            .map_err(|e| EventError::NotJson(e.to_string()));
    }
    Ok(Attr::Other(text.to_owned()))
}

fn required_attr(name: &'static str, raw: Option<&RawValue>) -> Result<String, EventError> {
    match attr(raw)? {
        Attr::Text(s) if !s.is_empty() => Ok(s),
        Attr::Text(_) | Attr::Absent => Err(EventError::Missing(name)),
        Attr::Other(other) => Err(EventError::Invalid {
            name,
            reason: format!("must be a string, found {other}"),
        }),
    }
}

fn optional_attr(name: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, EventError> {
    match attr(raw)? {
        Attr::Absent => Ok(None),
        Attr::Text(s) => Ok(Some(s)),
        Attr::Other(other) => Err(EventError::Invalid {
            name,
            reason: format!("must be a string, found {other}"),
        }),
    }
}

impl CanonicalEvent {
    /// Parses one CloudEvents JSON object (structured mode).
    ///
    /// `data` that is a JSON value becomes its JSON text (a JSON string becomes the string's
    /// JSON text too, quotes included, so the bytes round-trip); `data_base64` is decoded.
    pub fn from_json(text: &[u8]) -> Result<Self, EventError> {
        let wire: WireIn<'_> =
            serde_json::from_slice(text).map_err(|e| EventError::NotJson(e.to_string()))?;
        match attr(wire.specversion)? {
            Attr::Text(v) if v == SPEC_VERSION => {}
            Attr::Text(v) => return Err(EventError::SpecVersion(format!("{v:?}"))),
            Attr::Other(other) => return Err(EventError::SpecVersion(other)),
            Attr::Absent => return Err(EventError::Missing("specversion")),
        }
        let datacontenttype = optional_attr("datacontenttype", wire.datacontenttype)?;
        let data = match (wire.data, wire.data_base64) {
            (Some(_), Some(_)) => {
                return Err(EventError::Invalid {
                    name: "data_base64",
                    reason: "an event carries `data` or `data_base64`, not both".into(),
                });
            }
            // For a non-JSON media type a string `data` is the payload itself (text/plain).
            (Some(raw), None)
                if !json_media_type(datacontenttype.as_deref()) && raw.get().starts_with('"') =>
            {
                serde_json::from_str::<String>(raw.get())
                    .map_err(|e| EventError::Invalid {
                        name: "data",
                        reason: e.to_string(),
                    })?
                    .into_bytes()
            }
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(raw)) => match attr(Some(raw))? {
                Attr::Text(b64) => BASE64.decode(b64).map_err(|e| EventError::Invalid {
                    name: "data_base64",
                    reason: e.to_string(),
                })?,
                Attr::Absent => Vec::new(),
                Attr::Other(_) => {
                    return Err(EventError::Invalid {
                        name: "data_base64",
                        reason: "must be a base64 string".into(),
                    });
                }
            },
            (None, None) => Vec::new(),
        };
        let event = Self {
            id: required_attr("id", wire.id)?,
            source: required_attr("source", wire.source)?,
            ty: required_attr("type", wire.ty)?,
            subject: optional_attr("subject", wire.subject)?,
            time: optional_attr("time", wire.time)?,
            datacontenttype,
            data,
            depth: depth_attr(wire.sandbusdepth)?,
        };
        event.validate()?;
        Ok(event)
    }

    /// Serialises to CloudEvents JSON: `data` inline when it is JSON, `data_base64` otherwise.
    pub fn to_json(&self) -> Vec<u8> {
        let inline = if self.data.is_empty() {
            None
        } else if self.is_json_content() {
            String::from_utf8(self.data.clone())
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
        } else if self.is_text_content() {
            std::str::from_utf8(&self.data)
                .ok()
                .and_then(|t| serde_json::to_string(t).ok())
                .and_then(|quoted| RawValue::from_string(quoted).ok())
        } else {
            None
        };
        let data_base64 = match (&inline, self.data.is_empty()) {
            (None, false) => Some(Value::String(BASE64.encode(&self.data))),
            _ => None,
        };
        let wire = Wire {
            specversion: Some(Value::String(SPEC_VERSION.into())),
            id: Some(Value::String(self.id.clone())),
            source: Some(Value::String(self.source.clone())),
            ty: Some(Value::String(self.ty.clone())),
            subject: self.subject.clone().map(Value::String),
            time: self.time.clone().map(Value::String),
            datacontenttype: self.datacontenttype.clone().map(Value::String),
            data: inline,
            data_base64,
            sandbusdepth: (self.depth > 0).then_some(self.depth),
        };
        // Serialising a struct of strings and `Value`s cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Checks the attributes the platform relies on.
    ///
    /// `type` must be a dotted name usable as a subject suffix (`events.<type>`): tokens of
    /// `[A-Za-z0-9_-]`, no wildcards, no empty token.
    pub fn validate(&self) -> Result<(), EventError> {
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(EventError::Missing(name));
            }
        }
        let optional = [
            ("subject", &self.subject),
            ("time", &self.time),
            ("datacontenttype", &self.datacontenttype),
        ];
        let attributes = [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ]
        .into_iter()
        .chain(
            optional
                .into_iter()
                .filter_map(|(n, v)| v.as_ref().map(|v| (n, v))),
        );
        for (name, value) in attributes {
            if value.len() > MAX_ATTRIBUTE_LEN {
                return Err(EventError::Invalid {
                    name,
                    reason: format!("longer than {MAX_ATTRIBUTE_LEN} bytes"),
                });
            }
            // Attributes travel in headers (`Nats-Msg-Id` is made of the source and the id)
            // and in log lines: one line of text each.
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(EventError::Invalid {
                    name,
                    reason: format!("contains the control character {c:?}"),
                });
            }
        }
        if let Err(e) = crate::subject::validate_event_type(&self.ty) {
            return Err(EventError::Invalid {
                name: "type",
                reason: e.message,
            });
        }
        if let Some(time) = &self.time
            && humantime::parse_rfc3339_weak(time).is_err()
            && humantime::parse_rfc3339(time).is_err()
            && !looks_like_rfc3339_with_offset(time)
        {
            return Err(EventError::Invalid {
                name: "time",
                reason: format!("`{time}` is not an RFC 3339 timestamp"),
            });
        }
        Ok(())
    }

    /// Checks that this event, read from a message on `subject`, is what that subject says:
    /// its type's subject is `subject` (`events.<type>`), and it claims a daemon as its source
    /// only on a host event's subject. A listener hands on nothing else: an event whose body
    /// says `sandbus.lease.released` on `events.vm.forged` is not a host event, and must not
    /// be charged as one.
    pub fn check_arrival(&self, subject: &str) -> Result<(), EventError> {
        let expected = crate::subject::event_subject(&self.ty);
        if expected != subject {
            return Err(EventError::Invalid {
                name: "type",
                reason: format!(
                    "the type `{}` does not match the subject `{}` it arrived on (an event of \
                     that type is published on `{}`)",
                    crate::text::echo(&self.ty),
                    crate::text::echo(subject),
                    crate::text::echo(&expected)
                ),
            });
        }
        if self.source.starts_with(crate::subject::HOST_SOURCE_PREFIX)
            && !crate::subject::is_host_event_type(&self.ty)
        {
            return Err(EventError::Invalid {
                name: "source",
                reason: format!(
                    "`{}` names a sandbus daemon, which emits only `{}.*` events",
                    crate::text::echo(&self.source),
                    crate::subject::HOST_EVENT_PREFIX
                ),
            });
        }
        Ok(())
    }

    /// Its de-duplication key ([`dedup_key`]).
    pub fn dedup_key(&self) -> String {
        dedup_key(&self.source, &self.id)
    }

    /// Whether `datacontenttype` says JSON (absent counts as JSON, as CloudEvents does).
    pub fn is_json_content(&self) -> bool {
        json_media_type(self.datacontenttype.as_deref())
    }

    /// Whether `datacontenttype` is a `text/*` type other than JSON.
    pub fn is_text_content(&self) -> bool {
        !self.is_json_content()
            && self
                .datacontenttype
                .as_deref()
                .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("text/"))
    }

    /// Size of the event as a guest receives it, for the payload limit.
    pub fn size(&self) -> usize {
        self.id.len()
            + self.source.len()
            + self.ty.len()
            + self.subject.as_ref().map_or(0, String::len)
            + self.time.as_ref().map_or(0, String::len)
            + self.datacontenttype.as_ref().map_or(0, String::len)
            + self.data.len()
    }
}

impl From<CanonicalEvent> for WitEvent {
    fn from(e: CanonicalEvent) -> Self {
        WitEvent {
            id: e.id,
            source: e.source,
            type_: e.ty,
            subject: e.subject,
            time: e.time,
            datacontenttype: e.datacontenttype,
            data: e.data,
        }
    }
}

impl From<WitEvent> for CanonicalEvent {
    fn from(e: WitEvent) -> Self {
        CanonicalEvent {
            id: e.id,
            source: e.source,
            ty: e.type_,
            subject: e.subject,
            time: e.time,
            datacontenttype: e.datacontenttype,
            data: e.data,
            // A guest cannot set the depth; the host stamps it when the event is emitted.
            depth: 0,
        }
    }
}

/// Reads the depth extension: absent (0), a JSON integer, or its decimal text (the form a
/// binary-mode header would carry).
fn depth_attr(raw: Option<&RawValue>) -> Result<u32, EventError> {
    match attr(raw)? {
        Attr::Absent => Ok(0),
        Attr::Text(text) | Attr::Other(text) => depth_from_text(&text),
    }
}

/// Reads the depth extension from its decimal text (a JSON number's, or a header's).
fn depth_from_text(text: &str) -> Result<u32, EventError> {
    text.parse().map_err(|_| EventError::Invalid {
        name: DEPTH_ATTRIBUTE,
        reason: format!(
            "must be a whole number of at most {}, found {}",
            u32::MAX,
            crate::text::clip(text, 64)
        ),
    })
}

fn json_media_type(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => {
            let ct = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            ct == "application/json" || ct.ends_with("+json") || ct == "text/json"
        }
    }
}

/// humantime accepts only `Z`; RFC 3339 also allows `+hh:mm` offsets.
fn looks_like_rfc3339_with_offset(time: &str) -> bool {
    if !time.is_ascii() || time.len() < 25 {
        return false;
    }
    let (head, offset) = time.split_at(time.len() - 6);
    let ob = offset.as_bytes();
    let offset_ok = (ob[0] == b'+' || ob[0] == b'-')
        && ob[1].is_ascii_digit()
        && ob[2].is_ascii_digit()
        && ob[3] == b':'
        && ob[4].is_ascii_digit()
        && ob[5].is_ascii_digit();
    offset_ok && humantime::parse_rfc3339_weak(head).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_round_trips_inline() {
        let text = br#"{"specversion":"1.0","id":"e1","source":"/t","type":"vm.started","time":"2026-11-21T10:00:00Z","data":{"tenant":"acme"}}"#;
        let e = CanonicalEvent::from_json(text).unwrap();
        assert_eq!(e.data, br#"{"tenant":"acme"}"#);
        let again = CanonicalEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(again, e);
        assert!(
            String::from_utf8(e.to_json())
                .unwrap()
                .contains(r#""data":{"tenant":"acme"}"#)
        );
    }

    #[test]
    fn binary_data_round_trips_as_base64() {
        let e = CanonicalEvent {
            id: "x".into(),
            source: "/s".into(),
            ty: "blob.stored".into(),
            subject: None,
            time: None,
            datacontenttype: Some("application/octet-stream".into()),
            data: (0u8..=255).collect(),
            depth: 3,
        };
        let json = e.to_json();
        assert!(String::from_utf8_lossy(&json).contains("data_base64"));
        assert_eq!(CanonicalEvent::from_json(&json).unwrap(), e);
    }

    #[test]
    fn json_data_reaches_the_guest_byte_for_byte() {
        let text = br#"{"specversion":"1.0","id":"e","source":"/s","type":"a.b","data":{"z":1,"a":12345678901234567890123,"dup":1,"dup":2}}"#;
        let e = CanonicalEvent::from_json(text).unwrap();
        assert_eq!(
            e.data,
            br#"{"z":1,"a":12345678901234567890123,"dup":1,"dup":2}"#
        );
        assert_eq!(
            CanonicalEvent::from_json(&e.to_json()).unwrap().data,
            e.data
        );
    }

    #[test]
    fn text_data_is_the_string_itself() {
        let text = br#"{"specversion":"1.0","id":"t","source":"/s","type":"note.added","datacontenttype":"text/plain","data":"hello"}"#;
        let e = CanonicalEvent::from_json(text).unwrap();
        assert_eq!(e.data, b"hello");
        assert_eq!(CanonicalEvent::from_json(&e.to_json()).unwrap(), e);
        assert!(
            String::from_utf8(e.to_json())
                .unwrap()
                .contains(r#""data":"hello""#)
        );
    }

    #[test]
    fn missing_or_wrong_attributes_are_named() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "not a CloudEvents JSON object"),
            (br#"{"id":"1","source":"/s","type":"a.b"}"#, "specversion"),
            (
                br#"{"specversion":"1.0","source":"/s","type":"a.b"}"#,
                "`id`",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"a..b"}"#,
                "`type`",
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","time":"yesterday"}"#,
                "`time`",
            ),
            (
                br#"{"specversion":"1.0","id":7,"source":"/s","type":"a.b"}"#,
                "must be a string",
            ),
        ];
        for (text, needle) in cases {
            let err = CanonicalEvent::from_json(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn odd_unicode_in_time_is_an_error_not_a_panic() {
        let time = format!("{}é12345", "x".repeat(24));
        let text = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"a.b","time":"{time}"}}"#
        );
        assert!(CanonicalEvent::from_json(text.as_bytes()).is_err());
        let long = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"a.b","subject":"{}"}}"#,
            "s".repeat(MAX_ATTRIBUTE_LEN + 1)
        );
        let err = CanonicalEvent::from_json(long.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("`subject`"), "{err}");
    }

    #[test]
    fn the_depth_travels_as_an_extension_attribute() {
        let text = br#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","sandbusdepth":4}"#;
        let e = CanonicalEvent::from_json(text).unwrap();
        assert_eq!(e.depth, 4);
        let json = String::from_utf8(e.to_json()).unwrap();
        assert!(json.contains(r#""sandbusdepth":4"#), "{json}");
        let shallow = CanonicalEvent { depth: 0, ..e };
        let json = String::from_utf8(shallow.to_json()).unwrap();
        assert!(!json.contains("sandbusdepth"), "absent at 0: {json}");
        for bad in ["-1", "1.5", "\"x\"", "99999999999", "{}"] {
            let text = format!(
                r#"{{"specversion":"1.0","id":"1","source":"/s","type":"a.b","sandbusdepth":{bad}}}"#
            );
            let err = CanonicalEvent::from_json(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(DEPTH_ATTRIBUTE), "{bad}: {err}");
        }
    }

    #[test]
    fn an_event_must_be_what_its_subject_says() {
        let forged = br#"{"specversion":"1.0","id":"1","source":"/sandbus/hosts/h1","type":"sandbus.lease.released","data":{"held_ms":1}}"#;
        let e = CanonicalEvent::from_json(forged).unwrap();
        assert!(e.check_arrival("events.sandbus.lease.released").is_ok());
        let err = e.check_arrival("events.vm.forged").unwrap_err().to_string();
        assert!(err.contains("does not match the subject"), "{err}");
        let posing =
            br#"{"specversion":"1.0","id":"1","source":"/sandbus/hosts/h1","type":"vm.started"}"#;
        let e = CanonicalEvent::from_json(posing).unwrap();
        let err = e
            .check_arrival("events.vm.started")
            .unwrap_err()
            .to_string();
        assert!(err.contains("names a sandbus daemon"), "{err}");
    }

    #[test]
    fn attributes_are_one_line_of_text() {
        for (attribute, value) in [("id", "a\nb"), ("source", "/x\r"), ("subject", "s\u{0}")] {
            let mut event = serde_json::json!({
                "specversion": "1.0", "id": "1", "source": "/s", "type": "a.b"
            });
            event[attribute] = serde_json::json!(value);
            let err = CanonicalEvent::from_json(event.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains("control character"), "{attribute}: {err}");
        }
    }

    #[test]
    fn rfc3339_offsets_are_accepted() {
        let text = br#"{"specversion":"1.0","id":"1","source":"/s","type":"a.b","time":"2026-11-21T10:00:00.5+02:00"}"#;
        assert!(CanonicalEvent::from_json(text).is_ok());
    }
}
