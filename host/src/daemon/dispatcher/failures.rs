//! [`ListenerFailures`]: where a dispatcher reports what went wrong with its listener's
//! events, and [`BusFailures`], the daemon's: the listener status bucket, the dead-letter
//! stream and this host's events.

use crate::bus::{BusError, DeadLetter, EventStream, LastError, SubscriptionStore};
use crate::daemon::host_events::HostEvents;
use crate::daemon::host_events::{ListenerDeadLettered, ListenerFailed, ListenerThrottled};

/// Where a dispatcher reports what went wrong with its listener's events: in the daemon,
/// the bus ([`BusFailures`]). A report that fails is logged; only a dead letter that could
/// not be stored changes what happens to the event (it is handed back, not dropped).
#[async_trait::async_trait]
pub trait ListenerFailures: Send + Sync {
    /// Records `failure` as `listener`'s latest (`sandbus status` shows it).
    async fn record(&self, listener: &str, failure: &LastError) -> Result<(), BusError>;

    /// Stores a copy of the event the listener gave up on, with the reason. The same
    /// listener and sequence is stored once, however often this is called.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError>;

    /// Emits `sandbus.listener.failed` with id `id`, caused by handling an event of depth
    /// `cause` (one hop deeper, and not at all past the depth limit:
    /// [`HostEvents::emit_caused`]).
    async fn announce_failure(
        &self,
        failed: &ListenerFailed,
        id: String,
        cause: u32,
    ) -> Result<(), BusError>;

    /// Emits `sandbus.listener.dead-lettered` with id `id`, caused by handling an event of
    /// depth `cause`, as [`ListenerFailures::announce_failure`] does.
    async fn announce_dead_letter(
        &self,
        dead_lettered: &ListenerDeadLettered,
        id: String,
        cause: u32,
    ) -> Result<(), BusError>;

    /// Records `throttled` as the listener's latest throttling (`sandbus status` shows it)
    /// and emits it as `sandbus.listener.throttled`, caused by handling an event of depth
    /// `cause`. Both are tried; the first error is returned.
    async fn throttled(&self, throttled: &ListenerThrottled, cause: u32) -> Result<(), BusError>;
}

/// [`ListenerFailures`] on the bus: the listener status bucket, the dead-letter stream and
/// this host's events.
pub struct BusFailures {
    /// Holds each listener's latest failure.
    pub subscriptions: SubscriptionStore,
    /// Holds the dead letters.
    pub events: EventStream,
    /// Announces failures and dead letters.
    pub host_events: HostEvents,
}

#[async_trait::async_trait]
impl ListenerFailures for BusFailures {
    async fn record(&self, listener: &str, failure: &LastError) -> Result<(), BusError> {
        self.subscriptions.record_failure(listener, failure).await
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), BusError> {
        self.events.dead_letter(letter).await
    }

    async fn announce_failure(
        &self,
        failed: &ListenerFailed,
        id: String,
        cause: u32,
    ) -> Result<(), BusError> {
        let subject = Some(failed.listener.clone());
        self.host_events
            .emit_caused(failed, id, subject, cause)
            .await
            .map(|_| ())
    }

    async fn announce_dead_letter(
        &self,
        dead_lettered: &ListenerDeadLettered,
        id: String,
        cause: u32,
    ) -> Result<(), BusError> {
        let subject = Some(dead_lettered.listener.clone());
        self.host_events
            .emit_caused(dead_lettered, id, subject, cause)
            .await
            .map(|_| ())
    }

    async fn throttled(&self, throttled: &ListenerThrottled, cause: u32) -> Result<(), BusError> {
        let recorded = self.subscriptions.record_throttled(throttled).await;
        let id = format!(
            "listener-throttled/{}/{}/{}",
            throttled.listener, throttled.host, throttled.at
        );
        let subject = Some(throttled.listener.clone());
        let emitted = self
            .host_events
            .emit_caused(throttled, id, subject, cause)
            .await
            .map(|_| ());
        recorded.and(emitted)
    }
}
