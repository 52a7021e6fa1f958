//! Scale-out on one NATS cluster: several daemons, each connected to a different node, share
//! one listener's events, and the survivors finish the work of one that is killed. The billing
//! listener's totals and usage keys are the proof that nothing was lost or counted twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{Cluster, billing_listener, billing_scenario, billing_totals, write};

/// The daemons, one per node of the NATS cluster: daemon `i` connects to node `i`.
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// The daemon killed halfway.
const KILLED: &str = "h2";
/// VM instances billed: two events each (20,000 events, as the issue asks).
const INSTANCES: u64 = 10_000;
/// The listener under test.
const LISTENER: &str = "billing";
/// Replicas of every stream and bucket the daemons create (`[events] replicas`): one per node,
/// as a production cluster would run.
const REPLICAS: usize = 3;
/// How often the listener's status is read while waiting.
const POLL: Duration = Duration::from_secs(2);
/// How often progress is printed while waiting (seen with `--nocapture`).
const REPORT_EVERY: Duration = Duration::from_secs(15);
/// How long the count of handled events may stay the same before the test fails. Covers the
/// ack wait after the kill (the killed daemon's events come back after it) and a slow moment
/// of a busy machine.
const STALL: Duration = Duration::from_secs(180);
/// How long the whole run (handling every event) may take at most: about ten times what it
/// takes on an idle two-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// A listener's consumer, as `sandbus status --json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// Events acknowledged (handled, or dead-lettered): published minus pending minus in flight.
    handled: u64,
    /// Not yet delivered.
    pending: u64,
    /// Delivered, not yet acknowledged.
    in_flight: u64,
    /// Delivered more than once so far.
    redelivered: u64,
    /// In the dead-letter stream.
    dead_lettered: u64,
}

impl Progress {
    /// The listener's progress through `published` events, or `None` if the status cannot be
    /// read right now (the CLI may have reached the daemon being killed).
    fn read(cluster: &Cluster, published: u64) -> Option<Self> {
        let out = cluster.cli(&["status", LISTENER, "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let count = |field: &str| status[field].as_u64();
        let pending = count("pending")?;
        let in_flight = count("in_flight")?;
        Some(Self {
            handled: published.saturating_sub(pending + in_flight),
            pending,
            in_flight,
            redelivered: count("redelivered")?,
            dead_lettered: count("dead_lettered")?,
        })
    }
}

/// Reads the listener's progress every [`POLL`] until `done` holds for it, printing it every
/// [`REPORT_EVERY`]; returns it. Panics, with the tail of every daemon's log, when the handled
/// count has not grown for [`STALL`] or `since` is [`RUN_LIMIT`] ago.
fn wait_for_progress(
    cluster: &Cluster,
    what: &str,
    published: u64,
    since: Instant,
    done: impl Fn(&Progress) -> bool,
) -> Progress {
    let mut handled = 0;
    let mut last_growth = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if let Some(progress) = Progress::read(cluster, published) {
            if done(&progress) {
                return progress;
            }
            if progress.handled != handled {
                handled = progress.handled;
                last_growth = Instant::now();
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                eprintln!(
                    "scale_out: {:>4} s: {progress:?}, waiting for {what}",
                    since.elapsed().as_secs()
                );
            }
        }
        if last_growth.elapsed() > STALL {
            cluster.fail(&format!(
                "timed out waiting for {what}: no event handled for {} s",
                STALL.as_secs()
            ));
        }
        if since.elapsed() > RUN_LIMIT {
            cluster.fail(&format!(
                "timed out waiting for {what}: the run took over {} s",
                RUN_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// What each instance of `events` must be billed: (tenant, seconds between its start and stop).
fn expected_usage(events: &[Value]) -> BTreeMap<String, (String, u64)> {
    let mut times: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for event in events {
        let instance = event["data"]["instance"].as_str().unwrap().to_owned();
        let tenant = event["data"]["tenant"].as_str().unwrap().to_owned();
        let time = humantime::parse_rfc3339(event["time"].as_str().unwrap()).unwrap();
        let at = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        times
            .entry(instance)
            .or_insert((tenant, Vec::new()))
            .1
            .push(at);
    }
    times
        .into_iter()
        .map(|(instance, (tenant, at))| {
            let seconds = at.iter().max().unwrap() - at.iter().min().unwrap();
            (instance, (tenant, seconds))
        })
        .collect()
}

/// Lines of a daemon's log where the billing listener billed an instance.
fn billed_lines(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("sandbus::guest") && line.contains(" billed "))
        .count()
}

/// Three daemons on a 3-node NATS cluster (one daemon per node) run the same billing
/// subscription over 20,000 events (10,000 VMs started and stopped). When about half are
/// handled, one daemon is SIGKILLed; the other two must handle the rest, including what the
/// killed one had in flight (redelivered after the ack wait). At the end the tenant totals
/// are exact, there is exactly one usage key per instance with the right value, nothing is
/// dead-lettered, and every daemon billed some instances (the killed one before the kill).
///
/// Streams and buckets have three replicas (R3), one per node. Two things had to hold for
/// that: buckets are read through their stream leader (direct get off; a replica that is
/// behind made the billing listener miss a fact and lose instances), and a compare-and-swap
/// that loses a race on a clustered server (error 10164) is a lost race, not an outage
/// (`tests/e2e/replicated_kv.rs` checks both on their own).
///
/// A bill costs the same however many instances were billed before (see the billing
/// listener's `ledger` module): on an idle two-core machine, with debug builds, the 20,000
/// events take about 125 s (160 events/s) with the test's three daemons and three NATS nodes
/// all on the one machine.
///
/// The NATS cluster takes every place of the harness: it runs alone.
#[test]
fn three_daemons_share_20000_events_and_survive_one_killed_halfway() {
    let mut cluster = Cluster::with_nats_cluster(HOSTS.len());
    let config = write(
        &cluster,
        "sandbus.toml",
        format!("[events]\nreplicas = {REPLICAS}\n").as_bytes(),
    );
    for (node, host) in HOSTS.iter().enumerate() {
        let url = cluster.node_url(node);
        cluster.start_daemon_with(host, &["--nats", &url, "--config", &config]);
    }
    billing_listener(&cluster, LISTENER);
    for host in HOSTS {
        cluster.wait_for_component(host, LISTENER, 1);
    }

    let (events, expected_totals) = billing_scenario(INSTANCES);
    let published = u64::try_from(events.len()).unwrap();
    let start = Instant::now();
    cluster.publish_events(&events);
    eprintln!(
        "scale_out: {published} events published in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let at_kill = wait_for_progress(&cluster, "half the events", published, start, |p| {
        p.handled >= published / 2
    });
    cluster.kill_daemon(KILLED);
    eprintln!(
        "scale_out: {KILLED} killed at {} s: {at_kill:?}",
        start.elapsed().as_secs()
    );
    assert!(
        at_kill.handled < published,
        "the kill came too late to prove anything: {at_kill:?}"
    );

    let end = wait_for_progress(&cluster, "every event", published, start, |p| {
        p.pending == 0 && p.in_flight == 0
    });
    let took = start.elapsed().as_secs_f64();
    eprintln!(
        "scale_out: every event handled in {took:.1} s ({:.0} events/s): {end:?}",
        published as f64 / took
    );

    // Each acknowledgement came after the handler's total was updated: exact now.
    assert_eq!(billing_totals(&cluster, LISTENER), expected_totals);
    let status = cluster.status(LISTENER);
    assert_eq!(status["dead_lettered"], 0, "{status}");
    assert!(cluster.dead_letters(LISTENER).is_empty(), "{status}");

    // One usage key per instance, filed under its tenant, holding its billed seconds: no
    // instance billed twice (under two keys), none missed.
    let expected_usage = expected_usage(&events);
    let mut billed: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (key, value) in cluster.kv(LISTENER, "usage/") {
        let parts: Vec<&str> = key.split('/').collect();
        let [_, tenant, _shard, instance] = parts[..] else {
            panic!("not a usage key: {key}");
        };
        let previous = billed.insert(
            instance.to_owned(),
            (tenant.to_owned(), value.parse().unwrap()),
        );
        assert!(previous.is_none(), "instance {instance} billed twice");
    }
    let wrong: Vec<_> = expected_usage
        .iter()
        .filter(|(instance, usage)| billed.get(*instance) != Some(*usage))
        .map(|(instance, usage)| (instance, usage, billed.get(instance)))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "instances missing or billed wrong (instance, expected, billed): {wrong:?}"
    );
    assert_eq!(
        billed.len(),
        expected_usage.len(),
        "unknown instances billed"
    );

    // Every daemon took a share: the killed one before the kill, the others to the end.
    let shares: Vec<(&str, usize)> = HOSTS
        .iter()
        .map(|host| (*host, billed_lines(&cluster.daemon_log(host))))
        .collect();
    eprintln!("scale_out: instances billed per daemon (redeliveries included): {shares:?}");
    for (host, share) in &shares {
        assert!(*share > 0, "{host} billed nothing: {shares:?}");
    }
}
