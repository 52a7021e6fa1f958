//! How far the billing listener is, read from its durable consumer on the events stream (a
//! direct JetStream request, so it works while any daemon is down), and the phases of the run
//! cut out of those readings.

use std::time::{Duration, Instant};

use async_nats::jetstream;

/// The events stream (`[events] stream`).
pub const STREAM: &str = "SANDBUS_EVENTS";

/// One reading of the listener's consumer.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// When it was read.
    pub at: Instant,
    /// Events acknowledged: published minus not yet delivered minus in flight. Counts only
    /// chunks whose publishing finished, so it may lag by a chunk while one is published.
    pub handled: u64,
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: u64,
    /// Deliveries so far, redeliveries included (the consumer's delivered sequence).
    pub deliveries: u64,
}

impl Reading {
    /// Redeliveries so far: every delivery beyond the first of an event. Each event handled
    /// or in flight was delivered at least once; the rest of the deliveries are repeats.
    pub fn redeliveries(&self) -> u64 {
        self.deliveries
            .saturating_sub(self.handled + self.in_flight)
    }
}

/// Reads the consumer `consumer` of the events stream.
pub struct Progress {
    js: jetstream::Context,
    consumer: String,
}

impl Progress {
    /// Reads through `js` the consumer of the listener `listener`.
    pub fn new(js: jetstream::Context, listener: &str) -> Self {
        Self {
            js,
            consumer: format!("sandbus-listener-{listener}"),
        }
    }

    /// The consumer now, given that `published` events are in the stream; what went wrong if
    /// it cannot be read (a node or the consumer's leader is moving).
    pub async fn read(&self, published: u64) -> Result<Reading, String> {
        let request = async {
            let stream = self
                .js
                .get_stream(STREAM)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .consumer_info(&self.consumer)
                .await
                .map_err(|e| e.to_string())
        };
        let info = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .map_err(|_| "no answer within 10 s".to_owned())??;
        let in_flight = info.num_ack_pending as u64;
        Ok(Reading {
            at: Instant::now(),
            handled: published.saturating_sub(info.num_pending + in_flight),
            pending: info.num_pending,
            in_flight,
            deliveries: info.delivered.consumer_sequence,
        })
    }

    /// The name of the node leading the events stream, if it can be told.
    pub async fn stream_leader(&self) -> Option<String> {
        let stream = self.js.get_stream(STREAM).await.ok()?;
        stream.cached_info().cluster.as_ref()?.leader.clone()
    }
}

/// A stretch of the run between two readings, with what happened at its start.
pub struct Phase {
    /// What the phase is, for the table.
    pub name: String,
    /// The reading it starts with.
    pub from: Reading,
    /// The reading it ends with.
    pub to: Reading,
}

impl Phase {
    /// Events acknowledged during the phase.
    pub fn handled(&self) -> u64 {
        self.to.handled.saturating_sub(self.from.handled)
    }

    /// The phase's length in seconds.
    pub fn seconds(&self) -> f64 {
        self.to.at.duration_since(self.from.at).as_secs_f64()
    }

    /// Events acknowledged per second during the phase.
    pub fn rate(&self) -> f64 {
        self.handled() as f64 / self.seconds().max(1e-6)
    }

    /// Redeliveries during the phase.
    pub fn redeliveries(&self) -> u64 {
        self.to
            .redeliveries()
            .saturating_sub(self.from.redeliveries())
    }
}
