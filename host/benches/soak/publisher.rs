//! Feeds the soak: the billing workload written a chunk at a time to a JSON Lines file and
//! published with `sandbus publish --file` (pipelined, straight onto the stream), on a thread
//! of its own while the daemons drain. A chunk that fails (a node going away mid-chunk) is
//! published again: the stream keeps one message per event id within its duplicate window,
//! so a retry never adds an event twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fleet::INTERRUPTED;
use crate::support::{billing::scenario, sandbus_binary};

/// Instances per chunk: two events each.
const CHUNK_INSTANCES: u64 = 10_000;
/// How often one chunk is tried before the soak fails.
const ATTEMPTS: usize = 5;
/// Pause between two attempts of a chunk.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// The tag of every event id and instance name of the soak.
pub const TAG: &str = "soak";

/// What the publishing thread reports while it runs; read by the soak's main loop.
#[derive(Default)]
pub struct Publishing {
    /// Events confirmed stored so far (a chunk counts once it is all stored).
    pub published: AtomicU64,
    /// Events the stream already had when they were sent: stored by a failed attempt of a
    /// retried chunk. More would mean the workload repeats an id.
    pub duplicates: AtomicU64,
    /// Chunks published more than once.
    pub retries: AtomicU64,
    /// Set when publishing ended: how long it took, or why it gave up.
    pub outcome: Mutex<Option<Result<Duration, String>>>,
}

/// The publishing thread of one soak run.
pub struct Publisher {
    /// What it reports.
    pub state: Arc<Publishing>,
    /// The tenant totals the workload must add up to (known once every chunk is made).
    thread: JoinHandle<BTreeMap<String, u64>>,
}

impl Publisher {
    /// Starts publishing `instances` instances (twice as many events) over `tenants` tenants
    /// to `nats` (comma-separated URLs), writing its chunk files in `dir`.
    pub fn start(nats: String, dir: PathBuf, instances: u64, tenants: u64) -> Self {
        let state = Arc::new(Publishing::default());
        let shared = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut expected = BTreeMap::new();
            let mut first = 0;
            while first < instances {
                let range = first..(first + CHUNK_INSTANCES).min(instances);
                first = range.end;
                let (events, totals) = scenario(range, tenants, TAG);
                for (tenant, seconds) in totals {
                    *expected.entry(tenant).or_insert(0) += seconds;
                }
                let file = dir.join("chunk.jsonl");
                let lines: Vec<String> = events.iter().map(ToString::to_string).collect();
                if let Err(e) = std::fs::write(&file, lines.join("\n")) {
                    shared.finish(Err(format!("cannot write {}: {e}", file.display())));
                    return expected;
                }
                if let Err(e) = publish_chunk(&nats, &file, &shared) {
                    shared.finish(Err(e));
                    return expected;
                }
            }
            shared.finish(Ok(started.elapsed()));
            expected
        });
        Self { state, thread }
    }

    /// Waits for the thread; the totals per tenant the published events bill.
    pub fn expected_totals(self) -> BTreeMap<String, u64> {
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("the publishing thread panicked"))
    }
}

impl Publishing {
    /// Records how publishing ended.
    fn finish(&self, outcome: Result<Duration, String>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }

    /// How publishing ended, once it has.
    pub fn outcome(&self) -> Option<Result<Duration, String>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Publishes one chunk file, trying again up to [`ATTEMPTS`] times; counts what it
/// published into `state`.
fn publish_chunk(nats: &str, file: &std::path::Path, state: &Publishing) -> Result<(), String> {
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Err("interrupted".into());
        }
        if attempt > 0 {
            state.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(RETRY_PAUSE);
        }
        let out = Command::new(sandbus_binary())
            .args(["publish", "--file"])
            .arg(file)
            .args(["--nats", nats])
            .env_remove("SANDBUS_LOG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", sandbus_binary().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            // The last line: `<N> events, <D> duplicates`.
            let summary = stdout.lines().last().unwrap_or_default();
            let numbers: Vec<u64> = summary
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            let [events, duplicates] = numbers[..] else {
                return Err(format!(
                    "unexpected summary from sandbus publish: `{summary}`"
                ));
            };
            // Every line is stored now: new, or already there from a failed attempt.
            state.published.fetch_add(events, Ordering::Relaxed);
            state.duplicates.fetch_add(duplicates, Ordering::Relaxed);
            return Ok(());
        }
        last_error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        eprintln!(
            "soak: publishing {} failed (attempt {} of {ATTEMPTS}): {last_error}",
            file.display(),
            attempt + 1
        );
    }
    Err(format!(
        "sandbus publish --file {} failed {ATTEMPTS} times; last: {last_error}",
        file.display()
    ))
}
