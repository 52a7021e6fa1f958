//! [`DirectPublisher`]: a client's canonical events straight onto the events stream, many in
//! flight at once, without a daemon in the path.
//!
//! `sandbus publish` used to hand each event to a daemon (`event.publish`, one request and
//! reply per event): a few hundred events a second, and nothing at all while no daemon ran.
//! The events stream is durable and de-duplicates by `Nats-Msg-Id`, so a client can publish
//! onto it itself: each event on `events.<type>` with its [`CanonicalEvent::dedup_key`] as the
//! message id, exactly as a daemon would store it (in structured mode, or in CloudEvents
//! binary mode if asked: the attributes in `ce-*` headers, the data as the body). The caller
//! checks every event first with the daemon's own check ([`crate::api::outside_event`]);
//! what the client cannot be trusted to do, the dispatcher does again on delivery (an
//! invalid event is dead-lettered with the reason, never handed to a listener).
//!
//! Publishes are pipelined: up to a window of them wait for their acks while more are sent,
//! and acks are awaited in the order the events were sent. So when something fails, every
//! event before the first one whose ack did not come is stored, and the ones after it may or
//! may not be: [`DirectPublishStop::line`] names that first unconfirmed event, and sending
//! again from there is safe, because an event keeps its id and the stream keeps one message
//! per id within its duplicate window (`[events] duplicate_window`, 2 minutes by default).
//! Later than that, an event already stored is stored again, and listeners de-duplicate on
//! event ids as they must under redelivery anyway.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, context::PublishErrorKind};
use bytes::Bytes;

use super::refusals::Refusals;
use super::{BusError, BusErrorKind, PublishedEvent};
use crate::event::{CanonicalEvent, ContentMode, MSG_ID_HEADER};
use crate::subject::event_subject;

/// The largest window a caller may ask for: the JetStream context is built to take that
/// many unacknowledged publishes.
pub const MAX_WINDOW: usize = 4096;

/// The window `sandbus publish` uses unless told otherwise: enough to keep a local server
/// busy (the acks of one window come back while the next is sent), small enough that a stop
/// re-sends little.
pub const DEFAULT_WINDOW: usize = 512;

/// One event, ready to go: its line in the caller's input (what a stop names), its subject,
/// its message id, and its body and headers in the content mode it is sent in.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// Where the event came from (a line of a file, 1-based), reported back as it is.
    pub line: usize,
    /// The event id, reported back with its ack.
    pub id: String,
    subject: String,
    msg_id: String,
    /// The `ce-*` headers (and `content-type`) of a binary-mode event; none in structured
    /// mode.
    attributes: Vec<(&'static str, String)>,
    payload: Bytes,
}

impl OutgoingEvent {
    /// The event from line `line`, as a daemon would publish it: on `events.<type>`, with its
    /// de-duplication key as `Nats-Msg-Id`, in `mode`: structured (the body is the
    /// CloudEvents JSON) or binary (the attributes are `ce-*` headers, the body is the data;
    /// see [`CanonicalEvent::binary_headers`]). The event must have passed
    /// [`crate::api::outside_event`].
    pub fn new(line: usize, event: &CanonicalEvent, mode: ContentMode) -> Self {
        let (attributes, payload) = match mode {
            ContentMode::Structured => (Vec::new(), event.to_json()),
            ContentMode::Binary => (event.binary_headers(), event.data.clone()),
        };
        Self {
            line,
            id: event.id.clone(),
            subject: event_subject(&event.ty),
            msg_id: event.dedup_key(),
            attributes,
            payload: payload.into(),
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, self.msg_id.as_str());
        // Names are constants; values are percent-encoded or a checked one-line media type.
        for (name, value) in &self.attributes {
            headers.insert(*name, value.as_str());
        }
        headers
    }

    /// Bytes the server counts against its max payload (body and header block, a little
    /// more than it counts).
    pub fn size(&self) -> usize {
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        self.payload.len() + MSG_ID_HEADER.len() + self.msg_id.len() + attributes + 32
    }
}

/// Why a direct publish stopped, and from where to send again.
#[derive(Debug)]
pub struct DirectPublishStop {
    /// The line of the first event not confirmed stored: every event before it is stored;
    /// it and later ones may or may not be (sending them again is safe, see the module).
    pub line: usize,
    /// What went wrong.
    pub error: BusError,
}

impl fmt::Display for DirectPublishStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for DirectPublishStop {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Publishes canonical events onto the events stream from a client connection.
pub struct DirectPublisher {
    js: jetstream::Context,
    refusals: Refusals,
}

impl DirectPublisher {
    /// A publisher on `client`, which waits at most `ack_wait` for each event's ack;
    /// `refusals` are the permission violations the server reports on that connection (a
    /// refused publish is dropped by the server, and would otherwise look like a lost ack).
    pub fn new(client: async_nats::Client, refusals: Refusals, ack_wait: Duration) -> Self {
        Self {
            js: jetstream::ContextBuilder::new()
                .timeout(ack_wait)
                .max_ack_inflight(MAX_WINDOW)
                .build(client),
            refusals,
        }
    }

    /// The largest message the server takes, in bytes: an event whose
    /// [`OutgoingEvent::size`] is larger would be refused (check before sending any).
    pub fn max_payload(&self) -> usize {
        self.js.client().server_info().max_payload
    }

    /// Publishes `events` in order, keeping up to `window` (at most [`MAX_WINDOW`]) waiting
    /// for their acks, and calls `stored` with each event's line and where it landed, in
    /// order, as its ack comes (a duplicate too: the stream had its id already). Stops at the
    /// first failure; see [`DirectPublishStop`].
    pub async fn publish(
        &self,
        events: &[OutgoingEvent],
        window: usize,
        mut stored: impl FnMut(usize, PublishedEvent),
    ) -> Result<(), DirectPublishStop> {
        let window = window.clamp(1, MAX_WINDOW);
        // Acks are confirmed in order, so the first unconfirmed event is always this index.
        let mut confirmed = 0;
        let work = async {
            let mut in_flight: VecDeque<(&OutgoingEvent, PublishAckFuture)> = VecDeque::new();
            for event in events {
                if in_flight.len() >= window
                    && let Some((done, ack)) = in_flight.pop_front()
                {
                    stored(done.line, confirm(done, ack).await?);
                    confirmed += 1;
                }
                let ack = self
                    .js
                    .publish_with_headers(
                        event.subject.clone(),
                        event.headers(),
                        event.payload.clone(),
                    )
                    .await
                    .map_err(|e| publish_error(event, e.kind(), e))?;
                in_flight.push_back((event, ack));
            }
            while let Some((done, ack)) = in_flight.pop_front() {
                stored(done.line, confirm(done, ack).await?);
                confirmed += 1;
            }
            Ok(())
        };
        let result = self.refusals.guard(work).await;
        result.map_err(|error| DirectPublishStop {
            line: events.get(confirmed).map_or(0, |e| e.line),
            error,
        })
    }

    /// Sends `events` without waiting for a single ack (`publish --cast`): the server has
    /// them once this returns (the connection is flushed), but nothing says whether the
    /// stream stored them, or had them already. A missing stream or a refused subject is
    /// not noticed.
    pub async fn send(&self, events: &[OutgoingEvent]) -> Result<(), DirectPublishStop> {
        let client = self.js.client();
        let work = async {
            for event in events {
                client
                    .publish_with_headers(
                        event.subject.clone(),
                        event.headers(),
                        event.payload.clone(),
                    )
                    .await
                    .map_err(|e| BusError::unavailable("send the event", e))?;
            }
            client
                .flush()
                .await
                .map_err(|e| BusError::unavailable("flush the events to the server", e))
        };
        let result = self.refusals.guard(work).await;
        // Nothing is ever confirmed without acks: a failure names the first event.
        result.map_err(|error| DirectPublishStop {
            line: events.first().map_or(0, |e| e.line),
            error,
        })
    }
}

/// Waits for one event's ack.
async fn confirm(event: &OutgoingEvent, ack: PublishAckFuture) -> Result<PublishedEvent, BusError> {
    let ack = ack.await.map_err(|e| publish_error(event, e.kind(), e))?;
    Ok(PublishedEvent {
        id: event.id.clone(),
        subject: event.subject.clone(),
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// What a failed publish or ack means for the person publishing.
fn publish_error(
    event: &OutgoingEvent,
    kind: PublishErrorKind,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BusError {
    match kind {
        // Why the CLI does not create the stream: its shape (retention, replicas, the
        // duplicate window) is the daemons' `[events]` configuration, and people's roles
        // have no JetStream API rights at all.
        PublishErrorKind::StreamNotFound => BusError::new(
            BusErrorKind::NotSetUp,
            format!(
                "no events stream on this server stores `{}`: start a daemon once (`sandbus \
                 daemon`) to create it",
                event.subject
            ),
        )
        .caused_by(e),
        PublishErrorKind::TimedOut => BusError::unavailable(
            "get the stream's confirmation in time (is the server up, and JetStream on?)",
            e,
        ),
        PublishErrorKind::BrokenPipe => {
            BusError::unavailable("get the stream's confirmation: the connection closed", e)
        }
        _ => BusError::unavailable("publish the event", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outgoing_event_goes_where_a_daemon_would_put_it() {
        let event = CanonicalEvent::from_json(
            br#"{"specversion":"1.0","id":"i-1","source":"/crm","type":"vm.started","data":{"a":1}}"#,
        )
        .unwrap();
        let outgoing = OutgoingEvent::new(7, &event, ContentMode::Structured);
        assert_eq!(outgoing.line, 7);
        assert_eq!(outgoing.subject, "events.vm.started");
        assert_eq!(outgoing.msg_id, crate::event::dedup_key("/crm", "i-1"));
        assert_eq!(
            CanonicalEvent::from_json(&outgoing.payload).unwrap(),
            event,
            "the body is the event"
        );
        assert!(outgoing.size() > outgoing.payload.len());
    }

    #[test]
    fn a_binary_mode_event_carries_its_attributes_in_headers_and_its_data_as_the_body() {
        let event = CanonicalEvent::from_json(
            br#"{"specversion":"1.0","id":"i-1","source":"/crm","type":"vm.started","datacontenttype":"application/json","data":{"a":1}}"#,
        )
        .unwrap();
        let outgoing = OutgoingEvent::new(1, &event, ContentMode::Binary);
        assert_eq!(outgoing.subject, "events.vm.started");
        assert_eq!(outgoing.payload, br#"{"a":1}"#.as_slice());
        let headers = outgoing.headers();
        assert_eq!(
            headers.get(MSG_ID_HEADER).map(|v| v.as_str()),
            Some(crate::event::dedup_key("/crm", "i-1").as_str()),
            "de-duplicated like the structured form"
        );
        let pairs = super::super::delivery::header_pairs(&headers);
        assert_eq!(
            CanonicalEvent::from_message(&pairs, &outgoing.payload).unwrap(),
            event
        );
        assert!(outgoing.size() > outgoing.payload.len() + 60);
    }

    #[test]
    fn a_stop_names_its_line_first() {
        let stop = DirectPublishStop {
            line: 12,
            error: BusError::new(BusErrorKind::Unavailable, "the server went away"),
        };
        assert_eq!(stop.to_string(), "line 12: the server went away");
    }
}
