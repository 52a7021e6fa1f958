//! `sandbus compile-worker` (hidden): compiles one component under limits, for the daemon.
//!
//! A daemon compiling under a budget (`sandbus::sandbox::CompileMode::Worker`) starts its own
//! binary with this subcommand for every component it has not compiled before, writes the
//! component to its stdin and reads the compiled artifact from its stdout, killing it when
//! it runs past the time budget. The worker limits its own memory and CPU time before it
//! reads anything, and runs without an async runtime or a log subscriber.
//!
//! Exit codes: 0 the artifact is on stdout; 2 bad arguments; 3 the component does not
//! compile; 4 out of memory; 5 the worker failed. On failure, stderr says why.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use clap::Args;
use sandbus::sandbox::{self, CompileSettings, WorkerError, WorkerRequest};

use super::output::EXIT_OK;

/// `sandbus compile-worker` arguments: what `WorkerRequest::args` writes.
#[derive(Args, Debug)]
pub struct CompileWorkerArgs {
    /// Most writable memory the worker may map, in bytes.
    #[arg(long, value_name = "BYTES")]
    memory: u64,
    /// The compile's time budget in milliseconds (the daemon kills the worker after it; the
    /// worker's CPU-time limit is derived from it).
    #[arg(long, value_name = "MS")]
    timeout_ms: u64,
    /// The sandbox's wasm stack limit, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_wasm_stack: usize,
    /// The sandbox meters fuel.
    #[arg(long)]
    fuel: bool,
    /// The daemon's process id: the worker dies with it.
    #[arg(long, value_name = "PID")]
    parent: u32,
}

impl CompileWorkerArgs {
    fn request(&self) -> WorkerRequest {
        WorkerRequest {
            settings: CompileSettings {
                fuel: self.fuel,
                max_wasm_stack: self.max_wasm_stack,
            },
            memory: self.memory,
            timeout: Duration::from_millis(self.timeout_ms),
            parent: self.parent,
        }
    }
}

/// Runs the worker; its exit code.
pub fn run(args: &CompileWorkerArgs) -> u8 {
    // A panic is caught below and reported once, as an error. The default hook would print
    // it too, and with a backtrace it allocates while holding a lock that a failing
    // allocation takes again: under the memory limit that deadlocks instead of exiting.
    std::panic::set_hook(Box::new(|_| {}));
    let request = args.request();
    let result = std::panic::catch_unwind(|| work(&request)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        // The compiler's threads start when it first needs them; under the memory limit
        // their stacks may not fit (EAGAIN, ENOMEM), which is running out of memory too.
        if what.contains("Resource temporarily unavailable")
            || what.contains("Cannot allocate memory")
        {
            Err(WorkerError::OutOfMemory(what.to_owned()))
        } else {
            Err(WorkerError::Failed(format!(
                "the compiler panicked: {what}"
            )))
        }
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn work(request: &WorkerRequest) -> Result<(), WorkerError> {
    sandbox::limit_worker(request.memory, request.timeout, request.parent)
        .map_err(|e| WorkerError::Failed(format!("cannot limit the compile worker: {e}")))?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| WorkerError::Failed(format!("cannot read the component from stdin: {e}")))?;
    let artifact = sandbox::precompile(&request.settings, &bytes)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&artifact)
        .and_then(|()| stdout.flush())
        .map_err(|e| WorkerError::Failed(format!("cannot write the artifact to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn the_daemons_request_parses_back_unchanged() {
        let request = WorkerRequest {
            settings: CompileSettings {
                fuel: true,
                max_wasm_stack: 512 << 10,
            },
            memory: 2 << 30,
            timeout: Duration::from_millis(60_000),
            parent: 4242,
        };
        let mut argv: Vec<std::ffi::OsString> =
            vec!["sandbus".into(), sandbox::WORKER_SUBCOMMAND.into()];
        argv.extend(request.args());
        let cli = super::super::Cli::try_parse_from(argv).unwrap();
        let super::super::Command::CompileWorker(args) = cli.command else {
            panic!("not the compile worker: {cli:?}");
        };
        assert_eq!(args.request(), request);
    }
}
