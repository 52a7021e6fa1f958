//! `sandbus daemon` and `sandbus up`: run the daemon in the foreground until SIGINT or
//! SIGTERM, then shut down gracefully and exit 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use sandbus::daemon::Daemon;
use sandbus::daemon::config::{self, ConfigFile};
use sandbus::daemon::up::{self, LocalNats};

use super::nats_settings::{self, NatsArgs, SelectedContext};
use super::output::{EXIT_OK, outln};

/// Flags of `daemon` and `up` (over the config file).
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long, value_name = "FILE", env = "SANDBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Stable id of this host [default: generated once, kept in the data directory].
    #[arg(long, env = "SANDBUS_HOST_ID")]
    host_id: Option<String>,
    /// Where the host id, the compile cache and (for `up`) the NATS store live
    /// [default: $SANDBUS_DATA_DIR, $XDG_DATA_HOME/sandbus or ~/.local/share/sandbus].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Allocate instance memory on demand instead of from the pooling allocator.
    #[arg(long)]
    no_pooling: bool,
    /// Meter fuel (enables `--limit fuel=N` on components).
    #[arg(long)]
    fuel: bool,
    /// Do not cache compiled components on disk.
    #[arg(long)]
    no_cache: bool,
    /// Where compiled components are cached [default: <data-dir>/cache].
    #[arg(long, value_name = "DIR", env = "SANDBUS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// How long events in flight may finish after SIGINT/SIGTERM before they are handed back.
    #[arg(long, value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// How long a listener with nothing to do keeps its consumer before it is idle (no
    /// consumer until its next event) [default: 60s; 0s: never].
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_after: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", env = "SANDBUS_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Use simulated USB devices described in this TOML file instead of real USB.
    #[arg(long, value_name = "DEVICES_TOML", env = "SANDBUS_SIMULATE")]
    simulate: Option<PathBuf>,
    /// Find USB arrivals and departures by polling only, without libusb's hotplug events.
    #[arg(long, env = "SANDBUS_NO_HOTPLUG")]
    no_hotplug: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Last: the help heading of the NATS flags holds for what follows.
    #[command(flatten)]
    nats: NatsArgs,
}

impl DaemonArgs {
    /// The server the flags name, if any (for the tests of the flags' placement).
    #[cfg(test)]
    pub fn nats_url(&self) -> Option<String> {
        self.nats.url.clone()
    }

    /// The configuration: the file (if any) with the flags over it.
    fn config(&self) -> anyhow::Result<ConfigFile> {
        let mut config = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        // The daemon reads a nats context only when one is named: a service does not follow
        // the context a user selected.
        let nats = self.nats.settings(SelectedContext::Ignore)?;
        config.nats = nats_settings::over(nats, config.nats);
        if let Some(id) = &self.host_id {
            config.host.id = Some(id.clone());
        }
        if let Some(dir) = &self.data_dir {
            config.host.data_dir = Some(dir.clone());
        }
        if self.no_pooling {
            config.sandbox.pooling = false;
        }
        if self.fuel {
            config.sandbox.fuel = true;
        }
        if self.no_cache {
            config.sandbox.cache = false;
        }
        if let Some(dir) = &self.cache_dir {
            config.sandbox.cache_dir = Some(dir.clone());
        }
        if let Some(grace) = self.shutdown_grace {
            config.listeners.shutdown_grace = grace;
        }
        if let Some(idle_after) = self.idle_after {
            config.listeners.idle_after = idle_after;
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics.listen = Some(addr);
        }
        if let Some(file) = &self.simulate {
            config.devices.simulate = Some(file.clone());
        }
        if self.no_hotplug {
            config.devices.hotplug = false;
        }
        config
            .check()
            .map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
        Ok(config)
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. A second one exits at once (code 130),
/// for when a graceful stop takes too long (for example while NATS is unreachable).
fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: stopping (again to exit at once)"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping (again to exit at once)"),
        }
        token.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: exiting without finishing the graceful stop");
        std::process::exit(130);
    });
    Ok(stop)
}

/// `sandbus daemon`.
pub async fn daemon(args: &DaemonArgs) -> anyhow::Result<u8> {
    let config = args.config()?;
    if args.check_config {
        outln!("configuration is valid (NATS at {})", config.nats.url());
        return Ok(EXIT_OK);
    }
    let stop = stop_on_signal()?;
    Daemon::new(config)?.run(stop).await?;
    Ok(EXIT_OK)
}

/// `sandbus up`: the daemon, with a private nats-server when none is configured or running.
pub async fn up(args: &DaemonArgs) -> anyhow::Result<u8> {
    let mut config = args.config()?;
    if args.check_config {
        outln!("configuration is valid");
        return Ok(EXIT_OK);
    }
    let stop = stop_on_signal()?;
    let mut local = None;
    if config.nats.url.is_none() {
        if up::answers(up::LOCAL_ADDR).await {
            tracing::info!(
                addr = up::LOCAL_ADDR,
                "a NATS server is already running; using it"
            );
        } else {
            let data_dir = config
                .host
                .data_dir
                .clone()
                .unwrap_or_else(config::default_data_dir);
            let server = LocalNats::start(&data_dir).await?;
            config.nats.url = Some(server.url().to_owned());
            local = Some(server);
        }
    }
    let result = Daemon::new(config)?.run(stop).await;
    if let Some(mut server) = local {
        server.stop().await;
    }
    result?;
    Ok(EXIT_OK)
}
