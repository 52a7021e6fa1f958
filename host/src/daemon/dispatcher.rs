//! [`ListenerDispatcher`]: one listener's events, from its durable consumer into the sandbox.
//!
//! The flow is one way: a message is pulled from the listener's consumer, parsed into a
//! [`CanonicalEvent`] (structured or binary mode, [`CanonicalEvent::from_message`]), handed
//! to the listener in a fresh instance, and only then acknowledged.
//!
//! - **Batches, pipelined acks.** Messages are pulled in batches (the client keeps the next
//!   pull in flight), handled concurrently up to the subscription's `max_in_flight`, and each
//!   is acknowledged as soon as its own call returns, without waiting for the server.
//! - **Backpressure, never shedding.** A message is only taken from the consumer once an
//!   in-flight slot is free, and the consumer caps unacknowledged messages at the same
//!   number: a slow listener slows its consumer down.
//! - **Retry, then dead-letter.** `retry` is a nak with the listener's delay (or the
//!   subscription's backoff). `reject`, a trap or a timeout are naked with the backoff while
//!   deliveries remain; the last failure copies the event to the dead-letter stream with the
//!   reason, emits `sandbus.listener.dead-lettered`, and only then acknowledges. An event that
//!   is not a valid canonical event, or not what its subject says (its type's subject is
//!   another, or it claims a daemon's source off the host events' subjects), is dead-lettered
//!   at once: retrying cannot fix it.
//! - **Throttling is reported.** A call its publish rate cap held back is counted; the
//!   listener's status and `sandbus.listener.throttled` say so, at most every 10 s
//!   ([`throttle`]).
//! - **Stopping.** On shutdown the dispatcher stops pulling, gives calls in flight a grace
//!   period, naks the ones that do not finish and naks what was pulled but not started.
//!
//! The dispatcher never names NATS: its deliveries come through the bus's [`Delivery`] seam
//! ([`DeliverySource`]), its failure reports go to [`ListenerFailures`], and its components
//! come from the [`HostContext`]'s
//! [`ComponentSource`](super::context::ComponentSource), so each rule above is tested here
//! without a server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::{Mutex, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::HostContext;
use super::metrics::ListenerSeries;
use crate::bus::{BusErrorKind, Delivery, DeliverySource, PullError, Rested, Subscription};
use crate::event::CanonicalEvent;
use crate::sandbox::Limits;
use crate::sandbox::{HandlerOutcome, Invocation, InvokeError};

mod failed_events;
mod failures;
mod throttle;
use failed_events::FailureReports;
pub use failures::{BusFailures, ListenerFailures};
use throttle::ThrottleReports;

/// Delay on events handed back at shutdown: long enough that the stopping dispatcher does
/// not get them again, short enough that another host (or the restarted one) soon does.
const HANDBACK_DELAY: Duration = Duration::from_secs(1);

/// Longest delay a listener may ask for in `retry(delay)`; longer ones are cut to this.
/// (A retrying event keeps one of the consumer's in-flight places while it waits.)
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// What every dispatcher of a daemon shares: the host's context, and what only dispatchers
/// use.
pub struct DispatchContext {
    /// The host's id, components, base capabilities (bus, kv, log), metrics and metering.
    pub host: HostContext,
    /// Where each listener's deliveries are pulled from: its durable consumer.
    pub deliveries: Arc<dyn DeliverySource>,
    /// Where failures and dead letters are reported.
    pub failures: Arc<dyn ListenerFailures>,
    /// How long calls in flight may run on after a shutdown began.
    pub grace: Duration,
    /// Most messages asked for in one pull.
    pub batch: usize,
    /// How long a listener with nothing pending and nothing in flight keeps its consumer
    /// before the dispatcher rests it and ends; `None`: never.
    pub idle_after: Option<Duration>,
    /// Where a dispatcher that ended because its listener went idle says so.
    pub went_idle: Option<tokio::sync::mpsc::UnboundedSender<WentIdle>>,
}

/// A dispatcher ended on its own because its listener has no consumer any more: it rested
/// it, or another host did, or it was spawned for a listener with nothing to make one from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentIdle {
    /// The listener.
    pub listener: String,
    /// The [`DispatcherHandle::id`] of the dispatcher that ended.
    pub dispatcher: u64,
}

/// Numbers the dispatchers of this process, so a late [`WentIdle`] is told apart from the
/// dispatcher started after it.
static NEXT_DISPATCHER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A running dispatcher: stop it, or wait for it.
pub struct DispatcherHandle {
    /// The subscription it runs.
    pub subscription: Subscription,
    /// Which dispatcher of this process it is.
    pub id: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DispatcherHandle {
    /// Stops pulling, lets calls in flight finish (or naks them after the grace period) and
    /// waits until it is done.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(listener = %self.subscription.listener, error = %e, "dispatcher task failed");
        }
    }
}

/// Pulls one listener's events and hands them to it.
pub struct ListenerDispatcher {
    id: u64,
    subscription: Arc<Subscription>,
    context: Arc<DispatchContext>,
    stop: CancellationToken,
    failures: Mutex<FailureReports>,
    throttling: std::sync::Mutex<ThrottleReports>,
    /// Highest stream sequence seen: the pending gauge follows the newest delivery only.
    /// A lock, not an atomic: the check and the gauge write must be one step, or an older
    /// delivery's count can land after the newest one's (a gauge stuck at 1 when drained).
    newest: std::sync::Mutex<u64>,
    /// The metrics every event updates, looked up once.
    series: ListenerSeries,
}

impl ListenerDispatcher {
    /// Starts a dispatcher for `subscription` on its own task.
    pub fn spawn(subscription: Subscription, context: Arc<DispatchContext>) -> DispatcherHandle {
        let stop = CancellationToken::new();
        let dispatcher = Arc::new(ListenerDispatcher::new(
            subscription.clone(),
            context,
            stop.clone(),
        ));
        let id = dispatcher.id;
        let task = tokio::spawn(dispatcher.run());
        DispatcherHandle {
            subscription,
            id,
            stop,
            task,
        }
    }

    /// A dispatcher that has not started: [`Self::spawn`] starts one.
    fn new(
        subscription: Subscription,
        context: Arc<DispatchContext>,
        stop: CancellationToken,
    ) -> Self {
        ListenerDispatcher {
            id: NEXT_DISPATCHER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            series: context.host.metrics.listener(&subscription.listener),
            subscription: Arc::new(subscription),
            context,
            stop,
            failures: Mutex::new(FailureReports::default()),
            throttling: std::sync::Mutex::new(ThrottleReports::default()),
            newest: std::sync::Mutex::new(0),
        }
    }

    fn listener(&self) -> &str {
        &self.subscription.listener
    }

    async fn run(self: Arc<Self>) {
        let in_flight = Arc::new(Semaphore::new(self.subscription.max_in_flight as usize));
        let tracker = TaskTracker::new();
        let mut changes = self.context.host.components.changes();
        tracing::debug!(listener = self.listener(), events = ?self.subscription.events, "dispatcher started");
        // Whether a pull has worked yet: a consumer missing before that is made again from
        // where the idle listener stood (it was woken); missing after, it was rested.
        let mut pulled = false;
        let mut went_idle = false;
        // The last time a message came or something was in flight.
        let mut busy_at = tokio::time::Instant::now();
        let max_in_flight = self.subscription.max_in_flight as usize;
        while !self.stop.is_cancelled() && !went_idle {
            // Pull only while the listener is loaded here; otherwise its events wait in the
            // consumer (or go to a host that has it).
            if self.context.host.components.get(self.listener()).is_none() {
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    _ = changes.changed() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
            let batch = self
                .context
                .batch
                .min(self.subscription.max_in_flight as usize)
                .max(1);
            let mut messages = match self.context.deliveries.pull(self.listener(), batch).await {
                Ok(messages) => {
                    pulled = true;
                    messages
                }
                Err(e) if e.kind == BusErrorKind::NotFound => {
                    if !pulled && self.wake().await {
                        pulled = true;
                        continue;
                    }
                    went_idle = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(listener = self.listener(), error = %e, "cannot pull; retrying");
                    self.pause(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                // The fast path, taken while events keep coming: a free slot and a message
                // already there are taken without registering any waker; the `select!`s
                // below only run when the dispatcher has to wait.
                if self.stop.is_cancelled() {
                    break;
                }
                if changes.has_changed().unwrap_or(false) {
                    changes.borrow_and_update();
                    if self.context.host.components.get(self.listener()).is_none() {
                        break;
                    }
                }
                let permit = match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(TryAcquireError::Closed) => break,
                    Err(TryAcquireError::NoPermits) => tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = changes.changed() => {
                            if self.context.host.components.get(self.listener()).is_none() {
                                break;
                            }
                            continue;
                        }
                        permit = in_flight.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    },
                };
                let next = match messages.next().now_or_never() {
                    Some(next) => next,
                    None => tokio::select! {
                        _ = self.stop.cancelled() => break,
                        next = messages.next() => next,
                        _ = tokio::time::sleep_until(busy_at + self.context.idle_after.unwrap_or_default()),
                            if self.context.idle_after.is_some() => {
                            // The permit this loop holds is the only one taken: nothing is in
                            // flight.
                            if in_flight.available_permits() + 1 < max_in_flight
                                || !self.rest().await
                            {
                                busy_at = tokio::time::Instant::now();
                                continue;
                            }
                            went_idle = true;
                            break;
                        }
                    },
                };
                busy_at = tokio::time::Instant::now();
                match next {
                    Some(Ok(message)) => {
                        let this = self.clone();
                        // Boxed: the call's future is several KiB, and a task's future is
                        // copied when it is spawned and again when it completes.
                        let dispatch = Box::pin(async move {
                            this.dispatch(&*message).await;
                            drop(permit);
                        });
                        tracker.spawn(dispatch);
                    }
                    Some(Err(e @ PullError::Interrupted(_))) => {
                        tracing::debug!(listener = self.listener(), error = %e, "pull interrupted; continuing");
                    }
                    Some(Err(PullError::Deleted)) => {
                        // Rested by another host, or unsubscribed: the next pull finds no
                        // consumer and the dispatcher ends.
                        tracing::debug!(listener = self.listener(), "the consumer was deleted");
                        break;
                    }
                    Some(Err(e @ PullError::Ended(_))) => {
                        tracing::warn!(listener = self.listener(), error = %e, "pull ended; pulling again");
                        self.pause(Duration::from_millis(500)).await;
                        break;
                    }
                    None => break,
                }
            }
            if self.stop.is_cancelled() {
                // Pulled but never started: hand back what is already buffered, with a delay
                // so it cannot bounce straight back here. Polling only while messages are
                // ready (`now_or_never`) keeps this from asking the server for more.
                for _ in 0..batch {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => {
                            let _ = message.nak(HANDBACK_DELAY).await;
                        }
                        _ => break,
                    }
                }
            }
        }
        tracker.close();
        tracker.wait().await;
        if went_idle && !self.stop.is_cancelled() {
            tracing::debug!(
                listener = self.listener(),
                "the listener is idle; dispatcher ended"
            );
            if let Some(report) = &self.context.went_idle {
                let _ = report.send(WentIdle {
                    listener: self.listener().to_owned(),
                    dispatcher: self.id,
                });
            }
        } else {
            tracing::info!(listener = self.listener(), "dispatcher stopped");
        }
    }

    /// Rests the listener (nothing pending, nothing in flight for `idle_after`); whether it
    /// is idle now.
    async fn rest(&self) -> bool {
        let quiet = self.context.idle_after.unwrap_or_default();
        match self.context.deliveries.rest(self.listener(), quiet).await {
            Ok(Rested::Idle) => {
                tracing::info!(
                    listener = self.listener(),
                    "idle: its consumer is deleted until its next event"
                );
                true
            }
            Ok(Rested::Gone) => true,
            Ok(Rested::Busy) => false,
            Err(e) => {
                tracing::warn!(listener = self.listener(), error = %e, "could not rest the idle listener");
                false
            }
        }
    }

    /// Makes the consumer of a listener woken from idle again; whether it has one now.
    async fn wake(&self) -> bool {
        let Some(component) = self.context.host.components.get(self.listener()) else {
            return false;
        };
        let ack_wait = crate::bus::ack_wait_for(component.prepared.limits().timeout);
        loop {
            match self
                .context
                .deliveries
                .wake(self.listener(), ack_wait)
                .await
            {
                Ok(()) => return true,
                Err(e) if e.kind == BusErrorKind::NotFound => return false,
                Err(e) => {
                    tracing::warn!(listener = self.listener(), error = %e, "cannot wake the listener; retrying");
                    // A full stream stays full for a while; an outage may pass at once.
                    let pause = match e.kind {
                        BusErrorKind::ServerLimit => Duration::from_secs(10),
                        _ => Duration::from_secs(1),
                    };
                    self.pause(pause).await;
                    if self.stop.is_cancelled() {
                        return false;
                    }
                }
            }
        }
    }

    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Handles one message to the end: ack, nak or dead letter.
    #[tracing::instrument(
        name = "dispatch",
        skip_all,
        fields(
            component = %self.listener(),
            sequence = tracing::field::Empty,
            delivery = tracing::field::Empty,
            event = tracing::field::Empty,
        )
    )]
    async fn dispatch(&self, message: &dyn Delivery) {
        let (sequence, deliveries) = match message.info() {
            Ok(info) => {
                let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
                if info.stream_sequence >= *newest {
                    *newest = info.stream_sequence;
                    self.series.pending(info.pending);
                }
                drop(newest);
                (info.stream_sequence, info.delivered.max(1))
            }
            Err(e) => {
                tracing::error!(listener = self.listener(), error = %e, "a message without delivery metadata; terminating it");
                let _ = message.term().await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("sequence", sequence);
        span.record("delivery", deliveries);
        let subject = message.subject().to_owned();
        let event = match CanonicalEvent::from_message(&message.headers(), message.payload())
            .and_then(|event| event.check_arrival(&subject).map(|()| event))
        {
            Ok(event) => event,
            Err(e) => {
                let reason = format!("not a valid canonical event: {e}");
                self.dead_letter(message, sequence, deliveries, &subject, None, reason)
                    .await;
                return;
            }
        };
        span.record("event", event.id.as_str());
        let event_id = event.id.clone();
        let event_type = event.ty.clone();
        let event_depth = event.depth;
        let Some(component) = self.context.host.components.get(self.listener()) else {
            // Unloaded while this message waited: someone else (or later) handles it.
            let _ = message.nak(Duration::from_secs(1)).await;
            return;
        };
        // The event may wait for a free instance before its deadline starts: tell the server
        // it is in progress well within the consumer's ack wait, so it is not redelivered
        // while it waits or runs.
        let progress_every = crate::bus::ack_wait_for(component.prepared.limits().timeout) / 3;
        let running = self.series.in_flight();
        let call = component
            .prepared
            .handle(event, &self.context.host.capabilities);
        let mut call = std::pin::pin!(call);
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let result = loop {
            let wake = match stop_deadline {
                Some(deadline) => deadline.min(tokio::time::Instant::now() + progress_every),
                None => tokio::time::Instant::now() + progress_every,
            };
            // Biased: the call first, so a call that completes at once never registers the
            // progress timer.
            tokio::select! {
                biased;
                result = &mut call => break Some(result),
                _ = self.stop.cancelled(), if stop_deadline.is_none() => {
                    stop_deadline = Some(tokio::time::Instant::now() + self.context.grace);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        break None;
                    }
                    let _ = message.in_progress().await;
                }
            }
        };
        drop(running);
        self.count(&result);
        self.report_throttling(&result, component.prepared.limits(), event_depth)
            .await;
        let failure = match result {
            None => {
                // Did not finish within the shutdown grace: hand it back.
                let _ = message.nak(HANDBACK_DELAY).await;
                return;
            }
            Some(Ok(invocation)) => match invocation.output {
                HandlerOutcome::Ok => {
                    if let Err(e) = message.ack().await {
                        tracing::warn!(listener = self.listener(), event = %event_id, error = %e, "ack failed; the event will be redelivered");
                    }
                    return;
                }
                HandlerOutcome::Retry { delay } => {
                    if deliveries < u64::from(self.subscription.max_deliver) {
                        let delay = delay
                            .map(|d| d.min(MAX_RETRY_DELAY))
                            .unwrap_or_else(|| self.subscription.backoff_after(deliveries));
                        let _ = message.nak(delay).await;
                        return;
                    }
                    "the listener asked for a retry, but no deliveries are left".to_owned()
                }
                HandlerOutcome::Reject { reason } => format!("rejected: {reason}"),
            },
            Some(Err(e)) => e.to_string(),
        };
        self.record_failure(
            sequence,
            Some(&event_id),
            &event_type,
            event_depth,
            &failure,
            deliveries,
        )
        .await;
        if deliveries < u64::from(self.subscription.max_deliver) {
            let delay = self.subscription.backoff_after(deliveries);
            let _ = message.nak(delay).await;
        } else {
            let reason = format!(
                "{failure} (after {deliveries} deliveries, max-deliver {})",
                self.subscription.max_deliver
            );
            self.dead_letter(
                message,
                sequence,
                deliveries,
                &subject,
                Some((&event_id, &event_type, event_depth)),
                reason,
            )
            .await;
        }
    }

    /// Counts what the publish rate cap held the call back, and reports it when a report is
    /// due (the call handled an event of depth `cause`).
    async fn report_throttling(
        &self,
        result: &Option<Result<Invocation<HandlerOutcome>, InvokeError>>,
        limits: &Limits,
        cause: u32,
    ) {
        let metering = match result {
            None => return,
            Some(Ok(invocation)) => &invocation.metering,
            Some(Err(e)) => &e.metering,
        };
        let due = self
            .throttling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count(metering, Instant::now());
        let Some(due) = due else { return };
        let report = due.to_event(self.listener(), &self.context.host.host_id, limits);
        tracing::info!(
            listener = self.listener(),
            calls = report.calls,
            waits = report.waits,
            refused = report.refused,
            hint = report.hint,
            "the publish rate cap held the listener back"
        );
        // Off the event's path: the event is answered without waiting for the report.
        let failures = self.context.failures.clone();
        tokio::spawn(async move {
            if let Err(e) = failures.throttled(&report, cause).await {
                tracing::warn!(listener = %report.listener, error = %e, "could not report the throttling");
            }
        });
    }

    /// Counts one finished call for the metrics.
    fn count(&self, result: &Option<Result<Invocation<HandlerOutcome>, InvokeError>>) {
        let metrics = &self.context.host.metrics;
        let name = self.listener();
        match result {
            None => {}
            Some(Ok(invocation)) => {
                let wall = Duration::from_micros(invocation.metering.wall_us);
                match invocation.output {
                    HandlerOutcome::Ok => self.series.ok(wall),
                    HandlerOutcome::Retry { .. } => {
                        metrics.invocation(name, "listener", "retry", Some(wall));
                    }
                    HandlerOutcome::Reject { .. } => {
                        metrics.invocation(name, "listener", "reject", Some(wall));
                    }
                }
                metrics.throttled(name, &invocation.metering.throttle);
                self.context
                    .host
                    .metering
                    .record(name, "listener", &invocation.metering, false);
            }
            Some(Err(e)) => {
                let kind = e.kind.to_string();
                let wall = Duration::from_micros(e.metering.wall_us);
                metrics.invocation(name, "listener", &kind, Some(wall));
                metrics.error(name, &kind);
                metrics.throttled(name, &e.metering.throttle);
                self.context
                    .host
                    .metering
                    .record(name, "listener", &e.metering, true);
            }
        }
    }
}

#[cfg(test)]
mod tests;
