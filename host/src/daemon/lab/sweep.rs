//! The sweep: runs whose host is gone are finished as `error`, so that no run stays
//! "running" forever. At start, also this host's own unfinished runs: a previous life of
//! this daemon left them.

use super::DeviceLab;
use crate::bus::{RunReport, RunState, RunVerdict};
use crate::sandbox::Metering;

impl DeviceLab {
    /// Finishes runs whose host is gone. At start (`own`), also this host's own unfinished
    /// runs: they belonged to a previous life of this daemon.
    /// Whether the list of runs could be read and judged.
    pub(super) async fn sweep(&self, own: bool) -> bool {
        let Ok(runs) = self.bus.runs.list().await else {
            return false;
        };
        let live: Vec<String> = match self.bus.hosts.list().await {
            Ok(hosts) => hosts.into_iter().map(|h| h.id).collect(),
            Err(_) => return false,
        };
        for record in runs {
            if record.state == RunState::Finished {
                continue;
            }
            let why = if record.host == self.host_id() {
                if !own || self.state().active.contains_key(&record.id) {
                    continue;
                }
                "the daemon running it restarted before it finished"
            } else if !live.contains(&record.host) {
                // Gone from presence is not enough: while its lease lives, the host may only
                // be cut off from the bus and still running the script.
                match self
                    .bus
                    .leases
                    .holder(&record.host, &record.request.device)
                    .await
                {
                    Ok(Some(lease)) if lease.run == record.id => continue,
                    Ok(_) => {}
                    Err(_) => continue,
                }
                "the host running it stopped answering (its leases expired)"
            } else {
                continue;
            };
            tracing::warn!(run = %record.id, host = %record.host, "finishing a run its host lost");
            let summary = format!("{why}; the run did not finish");
            let report = RunReport {
                run: record.id.clone(),
                script: record.request.script.clone(),
                host: record.host.clone(),
                device: None,
                verdict: RunVerdict::Error,
                steps: Vec::new(),
                summary: summary.clone(),
                metering: Metering::default(),
                log_lines_dropped: 0,
            };
            self.finish_record(record, &report).await;
        }
        true
    }
}
