//! [`Delivery`]: one event handed to a listener's dispatcher, and the answers it can give;
//! [`DeliverySource`]: where a dispatcher pulls them from.
//!
//! The dispatcher decides what happens to an event (handled, retried, dead-lettered); this
//! seam is how that decision reaches the server, so the dispatcher never names JetStream and
//! can be tested with a delivery that records what it was told. The daemon's deliveries are
//! JetStream messages pulled from the listener's durable consumer
//! ([`SubscriptionStore`] is the daemon's [`DeliverySource`]).

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use super::idle::Rested;
use super::subscriptions::SubscriptionStore;
use super::{BusError, BusErrorKind};

/// How often the server says it is alive during a pull that has nothing to deliver: a pull
/// that stays silent for two of these is broken, the stream reports it, and the dispatcher
/// pulls again ([`PullError::Ended`]).
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// How long one pull request waits for messages before the client asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// Where a delivered event stands in its stream and consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// Its sequence in the events stream: the same on every delivery of the event.
    pub stream_sequence: u64,
    /// How many times it has been delivered, this time included (1 the first time).
    pub delivered: u64,
    /// Events still waiting in the consumer behind this one (as the server counted when it
    /// delivered this one).
    pub pending: u64,
}

/// One delivery of an event to a listener's dispatcher.
///
/// The server holds the event until it is answered once: [`ack`](Self::ack) (done),
/// [`nak`](Self::nak) (deliver again after a delay) or [`term`](Self::term) (never again);
/// [`in_progress`](Self::in_progress) may come any number of times before that, and stops
/// the server from redelivering it while it is still being handled. An answer that fails to
/// reach the server leaves the event to be redelivered after the consumer's ack wait.
#[async_trait::async_trait]
pub trait Delivery: Send + Sync {
    /// Its place in the stream and how often it was delivered. An error means the message
    /// did not come from a consumer (no delivery metadata): it can only be terminated.
    fn info(&self) -> Result<DeliveryInfo, BusError>;

    /// The subject it was published on (`events.<type>`).
    fn subject(&self) -> &str;

    /// Its body exactly as published.
    fn payload(&self) -> &Bytes;

    /// Its headers exactly as published: each name as written and its value, a repeated
    /// header once per value (a binary-mode event's attributes are `ce-*` headers; a dead
    /// letter keeps them all).
    fn headers(&self) -> Vec<(&str, &str)>;

    /// Handled: the event is never delivered to this listener again.
    async fn ack(&self) -> Result<(), BusError>;

    /// Not handled: deliver it again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;

    /// Never deliver it again, handled or not (it was dead-lettered, or cannot be read).
    async fn term(&self) -> Result<(), BusError>;

    /// Still being handled: restarts the consumer's ack wait.
    async fn in_progress(&self) -> Result<(), BusError>;
}

/// The answers go to the message's reply subject; none of them waits for the server to
/// confirm (an answer that is lost is made up for by a redelivery).
#[async_trait::async_trait]
impl Delivery for jetstream::Message {
    fn info(&self) -> Result<DeliveryInfo, BusError> {
        let info = jetstream::Message::info(self).map_err(|e| {
            BusError::new(
                BusErrorKind::Corrupt,
                format!("a message without JetStream metadata: {e}"),
            )
            .caused_by(e)
        })?;
        Ok(DeliveryInfo {
            stream_sequence: info.stream_sequence,
            delivered: u64::try_from(info.delivered).unwrap_or(0),
            pending: info.pending,
        })
    }

    fn subject(&self) -> &str {
        self.subject.as_str()
    }

    fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers.as_ref().map(header_pairs).unwrap_or_default()
    }

    async fn ack(&self) -> Result<(), BusError> {
        jetstream::Message::ack(self)
            .await
            .map_err(|e| BusError::unavailable("acknowledge the event", e))
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        self.ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::unavailable("hand the event back", e))
    }

    async fn term(&self) -> Result<(), BusError> {
        self.ack_with(AckKind::Term)
            .await
            .map_err(|e| BusError::unavailable("terminate the event", e))
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.ack_with(AckKind::Progress)
            .await
            .map_err(|e| BusError::unavailable("report the event in progress", e))
    }
}

/// The headers of a message as (name, value), a repeated header once per value.
pub(super) fn header_pairs(headers: &async_nats::HeaderMap) -> Vec<(&str, &str)> {
    headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (AsRef::<str>::as_ref(name), value.as_str()))
        })
        .collect()
}

/// Why a stream of deliveries yielded an error instead of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// A hiccup the stream gets over by itself (a pull request that failed, a status it
    /// could not read): keep reading it.
    #[error("pull interrupted: {0}")]
    Interrupted(String),
    /// The stream will deliver nothing more (its consumer was deleted, the server refused
    /// the pull, or the server went silent: two heartbeats missed): pull again. Nothing is
    /// buffered in it when it went silent.
    #[error("pull ended: {0}")]
    Ended(String),
    /// The consumer was deleted (the listener was rested, or unsubscribed), or no consumer
    /// answers the pull (how a pull sent just after the deletion ends). Pulling again tells
    /// which: no consumer, or an error worth a warning.
    #[error("pull ended: the consumer was deleted")]
    Deleted,
}

impl From<MessagesError> for PullError {
    fn from(e: MessagesError) -> Self {
        match e.kind() {
            MessagesErrorKind::Pull | MessagesErrorKind::Other => {
                PullError::Interrupted(e.to_string())
            }
            // Two heartbeats missed: the server holds no pull request of this stream, though
            // the stream believes it does. Left alone, the stream would ask again only when
            // its last request should have expired (`PULL_EXPIRES` plus 5 s: a 35 s stall
            // seen in the daemon bench while events waited), so pull again now.
            MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders => {
                PullError::Deleted
            }
            // No server answers, the server refused the pull...
            _ => PullError::Ended(e.to_string()),
        }
    }
}

/// A listener's deliveries as they are pulled. It ends (or yields [`PullError::Ended`]) when
/// the pull is over; the dispatcher then pulls again.
pub type Deliveries = BoxStream<'static, Result<Box<dyn Delivery>, PullError>>;

/// Where a dispatcher pulls its listener's deliveries from.
#[async_trait::async_trait]
pub trait DeliverySource: Send + Sync {
    /// Starts pulling `listener`'s deliveries, asking for at most `batch` at a time (the
    /// next batch is asked for while this one is handled). Fails when the listener's
    /// consumer is missing or the server cannot be asked; try again later.
    async fn pull(&self, listener: &str, batch: usize) -> Result<Deliveries, BusError>;

    /// Rests `listener` when it has nothing pending, nothing in flight and nothing delivered
    /// or acknowledged on any host for `quiet`: its consumer is deleted and where it stood
    /// recorded, so an idle listener costs the server nothing ([`SubscriptionStore::rest`]).
    async fn rest(&self, listener: &str, quiet: Duration) -> Result<Rested, BusError>;

    /// Makes an idle listener's consumer again, from where it stood, with `ack_wait`; nothing
    /// to do if it has one. [`BusErrorKind::NotFound`] when it has neither a consumer nor a
    /// position ([`SubscriptionStore::wake`]).
    async fn wake(&self, listener: &str, ack_wait: Duration) -> Result<(), BusError>;
}

/// Pulls from the listener's durable consumer on the events stream.
#[async_trait::async_trait]
impl DeliverySource for SubscriptionStore {
    async fn pull(&self, listener: &str, batch: usize) -> Result<Deliveries, BusError> {
        let consumer = self.consumer(listener).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| BusError::unavailable("pull the listener's events", e))?;
        Ok(messages
            .map(|next| match next {
                Ok(message) => Ok(Box::new(message) as Box<dyn Delivery>),
                Err(e) => Err(PullError::from(e)),
            })
            .boxed())
    }

    async fn rest(&self, listener: &str, quiet: Duration) -> Result<Rested, BusError> {
        SubscriptionStore::rest(self, listener, quiet).await
    }

    async fn wake(&self, listener: &str, ack_wait: Duration) -> Result<(), BusError> {
        SubscriptionStore::wake(self, listener, ack_wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_that_can_recover_is_interrupted_and_a_silent_or_refused_one_has_ended() {
        for (kind, recovers) in [
            (MessagesErrorKind::MissingHeartbeat, false),
            (MessagesErrorKind::Pull, true),
            (MessagesErrorKind::Other, true),
            (MessagesErrorKind::ConsumerDeleted, false),
            (MessagesErrorKind::PushBasedConsumer, false),
            (MessagesErrorKind::NoResponders, false),
            (MessagesErrorKind::RequestLimitExceeded, false),
        ] {
            let error = PullError::from(MessagesError::new(kind));
            assert_eq!(
                matches!(error, PullError::Interrupted(_)),
                recovers,
                "{kind}: {error}"
            );
        }
        for kind in [
            MessagesErrorKind::ConsumerDeleted,
            MessagesErrorKind::NoResponders,
        ] {
            assert_eq!(
                PullError::from(MessagesError::new(kind)),
                PullError::Deleted,
                "{kind}: a deleted consumer is told apart: the listener was rested or unsubscribed"
            );
        }
    }
}
