//! The canonical events a daemon emits about what it sees and does.
//!
//! They are ordinary canonical events (CloudEvents JSON on `events.sandbus.…`), so a listener
//! can subscribe to them like to any other. Ids are derived from what happened (component
//! and version, listener and stream sequence...), so when several daemons report the same
//! fact, or one daemon reports it again after a restart, the stream keeps it once.
//!
//! What each event's data holds is defined once, as a type in the `sandbus-host-events`
//! crate (re-exported here), which the guests that read them use too: [`HostEvents`] takes a
//! typed event and emits it as its [`HostEvent::TYPE`].

use crate::bus::{BusError, BusErrorKind, EventStream, PublishedEvent, names};
use crate::event::{CanonicalEvent, MAX_DEPTH};

pub use sandbus_host_events::{
    ComponentAdded, ComponentRemoved, ComponentUsage, DeviceAttached, DeviceDetached, HookDenied,
    HostEvent, HostStarted, HostStopped, LeaseAcquired, LeaseReleased, ListenerDeadLettered,
    ListenerFailed, ListenerThrottled, Metering, Proposal, RequestFinished, RunFinished,
};

/// Emits this host's events on the events stream.
#[derive(Clone)]
pub struct HostEvents {
    host_id: String,
    events: EventStream,
}

impl HostEvents {
    /// An emitter for `host_id`.
    pub fn new(host_id: &str, events: EventStream) -> Self {
        Self {
            host_id: host_id.to_owned(),
            events,
        }
    }

    /// The host id events are emitted as.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Publishes `event` with id `id`.
    pub async fn emit<E: HostEvent>(
        &self,
        event: &E,
        id: String,
        subject: Option<String>,
    ) -> Result<PublishedEvent, BusError> {
        self.publish(E::TYPE, id, subject, encode(event)?, 0).await
    }

    /// Like [`HostEvents::emit`], for an event caused by handling an event of depth `cause`
    /// (a listener's failure, a dead letter): it is one hop deeper, and not emitted at all
    /// past [`MAX_DEPTH`] (`Ok(None)`), so that a listener reacting to these host events
    /// cannot loop through them either.
    ///
    /// Named `emit_caused` once [`HostEvents::emit_caused`]'s JSON call sites are converted.
    pub async fn emit_caused<E: HostEvent>(
        &self,
        event: &E,
        id: String,
        subject: Option<String>,
        cause: u32,
    ) -> Result<Option<PublishedEvent>, BusError> {
        let Some(depth) = caused_depth(E::TYPE, cause) else {
            return Ok(None);
        };
        self.publish(E::TYPE, id, subject, encode(event)?, depth)
            .await
            .map(Some)
    }

    /// Like [`HostEvents::emit`], but only logs a failure: for events whose loss must not
    /// stop the work that produced them.
    ///
    /// Named `emit_or_log` once [`HostEvents::emit_or_log`]'s JSON call sites are converted.
    pub async fn emit_or_log<E: HostEvent>(&self, event: &E, id: String, subject: Option<String>) {
        log_failure(E::TYPE, self.emit(event, id, subject).await);
    }

    /// `sandbus.host.started`, with the daemon's start time in the id so every run of the
    /// daemon is its own fact.
    pub async fn host_started(&self, started_at: &str) {
        let event = HostStarted {
            host: self.host_id.clone(),
            started_at: started_at.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.emit_lifecycle(&event, started_at).await;
    }

    /// `sandbus.host.stopped`, the [`HostEvents::host_started`] of the same run ending.
    pub async fn host_stopped(&self, started_at: &str) {
        let event = HostStopped {
            host: self.host_id.clone(),
            started_at: started_at.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.emit_lifecycle(&event, started_at).await;
    }

    async fn emit_lifecycle<E: HostEvent>(&self, event: &E, started_at: &str) {
        let id = format!("{}/{}/{started_at}", E::TYPE, self.host_id);
        self.emit_or_log(event, id, Some(self.host_id.clone()))
            .await;
    }

    async fn publish(
        &self,
        ty: &str,
        id: String,
        subject: Option<String>,
        data: Vec<u8>,
        depth: u32,
    ) -> Result<PublishedEvent, BusError> {
        let event = CanonicalEvent {
            id,
            source: names::host_source(&self.host_id),
            ty: ty.to_owned(),
            subject,
            time: Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
            datacontenttype: Some("application/json".into()),
            data,
            depth,
        };
        self.events.publish(&event).await
    }
}

/// An event's data. Never fails for the daemon's events (plain records, string keys); if
/// one ever did, it is not emitted and the failure says which event.
fn encode<E: HostEvent>(event: &E) -> Result<Vec<u8>, BusError> {
    event.to_data().map_err(|e| {
        BusError::new(
            BusErrorKind::Corrupt,
            format!("could not encode a {} event: {e}", E::TYPE),
        )
    })
}

/// The depth of an event caused by one of depth `cause`, or `None` past [`MAX_DEPTH`] (then it
/// is not emitted: the loop guard).
fn caused_depth(ty: &str, cause: u32) -> Option<u32> {
    let depth = cause.saturating_add(1);
    if depth > MAX_DEPTH {
        tracing::debug!(event_type = ty, depth, "host event not emitted: loop guard");
        return None;
    }
    Some(depth)
}

/// Logs a failed emit of an event of type `ty`.
fn log_failure(ty: &str, published: Result<PublishedEvent, BusError>) {
    if let Err(e) = published {
        tracing::warn!(event_type = ty, error = %e, "could not emit a host event");
    }
}
