//! `sandbus dev run` and `sandbus dev replay`: guests run locally with no bus (in-memory kv,
//! published messages printed), for the edit-run loop. A script's log is printed live and its
//! verdict is the exit code; a replay feeds a listener CloudEvents and prints each outcome.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use sandbus::component_config::ComponentConfig;
use sandbus::dev::{self, Delivery, DevHost};
use sandbus::devices::{self, DeviceSelector};
use sandbus::grant::{ComponentPolicy, ManifestGrants};
use sandbus::imports::bus::OutboundMessage;
use sandbus::imports::log::{LogLine, LogSink};
use sandbus::imports::usb::LeasedDevice;
use sandbus::sandbox::{ComponentSpec, HandlerOutcome, Report, SandboxConfig, World};
use tokio_util::sync::CancellationToken;

use super::output::{self, EXIT_DID_NOT_FINISH, EXIT_FAIL, EXIT_OK, outln};

/// The `dev` subcommands.
#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Run a test script and print its log live, then its report. The exit code reflects
    /// the verdict: 0 pass, 1 fail, 3 error, 4 did not finish.
    Run {
        /// The script component.
        script: PathBuf,
        /// An argument for the script, NAME=VALUE (repeatable).
        #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = dev::parse_arg)]
        args: Vec<(String, String)>,
        /// The USB device the script gets, held for the run and reset after it:
        /// VID:PID (hex), serial=SERIAL, id=ID, or VID:PID,serial=SERIAL.
        #[arg(long, value_name = "SELECTOR")]
        device: Option<DeviceSelector>,
        /// Use simulated devices described in this file (see `sandbus::devices::simulated`)
        /// instead of real USB.
        #[arg(long, value_name = "DEVICES_TOML", requires = "device")]
        simulate: Option<PathBuf>,
        #[command(flatten)]
        component: ComponentArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Print JSON lines (log lines, then the report) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Feed CloudEvents (JSON lines) to a listener; print each outcome, what it published,
    /// and the final kv contents. Exit code 1 if any event was not acknowledged.
    Replay {
        /// The listener component.
        listener: PathBuf,
        /// CloudEvents, one JSON object per line.
        events: PathBuf,
        /// Deliveries per event: an event not acknowledged is redelivered at once until
        /// this many deliveries were made.
        #[arg(long, default_value_t = 1)]
        max_deliver: u32,
        #[command(flatten)]
        component: ComponentArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Print JSON lines (one per delivery, then a summary with the kv contents).
        #[arg(long)]
        json: bool,
    },
}

/// The policy a component runs under.
#[derive(Args, Debug)]
pub struct ComponentArgs {
    /// The component's name (its kv namespace); defaults to the file name without extension.
    #[arg(long)]
    name: Option<String>,
    /// Grant, repeatable: publish=SUBJECT (NATS wildcards allowed, e.g.
    /// publish=events.billing.>), or kv-read=COMPONENT to read that component's kv space.
    #[arg(long = "grant", value_name = "publish=SUBJECT|kv-read=COMPONENT")]
    grants: Vec<String>,
    /// Limit, as NAME=VALUE: memory=64MiB, timeout=2s, fuel=N, instances=N, log=1MiB,
    /// publish-budget=1 (per call), publish-rate=100/s, payload=1MiB.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// A value the component reads through wasi:config/store, KEY=VALUE, repeatable (what
    /// `sandbus upload --config` records).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

/// Sandbox-wide settings.
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Allocate instance memory on demand instead of from the pooling allocator.
    #[arg(long)]
    no_pooling: bool,
    /// Meter fuel (reported per call; enables `--limit fuel=N`).
    #[arg(long)]
    fuel: bool,
    /// Where compiled components are cached [default: $XDG_CACHE_HOME/sandbus/compiled or
    /// ~/.cache/sandbus/compiled]. Must be private to this user.
    #[arg(long, env = "SANDBUS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not use the compile cache.
    #[arg(long)]
    no_cache: bool,
}

impl SandboxArgs {
    fn config(&self) -> SandboxConfig {
        SandboxConfig {
            pooling: !self.no_pooling,
            fuel: self.fuel,
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(default_cache_dir)
            },
            ..SandboxConfig::default()
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sandbus").join("compiled"))
}

impl ComponentArgs {
    fn spec(&self, file: &Path, world: World) -> anyhow::Result<ComponentSpec> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => file
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_owned)
                .context("cannot derive a component name from the file name; pass --name")?,
        };
        let grants = ManifestGrants::parse(&self.grants)?;
        let policy =
            ComponentPolicy::check(&name, world, &grants.publish, &grants.kv_read, &self.limits)?;
        let config = ComponentConfig::from_settings(&self.config).context("--config")?;
        Ok(ComponentSpec {
            name,
            expect: Some(world),
            grants: policy.publish,
            kv_read: policy.kv_read,
            limits: policy.limits,
            config,
        })
    }
}

/// Runs a `dev` subcommand; its exit code.
pub async fn run(command: DevCommand) -> anyhow::Result<u8> {
    match command {
        DevCommand::Run {
            script,
            args,
            device,
            simulate,
            component,
            sandbox,
            json,
        } => {
            let device = DevDevice { device, simulate };
            dev_run(&script, args, &device, &component, &sandbox, json).await
        }
        DevCommand::Replay {
            listener,
            events,
            max_deliver,
            component,
            sandbox,
            json,
        } => dev_replay(&listener, &events, max_deliver, &component, &sandbox, json).await,
    }
}

/// Prints log lines as they arrive: text on stdout, or JSON lines.
struct PrintLog {
    json: bool,
}

impl LogSink for PrintLog {
    fn line(&self, line: &LogLine) {
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "type": "log", "line": line })
            )
        } else {
            // Guest text is untrusted: escape control characters so it can't move the
            // cursor, recolour the terminal or forge lines of its own.
            let message: String = line
                .message
                .chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            writeln!(out, "  {:<5} {message}", line.level.as_str())
        };
    }
}

/// The device a `dev run` asked for, and where to find it.
struct DevDevice {
    device: Option<DeviceSelector>,
    simulate: Option<PathBuf>,
}

impl DevDevice {
    /// Finds the selected device (none when no selector was given). Bad input (an unreadable
    /// device file, no matching device) is an error before anything runs.
    async fn find(&self) -> anyhow::Result<Option<LeasedDevice>> {
        let Some(selector) = &self.device else {
            return Ok(None);
        };
        let backend =
            devices::backend(self.simulate.as_deref(), true).map_err(|e| anyhow::anyhow!("{e}"))?;
        let scanning = backend.clone();
        let found = tokio::task::spawn_blocking(move || scanning.scan())
            .await
            .context("the device scan failed")?
            .context("cannot list devices")?;
        let Some(info) = found.iter().find(|d| selector.matches(d)).cloned() else {
            let why = backend
                .unavailable()
                .map(|why| format!(" ({} backend: {why})", backend.name()))
                .unwrap_or_default();
            let seen: Vec<String> = found
                .iter()
                .map(|d| format!("{} {}", d.id, d.vid_pid()))
                .collect();
            bail!(
                "no device matches `{selector}`{why}; devices here: {}",
                output::joined_or_none(&seen)
            );
        };
        Ok(Some(LeasedDevice {
            info,
            backend,
            own_thread: None,
        }))
    }
}

async fn dev_run(
    file: &Path,
    args: Vec<(String, String)>,
    device: &DevDevice,
    component: &ComponentArgs,
    sandbox: &SandboxArgs,
    json: bool,
) -> anyhow::Result<u8> {
    let spec = component.spec(file, World::Script)?;
    let leased = device.find().await?;
    let host = DevHost::new(sandbox.config())?;
    let script = host.load(file, spec)?;
    let mut caps = host.capabilities(Arc::new(PrintLog { json }));
    // As in the daemon's lab: the script runs on a thread of its own, where its transfers
    // block directly. Nothing stops it early; its deadline ends it.
    caps.usb = leased.clone().map(|leased| LeasedDevice {
        own_thread: Some(CancellationToken::new()),
        ..leased
    });
    if !json {
        outln!("running {} ({})", script.name(), script.digest());
        if let Some(leased) = &leased {
            outln!(
                "device {} {} ({} backend)",
                leased.info.id,
                leased.info.vid_pid(),
                leased.backend.name()
            );
        }
    }
    let runtime = tokio::runtime::Handle::current();
    // The thread ends with the script, and drops its hold on the device (`caps`).
    let result =
        tokio::task::spawn_blocking(move || runtime.block_on(script.run(args, &caps))).await;
    if let Some(leased) = leased {
        let id = leased.info.id.clone();
        let reset =
            tokio::task::spawn_blocking(move || devices::reset_after_run(&*leased.backend, &id))
                .await;
        match reset {
            Ok(Ok(())) if !json => outln!("device reset"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not reset the device: {e}"),
            Err(e) => eprintln!("warning: could not reset the device: {e}"),
        }
    }
    let result = result.context("the script's thread failed")?;
    let published = host.publisher.take();
    match result {
        Ok(invocation) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "type": "report", "invocation": invocation, "published": published })
                );
            } else {
                print_published(&published);
                print_report(&invocation.output);
                outln!("{}", output::metering_line(&invocation.metering));
            }
            Ok(output::script_exit_code(invocation.output.verdict))
        }
        Err(e) => {
            if json {
                outln!("{}", serde_json::json!({ "type": "failed", "error": e }));
            } else {
                outln!("did not finish: {e}");
            }
            Ok(EXIT_DID_NOT_FINISH)
        }
    }
}

fn print_report(report: &Report) {
    outln!("report: {:?}", report.verdict);
    output::print_steps(&report.steps, str::to_owned);
    outln!("summary: {}", report.summary);
}

fn print_published(published: &[OutboundMessage]) {
    for m in published {
        outln!(
            "  published {} {}",
            m.subject,
            String::from_utf8_lossy(&m.payload)
        );
    }
}

async fn dev_replay(
    file: &Path,
    events_file: &Path,
    max_deliver: u32,
    component: &ComponentArgs,
    sandbox: &SandboxArgs,
    json: bool,
) -> anyhow::Result<u8> {
    let spec = component.spec(file, World::Listener)?;
    let text = std::fs::read_to_string(events_file)
        .with_context(|| format!("failed to read {}", events_file.display()))?;
    let events = match dev::read_events(&text) {
        Ok(events) => events,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            bail!(
                "{} has {} invalid event line(s); nothing was replayed:\n{}",
                events_file.display(),
                errors.len(),
                list.join("\n")
            );
        }
    };
    let host = DevHost::new(sandbox.config())?;
    let namespace = spec.name.clone();
    let listener = host.load(file, spec)?;
    let total = events.len();
    let deliveries = dev::replay(
        &host,
        &listener,
        events,
        max_deliver,
        Arc::new(PrintLog { json }),
        |d| print_delivery(d, total, json),
    )
    .await;
    let kv = host.kv.snapshot(&namespace);
    let acked = deliveries.iter().filter(|d| d.acked()).count();
    let unacked = total - acked;
    if json {
        let kv: serde_json::Map<String, serde_json::Value> = kv
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({ "type": "summary", "events": total, "acked": acked,
                "not_acked": unacked, "deliveries": deliveries.len(), "kv": kv })
        );
    } else {
        outln!("kv ({namespace}):");
        for (k, v) in &kv {
            outln!("  {k} = {}", String::from_utf8_lossy(v));
        }
        outln!(
            "{total} events, {} deliveries: {acked} acknowledged, {unacked} not acknowledged",
            deliveries.len()
        );
    }
    Ok(if unacked == 0 { EXIT_OK } else { EXIT_FAIL })
}

fn print_delivery(d: &Delivery, total: usize, json: bool) {
    if json {
        let result = match &d.result {
            Ok(inv) => serde_json::json!({ "invocation": inv }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        outln!(
            "{}",
            serde_json::json!({ "type": "delivery", "line": d.line, "event_id": d.event_id,
                "event_type": d.event_type, "attempt": d.attempt, "result": result,
                "published": d.published })
        );
        return;
    }
    let what = match &d.result {
        Ok(inv) => match &inv.output {
            HandlerOutcome::Ok => "ok".to_owned(),
            HandlerOutcome::Retry { delay: Some(delay) } => {
                format!("retry after {} ms", delay.as_millis())
            }
            HandlerOutcome::Retry { delay: None } => "retry".to_owned(),
            HandlerOutcome::Reject { reason } => format!("reject: {reason}"),
        },
        Err(e) => format!("failed: {e}"),
    };
    let wall = match &d.result {
        Ok(inv) => inv.metering.wall_us,
        Err(e) => e.metering.wall_us,
    };
    outln!(
        "line {} of {total}: {} {} (attempt {}) -> {what} [{:.2} ms]",
        d.line,
        d.event_type,
        d.event_id,
        d.attempt,
        wall as f64 / 1000.0
    );
    print_published(&d.published);
}
