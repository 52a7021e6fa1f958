//! The `bulk publish` rows of the daemon bench: `sandbus publish --file` (the real CLI
//! binary, straight onto the events stream, its default window) against a native
//! async-nats publisher that keeps the same window of acks in flight, in the same run on
//! the same server. Events/s is wall clock from start to the last ack; the CLI's includes
//! starting the process and checking the file, as a user sees it.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream;

/// Events per round.
const EVENTS: usize = 50_000;

/// The window both sides keep: the CLI's default.
const WINDOW: usize = sandbus::bus::DEFAULT_WINDOW;

/// A small canonical event of type `ty` (about 200 bytes).
fn event(i: usize, ty: &str, round: usize) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": format!("bulk-{round}-{i}"), "source": "/bench", "type": ty,
        "time": "2026-11-21T12:00:00Z", "datacontenttype": "application/json",
        "data": {"tenant": "acme", "instance": format!("i-{i}"), "n": i}
    })
}

/// Publishes `EVENTS` events natively with `WINDOW` acks in flight, awaited in order as the
/// CLI does; events/s.
async fn native(js: &jetstream::Context, round: usize) -> f64 {
    let events: Vec<(String, String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let e = event(i, "bulk.native", round);
            let key = sandbus::event::dedup_key("/bench", e["id"].as_str().unwrap());
            (
                "events.bulk.native".to_owned(),
                key,
                e.to_string().into_bytes(),
            )
        })
        .collect();
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for (subject, key, body) in events {
        if in_flight.len() >= WINDOW {
            let ack: jetstream::context::PublishAckFuture = in_flight.pop_front().unwrap();
            ack.await.unwrap();
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", key.as_str());
        in_flight.push_back(
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap(),
        );
    }
    for ack in in_flight {
        ack.await.unwrap();
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

/// Runs `sandbus publish --file` over `EVENTS` events; events/s.
fn cli(url: &str, dir: &Path, round: usize) -> f64 {
    let lines: Vec<String> = (0..EVENTS)
        .map(|i| event(i, "bulk.cli", round).to_string())
        .collect();
    let file = dir.join(format!("bulk-{round}.jsonl"));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sandbus"))
        .args(["publish", "--file"])
        .arg(&file)
        .args(["--nats", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "sandbus publish --file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    EVENTS as f64 / secs
}

/// Measures both `rounds` times (alternating) and prints the two rows, medians, the CLI's as a
/// ratio of the native publisher's. The events stream must exist.
pub fn rows(rt: &tokio::runtime::Runtime, js: &jetstream::Context, url: &str, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut natives = Vec::new();
    let mut clis = Vec::new();
    for round in 0..rounds {
        natives.push(rt.block_on(native(js, round)));
        clis.push(cli(url, dir.path(), round));
        eprintln!(
            "bulk publish round {round}: native {:.0}/s, sandbus publish --file {:.0}/s",
            natives[round], clis[round]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let native = median(&mut natives);
    let cli = median(&mut clis);
    println!();
    println!("bulk publish, {EVENTS} small events x {rounds} rounds (median), window {WINDOW}");
    println!("{:<34} {:>10} {:>6}", "publisher", "events/s", "ratio");
    println!(
        "{:<34} {:>10.0} {:>6}",
        "native async-nats, same window", native, "1.00"
    );
    println!(
        "{:<34} {:>10.0} {:>6.2}",
        "sandbus publish --file",
        cli,
        cli / native
    );
}
