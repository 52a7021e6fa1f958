//! Asking an extension point: every hook registered there, at once, within the point's
//! deadline, combined into one verdict.
//!
//! The operation goes ahead only if no hook denies it. A hook that cannot answer (it trapped,
//! returned an error, is not loaded on this host, or missed the deadline) counts as the
//! point's policy says: allow (`fail-open`) or deny (`fail-closed`). Every hook's own answer
//! is in the reply, so whoever asked can see which hook decided and why.
//!
//! Any daemon answers a call (the `hook.call` endpoint is in the shared queue group): every
//! daemon loads every component, and the registrations are read from the bus at each call.
//!
//! A denial is also recorded as a `sandbus.hook.denied` event, so an audit listener sees
//! every vetoed operation and why, whoever asked.

use std::time::{Duration, Instant};

use futures::future::join_all;

use super::components::Unready;
use super::context::HostContext;
use super::host_events::{HookDenied, HostEvent, HostEvents, Proposal};
use crate::api::{HookAnswer, HookCallReply, HookOutcome};
use crate::bus::{BusError, HookPoint, HookPoints, HookPolicy};
use crate::event::CanonicalEvent;
use crate::sandbox::{HookDecision, InvokeErrorKind, World};

/// Asks extension points.
pub struct HookDispatcher {
    /// Where the points and their hooks are registered.
    pub points: HookPoints,
    /// The hook components loaded here, what they may reach (log, bus, kv; no device), and
    /// where their calls are counted; the host's id, for answers about hooks not loaded here.
    pub host: HostContext,
    /// Where denials are recorded (`sandbus.hook.denied`).
    pub events: HostEvents,
}

impl HookDispatcher {
    /// Asks every hook registered at `point` about `proposed` and combines their answers.
    /// A point nobody configured (or without hooks) allows.
    pub async fn call(
        &self,
        point: &str,
        proposed: CanonicalEvent,
    ) -> Result<HookCallReply, BusError> {
        let point = self
            .points
            .get(point)
            .await?
            .unwrap_or_else(|| HookPoint::new(point));
        let deadline = point.deadline();
        let answers = join_all(
            point
                .hooks
                .iter()
                .map(|hook| self.ask(hook, proposed.clone(), deadline)),
        )
        .await;
        let reply = combine(&point, answers);
        if !reply.allowed {
            self.record_denial(&reply, &proposed).await;
        }
        Ok(reply)
    }

    /// Emits `sandbus.hook.denied`. Each call is its own decision (the same proposal may be
    /// allowed later, then denied again), so the id names this host and the moment. A failure
    /// to emit is logged; the verdict stands.
    async fn record_denial(&self, reply: &HookCallReply, proposed: &CanonicalEvent) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let id = format!(
            "{}/{}/{}/{at}",
            <HookDenied>::TYPE,
            reply.point,
            self.host.host_id
        );
        let denied = HookDenied {
            point: reply.point.clone(),
            policy: reply.policy,
            proposed: Proposal {
                id: proposed.id.clone(),
                ty: proposed.ty.clone(),
                subject: proposed.subject.clone(),
            },
            reasons: reply.reasons.clone(),
            hooks: reply.hooks.clone(),
        };
        self.events
            .emit_or_log(&denied, id, Some(reply.point.clone()))
            .await;
    }

    /// One hook's answer, never later than `deadline`.
    async fn ask(&self, hook: &str, proposed: CanonicalEvent, deadline: Duration) -> HookAnswer {
        let started = Instant::now();
        // A hook's reason is the guest's text: clipped, so that the reply and the
        // `sandbus.hook.denied` event always fit in a message, however long it was.
        let answer = |outcome, reason: Option<String>| HookAnswer {
            hook: hook.to_owned(),
            outcome,
            reason: reason.map(|r| crate::text::clip(&r, crate::api::MAX_HOOK_REASON_LEN)),
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        let Some(loaded) = self.host.components.get(hook) else {
            let why = match self.host.components.unready(hook) {
                Unready::Compiling(version) => format!("version {version} is still compiling"),
                Unready::Failed(version, why) => format!("version {version} failed to load: {why}"),
                Unready::Unknown => "not uploaded".to_owned(),
            };
            return answer(
                HookOutcome::Error,
                Some(format!(
                    "`{hook}` is not loaded on host {} ({why}; see `sandbus ls`)",
                    self.host.host_id
                )),
            );
        };
        if loaded.prepared.world() != World::Hook {
            return answer(
                HookOutcome::Error,
                Some(format!(
                    "`{hook}` is a {}, not a hook",
                    loaded.prepared.world()
                )),
            );
        }
        let running = self.host.metrics.in_flight(hook);
        // The call bounds itself by the deadline once it runs; this also bounds the wait for
        // an instance slot.
        let result = tokio::time::timeout(
            deadline,
            loaded
                .prepared
                .check(proposed, &self.host.capabilities, deadline),
        )
        .await;
        drop(running);
        match result {
            Err(_) => {
                self.host.metrics.invocation(hook, "hook", "timeout", None);
                answer(
                    HookOutcome::Timeout,
                    Some(format!("no answer within {} ms", deadline.as_millis())),
                )
            }
            Ok(Ok(invocation)) => {
                let wall = Duration::from_micros(invocation.metering.wall_us);
                let (outcome, reason) = match invocation.output {
                    HookDecision::Allow => (HookOutcome::Allow, None),
                    HookDecision::Deny { reason } => (HookOutcome::Deny, Some(reason)),
                    HookDecision::Undecided { reason } => (HookOutcome::Error, Some(reason)),
                };
                self.host
                    .metrics
                    .invocation(hook, "hook", outcome.as_str(), Some(wall));
                self.host
                    .metrics
                    .throttled(hook, &invocation.metering.throttle);
                self.host.metering.record(
                    hook,
                    "hook",
                    &invocation.metering,
                    outcome == HookOutcome::Error,
                );
                answer(outcome, reason)
            }
            Ok(Err(e)) => {
                let kind = e.kind.to_string();
                let wall = Duration::from_micros(e.metering.wall_us);
                self.host
                    .metrics
                    .invocation(hook, "hook", &kind, Some(wall));
                self.host.metrics.error(hook, &kind);
                self.host.metrics.throttled(hook, &e.metering.throttle);
                self.host.metering.record(hook, "hook", &e.metering, true);
                let outcome = if e.kind == InvokeErrorKind::Timeout {
                    HookOutcome::Timeout
                } else {
                    HookOutcome::Error
                };
                answer(outcome, Some(format!("{}: {}", e.kind, e.message)))
            }
        }
    }
}

/// The combined verdict: deny if any hook denied, or any failed under `fail-closed`.
pub fn combine(point: &HookPoint, hooks: Vec<HookAnswer>) -> HookCallReply {
    let mut reasons = Vec::new();
    for answer in &hooks {
        let reason = answer.reason.as_deref().unwrap_or("");
        match answer.outcome {
            HookOutcome::Allow => {}
            HookOutcome::Deny => reasons.push(format!("{}: {reason}", answer.hook)),
            HookOutcome::Error | HookOutcome::Timeout => match point.policy {
                HookPolicy::FailClosed => reasons.push(format!(
                    "{}: {} ({reason}); the point is fail-closed",
                    answer.hook,
                    answer.outcome.as_str()
                )),
                HookPolicy::FailOpen => tracing::warn!(
                    point = %point.point,
                    hook = %answer.hook,
                    outcome = answer.outcome.as_str(),
                    reason,
                    "a hook failed; the point is fail-open, so it counts as allow"
                ),
            },
        }
    }
    HookCallReply {
        point: point.point.clone(),
        policy: point.policy,
        deadline_ms: point.deadline_ms,
        allowed: reasons.is_empty(),
        reasons,
        hooks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(hook: &str, outcome: HookOutcome) -> HookAnswer {
        HookAnswer {
            hook: hook.into(),
            outcome,
            reason: (outcome != HookOutcome::Allow).then(|| "why".into()),
            elapsed_ms: 1,
        }
    }

    #[test]
    fn any_deny_denies_and_failures_follow_the_policy() {
        let mut point = HookPoint::new("vm.pre-create");
        let all_allow = combine(
            &point,
            vec![
                answer("a", HookOutcome::Allow),
                answer("b", HookOutcome::Allow),
            ],
        );
        assert!(all_allow.allowed && all_allow.reasons.is_empty());
        let denied = combine(
            &point,
            vec![
                answer("a", HookOutcome::Allow),
                answer("b", HookOutcome::Deny),
            ],
        );
        assert!(!denied.allowed);
        assert_eq!(denied.reasons, ["b: why"]);
        assert!(combine(&point, vec![]).allowed, "no hooks: nothing to veto");
        for failure in [HookOutcome::Error, HookOutcome::Timeout] {
            point.policy = HookPolicy::FailClosed;
            let closed = combine(
                &point,
                vec![answer("a", HookOutcome::Allow), answer("c", failure)],
            );
            assert!(!closed.allowed, "{failure:?}");
            assert!(
                closed.reasons[0].contains("fail-closed"),
                "{:?}",
                closed.reasons
            );
            point.policy = HookPolicy::FailOpen;
            let open = combine(
                &point,
                vec![answer("a", HookOutcome::Allow), answer("c", failure)],
            );
            assert!(open.allowed, "{failure:?}");
            // A deny still denies at a fail-open point.
            let deny = combine(
                &point,
                vec![answer("b", HookOutcome::Deny), answer("c", failure)],
            );
            assert!(!deny.allowed);
            assert_eq!(deny.reasons, ["b: why"]);
        }
    }
}
