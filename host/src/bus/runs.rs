//! Script runs on the bus: their records, their log lines and their reports.
//!
//! - A [`RunRecord`] per run in the runs KV bucket (key: run id), written by the host that
//!   runs it as the run moves from queued to running to finished; `sandbus runs` lists them.
//! - Log lines on `sandbus.run.<id>.log` and the final [`RunReport`] on
//!   `sandbus.run.<id>.report`, both kept in the runs stream, so `sandbus logs RUN_ID`
//!   replays a finished run and `--follow` streams a live one to its report.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::bucket::BucketSpec;
use super::json_bucket::{BucketErrorKind, JsonBucket, Unreadable};
use super::names;
use super::{BusError, BusErrorKind};
use crate::devices::DeviceInfo;
use crate::error::{Input, InvalidInput};
use crate::sandbox::{Metering, Step};

/// How long finished runs (records, logs, reports) are kept.
pub const RUN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Waiting for its device.
    Queued,
    /// Running on its device.
    Running,
    /// Ended; see the verdict.
    Finished,
}

/// How a run ended. Defined with the host events that carry it (`sandbus.lease.released`).
pub use sandbus_host_events::RunVerdict;

/// How a run ended when its script reported: the script's own verdict (a run's other
/// endings, timeout and cancelled, are the host's).
impl From<crate::sandbox::Verdict> for RunVerdict {
    fn from(verdict: crate::sandbox::Verdict) -> Self {
        use crate::sandbox::Verdict;
        match verdict {
            Verdict::Pass => RunVerdict::Pass,
            Verdict::Fail => RunVerdict::Fail,
            Verdict::Error => RunVerdict::Error,
        }
    }
}

/// What `sandbus run` asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRequest {
    /// The script component's name.
    pub script: String,
    /// The device selector, as given.
    pub selector: String,
    /// The device on the chosen host.
    pub device: String,
    /// Script arguments, in order.
    pub args: Vec<(String, String)>,
    /// The run's deadline, from when it starts running (ms).
    pub timeout_ms: u64,
    /// How long it may wait for the device (ms).
    pub queue_timeout_ms: u64,
}

/// One run, as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The run id.
    pub id: String,
    /// The host running it.
    pub host: String,
    /// What was asked.
    #[serde(flatten)]
    pub request: RunRequest,
    /// Queued, running or finished.
    pub state: RunState,
    /// How it ended, once finished.
    pub verdict: Option<RunVerdict>,
    /// The report's summary, or why the run could not run.
    pub summary: Option<String>,
    /// When it was accepted, started and finished (RFC 3339).
    pub created_at: String,
    /// When it got its device.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
}

/// The structured result of a run: kept in the runs stream and emitted as `run.finished`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    /// The run id.
    pub run: String,
    /// The script's name.
    pub script: String,
    /// The host it ran on.
    pub host: String,
    /// The device it used, when it got one.
    pub device: Option<DeviceInfo>,
    /// How it ended.
    pub verdict: RunVerdict,
    /// The script's steps (none when it did not finish).
    pub steps: Vec<Step>,
    /// The script's summary, or what stopped the run.
    pub summary: String,
    /// Wall time, peak memory, fuel.
    pub metering: Metering,
    /// Log lines that could not be stored (the bus fell behind the script).
    #[serde(default)]
    pub log_lines_dropped: u64,
}

/// The runs bucket and stream.
#[derive(Clone)]
pub struct RunStore {
    js: jetstream::Context,
    runs: JsonBucket<RunRecord>,
}

impl RunStore {
    /// Creates the bucket and the stream if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::RUNS_BUCKET,
            "sandbus script runs, one entry per run",
            replicas,
        )
        .max_age(RUN_RETENTION);
        let runs = JsonBucket::ensure(js, spec).await?;
        js.get_or_create_stream(stream::Config {
            name: names::RUNS_STREAM.to_owned(),
            description: Some("sandbus run logs and reports".into()),
            subjects: names::runs_stream_subjects(),
            max_age: RUN_RETENTION,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::unavailable("create the runs stream", e))?;
        Ok(Self {
            js: js.clone(),
            runs,
        })
    }

    /// Opens the bucket (for clients); [`BusErrorKind::NotSetUp`] if no daemon created it.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let runs = JsonBucket::open(js, names::RUNS_BUCKET, "the runs bucket").await?;
        Ok(Self {
            js: js.clone(),
            runs,
        })
    }

    /// Writes a run's record.
    pub async fn put(&self, record: &RunRecord) -> Result<(), BusError> {
        self.runs
            .put(&record.id, record)
            .await
            .map_err(|e| e.into_bus_error("write the run record"))?;
        Ok(())
    }

    /// Marks a run finished, unless it already is: true if this call finished it. Only the
    /// caller that finished it stores the report and emits `run.finished`, so a run has one
    /// verdict even when its host and a sweeping peer race.
    pub async fn finish(&self, record: &RunRecord) -> Result<bool, BusError> {
        for _ in 0..16 {
            let current = self
                .runs
                .read(&record.id)
                .await
                .map_err(|e| e.into_bus_error("read the run record"))?;
            // A record this version cannot read is not finished as far as it can tell.
            let stored = current.value.ok().flatten();
            if stored.is_some_and(|c| c.state == RunState::Finished) {
                return Ok(false);
            }
            match self.runs.update(&record.id, record, current.revision).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == BucketErrorKind::LostRace => continue,
                Err(e) => return Err(e.into_bus_error("record the run as finished")),
            }
        }
        Err(BusError::new(
            BusErrorKind::Conflict,
            "the run record kept changing; not finished",
        ))
    }

    /// One run's record.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, BusError> {
        self.runs
            .get(id)
            .await
            .map_err(|e| e.into_bus_error("read the run record"))
    }

    /// Every run, newest first. A run whose record cannot be read is left out.
    pub async fn list(&self) -> Result<Vec<RunRecord>, BusError> {
        let mut records = self
            .runs
            .values(Unreadable::Skip)
            .await
            .map_err(|e| e.into_bus_error("list the runs"))?;
        records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(records)
    }

    /// Publishes one log line of a run (JSON). The returned future resolves when the
    /// stream has stored it, so a caller can keep several lines in flight.
    pub async fn log(
        &self,
        run: &str,
        line: Vec<u8>,
    ) -> Result<impl Future<Output = Result<(), BusError>> + use<>, BusError> {
        let ack = self
            .js
            .publish(names::run_log_subject(run), line.into())
            .await
            .map_err(|e| BusError::unavailable("publish a run log line", e))?;
        Ok(async move {
            ack.await
                .map(|_| ())
                .map_err(|e| BusError::unavailable("store a run log line", e))
        })
    }

    /// Stores a run's report (the last message of the run).
    pub async fn report(&self, report: &RunReport) -> Result<(), BusError> {
        let body = serde_json::to_vec(report)
            .map_err(|e| BusError::new(BusErrorKind::Corrupt, e.to_string()).caused_by(e))?;
        self.js
            .publish(names::run_report_subject(&report.run), body.into())
            .await
            .map_err(|e| BusError::unavailable("publish the run report", e))?
            .await
            .map_err(|e| BusError::unavailable("store the run report", e))?;
        Ok(())
    }
}

/// Checks a run id as a client gives it: 1 to 64 bytes of `[A-Za-z0-9_-]` (ids are
/// [`new_run_id`]s; they become a key and a subject token).
pub fn validate_run_id(id: &str) -> Result<(), InvalidInput> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            Input::RunId,
            format!(
                "`{}` is not a run id (like r-1764489600000-0a1b2c3d); `sandbus runs` lists them",
                crate::text::echo(id)
            ),
        ))
    }
}

/// A new run id: time-ordered and unique enough across hosts (`r-<unix ms>-<random>`).
pub fn new_run_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("r-{ms}-{:08x}", rand::random::<u32>())
}
