//! Listener subscriptions: durable JetStream pull consumers on the events stream.
//!
//! A [`Subscription`] (`subscription.rs`) says which event types a listener gets and how
//! failures are retried. Subscribing creates (or updates) the listener's durable consumer right away, so events
//! published from then on are kept for it even while no daemon runs it, and records the
//! subscription in a KV bucket that every daemon watches to start or stop its dispatchers.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{ConsumerErrorKind, ConsumerUpdateErrorKind};
use async_nats::jetstream::{self};
use futures::{Stream, StreamExt as _};

use super::bucket::BucketSpec;
use super::bucket_error::BucketErrorKind;
use super::events::EventStream;
use super::json_bucket::{Change, JsonBucket, Unreadable};
use super::names;
use super::subscription::Subscription;
use super::{BusError, BusErrorKind};
use sandbus_host_events::ListenerThrottled;

/// The key of a listener's latest throttling report in the status bucket (its last error is
/// under its own name, and names have no dots).
fn throttled_key(listener: &str) -> String {
    format!("{listener}.throttled")
}

/// How many times a subscribe starts over when the record changed while it was written.
const PUT_TRIES: u32 = 5;

/// The most recent failure of a listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// The host it happened on.
    pub host: String,
    /// The event's sequence in the events stream.
    pub sequence: u64,
    /// The event id, when the event could be read.
    pub event_id: Option<String>,
    /// What went wrong.
    pub reason: String,
}

/// How a listener is doing, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerStatus {
    /// The subscription.
    pub subscription: Subscription,
    /// Events matching the subscription not yet delivered.
    pub pending: u64,
    /// Events delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Events delivered more than once so far.
    pub redelivered: u64,
    /// Events in the dead-letter stream for this listener.
    pub dead_lettered: u64,
    /// The last failure, if any.
    pub last_error: Option<LastError>,
    /// The latest report of the listener's publish rate cap holding it back, if any.
    #[serde(default)]
    pub last_throttled: Option<ListenerThrottled>,
    /// Idle: it has no consumer now (its next event makes it again, from
    /// `subscription.idle`); pending, in flight and redelivered are then 0.
    #[serde(default)]
    pub idle: bool,
}

/// A change seen by [`SubscriptionStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// A subscription was made or changed.
    Put(Subscription),
    /// A listener was unsubscribed.
    Removed(String),
}

/// The cluster's subscriptions and their consumers.
#[derive(Clone)]
pub struct SubscriptionStore {
    subscriptions: JsonBucket<Subscription>,
    status: JsonBucket<LastError>,
    events: EventStream,
}

impl SubscriptionStore {
    /// Creates the buckets if missing (the daemon does this).
    pub async fn ensure(
        js: &jetstream::Context,
        events: EventStream,
        replicas: usize,
    ) -> Result<Self, BusError> {
        let subscriptions = BucketSpec::new(
            names::SUBSCRIPTIONS_BUCKET,
            "sandbus listener subscriptions",
            replicas,
        )
        .history(4);
        let status = BucketSpec::new(
            names::LISTENER_STATUS_BUCKET,
            "sandbus listener status",
            replicas,
        );
        let subscriptions = JsonBucket::ensure(js, subscriptions).await?;
        let status = JsonBucket::ensure(js, status).await?;
        Ok(Self {
            subscriptions,
            status,
            events,
        })
    }

    /// The subscription records, for the idling in [`super::idle`].
    pub(super) fn records(&self) -> &JsonBucket<Subscription> {
        &self.subscriptions
    }

    /// The events stream the consumers are on.
    pub fn events(&self) -> &EventStream {
        &self.events
    }

    /// Creates or updates the listener's consumer, then records the subscription.
    /// `ack_wait` must cover the listener's deadline.
    pub async fn put(
        &self,
        subscription: &Subscription,
        ack_wait: Duration,
    ) -> Result<(), BusError> {
        // The record is written with a compare-and-set on what was read: a listener rested
        // meanwhile (its position written, its consumer deleted) is not given a record that
        // forgets where it stood. A lost race starts over from what is there now.
        for _ in 0..PUT_TRIES {
            if self.put_once(subscription, ack_wait).await? {
                return Ok(());
            }
        }
        Err(BusError::new(
            BusErrorKind::Conflict,
            format!(
                "the subscription of `{}` kept changing while it was written; try again",
                subscription.listener
            ),
        ))
    }

    /// One try of [`Self::put`]; `false` when the record changed since it was read.
    async fn put_once(
        &self,
        subscription: &Subscription,
        ack_wait: Duration,
    ) -> Result<bool, BusError> {
        let stream = self.events.stream().await?;
        let name = names::listener_consumer(&subscription.listener);
        let current = self
            .subscriptions
            .read(&subscription.listener)
            .await
            .map_err(|e| e.into_bus_error("read the subscription"))?;
        // A subscribe never moves where an idle listener stood: its consumer is made again,
        // from there, by the next event for it ([`IdlePosition`]).
        let mut subscription = subscription.clone();
        subscription.idle = current.value.ok().flatten().and_then(|s| s.idle);
        subscription.ack_wait_ms = Some(u64::try_from(ack_wait.as_millis()).unwrap_or(u64::MAX));
        let subscription = &subscription;
        // What the consumer was before, to put back if the record cannot be written.
        let before = match stream.consumer_info(&name).await {
            Ok(info) => Some(info.config),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        };
        // A consumer made again after idling starts at a sequence; an update keeps that.
        let deliver = before
            .as_ref()
            .map_or(DeliverPolicy::New, |c| c.deliver_policy);
        let config = consumer_config(subscription, ack_wait, deliver);
        let idle = before.is_none() && subscription.idle.is_some();
        let made = match before {
            None if idle => Ok(()),
            Some(_) => stream
                .update_consumer(config)
                .await
                .map(|_| ())
                .map_err(|e| {
                    let code = match e.kind() {
                        ConsumerUpdateErrorKind::JetStream(js) => Some(js.error_code()),
                        _ => None,
                    };
                    (code, async_nats::Error::from(e))
                }),
            None => stream
                .create_consumer(config)
                .await
                .map(|_| ())
                .map_err(|e| {
                    let code = match e.kind() {
                        ConsumerErrorKind::JetStream(js) => Some(js.error_code()),
                        _ => None,
                    };
                    (code, async_nats::Error::from(e))
                }),
        };
        made.map_err(|(code, e)| consumer_refused(&stream, code, e))?;
        match self
            .subscriptions
            .update(&subscription.listener, subscription, current.revision)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == BucketErrorKind::LostRace => return Ok(false),
            Err(e) => {
                // Leave nothing half-made: a consumer without a record would keep events for
                // a listener no daemon runs and no `status` shows.
                let undone: Result<(), async_nats::Error> = match before {
                    Some(config) => stream
                        .update_consumer(config)
                        .await
                        .map(|_| ())
                        .map_err(Into::into),
                    None if idle => Ok(()),
                    None => stream
                        .delete_consumer(&name)
                        .await
                        .map(|_| ())
                        .map_err(Into::into),
                };
                if let Err(undo) = undone {
                    tracing::warn!(consumer = %name, error = %undo,
                        "could not undo the listener's consumer after its record failed");
                }
                return Err(e.into_bus_error("record the subscription"));
            }
        }
        if idle {
            // Woken by an event while the record was written: the consumer it made may
            // follow the record before this one.
            let handle = self.events.handle().await?;
            self.reconcile(&subscription.listener, &handle).await?;
        }
        Ok(true)
    }

    /// Updates only the consumer's ack wait (after a listener's deadline changed).
    pub async fn set_ack_wait(
        &self,
        subscription: &Subscription,
        ack_wait: Duration,
    ) -> Result<(), BusError> {
        self.put(subscription, ack_wait).await
    }

    /// The subscription of `listener`.
    pub async fn get(&self, listener: &str) -> Result<Option<Subscription>, BusError> {
        self.subscriptions
            .get(listener)
            .await
            .map_err(|e| e.into_bus_error("read the subscription"))
    }

    /// Every subscription, by listener.
    pub async fn list(&self) -> Result<Vec<Subscription>, BusError> {
        self.subscriptions
            .values(Unreadable::Fails)
            .await
            .map_err(|e| e.into_bus_error("list the subscriptions"))
    }

    /// Deletes the consumer (pending events for it are dropped), the record, the status and
    /// the dead letters of `listener`.
    pub async fn remove(&self, listener: &str) -> Result<Subscription, BusError> {
        let subscription = self.get(listener).await?.ok_or_else(|| {
            BusError::new(
                BusErrorKind::NotFound,
                format!("`{listener}` is not subscribed; `sandbus status` lists subscriptions"),
            )
        })?;
        // The record goes first: a daemon waking the idle listener at this moment reads the
        // record again after making the consumer, finds it gone and deletes what it made
        // (`SubscriptionStore::wake`), so no consumer is left for no one.
        self.subscriptions
            .delete(listener)
            .await
            .map_err(|e| e.into_bus_error("remove the subscription"))?;
        let stream = self.events.handle().await?;
        let name = names::listener_consumer(listener);
        if let Err(e) = stream.delete_consumer(&name).await
            && stream.consumer_info(&name).await.is_ok()
        {
            // Put the record back: an unsubscribe that failed changes nothing.
            if let Err(back) = self.subscriptions.put(listener, &subscription).await {
                tracing::warn!(listener, error = %back,
                    "could not put back the subscription after its consumer could not be deleted");
            }
            return Err(BusError::unavailable("delete the listener's consumer", e));
        }
        let _ = self.status.purge(listener).await;
        let _ = self
            .status
            .records_of::<ListenerThrottled>()
            .purge(&throttled_key(listener))
            .await;
        self.events.purge_dead_letters(listener).await?;
        Ok(subscription)
    }

    /// The listener's pull consumer, to fetch from.
    pub async fn consumer(&self, listener: &str) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.events.handle().await?;
        let name = names::listener_consumer(listener);
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                return Err(BusError::new(
                    BusErrorKind::NotFound,
                    format!("the consumer of `{listener}` is missing (idle, or unsubscribed)"),
                )
                .caused_by(e));
            }
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        };
        // One request, not get_consumer's second one: pulls are made often (after every
        // pull that ended).
        let config =
            <pull::Config as consumer::FromConsumer>::try_from_consumer_config(info.config.clone())
                .map_err(|e| BusError::unavailable("read the listener's consumer", e))?;
        Ok(consumer::Consumer::new(
            config,
            info,
            self.events.context().clone(),
        ))
    }

    /// Records the listener's latest failure.
    pub async fn record_failure(&self, listener: &str, error: &LastError) -> Result<(), BusError> {
        self.status
            .put(listener, error)
            .await
            .map_err(|e| e.into_bus_error("record the listener's status"))?;
        Ok(())
    }

    /// Records the listener's latest throttling report.
    pub async fn record_throttled(&self, report: &ListenerThrottled) -> Result<(), BusError> {
        self.status
            .records_of::<ListenerThrottled>()
            .put(&throttled_key(&report.listener), report)
            .await
            .map_err(|e| e.into_bus_error("record the listener's throttling"))?;
        Ok(())
    }

    /// The listener's status: consumer counters, dead letters, its last failure and its
    /// latest throttling.
    pub async fn status(&self, listener: &str) -> Result<ListenerStatus, BusError> {
        let subscription = self.get(listener).await?.ok_or_else(|| {
            BusError::new(
                BusErrorKind::NotFound,
                format!("`{listener}` is not subscribed; `sandbus subscribe {listener} --events PATTERN` subscribes it"),
            )
        })?;
        let stream = self.events.handle().await?;
        let info = match stream
            .consumer_info(&names::listener_consumer(listener))
            .await
        {
            Ok(info) => Some(info),
            Err(e)
                if e.kind() == ConsumerInfoErrorKind::NotFound && subscription.idle.is_some() =>
            {
                None
            }
            Err(e) => return Err(BusError::unavailable("read the listener's consumer", e)),
        };
        // A status that cannot be read or decoded is no reason to fail the whole status.
        let last_error = self.status.get(listener).await.ok().flatten();
        let last_throttled = self
            .status
            .records_of::<ListenerThrottled>()
            .get(&throttled_key(listener))
            .await
            .ok()
            .flatten();
        Ok(ListenerStatus {
            subscription,
            pending: info.as_ref().map_or(0, |i| i.num_pending),
            in_flight: info.as_ref().map_or(0, |i| i.num_ack_pending as u64),
            redelivered: info.as_ref().map_or(0, |i| i.num_redelivered as u64),
            idle: info.is_none(),
            dead_lettered: self.events.dead_lettered(listener).await?,
            last_error,
            last_throttled,
        })
    }

    /// The current subscriptions, then every change. Ends if the watch breaks; watch again.
    /// An entry this version cannot read is logged and skipped.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<SubscriptionChange, BusError>> + use<>, BusError> {
        let watch = self
            .subscriptions
            .watch()
            .await
            .map_err(|e| e.into_bus_error("watch the subscriptions"))?;
        Ok(watch.map(|change| match change {
            Ok(Change::Put { value, .. }) => Ok(SubscriptionChange::Put(value)),
            Ok(Change::Removed { key }) => Ok(SubscriptionChange::Removed(key)),
            Err(e) => Err(e.into_bus_error("watch the subscriptions")),
        }))
    }
}

/// The error for a consumer the server would not create or update. A full stream is a
/// [`BusErrorKind::ServerLimit`] naming the stream's limit and what to change.
pub(super) fn consumer_refused(
    stream: &jetstream::stream::Stream,
    code: Option<jetstream::ErrorCode>,
    e: async_nats::Error,
) -> BusError {
    if code != Some(jetstream::ErrorCode::MAXIMUM_CONSUMERS_LIMIT) {
        return BusError::unavailable("create the listener's consumer", e);
    }
    let info = stream.cached_info();
    let limit = match info.config.max_consumers {
        n if n > 0 => format!("its max_consumers, {n}"),
        _ => "the server's default_max_consumers, 1,000 on nats-server 2.15".to_owned(),
    };
    BusError::new(
        BusErrorKind::ServerLimit,
        format!(
            "the events stream {} holds as many consumers as it may ({limit}); every \
             subscribed listener is one. Raise `[events] max_consumers` in the daemons' config \
             and restart a daemon (and the account's JetStream consumer limit, if it has one), \
             or unsubscribe a listener",
            info.config.name
        ),
    )
    .caused_by(e)
}

/// The durable consumer of a listener: its filters, explicit acks, `ack_wait`, no server-side
/// delivery limit (the dispatcher counts deliveries), the in-flight cap, starting at `deliver`.
pub(super) fn consumer_config(
    subscription: &Subscription,
    ack_wait: Duration,
    deliver: DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(names::listener_consumer(&subscription.listener)),
        description: Some(format!("sandbus listener {}", subscription.listener)),
        filter_subjects: subscription.filter_subjects(),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        // Deliveries are counted by the dispatcher, which dead-letters at max_deliver;
        // the server must never silently stop redelivering on its own.
        max_deliver: -1,
        max_ack_pending: i64::from(subscription.max_in_flight),
        deliver_policy: deliver,
        max_waiting: 512,
        ..Default::default()
    }
}

/// Extra time a consumer waits for an ack beyond the listener's own deadline.
const ACK_MARGIN: Duration = Duration::from_secs(30);

/// The ack wait a listener's consumer needs for a deadline of `timeout`: the deadline and a
/// margin, so a call that runs to its deadline is acknowledged before the server redelivers
/// it. A dispatcher whose event waits longer (for a free instance) reports progress well
/// within it.
pub fn ack_wait_for(timeout: Duration) -> Duration {
    timeout.saturating_add(ACK_MARGIN)
}
