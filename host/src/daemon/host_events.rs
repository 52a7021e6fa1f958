//! The canonical events a daemon emits about what it sees and does.
//!
//! They are ordinary canonical events (CloudEvents JSON on `events.sandbus.…`), so a listener
//! can subscribe to them like to any other. Ids are derived from what happened (component
//! and version, listener and stream sequence...), so when several daemons report the same
//! fact, or one daemon reports it again after a restart, the stream keeps it once.

use serde_json::json;

use crate::bus::{BusError, EventStream, PublishedEvent, names};
use crate::event::{CanonicalEvent, MAX_DEPTH};

/// A component version was recorded (upload or rollback).
pub const COMPONENT_ADDED: &str = "sandbus.component.added";
/// A component was removed.
pub const COMPONENT_REMOVED: &str = "sandbus.component.removed";
/// A listener failed to handle an event (it will be retried). Rate limited per listener.
pub const LISTENER_FAILED: &str = "sandbus.listener.failed";
/// A listener gave up on an event; it went to the dead-letter stream.
pub const LISTENER_DEAD_LETTERED: &str = "sandbus.listener.dead-lettered";
/// A daemon started.
pub const HOST_STARTED: &str = "sandbus.host.started";
/// A daemon stopped cleanly.
pub const HOST_STOPPED: &str = "sandbus.host.stopped";
/// A control request sent as a cast finished; carries its result or error.
pub const REQUEST_FINISHED: &str = "sandbus.request.finished";
/// A USB device appeared on a host.
pub const DEVICE_ATTACHED: &str = "sandbus.device.attached";
/// A USB device went away from a host.
pub const DEVICE_DETACHED: &str = "sandbus.device.detached";
/// A run took a device (billing charges device time from this to `lease.released`).
pub const LEASE_ACQUIRED: &str = "sandbus.lease.acquired";
/// A run gave its device back (data: `held_ms`, the reset result, the verdict).
pub const LEASE_RELEASED: &str = "sandbus.lease.released";
/// Usage of every component over one metering window (see `daemon::metering`).
pub const METERING: &str = "sandbus.metering";
/// A run ended; data is its report.
pub const RUN_FINISHED: &str = "sandbus.run.finished";
/// An extension point denied a proposed operation (data: the point, the proposal's id, type
/// and subject, the reasons and every hook's answer).
pub const HOOK_DENIED: &str = "sandbus.hook.denied";

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

    /// Builds and publishes an event of type `ty` with id `id` and JSON `data`.
    pub async fn emit(
        &self,
        ty: &str,
        id: String,
        subject: Option<String>,
        data: serde_json::Value,
    ) -> Result<PublishedEvent, BusError> {
        self.publish(ty, id, subject, data, 0).await
    }

    /// Like [`HostEvents::emit`], for an event caused by handling an event of depth `cause`
    /// (a listener's failure, a dead letter): it is one hop deeper, and not emitted at all
    /// past [`MAX_DEPTH`] (`Ok(None)`), so that a listener reacting to these host events
    /// cannot loop through them either.
    pub async fn emit_caused(
        &self,
        ty: &str,
        id: String,
        subject: Option<String>,
        data: serde_json::Value,
        cause: u32,
    ) -> Result<Option<PublishedEvent>, BusError> {
        let depth = cause.saturating_add(1);
        if depth > MAX_DEPTH {
            tracing::debug!(event_type = ty, depth, "host event not emitted: loop guard");
            return Ok(None);
        }
        self.publish(ty, id, subject, data, depth).await.map(Some)
    }

    async fn publish(
        &self,
        ty: &str,
        id: String,
        subject: Option<String>,
        data: serde_json::Value,
        depth: u32,
    ) -> Result<PublishedEvent, BusError> {
        let event = CanonicalEvent {
            id,
            source: names::host_source(&self.host_id),
            ty: ty.to_owned(),
            subject,
            time: Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
            datacontenttype: Some("application/json".into()),
            data: data.to_string().into_bytes(),
            depth,
        };
        self.events.publish(&event).await
    }

    /// Like [`HostEvents::emit`], but only logs a failure: for events whose loss must not
    /// stop the work that produced them.
    pub async fn emit_or_log(
        &self,
        ty: &str,
        id: String,
        subject: Option<String>,
        data: serde_json::Value,
    ) {
        if let Err(e) = self.emit(ty, id, subject, data).await {
            tracing::warn!(event_type = ty, error = %e, "could not emit a host event");
        }
    }

    /// `sandbus.host.started` / `sandbus.host.stopped`, with the daemon's start time in the
    /// id so every run of the daemon is its own fact.
    pub async fn host(&self, ty: &str, started_at: &str) {
        let id = format!("{ty}/{}/{started_at}", self.host_id);
        self.emit_or_log(
            ty,
            id,
            Some(self.host_id.clone()),
            json!({ "host": self.host_id, "started_at": started_at, "version": env!("CARGO_PKG_VERSION") }),
        )
        .await;
    }
}
