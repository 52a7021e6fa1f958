//! A stateful listener at full speed: the example billing listener through the real daemon on
//! a real `nats-server`, against the same guest on the same events with the in-memory kv of
//! `sandbus dev replay`, in the same run. Every row checks the totals are exact.
//!
//! Not a criterion benchmark: each row is seconds of traffic. It prints a table;
//! `scripts/bench.sh` runs it. Needs `nats-server` on PATH (or `$SANDBUS_NATS_SERVER`) and the
//! guests built. `$SANDBUS_BENCH_INSTANCES` (default 5000: 10,000 events) and
//! `$SANDBUS_BENCH_TENANTS` (default 3: every stop of a tenant settles into the same total)
//! size the workload; `$SANDBUS_BINARY` runs a `sandbus` built elsewhere instead of cargo's.
//!
//! - **in-memory kv**: `sandbus dev replay` over the events file, timed from start to exit
//!   (compile cache warm): the guest's own cost, the ceiling for the bus rows.
//! - **bus kv, default limits**: the events are published while no daemon runs, then a daemon
//!   drains them; events/s from the first ack to the last. With the default limits the
//!   listener emits one `billing.usage` per stop within its per-call publish budget, so no
//!   rate cap is its ceiling (issue 15, goal 1).
//! - **bus kv, publish-rate=1000000/s**: the same with the cap out of the way; the ratio to the
//!   default row shows whether the cap costs anything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use async_nats::jetstream;
use support::billing::{bus_totals, scenario};
use support::{Daemon, Server, cli, drain, guest, median, publish_all, wait_for_host};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `sandbus dev replay` of `events`: events/s over the whole run, and its totals.
fn replay(events: &[serde_json::Value]) -> (f64, BTreeMap<String, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let lines: Vec<String> = events.iter().map(ToString::to_string).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let started = Instant::now();
    let out = Command::new(support::sandbus_binary())
        .args(["dev", "replay", "--json", "--name", "billing"])
        .args(["--grant", "publish=events.billing.>"])
        .arg(guest("billing-listener"))
        .arg(&file)
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "dev replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let totals = summary["kv"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| {
            let tenant = k.strip_prefix("total/")?;
            let n = match v {
                serde_json::Value::String(s) => s.parse().ok()?,
                other => other.as_u64()?,
            };
            Some((tenant.to_owned(), n))
        })
        .collect();
    (events.len() as f64 / secs, totals)
}

struct Row {
    name: &'static str,
    rates: Vec<f64>,
    daemon_cpu: Vec<f64>,
    server_cpu: Vec<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "billing".contains(a.as_str())) {
        return;
    }
    let instances = env_number("SANDBUS_BENCH_INSTANCES", 5_000);
    let tenants = env_number("SANDBUS_BENCH_TENANTS", 3);
    let rounds = support::rounds(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    let server = Server::start();
    let url = server.url.clone();
    let data = tempfile::tempdir().unwrap();
    let client = rt.block_on(async_nats::connect(&url)).unwrap();
    let js = jetstream::new(client);

    let billing = guest("billing-listener");
    let billing = billing.to_str().unwrap();
    let listeners: [(&'static str, &str, Vec<&str>); 2] = [
        ("bus kv, default limits", "billing", vec![]),
        (
            "bus kv, publish-rate=1000000/s",
            "billing-uncapped",
            vec!["--limit", "publish-rate=1000000/s"],
        ),
    ];
    let mut replay_rates = Vec::new();
    for round in 0..rounds {
        let (events, expected) = scenario(0..instances, tenants, &format!("replay-{round}"));
        let (rate, totals) = replay(&events);
        assert_eq!(totals, expected, "dev replay's totals are exact");
        replay_rates.push(rate);
    }
    let mut rows = Vec::new();
    for (row, name, limits) in &listeners {
        // One listener at a time, subscribed to `vm.*` (a subscription gets the events
        // published after it); unsubscribed before the next row.
        let daemon = Daemon::start(&url, data.path());
        wait_for_host(&url);
        let mut upload = vec![
            "upload",
            billing,
            "--name",
            name,
            "--grant",
            "publish=events.billing.>",
        ];
        upload.extend(limits.iter().copied());
        cli(&url, &upload);
        cli(&url, &["subscribe", name, "--events", "vm.*"]);
        daemon.stop();
        let mut row = Row {
            name: row,
            rates: Vec::new(),
            daemon_cpu: Vec::new(),
            server_cpu: Vec::new(),
        };
        let mut want = BTreeMap::new();
        for round in 0..rounds {
            // Published while no daemon runs; totals accumulate over the rounds.
            let (events, expected) = scenario(0..instances, tenants, &format!("{name}-{round}"));
            for (tenant, seconds) in expected {
                *want.entry(tenant).or_insert(0) += seconds;
            }
            let batch = events
                .iter()
                .map(|e| {
                    (
                        format!("events.{}", e["type"].as_str().unwrap()),
                        e["id"].as_str().unwrap().to_owned(),
                        e.to_string().into_bytes(),
                    )
                })
                .collect();
            rt.block_on(publish_all(&js, batch));
            let daemon = Daemon::start(&url, data.path());
            let drained = rt.block_on(drain(
                &js,
                "SANDBUS_EVENTS",
                &format!("sandbus-listener-{name}"),
                (round as u64 + 1) * instances * 2,
                &[daemon.child.id(), server.child.id()],
            ));
            daemon.stop();
            let got = rt.block_on(bus_totals(&js, name, tenants));
            assert_eq!(got, want, "{name}: totals are exact after round {round}");
            row.rates.push(drained.rate);
            row.daemon_cpu.push(drained.cpu_per_event[0]);
            row.server_cpu.push(drained.cpu_per_event[1]);
        }
        let daemon = Daemon::start(&url, data.path());
        wait_for_host(&url);
        cli(&url, &["unsubscribe", name]);
        daemon.stop();
        rows.push(row);
    }
    let baseline = median(&replay_rates);
    println!(
        "\nbilling listener, {instances} instances ({} events) per round, {tenants} tenants, {rounds} rounds (medians)\n",
        instances * 2
    );
    println!(
        "| row | events/s | × in-memory kv | daemon CPU µs/event | nats-server CPU µs/event |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!("| in-memory kv (dev replay) | {baseline:.0} | 1.00 | | |");
    for row in &rows {
        let rate = median(&row.rates);
        println!(
            "| {} | {rate:.0} | {:.2} | {:.1} | {:.1} |",
            row.name,
            rate / baseline,
            median(&row.daemon_cpu),
            median(&row.server_cpu)
        );
    }
    let default = median(&rows[0].rates);
    let uncapped = median(&rows[1].rates);
    println!(
        "\ndefault limits / cap out of the way: {:.2} (1.00: the publish cap is not the ceiling)",
        default / uncapped
    );
}
