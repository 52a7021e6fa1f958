//! How many listeners one daemon holds, subscribed and idle: its RSS, its idle CPU and the
//! server's, how long a restart takes until the listeners are served again, and how long an
//! idle listener takes to wake.
//!
//! Not a criterion benchmark and not a CI test: it sets up N listeners on a private
//! `nats-server` and a real `sandbus daemon`, and prints one row per N and mode. The
//! listeners are the `noop-listener` under N names, each subscribed to its own event type;
//! manifests and subscriptions are written through the library (as `upload` and `subscribe`
//! would), so setting up 10,000 takes seconds rather than 20,000 CLI runs.
//!
//! Two modes, in the same run:
//! - **idle** (`--idle-after 2s`): listeners with nothing to do lose their consumers; the
//!   row is taken once no listener has a consumer left.
//! - **never** (`--idle-after 0s`, the baseline: one consumer and one open pull per
//!   listener, as before idling existed); the row is taken once every consumer has a waiting
//!   pull. Only run up to 1,000 listeners (`SANDBUS_BENCH_NEVER_UP_TO`): past that it takes
//!   minutes.
//!
//! Columns:
//! - **settled**: from the first record written until the mode's state above.
//! - **idle CPU**: `/proc/<pid>/stat` of the daemon and of nats-server over 10 s, nothing
//!   published, 15 s after settling.
//! - **restart → served**: SIGTERM, start again, publish one event to each of 20 listeners
//!   spread over the N, and time until every one of them is acknowledged (its consumer's ack
//!   floor passed it).
//! - **wake**: with the daemon up and the listeners idle again, one event to one idle
//!   listener, until it is acknowledged.
//!
//! Each count runs on 1 daemon and on 3 sharing the listeners (`SANDBUS_BENCH_DAEMONS=1,3`;
//! the baseline only on one); the RSS is the largest daemon's, the idle CPU all of theirs.
//!
//! `SANDBUS_BENCH_LISTENERS=100,1000,10000` sets the counts (default 1,000 and 10,000). Run
//! it with `cargo bench --bench listeners` (a release build); with `nats-server` on PATH (or
//! `$SANDBUS_NATS_SERVER`) and the guests built.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use sandbus::bus::{
    ComponentStore, EventStream, ManifestDraft, Subscription, SubscriptionStore, ack_wait_for,
    names,
};
use sandbus::sandbox::{Limits, World};

#[path = "support/mod.rs"]
mod support;

use support::{Daemon, Server, cpu_micros};

/// How long the daemons are left alone after settling, before idle CPU is measured.
const SETTLE: Duration = Duration::from_secs(15);
/// How long idle CPU is measured.
const IDLE: Duration = Duration::from_secs(10);
/// How long a setup or a restart may take before the run gives up.
const PATIENCE: Duration = Duration::from_secs(600);

fn counts() -> Vec<usize> {
    std::env::var("SANDBUS_BENCH_LISTENERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000])
}

/// Resident memory of `pid`, in MB, from `/proc/<pid>/status`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The CPU each of `pids` used over [`IDLE`], in percent of one core.
async fn idle_cpu(pids: &[u32]) -> Vec<f64> {
    let before: Vec<f64> = pids.iter().map(|p| cpu_micros(*p)).collect();
    tokio::time::sleep(IDLE).await;
    pids.iter()
        .zip(before)
        .map(|(p, b)| (cpu_micros(*p) - b) / IDLE.as_micros() as f64 * 100.0)
        .collect()
}

/// How many consumers of the events stream have at least one waiting pull request.
async fn pulling(js: &jetstream::Context) -> (usize, usize) {
    let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    let mut consumers = stream.consumers();
    let (mut all, mut waiting) = (0, 0);
    while let Some(info) = consumers.next().await {
        let info = info.unwrap();
        if info.name.starts_with("sandbus-listener-") {
            all += 1;
            waiting += usize::from(info.num_waiting > 0);
        }
    }
    (all, waiting)
}

/// Waits until `done(all, waiting)` holds; how long it took.
async fn wait_pulling(js: &jetstream::Context, done: impl Fn(usize, usize) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let (all, waiting) = pulling(js).await;
        if done(all, waiting) {
            return start.elapsed();
        }
        assert!(start.elapsed() < PATIENCE, "{waiting} of {all} pulling");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records `n` listeners (the noop-listener's bytes under `bench-<i>`), each subscribed to
/// `bench.<i>`.
async fn set_up(js: &jetstream::Context, n: usize) {
    let bytes = std::fs::read(support::guest("noop-listener")).unwrap();
    let components = ComponentStore::open(js).await.unwrap();
    let (digest, _) = components.put_bytes(&bytes).await.unwrap();
    let events = EventStream::open(js.clone(), names::EVENTS_STREAM)
        .await
        .unwrap();
    let subscriptions = SubscriptionStore::ensure(js, events, 1).await.unwrap();
    let ack_wait = ack_wait_for(Limits::for_world(World::Listener).timeout);
    for i in 0..n {
        let name = format!("bench-{i}");
        components
            .record(ManifestDraft {
                name: name.clone(),
                digest: digest.clone(),
                size: bytes.len() as u64,
                world: World::Listener,
                grants: Vec::new(),
                kv_read: Vec::new(),
                limits: Vec::new(),
                config: Default::default(),
            })
            .await
            .unwrap();
        subscriptions
            .put(
                &Subscription::new(&name, vec![format!("bench.{i}")]),
                ack_wait,
            )
            .await
            .unwrap();
    }
}

/// How many of the listeners' consumers exist, and how many of them have a waiting pull.
async fn consumers(js: &jetstream::Context) -> (usize, usize) {
    pulling(js).await
}

/// A canonical event of type `bench.<i>`.
fn event_for(i: usize, tag: &str) -> (String, String, Vec<u8>) {
    let id = format!("{tag}-{i}");
    let body = serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/bench", "type": format!("bench.{i}"),
        "data": {}
    });
    (
        format!("events.bench.{i}"),
        sandbus::event::dedup_key("/bench", &id),
        body.to_string().into_bytes(),
    )
}

/// Publishes one event to each listener of `which` and waits until every one is
/// acknowledged: its consumer exists, and its ack floor reached the event. How long it took.
async fn serve(js: &jetstream::Context, which: &[usize], tag: &str) -> Duration {
    let started = Instant::now();
    let mut sequences = Vec::new();
    for &i in which {
        let (subject, id, body) = event_for(i, tag);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = js
            .publish_with_headers(subject, headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        sequences.push((i, ack.sequence));
    }
    let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    for (i, sequence) in sequences {
        let name = names::listener_consumer(&format!("bench-{i}"));
        loop {
            let served = stream
                .consumer_info(&name)
                .await
                .is_ok_and(|info| info.ack_floor.stream_sequence >= sequence);
            if served {
                break;
            }
            assert!(started.elapsed() < PATIENCE, "bench-{i} never served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

/// Waits until `sandbus hosts` lists `count` hosts.
fn wait_for_hosts(url: &str, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = std::process::Command::new(support::sandbus_binary())
            .args(["hosts", "--json", "--nats", url])
            .output()
            .unwrap();
        let listed = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|hosts| hosts.as_array().map(Vec::len));
        if listed == Some(count) {
            return;
        }
        assert!(Instant::now() < deadline, "the daemons did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `count` daemons on `url`, with data directories under `data`.
fn start_daemons(url: &str, data: &std::path::Path, count: usize, flags: &[&str]) -> Vec<Daemon> {
    (0..count)
        .map(|k| {
            let host = format!("bench-{k}");
            Daemon::start_as(url, &data.join(&host), &host, flags)
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let never_up_to: usize = std::env::var("SANDBUS_BENCH_NEVER_UP_TO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let daemon_counts: Vec<usize> = std::env::var("SANDBUS_BENCH_DAEMONS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3]);
    println!(
        "| listeners | daemons | mode | settled s | daemon RSS MB (largest) | daemons' idle CPU % | \
         server idle CPU % | consumers | restart → 20 served s | wake one s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in counts() {
        for daemons in &daemon_counts {
            let daemons = *daemons;
            for (mode, idle_after) in [("idle", "2s"), ("never", "0s")] {
                if mode == "never" && (n > never_up_to || daemons > 1) {
                    continue;
                }
                let flags = ["--idle-after", idle_after];
                let server = Server::start();
                let server_pid = server.child.id();
                let data = tempfile::tempdir().unwrap();
                // The events stream's default consumer limit (20,000) covers every count run
                // here.
                let running = start_daemons(&server.url, data.path(), daemons, &flags);
                wait_for_hosts(&server.url, daemons);
                let js = rt.block_on(async {
                    jetstream::new(async_nats::connect(&server.url).await.unwrap())
                });
                let settled_when = |all: usize, waiting: usize| match mode {
                    "idle" => all == 0,
                    _ => all == n && waiting == n,
                };
                let started = Instant::now();
                rt.block_on(set_up(&js, n));
                rt.block_on(wait_pulling(&js, settled_when));
                let settled = started.elapsed();
                // The last rests' after-effects (each host checks each listener that went
                // idle once) pass before the idle CPU is measured.
                std::thread::sleep(SETTLE);
                let rss = running
                    .iter()
                    .map(|d| rss_mb(d.child.id()))
                    .fold(0.0, f64::max);
                let mut pids: Vec<u32> = running.iter().map(|d| d.child.id()).collect();
                pids.push(server_pid);
                let cpu = rt.block_on(idle_cpu(&pids));
                let daemons_cpu: f64 = cpu[..daemons].iter().sum();
                let (held, _) = rt.block_on(consumers(&js));
                for daemon in running {
                    daemon.stop();
                }
                let sample: Vec<usize> = (0..20).map(|k| k * n / 20).collect();
                let restarted = start_daemons(&server.url, data.path(), daemons, &flags);
                let restart = rt.block_on(serve(&js, &sample, "restart"));
                rt.block_on(wait_pulling(&js, settled_when));
                let wake = rt.block_on(serve(&js, &[n / 2 + 1], "wake"));
                for daemon in restarted {
                    daemon.stop();
                }
                println!(
                    "| {n} | {daemons} | {mode} | {:.1} | {rss:.0} | {daemons_cpu:.2} | {:.2} | {held} | \
                     {:.2} | {:.3} |",
                    settled.as_secs_f64(),
                    cpu[daemons],
                    restart.as_secs_f64(),
                    wake.as_secs_f64(),
                );
            }
        }
    }
}
