//! How many listeners one daemon holds, subscribed and idle: its RSS, its idle CPU and the
//! server's, and how long a restart takes until every listener pulls again.
//!
//! Not a criterion benchmark and not a CI test: it sets up N listeners on a private
//! `nats-server` and a real `sandbus daemon`, and prints one row per N. The listeners are
//! the `noop-listener` under N names, each subscribed to its own event type; manifests and
//! subscriptions are written through the library (as `upload` and `subscribe` would), so
//! setting up 1,000 takes seconds rather than 2,000 CLI runs.
//!
//! - **pulling**: a listener pulls when its consumer has a waiting pull request; the
//!   `consumers` listing of the events stream is read until every one has.
//! - **idle CPU**: `/proc/<pid>/stat` of the daemon and of nats-server over 10 s, with every
//!   listener pulling and no event published.
//! - **restart**: SIGTERM, wait until no consumer has a waiting pull, start the daemon again;
//!   the time from the start until every listener pulls.
//! - **baseline**: the same N consumers pulled by one native async-nats client (one pull
//!   stream each, the daemon's batch, expiry and heartbeat), in the same run: its RSS, its
//!   idle CPU and the server's. The ratios say what the daemon adds over the bare pulls.
//!
//! `SANDBUS_BENCH_LISTENERS=100,1000` sets the counts (default 100 and 1,000). Run it with
//! `cargo bench --bench listeners` (a release build); with `nats-server` on PATH (or
//! `$SANDBUS_NATS_SERVER`) and the guests built.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use sandbus::bus::{
    ComponentStore, EventStream, ManifestDraft, Subscription, SubscriptionStore, ack_wait_for,
    names,
};
use sandbus::sandbox::{Limits, World};

#[path = "support/mod.rs"]
mod support;

use support::{Daemon, Server, cpu_micros};

/// How long idle CPU is measured.
const IDLE: Duration = Duration::from_secs(10);
/// How long a setup or a restart may take before the run gives up.
const PATIENCE: Duration = Duration::from_secs(600);

fn counts() -> Vec<usize> {
    std::env::var("SANDBUS_BENCH_LISTENERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000])
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

/// The native baseline: one client pulling every listener's consumer the way a dispatcher
/// does. Its RSS (the bench process's own growth) and idle CPU, and the server's.
async fn native(js: &jetstream::Context, n: usize, server: u32) -> (f64, f64, f64) {
    let me = std::process::id();
    let rss_before = rss_mb(me);
    let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    let mut pulls = Vec::with_capacity(n);
    for i in 0..n {
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_consumer(&names::listener_consumer(&format!("bench-{i}")))
            .await
            .unwrap();
        let messages = consumer
            .stream()
            .max_messages_per_batch(128)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .unwrap();
        pulls.push(tokio::spawn(async move {
            let mut messages = messages;
            while let Some(Ok(message)) = messages.next().await {
                let _ = message.ack().await;
            }
        }));
    }
    wait_pulling(js, |all, waiting| all == n && waiting == n).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = idle_cpu(&[me, server]).await;
    let rss = rss_mb(me) - rss_before;
    for pull in pulls {
        pull.abort();
    }
    (rss, cpu[0], cpu[1])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| listeners | setup s | daemon RSS MB | daemon idle CPU % | server idle CPU % | \
         restart → all pulling s | native RSS MB | native idle CPU % | server idle CPU % (native) | \
         server CPU daemon/native |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in counts() {
        let server = Server::start();
        let server_pid = server.child.id();
        let data = tempfile::tempdir().unwrap();
        // The events stream's default consumer limit (20,000) covers every count run here.
        let daemon = Daemon::start(&server.url, data.path());
        support::wait_for_host(&server.url);
        let js =
            rt.block_on(async { jetstream::new(async_nats::connect(&server.url).await.unwrap()) });
        let started = Instant::now();
        rt.block_on(set_up(&js, n));
        rt.block_on(wait_pulling(&js, |all, waiting| all == n && waiting == n));
        let setup = started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_mb(daemon.child.id());
        let cpu = rt.block_on(idle_cpu(&[daemon.child.id(), server_pid]));
        daemon.stop();
        rt.block_on(wait_pulling(&js, |_, waiting| waiting == 0));
        let restarted = Daemon::start(&server.url, data.path());
        let restart = rt.block_on(wait_pulling(&js, |all, waiting| all == n && waiting == n));
        restarted.stop();
        rt.block_on(wait_pulling(&js, |_, waiting| waiting == 0));
        let (native_rss, native_cpu, native_server_cpu) = rt.block_on(native(&js, n, server_pid));
        println!(
            "| {n} | {:.1} | {rss:.0} | {:.2} | {:.2} | {:.2} | {native_rss:.0} | {native_cpu:.2} | \
             {native_server_cpu:.2} | {:.2}x |",
            setup.as_secs_f64(),
            cpu[0],
            cpu[1],
            restart.as_secs_f64(),
            cpu[1] / native_server_cpu.max(1e-3),
        );
    }
}
