//! The device lab: this host's USB devices, who is using them, and the script runs on them.
//!
//! - **Inventory** (`inventory`): the [`DeviceBackend`] is scanned every [`SCAN_EVERY`] (or
//!   at once when the backend reports a hotplug change); devices that came or went are
//!   written to (or removed from) the cluster's inventory and announced as
//!   `sandbus.device.attached` / `detached`.
//! - **Runs** (`run`): a run is accepted for a device of this host, recorded as queued, and
//!   waits its turn on the device (a fair, first-come-first-served lock per device, bounded
//!   by the run's queue timeout). It then takes the cluster-wide lease ([`LeaseTable`]),
//!   keeps it renewed while it runs, and gets the device as its `usb` capability; what the
//!   script logs is stored as it goes (`run_log`). However the run ends (report, trap,
//!   timeout, cancel, lost lease), the device is closed and reset, the lease released, the
//!   report stored and `sandbus.run.finished` emitted (`finish`).
//! - **Sweep** (`sweep`): runs recorded as queued or running by a host that is no longer
//!   live (or by this host before a restart) are finished as `error`, so no run stays
//!   "running" forever.
//!
//! This file holds the lab itself and what the daemon and the control API call: start and
//! stop it, accept and cancel runs.

mod finish;
mod inventory;
mod run;
mod run_log;
mod sweep;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::components::{Unready, ready};
use super::context::HostContext;
use super::host_events::HostEvents;
use crate::api::{ApiError, ApiErrorKind};
use crate::bus::{
    DeviceInventory, HostRegistry, LeaseTable, RunRecord, RunRequest, RunState, RunStore,
    new_run_id,
};
use crate::devices::{DeviceBackend, DeviceInfo};
use crate::sandbox::World;

/// How often the backend is scanned by default (`[devices] scan_every`): the only way to
/// see changes when it cannot report hotplug, a backstop when it can.
pub const SCAN_EVERY: Duration = Duration::from_secs(2);

/// How often runs of lost hosts are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How long `run.start` waits for a script that is still compiling on this host (uploaded a
/// moment ago) before it answers that it is compiling. Within the CLI's reply timeout.
const RUN_WAITS_FOR_COMPILE: Duration = Duration::from_secs(30);

/// The lab's part of the bus: what the cluster knows of devices and runs.
#[derive(Clone)]
pub struct LabBus {
    /// Every host's devices, as this lab (and the others) last wrote them.
    pub inventory: DeviceInventory,
    /// Who holds each device, cluster-wide.
    pub leases: LeaseTable,
    /// Run records, reports and logs.
    pub runs: RunStore,
    /// Which hosts are live: the runs of the others are swept.
    pub hosts: HostRegistry,
}

/// What the lab works with.
pub struct DeviceLab {
    /// The host's id, components, base capabilities (publisher, kv; a run's log and usb
    /// are its own), metrics and metering.
    host: HostContext,
    /// Where device, lease and run events are emitted.
    host_events: HostEvents,
    backend: Arc<dyn DeviceBackend>,
    bus: LabBus,
    state: StdMutex<LabState>,
    /// How often the backend is scanned, hotplug or not.
    scan_every: Duration,
    rescan: Notify,
    /// Signalled whenever a run leaves a device queue.
    turn: Notify,
    /// Set when the daemon stops: no new runs are accepted.
    stopping: AtomicBool,
}

#[derive(Default)]
struct LabState {
    /// Devices present now, by id.
    present: HashMap<String, DeviceInfo>,
    /// Per device, the runs waiting for it or using it, in arrival order: the front one
    /// has the device.
    queues: HashMap<String, VecDeque<String>>,
    /// Runs accepted here and not finished: their cancel tokens.
    active: HashMap<String, ActiveRun>,
}

struct ActiveRun {
    device: String,
    running: bool,
    cancel: CancellationToken,
    /// Cancelled when a scan finds the run's device gone: the run ends at once as
    /// `disconnected`, whatever its script is doing.
    unplugged: CancellationToken,
}

impl DeviceLab {
    /// A lab over `backend`, emitting its events with `host_events`; nothing runs until
    /// [`DeviceLab::run`].
    pub fn new(
        host: HostContext,
        host_events: HostEvents,
        backend: Arc<dyn DeviceBackend>,
        bus: LabBus,
    ) -> Self {
        Self {
            host,
            host_events,
            backend,
            bus,
            state: StdMutex::default(),
            scan_every: SCAN_EVERY,
            rescan: Notify::new(),
            turn: Notify::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Scans the backend every `every` instead of [`SCAN_EVERY`].
    pub fn scanning_every(mut self, every: Duration) -> Self {
        self.scan_every = every;
        self
    }

    fn host_id(&self) -> &str {
        &self.host.host_id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the inventory current and sweeps lost runs until `stop`; then cancels the runs
    /// still active and waits for them to release their devices.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if let Some(why) = self.backend.unavailable() {
            tracing::warn!(backend = self.backend.name(), reason = %why, "no USB devices on this host");
        }
        let notify = self.clone();
        let hotplug = self
            .backend
            .watch(Box::new(move || notify.rescan.notify_one()));
        tracing::info!(backend = self.backend.name(), hotplug, "watching devices");
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.tick().await;
        loop {
            self.scan().await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.rescan.notified() => {}
                _ = tokio::time::sleep(self.scan_every) => {}
                _ = sweep.tick() => {
                    self.sweep(false).await;
                }
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        let tokens: Vec<CancellationToken> = self
            .state()
            .active
            .values()
            .map(|r| r.cancel.clone())
            .collect();
        for token in &tokens {
            token.cancel();
        }
        // Each cancelled run resets its device and releases its lease; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.state().active.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Before the control API answers: learn this host's devices, drop inventory entries
    /// of devices that went away while the daemon was down, and finish the runs a previous
    /// life of this daemon left unfinished.
    pub async fn startup(&self) {
        self.scan().await;
        self.forget_devices_gone_while_down().await;
        for attempt in 1..=5u32 {
            if self.sweep(true).await {
                return;
            }
            tracing::warn!(
                attempt,
                "could not look for this host's unfinished runs; retrying"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Accepts a run for a device of this host. Returns its record at once (queued); the
    /// run itself goes on in the background.
    pub async fn start(self: &Arc<Self>, request: RunRequest) -> Result<RunRecord, ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                ApiErrorKind::Unavailable,
                format!("host {} is shutting down; try again", self.host_id()),
            ));
        }
        // A script uploaded a moment ago may still be compiling here: the run waits for it
        // (a while) rather than being refused.
        let component = match ready(
            self.host.components.as_ref(),
            &request.script,
            RUN_WAITS_FOR_COMPILE,
        )
        .await
        {
            Ok(component) => component,
            Err(Unready::Compiling(version)) => {
                return Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    format!(
                        "`{}` version {version} is still compiling on host {} (waited {});                          run it again once `sandbus ls` shows it ready, or upload with `--wait`",
                        request.script,
                        self.host_id(),
                        humantime::format_duration(RUN_WAITS_FOR_COMPILE)
                    ),
                ));
            }
            Err(Unready::Failed(version, why)) => {
                return Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    format!(
                        "`{}` version {version} failed to load on host {}: {why}",
                        request.script,
                        self.host_id()
                    ),
                ));
            }
            Err(Unready::Unknown) => {
                return Err(ApiError::new(
                    ApiErrorKind::NotFound,
                    format!(
                        "no script `{}` is loaded on host {}; upload it with `sandbus upload`",
                        request.script,
                        self.host_id()
                    ),
                ));
            }
        };
        if component.prepared.world() != World::Script {
            return Err(ApiError::bad_request(format!(
                "`{}` is a {}, not a script",
                request.script,
                component.prepared.world()
            )));
        }
        let Some(device) = self.state().present.get(&request.device).cloned() else {
            return Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!(
                    "host {} has no device `{}` (it may have been detached); see `sandbus devices`",
                    self.host_id(),
                    request.device
                ),
            ));
        };
        if let Some(why) = &device.unusable {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "host {} cannot use device `{}`: {why}",
                    self.host_id(),
                    device.id
                ),
            ));
        }
        let record = RunRecord {
            id: new_run_id(),
            host: self.host_id().to_owned(),
            request,
            state: RunState::Queued,
            verdict: None,
            summary: None,
            created_at: crate::bus::now_rfc3339(),
            started_at: None,
            finished_at: None,
        };
        self.bus.runs.put(&record).await?;
        let cancel = CancellationToken::new();
        let unplugged = CancellationToken::new();
        {
            // The run's place in the device's queue is taken here, in the order requests
            // arrive, not when its task first runs.
            let mut state = self.state();
            state.active.insert(
                record.id.clone(),
                ActiveRun {
                    device: device.id.clone(),
                    running: false,
                    cancel: cancel.clone(),
                    unplugged: unplugged.clone(),
                },
            );
            state
                .queues
                .entry(device.id.clone())
                .or_default()
                .push_back(record.id.clone());
        }
        self.publish_device(&device).await;
        tracing::info!(run = %record.id, script = %record.request.script, device = %device.id, "run accepted");
        let lab = self.clone();
        let accepted = record.clone();
        tokio::spawn(async move { lab.execute(accepted, device, cancel, unplugged).await });
        Ok(record)
    }

    /// Cancels a run of this host. Whether it was found (queued or running).
    pub fn cancel(&self, run: &str) -> bool {
        match self.state().active.get(run) {
            Some(active) => {
                active.cancel.cancel();
                true
            }
            None => false,
        }
    }
}
