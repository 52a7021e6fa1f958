//! The control API's device lab endpoints that need more than one store's answer:
//! `device.list` (only live hosts' devices), `run.get` and `run.cancel` (a run nobody knows
//! is not found). Hosts, runs and starting a run are the stores' and the
//! [`crate::daemon::DeviceLab`]'s alone.

use super::ControlApi;
use crate::api::{ApiError, ApiErrorKind, CancelReply, RunIdRequest};
use crate::bus::{DeviceRecord, RunRecord};

impl ControlApi {
    /// `device.list`: the devices of the hosts alive now.
    pub(super) async fn devices(&self) -> Result<Vec<DeviceRecord>, ApiError> {
        let live: Vec<String> = self.hosts.list().await?.into_iter().map(|h| h.id).collect();
        Ok(self.inventory.list_live(&live).await?)
    }

    /// `run.get`.
    pub(super) async fn run(&self, request: RunIdRequest) -> Result<RunRecord, ApiError> {
        self.runs
            .get(&request.run)
            .await?
            .ok_or_else(|| no_run(&request.run))
    }

    /// `run.cancel`: a run of this host still queued or running is cancelled; one that has
    /// ended is answered as not cancelled.
    pub(super) async fn run_cancel(&self, request: RunIdRequest) -> Result<CancelReply, ApiError> {
        let cancelled = self.lab.cancel(&request.run);
        if !cancelled && self.runs.get(&request.run).await?.is_none() {
            return Err(no_run(&request.run));
        }
        Ok(CancelReply {
            run: request.run,
            cancelled,
        })
    }
}

/// The error for a run id nobody knows.
pub(super) fn no_run(run: &str) -> ApiError {
    ApiError::new(
        ApiErrorKind::NotFound,
        format!("no run `{run}`; see `sandbus runs`"),
    )
}
