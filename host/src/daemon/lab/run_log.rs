//! A run's log: the lines its script writes, stored in the runs stream as they come
//! without ever making the script wait on the bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;

use crate::bus::RunStore;
use crate::imports::log::{LogLine, LogSink};

/// Log lines a run may have waiting to be published; past this, lines are dropped (and
/// counted) rather than slowing the script down.
const LOG_BUFFER: usize = 4096;

/// Log lines whose storage acks a run's log task waits for at once.
const LOG_ACK_WINDOW: usize = 256;

/// How long storing a run's remaining log lines may take once it ended.
pub(super) const LOG_DRAIN: Duration = Duration::from_secs(10);

/// A run's log sink: lines go through a bounded channel to a task that stores them in the
/// runs stream (acks awaited in a window, not one by one), so a chatty script never waits on
/// the bus.
pub(super) struct RunLog {
    lines: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Lines that were dropped (buffer full) or could not be stored.
    pub(super) dropped: Arc<AtomicU64>,
}

impl RunLog {
    pub(super) fn start(runs: RunStore, run: String) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (lines, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(LOG_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let task = tokio::spawn(async move {
            let mut acks = futures::stream::FuturesOrdered::new();
            while let Some(line) = rx.recv().await {
                match runs.log(&run, line).await {
                    Ok(ack) => acks.push_back(ack),
                    Err(e) => {
                        tracing::warn!(run = %run, error = %e, "could not store a run log line");
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while acks.len() >= LOG_ACK_WINDOW {
                    if let Some(Err(_)) = acks.next().await {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while let Some(result) = acks.next().await {
                if result.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (Arc::new(Self { lines, dropped }), task)
    }
}

impl LogSink for RunLog {
    fn line(&self, line: &LogLine) {
        let Ok(body) = serde_json::to_vec(line) else {
            return;
        };
        if self.lines.try_send(body).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
