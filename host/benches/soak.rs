//! The soak: the billing listener through 3 daemons on a 3-node NATS cluster (every stream
//! and bucket on 3 replicas), over a million events by default, while one daemon is
//! SIGKILLed and restarted (at 30 % of the events) and one nats-server node is restarted (at
//! 60 %: the one leading the events stream, SIGTERM then started again on the same store).
//! At the end every tenant's total must be exact and nothing dead-lettered; it prints the
//! events/s overall and per phase, the redeliveries, and the CPU each process used.
//!
//! It runs only when asked by name, not in a plain `cargo bench` nor in CI: a full run takes
//! most of an hour on a two-core machine. Run it with
//! `scripts/soak.sh [--events N] [--tenants N] [--keep]`, or
//! `cargo bench -p sandbus --bench soak -- soak [--events N]...`. `$SANDBUS_BINARY` runs another
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

#[path = "soak/drive.rs"]
mod drive;
#[path = "soak/fleet.rs"]
mod fleet;
#[path = "soak/progress.rs"]
mod progress;
#[path = "soak/publisher.rs"]
mod publisher;
#[path = "soak/report.rs"]
mod report;

use std::sync::atomic::Ordering;
use std::time::Instant;

use fleet::{Fleet, INTERRUPTED};
use progress::Progress;
use publisher::Publisher;
use report::Report;
use support::{billing::bus_totals, guest};

/// NATS nodes, and replicas of every stream and bucket.
pub const NODES: usize = 3;
/// Daemons.
pub const DAEMONS: usize = 3;
/// The listener's name.
const LISTENER: &str = "billing";

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
    /// `soak` (the filter that asks for the run: without it, `None`), `--events N` (default
    /// 1,000,000), `--tenants N` (default 1,000), `--keep`; cargo's `--bench` is ignored.
    fn parse() -> Option<Self> {
        let mut options = Self {
            events: 1_000_000,
            tenants: 1_000,
            keep: false,
        };
        let usage = "usage: soak [--events N] [--tenants N] [--keep]";
        let mut asked = false;
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
                "soak" => asked = true,
                // Another benchmark's filter: not this one.
                other if !other.starts_with('-') => {}
                other => panic!("unknown argument `{other}`; {usage}"),
            }
        }
        if !asked {
            return None;
        }
        assert!(
            options.events >= 2,
            "--events must be at least 2 (a start and a stop)"
        );
        Some(options)
    }
}

fn main() {
    let Some(options) = Options::parse() else {
        eprintln!("soak: skipped (minutes to an hour): run scripts/soak.sh, or give `-- soak`");
        return;
    };
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
    let driven = drive::drive(&mut fleet, &rt, &progress, &state, events, started);
    let cpu_after = fleet.cpu();
    let expected = publisher.expected_totals();
    let totals = rt.block_on(bus_totals(&js, LISTENER, tenants));
    let status: serde_json::Value =
        serde_json::from_str(&fleet.cli_ok(&["status", LISTENER, "--json"]))
            .unwrap_or_else(|e| fleet.fail(&format!("`sandbus status` is not JSON: {e}")));
    let dead_lettered = status["dead_lettered"].as_u64();
    Report {
        events,
        tenants,
        driven: &driven,
        publish_seconds: state
            .outcome()
            .and_then(Result::ok)
            .unwrap_or_default()
            .as_secs_f64(),
        retries: state.retries.load(Ordering::Relaxed),
        duplicates: state.duplicates.load(Ordering::Relaxed),
        cpu: cpu_after
            .into_iter()
            .zip(cpu_before)
            .map(|((name, after), (_, before))| (name, after - before))
            .collect(),
    }
    .print();
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(tenant, want)| totals.get(*tenant) != Some(*want))
        .map(|(tenant, want)| format!("{tenant}: {:?}, not {want}", totals.get(tenant)))
        .collect();
    println!(
        "\ntotals: {} of {} tenants exact; dead letters: {}",
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
