//! The soak: the billing listener through 3 daemons on a 3-node NATS cluster (every stream
//! and bucket on 3 replicas), over a million events by default, while one daemon is
//! SIGKILLed and restarted (at 30 % of the events) and one nats-server node is restarted (at
//! 60 %: the one leading the events stream, SIGTERM then started again on the same store).
//! At the end every tenant's total must be exact and nothing dead-lettered; it prints the
//! events/s overall and per phase, the redeliveries, and the CPU each process used.
//!
//! Not part of `cargo bench` (`bench = false`) nor of CI: a full run takes most of an hour
//! on a two-core machine. Run it with `scripts/soak.sh [--events N] [--tenants N] [--keep]`
//! (or `cargo bench -p sandbus --bench soak -- ...`). `$SANDBUS_BINARY` runs another
//! `sandbus` binary than the one cargo builds; `$SANDBUS_NATS_SERVER` another nats-server.
//! The events are published with `sandbus publish --file`, a chunk at a time, while the
//! daemons drain them. Ctrl-C stops every process and removes every file (`--keep` keeps
//! the daemons' logs and data; the nodes' stores go with them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

mod support;

#[path = "../../tests/support/nats.rs"]
#[expect(
    dead_code,
    reason = "the soak uses the cluster, not every server control"
)]
mod nats;

#[path = "soak/fleet.rs"]
mod fleet;
#[path = "soak/progress.rs"]
mod progress;
#[path = "soak/publisher.rs"]
mod publisher;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet::{Fleet, INTERRUPTED, check_interrupted};
use progress::{Phase, Progress, Reading};
use publisher::Publisher;
use support::{billing::bus_totals, guest};

/// NATS nodes, and replicas of every stream and bucket.
const NODES: usize = 3;
/// Daemons.
const DAEMONS: usize = 3;
/// The daemon SIGKILLed (from 0): `h2`.
const KILLED: usize = 1;
/// The share of the events handled when the daemon is killed.
const KILL_AT: f64 = 0.30;
/// How long the killed daemon stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The share of the events handled when a node is restarted.
const NODE_RESTART_AT: f64 = 0.60;
/// The listener's name.
const LISTENER: &str = "billing";
/// How often the consumer is read.
const POLL: Duration = Duration::from_secs(1);
/// How often progress is printed.
const REPORT_EVERY: Duration = Duration::from_secs(15);
/// How long no event may be handled before the run fails. Covers the ack wait after the
/// kill (the killed daemon's events come back after the listener's timeout + 30 s) and a
/// node restart's elections.
const STALL: Duration = Duration::from_secs(300);
/// The slowest the run may be on average, events/s, before it fails as too slow.
const SLOWEST: u64 = 50;

/// What the command line asks for.
struct Options {
    /// Events to publish (two per billed instance).
    events: u64,
    /// Tenants the instances are spread over.
    tenants: u64,
    /// Keep the work directory (logs, data) after the run.
    keep: bool,
}

impl Options {
    /// `--events N` (default 1,000,000), `--tenants N` (default 1,000), `--keep`; cargo's
    /// `--bench` is ignored.
    fn parse() -> Self {
        let mut options = Self {
            events: 1_000_000,
            tenants: 1_000,
            keep: false,
        };
        let usage = "usage: soak [--events N] [--tenants N] [--keep]";
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> u64 {
                args.next()
                    .and_then(|n| n.replace('_', "").parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("{name} needs a positive number; {usage}"))
            };
            match arg.as_str() {
                "--events" => options.events = number("--events"),
                "--tenants" => options.tenants = number("--tenants"),
                "--keep" => options.keep = true,
                "--bench" => {}
                other => panic!("unknown argument `{other}`; {usage}"),
            }
        }
        assert!(
            options.events >= 2,
            "--events must be at least 2 (a start and a stop)"
        );
        options
    }
}

/// Where the run is.
enum Stage {
    /// Everything up, until [`KILL_AT`].
    AllUp,
    /// The daemon was killed; it comes back after [`DOWN_FOR`].
    DaemonDown(Instant),
    /// The daemon is back, until [`NODE_RESTART_AT`].
    DaemonBack,
    /// A node was restarted; until every event is handled.
    NodeRestarted,
}

fn main() {
    let options = Options::parse();
    let instances = options.events / 2;
    let events = instances * 2;
    let tenants = options.tenants;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    rt.spawn(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("soak: interrupted; stopping every process");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    let dir = tempfile::Builder::new()
        .prefix("sandbus-soak-")
        .tempdir()
        .unwrap();
    // Removed at the end (or on a failure) unless kept.
    let (work, _removed_on_drop) = if options.keep {
        let kept = dir.keep();
        eprintln!("soak: daemon logs and data in {} (kept)", kept.display());
        (kept, None)
    } else {
        (dir.path().to_owned(), Some(dir))
    };
    let billing = guest("billing-listener");
    eprintln!(
        "soak: {events} events ({instances} instances, {tenants} tenants), {DAEMONS} daemons \
         ({}), {NODES}-node NATS cluster",
        support::sandbus_binary().display()
    );
    let mut fleet = Fleet::start(&work, NODES, DAEMONS);
    // Four keys and about 140 bytes an instance, 18 keys a tenant: the defaults (100,000
    // keys, 64 MiB) hold 25,000 instances.
    let kv_keys = format!("kv-keys={}", instances * 4 + tenants * 18 + 1_024);
    let kv_bytes = format!("kv-bytes={}", (instances * 256).max(64 << 20));
    fleet.cli_ok(&[
        "upload",
        billing.to_str().unwrap(),
        "--name",
        LISTENER,
        "--grant",
        "publish=events.billing.>",
        "--limit",
        &kv_keys,
        "--limit",
        &kv_bytes,
        "--wait",
    ]);
    fleet.cli_ok(&["subscribe", LISTENER, "--events", "vm.*"]);

    let urls = fleet.urls();
    let client = rt
        .block_on(async_nats::ConnectOptions::new().connect(fleet.nats.urls().as_slice()))
        .unwrap_or_else(|e| fleet.fail(&format!("cannot connect to {urls}: {e}")));
    let js = async_nats::jetstream::new(client);
    let progress = Progress::new(js.clone(), LISTENER);

    let cpu_before = fleet.cpu();
    let started = Instant::now();
    let publisher = Publisher::start(urls, work.clone(), instances, tenants);
    let state = publisher.state.clone();
    let mut stage = Stage::AllUp;
    let mut marks: Vec<(String, Reading)> = Vec::new();
    let first = rt
        .block_on(progress.read(0))
        .unwrap_or_else(|e| fleet.fail(&format!("cannot read the listener's consumer: {e}")));
    marks.push(("0–30 %: 3 daemons, 3 nodes".into(), first));
    let mut last = first;
    let mut last_growth = Instant::now();
    let mut last_report = Instant::now();
    let mut node_restart_took = Duration::ZERO;
    let deadline = started + Duration::from_secs(events / SLOWEST + 600);
    let end = loop {
        check_interrupted();
        std::thread::sleep(POLL);
        let outcome = state.outcome();
        if let Some(Err(e)) = &outcome {
            fleet.fail(&format!("publishing failed: {e}"));
        }
        let published = state.published.load(Ordering::Relaxed);
        let reading = match rt.block_on(progress.read(published)) {
            Ok(reading) => reading,
            Err(e) => {
                eprintln!("soak: cannot read the listener's consumer right now: {e}");
                last
            }
        };
        if reading.handled > last.handled {
            last_growth = Instant::now();
        }
        last = reading;
        if outcome.is_some() && reading.pending == 0 && reading.in_flight == 0 {
            break reading;
        }
        if last_growth.elapsed() > STALL {
            fleet.fail(&format!(
                "no event handled for {} s ({reading:?})",
                STALL.as_secs()
            ));
        }
        if Instant::now() > deadline {
            fleet.fail(&format!(
                "the run is slower than {SLOWEST} events/s on average ({reading:?})"
            ));
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            eprintln!(
                "soak: {:>5} s: {}/{events} handled, {} published, {} pending, {} in flight",
                started.elapsed().as_secs(),
                reading.handled,
                published,
                reading.pending,
                reading.in_flight
            );
        }
        let share = reading.handled as f64 / events as f64;
        match stage {
            Stage::AllUp if share >= KILL_AT => {
                fleet.kill_daemon(KILLED);
                let id = fleet.daemon_id(KILLED).to_owned();
                eprintln!(
                    "soak: {} s: {id} SIGKILLed ({reading:?})",
                    started.elapsed().as_secs()
                );
                marks.push((
                    format!(
                        "30–60 %: {id} SIGKILLed, back after {} s",
                        DOWN_FOR.as_secs()
                    ),
                    reading,
                ));
                stage = Stage::DaemonDown(Instant::now());
            }
            Stage::DaemonDown(since) if since.elapsed() >= DOWN_FOR => {
                fleet.spawn_daemon(KILLED);
                eprintln!(
                    "soak: {} s: {} started again",
                    started.elapsed().as_secs(),
                    fleet.daemon_id(KILLED)
                );
                stage = Stage::DaemonBack;
            }
            Stage::DaemonBack if share >= NODE_RESTART_AT => {
                let leader = rt.block_on(progress.stream_leader());
                let node = leader
                    .as_deref()
                    .and_then(|name| name.strip_prefix('n'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=NODES).contains(n))
                    .map_or(0, |n| n - 1);
                let what = if leader.is_some() {
                    "the events stream's leader"
                } else {
                    "leader unknown"
                };
                marks.push((
                    format!("60–100 %: n{} ({what}) restarted", node + 1),
                    reading,
                ));
                let restart = Instant::now();
                fleet.restart_node(node);
                node_restart_took = restart.elapsed();
                eprintln!(
                    "soak: {} s: n{} restarted in {:.1} s ({reading:?})",
                    started.elapsed().as_secs(),
                    node + 1,
                    node_restart_took.as_secs_f64()
                );
                stage = Stage::NodeRestarted;
            }
            _ => {}
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = fleet.cpu();
    if !matches!(stage, Stage::NodeRestarted) {
        fleet.fail("every event was handled before the daemon kill and the node restart were done");
    }
    // The killed daemon must be back and listed.
    fleet.wait_for_host(KILLED);

    let phases: Vec<Phase> = marks
        .iter()
        .enumerate()
        .map(|(i, (name, from))| Phase {
            name: name.clone(),
            from: *from,
            to: marks.get(i + 1).map_or(end, |(_, next)| *next),
        })
        .collect();
    let publish_took = state
        .outcome()
        .and_then(Result::ok)
        .unwrap_or_default()
        .as_secs_f64();
    let duplicates = state.duplicates.load(Ordering::Relaxed);
    let retries = state.retries.load(Ordering::Relaxed);
    let redeliveries = end.redeliveries();
    let expected = publisher.expected_totals();
    let totals = rt.block_on(bus_totals(&js, LISTENER, tenants));
    let status: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["status", LISTENER, "--json"]))
            .unwrap_or_else(|e| fleet.fail(&format!("`sandbus status` is not JSON: {e}")));
    let dead_lettered = status["dead_lettered"].as_u64();

    println!(
        "\nsoak: {events} billing events ({instances} instances, {tenants} tenants), {DAEMONS} \
         daemons, {NODES}-node NATS cluster (R{NODES})\n"
    );
    println!("| phase | events | seconds | events/s | redeliveries |");
    println!("|---|---:|---:|---:|---:|");
    for phase in &phases {
        println!(
            "| {} | {} | {:.1} | {:.0} | {} |",
            phase.name,
            phase.handled(),
            phase.seconds(),
            phase.rate(),
            phase.redeliveries()
        );
    }
    println!(
        "| **whole run** (publishing included) | {events} | {wall:.1} | **{:.0}** | {redeliveries} |",
        events as f64 / wall
    );
    println!(
        "\npublishing: {publish_took:.1} s ({:.0} events/s), {retries} chunk retries, \
         {duplicates} duplicates; node restart (SIGTERM to ready) {:.1} s\n",
        events as f64 / publish_took.max(1e-6),
        node_restart_took.as_secs_f64()
    );
    println!("| process | CPU s | CPU µs/event | share of one core |");
    println!("|---|---:|---:|---:|");
    for ((name, after), (_, before)) in cpu_after.iter().zip(&cpu_before) {
        let micros = after - before;
        println!(
            "| {name} | {:.1} | {:.0} | {:.0} % |",
            micros / 1e6,
            micros / events as f64,
            micros / 1e6 / wall * 100.0
        );
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(tenant, want)| totals.get(*tenant) != Some(*want))
        .map(|(tenant, want)| format!("{tenant}: {:?}, not {want}", totals.get(tenant)))
        .collect();
    println!(
        "\ntotals: {} of {} tenants exact; dead letters: {}; redeliveries: {redeliveries}",
        expected.len() - wrong.len(),
        expected.len(),
        dead_lettered.map_or("unknown".into(), |n| n.to_string())
    );
    if !wrong.is_empty() || totals.len() != expected.len() {
        fleet.fail(&format!(
            "{} tenant totals are wrong (first ones: {:?}); {} totals found for {} tenants",
            wrong.len(),
            &wrong[..wrong.len().min(5)],
            totals.len(),
            expected.len()
        ));
    }
    if dead_lettered != Some(0) {
        fleet.fail(&format!("events were dead-lettered: {status}"));
    }
}
