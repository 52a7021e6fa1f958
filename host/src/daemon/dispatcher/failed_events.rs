//! What a [`ListenerDispatcher`] does with an event its listener failed: records the
//! failure as the listener's latest and announces it (`sandbus.listener.failed`, at most one
//! a second, counting the ones left out), and, once no delivery is left or retrying cannot
//! help, dead-letters it: the copy stored first, then the announcement, then the ack.

use std::time::{Duration, Instant};

use super::ListenerDispatcher;
use crate::bus::{DeadLetter, Delivery, LastError};
use crate::daemon::host_events::{HostEvent as _, ListenerDeadLettered, ListenerFailed};

/// How many times the dead-letter event is tried once the copy is stored.
const ANNOUNCE_TRIES: u32 = 5;

/// Limits `sandbus.listener.failed` events to one a second per listener; the next one says
/// how many were not reported.
#[derive(Default)]
pub(super) struct FailureReports {
    last: Option<Instant>,
    suppressed: u64,
}

impl ListenerDispatcher {
    /// Records a failure of the event at `sequence` as the listener's latest and announces
    /// it (never for the listener's own failure events, which would loop).
    pub(super) async fn record_failure(
        &self,
        sequence: u64,
        event_id: Option<&str>,
        event_type: &str,
        depth: u32,
        reason: &str,
        deliveries: u64,
    ) {
        tracing::warn!(listener = self.listener(), sequence, event = ?event_id, deliveries, reason, "listener failed an event");
        let record = LastError {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            host: self.context.host.host_id.to_string(),
            sequence,
            event_id: event_id.map(str::to_owned),
            reason: reason.to_owned(),
        };
        if let Err(e) = self.context.failures.record(self.listener(), &record).await {
            tracing::warn!(listener = self.listener(), error = %e, "could not record the failure");
        }
        // Never report a listener's failures on its own failure events: that would loop.
        if event_type.starts_with("sandbus.listener.") {
            return;
        }
        let suppressed = {
            let mut reports = self.failures.lock().await;
            let now = Instant::now();
            if reports
                .last
                .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
            {
                reports.suppressed += 1;
                return;
            }
            reports.last = Some(now);
            std::mem::take(&mut reports.suppressed)
        };
        let emitted = self
            .context
            .failures
            .announce_failure(
                &ListenerFailed {
                    listener: self.listener().to_owned(),
                    host: self.context.host.host_id.to_string(),
                    sequence,
                    event_id: event_id.map(str::to_owned),
                    deliveries,
                    reason: reason.to_owned(),
                    unreported_failures: suppressed,
                },
                format!(
                    "listener-failed/{}/{sequence}/{deliveries}",
                    self.listener()
                ),
                depth,
            )
            .await;
        if let Err(e) = emitted {
            tracing::warn!(listener = self.listener(), error = %e, "could not emit a host event");
        }
    }

    /// Copies the message to the dead-letter stream, emits the event, then acknowledges. If
    /// the copy fails the message is naked instead: nothing is dropped.
    pub(super) async fn dead_letter(
        &self,
        message: &dyn Delivery,
        sequence: u64,
        deliveries: u64,
        subject: &str,
        event: Option<(&str, &str, u32)>,
        reason: String,
    ) {
        // What caused the letter: the event's id, type and depth (depth 0 for a message that
        // is not an event).
        let depth = event.map_or(0, |(_, _, depth)| depth);
        let letter = DeadLetter {
            listener: self.listener().to_owned(),
            reason: reason.clone(),
            deliveries,
            subject: subject.to_owned(),
            sequence,
            headers: message
                .headers()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            payload: message.payload().clone(),
        };
        if event.is_none() {
            self.record_failure(sequence, None, "", depth, &reason, deliveries)
                .await;
        }
        if let Err(e) = self.context.failures.dead_letter(&letter).await {
            tracing::warn!(listener = self.listener(), sequence, error = %e, "could not dead-letter; will retry");
            let _ = message.nak(Duration::from_secs(1)).await;
            return;
        }
        tracing::warn!(
            listener = self.listener(),
            sequence,
            reason,
            "dead-lettered an event"
        );
        self.context.host.metrics.add(
            "sandbus_dead_lettered_total",
            &[("listener", self.listener())],
            1.0,
        );
        // The copy is stored: the decision is final. The announcement is tried a few times
        // (its id makes repeats harmless), but the event is never handed to the listener
        // again because of it.
        let about_itself = event.is_some_and(|(_, ty, _)| ty == ListenerDeadLettered::TYPE);
        if !about_itself {
            let dead_lettered = ListenerDeadLettered {
                listener: self.listener().to_owned(),
                host: self.context.host.host_id.to_string(),
                sequence,
                subject: subject.to_owned(),
                event_id: event.map(|(id, _, _)| id.to_owned()),
                deliveries,
                reason,
            };
            for attempt in 1..=ANNOUNCE_TRIES {
                let result = self
                    .context
                    .failures
                    .announce_dead_letter(
                        &dead_lettered,
                        format!("dead-lettered/{}/{sequence}", self.listener()),
                        depth,
                    )
                    .await;
                match result {
                    Ok(_) => break,
                    Err(e) if attempt == ANNOUNCE_TRIES => {
                        tracing::error!(listener = self.listener(), sequence, error = %e, "could not emit the dead-letter event; the dead letter itself is stored");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200) * attempt).await,
                }
            }
        }
        if let Err(e) = message.term().await {
            tracing::warn!(listener = self.listener(), error = %e, "could not terminate a dead-lettered event");
        }
    }
}
