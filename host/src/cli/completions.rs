//! `sandbus completions SHELL`: the shell completion script for every command and flag,
//! generated from the same definitions the parser uses (clap_complete), so it cannot drift.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;
use super::output::{EXIT_OK, EXIT_USAGE};

/// Flags of `completions`.
#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the script to stdout. Written whole, without panicking when stdout is closed.
pub fn run(args: &CompletionsArgs) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "sandbus", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("error: cannot write the completion script: {e}");
            EXIT_USAGE
        }
    }
}
