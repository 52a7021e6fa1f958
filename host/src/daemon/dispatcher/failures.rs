//! [`ListenerFailures`]: where a dispatcher reports what went wrong with its listener's
//! events, and [`BusFailures`], the daemon's: the listener status bucket, the dead-letter
//! stream and this host's events.

use crate::bus::{BusError, DeadLetter, EventStream, LastError, SubscriptionStore};
use crate::daemon::host_events::HostEvents;

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

    /// Emits the host event `ty` with id `id` about `listener`, caused by handling an event
    /// of depth `cause` (one hop deeper, and not at all past the depth limit:
    /// [`HostEvents::emit_caused`]).
    async fn announce(
        &self,
        ty: &str,
        id: String,
        listener: &str,
        data: serde_json::Value,
        cause: u32,
    ) -> Result<(), BusError>;
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

    async fn announce(
        &self,
        ty: &str,
        id: String,
        listener: &str,
        data: serde_json::Value,
        cause: u32,
    ) -> Result<(), BusError> {
        self.host_events
            .emit_caused(ty, id, Some(listener.to_owned()), data, cause)
            .await
            .map(|_| ())
    }
}
