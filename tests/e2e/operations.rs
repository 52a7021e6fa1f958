//! Running sandbus as an operator does: the Prometheus endpoint, the service's STATS, and
//! the sample configuration shipped in the repository.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::Value;

use super::cluster::{Cluster, guest};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.1; the whole response.
fn http_get(port: u16, path: &str) -> String {
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    response
}

/// `n` events of type `ops.tick`, ids `ops-0`...
fn ticks(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "specversion": "1.0", "id": format!("ops-{i}"), "source": "/ops",
                "type": "ops.tick", "data": { "n": i }
            })
        })
        .collect()
}

#[test]
fn the_metrics_endpoint_counts_invocations() {
    let mut cluster = Cluster::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    cluster.spawn_daemon("ops", &["--metrics-listen", &listen]);
    cluster.wait_for_host("ops");
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "noop"]);
    cluster.cli_ok(&["subscribe", "noop", "--events", "ops.*"]);
    cluster.wait_for_component("ops", "noop", 1);
    cluster.publish_events(&ticks(25));
    cluster.wait_drained("noop");
    let counted =
        "sandbus_invocations_total{component=\"noop\",world=\"listener\",outcome=\"ok\"} 25";
    cluster.wait("the metrics to count 25 calls", |_| {
        http_get(port, "/metrics").contains(counted)
    });
    let response = http_get(port, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("content-type: text/plain; version=0.0.4"));
    assert!(response.contains("# TYPE sandbus_invocations_total counter"));
    assert!(response.contains("sandbus_invocation_seconds_count{component=\"noop\"} 25"));
    assert!(response.contains("sandbus_invocations_in_flight{component=\"noop\"} 0"));
    assert!(response.contains("sandbus_listener_pending{listener=\"noop\"} 0"));
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_listener_held_back_by_its_publish_rate_says_so_in_status_metrics_and_an_event() {
    let mut cluster = Cluster::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    cluster.spawn_daemon("ops", &["--metrics-listen", &listen]);
    cluster.wait_for_host("ops");
    // Echoes every event on `echo.<type>`; with no per-call budget and 1/s, most echoes
    // wait for their turn.
    cluster.cli_ok(&[
        "upload",
        &guest("echo-listener"),
        "--name",
        "echo",
        "--grant",
        "publish=echo.>",
        "--limit",
        "publish-budget=0",
        "--limit",
        "publish-rate=1/s",
    ]);
    cluster.cli_ok(&["subscribe", "echo", "--events", "ops.*"]);
    cluster.wait_for_component("ops", "echo", 1);
    cluster.publish_events(&ticks(4));
    cluster.wait_drained("echo");
    cluster.wait("the status to show the throttling", |c| {
        !c.status("echo")["last_throttled"].is_null()
    });
    let throttled = &cluster.status("echo")["last_throttled"];
    assert_eq!(throttled["host"], "ops");
    assert_eq!(throttled["publish_rate"], 1);
    assert_eq!(throttled["publish_budget"], 0);
    // Handled concurrently: a publish waits for its turn, or is refused when its turn is
    // more than a second away.
    let held = throttled["waits"].as_u64().unwrap() + throttled["refused"].as_u64().unwrap();
    assert!(held >= 1, "{throttled}");
    let hint = throttled["hint"].as_str().unwrap();
    assert!(hint.contains("--limit publish-budget=1"), "{hint}");
    let shown = cluster.cli_ok(&["status", "echo"]);
    assert!(shown.contains("throttled:"), "{shown}");
    assert!(
        shown.contains("publish-rate=1/s, publish-budget=0"),
        "{shown}"
    );
    cluster.wait("the throttled event", |c| {
        !c.events("sandbus.listener.throttled").is_empty()
    });
    let announced = cluster.events("sandbus.listener.throttled");
    assert_eq!(announced[0]["data"]["listener"], "echo", "{announced:?}");
    assert_eq!(announced[0]["subject"], "echo");
    let metrics = http_get(port, "/metrics");
    assert!(
        metrics.contains("sandbus_publish_throttled_total{component=\"echo\",outcome="),
        "{metrics}"
    );
}

#[test]
fn a_metrics_address_in_use_stops_the_daemon_at_start_with_the_reason() {
    let cluster = Cluster::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cluster
        .command(&["daemon", "--host-id", "ops", "--metrics-listen", &addr])
        .env("SANDBUS_DATA_DIR", cluster.path("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
    drop(taken);
}

#[test]
fn the_sample_configuration_is_valid_and_a_typo_in_it_is_refused() {
    let cluster = Cluster::new();
    let sample =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/sandbus.toml");
    let out = cluster
        .command(&[
            "daemon",
            "--config",
            sample.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = std::fs::read_to_string(&sample).unwrap();
    text = text.replace("listen = \"127.0.0.1:9464\"", "lisen = \"127.0.0.1:9464\"");
    let typo = cluster.path("typo.toml");
    std::fs::write(&typo, text).unwrap();
    let out = cluster
        .command(&[
            "daemon",
            "--config",
            typo.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
}

#[test]
fn usage_is_emitted_as_batched_metering_events() {
    let mut cluster = Cluster::new();
    let config = cluster.path("sandbus.toml");
    std::fs::write(&config, "[metering]\nwindow = \"500ms\"\n").unwrap();
    cluster.spawn_daemon("meter", &["--config", config.to_str().unwrap()]);
    cluster.wait_for_host("meter");
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "noop"]);
    cluster.cli_ok(&["subscribe", "noop", "--events", "meter.*"]);
    cluster.wait_for_component("meter", "noop", 1);
    let events: Vec<Value> = (0..60)
        .map(|i| {
            serde_json::json!({
                "specversion": "1.0", "id": format!("m-{i}"), "source": "/ops",
                "type": "meter.tick", "data": { "n": i }
            })
        })
        .collect();
    cluster.publish_events(&events);
    cluster.wait_drained("noop");
    let metering = |c: &Cluster| -> Vec<Value> {
        c.cli_ok(&["events", "sandbus.metering", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let noop_usage = |events: &[Value]| -> (u64, u64) {
        let mut invocations = 0;
        let mut wall = 0;
        for event in events {
            for c in event["data"]["components"].as_array().unwrap() {
                if c["component"] == "noop" {
                    invocations += c["usage"]["invocations"].as_u64().unwrap();
                    wall += c["usage"]["wall_us"].as_u64().unwrap();
                }
            }
        }
        (invocations, wall)
    };
    cluster.wait("60 metered calls", |c| noop_usage(&metering(c)).0 == 60);
    let events = metering(&cluster);
    let (invocations, wall) = noop_usage(&events);
    assert_eq!(invocations, 60);
    assert!(wall > 0);
    // Batched: a handful of events for 60 calls, never one per call.
    assert!(events.len() < 20, "{} metering events", events.len());
    let first = &events[0];
    assert_eq!(first["data"]["host"], "meter");
    assert!(first["data"]["window_start"].as_str().is_some());
    assert!(
        first["data"]["components"][0]["usage"]["peak_memory"]
            .as_u64()
            .is_some()
    );
}
