//! The `sandbus` command: the daemon, the control API client, the local dev loop and tooling.
//!
//! Exit codes (one list, in `cli/output.rs`): 0 success (a script passed); 1 a script
//! reported `fail`, a replayed event was not acknowledged, `inspect` found a problem, or the
//! daemon refused (not found, conflict, denied by a hook); 2 bad input or usage (nothing ran);
//! 3 a script reported `error`; 4 the guest did not finish (timeout, trap, memory limit...);
//! 5 no daemon answered, or the bus failed; 6 NATS refused: the user's permissions do not cover
//! the request.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if let Some(code) = cli::run_without_runtime(&args) {
        return ExitCode::from(code);
    }
    if let Err(e) = cli::init_tracing(&args) {
        eprintln!("error: {e:#}");
        return ExitCode::from(cli::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The chain, without repeating a cause an error's message already quotes.
            eprintln!("error: {}", sandbus::error::Report(e.as_ref()));
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}
