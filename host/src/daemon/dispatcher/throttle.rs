//! [`ThrottleReports`]: when a listener's publish rate cap holds it back, say so.
//!
//! A cap that throttles quietly becomes the listener's throughput, and nobody knows why it is
//! slow. So every call the cap held back (a publish that waited for its turn, or was refused
//! `rate-limited`) is counted here, and a report goes out (`sandbus.listener.throttled`, and
//! the listener's status) at once when throttling starts, then at most once every
//! [`ListenerThrottled::EVERY_SECS`] while it lasts, with what was held back since the
//! previous one and the limit to raise. What is held back after the last report is reported
//! with the next call that comes once the interval has passed; the metrics count every call.

use std::time::{Duration, Instant};

use crate::daemon::host_events::ListenerThrottled;
use crate::sandbox::{Limits, Metering, PublishThrottle};

/// What a listener's cap held back since its last report, and when that report was.
#[derive(Debug, Default)]
pub(super) struct ThrottleReports {
    last: Option<Instant>,
    pending: Option<Pending>,
}

/// Throttling not reported yet.
#[derive(Debug)]
struct Pending {
    since: Instant,
    calls: u64,
    throttle: PublishThrottle,
    /// The most one of those calls published: what the budget would have to be.
    most_published: u64,
}

/// A report that is due: what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DueReport {
    /// How long it covers.
    pub(super) window: Duration,
    /// Calls held back.
    pub(super) calls: u64,
    /// What held them back, added up.
    pub(super) throttle: PublishThrottle,
    /// The most one of them published.
    pub(super) most_published: u64,
}

impl ThrottleReports {
    /// Counts one finished call (`metering` is what it used) and returns the report that is
    /// due now, if any: the first throttling after a quiet spell at once, later ones at
    /// most every [`ListenerThrottled::EVERY_SECS`].
    pub(super) fn count(&mut self, metering: &Metering, now: Instant) -> Option<DueReport> {
        if !metering.throttle.is_quiet() {
            let pending = self.pending.get_or_insert(Pending {
                since: now,
                calls: 0,
                throttle: PublishThrottle::default(),
                most_published: 0,
            });
            pending.calls += 1;
            pending.throttle.add(&metering.throttle);
            pending.most_published = pending
                .most_published
                .max(metering.published + u64::from(metering.throttle.refused));
        }
        let every = Duration::from_secs(ListenerThrottled::EVERY_SECS);
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < every)
        {
            return None;
        }
        let pending = self.pending.take()?;
        let window = match self.last {
            Some(last) => now.duration_since(last),
            None => now.duration_since(pending.since),
        };
        self.last = Some(now);
        Some(DueReport {
            window,
            calls: pending.calls,
            throttle: pending.throttle,
            most_published: pending.most_published,
        })
    }
}

impl DueReport {
    /// The report as the event (and status record) `listener` on `host` sends, with the
    /// limit to change.
    pub(super) fn to_event(
        &self,
        listener: &str,
        host: &str,
        limits: &Limits,
    ) -> ListenerThrottled {
        let wanted = u32::try_from(self.most_published)
            .unwrap_or(u32::MAX)
            .min(crate::sandbox::MAX_PUBLISH_BUDGET);
        let hint = if wanted > limits.publish_budget {
            format!(
                "calls tried to publish up to {} messages each, and only {} per call are free of the \
                 publish-rate cap ({}/s for the listener on this host): upload it again with \
                 `--limit publish-budget={wanted}`, or raise `--limit publish-rate`",
                self.most_published, limits.publish_budget, limits.publish_rate
            )
        } else {
            format!(
                "calls tried to publish up to {} messages each, more than the largest publish-budget \
                 ({}), and the rest went over the publish-rate cap ({}/s for the listener on \
                 this host): upload it again with a higher `--limit publish-rate`",
                self.most_published,
                crate::sandbox::MAX_PUBLISH_BUDGET,
                limits.publish_rate
            )
        };
        ListenerThrottled {
            listener: listener.to_owned(),
            host: host.to_owned(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            window_ms: self.window.as_millis() as u64,
            calls: self.calls,
            waits: self.throttle.waits.into(),
            waited_ms: self.throttle.waited_us / 1000,
            refused: self.throttle.refused.into(),
            publish_rate: limits.publish_rate,
            publish_budget: limits.publish_budget,
            hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(published: u64, waits: u32, refused: u32) -> Metering {
        Metering {
            published,
            throttle: PublishThrottle {
                waits,
                waited_us: u64::from(waits) * 10_000,
                refused,
            },
            ..Metering::default()
        }
    }

    #[test]
    fn the_first_throttled_call_is_reported_at_once_then_at_most_every_ten_seconds() {
        let mut reports = ThrottleReports::default();
        let start = Instant::now();
        assert_eq!(reports.count(&call(1, 0, 0), start), None, "quiet calls");
        let first = reports
            .count(&call(2, 1, 0), start)
            .expect("reported at once");
        assert_eq!((first.calls, first.throttle.waits), (1, 1));
        for i in 1..=9 {
            let at = start + Duration::from_secs(i);
            assert_eq!(reports.count(&call(3, 2, 1), at), None, "held until due");
        }
        let due = start + Duration::from_secs(10);
        let second = reports
            .count(&call(1, 0, 0), due)
            .expect("due, with the held calls");
        assert_eq!(second.window, Duration::from_secs(10));
        assert_eq!(second.calls, 9);
        assert_eq!(second.throttle.waits, 18);
        assert_eq!(second.throttle.waited_us, 180_000);
        assert_eq!(second.throttle.refused, 9);
        assert_eq!(
            second.most_published, 4,
            "3 published and 1 refused in one call"
        );
        let later = due + Duration::from_secs(60);
        assert_eq!(
            reports.count(&call(1, 0, 0), later),
            None,
            "nothing held back"
        );
    }

    #[test]
    fn the_hint_names_the_budget_the_calls_needed() {
        let limits = Limits::default();
        let report = DueReport {
            window: Duration::from_secs(10),
            calls: 5,
            throttle: PublishThrottle {
                waits: 5,
                waited_us: 50_000,
                refused: 0,
            },
            most_published: 3,
        };
        let event = report.to_event("billing", "h1", &limits);
        assert!(
            event.hint.contains("--limit publish-budget=3"),
            "{}",
            event.hint
        );
        assert_eq!((event.waits, event.waited_ms), (5, 50));
        assert_eq!((event.publish_rate, event.publish_budget), (100, 1));
        let past_any_budget = DueReport {
            most_published: 5_000,
            ..report
        };
        let limits = Limits {
            publish_budget: crate::sandbox::MAX_PUBLISH_BUDGET,
            ..limits
        };
        let event = past_any_budget.to_event("billing", "h1", &limits);
        assert!(
            event.hint.contains("higher `--limit publish-rate`"),
            "{}",
            event.hint
        );
    }
}
