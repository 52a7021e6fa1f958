//! [`Subscription`]: which event types a listener gets and how failures are retried, with
//! the checks a subscription must pass before it is made, and where an idle listener stood
//! ([`IdlePosition`]). The store that makes them real is [`super::SubscriptionStore`].

use std::time::Duration;

use super::store::now_rfc3339;
use crate::subject::{SubjectError, SubjectPattern, event_subject};

/// Backoff between retries when a subscription gives none: 1 s, 5 s, then 30 s.
pub const DEFAULT_BACKOFF: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

/// Deliveries before an event is dead-lettered, by default.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// Events handled at once per listener per host, by default.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 128;

/// Most events one listener may have in flight on one host.
pub const MAX_IN_FLIGHT: u32 = 4096;

/// Most deliveries an event may be given.
pub const MAX_DELIVER: u32 = 1000;

/// A listener's subscription.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    /// The listener (a component name).
    pub listener: String,
    /// Event type patterns (`vm.*`, `device.>`).
    pub events: Vec<String>,
    /// Events handled at once on one host; the consumer also caps unacknowledged events
    /// cluster-wide at this.
    pub max_in_flight: u32,
    /// Deliveries before an event is dead-lettered.
    pub max_deliver: u32,
    /// Delays before the 1st, 2nd... retry; the last repeats.
    #[serde(with = "millis_list")]
    pub backoff: Vec<Duration>,
    /// When it was created or last changed (RFC 3339).
    pub updated_at: String,
    /// Where the listener's consumer stood when it was last deleted for being idle (see
    /// [`IdlePosition`]); `None` for a listener never idled. Kept by [`super::SubscriptionStore::put`]:
    /// a subscribe never moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdlePosition>,
    /// The ack wait its consumer was last given, in milliseconds (it covers the listener's
    /// deadline): a consumer made again after idling gets at least this. Set by
    /// [`super::SubscriptionStore::put`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u64>,
}

/// An idle listener has no consumer: after it had nothing pending and nothing in flight for
/// a while (`[listeners] idle_after`), a daemon recorded where its consumer stood and deleted
/// it. The next event for it makes the consumer again, starting just after this position, so
/// nothing published meanwhile is missed (the stream keeps events by age, not by interest).
///
/// It is a lower bound, never more: a consumer made again may redeliver events after it that
/// were already handled (at least once, as always), never skip one. It stays in the record
/// after the consumer is made again, and only ever moves forward.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdlePosition {
    /// Every event of the listener up to this stream sequence was handled.
    pub after_sequence: u64,
    /// When the consumer was deleted (RFC 3339).
    pub since: String,
}

/// Which field of a [`Subscription`] is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionErrorKind {
    /// No event pattern at all.
    NoEvents,
    /// A pattern is not a valid event pattern (its subject error is the source).
    Pattern,
    /// Two patterns overlap: an event could match both.
    Overlap,
    /// `max_in_flight` is out of its range.
    MaxInFlight,
    /// `max_deliver` is out of its range.
    MaxDeliver,
    /// The backoff has no delay, too many, or one over a day.
    Backoff,
}

/// A subscription that cannot be made as it is; the message says what to fix.
pub type SubscriptionError = crate::error::Error<SubscriptionErrorKind>;

impl Subscription {
    /// A subscription with the defaults, for `listener` on `events`.
    pub fn new(listener: &str, events: Vec<String>) -> Self {
        Self {
            listener: listener.to_owned(),
            events,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_deliver: DEFAULT_MAX_DELIVER,
            backoff: DEFAULT_BACKOFF.to_vec(),
            updated_at: now_rfc3339(),
            idle: None,
            ack_wait_ms: None,
        }
    }

    /// Checks every field; the message says what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), SubscriptionError> {
        use SubscriptionErrorKind as Kind;
        let invalid = |kind, message: String| Err(SubscriptionError::new(kind, message));
        if self.events.is_empty() {
            return invalid(
                Kind::NoEvents,
                "give at least one --events pattern, for example 'vm.*'".into(),
            );
        }
        let mut filters: Vec<(&str, SubjectPattern)> = Vec::new();
        for pattern in &self.events {
            let subject = validate_event_pattern(pattern).map_err(|e| {
                SubscriptionError::new(Kind::Pattern, e.message.clone()).caused_by(e)
            })?;
            let filter = SubjectPattern::parse(&subject).map_err(|e| {
                let message = format!("`{}`: {e}", crate::text::echo(pattern));
                SubscriptionError::new(Kind::Pattern, message).caused_by(e)
            })?;
            // One consumer's filters may not overlap (NATS refuses it): the same event would
            // match twice.
            if let Some((other, _)) = filters.iter().find(|(_, f)| f.overlaps(&filter)) {
                return invalid(
                    Kind::Overlap,
                    format!(
                        "the patterns `{}` and `{}` overlap (an event could match both); give \
                         patterns that don't, e.g. 'vm.*' alone instead of 'vm.*' and \
                         'vm.started'",
                        crate::text::echo(other),
                        crate::text::echo(pattern)
                    ),
                );
            }
            filters.push((pattern, filter));
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return invalid(
                Kind::MaxInFlight,
                format!("--max-in-flight must be 1 to {MAX_IN_FLIGHT}"),
            );
        }
        if !(1..=MAX_DELIVER).contains(&self.max_deliver) {
            return invalid(
                Kind::MaxDeliver,
                format!("--max-deliver must be 1 to {MAX_DELIVER}"),
            );
        }
        if self.backoff.is_empty() || self.backoff.len() > 32 {
            return invalid(
                Kind::Backoff,
                "--backoff needs 1 to 32 delays, for example 1s,5s,30s".into(),
            );
        }
        if let Some(d) = self
            .backoff
            .iter()
            .find(|d| **d > Duration::from_secs(24 * 3600))
        {
            return invalid(
                Kind::Backoff,
                format!(
                    "a backoff of {} is over a day",
                    humantime::format_duration(*d)
                ),
            );
        }
        Ok(())
    }

    /// The ack wait its consumer was last given, if recorded.
    pub fn ack_wait(&self) -> Option<Duration> {
        self.ack_wait_ms.map(Duration::from_millis)
    }

    /// The consumer's subject filters: `events.<pattern>` for each pattern.
    pub fn filter_subjects(&self) -> Vec<String> {
        self.events.iter().map(|p| event_subject(p)).collect()
    }

    /// The delay before redelivering after the `delivery`th delivery (1-based) failed.
    pub fn backoff_after(&self, delivery: u64) -> Duration {
        let i = usize::try_from(delivery.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Checks an event type pattern such as `vm.*` or `device.>` and returns its subject. The
/// error has the kind of the subject error it quotes, which is its source.
pub fn validate_event_pattern(pattern: &str) -> Result<String, SubjectError> {
    let subject = event_subject(pattern);
    SubjectPattern::parse(&subject).map_err(|why| {
        SubjectError::new(
            why.kind,
            format!(
                "`{}` is not a valid event pattern: {why}",
                crate::text::echo(pattern)
            ),
        )
        .caused_by(why)
    })?;
    Ok(subject)
}

mod millis_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|d| d.as_millis() as u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?
            .into_iter()
            .map(Duration::from_millis)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_event_subjects() {
        assert_eq!(validate_event_pattern("vm.*").unwrap(), "events.vm.*");
        assert_eq!(
            validate_event_pattern("device.>").unwrap(),
            "events.device.>"
        );
        assert_eq!(validate_event_pattern(">").unwrap(), "events.>");
        for bad in ["", "vm..x", "vm.>.x", "vm x", "vm.*a"] {
            let error = validate_event_pattern(bad).unwrap_err();
            assert!(
                error.message.contains("not a valid event pattern"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn backoff_repeats_its_last_delay() {
        let mut s = Subscription::new("l", vec!["vm.*".into()]);
        s.backoff = vec![Duration::from_millis(100), Duration::from_secs(2)];
        assert_eq!(s.backoff_after(1), Duration::from_millis(100));
        assert_eq!(s.backoff_after(2), Duration::from_secs(2));
        assert_eq!(s.backoff_after(9), Duration::from_secs(2));
        assert_eq!(s.backoff_after(0), Duration::from_millis(100));
    }

    #[test]
    fn bad_subscriptions_say_what_to_fix() {
        let refused = |s: &Subscription| s.validate().unwrap_err();
        let mut s = Subscription::new("l", vec![]);
        assert!(refused(&s).message.contains("--events"));
        assert_eq!(refused(&s).kind, SubscriptionErrorKind::NoEvents);
        s.events = vec!["vm.*".into(), "vm.started".into()];
        assert_eq!(refused(&s).kind, SubscriptionErrorKind::Overlap);
        s.events = vec!["vm..x".into()];
        let pattern = refused(&s);
        assert_eq!(pattern.kind, SubscriptionErrorKind::Pattern);
        assert!(
            std::error::Error::source(&pattern).is_some_and(|e| e.is::<SubjectError>()),
            "{pattern:?}"
        );
        s.events = vec!["vm.*".into()];
        s.max_in_flight = 0;
        assert!(refused(&s).message.contains("--max-in-flight"));
        s.max_in_flight = 10;
        s.max_deliver = 0;
        assert!(refused(&s).message.contains("--max-deliver"));
        s.max_deliver = 3;
        s.backoff.clear();
        assert!(refused(&s).message.contains("--backoff"));
        s.backoff = vec![Duration::from_secs(1)];
        assert!(s.validate().is_ok());
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"backoff\":[1000]"));
        assert_eq!(serde_json::from_str::<Subscription>(&json).unwrap(), s);
    }
}
