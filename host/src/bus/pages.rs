//! Reading a stream a page at a time, for clients that may not read JetStream themselves.
//!
//! People reach sandbus only through the control API: none of the roles has JetStream rights
//! (a consumer made by a client could deliver stored messages anywhere, or take a listener's
//! events). So `sandbus events` and `sandbus logs` ask a daemon for a page of stored messages
//! after a sequence; a follower asks again after the last one it saw, waiting on the daemon
//! for something new (a long poll).
//!
//! A page is read with one ordered consumer (made and deleted by the daemon, which may: left
//! to the server it would stay 30 s, and a follower asking every second would keep dozens of
//! them on a stream that holds a limited number; see `docs/architecture.md`) and
//! holds at most [`MAX_PAGE`] messages and never more than fits in a reply under the
//! server's max payload. A message too large to fit on its own is listed with its size.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, push},
};
use base64::Engine as _;
use futures::StreamExt as _;

use super::BusError;
use crate::api::{MAX_PAGE, MessagePage, StoredMessage};
use crate::event::{CanonicalEvent, ContentMode};

/// Bytes of a reply kept for the page's own fields and the message envelopes.
const PAGE_MARGIN: usize = 16 << 10;

/// How long a page waits for a message the server said is stored before it gives up and
/// answers with what it has.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(5);

/// Bytes one message's entry adds to a page beyond its body (sequence, subject, quoting).
const ENTRY_OVERHEAD: usize = 128;

/// Reads up to `max` messages of the stream `stream` matching `filter`, after stream sequence
/// `after`. When none is stored yet, waits up to `wait` for the first one. The page fits in
/// a reply under the server's max payload.
pub async fn read_page(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    after: u64,
    max: u32,
    wait: Duration,
) -> Result<MessagePage, BusError> {
    let client = js.client();
    let max_payload = client.server_info().max_payload;
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| BusError::not_set_up(&format!("the stream {stream}"), e))?;
    let last_sequence = stream
        .get_info()
        .await
        .map_err(unavailable)?
        .state
        .last_sequence;
    let max = max.min(MAX_PAGE) as usize;
    let page = MessagePage {
        messages: Vec::new(),
        last_sequence,
    };
    if max == 0 {
        return Ok(page);
    }
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: filter,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let name = consumer.cached_info().name.clone();
    let filled = fill(consumer, page, max, max_payload, wait).await;
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "a page's consumer is left to expire");
    }
    filled
}

/// Reads the page from `consumer` into `page`, as [`read_page`] says.
async fn fill(
    consumer: jetstream::consumer::Consumer<push::OrderedConfig>,
    mut page: MessagePage,
    max: usize,
    max_payload: usize,
    wait: Duration,
) -> Result<MessagePage, BusError> {
    let waiting = consumer.cached_info().num_pending;
    if waiting == 0 && wait.is_zero() {
        return Ok(page);
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let budget = max_payload.saturating_sub(PAGE_MARGIN);
    let mut used = 0usize;
    // Stored messages are on their way (the server pushes them): give each a moment. With
    // none stored yet, the first one may be waited for as long as the caller asked.
    let mut patience = if waiting > 0 { DELIVERY_PATIENCE } else { wait };
    loop {
        let next = match tokio::time::timeout(patience, messages.next()).await {
            Ok(Some(next)) => next.map_err(unavailable)?,
            Ok(None) | Err(_) => break,
        };
        patience = DELIVERY_PATIENCE;
        let (sequence, pending) = next
            .info()
            .map(|i| (i.stream_sequence, i.pending))
            .unwrap_or((0, 0));
        let headers = next
            .headers
            .as_ref()
            .map(super::delivery::header_pairs)
            .unwrap_or_default();
        let mut entry = stored(sequence, next.subject.to_string(), &headers, &next.payload);
        let size = entry_size(&entry);
        if size > budget {
            entry = StoredMessage {
                json: None,
                base64: None,
                too_large: Some(next.payload.len() as u64),
                ..entry
            };
        } else if used + size > budget {
            // Next page.
            break;
        }
        used += entry_size(&entry);
        page.messages.push(entry);
        page.last_sequence = page.last_sequence.max(sequence);
        if page.messages.len() >= max || pending == 0 {
            break;
        }
    }
    Ok(page)
}

/// A request for the page that failed with `e`.
fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::unavailable("read the stream", e)
}

/// A message's entry: its body as JSON, or base64. An event in CloudEvents binary mode is
/// listed in its structured form (the attributes are headers, which a page does not carry),
/// unless it is not a valid event: then its body as it is.
fn stored(
    sequence: u64,
    subject: String,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> StoredMessage {
    let structured = (ContentMode::of(headers) == ContentMode::Binary)
        .then(|| CanonicalEvent::from_binary(headers, payload).ok())
        .flatten()
        .map(|event| event.to_json());
    let payload = structured.as_deref().unwrap_or(payload);
    let json = std::str::from_utf8(payload)
        .ok()
        .and_then(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).ok())
        .map(|raw| raw.to_owned());
    let base64 = json
        .is_none()
        .then(|| base64::engine::general_purpose::STANDARD.encode(payload));
    StoredMessage {
        sequence,
        subject,
        json,
        base64,
        too_large: None,
    }
}

fn entry_size(entry: &StoredMessage) -> usize {
    ENTRY_OVERHEAD
        + entry.subject.len()
        + entry.json.as_ref().map_or(0, |j| j.get().len())
        + entry.base64.as_ref().map_or(0, String::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_are_kept_byte_for_byte_and_others_in_base64() {
        let json = stored(3, "events.a".into(), &[], br#"{"z":1, "a":[1,2]}"#);
        assert_eq!(json.json.as_ref().unwrap().get(), r#"{"z":1, "a":[1,2]}"#);
        assert!(json.base64.is_none());
        let binary = stored(4, "events.b".into(), &[], &[0xff, 0x00, 0x7b]);
        assert!(binary.json.is_none());
        assert_eq!(binary.base64.as_deref(), Some("/wB7"));
        let text = stored(5, "events.c".into(), &[], b"not json");
        assert!(text.json.is_none() && text.base64.is_some());
    }

    #[test]
    fn a_binary_mode_event_is_listed_in_its_structured_form() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/crm"),
            ("ce-type", "vm.started"),
            ("content-type", "application/json"),
        ];
        let entry = stored(6, "events.vm.started".into(), &headers, br#"{"cpus":4}"#);
        let listed = CanonicalEvent::from_json(entry.json.unwrap().get().as_bytes()).unwrap();
        assert_eq!(
            listed,
            CanonicalEvent::from_binary(&headers, br#"{"cpus":4}"#).unwrap()
        );
        let broken = stored(7, "events.vm.started".into(), &headers[1..], b"\xff");
        assert_eq!(
            broken.base64.as_deref(),
            Some("/w=="),
            "not an event: as it is"
        );
    }
}
