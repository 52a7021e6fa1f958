//! [`NatsPublisher`]: where guests' `publish` and `emit` go in the daemon.
//!
//! A message for an event subject (`events.…`) is published through JetStream and the call
//! waits for the stream to store it, so an event a listener emitted is durable before the
//! listener's own event is acknowledged. Other subjects are plain NATS publishes (a
//! notification, at most once), flushed before the guest's call returns.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;

use crate::imports::bus::{OutboundMessage, PublishError, Publisher};
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
                self.js
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
                    .map_err(|e| unavailable(&e))?
                    .await
                    .map_err(|e| unavailable(&e))?;
            } else {
                let client = self.js.client();
                client
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_subjects_go_through_jetstream() {
        assert!(is_event_subject("events.vm.started"));
        assert!(!is_event_subject("eventsx.vm"));
        assert!(!is_event_subject("audit.vm"));
        assert!(!is_event_subject("events"));
    }
}
