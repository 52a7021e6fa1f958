//! A run, from its turn on the device to its ending: waiting in the device's queue, taking
//! the lease and keeping it renewed, calling the script with the device, and handing the
//! device back reset.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::DeviceLab;
use super::run_log::{LOG_DRAIN, RunLog};
use crate::bus::{Lease, RunRecord, RunReport, RunState, RunVerdict};
use crate::daemon::host_events::{HostEvent, LeaseAcquired};
use crate::devices::{self, DeviceInfo, UsbErrorKind};
use crate::imports::usb::LeasedDevice;
use crate::imports::usb::host::MAX_CONTROL_TIMEOUT;
use crate::sandbox::{Capabilities, InvokeError, InvokeErrorKind, Metering};

/// How long a run whose device was unplugged waits for its script to report on its own
/// before it is stopped.
const UNPLUG_GRACE: Duration = Duration::from_millis(500);

/// How a run ended, before its report is written.
struct Ending {
    verdict: RunVerdict,
    steps: Vec<crate::sandbox::Step>,
    summary: String,
    metering: Metering,
    log_lines_dropped: u64,
}

impl Ending {
    /// This ending, for a run whose device went away under it: verdict `error`, the summary
    /// starting with `disconnected`, the script's own summary (if any) kept after it.
    fn disconnected(mut self, device: &str) -> Self {
        let why = format!("disconnected: device {device} was unplugged during the run");
        self.summary = if self.summary.is_empty() {
            why
        } else {
            format!("{why} ({})", self.summary)
        };
        self.verdict = RunVerdict::Error;
        self
    }

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
    /// One run, from waiting for the device to its report.
    pub(super) async fn execute(
        self: Arc<Self>,
        mut record: RunRecord,
        device: DeviceInfo,
        cancel: CancellationToken,
        unplugged: CancellationToken,
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
                self.with_lease(&mut record, &device, (&cancel, &unplugged), left)
                    .await
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
            host: self.host_id().to_owned(),
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
        (cancel, unplugged): (&CancellationToken, &CancellationToken),
        left: Duration,
    ) -> Ending {
        let give_up = Instant::now() + left;
        let held = loop {
            let lease = Lease {
                run: record.id.clone(),
                host: self.host_id().to_owned(),
                device: device.id.clone(),
                acquired_at: crate::bus::now_rfc3339(),
            };
            match self.bus.leases.acquire(lease).await {
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
        let held = match held {
            Ok(held) => held,
            Err(ending) => return ending,
        };
        let acquired = Instant::now();
        record.state = RunState::Running;
        record.started_at = Some(crate::bus::now_rfc3339());
        if let Some(active) = self.state().active.get_mut(&record.id) {
            active.running = true;
        }
        if let Err(e) = self.bus.runs.put(record).await {
            tracing::warn!(run = %record.id, error = %e, "could not record the run as running");
        }
        self.publish_device_by_id(&device.id).await;
        let lease = LeaseAcquired {
            run: record.id.clone(),
            host: self.host_id().to_owned(),
            device: device.clone(),
            script: record.request.script.clone(),
        };
        self.announce_lease(&lease, &record.id, &device.id).await;

        // Renew the lease while the run lives; losing it (taken, or not renewed for nearly a
        // TTL because the bus is unreachable) stops the run at once.
        let renewed = held.keep_renewed(&self.bus.leases, cancel.child_token());

        let (ending, unplugged_during) = self
            .call(record, device, cancel, renewed.lost(), unplugged)
            .await;

        // Stop renewing, take the newest revision, reset the device, give the lease back.
        let held = renewed.stop().await;
        let backend = self.backend.clone();
        let id = device.id.clone();
        let reset =
            tokio::task::spawn_blocking(move || devices::reset_after_run(&*backend, &id)).await;
        // The run ended because its device went: a scan saw it go while the script ran, or it
        // cannot be reset and is not there any more (a device that re-enumerated under a new
        // identity after, say, a firmware update is still there: not an unplug).
        let reset_lost_it = matches!(&reset, Ok(Err(e)) if matches!(e.kind, UsbErrorKind::NotFound | UsbErrorKind::Disconnected));
        let gone = unplugged_during || (reset_lost_it && !self.still_present(&device.id).await);
        let ending = if gone {
            ending.disconnected(&device.id)
        } else {
            ending
        };
        let reset = match reset {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => {
                tracing::warn!(device = %device.id, error = %e, "could not reset the device after the run");
                format!("failed: {e}")
            }
            Err(e) => format!("failed: {e}"),
        };
        if let Err(e) = self.bus.leases.release(held).await {
            tracing::warn!(error = %e, "could not release the device lease (it expires on its own)");
        }
        let released = lease.released(acquired.elapsed().as_millis() as u64, reset, ending.verdict);
        self.announce_lease(&released, &record.id, &device.id).await;
        ending
    }

    /// Whether a fresh scan still lists device `id`.
    async fn still_present(&self, id: &str) -> bool {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || backend.scan()).await {
            Ok(Ok(found)) => found.iter().any(|d| d.id == id),
            // Cannot tell: do not blame the device.
            _ => true,
        }
    }

    /// Emits `event`, a `sandbus.lease.*` event of `run` on `device`: one of each per run,
    /// so its id is the run's.
    async fn announce_lease<E: HostEvent>(&self, event: &E, run: &str, device: &str) {
        self.host_events
            .emit_or_log(event, format!("{}/{run}", E::TYPE), Some(device.to_owned()))
            .await;
    }

    /// Calls the script with the device, until it reports, fails, or is cancelled; and
    /// whether it was stopped because its device was unplugged.
    async fn call(
        &self,
        record: &RunRecord,
        device: &DeviceInfo,
        cancel: &CancellationToken,
        lost: &CancellationToken,
        unplugged: &CancellationToken,
    ) -> (Ending, bool) {
        let Some(component) = self.host.components.get(&record.request.script) else {
            let ending = Ending::without_report(
                RunVerdict::Error,
                format!(
                    "the script `{}` was unloaded before it ran",
                    record.request.script
                ),
                Metering::default(),
            );
            return (ending, false);
        };
        let (log, publishing) = RunLog::start(self.bus.runs.clone(), record.id.clone());
        // The script runs on a thread of its own, so its transfers block that thread
        // directly (no handoff to the blocking pool per transfer); `stop` ends it.
        let stop = CancellationToken::new();
        let caps = Capabilities {
            log: log.clone(),
            publisher: self.host.capabilities.publisher.clone(),
            kv: self.host.capabilities.kv.clone(),
            usb: Some(LeasedDevice {
                info: device.clone(),
                backend: self.backend.clone(),
                own_thread: Some(stop.clone()),
            }),
        };
        let timeout = Duration::from_millis(record.request.timeout_ms);
        let started = Instant::now();
        let running = self.host.metrics.in_flight(&record.request.script);
        let runtime = tokio::runtime::Handle::current();
        let mut invocation = tokio::task::spawn_blocking({
            let args = record.request.args.clone();
            let stop = stop.clone();
            move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = component.prepared.run_for(args, &caps, timeout) => Some(result),
                        _ = stop.cancelled() => None,
                    }
                })
            }
        });
        let joined = tokio::select! {
            // A script that finished wins over a stop that came at the same moment.
            biased;
            joined = &mut invocation => Some(joined),
            _ = cancel.cancelled() => None,
            _ = lost.cancelled() => None,
            // The script sees the unplug too (its transfers fail `disconnected`) and most
            // report at once: a moment for it, so that its own report is kept.
            _ = unplugged.cancelled() => {
                tokio::time::timeout(UNPLUG_GRACE, &mut invocation).await.ok()
            }
        };
        let unplugged_during = unplugged.is_cancelled();
        let finished = joined.is_some();
        let result = joined.and_then(|joined| match joined {
            Ok(result) => result,
            Err(e) => Some(Err(InvokeError {
                kind: InvokeErrorKind::Host,
                message: format!("the script's thread failed: {e}"),
                metering: Metering::default(),
                log: Default::default(),
            })),
        });
        // Ends the script's thread when the run stopped before the script did: a transfer
        // in progress stops at its next slice (a control transfer within its capped
        // timeout), the instance is dropped. Waited for, so the device is let go of before
        // its reset and no thread outlives its run.
        stop.cancel();
        if !finished
            && tokio::time::timeout(MAX_CONTROL_TIMEOUT + Duration::from_secs(5), invocation)
                .await
                .is_err()
        {
            tracing::warn!(run = %record.id, "the script's thread did not stop in time; going on without it");
        }
        drop(running);
        let dropped = log.dropped.clone();
        drop(log);
        // The lines the script wrote are stored before the report, within a bound: a bus
        // that is down must not keep the device held.
        if tokio::time::timeout(LOG_DRAIN, publishing).await.is_err() {
            tracing::warn!(run = %record.id, "gave up storing the run's last log lines");
        }
        let mut ending = match result {
            None if unplugged_during => {
                Ending::without_report(RunVerdict::Error, "", wall(started))
            }
            None if lost.is_cancelled() => Ending::without_report(
                RunVerdict::Error,
                "the run lost its device lease (taken, or not renewable for a whole lease TTL) \
                 and was stopped",
                wall(started),
            ),
            None => Ending::without_report(RunVerdict::Cancelled, "cancelled", wall(started)),
            Some(Ok(invocation)) => Ending {
                verdict: invocation.output.verdict.into(),
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
        (ending, unplugged_during)
    }
}

fn wall(started: Instant) -> Metering {
    Metering {
        wall_us: started.elapsed().as_micros() as u64,
        ..Metering::default()
    }
}
