//! Finishing a run, once: its record marked finished, its report stored, its usage counted
//! and `sandbus.run.finished` emitted. Both a run that ended here and a run the sweep gives
//! up on end this way.

use std::time::Duration;

use super::DeviceLab;
use crate::bus::{RunRecord, RunReport, RunState, RunVerdict};
use crate::daemon::host_events::{HostEvent as _, RunFinished};

impl DeviceLab {
    /// Marks the run finished (unless someone already did), then stores its report and
    /// emits `sandbus.run.finished`: once per run.
    pub(super) async fn finish_record(&self, mut record: RunRecord, report: &RunReport) {
        record.state = RunState::Finished;
        record.verdict = Some(report.verdict);
        record.summary = Some(report.summary.clone());
        record.finished_at = Some(crate::bus::now_rfc3339());
        match self.bus.runs.finish(&record).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(run = %record.id, "the run was already finished elsewhere; keeping that verdict");
                return;
            }
            Err(e) => {
                tracing::warn!(run = %record.id, error = %e, "could not record the run as finished");
            }
        }
        for attempt in 1..=3u32 {
            match self.bus.runs.report(report).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(run = %record.id, attempt, error = %e, "could not store the run report");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tracing::info!(run = %record.id, verdict = %report.verdict, "run finished");
        if record.host == self.host_id() {
            let wall = Duration::from_micros(report.metering.wall_us);
            self.host.metrics.invocation(
                &record.request.script,
                "script",
                &report.verdict.to_string(),
                (wall > Duration::ZERO).then_some(wall),
            );
            self.host
                .metrics
                .throttled(&record.request.script, &report.metering.throttle);
            if wall > Duration::ZERO {
                let failed = matches!(report.verdict, RunVerdict::Error | RunVerdict::Timeout);
                self.host.metering.record(
                    &record.request.script,
                    "script",
                    &report.metering,
                    failed,
                );
            }
        }
        let finished = RunFinished {
            report: report.clone(),
        };
        self.host_events
            .emit_or_log(
                &finished,
                format!("{}/{}", <RunFinished>::TYPE, record.id),
                Some(record.id.clone()),
            )
            .await;
    }
}
