//! Idle listeners: a listener with nothing to do has no consumer on the events stream.
//!
//! A consumer per subscribed listener does not scale to thousands of listeners: the stream's
//! consumer limit, one raft group per consumer in a cluster, and an open pull with its
//! heartbeats per listener and daemon, all for listeners that are idle. So a listener whose
//! consumer had nothing pending and nothing in flight for a while is *rested*
//! ([`SubscriptionStore::rest`]): where its consumer stood is written into its subscription
//! record ([`IdlePosition`]) with a compare-and-set, then the consumer is deleted. The next
//! event for it *wakes* it ([`SubscriptionStore::wake`]): the consumer is made again, starting
//! just after that position, from whichever daemon sees the event first (the same config from
//! every daemon: making it is idempotent).
//!
//! What sees the event is [`EventFeed`]: one ordered consumer per daemon over every event,
//! headers only. The feed only shows what is published after it starts, so whoever marks a
//! listener idle also asks [`SubscriptionStore::events_since_idle`] once whether an event
//! came between the position and what the feed has shown: that closes the race between
//! resting a listener and an event arriving for it.
//!
//! Nothing here drops an event: a position is only ever an ack floor, the stream keeps
//! events by age (not by interest), and a consumer made again redelivers from just after it.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, LastRawMessageErrorKind};
use futures::{Stream, StreamExt as _};

use super::bucket_error::BucketErrorKind;
use super::events::EventStream;
use super::store::now_rfc3339;
use super::subscriptions::{
    IdlePosition, Subscription, SubscriptionStore, consumer_config, consumer_refused,
};
use super::{BusError, BusErrorKind, names};

/// How many times a rest tries its compare-and-set on the subscription record.
const REST_TRIES: u32 = 5;

/// What [`SubscriptionStore::rest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rested {
    /// The position is recorded and the consumer deleted: the listener is idle.
    Idle,
    /// The consumer has events pending or in flight: it stays.
    Busy,
    /// There is no consumer (another daemon rested it) or no subscription any more.
    Gone,
}

impl SubscriptionStore {
    /// Rests `listener` if its consumer has nothing pending and nothing in flight: records its
    /// ack floor as the listener's [`IdlePosition`], then deletes the consumer.
    ///
    /// Another daemon pulling from the consumer sees it deleted and goes idle too; an event
    /// it had in flight is after the position and is delivered again once the listener wakes.
    ///
    /// `quiet` is how long the consumer must have delivered and been acknowledged nothing,
    /// on any host: a host that got no events for a while while another got them all must not
    /// rest a listener that is busy elsewhere.
    pub async fn rest(&self, listener: &str, quiet: Duration) -> Result<Rested, BusError> {
        let stream = self.events().handle().await?;
        let name = names::listener_consumer(listener);
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(Rested::Gone),
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        };
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(Rested::Busy);
        }
        let last_active = [info.delivered.last_active, info.ack_floor.last_active]
            .into_iter()
            .flatten()
            .map(|at| at.unix_timestamp_nanos())
            .max();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if last_active.is_some_and(|at| now - at < quiet.as_nanos() as i128) {
            return Ok(Rested::Busy);
        }
        let after_sequence = info.ack_floor.stream_sequence;
        let mut recorded = false;
        for _ in 0..REST_TRIES {
            let Some(current) = self
                .records()
                .entry(listener)
                .await
                .map_err(|e| e.into_bus_error("read the subscription"))?
            else {
                return Ok(Rested::Gone);
            };
            let mut subscription = current.value;
            if subscription
                .idle
                .as_ref()
                .is_some_and(|idle| idle.after_sequence >= after_sequence)
            {
                recorded = true;
                break;
            }
            subscription.idle = Some(IdlePosition {
                after_sequence,
                since: now_rfc3339(),
            });
            match self
                .records()
                .update(listener, &subscription, current.revision)
                .await
            {
                Ok(_) => {
                    recorded = true;
                    break;
                }
                Err(e) if e.kind() == BucketErrorKind::LostRace => continue,
                Err(e) => return Err(e.into_bus_error("record where the idle listener stood")),
            }
        }
        if !recorded {
            return Ok(Rested::Busy);
        }
        match stream.delete_consumer(&name).await {
            Ok(_) => Ok(Rested::Idle),
            Err(e) if is_missing(&e) => Ok(Rested::Idle),
            Err(e) => Err(BusError::unavailable(
                "delete the idle listener's consumer",
                e,
            )),
        }
    }

    /// Makes `listener`'s consumer again if it has none, starting just after its
    /// [`IdlePosition`], with `ack_wait` (which must cover the listener's deadline). Nothing
    /// to do when the consumer exists. [`BusErrorKind::NotFound`] when there is neither a
    /// consumer nor a position to start from (unsubscribed, or a consumer deleted by hand).
    pub async fn wake(&self, listener: &str, ack_wait: Duration) -> Result<(), BusError> {
        let stream = self.events().handle().await?;
        let name = names::listener_consumer(listener);
        match stream.consumer_info(&name).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        }
        let subscription = self.get(listener).await?;
        let Some((subscription, idle)) =
            subscription.and_then(|s| s.idle.clone().map(|idle| (s, idle)))
        else {
            return Err(BusError::new(
                BusErrorKind::NotFound,
                format!("`{listener}` has no consumer and no position to make one from"),
            ));
        };
        let start = DeliverPolicy::ByStartSequence {
            start_sequence: idle.after_sequence.saturating_add(1),
        };
        let config = consumer_config(&subscription, ack_wait, start);
        match stream.create_consumer(config).await {
            Ok(_) => Ok(()),
            // Another daemon woke it first (from the same position or a later one).
            Err(_) if stream.consumer_info(&name).await.is_ok() => Ok(()),
            Err(e) => {
                let code = match e.kind() {
                    ConsumerErrorKind::JetStream(js) => Some(js.error_code()),
                    _ => None,
                };
                let full = self.events().stream().await?;
                Err(consumer_refused(&full, code, e.into()))
            }
        }
    }

    /// Whether an event for the idle listener of `subscription` was published after its
    /// [`IdlePosition`] and at or before `seen`, the last sequence an [`EventFeed`] has
    /// shown: such an event the feed may have shown while the listener was not idle yet, so
    /// it woke nothing. `false` when the record has no position. One request per pattern,
    /// none when the feed has shown nothing after the position.
    pub async fn events_since_idle(
        &self,
        subscription: &Subscription,
        seen: u64,
    ) -> Result<bool, BusError> {
        let Some(idle) = &subscription.idle else {
            return Ok(false);
        };
        if idle.after_sequence >= seen {
            return Ok(false);
        }
        let stream = self.events().handle().await?;
        for filter in subscription.filter_subjects() {
            let found = stream
                .raw_message_builder()
                .sequence(idle.after_sequence.saturating_add(1))
                .next_by_subject(filter)
                .send()
                .await;
            match found {
                Ok(message) if message.sequence <= seen => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(BusError::unavailable("look for the listener's events", e)),
            }
        }
        Ok(false)
    }
}

/// Whether the server answered that the consumer does not exist.
fn is_missing(e: &ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(js) if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// Every event's subject and stream sequence, as published from when the feed starts: one
/// ordered consumer over `events.>`, headers only, per daemon.
pub struct EventFeed;

/// One event as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedEvent {
    /// Its subject, `events.<type>`.
    pub subject: String,
    /// Its sequence in the events stream.
    pub sequence: u64,
}

impl EventFeed {
    /// Follows the events stream from `from` (a stream sequence; `None`: just after the last
    /// event stored now). Returns the first sequence it can show and the feed, which ends or
    /// yields an error when it breaks: open it again from after the last sequence it showed.
    pub async fn open(
        events: &EventStream,
        from: Option<u64>,
    ) -> Result<(u64, impl Stream<Item = Result<FedEvent, BusError>> + use<>), BusError> {
        let stream = events.handle().await?;
        let start = match from {
            Some(from) => from,
            None => {
                let info = stream
                    .get_info()
                    .await
                    .map_err(|e| BusError::unavailable("read the events stream", e))?;
                info.state.last_sequence.saturating_add(1)
            }
        };
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", crate::subject::EVENTS_PREFIX),
            headers_only: true,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        };
        let messages = stream
            .create_consumer(config)
            .await
            .map_err(|e| BusError::unavailable("follow the events stream", e))?
            .messages()
            .await
            .map_err(|e| BusError::unavailable("follow the events stream", e))?;
        Ok((
            start,
            messages.map(|next| {
                let message =
                    next.map_err(|e| BusError::unavailable("follow the events stream", e))?;
                let sequence = message
                    .info()
                    .map_err(|e| BusError::unavailable("read an event's place in the feed", e))?
                    .stream_sequence;
                Ok(FedEvent {
                    subject: message.subject.to_string(),
                    sequence,
                })
            }),
        ))
    }
}
