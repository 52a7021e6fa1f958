//! A listener's trouble with an event: `sandbus.listener.failed` and
//! `sandbus.listener.dead-lettered`; and with its limits: `sandbus.listener.throttled`.
//!
//! All are caused by handling an event, so they go out one hop deeper than it, and never
//! about an event of their own kind (a listener failing on its own failure events would loop).

use serde::{Deserialize, Serialize};

use crate::HostEvent;

/// `sandbus.listener.failed`: a listener failed to handle an event, which will be delivered
/// again. At most one a second per listener; the next one counts those not reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerFailed {
    /// The listener (its component name).
    pub listener: String,
    /// The daemon that ran it.
    pub host: String,
    /// The failed message's sequence in the events stream.
    pub sequence: u64,
    /// The failed event's id; `null` when the message was not a canonical event.
    pub event_id: Option<String>,
    /// How many times the message has been delivered to the listener, this one included.
    pub deliveries: u64,
    /// What went wrong (the guest's error, a trap, a timeout...).
    pub reason: String,
    /// Failures of this listener since the previous report that were not reported (the one
    /// a second limit).
    pub unreported_failures: u64,
}

impl HostEvent for ListenerFailed {
    const TYPE: &'static str = "sandbus.listener.failed";
}

/// `sandbus.listener.dead-lettered`: a listener gave up on an event (rejected it, or failed
/// it as many times as it may be delivered); a copy went to the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerDeadLettered {
    /// The listener (its component name).
    pub listener: String,
    /// The daemon that gave up.
    pub host: String,
    /// The message's sequence in the events stream (its dead letter keeps it too).
    pub sequence: u64,
    /// The NATS subject the message was published on.
    pub subject: String,
    /// The event's id; `null` when the message was not a canonical event.
    pub event_id: Option<String>,
    /// How many times the message was delivered to the listener.
    pub deliveries: u64,
    /// Why it was given up on (the listener's rejection, or its last failure).
    pub reason: String,
}

impl HostEvent for ListenerDeadLettered {
    const TYPE: &'static str = "sandbus.listener.dead-lettered";
}

/// `sandbus.listener.throttled`: a listener's publish rate cap held it back: publishes beyond
/// its per-call `publish-budget` waited for their turn under its `publish-rate`, or were
/// refused (`rate-limited`). While that goes on, a listener runs no faster than its cap
/// allows, so the daemon says so: at once when it starts, then at most once every
/// [`ListenerThrottled::EVERY_SECS`] per listener and host, counting the publishes held back
/// since the previous report. `sandbus status` shows the latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerThrottled {
    /// The listener (its component name).
    pub listener: String,
    /// The daemon that ran it.
    pub host: String,
    /// When the report was made (RFC 3339).
    pub at: String,
    /// How long the report covers, milliseconds: since the previous report, or since the
    /// first call held back when it is the first.
    pub window_ms: u64,
    /// Calls of the listener held back in that time.
    pub calls: u64,
    /// Publishes that waited for their turn.
    pub waits: u64,
    /// Those waits added up, milliseconds.
    pub waited_ms: u64,
    /// Publishes refused with `rate-limited`.
    pub refused: u64,
    /// The listener's `publish-rate` cap, per second (for all its calls on the host).
    pub publish_rate: u32,
    /// Its `publish-budget`: publishes each call makes before the cap counts them.
    pub publish_budget: u32,
    /// What to change so it is not held back.
    pub hint: String,
}

impl ListenerThrottled {
    /// Shortest time between two reports of one listener on one host, seconds.
    pub const EVERY_SECS: u64 = 10;
}

impl HostEvent for ListenerThrottled {
    const TYPE: &'static str = "sandbus.listener.throttled";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    #[test]
    fn listener_failed_names_the_listener_the_message_and_the_unreported_count() {
        let (listener, host, reason) = ("billing", "h1", "trap: unreachable");
        let event_id: Option<&str> = Some("vm-1-start");
        assert_same_json(
            &ListenerFailed {
                listener: listener.into(),
                host: host.into(),
                sequence: 42,
                event_id: event_id.map(str::to_owned),
                deliveries: 2,
                reason: reason.into(),
                unreported_failures: 3,
            },
            json!({
                "listener": listener,
                "host": host,
                "sequence": 42u64,
                "event_id": event_id,
                "deliveries": 2u64,
                "reason": reason,
                "unreported_failures": 3u64,
            }),
        );
    }

    #[test]
    fn listener_failed_on_a_message_that_is_no_event_has_a_null_event_id() {
        let event_id: Option<&str> = None;
        assert_same_json(
            &ListenerFailed {
                listener: "billing".into(),
                host: "h1".into(),
                sequence: 7,
                event_id: None,
                deliveries: 1,
                reason: "not a canonical event".into(),
                unreported_failures: 0,
            },
            json!({
                "listener": "billing",
                "host": "h1",
                "sequence": 7u64,
                "event_id": event_id,
                "deliveries": 1u64,
                "reason": "not a canonical event",
                "unreported_failures": 0u64,
            }),
        );
    }

    #[test]
    fn listener_dead_lettered_names_the_listener_the_message_and_why() {
        for event_id in [Some("vm-1-start"), None] {
            assert_same_json(
                &ListenerDeadLettered {
                    listener: "billing".into(),
                    host: "h1".into(),
                    sequence: 42,
                    subject: "events.vm.started".into(),
                    event_id: event_id.map(str::to_owned),
                    deliveries: 5,
                    reason: "rejected: tenant is empty".into(),
                },
                json!({
                    "listener": "billing",
                    "host": "h1",
                    "sequence": 42u64,
                    "subject": "events.vm.started",
                    "event_id": event_id,
                    "deliveries": 5u64,
                    "reason": "rejected: tenant is empty",
                }),
            );
        }
    }

    #[test]
    fn listener_throttled_says_how_much_was_held_back_and_what_to_change() {
        let hint = "raise publish-budget to 2";
        assert_same_json(
            &ListenerThrottled {
                listener: "billing".into(),
                host: "h1".into(),
                at: "2026-11-30T12:00:00.000Z".into(),
                window_ms: 10_000,
                calls: 40,
                waits: 38,
                waited_ms: 9_500,
                refused: 2,
                publish_rate: 100,
                publish_budget: 1,
                hint: hint.into(),
            },
            json!({
                "listener": "billing",
                "host": "h1",
                "at": "2026-11-30T12:00:00.000Z",
                "window_ms": 10_000u64,
                "calls": 40u64,
                "waits": 38u64,
                "waited_ms": 9_500u64,
                "refused": 2u64,
                "publish_rate": 100u32,
                "publish_budget": 1u32,
                "hint": hint,
            }),
        );
    }
}
