//! CloudEvents binary content mode on NATS: the attributes in `ce-*` headers, the data as the
//! message body (the NATS protocol binding, 1.0.3).
//!
//! A message on `events.>` carries its event in one of two modes, told apart the way the
//! binding says ([`ContentMode::of`]): a `content-type` of `application/cloudevents…` is
//! structured (the body is the CloudEvents JSON object, [`CanonicalEvent::from_json`]); a
//! message with `ce-*` headers is binary ([`CanonicalEvent::from_binary`]). A message with
//! neither is read as structured, as every sandbus publisher and most others send it.
//!
//! Both modes make the same [`CanonicalEvent`], checked by the same rules with the same
//! errors, so a listener cannot tell which one a publisher used. Header names are matched
//! case-insensitively (NATS header names are); values are percent-decoded (and a
//! double-quoted value unquoted) as the binding requires.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::{CanonicalEvent, DEPTH_ATTRIBUTE, EventError, SPEC_VERSION};

/// The prefix of a header that carries a CloudEvents attribute in binary mode (`ce-id`
/// carries `id`), matched case-insensitively.
pub const ATTRIBUTE_HEADER_PREFIX: &str = "ce-";

/// The header with the media type of the body: in binary mode the event's
/// `datacontenttype`, in structured mode [`STRUCTURED_CONTENT_TYPE`].
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// Most `ce-*` attributes one event may carry (the spec's own, a dozen, plus extensions): a
/// message of thousands of them is refused before any is decoded.
pub const MAX_ATTRIBUTES: usize = 64;

/// The media type (a prefix: `application/cloudevents+json` too) that marks a message as
/// structured mode, whatever other headers it has.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents";

/// What a binary-mode header value must percent-encode: controls, space, `"` and `%` (and,
/// by `utf8_percent_encode`, everything outside ASCII), as the binding says.
const HEADER_VALUE_ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// How a message carries its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// The body is the CloudEvents JSON object.
    Structured,
    /// The attributes are `ce-*` headers and the body is the data.
    Binary,
}

impl ContentMode {
    /// The mode of a message with `headers` (name and value, a repeated header once per
    /// value): structured when its `content-type` is [`STRUCTURED_CONTENT_TYPE`] (any
    /// suffix, any case), binary when it has a `ce-*` header, structured otherwise.
    pub fn of(headers: &[(&str, &str)]) -> Self {
        let structured = headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER)
                && starts_with_ignore_case(value.trim(), STRUCTURED_CONTENT_TYPE)
        });
        if !structured
            && headers
                .iter()
                .any(|(name, _)| starts_with_ignore_case(name, ATTRIBUTE_HEADER_PREFIX))
        {
            ContentMode::Binary
        } else {
            ContentMode::Structured
        }
    }
}

impl CanonicalEvent {
    /// Reads the event a message on the events stream carries, in whichever mode it was
    /// published ([`ContentMode::of`]).
    pub fn from_message(headers: &[(&str, &str)], body: &[u8]) -> Result<Self, EventError> {
        match ContentMode::of(headers) {
            ContentMode::Structured => Self::from_json(body),
            ContentMode::Binary => Self::from_binary(headers, body),
        }
    }

    /// Reads a binary-mode event: `ce-specversion` (`1.0`), `ce-id`, `ce-source`, `ce-type`
    /// required; `ce-subject`, `ce-time`, `ce-dataschema` and extensions (`ce-<name>`)
    /// optional, the depth from `ce-sandbusdepth`; `datacontenttype` from `content-type` or
    /// `ce-datacontenttype` (both may be given if they agree); the body is the data, which
    /// must be JSON when the content type says JSON.
    ///
    /// Like the structured form, it keeps only the attributes a listener is handed:
    /// `dataschema` and extensions other than the depth are checked for a readable value and
    /// otherwise left in the message.
    pub fn from_binary(headers: &[(&str, &str)], body: &[u8]) -> Result<Self, EventError> {
        let attributes = Attributes::read(headers)?;
        match attributes.get("specversion") {
            Some(v) if v == SPEC_VERSION => {}
            Some(v) if !v.is_empty() => return Err(EventError::SpecVersion(format!("{v:?}"))),
            _ => return Err(EventError::Missing("specversion")),
        }
        let datacontenttype = content_type(headers, attributes.get("datacontenttype"))?;
        if !body.is_empty()
            && let Some(ct) = &datacontenttype
            && super::json_media_type(Some(ct))
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body)
        {
            return Err(EventError::Invalid {
                name: "data",
                reason: format!(
                    "the body is not JSON, though the content type `{}` says it is: {e}",
                    crate::text::echo(ct)
                ),
            });
        }
        let depth = match attributes.get(DEPTH_ATTRIBUTE) {
            Some(text) => super::depth_from_text(text)?,
            None => 0,
        };
        let event = Self {
            id: attributes.required("id")?,
            source: attributes.required("source")?,
            ty: attributes.required("type")?,
            subject: attributes.get("subject").map(str::to_owned),
            time: attributes.get("time").map(str::to_owned),
            datacontenttype,
            data: body.to_vec(),
            depth,
        };
        event.validate()?;
        Ok(event)
    }

    /// The headers that carry this event in binary mode; its body is [`Self::data`].
    ///
    /// Every attribute is a `ce-*` header, percent-encoded as the binding says;
    /// `datacontenttype` is also `content-type` (what HTTP-minded readers look at), unless
    /// it is a CloudEvents media type, which would make the message read as structured.
    pub fn binary_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("ce-specversion", SPEC_VERSION.to_owned()),
            ("ce-id", encode(&self.id)),
            ("ce-source", encode(&self.source)),
            ("ce-type", encode(&self.ty)),
        ];
        if let Some(subject) = &self.subject {
            headers.push(("ce-subject", encode(subject)));
        }
        if let Some(time) = &self.time {
            headers.push(("ce-time", encode(time)));
        }
        if let Some(ct) = &self.datacontenttype {
            headers.push(("ce-datacontenttype", encode(ct)));
            if !starts_with_ignore_case(ct.trim(), STRUCTURED_CONTENT_TYPE) {
                headers.push((CONTENT_TYPE_HEADER, ct.clone()));
            }
        }
        if self.depth > 0 {
            headers.push(("ce-sandbusdepth", self.depth.to_string()));
        }
        headers
    }
}

/// The `ce-*` attributes of a message, by lower-case name, decoded.
struct Attributes(Vec<(String, String)>);

impl Attributes {
    fn read(headers: &[(&str, &str)]) -> Result<Self, EventError> {
        let mut attributes: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (header, raw) in headers {
            if !starts_with_ignore_case(header, ATTRIBUTE_HEADER_PREFIX) {
                continue;
            }
            let name = header[ATTRIBUTE_HEADER_PREFIX.len()..].to_ascii_lowercase();
            let invalid = |reason: String| EventError::Header {
                header: crate::text::echo(header),
                reason,
            };
            if name.is_empty() {
                return Err(invalid("it names no attribute (`ce-<attribute>`)".into()));
            }
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    "it is given more than once; an attribute has one value".into(),
                ));
            }
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(invalid(format!(
                    "an event has at most {MAX_ATTRIBUTES} `ce-*` attributes"
                )));
            }
            let value = decode(raw).map_err(invalid)?;
            attributes.push((name, value));
        }
        Ok(Self(attributes))
    }

    fn get(&self, name: &str) -> Option<&str> {
        // At most MAX_ATTRIBUTES entries: a scan is cheaper than a map.
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<String, EventError> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(EventError::Missing(name)),
        }
    }
}

/// The event's `datacontenttype`: the `content-type` header, or `ce-datacontenttype`; both
/// must agree when both are given.
fn content_type(
    headers: &[(&str, &str)],
    attribute: Option<&str>,
) -> Result<Option<String>, EventError> {
    let mut header = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
            if header.is_some() {
                return Err(EventError::Header {
                    header: crate::text::echo(name),
                    reason: "it is given more than once; a message has one content type".into(),
                });
            }
            header = Some(value.trim());
        }
    }
    match (header, attribute) {
        (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => Err(EventError::Invalid {
            name: "datacontenttype",
            reason: format!(
                "the `content-type` header says `{}` and `ce-datacontenttype` says `{}`",
                crate::text::echo(h),
                crate::text::echo(a)
            ),
        }),
        (Some(h), _) => Ok(Some(h.to_owned())),
        (None, a) => Ok(a.map(str::to_owned)),
    }
}

/// A header value as the binding writes it: percent-encoded.
fn encode(value: &str) -> String {
    utf8_percent_encode(value, HEADER_VALUE_ENCODED).to_string()
}

/// A header value as the binding reads it: a double-quoted string unquoted, then one round
/// of percent-decoding, which must give UTF-8.
fn decode(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let unquoted = match raw.strip_prefix('"') {
        Some(quoted) => Cow::Owned(unquote(quoted)?),
        None => Cow::Borrowed(raw),
    };
    percent_decode_str(&unquoted)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|e| format!("its percent-encoding is not UTF-8 ({e})"))
}

/// The text of a double-quoted header value after its opening quote: backslash escapes
/// resolved, up to the closing quote, which must end the value.
fn unquote(quoted: &str) -> Result<String, String> {
    let mut text = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => text.push(escaped),
                None => break,
            },
            '"' if chars.as_str().is_empty() => return Ok(text),
            '"' => return Err("it has text after its closing quote".into()),
            c => text.push(c),
        }
    }
    Err("its double quote is not closed".into())
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
mod tests;
