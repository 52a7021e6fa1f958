//! The daemon's two watches: the component manifests (load, hot-swap, unload, a few loads
//! at a time; failed loads retried; how long the first load took logged) and the
//! subscriptions (the [`ListenerRoster`] of this host's listeners, each with a dispatcher
//! while active). Both follow their bucket with [`keep_watching`],
//! which opens the watch again when it breaks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::components::LoadedComponents;
use super::roster::ListenerRoster;
use crate::bus::{BusError, ComponentStore, LoadState, ManifestEvent, SubscriptionStore};

/// How often components that failed to load are tried again.
const RETRY_FAILED_LOADS: Duration = Duration::from_secs(5);

/// Keeps the loaded components in step with the manifests until `stop`.
pub(super) async fn watch_manifests(
    store: ComponentStore,
    components: Arc<LoadedComponents>,
    stop: CancellationToken,
) {
    // Failed loads are retried on a task of their own: a retry that compiles for a while
    // (up to the compile budget) must not hold up the changes that come meanwhile.
    tokio::spawn({
        let components = components.clone();
        let stop = stop.clone();
        async move {
            let mut retry = tokio::time::interval(RETRY_FAILED_LOADS);
            retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = retry.tick() => components.retry_failed().await,
                }
            }
        }
    });
    // The loads of the manifests there at the start go on `first`, to tell when they end.
    let started = Instant::now();
    let first = TaskTracker::new();
    let later = TaskTracker::new();
    let caught_up = AtomicBool::new(false);
    keep_watching(
        "manifest",
        &stop,
        || store.watch(),
        |event| async {
            match event {
                ManifestEvent::Change(change) => {
                    let tasks = if caught_up.load(Ordering::Relaxed) {
                        &later
                    } else {
                        &first
                    };
                    components.apply_in_background(change, tasks).await;
                }
                ManifestEvent::CaughtUp => {
                    if !caught_up.swap(true, Ordering::Relaxed) {
                        first.close();
                        tokio::spawn(report_first_load(
                            components.clone(),
                            first.clone(),
                            started,
                        ));
                    }
                }
            }
        },
    )
    .await;
}

/// Logs how long loading the components there at the start took, once those loads end:
/// the part of a restart that grows with the number of components.
async fn report_first_load(
    components: Arc<LoadedComponents>,
    loads: TaskTracker,
    started: Instant,
) {
    loads.wait().await;
    let failed = components
        .not_ready()
        .values()
        .filter(|n| n.state == LoadState::Failed)
        .count();
    let loaded = components.versions().len();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        loaded,
        failed,
        seconds,
        "loaded {loaded} components in {seconds:.2} s"
    );
}

/// Keeps the roster in step with the subscriptions (dispatchers started, restarted when what
/// they run by changed, stopped), until `stop`.
pub(super) async fn watch_subscriptions(
    subscriptions: SubscriptionStore,
    roster: Arc<ListenerRoster>,
    stop: CancellationToken,
) {
    keep_watching(
        "subscription",
        &stop,
        || subscriptions.watch(),
        |change| {
            let roster = roster.clone();
            async move { roster.apply(change).await }
        },
    )
    .await;
}

/// Follows a watch until `stop`: `open` starts it, every change goes to `apply` (one at a
/// time, in order), and when the watch fails or ends it is opened again a second later.
/// `what` names the watched items in the log ("the manifest watch failed", "cannot watch
/// the manifests").
async fn keep_watching<T, S, W, A>(
    what: &str,
    stop: &CancellationToken,
    mut open: impl FnMut() -> W,
    mut apply: impl FnMut(T) -> A,
) where
    W: Future<Output = Result<S, BusError>>,
    S: Stream<Item = Result<T, BusError>>,
    A: Future<Output = ()>,
{
    while !stop.is_cancelled() {
        match open().await {
            Ok(changes) => {
                let mut changes = std::pin::pin!(changes);
                loop {
                    let change = tokio::select! {
                        _ = stop.cancelled() => return,
                        change = changes.next() => change,
                    };
                    match change {
                        Some(Ok(change)) => apply(change).await,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the {what} watch failed; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the {what}s; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
