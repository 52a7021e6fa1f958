//! [`ListenerRoster`]: every subscribed listener on this host, active or idle.
//!
//! An **active** listener has a [`ListenerDispatcher`] pulling from its consumer. An **idle**
//! one has no dispatcher and no consumer ([`crate::bus::IdlePosition`]): a dispatcher whose
//! listener had nothing to do rests it and ends, and so does one whose consumer another host
//! rested. Idle listeners cost nothing but an entry here, so a host can hold thousands.
//!
//! Waking them is the [`EventFeed`]'s job: one ephemeral pull consumer per host over every event,
//! headers only, started when the first listener goes idle. For each event the roster looks
//! up, in a [`SubjectIndex`] of every subscription's patterns, the listeners that want it,
//! and starts a dispatcher for each idle one; the dispatcher makes the consumer again from
//! where the listener stood, so the event that woke it is delivered.
//!
//! The feed only sees what comes after it: whenever a listener goes idle (rested here or
//! elsewhere, or found idle in its record at start), the roster asks once whether an event
//! for it came between its position and the last event the feed handled, and wakes it if
//! one did. Together that never leaves an event behind an idle listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::dispatcher::{DispatchContext, DispatcherHandle, ListenerDispatcher, WentIdle};
use crate::bus::{EventFeed, EventStream, Subscription, SubscriptionChange, SubscriptionStore};
use crate::subject_index::SubjectIndex;

/// Checks for events that came while a listener went idle, at once.
const CHECKS_AT_ONCE: usize = 16;

/// Every subscribed listener on this host, and the feed that wakes the idle ones.
pub(super) struct ListenerRoster {
    context: Arc<DispatchContext>,
    subscriptions: SubscriptionStore,
    events: EventStream,
    state: Mutex<Entries>,
    /// The last event sequence the feed has handled (0 before it runs). Written with the
    /// entries locked, so a listener idle before an event's turn is woken by it.
    feed_seen: AtomicU64,
    /// Whether the feed runs: it starts with the first idle listener and never stops.
    feed_running: watch::Sender<bool>,
    feed_wanted: watch::Sender<bool>,
    checks: Semaphore,
    stop: CancellationToken,
}

#[derive(Default)]
struct Entries {
    listeners: HashMap<String, Entry>,
    /// Every subscription's event subjects, to the listener.
    index: SubjectIndex<String>,
}

struct Entry {
    subscription: Subscription,
    /// Its dispatcher while it is active; `None` while it is idle.
    dispatcher: Option<DispatcherHandle>,
}

/// How many listeners are active and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct RosterCount {
    pub active: usize,
    pub idle: usize,
}

impl ListenerRoster {
    /// A roster with no listeners; `went_idle` receives what `context`'s dispatchers report.
    pub(super) fn start(
        context: Arc<DispatchContext>,
        subscriptions: SubscriptionStore,
        went_idle: mpsc::UnboundedReceiver<WentIdle>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let roster = Arc::new(Self {
            context,
            events: subscriptions.events().clone(),
            subscriptions,
            state: Mutex::default(),
            feed_seen: AtomicU64::new(0),
            feed_running: watch::Sender::new(false),
            feed_wanted: watch::Sender::new(false),
            checks: Semaphore::new(CHECKS_AT_ONCE),
            stop,
        });
        tokio::spawn(roster.clone().follow_idle_reports(went_idle));
        tokio::spawn(roster.clone().run_feed());
        roster
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every listener on the roster, sorted.
    pub(super) fn listeners(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries().listeners.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many are active and idle.
    pub(super) fn count(&self) -> RosterCount {
        let entries = self.entries();
        let active = entries
            .listeners
            .values()
            .filter(|e| e.dispatcher.is_some())
            .count();
        RosterCount {
            active,
            idle: entries.listeners.len() - active,
        }
    }

    /// Follows a subscription change: a new or changed subscription starts a dispatcher (or
    /// is idle, when its record says so); a removed one stops it.
    pub(super) async fn apply(self: &Arc<Self>, change: SubscriptionChange) {
        let (listener, next) = match change {
            SubscriptionChange::Put(subscription) => {
                (subscription.listener.clone(), Some(subscription))
            }
            SubscriptionChange::Removed(listener) => (listener, None),
        };
        let previous = {
            let mut entries = self.entries();
            if let (Some(entry), Some(next)) = (entries.listeners.get_mut(&listener), &next)
                && same_delivery(&entry.subscription, next)
            {
                // Only where it stood when idled, or the time, changed.
                entry.subscription = next.clone();
                return;
            }
            let previous = entries.listeners.remove(&listener);
            if let Some(previous) = &previous {
                for subject in previous.subscription.filter_subjects() {
                    entries.index.remove(&subject, &listener);
                }
            }
            previous
        };
        if let Some(dispatcher) = previous.and_then(|p| p.dispatcher) {
            dispatcher.stop().await;
        }
        let Some(subscription) = next else { return };
        let idle = subscription.idle.is_some();
        {
            let mut entries = self.entries();
            for subject in subscription.filter_subjects() {
                entries.index.insert(&subject, listener.clone());
            }
            let dispatcher = (!idle)
                .then(|| ListenerDispatcher::spawn(subscription.clone(), self.context.clone()));
            entries.listeners.insert(
                listener.clone(),
                Entry {
                    subscription,
                    dispatcher,
                },
            );
        }
        if idle {
            // The record just read says where it stood: no need to read it again.
            self.went_idle(listener, true);
        }
    }

    /// A dispatcher reported its listener idle: unless a newer dispatcher runs it already,
    /// it is idle now.
    fn idle_reported(self: &Arc<Self>, report: WentIdle) {
        {
            let mut entries = self.entries();
            let Some(entry) = entries.listeners.get_mut(&report.listener) else {
                return;
            };
            if entry.dispatcher.as_ref().map(|d| d.id) != Some(report.dispatcher) {
                return;
            }
            entry.dispatcher = None;
        }
        self.went_idle(report.listener, false);
    }

    /// `listener` just went idle: the feed must run, and an event that came before the feed
    /// could wake it must wake it now. `known`: the roster's copy of its record is the one
    /// that made it idle (else the record is read: the copy may hold an older position, from
    /// before it was rested again, and would wake it for events already handled).
    fn went_idle(self: &Arc<Self>, listener: String, known: bool) {
        let roster = self.clone();
        tokio::spawn(async move { roster.check(listener, known).await });
    }

    /// Wakes `listener` if an event came for it after where it stood and up to what the feed
    /// has handled. Starts the feed first, unless the listener turns out not to be idle at
    /// all (unsubscribed, or its consumer deleted by hand: nothing to make it again from):
    /// the feed is a consumer on the events stream too.
    async fn check(self: Arc<Self>, listener: String, known: bool) {
        let Ok(_permit) = self.checks.acquire().await else {
            return;
        };
        let mut running = self.feed_running.subscribe();
        loop {
            let known_record = {
                let entries = self.entries();
                match entries.listeners.get(&listener) {
                    None => return,
                    Some(entry) if entry.dispatcher.is_some() => return,
                    Some(entry) => entry.subscription.clone(),
                }
            };
            let subscription = if known && known_record.idle.is_some() {
                Ok(Some(known_record))
            } else {
                self.subscriptions.get(&listener).await
            };
            let since = match subscription {
                Ok(Some(subscription)) if subscription.idle.is_some() => {
                    self.feed_wanted.send_replace(true);
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = running.wait_for(|running| *running) => {}
                    }
                    let seen = self.feed_seen.load(Ordering::Acquire);
                    self.subscriptions
                        .events_since_idle(&subscription, seen)
                        .await
                }
                Ok(_) => return,
                Err(e) => Err(e),
            };
            match since {
                Ok(true) => {
                    self.wake(&listener);
                    return;
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(listener, error = %e, "cannot check the idle listener's events; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Starts a dispatcher for `listener` if it is idle.
    fn wake(&self, listener: &str) {
        let mut entries = self.entries();
        self.wake_locked(&mut entries, listener);
    }

    fn wake_locked(&self, entries: &mut Entries, listener: &str) {
        if self.stop.is_cancelled() {
            return;
        }
        let Some(entry) = entries.listeners.get_mut(listener) else {
            return;
        };
        if entry.dispatcher.is_none() {
            tracing::debug!(listener, "an event woke the idle listener");
            entry.dispatcher = Some(ListenerDispatcher::spawn(
                entry.subscription.clone(),
                self.context.clone(),
            ));
        }
    }

    async fn follow_idle_reports(self: Arc<Self>, mut reports: mpsc::UnboundedReceiver<WentIdle>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                report = reports.recv() => match report {
                    Some(report) => self.idle_reported(report),
                    None => return,
                },
            }
        }
    }

    /// Follows every event once a listener is idle, and wakes the idle listeners it is for.
    async fn run_feed(self: Arc<Self>) {
        let mut wanted = self.feed_wanted.subscribe();
        tokio::select! {
            _ = self.stop.cancelled() => return,
            _ = wanted.wait_for(|wanted| *wanted) => {}
        }
        // Once the feed ran, it always goes on just after the last event it handled (the
        // stream may be empty, so "nothing seen" is not sequence 0).
        let mut started = false;
        while !self.stop.is_cancelled() {
            let from = started.then(|| self.feed_seen.load(Ordering::Acquire) + 1);
            match EventFeed::open(&self.events, from).await {
                Ok((feed, start, events)) => {
                    if !started {
                        self.feed_seen
                            .store(start.saturating_sub(1), Ordering::Release);
                        started = true;
                    }
                    self.feed_running.send_replace(true);
                    tracing::debug!(start, "following events for idle listeners");
                    let stopped = self.follow_feed(events).await;
                    feed.close().await;
                    if stopped {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the events for idle listeners; retrying")
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Wakes the idle listeners each event is for, until the feed breaks (`false`) or the
    /// roster stops (`true`).
    async fn follow_feed(
        &self,
        events: impl futures::Stream<Item = Result<crate::bus::FedEvent, crate::bus::BusError>>,
    ) -> bool {
        let mut events = std::pin::pin!(events);
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => return true,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    let mut entries = self.entries();
                    if event.sequence <= self.feed_seen.load(Ordering::Acquire) {
                        continue;
                    }
                    let mut wanting = Vec::new();
                    entries.index.for_each_match(&event.subject, |listener| {
                        wanting.push(listener.clone());
                    });
                    for listener in wanting {
                        self.wake_locked(&mut entries, &listener);
                    }
                    self.feed_seen.store(event.sequence, Ordering::Release);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the event feed broke; following again");
                    return false;
                }
                None => return false,
            }
        }
    }

    /// Stops every dispatcher (letting calls in flight finish within the grace period).
    pub(super) async fn stop_all(&self) {
        self.stop.cancel();
        let handles: Vec<DispatcherHandle> = self
            .entries()
            .listeners
            .values_mut()
            .filter_map(|entry| entry.dispatcher.take())
            .collect();
        futures::future::join_all(handles.into_iter().map(DispatcherHandle::stop)).await;
    }
}

/// Whether two versions of a subscription deliver the same way: a dispatcher running one
/// may go on for the other.
fn same_delivery(a: &Subscription, b: &Subscription) -> bool {
    a.events == b.events
        && a.max_in_flight == b.max_in_flight
        && a.max_deliver == b.max_deliver
        && a.backoff == b.backoff
}
