//! [`NatsPublisher`]: where guests' `publish` and `emit` go in the daemon.
//!
//! A message for an event subject (`events.…`) is published through JetStream and the call
//! waits for the stream to store it, so an event a listener emitted is durable before the
//! listener's own event is acknowledged. Other subjects are plain NATS publishes (a
//! notification, at most once), flushed before the guest's call returns.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishError as JsPublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode};

use async_nats::{Request, RequestErrorKind};

use crate::imports::bus::{OutboundMessage, PublishError, Publisher, Reply, RequestError};
use crate::subject::EVENTS_PREFIX;

/// How long one publish may wait for the server before the guest gets `unavailable`.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes guest messages on NATS.
#[derive(Clone)]
pub struct NatsPublisher {
    js: jetstream::Context,
}

impl NatsPublisher {
    /// A publisher on this JetStream context's connection.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }
}

/// How often a publish is sent again while the stream says another publish of the same
/// `Nats-Msg-Id` is still being stored, and how long it waits between tries: about half a
/// second in all, well inside a listener's deadline.
const IN_PROCESS_TRIES: u32 = 25;
const IN_PROCESS_PAUSE: Duration = Duration::from_millis(20);

/// Publishes on the events stream and waits until it stored the message (or found it a
/// duplicate).
///
/// A clustered stream refuses a message whose `Nats-Msg-Id` another publish is storing right
/// now (JetStream error 10158, "duplicate message id is in process": two daemons emitting the
/// same event at once, as the billing listener's start and stop handlers do). That is neither
/// stored nor refused for good: the other publish may still fail. So the message is sent again
/// after a moment, until the stream answers stored or duplicate.
pub(crate) async fn store_on_stream(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, JsPublishError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let acked = async {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?
                .await
        }
        .await;
        match acked {
            Err(e) if tries < IN_PROCESS_TRIES && is_in_process(&e) => {
                tokio::time::sleep(IN_PROCESS_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Whether a publish was refused because another one of the same message id is being stored.
fn is_in_process(error: &JsPublishError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(server) = e.downcast_ref::<jetstream::Error>() {
            return server.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT;
        }
        next = e.source();
    }
    false
}

fn is_event_subject(subject: &str) -> bool {
    subject
        .strip_prefix(EVENTS_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[async_trait::async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, message: OutboundMessage) -> Result<(), PublishError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.append(name.as_str(), value.as_str());
        }
        let unavailable = |e: &dyn std::fmt::Display| PublishError::Unavailable(e.to_string());
        let work = async {
            if is_event_subject(&message.subject) {
                store_on_stream(&self.js, message.subject, headers, message.payload)
                    .await
                    .map_err(|e| unavailable(&e))?;
            } else {
                let client = self.js.client();
                match message.reply_to {
                    Some(reply) => {
                        client
                            .publish_with_reply_and_headers(
                                message.subject,
                                reply,
                                headers,
                                message.payload,
                            )
                            .await
                    }
                    None => {
                        client
                            .publish_with_headers(message.subject, headers, message.payload)
                            .await
                    }
                }
                .map_err(|e| unavailable(&e))?;
                client.flush().await.map_err(|e| unavailable(&e))?;
            }
            Ok(())
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::Unavailable(
                    "the bus did not answer in time".into(),
                ))
            })
    }

    /// A plain NATS request (a reply inbox and one answer), never through JetStream: the
    /// guest's checks refuse event subjects before this.
    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.append(name.as_str(), value.as_str());
        }
        let request = Request::new()
            .payload(message.payload)
            .headers(headers)
            .timeout(Some(timeout));
        match self
            .js
            .client()
            .send_request(message.subject, request)
            .await
        {
            Ok(answer) => Ok(Reply {
                subject: answer.subject.to_string(),
                payload: answer.payload,
            }),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => RequestError::NoResponders,
                RequestErrorKind::TimedOut => RequestError::TimedOut(timeout),
                _ => RequestError::Unavailable(e.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_refused_while_its_id_is_in_process_is_sent_again_and_nothing_else_is() {
        let server = |code: u64| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({
                "code": 503, "err_code": code, "description": "refused",
            }))
            .unwrap_or_else(|e| panic!("a server error decodes: {e}"))
        };
        let refused = |code| {
            JsPublishError::with_source(jetstream::context::PublishErrorKind::Other, server(code))
        };
        assert!(is_in_process(&refused(10158)));
        assert!(!is_in_process(&refused(10071)));
        assert!(!is_in_process(&JsPublishError::new(
            jetstream::context::PublishErrorKind::TimedOut
        )));
    }

    #[test]
    fn only_events_subjects_go_through_jetstream() {
        assert!(is_event_subject("events.vm.started"));
        assert!(!is_event_subject("eventsx.vm"));
        assert!(!is_event_subject("audit.vm"));
        assert!(!is_event_subject("events"));
    }
}
