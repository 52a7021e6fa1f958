//! The canonical event stream and the dead-letter stream.
//!
//! Every canonical event lives in one JetStream stream over `events.>`, as CloudEvents JSON,
//! published with `Nats-Msg-Id` = its source and id (`crate::event::dedup_key`) so that a
//! re-publish inside the stream's duplicate window is dropped by the server (a publisher
//! from outside gets that only by setting `Nats-Msg-Id` itself). Events no listener could
//! handle are copied, headers and body unchanged and the reason in `Sandbus-*` headers, to
//! a dead-letter stream, one subject per listener.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::TryStreamExt as _;

use super::names;
use super::{BusError, BusErrorKind};
use crate::event::{CanonicalEvent, MSG_ID_HEADER};
use crate::subject::event_subject;

/// Header naming the listener on a dead letter.
pub const LISTENER_HEADER: &str = "Sandbus-Listener";
/// Header with the reason on a dead letter.
pub const REASON_HEADER: &str = "Sandbus-Reason";
/// Header with how many times the event was delivered before it was dead-lettered.
pub const DELIVERIES_HEADER: &str = "Sandbus-Deliveries";
/// Header with the subject the event was published on.
pub const SUBJECT_HEADER: &str = "Sandbus-Event-Subject";
/// Header with the event's sequence number in the events stream.
pub const SEQUENCE_HEADER: &str = "Sandbus-Event-Sequence";
/// The prefix under which a dead letter keeps an original header whose name it may not
/// carry as is: `Nats-*` headers (the server would act on them when the letter is stored: a
/// `Nats-Msg-Id` would make two listeners' letters of one event duplicates, a
/// `Nats-Expected-Stream` would refuse the letter) and `Sandbus-*` headers (the letter's
/// own say what happened; a publisher's cannot stand in for them). So an event's
/// `Nats-Msg-Id` is kept as `Sandbus-Original-Nats-Msg-Id`.
pub const ORIGINAL_HEADER_PREFIX: &str = "Sandbus-Original-";
/// Header present when the dead letter's body was cut to fit the server's max payload: the
/// original size in bytes (the whole event stays in the events stream at its sequence).
pub const TRUNCATED_HEADER: &str = "Sandbus-Truncated-From";
/// Header present when the original message's headers were left out of its dead letter:
/// how many. They are, when together (renamed where reserved) they would take more than
/// [`MAX_ORIGINAL_HEADER_BYTES`], so a letter always fits JetStream's 64 KiB of headers;
/// the whole event stays in the events stream at its sequence.
pub const HEADERS_DROPPED_HEADER: &str = "Sandbus-Original-Headers-Dropped";
/// Most bytes of original headers a dead letter keeps: JetStream stores at most 64 KiB of
/// headers a message, and renaming reserved ones (`Sandbus-Original-…`) makes them grow.
pub const MAX_ORIGINAL_HEADER_BYTES: usize = 48 << 10;

/// Consumers the events stream may hold unless `[events] max_consumers` says otherwise: room
/// for the 10,000 listeners sandbus aims at, and readers beside them.
pub const DEFAULT_MAX_CONSUMERS: i64 = 20_000;

/// Shape and limits of the events stream; the `[events]` table of the daemon's config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventStreamConfig {
    /// Stream name.
    pub stream: String,
    /// How long events are kept.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most bytes kept (oldest dropped first); `-1` for no limit.
    pub max_bytes: i64,
    /// Replicas in a clustered JetStream.
    pub replicas: usize,
    /// Window in which a re-published event id is de-duplicated.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long dead letters are kept.
    #[serde(with = "humantime_serde")]
    pub dead_letter_max_age: Duration,
    /// Most consumers the events stream holds: one per subscribed listener, and a short-lived
    /// one per page `sandbus events` reads. Set on the stream because nats-server 2.15 gives
    /// a stream without a limit of its own 1,000 (its `default_max_consumers`), and `-1` does
    /// not lift that.
    pub max_consumers: i64,
}

impl Default for EventStreamConfig {
    fn default() -> Self {
        Self {
            stream: names::EVENTS_STREAM.to_owned(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
            max_consumers: DEFAULT_MAX_CONSUMERS,
        }
    }
}

/// `serde(with)` for durations written like `7d` or `2m` (deserialize only).
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like 30s or 7d: {e}"))
        })
    }
}

/// Where an event landed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishedEvent {
    /// The event id.
    pub id: String,
    /// The subject it was published on.
    pub subject: String,
    /// The stream that holds it.
    pub stream: String,
    /// Its sequence number in that stream.
    pub sequence: u64,
    /// The server had it already (same id within the duplicate window): nothing was added.
    pub duplicate: bool,
}

/// An event that will not be handled by a listener, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The listener that gave up on it.
    pub listener: String,
    /// Why.
    pub reason: String,
    /// Deliveries made.
    pub deliveries: u64,
    /// The subject the event was on.
    pub subject: String,
    /// Its sequence number in the events stream.
    pub sequence: u64,
    /// The message's headers exactly as they were on the events stream (name, value; a
    /// repeated header once per value).
    pub headers: Vec<(String, String)>,
    /// The message's body exactly as it was on the events stream.
    pub payload: Bytes,
}

/// The events stream (and its dead-letter stream) of one NATS server or cluster.
#[derive(Clone)]
pub struct EventStream {
    js: jetstream::Context,
    name: String,
}

impl EventStream {
    /// Creates or updates both streams to match `config` (the daemon does this at start).
    pub async fn ensure(
        js: jetstream::Context,
        config: &EventStreamConfig,
    ) -> Result<Self, BusError> {
        let events = |max_consumers: i64| stream::Config {
            name: config.stream.clone(),
            description: Some("sandbus canonical events (CloudEvents JSON)".into()),
            subjects: names::events_stream_subjects(),
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            storage: stream::StorageType::File,
            max_consumers: i32::try_from(max_consumers).unwrap_or(i32::MAX),
            ..Default::default()
        };
        let set_up = |e: String| {
            BusError::unavailable(&format!("set up the events stream {}", config.stream), e)
        };
        if let Err(refused) = js
            .create_or_update_stream(events(config.max_consumers))
            .await
        {
            // A server before 2.12 cannot change an existing stream's consumer limit, and an
            // account limit below it refuses it: keep the stream's own (or the server's
            // default) rather than not start, and say what to change.
            let kept = match js.get_stream(&config.stream).await {
                Ok(stream) => i64::from(stream.cached_info().config.max_consumers),
                Err(_) => 0,
            };
            js.create_or_update_stream(events(kept))
                .await
                .map_err(|_| set_up(refused.to_string()))?;
            tracing::warn!(
                stream = %config.stream,
                wanted = config.max_consumers,
                kept,
                error = %refused,
                "the server refused the events stream's max_consumers; listeners past the \
                 stream's limit will be refused (raise the account's JetStream consumer \
                 limit, or set [events] max_consumers to what it allows)"
            );
        }
        js.create_or_update_stream(stream::Config {
            name: names::DEAD_LETTER_STREAM.to_owned(),
            description: Some("sandbus dead letters: events a listener gave up on".into()),
            subjects: names::dead_letter_stream_subjects(),
            max_age: config.dead_letter_max_age,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::unavailable("set up the dead-letter stream", e))?;
        Ok(Self {
            js,
            name: config.stream.clone(),
        })
    }

    /// Opens the existing streams (clients do this).
    pub async fn open(js: jetstream::Context, name: &str) -> Result<Self, BusError> {
        js.get_stream_no_info(name)
            .await
            .map_err(|e| BusError::not_set_up(&format!("the events stream {name}"), e))?;
        Ok(Self {
            js,
            name: name.to_owned(),
        })
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream context.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The events stream handle, without asking for its info (for requests on its consumers
    /// and messages, which need only its name).
    pub async fn handle(&self) -> Result<stream::Stream<()>, BusError> {
        self.js
            .get_stream_no_info(&self.name)
            .await
            .map_err(|e| BusError::not_set_up(&format!("the events stream {}", self.name), e))
    }

    /// The events stream handle.
    pub async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_stream(&self.name)
            .await
            .map_err(|e| BusError::not_set_up(&format!("the events stream {}", self.name), e))
    }

    /// Publishes an event on `events.<type>` and waits for the stream to store it. The event
    /// must be valid (see [`CanonicalEvent::validate`]).
    ///
    /// People with the publisher role publish onto the stream themselves and pick their own
    /// `Nats-Msg-Id`: one could send a message with the key a daemon's next host event will
    /// have, and the server would drop the daemon's event as a duplicate. So a duplicate is
    /// believed only when the stored message is this event (same subject, source and id);
    /// otherwise the event is published again under a fresh key, and the squatter's message
    /// stays what it is (on its own subject, checked on delivery like any other).
    pub async fn publish(&self, event: &CanonicalEvent) -> Result<PublishedEvent, BusError> {
        let subject = event_subject(&event.ty);
        let payload = Bytes::from(event.to_json());
        let key = event.dedup_key();
        let mut ack = self.store(&subject, &key, payload.clone()).await?;
        if ack.duplicate
            && !self
                .holds(&ack.stream, ack.sequence, &subject, event)
                .await?
        {
            tracing::warn!(
                id = %event.id,
                squatted = ack.sequence,
                "another message claimed this event's Nats-Msg-Id; publishing it under a fresh one"
            );
            let fresh = format!("{key}#{}", hex::encode(rand::random::<[u8; 8]>()));
            ack = self.store(&subject, &fresh, payload).await?;
        }
        Ok(PublishedEvent {
            id: event.id.clone(),
            subject,
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn store(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, msg_id);
        super::publisher::store_on_stream(&self.js, subject.to_owned(), headers, payload)
            .await
            .map_err(|e| BusError::unavailable("store the event", e))
    }

    /// Whether the message at `sequence` of `stream` is `event` on `subject`.
    async fn holds(
        &self,
        stream: &str,
        sequence: u64,
        subject: &str,
        event: &CanonicalEvent,
    ) -> Result<bool, BusError> {
        let stored = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::unavailable("open the events stream", e))?
            .get_raw_message(sequence)
            .await
            .map_err(|e| BusError::unavailable("read the stored duplicate", e))?;
        // Whatever mode it was published in: the attributes may be headers (binary mode,
        // from a publisher that set no `Nats-Msg-Id` of its own).
        let headers = super::delivery::header_pairs(&stored.headers);
        Ok(stored.subject.as_str() == subject
            && CanonicalEvent::from_message(&headers, &stored.payload)
                .is_ok_and(|e| e.source == event.source && e.id == event.id))
    }

    /// Copies an event to the dead-letter stream and waits until it is stored. Idempotent:
    /// the same listener and sequence is stored once.
    ///
    /// The letter is the original message, headers and body, plus the `Sandbus-*` headers
    /// that say what happened; an original header named `Nats-*` or `Sandbus-*` is kept
    /// under [`ORIGINAL_HEADER_PREFIX`] (see there why).
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        let max = self.js.client().server_info().max_payload;
        let mut originals = Vec::with_capacity(letter.headers.len());
        let mut original_size = 0;
        for (name, value) in &letter.headers {
            let reserved = ["Nats-", "Sandbus-"].iter().any(|prefix| {
                name.as_bytes()
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
            });
            let name = if reserved {
                format!("{ORIGINAL_HEADER_PREFIX}{name}")
            } else {
                name.clone()
            };
            // A header read from a message is valid; one that is not cannot be sent.
            match (
                async_nats::HeaderName::try_from(name.as_str()),
                value.parse::<async_nats::HeaderValue>(),
            ) {
                (Ok(n), Ok(v)) => {
                    original_size += name.len() + value.len() + 4;
                    originals.push((n, v));
                }
                _ => tracing::warn!(
                    listener = %letter.listener,
                    header = %header_safe(&name),
                    "a header of a dead-lettered message cannot be sent again; left out"
                ),
            }
        }
        let mut headers = HeaderMap::new();
        if original_size > MAX_ORIGINAL_HEADER_BYTES {
            headers.insert(HEADERS_DROPPED_HEADER, originals.len().to_string().as_str());
            original_size = 0;
        } else {
            for (name, value) in originals {
                headers.append(name, value);
            }
        }
        headers.insert(
            MSG_ID_HEADER,
            format!("{}/{}", letter.listener, letter.sequence).as_str(),
        );
        headers.insert(LISTENER_HEADER, letter.listener.as_str());
        headers.insert(REASON_HEADER, header_safe(&letter.reason).as_str());
        headers.insert(DELIVERIES_HEADER, letter.deliveries.to_string().as_str());
        headers.insert(SUBJECT_HEADER, letter.subject.as_str());
        headers.insert(SEQUENCE_HEADER, letter.sequence.to_string().as_str());
        // Headers count against the server's max payload: a letter for an event near that
        // size would never fit, and must not be retried forever. Keep what fits.
        let room = max.saturating_sub(4096 + original_size);
        let payload = if letter.payload.len() > room {
            headers.insert(TRUNCATED_HEADER, letter.payload.len().to_string().as_str());
            letter.payload.slice(..room)
        } else {
            letter.payload.clone()
        };
        self.js
            .publish_with_headers(
                names::dead_letter_subject(&letter.listener),
                headers,
                payload,
            )
            .await
            .map_err(|e| BusError::unavailable("publish the dead letter", e))?
            .await
            .map_err(|e| BusError::unavailable("store the dead letter", e))?;
        Ok(())
    }

    /// How many dead letters a listener has in the dead-letter stream.
    pub async fn dead_lettered(&self, listener: &str) -> Result<u64, BusError> {
        let stream = self
            .js
            .get_stream_no_info(names::DEAD_LETTER_STREAM)
            .await
            .map_err(|e| BusError::not_set_up("the dead-letter stream", e))?;
        let subject = names::dead_letter_subject(listener);
        let mut info = stream
            .info_with_subjects(&subject)
            .await
            .map_err(|e| BusError::unavailable("read the dead-letter stream", e))?;
        let mut count = 0;
        while let Some((s, n)) = info
            .try_next()
            .await
            .map_err(|e| BusError::unavailable("read the dead-letter stream", e))?
        {
            if s == subject {
                count += n as u64;
            }
        }
        Ok(count)
    }

    /// Removes a listener's dead letters (when it is unsubscribed).
    pub async fn purge_dead_letters(&self, listener: &str) -> Result<(), BusError> {
        let stream = self
            .js
            .get_stream_no_info(names::DEAD_LETTER_STREAM)
            .await
            .map_err(|e| BusError::not_set_up("the dead-letter stream", e))?;
        stream
            .purge()
            .filter(names::dead_letter_subject(listener))
            .await
            .map_err(|e| {
                BusError::new(
                    BusErrorKind::Unavailable,
                    format!("cannot purge dead letters: {e}"),
                )
                .caused_by(e)
            })?;
        Ok(())
    }
}

/// A header value must be one line of printable text; reasons come from guests.
fn header_safe(text: &str) -> String {
    crate::text::clip(&crate::text::one_line(text), 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_single_bounded_header_lines() {
        assert_eq!(header_safe("a\r\nb\tc"), "a  b c");
        let long = "é".repeat(2000);
        let safe = header_safe(&long);
        assert!(safe.len() <= 1024 + 32, "{}", safe.len());
        assert!(safe.ends_with("(4000 bytes in all)"), "{safe}");
    }

    #[test]
    fn stream_config_reads_durations_in_words() {
        let config: EventStreamConfig =
            toml::from_str("stream = \"E\"\nmax_age = \"1d\"\nduplicate_window = \"5m\"").unwrap();
        assert_eq!(config.stream, "E");
        assert_eq!(config.max_age, Duration::from_secs(86_400));
        assert_eq!(config.duplicate_window, Duration::from_secs(300));
        assert!(toml::from_str::<EventStreamConfig>("max_age = \"soon\"").is_err());
        assert!(toml::from_str::<EventStreamConfig>("colour = \"red\"").is_err());
    }
}
