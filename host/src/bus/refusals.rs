//! [`Refusals`]: the permission violations a NATS server reports on one connection, so that
//! a client learns at once that it may not do something.
//!
//! NATS does not fail a publish or a subscription it refuses: it drops it and sends the
//! connection an error, `Permissions Violation for Publish to "SUBJECT"` (or `for
//! Subscription to`). A request whose subject is refused would otherwise wait out its whole
//! timeout and then look like "no daemon is answering". [`Refusals::guard`] runs a piece of
//! client work and fails it with [`BusErrorKind::PermissionDenied`], naming the subject, as
//! soon as the server reports a refusal while it runs.

use tokio::sync::broadcast;

use super::{BusError, BusErrorKind};

/// What a server refused: a publish or a subscription, and on which subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `publish` or `subscribe`.
    pub operation: &'static str,
    /// The subject the user may not use.
    pub subject: String,
}

impl Refusal {
    /// Reads a server error text; `None` unless it is a permission violation.
    pub fn parse(error: &str) -> Option<Self> {
        let lower = error.to_ascii_lowercase();
        let operation = if lower.contains("permissions violation for publish") {
            "publish"
        } else if lower.contains("permissions violation for subscription") {
            "subscribe"
        } else {
            return None;
        };
        let subject = error
            .split('"')
            .nth(1)
            .filter(|s| !s.is_empty())
            .unwrap_or("?")
            .to_owned();
        Some(Self { operation, subject })
    }

    /// The error a client reports for this refusal: the subject, and what to do.
    pub fn into_error(self) -> BusError {
        let hint = if self.operation == "subscribe" && self.subject.starts_with('_') {
            "this NATS user may not receive replies there: set --inbox-prefix \
             (SANDBUS_INBOX_PREFIX) to the inbox prefix its permissions allow \
             (`sandbus permissions ROLE` prints the one for each role)"
        } else {
            "this NATS user's permissions do not allow it (`sandbus permissions ROLE` prints \
             what each role may do)"
        };
        BusError::new(
            BusErrorKind::PermissionDenied,
            format!(
                "permission denied on {} ({}): {hint}",
                self.subject, self.operation
            ),
        )
    }
}

/// The refusals of one connection, for [`Refusals::guard`]. Cheap to clone.
#[derive(Clone)]
pub struct Refusals {
    sender: broadcast::Sender<Refusal>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(16).0,
        }
    }
}

impl Refusals {
    /// Records a server error; the connection's event callback calls this.
    pub fn report(&self, server_error: &str) {
        if let Some(refusal) = Refusal::parse(server_error) {
            // No one guarding at the moment: nothing is waiting for this answer.
            let _ = self.sender.send(refusal);
        }
    }

    /// Runs `work`, failing it with [`BusErrorKind::PermissionDenied`] as soon as the server
    /// refuses a publish or subscription on this connection while it runs. A client does one
    /// thing at a time, so a refusal meanwhile is that thing's.
    pub async fn guard<T>(
        &self,
        work: impl Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        let mut refused = self.sender.subscribe();
        tokio::select! {
            result = work => result,
            refusal = refused.recv() => match refusal {
                Ok(refusal) => Err(refusal.into_error()),
                // Lagged or closed: no refusal to name; this cannot happen while `self`
                // holds the sender, but a guard must never hide the work's own result.
                Err(_) => Err(BusError::new(
                    BusErrorKind::PermissionDenied,
                    "the server refused part of this request",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_violations_name_the_subject() {
        let publish = Refusal::parse(
            r#"Permissions Violation for Publish to "sandbus.api.operator.component.remove""#,
        )
        .unwrap();
        assert_eq!(publish.operation, "publish");
        assert_eq!(publish.subject, "sandbus.api.operator.component.remove");
        let subscribe = Refusal::parse(
            r#"permissions violation for subscription to "_INBOX.abc.*" using queue "q""#,
        )
        .unwrap();
        assert_eq!(subscribe.operation, "subscribe");
        let error = subscribe.into_error();
        assert_eq!(error.kind, BusErrorKind::PermissionDenied);
        assert!(
            error.message.contains("permission denied on _INBOX.abc.*"),
            "{error}"
        );
        assert!(error.message.contains("--inbox-prefix"), "{error}");
        assert_eq!(Refusal::parse("maximum payload exceeded"), None);
    }

    #[tokio::test]
    async fn a_refusal_while_work_runs_fails_it_at_once() {
        let refusals = Refusals::default();
        let reporter = refusals.clone();
        let started = std::time::Instant::now();
        let result: Result<(), BusError> = refusals
            .guard(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                reporter.report(r#"Permissions Violation for Publish to "x.y""#);
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                Ok(())
            })
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.kind, BusErrorKind::PermissionDenied);
        assert!(error.message.contains("x.y"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Work that is not refused keeps its own result.
        assert_eq!(refusals.guard(async { Ok(7) }).await.unwrap(), 7);
    }
}
