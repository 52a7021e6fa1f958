//! The daemon's counters: Prometheus text on an HTTP endpoint, and the same numbers in the
//! control service's `$SRV.STATS` replies.
//!
//! Kept deliberately small: a map from (metric, labels) to a value behind one mutex, updated
//! once per invocation (a lock and a hash update, well under a microsecond against the
//! 10 µs+ of a call), rendered on scrape. The endpoint answers `GET /metrics` only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
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

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<(&'static str, String), f64>>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<(&'static str, String), f64>) -> R) -> R {
        f(&mut self.values.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds `by` to a counter or gauge.
    pub fn add(&self, metric: &'static str, labels: &[(&str, &str)], by: f64) {
        let key = (metric, render_labels(labels));
        self.with(|v| *v.entry(key).or_default() += by);
    }

    /// Sets a gauge.
    pub fn set(&self, metric: &'static str, labels: &[(&str, &str)], to: f64) {
        let key = (metric, render_labels(labels));
        self.with(|v| v.insert(key, to));
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
        let values = self.with(|v| v.clone());
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

    /// The same numbers as JSON (for `$SRV.STATS`): `{"metric{labels}": value}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let values = self.with(|v| v.clone());
        serde_json::Value::Object(
            values
                .into_iter()
                .map(|((metric, labels), value)| (format!("{metric}{labels}"), value.into()))
                .collect(),
        )
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
        let json = m.snapshot();
        assert_eq!(
            json["sandbus_invocations_total{component=\"noop\",world=\"listener\",outcome=\"ok\"}"],
            2.0
        );
    }
}
