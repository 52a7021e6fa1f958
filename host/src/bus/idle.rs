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
//! What sees the event is [`EventFeed`]: one ephemeral pull consumer per daemon over every event,
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
use async_nats::jetstream::stream::{
    ConsumerCreateStrictErrorKind, ConsumerError, ConsumerErrorKind, LastRawMessageErrorKind,
};
use futures::{Stream, StreamExt as _};

use super::bucket_error::BucketErrorKind;
use super::events::EventStream;
use super::store::now_rfc3339;
use super::subscription::{IdlePosition, Subscription};
use super::subscriptions::{SubscriptionStore, consumer_config, consumer_refused};
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
        // Nothing waits for an ack, so everything delivered was acknowledged: the position
        // is the later of the ack floor and the last delivered event (the server may move
        // that past events the filter skips).
        let after_sequence = info
            .ack_floor
            .stream_sequence
            .max(info.delivered.stream_sequence);
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
            // Another host rested it at the same moment.
            Err(e) if is_missing(&e) => Ok(Rested::Gone),
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
        let ack_wait = ack_wait.max(subscription.ack_wait().unwrap_or_default());
        // Create only: a consumer another host made meanwhile (from the same position or a
        // later one, maybe from a newer record) is never overwritten by this one.
        let made = stream
            .create_consumer_strict(consumer_config(&subscription, ack_wait, start))
            .await;
        if let Err(e) = made
            && stream.consumer_info(&name).await.is_err()
        {
            let code = match e.kind() {
                ConsumerCreateStrictErrorKind::JetStream(js) => Some(js.error_code()),
                _ => None,
            };
            let full = self.events().stream().await?;
            return Err(consumer_refused(&full, code, e.into()));
        }
        // The record may have changed while the consumer was made: unsubscribed (delete the
        // consumer again, or it would keep events for no one), or subscribed anew with other
        // patterns or limits (the consumer follows the record). `put` does the same from its
        // side, so whichever writes last, the two end up alike.
        self.reconcile(listener, &stream).await
    }

    /// Makes an existing consumer of `listener` match its record: deleted when there is no
    /// record, updated (keeping where it starts) when its patterns, in-flight cap or ack wait
    /// differ.
    pub(super) async fn reconcile(
        &self,
        listener: &str,
        stream: &async_nats::jetstream::stream::Stream<()>,
    ) -> Result<(), BusError> {
        let name = names::listener_consumer(listener);
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        };
        let Some(subscription) = self.get(listener).await? else {
            return match stream.delete_consumer(&name).await {
                Ok(_) => Ok(()),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(BusError::unavailable(
                    "delete the consumer of an unsubscribed listener",
                    e,
                )),
            };
        };
        let ack_wait = info
            .config
            .ack_wait
            .max(subscription.ack_wait().unwrap_or_default());
        let wanted = consumer_config(&subscription, ack_wait, info.config.deliver_policy);
        let same = info.config.filter_subjects == wanted.filter_subjects
            && info.config.max_ack_pending == wanted.max_ack_pending
            && info.config.ack_wait == wanted.ack_wait;
        if same {
            return Ok(());
        }
        stream
            .update_consumer(wanted)
            .await
            .map(|_| ())
            .map_err(|e| BusError::unavailable("update the listener's consumer", e))
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

/// Every event's subject and stream sequence, from a given sequence on: one ephemeral pull
/// consumer over `events.>` per daemon, headers only, nothing to acknowledge.
///
/// Not the client's ordered consumer: that one, broken before it showed its first message,
/// starts again from the *first* event in the stream, and a quiet stream (exactly when
/// listeners are idle) would then replay everything it keeps and wake every listener. This
/// feed ends instead, at a gap or any error, and its owner opens it again just after the last
/// sequence it showed.
pub struct EventFeed {
    stream: async_nats::jetstream::stream::Stream<()>,
    name: String,
}

/// One event as the feed shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedEvent {
    /// Its subject, `events.<type>`.
    pub subject: String,
    /// Its sequence in the events stream.
    pub sequence: u64,
}

/// How long the server keeps a feed's consumer once nobody pulls from it.
const FEED_INACTIVE: Duration = Duration::from_secs(30);

impl EventFeed {
    /// Follows the events stream from `from` (a stream sequence; `None`: just after the last
    /// event stored now). Returns the feed (to [`close`](Self::close) when done), the first
    /// sequence it can show, and the events, which end or yield an error when the feed
    /// breaks: open it again from after the last sequence shown.
    pub async fn open(
        events: &EventStream,
        from: Option<u64>,
    ) -> Result<
        (
            Self,
            u64,
            impl Stream<Item = Result<FedEvent, BusError>> + use<>,
        ),
        BusError,
    > {
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
        let config = consumer::pull::Config {
            description: Some("sandbus: wakes idle listeners".to_owned()),
            filter_subject: format!("{}.>", crate::subject::EVENTS_PREFIX),
            headers_only: true,
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            inactive_threshold: FEED_INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| BusError::unavailable("follow the events stream", e))?;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::unavailable("follow the events stream", e))?;
        // Nothing is redelivered without acks, so the consumer's own sequence counts every
        // message it sent: a jump is a message lost on the way (a slow consumer), and the
        // feed ends there.
        let mut next_delivery = 1;
        let events = messages.map(move |next| {
            let message = next.map_err(|e| BusError::unavailable("follow the events stream", e))?;
            let info = message
                .info()
                .map_err(|e| BusError::unavailable("read an event's place in the feed", e))?;
            if info.consumer_sequence != next_delivery {
                return Err(BusError::unavailable(
                    "follow the events stream",
                    format!(
                        "message {} of the feed came after {}: some were lost",
                        info.consumer_sequence,
                        next_delivery.saturating_sub(1)
                    ),
                ));
            }
            next_delivery += 1;
            Ok(FedEvent {
                subject: message.subject.to_string(),
                sequence: info.stream_sequence,
            })
        });
        Ok((Self { stream, name }, start, events))
    }

    /// Deletes the feed's consumer (the server would after 30 s of silence anyway).
    pub async fn close(self) {
        if let Err(e) = self.stream.delete_consumer(&self.name).await
            && !is_missing(&e)
        {
            tracing::debug!(consumer = %self.name, error = %e, "could not delete the event feed's consumer");
        }
    }
}
