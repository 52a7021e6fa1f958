//! The run itself, once the listener is subscribed and publishing has started: reads the
//! listener's consumer every second, SIGKILLs a daemon at 30 % of the events handled and
//! starts it again 5 s later, restarts the node leading the events stream at 60 %, and
//! returns when nothing is pending or in flight. Fails the run (with every log's tail) when
//! publishing fails, when no event is handled for [`STALL`], or when the run is slower than
//! [`SLOWEST`] events/s on average.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, check_interrupted};
use crate::progress::{Phase, Progress, Reading};
use crate::publisher::Publishing;
use crate::{DAEMONS, NODES};

/// The daemon SIGKILLed (from 0): `h2`.
const KILLED: usize = 1;
/// The share of the events handled when the daemon is killed.
const KILL_AT: f64 = 0.30;
/// How long the killed daemon stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The share of the events handled when a node is restarted.
const NODE_RESTART_AT: f64 = 0.60;
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

/// What the run measured.
pub struct Driven {
    /// Before the kill, from the kill to the node restart, from there to the end.
    pub phases: Vec<Phase>,
    /// The last reading: nothing pending, nothing in flight.
    pub end: Reading,
    /// From the start of publishing to the last event handled.
    pub wall: Duration,
    /// How long the node took from SIGTERM to serving clients again.
    pub node_restart_took: Duration,
}

/// Drives the run of `events` events through `fleet`, publishing having begun at `started`.
pub fn drive(
    fleet: &mut Fleet,
    rt: &tokio::runtime::Runtime,
    progress: &Progress,
    publishing: &Publishing,
    events: u64,
    started: Instant,
) -> Driven {
    let mut stage = Stage::AllUp;
    let mut marks: Vec<(String, Reading)> = Vec::new();
    let first = rt
        .block_on(progress.read(0))
        .unwrap_or_else(|e| fleet.fail(&format!("cannot read the listener's consumer: {e}")));
    marks.push((format!("0–30 %: {DAEMONS} daemons, {NODES} nodes"), first));
    let mut last = first;
    let mut last_growth = Instant::now();
    let mut last_report = Instant::now();
    let mut node_restart_took = Duration::ZERO;
    let deadline = started + Duration::from_secs(events / SLOWEST + 600);
    let end = loop {
        check_interrupted();
        std::thread::sleep(POLL);
        let outcome = publishing.outcome();
        if let Some(Err(e)) = &outcome {
            fleet.fail(&format!("publishing failed: {e}"));
        }
        let published = publishing.published.load(Ordering::Relaxed);
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
                "soak: {:>5} s: {}/{events} handled, {published} published, {} pending, {} in \
                 flight",
                started.elapsed().as_secs(),
                reading.handled,
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
                let (node, what) = node_to_restart(rt, progress);
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
    let wall = started.elapsed();
    if !matches!(stage, Stage::NodeRestarted) {
        fleet.fail(
            "every event was handled before the daemon kill and the node restart were done: \
             give more --events",
        );
    }
    // The killed daemon must be back.
    fleet.wait_for_host(KILLED);
    let phases = marks
        .iter()
        .enumerate()
        .map(|(i, (name, from))| Phase {
            name: name.clone(),
            from: *from,
            to: marks.get(i + 1).map_or(end, |(_, next)| *next),
        })
        .collect();
    Driven {
        phases,
        end,
        wall,
        node_restart_took,
    }
}

/// The node to restart (from 0): the one leading the events stream, the hardest to lose;
/// the first one when the leader cannot be told. With what it is, for the table.
fn node_to_restart(rt: &tokio::runtime::Runtime, progress: &Progress) -> (usize, &'static str) {
    let leader = rt
        .block_on(progress.stream_leader())
        .as_deref()
        .and_then(|name| name.strip_prefix('n'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=NODES).contains(n));
    match leader {
        Some(n) => (n - 1, "the events stream's leader"),
        None => (0, "leader unknown"),
    }
}
