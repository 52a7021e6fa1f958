//! End-to-end throughput and latency of listeners through the real daemon, against a native
//! async-nats durable consumer doing the same acks, in the same run on the same server.
//!
//! Not a criterion benchmark: one run is seconds of traffic through a real `nats-server`, a
//! release-built `sandbus daemon` and real guests. It prints a table; `scripts/bench.sh`
//! runs it. Needs `nats-server` on PATH (or `$SANDBUS_NATS_SERVER`) and the guests built.
//!
//! - **Throughput**: N events are published while nobody consumes, then the consumer (the
//!   daemon with the trivial `noop-listener`, or the native loop) drains them. A separate
//!   client polls the consumer's ack floor, the same way for both; events/s is counted from
//!   the first ack to the last.
//! - **Latency**: events are published one every `1/rate` s; the listener (`echo-listener`,
//!   or the native loop) publishes the event id on `echo.<type>`, then acks. Latency is
//!   publish → echo received, p50 and p99.
//! - **Bulk publish** (`daemon/bulk_publish.rs`): `sandbus publish --file` against a native
//!   pipelined publisher with the same window of acks in flight.
//! - **Upload**: a generated ~20 MB listener (16 MiB of data, about 4 MB of code) is
//!   uploaded to a fresh daemon (no compile cache); the upload returns once the component is
//!   recorded, `upload --wait` once the daemon has compiled it. The ratio is the upload's
//!   time over the time until the component is ready (`SANDBUS_BENCH_UPLOAD=0` skips it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use tokio::sync::Mutex;

#[path = "support/mod.rs"]
mod bench_support;
#[path = "daemon/bulk_publish.rs"]
mod bulk_publish;
#[path = "../../tests/support/mod.rs"]
mod support;

use bench_support::{Server, cli, cpu_micros, publish_all, repo, wait_for_host};

const EVENTS: usize = 50_000;
const LATENCY_EVENTS: usize = 2_000;
const LATENCY_RATE: u64 = 1_000;
const IN_FLIGHT: i64 = 128;
const ROUNDS: usize = 3;

fn rounds() -> usize {
    std::env::var("SANDBUS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
}

fn event(i: usize, ty: &str) -> (String, String, Vec<u8>) {
    let id = format!("e-{i}-{}", rand::random::<u32>());
    let body = serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/bench", "type": ty,
        "time": "2026-11-21T12:00:00Z", "datacontenttype": "application/json",
        "data": {"tenant": "acme", "instance": format!("i-{i}"), "n": i}
    });
    (format!("events.{ty}"), id, body.to_string().into_bytes())
}

/// Context switches (voluntary and not) over all of a process's threads so far.
fn context_switches(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(("voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches", n)) =
                line.split_once(':')
            {
                total += n.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    total
}

/// One drain: events/s from first to last ack, and the CPU µs per event each of `pids`
/// spent over that same span.
struct Drain {
    rate: f64,
    cpu_per_event: Vec<f64>,
    switches_per_event: Vec<f64>,
    /// From the start of the drain (the consumer just started) to its first ack.
    first_ack: Duration,
    /// The longest time the ack floor stood still between the first ack and the last, and
    /// how many of this drain's events were acked when it began.
    longest_stall: (Duration, u64),
}

/// Polls a consumer until `total` messages are acked. `floor` is where its ack floor stood
/// before this drain: the clock starts when this drain's first ack moves it.
async fn drain_rate(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    floor: u64,
    total: u64,
    pids: &[u32],
) -> Drain {
    let stream = js.get_stream(stream).await.unwrap();
    type Start = (Instant, u64, Vec<f64>, Vec<f64>);
    let mut first: Option<Start> = None;
    let started = Instant::now();
    let mut moved = (started, floor);
    let mut longest_stall = (Duration::ZERO, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = stream.consumer_info(consumer).await.unwrap();
        let acked = info.ack_floor.consumer_sequence;
        let now = Instant::now();
        if acked != moved.1 {
            if first.is_some() {
                longest_stall = longest_stall.max((now.duration_since(moved.0), moved.1 - floor));
            }
            moved = (now, acked);
        }
        if first.is_none() && acked > floor {
            first = Some((
                now,
                acked,
                pids.iter().map(|p| cpu_micros(*p)).collect(),
                pids.iter().map(|p| context_switches(*p)).collect(),
            ));
        }
        if info.num_pending == 0 && info.num_ack_pending == 0 && acked >= total {
            let zeros = vec![0.0; pids.len()];
            let (t0, a0, cpu0, switches0) = first.unwrap_or((now, floor, zeros.clone(), zeros));
            let secs = now.duration_since(t0).as_secs_f64().max(1e-6);
            let events = (total - a0).max(1) as f64;
            let cpu_per_event = pids
                .iter()
                .zip(cpu0)
                .map(|(p, c0)| (cpu_micros(*p) - c0) / events)
                .collect();
            let switches_per_event = pids
                .iter()
                .zip(switches0)
                .map(|(p, s0)| (context_switches(*p) - s0) / events)
                .collect();
            return Drain {
                rate: (total - a0) as f64 / secs,
                cpu_per_event,
                switches_per_event,
                first_ack: t0.duration_since(started),
                longest_stall: longest_stall.max((now.duration_since(moved.0), moved.1 - floor)),
            };
        }
        assert!(now < deadline, "the consumer did not drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pull_config(name: &str, filter: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: IN_FLIGHT,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    }
}

/// The native baseline: a durable pull consumer, batches of 128, ack each message; with
/// `echo`, publish the event id on `echo.<type>` before the ack.
async fn native_consume(
    js: jetstream::Context,
    name: String,
    echo: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    let stream = js.get_stream("SANDBUS_EVENTS").await.unwrap();
    let consumer: consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT as usize)
        .messages()
        .await
        .unwrap();
    let client = js.client();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(Ok(message)) = next else { break };
        if echo {
            let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            let ty = event["type"].as_str().unwrap().to_owned();
            client
                .publish(format!("echo.{ty}"), id.into())
                .await
                .unwrap();
        }
        message.ack().await.unwrap();
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon; `$SANDBUS_BENCH_WRAP` (e.g. `perf record -g -o daemon.perf --`)
    /// is put in front of the command, to profile it. `$SANDBUS_BENCH_DAEMON` runs another
    /// build of the daemon (an A/B comparison against a copy of an earlier build);
    /// `$SANDBUS_BENCH_LOG` sets its log filter (default `warn`).
    fn start(url: &str, data: &Path) -> Self {
        let wrap = std::env::var("SANDBUS_BENCH_WRAP").unwrap_or_default();
        let mut words: Vec<String> = wrap.split_whitespace().map(str::to_owned).collect();
        words.push(
            std::env::var("SANDBUS_BENCH_DAEMON")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sandbus").to_owned()),
        );
        let log = std::env::var("SANDBUS_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned());
        let child = Command::new(&words[0])
            .args(&words[1..])
            .args(["daemon", "--nats", url, "--host-id", "bench", "--data-dir"])
            .arg(data)
            .env("SANDBUS_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// With `$SANDBUS_BENCH_PROFILE=FILE`, records a `perf` profile of the daemon process
/// `pid` into FILE (the last round's wins) while it drains.
fn profile(pid: u32) -> Option<Child> {
    let file = std::env::var("SANDBUS_BENCH_PROFILE").ok()?;
    Command::new("perf")
        .args([
            "record",
            "--call-graph",
            "dwarf,32768",
            "-F",
            "999",
            "-o",
            &file,
        ])
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Publishes `LATENCY_EVENTS` at `LATENCY_RATE`/s and measures publish → echo, in µs.
async fn latency(client: async_nats::Client, ty: &str) -> (f64, f64) {
    let js = jetstream::new(client.clone());
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut echoes = client.subscribe(format!("echo.{ty}")).await.unwrap();
    client.flush().await.unwrap();
    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(LATENCY_EVENTS);
            while latencies.len() < LATENCY_EVENTS {
                let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_secs(60), echoes.next()).await
                else {
                    break;
                };
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                if let Some(at) = sent.lock().await.remove(&id) {
                    latencies.push(at.elapsed().as_micros() as f64);
                }
            }
            latencies
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE));
    for i in 0..LATENCY_EVENTS {
        tick.tick().await;
        let (subject, id, body) = event(i, ty);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        sent.lock().await.insert(id, Instant::now());
        js.publish_with_headers(subject, headers, body.into())
            .await
            .unwrap();
    }
    let mut latencies = collector.await.unwrap();
    assert_eq!(latencies.len(), LATENCY_EVENTS, "every event echoed");
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that isn't ours skips the run.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "daemon".contains(a.as_str())) {
        return;
    }
    let guests = repo().join("target/guests");
    for g in ["noop-listener", "echo-listener"] {
        assert!(
            guests.join(format!("{g}.wasm")).exists(),
            "build the guests first: scripts/build-guests.sh"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    let server = Server::start();
    let url = server.url.clone();
    let data = tempfile::tempdir().unwrap();

    // The daemon sets up the streams; then the listeners are uploaded and subscribed.
    let daemon = Daemon::start(&url, data.path());
    wait_for_host(&url);
    let noop = guests.join("noop-listener.wasm");
    let echo = guests.join("echo-listener.wasm");
    // `SANDBUS_BENCH_LIMITS="instances=4"` adds limits to the noop listener (to study how
    // concurrency inside the daemon affects it).
    let mut upload = vec![
        "upload".to_owned(),
        noop.to_str().unwrap().to_owned(),
        "--name".into(),
        "noop".into(),
    ];
    for limit in std::env::var("SANDBUS_BENCH_LIMITS")
        .unwrap_or_default()
        .split_whitespace()
    {
        upload.push("--limit".into());
        upload.push(limit.to_owned());
    }
    cli(&url, &upload.iter().map(String::as_str).collect::<Vec<_>>());
    cli(
        &url,
        &[
            "upload",
            echo.to_str().unwrap(),
            "--name",
            "echo",
            "--grant",
            "publish=echo.>",
            "--limit",
            "publish-rate=100000",
        ],
    );
    cli(
        &url,
        &[
            "subscribe",
            "noop",
            "--events",
            "tput.daemon",
            "--max-in-flight",
            &IN_FLIGHT.to_string(),
        ],
    );
    cli(
        &url,
        &[
            "subscribe",
            "echo",
            "--events",
            "lat.daemon",
            "--max-in-flight",
            &IN_FLIGHT.to_string(),
        ],
    );
    daemon.stop();

    let client = rt.block_on(async_nats::connect(&url)).unwrap();
    let js = jetstream::new(client.clone());
    rt.block_on(async {
        let stream = js.get_stream("SANDBUS_EVENTS").await.unwrap();
        stream
            .create_consumer(pull_config("native-tput", "events.tput.native"))
            .await
            .unwrap();
        stream
            .create_consumer(pull_config("native-lat", "events.lat.native"))
            .await
            .unwrap();
    });

    let mut native_rates = Vec::new();
    let mut daemon_rates = Vec::new();
    let mut total = 0u64;
    for round in 0..rounds() {
        total += EVENTS as u64;
        // Native.
        rt.block_on(publish_all(
            &js,
            (0..EVENTS).map(|i| event(i, "tput.native")).collect(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = rt.spawn(native_consume(
            js.clone(),
            "native-tput".into(),
            false,
            stop.clone(),
        ));
        let native = rt.block_on(drain_rate(
            &js,
            "SANDBUS_EVENTS",
            "native-tput",
            total - EVENTS as u64,
            total,
            &[server.child.id(), std::process::id()],
        ));
        stop.cancel();
        rt.block_on(task).unwrap();
        // Daemon.
        rt.block_on(publish_all(
            &js,
            (0..EVENTS).map(|i| event(i, "tput.daemon")).collect(),
        ));
        let daemon = Daemon::start(&url, data.path());
        let profile = profile(daemon.child.id());
        let rate = rt.block_on(drain_rate(
            &js,
            "SANDBUS_EVENTS",
            "sandbus-listener-noop",
            total - EVENTS as u64,
            total,
            &[server.child.id(), daemon.child.id()],
        ));
        if let Some(mut perf) = profile {
            let _ = Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        daemon.stop();
        eprintln!(
            "round {round}: native {:.0}/s (cpu µs/event: server {:.1}, consumer {:.1}; \
             switches/event {:.2}, {:.2}), daemon {:.0}/s (server {:.1}, daemon {:.1}; {:.2}, {:.2}); \
             daemon start to first ack {} ms, longest ack-floor stall {} ms after {} acks \
             (native {} ms)",
            native.rate,
            native.cpu_per_event[0],
            native.cpu_per_event[1],
            native.switches_per_event[0],
            native.switches_per_event[1],
            rate.rate,
            rate.cpu_per_event[0],
            rate.cpu_per_event[1],
            rate.switches_per_event[0],
            rate.switches_per_event[1],
            rate.first_ack.as_millis(),
            rate.longest_stall.0.as_millis(),
            rate.longest_stall.1,
            native.longest_stall.0.as_millis(),
        );
        native_rates.push(native);
        daemon_rates.push(rate);
    }

    // Latency, native then daemon, each alone on the server.
    let stop = tokio_util::sync::CancellationToken::new();
    let task = rt.spawn(native_consume(
        js.clone(),
        "native-lat".into(),
        true,
        stop.clone(),
    ));
    let (native_p50, native_p99) = rt.block_on(latency(client.clone(), "lat.native"));
    stop.cancel();
    rt.block_on(task).unwrap();
    let daemon = Daemon::start(&url, data.path());
    wait_for_host(&url);
    let (daemon_p50, daemon_p99) = rt.block_on(latency(client.clone(), "lat.daemon"));
    daemon.stop();

    // The median round by rate, with that round's CPU figures.
    let median = |v: &mut Vec<Drain>| {
        v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        v.swap_remove(v.len() / 2)
    };
    let native = median(&mut native_rates);
    let daemon = median(&mut daemon_rates);
    println!();
    println!(
        "end to end through nats-server, {EVENTS} events x {} rounds (median), in flight {IN_FLIGHT}",
        rounds()
    );
    println!(
        "{:<34} {:>10} {:>8} {:>8} {:>6} {:>12} {:>12}",
        "consumer", "events/s", "p50 µs", "p99 µs", "ratio", "server cpu", "consumer cpu"
    );
    println!(
        "{:<34} {:>10.0} {:>8.0} {:>8.0} {:>6} {:>9.1} µs {:>9.1} µs",
        "native async-nats pull + ack",
        native.rate,
        native_p50,
        native_p99,
        "1.00",
        native.cpu_per_event[0],
        native.cpu_per_event[1]
    );
    println!(
        "{:<34} {:>10.0} {:>8.0} {:>8.0} {:>6.2} {:>9.1} µs {:>9.1} µs",
        "sandbus daemon (noop/echo guest)",
        daemon.rate,
        daemon_p50,
        daemon_p99,
        daemon.rate / native.rate,
        daemon.cpu_per_event[0],
        daemon.cpu_per_event[1]
    );
    println!("(cpu: per event, user + system, over the throughput drain)");
    println!(
        "(latency: {LATENCY_EVENTS} events at {LATENCY_RATE}/s, publish -> echo received; ratio is throughput)"
    );
    bulk_publish::rows(&rt, &js, &url, rounds());

    if std::env::var("SANDBUS_BENCH_UPLOAD").as_deref() != Ok("0") {
        upload_vs_compile(&url);
    }
}

/// A listener of about 20 MB: a 16 MiB passive data segment and 1,300 functions of 1,000
/// straight-line adds each (about 4 MB of code, which Cranelift compiles in seconds).
fn large_listener() -> Vec<u8> {
    let mut items = String::from(
        r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32) (call $ok))"#,
    );
    for f in 0..1_300 {
        items.push_str(&format!(
            "(func (export \"f{f}\") (param i32) (result i32) (local.get 0)"
        ));
        for _ in 0..1_000 {
            items.push_str(" (local.get 0) i32.add");
        }
        items.push(')');
    }
    items.push_str(&format!("(data \"{}\")", "\\2a".repeat(16 << 20)));
    support::wat_listener(&items)
}

/// Uploads [`large_listener`] to a fresh daemon, then waits for it to be ready; prints the
/// upload's time against the time until ready.
fn upload_vs_compile(url: &str) {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("large.wasm");
    let bytes = large_listener();
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap();
    let daemon = Daemon::start(url, &data.path().join("daemon"));
    wait_for_host(url);
    let started = Instant::now();
    cli(url, &["upload", file, "--name", "large"]);
    let upload = started.elapsed();
    cli(url, &["upload", file, "--name", "large", "--wait"]);
    let ready = started.elapsed();
    daemon.stop();
    println!();
    println!(
        "upload of a {:.1} MB listener to a daemon with no compile cache",
        bytes.len() as f64 / 1e6
    );
    println!("{:<34} {:>10} {:>6}", "step", "seconds", "ratio");
    println!(
        "{:<34} {:>10.2} {:>6}",
        "upload --wait (until ready)",
        ready.as_secs_f64(),
        "1.00"
    );
    println!(
        "{:<34} {:>10.2} {:>6.2}",
        "upload (recorded, compiling)",
        upload.as_secs_f64(),
        upload.as_secs_f64() / ready.as_secs_f64()
    );
}
