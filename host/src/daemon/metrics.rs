//! The daemon's counters: Prometheus text on an HTTP endpoint, and the same numbers in the
//! control service's `$SRV.STATS` replies.
//!
//! Kept deliberately small: a map from (metric, labels) to a [`Series`] behind one mutex,
//! rendered on scrape. A caller that updates the same series on every event (a listener's
//! dispatcher) looks them up once ([`Metrics::series`], [`ListenerSeries`]) and then updates
//! them with an atomic add: no lock, no label rendering, no allocation per event. The
//! endpoint answers `GET /metrics` only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// What each metric means, for `# HELP` lines; also the list of metrics there are.
const METRICS: &[(&str, &str, &str)] = &[
    (
        "sandbus_invocations_total",
        "counter",
        "Guest calls by component, world and outcome (listeners: ok, retry, reject or the failure kind; scripts: the run verdict).",
    ),
    (
        "sandbus_invocation_errors_total",
        "counter",
        "Guest calls that failed (trap, timeout, memory limit...), by component and kind.",
    ),
    (
        "sandbus_invocation_seconds_sum",
        "counter",
        "Total wall time of guest calls, by component.",
    ),
    (
        "sandbus_invocation_seconds_count",
        "counter",
        "Number of timed guest calls, by component.",
    ),
    (
        "sandbus_invocations_in_flight",
        "gauge",
        "Guest calls running now, by component.",
    ),
    (
        "sandbus_listener_pending",
        "gauge",
        "Events waiting in a listener's consumer, as of the last delivery to this host.",
    ),
    (
        "sandbus_publish_throttled_total",
        "counter",
        "Publishes the publish-rate cap held back, by component and outcome (waited: delayed until their turn; refused: rate-limited).",
    ),
    (
        "sandbus_publish_throttled_seconds_total",
        "counter",
        "Time publishes waited for their turn under the publish-rate cap, by component.",
    ),
    (
        "sandbus_kv_reads_total",
        "counter",
        "Guest kv reads (and the reads before conditional writes) by where they were served: this daemon's copy of the bucket, or the server.",
    ),
    (
        "sandbus_kv_copy_bytes",
        "gauge",
        "Bytes of keys and values in this daemon's copy of the guests' kv bucket ([kv] cache_bytes bounds it).",
    ),
    (
        "sandbus_listeners",
        "gauge",
        "Subscribed listeners on this host by state: active (a dispatcher pulls from its consumer) or idle (no consumer until its next event; [listeners] idle_after).",
    ),
    (
        "sandbus_dead_lettered_total",
        "counter",
        "Events moved to the dead-letter stream, by listener.",
    ),
    (
        "sandbus_leases_held",
        "gauge",
        "Device leases held by runs on this host.",
    ),
    (
        "sandbus_devices",
        "gauge",
        "Devices on this host, by state (free, leased).",
    ),
    (
        "sandbus_memory_budget_bytes",
        "gauge",
        "Linear memory all guest instances of this host may hold together ([sandbox] memory_budget).",
    ),
    (
        "sandbus_memory_reserved_bytes",
        "gauge",
        "Linear memory reserved by the guest calls running now (each reserves its memory cap).",
    ),
    (
        "sandbus_memory_reserved_peak_bytes",
        "gauge",
        "The most linear memory ever reserved at once since the daemon started.",
    ),
];

/// One metric with one set of labels: a value that is updated without a lock.
#[derive(Debug, Default)]
pub struct Series {
    /// The value's `f64` bits.
    bits: AtomicU64,
}

impl Series {
    /// Adds `by` (negative to take away).
    pub fn add(&self, by: f64) {
        // Never fails: the closure always returns a value.
        let _ = self
            .bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + by).to_bits())
            });
    }

    /// Sets the value (a gauge).
    pub fn set(&self, to: f64) {
        self.bits.store(to.to_bits(), Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
}

/// The series a listener's dispatcher updates for every event, looked up once when it
/// starts. Other outcomes (retries, rejects, failures) go through [`Metrics`]' own methods.
#[derive(Debug)]
pub struct ListenerSeries {
    ok: Arc<Series>,
    seconds_sum: Arc<Series>,
    seconds_count: Arc<Series>,
    in_flight: Arc<Series>,
    pending: Arc<Series>,
}

impl ListenerSeries {
    /// One call that returned `ok`, and its wall time: what
    /// `Metrics::invocation(listener, "listener", "ok", Some(wall))` counts.
    pub fn ok(&self, wall: Duration) {
        self.ok.add(1.0);
        self.seconds_sum.add(wall.as_secs_f64());
        self.seconds_count.add(1.0);
    }

    /// Events waiting in the listener's consumer, as the latest delivery said.
    pub fn pending(&self, pending: u64) {
        self.pending.set(pending as f64);
    }

    /// Marks a call as running until the guard drops.
    pub fn in_flight(&self) -> Running<'_> {
        self.in_flight.add(1.0);
        Running(&self.in_flight)
    }
}

/// Takes one call off the in-flight gauge when dropped.
pub struct Running<'a>(&'a Series);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.add(-1.0);
    }
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<(&'static str, String), Arc<Series>>>,
}

impl Metrics {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut BTreeMap<(&'static str, String), Arc<Series>>) -> R,
    ) -> R {
        f(&mut self.values.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The series of `metric` with `labels` (created at 0): for a caller that updates it
    /// often, so it renders the labels and takes the lock once.
    pub fn series(&self, metric: &'static str, labels: &[(&str, &str)]) -> Arc<Series> {
        let key = (metric, render_labels(labels));
        self.with(|v| v.entry(key).or_default().clone())
    }

    /// The series a dispatcher of `listener` updates for every event.
    pub fn listener(&self, listener: &str) -> ListenerSeries {
        let component = [("component", listener)];
        ListenerSeries {
            ok: self.series(
                "sandbus_invocations_total",
                &[
                    ("component", listener),
                    ("world", "listener"),
                    ("outcome", "ok"),
                ],
            ),
            seconds_sum: self.series("sandbus_invocation_seconds_sum", &component),
            seconds_count: self.series("sandbus_invocation_seconds_count", &component),
            in_flight: self.series("sandbus_invocations_in_flight", &component),
            pending: self.series("sandbus_listener_pending", &[("listener", listener)]),
        }
    }

    /// Adds `by` to a counter or gauge.
    pub fn add(&self, metric: &'static str, labels: &[(&str, &str)], by: f64) {
        self.series(metric, labels).add(by);
    }

    /// Sets a gauge.
    pub fn set(&self, metric: &'static str, labels: &[(&str, &str)], to: f64) {
        self.series(metric, labels).set(to);
    }

    /// One finished guest call: its outcome, and its wall time when it ran.
    pub fn invocation(&self, component: &str, world: &str, outcome: &str, wall: Option<Duration>) {
        self.add(
            "sandbus_invocations_total",
            &[
                ("component", component),
                ("world", world),
                ("outcome", outcome),
            ],
            1.0,
        );
        if let Some(wall) = wall {
            let labels = [("component", component)];
            self.add(
                "sandbus_invocation_seconds_sum",
                &labels,
                wall.as_secs_f64(),
            );
            self.add("sandbus_invocation_seconds_count", &labels, 1.0);
        }
    }

    /// What the publish rate cap held one call back (nothing is added for a quiet call).
    pub fn throttled(&self, component: &str, throttle: &crate::sandbox::PublishThrottle) {
        if throttle.is_quiet() {
            return;
        }
        for (outcome, count) in [("waited", throttle.waits), ("refused", throttle.refused)] {
            if count > 0 {
                self.add(
                    "sandbus_publish_throttled_total",
                    &[("component", component), ("outcome", outcome)],
                    f64::from(count),
                );
            }
        }
        if throttle.waited_us > 0 {
            self.add(
                "sandbus_publish_throttled_seconds_total",
                &[("component", component)],
                throttle.waited_us as f64 / 1e6,
            );
        }
    }

    /// One failed guest call, by kind (also counted by [`Metrics::invocation`]).
    pub fn error(&self, component: &str, kind: &str) {
        self.add(
            "sandbus_invocation_errors_total",
            &[("component", component), ("kind", kind)],
            1.0,
        );
    }

    /// Marks a call of `component` as running until the guard drops.
    pub fn in_flight<'a>(&'a self, component: &'a str) -> InFlight<'a> {
        self.add(
            "sandbus_invocations_in_flight",
            &[("component", component)],
            1.0,
        );
        InFlight {
            metrics: self,
            component,
        }
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let values = self.values();
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((metric, labels), value) in &values {
                if metric == name {
                    out.push_str(&format!("{name}{labels} {value}\n"));
                }
            }
        }
        out
    }

    /// Every series' value now.
    fn values(&self) -> BTreeMap<(&'static str, String), f64> {
        self.with(|v| {
            v.iter()
                .map(|(key, series)| (key.clone(), series.get()))
                .collect()
        })
    }

    /// Serves `GET /metrics` on `listener` until `stop`.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let (mut socket, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let answer = async {
                    let head = read_head(&mut socket).await?;
                    let response = if head.starts_with("GET /metrics ")
                        || head.starts_with("GET /metrics?")
                    {
                        let body = metrics.render();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        let body = "only GET /metrics is served here\n";
                        format!(
                            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    socket.write_all(response.as_bytes()).await?;
                    socket.shutdown().await
                };
                // A client that stalls gets nothing after a few seconds.
                let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
            });
        }
    }
}

/// Binds the metrics endpoint; the error says the address is taken or cannot be used.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Reads an HTTP request head (at most 8 KiB).
async fn read_head(socket: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `{a="x",b="y"}`, values escaped as Prometheus wants; empty for no labels.
fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    component: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.add(
            "sandbus_invocations_in_flight",
            &[("component", self.component)],
            -1.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let m = Metrics::default();
        m.invocation("noop", "listener", "ok", Some(Duration::from_millis(2)));
        m.invocation("noop", "listener", "ok", None);
        m.error("bad\"name", "trap");
        {
            let _running = m.in_flight("noop");
            assert!(
                m.render()
                    .contains("sandbus_invocations_in_flight{component=\"noop\"} 1")
            );
        }
        let text = m.render();
        assert!(
            text.contains(
                "sandbus_invocations_total{component=\"noop\",world=\"listener\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("sandbus_invocation_seconds_count{component=\"noop\"} 1"));
        assert!(text.contains("component=\"bad\\\"name\""), "{text}");
        assert!(text.contains("sandbus_invocations_in_flight{component=\"noop\"} 0"));
        assert!(text.contains("# TYPE sandbus_invocations_total counter"));
    }

    #[test]
    fn a_listeners_series_count_the_same_as_the_metrics_own_methods() {
        let by_series = Metrics::default();
        let listener = by_series.listener("noop");
        let by_method = Metrics::default();
        for wall in [3, 5] {
            let _running = listener.in_flight();
            listener.ok(Duration::from_millis(wall));
            listener.pending(7 - wall);
            let _running = by_method.in_flight("noop");
            by_method.invocation("noop", "listener", "ok", Some(Duration::from_millis(wall)));
            by_method.set(
                "sandbus_listener_pending",
                &[("listener", "noop")],
                (7 - wall) as f64,
            );
        }
        // A series looked up again is the same one.
        by_series.invocation("noop", "listener", "ok", None);
        by_method.invocation("noop", "listener", "ok", None);
        assert_eq!(by_series.render(), by_method.render());
        assert!(by_series.render().contains(
            "sandbus_invocations_total{component=\"noop\",world=\"listener\",outcome=\"ok\"} 3"
        ));
        assert!(
            by_series
                .render()
                .contains("sandbus_listener_pending{listener=\"noop\"} 2")
        );
    }
}
