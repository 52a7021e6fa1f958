//! Command-line interface: argument parsing and dispatch. The work happens in the library;
//! each command's flags and body live in a file of its group (the wasmtime `commands/`
//! way), what they print in common in [`output`], how a client reaches the daemons in
//! [`connect`], and where the NATS settings come from (flags, environment, nats contexts) in
//! [`nats_settings`]. This edge turns errors into messages (`anyhow`) and outcomes into exit codes.

use clap::{Args, Parser, Subcommand, ValueEnum};

mod compile_worker;
mod completions;
mod components;
mod configure;
mod connect;
mod daemon;
mod dev;
mod events;
mod hook;
mod hosts;
mod inspect;
mod kv;
mod nats_context;
mod nats_settings;
mod output;
mod permissions;
mod runs;
mod subscriptions;

pub use output::EXIT_USAGE;

use connect::ClientArgs;

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
    /// The NATS flags (last: their help heading holds for what follows), declared here so that they may come before the subcommand
    /// (`sandbus -s URL ls`). They are global, so clap copies their values into the
    /// subcommand's own [`nats_settings::NatsArgs`], which is what a command reads.
    #[command(flatten)]
    nats: nats_settings::NatsArgs,
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
    Dev(dev::DevCommand),
    /// Run the daemon: connect to NATS, load components, run listeners, serve the control
    /// API. Stops gracefully on SIGINT/SIGTERM.
    Daemon(daemon::DaemonArgs),
    /// Run the daemon, starting a private nats-server (with JetStream, in the data directory)
    /// when none is configured and nothing answers on 127.0.0.1:4222.
    Up(daemon::DaemonArgs),
    /// Upload a component: validate it, store its bytes, record a new manifest version.
    Upload(components::UploadArgs),
    /// List the components.
    Ls(ClientArgs),
    /// Remove a component (refused while it is subscribed).
    Rm(components::ComponentNameArgs),
    /// Point a component back at the content it had before its current one (a new version).
    Rollback(components::ComponentNameArgs),
    /// Set or unset the values a component reads through wasi:config/store (a new version,
    /// same bytes), or print them.
    Configure(configure::ConfigureArgs),
    /// Subscribe a listener to event types; creates its durable consumer. Again on a
    /// subscribed listener: changes the subscription.
    Subscribe(subscriptions::SubscribeArgs),
    /// Unsubscribe a listener: deletes its consumer (pending events for it are dropped).
    Unsubscribe(subscriptions::UnsubscribeArgs),
    /// A listener's status (pending, in flight, redelivered, dead-lettered, last error), or
    /// every listener's.
    Status(subscriptions::StatusArgs),
    /// Publish a canonical event (or a JSON Lines file of them) through the daemon.
    Publish(events::PublishArgs),
    /// Print canonical events: stored ones, and with --follow new ones as they come.
    Events(events::EventsArgs),
    /// List the live hosts.
    Hosts(ClientArgs),
    /// List every live host's USB devices: vendor:product, serial, location, and whether
    /// each is free, leased (by which run) or offline.
    Devices(ClientArgs),
    /// Run a test script on a device, on the host that has it. Prints the run id and returns;
    /// with --follow, streams the log and ends with the report (exit code: 0 pass, 1 fail,
    /// 3 error, 4 timeout or cancelled).
    Run(runs::RunArgs),
    /// List script runs, newest first.
    Runs(ClientArgs),
    /// Print a run's log (and its report once finished); --follow waits for the report.
    Logs(runs::LogsArgs),
    /// Cancel a queued or running run: its device is reset and released.
    Cancel(runs::CancelArgs),
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
    Inspect(inspect::InspectArgs),
    /// Print a shell completion script (bash, zsh, fish...) to stdout.
    Completions(completions::CompletionsArgs),
    /// Compile one component from stdin to stdout under limits (started by the daemon).
    #[command(name = "compile-worker", hide = true)]
    CompileWorker(compile_worker::CompileWorkerArgs),
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
        .with_ansi(colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Whether output to `stream` may be coloured: only on a terminal, and not when `NO_COLOR`
/// is set (to anything but the empty string, <https://no-color.org>). A log redirected to a
/// file or a pipe gets no ANSI escape codes.
fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Runs a command that must not start an async runtime or log subscriber (the compile
/// worker, which limits its own memory); `None` for every other command.
pub fn run_without_runtime(cli: &Cli) -> Option<u8> {
    match &cli.command {
        Command::CompileWorker(args) => Some(compile_worker::run(args)),
        Command::Completions(args) => Some(completions::run(args)),
        _ => None,
    }
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::CompileWorker(args) => Ok(compile_worker::run(&args)),
        Command::Completions(args) => Ok(completions::run(&args)),
        Command::Daemon(args) => daemon::daemon(&args).await,
        Command::Up(args) => daemon::up(&args).await,
        Command::Dev(command) => dev::run(command).await,
        Command::Inspect(args) => inspect::run(&args),
        Command::Permissions(args) => Ok(permissions::run(&args)),
        Command::Upload(args) => components::upload(args).await,
        Command::Ls(client) => Ok(components::list(&client).await),
        Command::Rm(args) => Ok(components::remove(args).await),
        Command::Rollback(args) => Ok(components::rollback(args).await),
        Command::Configure(args) => Ok(configure::configure(args).await),
        Command::Subscribe(args) => Ok(subscriptions::subscribe(args).await),
        Command::Unsubscribe(args) => Ok(subscriptions::unsubscribe(args).await),
        Command::Status(args) => Ok(subscriptions::status(args).await),
        Command::Publish(args) => Ok(events::publish(args).await),
        Command::Events(args) => Ok(events::events(args).await),
        Command::Hosts(client) => Ok(hosts::hosts(&client).await),
        Command::Devices(client) => Ok(hosts::devices(&client).await),
        Command::Run(args) => Ok(runs::run(args).await),
        Command::Runs(client) => Ok(runs::runs(&client).await),
        Command::Logs(args) => Ok(runs::logs(args).await),
        Command::Cancel(args) => Ok(runs::cancel(args).await),
        Command::Hook(command) => Ok(hook::run(command).await),
        Command::Kv(command) => Ok(kv::run(command).await),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn every_commands_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    /// The server URL the command parsed from `args` connects to.
    fn server_of(args: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Ls(client) => client.nats.url,
            Command::Kv(kv::KvCommand::Get { client, .. }) => client.nats.url,
            Command::Daemon(daemon) => daemon.nats_url(),
            other => panic!("not a command of this test: {other:?}"),
        }
    }

    #[test]
    fn the_server_flag_goes_before_or_after_the_subcommand() {
        let url = Some("nats://bus:4222".to_owned());
        for args in [
            &["sandbus", "-s", "nats://bus:4222", "ls"][..],
            &["sandbus", "ls", "-s", "nats://bus:4222"],
            &[
                "sandbus",
                "--server",
                "nats://bus:4222",
                "kv",
                "get",
                "ns",
                "k",
            ],
            &[
                "sandbus",
                "kv",
                "get",
                "ns",
                "k",
                "--nats",
                "nats://bus:4222",
            ],
            &["sandbus", "--server=nats://bus:4222", "daemon"],
        ] {
            assert_eq!(server_of(args), url, "{args:?}");
        }
        // Given twice, the one after the subcommand is the one that counts.
        let both = [
            "sandbus",
            "-s",
            "nats://a:4222",
            "ls",
            "-s",
            "nats://bus:4222",
        ];
        assert_eq!(server_of(&both), url);
    }
}
