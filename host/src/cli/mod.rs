//! Command-line interface: argument parsing and printing. The work happens in the library;
//! this edge turns errors into messages (`anyhow`) and outcomes into exit codes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sandbus::dev::{self, Delivery, DevHost};
use sandbus::devices::{self, DeviceSelector};
use sandbus::grant::{ComponentPolicy, ManifestGrants};
use sandbus::imports::log::{LogLine, LogSink};
use sandbus::imports::usb::LeasedDevice;
use sandbus::sandbox::{
    self, ComponentSpec, HandlerOutcome, Report, SandboxConfig, StepOutcome, Verdict, World,
};

/// `println!` that never panics: once stdout is closed (`sandbus inspect x | head`), output
/// is dropped and the command still finishes with its exit code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}

pub(crate) use outln;

mod client;
mod compile_worker;
mod daemon;
mod hook;
mod kv;
mod permissions;

/// Success; a script passed.
pub const EXIT_OK: u8 = 0;
/// A script reported `fail`, or a replayed event was not acknowledged.
pub const EXIT_FAIL: u8 = 1;
/// Bad input or usage; nothing ran.
pub const EXIT_USAGE: u8 = 2;
/// A script reported `error`.
pub const EXIT_SCRIPT_ERROR: u8 = 3;
/// The guest did not finish: timeout, trap, panic, memory limit...
pub const EXIT_DID_NOT_FINISH: u8 = 4;

/// Run untrusted WebAssembly components next to real hardware, wired to NATS.
#[derive(Parser, Debug)]
#[command(name = "sandbus", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Host log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SANDBUS_LOG_FORMAT")]
    log_format: LogFormat,
    /// Host log filter (tracing `EnvFilter` syntax), e.g. `info` or `sandbus=debug`. Guest
    /// log lines are under `sandbus::guest`. Default: `info` for `daemon` and `up`;
    /// `warn,sandbus::guest=off,sandbus::sandbox=error` for the others (the dev commands
    /// print guest logs themselves).
    #[arg(long, global = true, env = "SANDBUS_LOG")]
    log: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum WorldArg {
    Listener,
    Script,
    Hook,
}

impl From<WorldArg> for World {
    fn from(w: WorldArg) -> Self {
        match w {
            WorldArg::Listener => World::Listener,
            WorldArg::Script => World::Script,
            WorldArg::Hook => World::Hook,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run guests locally, with no bus: in-memory kv, published messages printed.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run the daemon: connect to NATS, load components, run listeners, serve the control
    /// API. Stops gracefully on SIGINT/SIGTERM.
    Daemon(daemon::DaemonArgs),
    /// Run the daemon, starting a private nats-server (with JetStream, in the data directory)
    /// when none is configured and nothing answers on 127.0.0.1:4222.
    Up(daemon::DaemonArgs),
    /// Upload a component: validate it, store its bytes, record a new manifest version.
    Upload {
        /// The component file.
        file: PathBuf,
        /// The name to record it under.
        #[arg(long)]
        name: String,
        /// The role it must have (refused otherwise); by default whatever it is.
        #[arg(long, value_enum)]
        world: Option<WorldArg>,
        /// Grant, repeatable: publish=SUBJECT (NATS wildcards allowed) to publish there,
        /// kv-read=COMPONENT to read that component's key-value space.
        #[arg(long = "grant", value_name = "publish=SUBJECT|kv-read=COMPONENT")]
        grants: Vec<String>,
        /// Limit, as NAME=VALUE (memory=64MiB, timeout=2s, ...), repeatable.
        #[arg(long = "limit", value_name = "NAME=VALUE")]
        limits: Vec<String>,
        /// Return at once; the result comes as a sandbus.request.finished event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// List the components.
    Ls {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Remove a component (refused while it is subscribed).
    Rm {
        /// The component.
        name: String,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Point a component back at the content it had before its current one (a new version).
    Rollback {
        /// The component.
        name: String,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Subscribe a listener to event types; creates its durable consumer. Again on a
    /// subscribed listener: changes the subscription.
    Subscribe {
        /// The listener (an uploaded component).
        name: String,
        /// Event type pattern, e.g. 'vm.*' or 'device.>' (repeatable).
        #[arg(long = "events", value_name = "PATTERN", required = true)]
        events: Vec<String>,
        /// Events handled at once (per host; the consumer caps unacked events at this too).
        #[arg(long)]
        max_in_flight: Option<u32>,
        /// Deliveries before an event is dead-lettered.
        #[arg(long)]
        max_deliver: Option<u32>,
        /// Delays between retries, e.g. 1s,5s,30s (the last repeats).
        #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
        backoff: Option<Vec<std::time::Duration>>,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Unsubscribe a listener: deletes its consumer (pending events for it are dropped).
    Unsubscribe {
        /// The listener.
        name: String,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// A listener's status (pending, in flight, redelivered, dead-lettered, last error), or
    /// every listener's.
    Status {
        /// The listener; all when absent.
        name: Option<String>,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Publish a canonical event (or a JSON Lines file of them) through the daemon.
    Publish {
        /// The event type, e.g. vm.started.
        #[arg(required_unless_present = "file")]
        r#type: Option<String>,
        /// The event data, JSON.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        data: Option<String>,
        /// The event id [default: random]. Publishing an id again within the stream's
        /// duplicate window adds nothing.
        #[arg(long, conflicts_with = "file")]
        id: Option<String>,
        /// The event source [default: /sandbus/cli].
        #[arg(long, conflicts_with = "file")]
        source: Option<String>,
        /// The event subject (what it is about).
        #[arg(long, conflicts_with = "file")]
        subject: Option<String>,
        /// Publish every CloudEvent of this JSON Lines file instead. A lost reply is retried
        /// (the stream keeps an id once), so a daemon that dies mid-file costs a retry on
        /// another; if no daemon takes an event within --reply-timeout, the command stops
        /// and says which line to resume from.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With --file: start at this line (1-based), skipping the lines before it.
        #[arg(long, value_name = "LINE", requires = "file", default_value_t = 1)]
        from_line: usize,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Print canonical events: stored ones, and with --follow new ones as they come.
    Events {
        /// Event type pattern [default: every event].
        #[arg(default_value = ">")]
        pattern: String,
        /// Keep printing new events (only new ones, unless --all).
        #[arg(long)]
        follow: bool,
        /// With --follow, print the stored events first.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// List the live hosts.
    Hosts {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// List every live host's USB devices: vendor:product, serial, location, and whether
    /// each is free, leased (by which run) or offline.
    Devices {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Run a test script on a device, on the host that has it. Prints the run id and returns;
    /// with --follow, streams the log and ends with the report (exit code: 0 pass, 1 fail,
    /// 3 error, 4 timeout or cancelled).
    Run {
        /// The script's component name (as uploaded).
        script: String,
        /// Which device: VID:PID (any device of that kind, hex), serial=SERIAL, id=ID, or
        /// VID:PID,serial=SERIAL.
        #[arg(long, value_name = "SELECTOR")]
        device: DeviceSelector,
        /// An argument for the script, NAME=VALUE (repeatable).
        #[arg(long = "arg", value_name = "NAME=VALUE", value_parser = dev::parse_arg)]
        args: Vec<(String, String)>,
        /// The run's deadline, once it has the device.
        #[arg(long = "timeout", value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        run_timeout: std::time::Duration,
        /// How long the run may wait for a busy device.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        queue_timeout: std::time::Duration,
        /// Stream the log live and end with the report.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// List script runs, newest first.
    Runs {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Print a run's log (and its report once finished); --follow waits for the report.
    Logs {
        /// The run id.
        run: String,
        /// Keep printing until the run's report.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Cancel a queued or running run: its device is reset and released.
    Cancel {
        /// The run id.
        run: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Extension points: register hooks (components of world `hook`) that allow or deny
    /// proposed operations, set each point's failure policy and deadline, ask a point.
    #[command(subcommand)]
    Hook(hook::HookCommand),
    /// Read and write components' key-value spaces (a billing listener's totals, a quota
    /// hook's limits).
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Print the NATS permissions of sandbus's roles (viewer, publisher, operator, daemon),
    /// ready for a nats-server configuration.
    Permissions(permissions::PermissionsArgs),
    /// Describe a component file: its world, imports, exports, size and digest.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile one component from stdin to stdout under limits (started by the daemon).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker(compile_worker::CompileWorkerArgs),
}

#[derive(Subcommand, Debug)]
enum DevCommand {
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
struct ComponentArgs {
    /// The component's name (its kv namespace); defaults to the file name without extension.
    #[arg(long)]
    name: Option<String>,
    /// Grant, repeatable: publish=SUBJECT (NATS wildcards allowed, e.g.
    /// publish=events.billing.>), or kv-read=COMPONENT to read that component's kv space.
    #[arg(long = "grant", value_name = "publish=SUBJECT|kv-read=COMPONENT")]
    grants: Vec<String>,
    /// Limit, as NAME=VALUE: memory=64MiB, timeout=2s, fuel=N, instances=N, log=1MiB,
    /// publish-rate=100/s, payload=1MiB.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
}

/// Sandbox-wide settings.
#[derive(Args, Debug)]
struct SandboxArgs {
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
        Ok(ComponentSpec {
            name,
            expect: Some(world),
            grants: policy.publish,
            kv_read: policy.kv_read,
            limits: policy.limits,
        })
    }
}

/// Sets up host logging on stderr.
pub fn init_tracing(cli: &Cli) -> anyhow::Result<()> {
    let args = &cli.global;
    let default = match cli.command {
        Command::Daemon(_) | Command::Up(_) => "info",
        _ => "warn,sandbus::guest=off,sandbus::sandbox=error",
    };
    let log = args.log.as_deref().unwrap_or(default);
    let filter = tracing_subscriber::EnvFilter::try_new(log).map_err(|e| {
        anyhow::anyhow!("invalid --log filter `{log}`: {e}; use e.g. `info` or `sandbus=debug`")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs a command that must not start an async runtime or log subscriber (the compile
/// worker, which limits its own memory); `None` for every other command.
pub fn run_without_runtime(cli: &Cli) -> Option<u8> {
    match &cli.command {
        Command::CompileWorker(args) => Some(compile_worker::run(args)),
        _ => None,
    }
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::CompileWorker(args) => Ok(compile_worker::run(&args)),
        Command::Daemon(args) => daemon::daemon(&args).await,
        Command::Up(args) => daemon::up(&args).await,
        Command::Upload {
            file,
            name,
            world,
            grants,
            limits,
            cast,
            client,
        } => {
            client::upload(
                &client,
                &file,
                name,
                world.map(World::from),
                &grants,
                limits,
                cast,
            )
            .await
        }
        Command::Ls { client } => Ok(client::list(&client).await),
        Command::Rm { name, cast, client } => {
            Ok(client::name_command(&client, sandbus::api::endpoint::REMOVE, name, cast).await)
        }
        Command::Rollback { name, cast, client } => {
            Ok(client::name_command(&client, sandbus::api::endpoint::ROLLBACK, name, cast).await)
        }
        Command::Unsubscribe { name, cast, client } => {
            Ok(
                client::name_command(&client, sandbus::api::endpoint::UNSUBSCRIBE, name, cast)
                    .await,
            )
        }
        Command::Subscribe {
            name,
            events,
            max_in_flight,
            max_deliver,
            backoff,
            cast,
            client,
        } => {
            let request = sandbus::api::SubscribeRequest {
                name,
                events,
                max_in_flight,
                max_deliver,
                backoff_ms: backoff.map(|b| b.iter().map(|d| d.as_millis() as u64).collect()),
                cast,
            };
            Ok(client::subscribe(&client, request).await)
        }
        Command::Status { name, client } => Ok(client::status(&client, name).await),
        Command::Hosts { client } => Ok(client::hosts(&client).await),
        Command::Devices { client } => Ok(client::devices(&client).await),
        Command::Run {
            script,
            device,
            args,
            run_timeout,
            queue_timeout,
            follow,
            client,
        } => {
            let run = client::RunArgs {
                script,
                selector: device,
                args,
                timeout: run_timeout,
                queue_timeout,
                follow,
            };
            Ok(client::run(&client, run).await)
        }
        Command::Runs { client } => Ok(client::runs(&client).await),
        Command::Logs {
            run,
            follow,
            client,
        } => Ok(client::logs(&client, &run, follow).await),
        Command::Cancel { run, client } => Ok(client::cancel(&client, &run).await),
        Command::Hook(command) => Ok(hook::run(command).await),
        Command::Kv(command) => Ok(kv::run(command).await),
        Command::Publish {
            r#type,
            data,
            id,
            source,
            subject,
            file,
            from_line,
            cast,
            client,
        } => {
            let events = match (&file, r#type, data) {
                (Some(path), _, _) => client::read_event_file(path).map(|events| {
                    events
                        .into_iter()
                        .filter(|(line, _)| *line >= from_line)
                        .collect()
                }),
                (None, Some(ty), Some(data)) => {
                    client::event_from_flags(&ty, &data, id, source, subject).map(|e| vec![(1, e)])
                }
                _ => Err(sandbus::api::ApiError::bad_request(
                    "give TYPE and --data, or --file FILE",
                )),
            };
            match events {
                Ok(events) => Ok(client::publish(&client, events, file.as_deref(), cast).await),
                Err(e) => Ok(client::fail(&e, client.json)),
            }
        }
        Command::Events {
            pattern,
            follow,
            all,
            client,
        } => Ok(client::events(&client, &pattern, follow, all).await),
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Permissions(args) => Ok(permissions::run(&args)),
        Command::Dev(DevCommand::Run {
            script,
            args,
            device,
            simulate,
            component,
            sandbox,
            json,
        }) => {
            let device = DevDevice { device, simulate };
            dev_run(&script, args, &device, &component, &sandbox, json).await
        }
        Command::Dev(DevCommand::Replay {
            listener,
            events,
            max_deliver,
            component,
            sandbox,
            json,
        }) => dev_replay(&listener, &events, max_deliver, &component, &sandbox, json).await,
    }
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<u8> {
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let info = sandbox::inspect(&bytes).with_context(|| format!("{}", file.display()))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let world = info.world.map_or("none", World::as_str);
        outln!("file:    {}", file.display());
        outln!("world:   {world}");
        outln!("size:    {} bytes", info.size);
        outln!("digest:  {}", info.digest);
        outln!("exports:");
        for e in &info.exports {
            outln!("  {e}");
        }
        outln!("imports:");
        for i in &info.imports {
            outln!("  {i}");
        }
        if let Some(problem) = &info.problem {
            outln!("problem: {problem}");
        }
    }
    Ok(if info.problem.is_some() {
        EXIT_FAIL
    } else {
        EXIT_OK
    })
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
            devices::backend(self.simulate.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
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
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            );
        };
        Ok(Some(LeasedDevice { info, backend }))
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
    caps.usb = leased.clone();
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
    let result = script.run(args, &caps).await;
    if let Some(leased) = leased {
        // Drop our hold on the device before resetting it.
        drop(caps);
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
                outln!(
                    "metering: {:.1} ms wall, {} KiB peak memory{}",
                    invocation.metering.wall_us as f64 / 1000.0,
                    invocation.metering.peak_memory / 1024,
                    invocation
                        .metering
                        .fuel
                        .map(|f| format!(", {f} fuel"))
                        .unwrap_or_default()
                );
            }
            Ok(match invocation.output.verdict {
                Verdict::Pass => EXIT_OK,
                Verdict::Fail => EXIT_FAIL,
                Verdict::Error => EXIT_SCRIPT_ERROR,
            })
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
    for step in &report.steps {
        let mark = match step.outcome {
            StepOutcome::Passed => "pass",
            StepOutcome::Failed => "FAIL",
            StepOutcome::Skipped => "skip",
        };
        let detail = step
            .detail
            .as_deref()
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        outln!(
            "  [{mark}] {:<28} {:>6} ms{detail}",
            step.name,
            step.duration_ms
        );
    }
    outln!("summary: {}", report.summary);
}

fn print_published(published: &[sandbus::imports::bus::OutboundMessage]) {
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
