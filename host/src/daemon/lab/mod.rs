//! The device lab: this host's USB devices, who is using them, and the script runs on them.
//!
//! - **Inventory**: the [`DeviceBackend`] is scanned every [`SCAN_EVERY`] (or at once when the
//!   backend reports a hotplug change); devices that came or went are written to (or removed
//!   from) the cluster's inventory and announced as `sandbus.device.attached` / `detached`.
//! - **Runs**: a run is accepted for a device of this host, recorded as queued, and waits
//!   its turn on the device (a fair, first-come-first-served lock per device, bounded by
//!   the run's queue timeout). It then takes the cluster-wide lease ([`LeaseTable`]),
//!   renews it while it runs, and gets the device as its `usb` capability. However the run
//!   ends (report, trap, timeout, cancel, lost lease), the device is closed and reset, the
//!   lease released, the report stored and `sandbus.run.finished` emitted.
//! - **Sweep**: runs recorded as queued or running by a host that is no longer live (or by
//!   this host before a restart) are finished as `error`, so no run stays "running" forever.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::LoadedComponents;
use super::host_events::{
    DeviceAttached, DeviceDetached, HostEvent, HostEvents, LeaseAcquired, LeaseReleased,
    RunFinished,
};
use super::metering::MeteringBatcher;
use super::metrics::Metrics;
use crate::api::{ApiError, ApiErrorKind};
use crate::bus::{
    BusErrorKind, DeviceInventory, DeviceRecord, DeviceState, HostRegistry, LEASE_RENEW, LEASE_TTL,
    Lease, LeaseTable, RunRecord, RunReport, RunRequest, RunState, RunStore, RunVerdict,
    new_run_id,
};
use crate::devices::{self, DeviceBackend, DeviceInfo};
use crate::imports::log::{LogLine, LogSink};
use crate::imports::usb::LeasedDevice;
use crate::sandbox::{Capabilities, InvokeErrorKind, Metering, Verdict, World};

/// How often the backend is rescanned when it cannot report hotplug changes.
pub const SCAN_EVERY: Duration = Duration::from_secs(2);

/// How often runs of lost hosts are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Log lines a run may have waiting to be published; past this, lines are dropped (and
/// counted) rather than slowing the script down.
const LOG_BUFFER: usize = 4096;

/// Log lines whose storage acks a run's log task waits for at once.
const LOG_ACK_WINDOW: usize = 256;

/// How long storing a run's remaining log lines may take once it ended.
const LOG_DRAIN: Duration = Duration::from_secs(10);

/// What the lab works with.
pub struct DeviceLab {
    host_id: String,
    backend: Arc<dyn DeviceBackend>,
    inventory: DeviceInventory,
    leases: LeaseTable,
    runs: RunStore,
    hosts: HostRegistry,
    components: Arc<LoadedComponents>,
    host_events: HostEvents,
    /// Capabilities every run shares (publisher, kv); log and usb are per run.
    base: Capabilities,
    metrics: Arc<Metrics>,
    metering: Arc<MeteringBatcher>,
    state: StdMutex<LabState>,
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
}

/// How a run ended, before its report is written.
struct Ending {
    verdict: RunVerdict,
    steps: Vec<crate::sandbox::Step>,
    summary: String,
    metering: Metering,
    log_lines_dropped: u64,
}

impl Ending {
    /// A run that ended before (or without) the script reporting.
    fn without_report(verdict: RunVerdict, summary: impl Into<String>, metering: Metering) -> Self {
        Self {
            verdict,
            steps: Vec::new(),
            summary: summary.into(),
            metering,
            log_lines_dropped: 0,
        }
    }
}

impl DeviceLab {
    /// A lab over `backend`; nothing runs until [`DeviceLab::run`].
    #[allow(clippy::too_many_arguments, reason = "wired once, by the daemon")]
    pub fn new(
        host_id: String,
        backend: Arc<dyn DeviceBackend>,
        inventory: DeviceInventory,
        leases: LeaseTable,
        runs: RunStore,
        hosts: HostRegistry,
        components: Arc<LoadedComponents>,
        host_events: HostEvents,
        base: Capabilities,
        metrics: Arc<Metrics>,
        metering: Arc<MeteringBatcher>,
    ) -> Self {
        Self {
            host_id,
            backend,
            inventory,
            leases,
            runs,
            hosts,
            components,
            host_events,
            base,
            metrics,
            metering,
            state: StdMutex::default(),
            rescan: Notify::new(),
            turn: Notify::new(),
            stopping: AtomicBool::new(false),
        }
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
                _ = tokio::time::sleep(SCAN_EVERY) => {}
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
        let present: Vec<String> = self.state().present.keys().cloned().collect();
        match self.inventory.list().await {
            Ok(records) => {
                for record in records {
                    if record.host == self.host_id
                        && !present.contains(&record.info.id)
                        && let Err(e) = self.inventory.remove(&self.host_id, &record.info.id).await
                    {
                        tracing::warn!(error = %e, "could not update the device inventory");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the device inventory"),
        }
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

    /// One scan: announce what came and went, refresh the inventory.
    async fn scan(&self) {
        let backend = self.backend.clone();
        let found = match tokio::task::spawn_blocking(move || backend.scan()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "device scan failed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "device scan panicked");
                return;
            }
        };
        let (attached, detached) = {
            let mut state = self.state();
            let now: HashMap<String, DeviceInfo> =
                found.into_iter().map(|d| (d.id.clone(), d)).collect();
            let attached: Vec<DeviceInfo> = now
                .values()
                .filter(|d| state.present.get(&d.id) != Some(*d))
                .cloned()
                .collect();
            let detached: Vec<DeviceInfo> = state
                .present
                .values()
                .filter(|d| !now.contains_key(&d.id))
                .cloned()
                .collect();
            state.present = now;
            (attached, detached)
        };
        self.refresh_device_gauges();
        for device in attached {
            tracing::info!(device = %device.id, kind = %device.vid_pid(), "device attached");
            self.publish_device(&device).await;
            let id = self.device_event_id::<DeviceAttached>(&device);
            let subject = Some(device.id.clone());
            let attached = DeviceAttached {
                host: self.host_id.clone(),
                device,
            };
            self.host_events
                .emit_or_log_typed(&attached, id, subject)
                .await;
        }
        for device in detached {
            tracing::warn!(device = %device.id, "device detached");
            if let Err(e) = self.inventory.remove(&self.host_id, &device.id).await {
                tracing::warn!(error = %e, "could not update the device inventory");
            }
            let id = self.device_event_id::<DeviceDetached>(&device);
            let subject = Some(device.id.clone());
            let detached = DeviceDetached {
                host: self.host_id.clone(),
                device,
            };
            self.host_events
                .emit_or_log_typed(&detached, id, subject)
                .await;
        }
    }

    /// The id of a `sandbus.device.*` event of type `E` about `device`: each attach or detach
    /// is its own fact, so the id names the moment.
    fn device_event_id<E: HostEvent>(&self, device: &DeviceInfo) -> String {
        format!(
            "{}/{}/{}/{}",
            E::TYPE,
            self.host_id,
            device.id,
            crate::bus::now_rfc3339()
        )
    }

    /// Writes one device's inventory entry with its current state.
    async fn publish_device(&self, device: &DeviceInfo) {
        let (run, queued) = {
            let state = self.state();
            let on_device = state.active.iter().filter(|(_, r)| r.device == device.id);
            let mut run = None;
            let mut queued = 0;
            for (id, r) in on_device {
                if r.running {
                    run = Some(id.clone());
                } else {
                    queued += 1;
                }
            }
            (run, queued)
        };
        self.refresh_device_gauges();
        let record = DeviceRecord {
            host: self.host_id.clone(),
            info: device.clone(),
            state: if run.is_some() {
                DeviceState::Leased
            } else {
                DeviceState::Free
            },
            run,
            queued,
            backend: self.backend.name().to_owned(),
            seen_at: crate::bus::now_rfc3339(),
        };
        if let Err(e) = self.inventory.put(&record).await {
            tracing::warn!(error = %e, "could not write the device inventory");
        }
    }

    /// Devices by state, and leases held, for the metrics.
    fn refresh_device_gauges(&self) {
        let (present, leased) = {
            let state = self.state();
            let leased = state.active.values().filter(|r| r.running).count();
            (state.present.len(), leased)
        };
        let free = present.saturating_sub(leased);
        self.metrics
            .set("sandbus_devices", &[("state", "free")], free as f64);
        self.metrics
            .set("sandbus_devices", &[("state", "leased")], leased as f64);
        self.metrics.set("sandbus_leases_held", &[], leased as f64);
    }

    async fn publish_device_by_id(&self, id: &str) {
        let device = self.state().present.get(id).cloned();
        if let Some(device) = device {
            self.publish_device(&device).await;
        }
    }

    /// Finishes runs whose host is gone. At start (`own`), also this host's own unfinished
    /// runs: they belonged to a previous life of this daemon.
    /// Whether the list of runs could be read and judged.
    async fn sweep(&self, own: bool) -> bool {
        let Ok(runs) = self.runs.list().await else {
            return false;
        };
        let live: Vec<String> = match self.hosts.list().await {
            Ok(hosts) => hosts.into_iter().map(|h| h.id).collect(),
            Err(_) => return false,
        };
        for record in runs {
            if record.state == RunState::Finished {
                continue;
            }
            let why = if record.host == self.host_id {
                if !own || self.state().active.contains_key(&record.id) {
                    continue;
                }
                "the daemon running it restarted before it finished"
            } else if !live.contains(&record.host) {
                // Gone from presence is not enough: while its lease lives, the host may only
                // be cut off from the bus and still running the script.
                match self
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

    /// Accepts a run for a device of this host. Returns its record at once (queued); the
    /// run itself goes on in the background.
    pub async fn start(self: &Arc<Self>, request: RunRequest) -> Result<RunRecord, ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                ApiErrorKind::Unavailable,
                format!("host {} is shutting down; try again", self.host_id),
            ));
        }
        let Some(component) = self.components.get(&request.script) else {
            return Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!(
                    "no script `{}` is loaded on host {}; upload it with `sandbus upload`",
                    request.script, self.host_id
                ),
            ));
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
                    self.host_id, request.device
                ),
            ));
        };
        let record = RunRecord {
            id: new_run_id(),
            host: self.host_id.clone(),
            request,
            state: RunState::Queued,
            verdict: None,
            summary: None,
            created_at: crate::bus::now_rfc3339(),
            started_at: None,
            finished_at: None,
        };
        self.runs.put(&record).await?;
        let cancel = CancellationToken::new();
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
        tokio::spawn(async move { lab.execute(accepted, device, cancel).await });
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

    /// One run, from waiting for the device to its report.
    async fn execute(
        self: Arc<Self>,
        mut record: RunRecord,
        device: DeviceInfo,
        cancel: CancellationToken,
    ) {
        let queue_timeout = Duration::from_millis(record.request.queue_timeout_ms);
        // Wait for our turn on the device (in arrival order), then for the lease.
        let waited = Instant::now();
        let turn = tokio::select! {
            _ = cancel.cancelled() => Err(RunVerdict::Cancelled),
            _ = tokio::time::sleep(queue_timeout) => Err(RunVerdict::Error),
            () = self.my_turn(&device.id, &record.id) => Ok(()),
        };
        let ending = match turn {
            Err(verdict) => {
                let summary = match verdict {
                    RunVerdict::Cancelled => "cancelled while waiting for the device".to_owned(),
                    _ => format!(
                        "the device stayed busy for {}; the run gave up waiting",
                        humantime::format_duration(queue_timeout)
                    ),
                };
                Ending::without_report(verdict, summary, Metering::default())
            }
            Ok(()) => {
                let left = queue_timeout.saturating_sub(waited.elapsed());
                self.with_lease(&mut record, &device, &cancel, left).await
            }
        };
        // Leave the queue (whether or not the run had the device): the next one goes.
        if let Some(queue) = self.state().queues.get_mut(&device.id) {
            queue.retain(|id| id != &record.id);
        }
        self.turn.notify_waiters();
        let report = RunReport {
            run: record.id.clone(),
            script: record.request.script.clone(),
            host: self.host_id.clone(),
            device: record.started_at.as_ref().map(|_| device.clone()),
            verdict: ending.verdict,
            steps: ending.steps,
            summary: ending.summary,
            metering: ending.metering,
            log_lines_dropped: ending.log_lines_dropped,
        };
        self.state().active.remove(&record.id);
        self.finish_record(record, &report).await;
        self.publish_device_by_id(&device.id).await;
    }

    /// Returns once `run` is at the front of `device`'s queue.
    async fn my_turn(&self, device: &str, run: &str) {
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let front = self
                .state()
                .queues
                .get(device)
                .and_then(|q| q.front().cloned());
            if front.as_deref() == Some(run) {
                return;
            }
            notified.await;
        }
    }

    /// Takes the lease (waiting up to `left` for a stale one to expire), runs, releases.
    async fn with_lease(
        self: &Arc<Self>,
        record: &mut RunRecord,
        device: &DeviceInfo,
        cancel: &CancellationToken,
        left: Duration,
    ) -> Ending {
        let give_up = Instant::now() + left;
        let held = loop {
            let lease = Lease {
                run: record.id.clone(),
                host: self.host_id.clone(),
                device: device.id.clone(),
                acquired_at: crate::bus::now_rfc3339(),
            };
            match self.leases.acquire(lease).await {
                Ok(held) => break Ok(held),
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!(run = %record.id, error = %e, "waiting for the device lease");
                    tokio::select! {
                        _ = cancel.cancelled() => break Err(Ending::without_report(
                            RunVerdict::Cancelled,
                            "cancelled while waiting for the device",
                            Metering::default(),
                        )),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    break Err(Ending::without_report(
                        RunVerdict::Error,
                        format!("could not lease the device: {e}"),
                        Metering::default(),
                    ));
                }
            }
        };
        let mut held = match held {
            Ok(held) => held,
            Err(ending) => return ending,
        };
        let acquired = Instant::now();
        record.state = RunState::Running;
        record.started_at = Some(crate::bus::now_rfc3339());
        if let Some(active) = self.state().active.get_mut(&record.id) {
            active.running = true;
        }
        if let Err(e) = self.runs.put(record).await {
            tracing::warn!(run = %record.id, error = %e, "could not record the run as running");
        }
        self.publish_device_by_id(&device.id).await;
        let lease = LeaseAcquired {
            run: record.id.clone(),
            host: self.host_id.clone(),
            device: device.clone(),
            script: record.request.script.clone(),
        };
        self.host_events
            .emit_or_log_typed(
                &lease,
                format!("{}/{}", LeaseAcquired::TYPE, record.id),
                Some(device.id.clone()),
            )
            .await;

        // Renew the lease while the run lives; losing it (taken, or not renewed for nearly a
        // TTL because the bus is unreachable) stops the run at once.
        let lost = CancellationToken::new();
        let renewer = {
            let leases = self.leases.clone();
            let lost = lost.clone();
            let mut held = held.clone();
            let done = cancel.child_token();
            let task_done = done.clone();
            let task = tokio::spawn(async move {
                let mut renewed = Instant::now();
                loop {
                    tokio::select! {
                        _ = task_done.cancelled() => break,
                        _ = tokio::time::sleep(LEASE_RENEW) => {}
                    }
                    match leases.renew(&mut held).await {
                        Ok(()) => renewed = Instant::now(),
                        Err(e) if e.kind == BusErrorKind::Conflict => {
                            tracing::error!(error = %e, "lost the device lease; stopping the run");
                            lost.cancel();
                            break;
                        }
                        Err(e) if renewed.elapsed() + LEASE_RENEW >= LEASE_TTL => {
                            tracing::error!(error = %e, "could not renew the device lease within its TTL; stopping the run");
                            lost.cancel();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not renew the device lease; retrying")
                        }
                    }
                }
                held
            });
            (task, done)
        };

        let ending = self.call(record, device, cancel, &lost).await;

        // Stop renewing, take the newest revision, reset the device, give the lease back.
        renewer.1.cancel();
        if let Ok(latest) = renewer.0.await {
            held = latest;
        }
        let backend = self.backend.clone();
        let id = device.id.clone();
        let reset =
            tokio::task::spawn_blocking(move || devices::reset_after_run(&*backend, &id)).await;
        let reset = match reset {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => {
                tracing::warn!(device = %device.id, error = %e, "could not reset the device after the run");
                format!("failed: {e}")
            }
            Err(e) => format!("failed: {e}"),
        };
        if let Err(e) = self.leases.release(held).await {
            tracing::warn!(error = %e, "could not release the device lease (it expires on its own)");
        }
        let released = lease.released(acquired.elapsed().as_millis() as u64, reset, ending.verdict);
        self.host_events
            .emit_or_log_typed(
                &released,
                format!("{}/{}", LeaseReleased::TYPE, record.id),
                Some(device.id.clone()),
            )
            .await;
        ending
    }

    /// Calls the script with the device, until it reports, fails, or is cancelled.
    async fn call(
        &self,
        record: &RunRecord,
        device: &DeviceInfo,
        cancel: &CancellationToken,
        lost: &CancellationToken,
    ) -> Ending {
        let Some(component) = self.components.get(&record.request.script) else {
            return Ending::without_report(
                RunVerdict::Error,
                format!(
                    "the script `{}` was unloaded before it ran",
                    record.request.script
                ),
                Metering::default(),
            );
        };
        let (log, publishing) = RunLog::start(self.runs.clone(), record.id.clone());
        let caps = Capabilities {
            log: log.clone(),
            publisher: self.base.publisher.clone(),
            kv: self.base.kv.clone(),
            usb: Some(LeasedDevice {
                info: device.clone(),
                backend: self.backend.clone(),
            }),
        };
        let timeout = Duration::from_millis(record.request.timeout_ms);
        let started = Instant::now();
        let running = self.metrics.in_flight(&record.request.script);
        let result = tokio::select! {
            result = component.prepared.run_for(record.request.args.clone(), &caps, timeout) => Some(result),
            _ = cancel.cancelled() => None,
            _ = lost.cancelled() => None,
        };
        drop(running);
        drop(caps);
        let dropped = log.dropped.clone();
        drop(log);
        // The lines the script wrote are stored before the report, within a bound: a bus
        // that is down must not keep the device held.
        if tokio::time::timeout(LOG_DRAIN, publishing).await.is_err() {
            tracing::warn!(run = %record.id, "gave up storing the run's last log lines");
        }
        let mut ending = match result {
            None if lost.is_cancelled() => Ending::without_report(
                RunVerdict::Error,
                "the run lost its device lease (taken, or not renewable for a whole lease TTL) \
                 and was stopped",
                wall(started),
            ),
            None => Ending::without_report(RunVerdict::Cancelled, "cancelled", wall(started)),
            Some(Ok(invocation)) => Ending {
                verdict: match invocation.output.verdict {
                    Verdict::Pass => RunVerdict::Pass,
                    Verdict::Fail => RunVerdict::Fail,
                    Verdict::Error => RunVerdict::Error,
                },
                steps: invocation.output.steps,
                summary: invocation.output.summary,
                metering: invocation.metering,
                log_lines_dropped: 0,
            },
            Some(Err(e)) => Ending::without_report(
                if e.kind == InvokeErrorKind::Timeout {
                    RunVerdict::Timeout
                } else {
                    RunVerdict::Error
                },
                format!("{}: {}", e.kind, e.message),
                e.metering,
            ),
        };
        ending.log_lines_dropped = dropped.load(Ordering::Relaxed);
        ending
    }

    /// Marks the run finished (unless someone already did), then stores its report and
    /// emits `sandbus.run.finished`: once per run.
    async fn finish_record(&self, mut record: RunRecord, report: &RunReport) {
        record.state = RunState::Finished;
        record.verdict = Some(report.verdict);
        record.summary = Some(report.summary.clone());
        record.finished_at = Some(crate::bus::now_rfc3339());
        match self.runs.finish(&record).await {
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
            match self.runs.report(report).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(run = %record.id, attempt, error = %e, "could not store the run report");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tracing::info!(run = %record.id, verdict = %report.verdict, "run finished");
        if record.host == self.host_id {
            let wall = Duration::from_micros(report.metering.wall_us);
            self.metrics.invocation(
                &record.request.script,
                "script",
                &report.verdict.to_string(),
                (wall > Duration::ZERO).then_some(wall),
            );
            if wall > Duration::ZERO {
                let failed = matches!(report.verdict, RunVerdict::Error | RunVerdict::Timeout);
                self.metering
                    .record(&record.request.script, "script", &report.metering, failed);
            }
        }
        let finished = RunFinished {
            report: report.clone(),
        };
        self.host_events
            .emit_or_log_typed(
                &finished,
                format!("{}/{}", <RunFinished>::TYPE, record.id),
                Some(record.id.clone()),
            )
            .await;
    }
}

fn wall(started: Instant) -> Metering {
    Metering {
        wall_us: started.elapsed().as_micros() as u64,
        ..Metering::default()
    }
}

/// A run's log sink: lines go through a bounded channel to a task that stores them in the
/// runs stream (acks awaited in a window, not one by one), so a chatty script never waits on
/// the bus.
struct RunLog {
    lines: tokio::sync::mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl RunLog {
    fn start(runs: RunStore, run: String) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (lines, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(LOG_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let task = tokio::spawn(async move {
            let mut acks = futures::stream::FuturesOrdered::new();
            while let Some(line) = rx.recv().await {
                match runs.log(&run, line).await {
                    Ok(ack) => acks.push_back(ack),
                    Err(e) => {
                        tracing::warn!(run = %run, error = %e, "could not store a run log line");
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while acks.len() >= LOG_ACK_WINDOW {
                    if let Some(Err(_)) = acks.next().await {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while let Some(result) = acks.next().await {
                if result.is_err() {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        (Arc::new(Self { lines, dropped }), task)
    }
}

impl LogSink for RunLog {
    fn line(&self, line: &LogLine) {
        let Ok(body) = serde_json::to_vec(line) else {
            return;
        };
        if self.lines.try_send(body).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
