//! The daemon: the bus wired to the sandbox.
//!
//! [`Daemon::run`] connects to NATS (waiting for it, and reconnecting forever), sets up the
//! JetStream layout if it is missing, and then runs, until its stop token is cancelled:
//!
//! - a watch on the component manifests that loads, hot-swaps and unloads components
//!   ([`LoadedComponents`]);
//! - a watch on the subscriptions that starts and stops one [`ListenerDispatcher`] per
//!   subscribed listener;
//! - the control API ([`ControlApi`]);
//! - a presence heartbeat in the hosts bucket;
//! - the [`DeviceLab`]: this host's USB devices (real, or simulated with `--simulate`),
//!   their leases, and the script runs on them.
//!
//! The dispatchers, the lab and the hook dispatcher all run this host's components: what
//! they share to do so (host id, loaded components, base capabilities, metrics, metering)
//! is one [`HostContext`], built here once.
//!
//! Stopping is graceful: the API stops answering, dispatchers stop pulling and let calls in
//! flight finish within the grace period (the rest are naked), `sandbus.host.stopped` is
//! emitted and the presence entry removed.

mod components;
pub mod config;
mod context;
mod control;
mod dispatcher;
pub mod hooks;
pub mod host_events;
pub mod lab;
pub mod metering;
pub mod metrics;
mod roster;
pub mod up;
mod watches;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use components::{LoadedComponent, LoadedComponents};
pub use config::ConfigFile;
pub use context::{ComponentSource, HostContext};
pub use control::ControlApi;
pub use dispatcher::{
    BusFailures, DispatchContext, DispatcherHandle, ListenerDispatcher, ListenerFailures,
};
pub use hooks::HookDispatcher;
pub use lab::{DeviceLab, LabBus};
pub use metrics::Metrics;

use crate::bus::{
    self, BusError, BusErrorKind, BusLayout, DaemonBus, HostInfo, HostRegistry, NatsKv,
};
use crate::error::InvalidInput;
use crate::imports::log::DiscardLog;
use crate::sandbox::{Capabilities, CompileBudget, CompileMode, Sandbox, SandboxConfig};
use host_events::HostEvents;
use roster::ListenerRoster;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is unusable: which setting, and what is accepted.
    #[error("{0}")]
    Config(#[from] InvalidInput),
    /// The device backend could not start (a simulated device file that cannot be read).
    #[error("devices: {0}")]
    Devices(#[source] crate::devices::UsbError),
    /// The metrics endpoint could not be served on its address.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why (taken, not an address of this host...).
        source: std::io::Error,
    },
    /// The data directory or host id file could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox could not start.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::ConfigError),
    /// The bus could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The control API could not be registered on the bus.
    #[error("{0}")]
    Control(#[source] BusError),
}

/// A daemon, configured and ready to run.
pub struct Daemon {
    config: ConfigFile,
    data_dir: PathBuf,
}

impl Daemon {
    /// A daemon from a checked configuration.
    pub fn new(config: ConfigFile) -> Result<Self, DaemonError> {
        config.check()?;
        let data_dir = config
            .host
            .data_dir
            .clone()
            .unwrap_or_else(config::default_data_dir);
        Ok(Self { config, data_dir })
    }

    /// The host id: configured, or read from (or first written to) the data directory.
    pub fn host_id(&self) -> Result<String, DaemonError> {
        if let Some(id) = &self.config.host.id {
            return Ok(id.clone());
        }
        let path = self.data_dir.join("host-id");
        match std::fs::read_to_string(&path) {
            Ok(id) => {
                let id = id.trim().to_owned();
                config::validate_host_id(&id).map_err(|e| {
                    InvalidInput::new(e.kind, format!("{}: {}", path.display(), e.message))
                        .caused_by(e)
                })?;
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("host-{}", hex::encode(rand::random::<[u8; 6]>()));
                create_dir(&self.data_dir)?;
                std::fs::write(&path, format!("{id}\n")).map_err(|source| DaemonError::Io {
                    what: "cannot write the host id to",
                    path: path.clone(),
                    source,
                })?;
                Ok(id)
            }
            Err(source) => Err(DaemonError::Io {
                what: "cannot read the host id from",
                path,
                source,
            }),
        }
    }

    /// Runs until `stop` is cancelled, then shuts down gracefully.
    pub async fn run(self, stop: CancellationToken) -> Result<(), DaemonError> {
        let host_id = self.host_id()?;
        let started_at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        create_dir(&self.data_dir)?;
        let sandbox = Arc::new(Sandbox::new(SandboxConfig {
            pooling: self.config.sandbox.pooling,
            pool_instances: self.config.sandbox.pool_instances,
            fuel: self.config.sandbox.fuel,
            memory_budget: self
                .config
                .sandbox
                .memory_budget
                .map_or_else(crate::sandbox::default_memory_budget, |b| b.as_u64()),
            cache_dir: self.config.sandbox.cache.then(|| {
                self.config
                    .sandbox
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("cache"))
            }),
            compile: CompileMode::Worker(CompileBudget {
                exe: worker_exe()?,
                timeout: self.config.sandbox.compile_timeout,
                memory: self.config.sandbox.compile_memory.as_u64(),
                concurrency: self.config.sandbox.compile_concurrency,
            }),
            ..SandboxConfig::default()
        })?);
        tracing::info!(host = %host_id, url = self.config.nats.url(), "connecting to NATS");
        let bus = DaemonBus::connect(&self.config.nats).await?;
        let Some(layout) = self.set_up(&bus, &stop).await? else {
            return Ok(());
        };
        let BusLayout {
            events,
            store,
            subscriptions,
            kv,
            hosts,
            inventory,
            leases,
            runs,
            hook_points,
            uploads,
            publisher,
        } = layout;
        let backend = crate::devices::backend(
            self.config.devices.simulate.as_deref(),
            self.config.devices.hotplug,
        )
        .map_err(DaemonError::Devices)?;
        let host_events = HostEvents::new(&host_id, events.clone());
        let metrics = Arc::new(Metrics::default());
        let metering = Arc::new(metering::MeteringBatcher::default());
        // Bound before anything runs: a metrics address that is taken is a start-up error.
        let metrics_listener = match self.config.metrics.listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let kv = kv.with_cache_bytes(self.config.kv.cache_bytes.as_u64());
        // Quotas need every component's kv usage: count what is stored before any guest runs.
        let usage_stop = CancellationToken::new();
        tokio::spawn({
            let kv = kv.clone();
            let stop = usage_stop.clone();
            async move { kv.follow(stop).await }
        });
        if !kv.usage_ready(KV_USAGE_PATIENCE).await {
            tracing::warn!(
                "the guests' kv usage is not counted yet after {}s; quotas count what is seen \
                 so far until it is",
                KV_USAGE_PATIENCE.as_secs()
            );
        }
        let kv_for_metrics = kv.clone();
        let components = Arc::new(LoadedComponents::new(sandbox.clone(), store.clone()));
        // What every guest runner of this host shares: the dispatchers, the lab, the hooks.
        let host = HostContext {
            host_id: host_id.as_str().into(),
            components: components.clone(),
            capabilities: Capabilities {
                log: Arc::new(DiscardLog),
                publisher: Arc::new(publisher),
                kv: Arc::new(kv.clone()),
                usb: None,
            },
            metrics: metrics.clone(),
            metering: metering.clone(),
        };
        let (went_idle_tx, went_idle_rx) = tokio::sync::mpsc::unbounded_channel();
        let context = Arc::new(DispatchContext {
            host: host.clone(),
            deliveries: Arc::new(subscriptions.clone()),
            failures: Arc::new(BusFailures {
                subscriptions: subscriptions.clone(),
                events: events.clone(),
                host_events: host_events.clone(),
            }),
            grace: self.config.listeners.shutdown_grace,
            batch: self.config.listeners.batch,
            idle_after: self.config.listeners.idle_after(),
            went_idle: Some(went_idle_tx),
        });
        let roster = ListenerRoster::start(
            context.clone(),
            subscriptions.clone(),
            went_idle_rx,
            CancellationToken::new(),
        );
        let watchers = CancellationToken::new();
        let manifests_task = tokio::spawn(watches::watch_manifests(
            store.clone(),
            components.clone(),
            watchers.clone(),
        ));
        let subscriptions_task = tokio::spawn(watches::watch_subscriptions(
            subscriptions.clone(),
            roster.clone(),
            watchers.clone(),
        ));
        let lab = Arc::new(
            DeviceLab::new(
                host.clone(),
                host_events.clone(),
                backend,
                LabBus {
                    inventory: inventory.clone(),
                    leases,
                    runs: runs.clone(),
                    hosts: hosts.clone(),
                },
            )
            .scanning_every(self.config.devices.scan_every),
        );
        // Before the API answers: this host's devices are known and a previous life's
        // unfinished runs are finished, so nothing accepted now can be mistaken for one.
        lab.startup().await;
        let lab_stop = CancellationToken::new();
        let lab_task = tokio::spawn(lab.clone().run(lab_stop.clone()));
        let sandbox_for_metrics = sandbox.clone();
        let api = Arc::new(ControlApi {
            sandbox,
            components: components.clone(),
            store,
            subscriptions,
            events,
            hosts: hosts.clone(),
            host_events: host_events.clone(),
            lab,
            inventory,
            runs,
            metrics: metrics.clone(),
            hooks: Arc::new(HookDispatcher {
                points: hook_points,
                host: host.clone(),
                events: host_events.clone(),
            }),
            uploads,
            kv: host.capabilities.kv.clone(),
        });
        let metering_stop = CancellationToken::new();
        let metering_task = tokio::spawn(metering.clone().run(
            host_events.clone(),
            started_at.clone(),
            self.config.metering.window,
            metering_stop.clone(),
        ));
        let metrics_stop = CancellationToken::new();
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving metrics at /metrics");
            }
            tokio::spawn(metrics.clone().serve(listener, metrics_stop.clone()));
        }
        let api_stop = CancellationToken::new();
        let api_client = bus::connect_daemon_api(&self.config.nats).await?;
        let service = bus::ControlService::start(&api_client, api)
            .await
            .map_err(DaemonError::Control)?;
        // The API's connection is new: a round trip makes sure the server has its
        // subscriptions before this host says it is up.
        if let Err(e) = api_client.flush().await {
            tracing::warn!(error = %e, "the control API's connection is not flushed yet");
        }
        let api_task = tokio::spawn(service.run(api_stop.clone()));
        tokio::spawn(sample_sandbox(
            sandbox_for_metrics,
            kv_for_metrics.clone(),
            roster.clone(),
            metrics.clone(),
            metrics_stop.clone(),
        ));
        let presence_task = tokio::spawn(heartbeat(
            hosts.clone(),
            host_id.clone(),
            started_at.clone(),
            components.clone(),
            roster.clone(),
            watchers.clone(),
        ));
        host_events.host_started(&started_at).await;
        tracing::info!(host = %host_id, "daemon ready");

        stop.cancelled().await;
        tracing::info!(host = %host_id, "shutting down");
        // Every step below may wait on NATS; the whole stop is bounded so a daemon whose
        // server is gone still exits.
        let limit = self.config.listeners.shutdown_grace + SHUTDOWN_MARGIN;
        let shutdown = async {
            api_stop.cancel();
            metrics_stop.cancel();
            watchers.cancel();
            // Runs in progress are cancelled: their devices are reset, their leases released.
            lab_stop.cancel();
            let _ = lab_task.await;
            let _ = subscriptions_task.await;
            let _ = manifests_task.await;
            roster.stop_all().await;
            usage_stop.cancel();
            if let Err(e) = api_task.await {
                tracing::warn!(error = %e, "control API task failed");
            }
            let _ = presence_task.await;
            // Last: the usage of the calls that just finished.
            metering_stop.cancel();
            let _ = metering_task.await;
            host_events.host_stopped(&started_at).await;
            if let Err(e) = hosts.leave(&host_id).await {
                tracing::warn!(error = %e, "could not remove this host's presence entry");
            }
            if tokio::time::timeout(FINAL_FLUSH, bus.flush())
                .await
                .is_err()
            {
                tracing::warn!("NATS did not take the last messages within 5 s; exiting anyway");
            }
        };
        if tokio::time::timeout(limit, shutdown).await.is_err() {
            tracing::warn!(
                "the graceful stop took longer than {}; exiting anyway",
                humantime::format_duration(limit)
            );
        }
        let (kv_reads_from_copy, kv_reads_from_server) = kv_for_metrics.read_counts();
        tracing::info!(
            host = %host_id,
            kv_reads_from_copy,
            kv_reads_from_server,
            "stopped"
        );
        Ok(())
    }

    /// Creates or opens every stream and bucket; waits while JetStream is unavailable.
    /// `None` if stopped while waiting.
    async fn set_up(
        &self,
        bus: &DaemonBus,
        stop: &CancellationToken,
    ) -> Result<Option<BusLayout>, DaemonError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = bus.set_up(&self.config.events, self.config.kv.max_bytes);
            match attempt.await {
                Ok(layout) => return Ok(Some(layout)),
                Err(e) if e.kind == BusErrorKind::Unavailable => {
                    tracing::warn!(error = %e, "JetStream is not ready (is the server started with -js?); retrying");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Time a graceful stop may take beyond the shutdown grace (for the host events, the
/// presence entry and the last flush, each of which waits on NATS).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(15);

/// How long the last flush to NATS may take at shutdown (the server may be gone).
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// The program compile workers run: this very binary, so what a worker compiles was made by
/// the same code as the engine that loads it. On Linux that is `/proc/self/exe`, which names
/// the running binary even after an upgrade replaced the file on disk (the path it was
/// started from would then start another version); elsewhere, or without `/proc`, that path.
fn worker_exe() -> Result<PathBuf, DaemonError> {
    let running = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && running.exists() {
        return Ok(running.to_owned());
    }
    std::env::current_exe().map_err(|source| DaemonError::Io {
        what: "cannot find the daemon's own program (for its compile workers):",
        path: PathBuf::from("current_exe"),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(|source| DaemonError::Io {
        what: "cannot create the data directory",
        path: path.to_owned(),
        source,
    })
}

/// How long a starting daemon waits to count the guests' kv usage before it runs guests.
const KV_USAGE_PATIENCE: Duration = Duration::from_secs(30);

/// Copies the sandbox's memory budget figures and the kv copy's counts into the metrics
/// every second until `stop`.
async fn sample_sandbox(
    sandbox: Arc<Sandbox>,
    kv: NatsKv,
    roster: Arc<ListenerRoster>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let listeners = roster.count();
        metrics.set(
            "sandbus_listeners",
            &[("state", "active")],
            listeners.active as f64,
        );
        metrics.set(
            "sandbus_listeners",
            &[("state", "idle")],
            listeners.idle as f64,
        );
        let (from_copy, from_server) = kv.read_counts();
        metrics.set(
            "sandbus_kv_reads_total",
            &[("source", "copy")],
            from_copy as f64,
        );
        metrics.set(
            "sandbus_kv_reads_total",
            &[("source", "server")],
            from_server as f64,
        );
        metrics.set("sandbus_kv_copy_bytes", &[], kv.copy_bytes() as f64);
        let (reserved, peak) = sandbox.memory_reserved();
        metrics.set(
            "sandbus_memory_budget_bytes",
            &[],
            sandbox.config().memory_budget as f64,
        );
        metrics.set("sandbus_memory_reserved_bytes", &[], reserved as f64);
        metrics.set("sandbus_memory_reserved_peak_bytes", &[], peak as f64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// How long the heartbeat waits after a component change for the next ones, before it
/// beats with them all.
const CHANGES_GATHERED: Duration = Duration::from_millis(200);

/// Refreshes this host's presence entry every heartbeat until `stop`.
async fn heartbeat(
    hosts: HostRegistry,
    host_id: String,
    started_at: String,
    components: Arc<LoadedComponents>,
    roster: Arc<ListenerRoster>,
    stop: CancellationToken,
) {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut changes = components.changes();
    loop {
        let listeners = roster.listeners();
        let info = HostInfo {
            id: host_id.clone(),
            hostname: hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: started_at.clone(),
            seen_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            components: components.versions(),
            listeners,
            not_ready: components.not_ready(),
        };
        if let Err(e) = hosts.beat(&info).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        // Beat again soon when the loaded components change, so `sandbus hosts` shows what
        // runs where without waiting for the next heartbeat; the changes of a moment are
        // gathered into one beat (a restart loading thousands changes them thousands of
        // times, and each beat writes the whole record).
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(bus::HEARTBEAT) => {}
            _ = changes.changed() => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CHANGES_GATHERED) => {}
                }
                changes.borrow_and_update();
            }
        }
    }
}
