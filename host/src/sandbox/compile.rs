//! Compiling components under a budget of time and memory, in a worker process.
//!
//! Cranelift's time and memory grow with the size of a component's functions: one hostile
//! component of a few megabytes of straight-line code takes seconds and hundreds of megabytes
//! to compile, and every daemon compiles it again when it loads it. A daemon therefore does
//! not compile in its own process ([`CompileMode::InProcess`] is for the dev loop, tests and
//! benchmarks) but in a short-lived worker ([`CompileMode::Worker`]):
//!
//! 1. The sandbox takes one of [`CompileBudget::concurrency`] permits (other compiles wait),
//!    starts `EXE compile-worker` ([`CompileBudget::exe`], the daemon's own binary) and writes
//!    the component's bytes to its stdin.
//! 2. The worker bounds itself first ([`limit_worker`]: its writable memory, its CPU time as
//!    a backstop, no core dump), builds an engine with the sandbox's compilation settings
//!    ([`CompileSettings`], without the pooling allocator, which only matters for instances)
//!    and writes [`precompile`]'s artifact to stdout. Its exit code says what went wrong
//!    ([`worker_exit`]).
//! 3. The sandbox kills it once it runs past [`CompileBudget::timeout`], reads its verdict
//!    ([`WorkerRun::verdict`]) and loads the artifact; over the budget the component is
//!    refused with [`LoadErrorKind::CompileBudget`] and nothing is stored.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use process_control::{ChildExt as _, Control as _};
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::{Config, Engine};

use libc::{SIGABRT, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGXCPU};

use super::{LoadError, LoadErrorKind};

/// How long a compile may take by default: the large guests we know (an 18 MB Python
/// component) take 12 to 21 s in a release build, with room to spare on a busy host.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// How much memory a compile may use by default. The large guests we know stay well under it.
pub const DEFAULT_COMPILE_MEMORY: u64 = 2 << 30;

/// Compiles at once by default: one, so compiling never takes more than one budget of memory
/// and leaves the other cores to running guests.
pub const DEFAULT_COMPILE_CONCURRENCY: usize = 1;

/// The subcommand of the `sandbus` binary that runs a compile worker.
pub const WORKER_SUBCOMMAND: &str = "compile-worker";

/// At most this much of the worker's stderr goes into an error message.
const STDERR_KEPT: usize = 2048;

/// How a sandbox compiles a component it has not compiled (or cached) before.
#[derive(Debug, Clone, Default)]
pub enum CompileMode {
    /// With Cranelift in this process, unbounded: for the dev loop, tests and benchmarks,
    /// where the person compiling is the one who wrote the component.
    #[default]
    InProcess,
    /// In a worker process under a budget: for the daemon, which compiles what others upload.
    Worker(CompileBudget),
}

/// The bounds of one compile in a worker process, and how many may run at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileBudget {
    /// The `sandbus` binary that runs the worker (`EXE compile-worker`): the daemon's own, so
    /// the artifact comes from the same code as the engine that loads it.
    pub exe: PathBuf,
    /// Wall-clock time a compile may take; the worker is killed after it.
    pub timeout: Duration,
    /// Writable memory the worker may map (heap, thread stacks), in bytes.
    pub memory: u64,
    /// Compiles running at once; the others wait for their turn, and waiting does not count
    /// against their timeout.
    pub concurrency: usize,
}

impl CompileBudget {
    /// The default budget, running workers from `exe`.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            timeout: DEFAULT_COMPILE_TIMEOUT,
            memory: DEFAULT_COMPILE_MEMORY,
            concurrency: DEFAULT_COMPILE_CONCURRENCY,
        }
    }

    /// The memory budget for people, e.g. `2.0 GiB`.
    pub fn memory_text(&self) -> String {
        ByteSize(self.memory).display().iec().to_string()
    }

    /// The time budget for people, e.g. `1m`.
    pub fn timeout_text(&self) -> String {
        humantime::format_duration(self.timeout).to_string()
    }
}

/// The engine settings that decide what machine code a component compiles to. The sandbox's
/// engine and the worker's are both built from them ([`CompileSettings::wasm_config`]), so a
/// worker's artifact loads in the sandbox (wasmtime checks this too, and refuses an artifact
/// compiled under other settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileSettings {
    /// Instrument code for fuel metering ([`super::SandboxConfig::fuel`]).
    pub fuel: bool,
    /// The wasm stack limit ([`super::SandboxConfig::max_wasm_stack`]).
    pub max_wasm_stack: usize,
}

impl CompileSettings {
    /// The settings of a sandbox configured with `config`.
    pub fn of(config: &super::SandboxConfig) -> Self {
        Self {
            fuel: config.fuel,
            max_wasm_stack: config.max_wasm_stack,
        }
    }

    /// A wasmtime configuration with these settings and the default (on-demand) instance
    /// allocator; the sandbox adds its pooling allocator, which does not change compiled code.
    pub fn wasm_config(&self) -> Config {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .consume_fuel(self.fuel)
            .max_wasm_stack(self.max_wasm_stack)
            .async_stack_size(self.max_wasm_stack + (1 << 20))
            .wasm_component_model(true);
        wasm
    }

    /// The arguments that give a worker these settings (see [`WorkerRequest`]).
    fn args(&self) -> Vec<OsString> {
        let mut args = vec![
            "--max-wasm-stack".into(),
            self.max_wasm_stack.to_string().into(),
        ];
        if self.fuel {
            args.push("--fuel".into());
        }
        args
    }
}

/// The exit codes of `sandbus compile-worker`, beyond 0 (the artifact is on stdout) and 2
/// (bad arguments).
pub mod worker_exit {
    /// The component is not valid or does not compile; stderr says why.
    pub const INVALID: u8 = 3;
    /// Compiling needed more memory than the worker may use.
    pub const OUT_OF_MEMORY: u8 = 4;
    /// The worker could not do its job (limits, stdin, stdout, engine); stderr says why.
    pub const FAILED: u8 = 5;
}

/// Why a worker produced no artifact.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The component is not valid or does not compile.
    #[error("the component does not compile: {0}")]
    Invalid(String),
    /// An allocation failed under the memory limit.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Something of the worker's own failed.
    #[error("{0}")]
    Failed(String),
}

impl WorkerError {
    /// The worker's exit code for this error ([`worker_exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Invalid(_) => worker_exit::INVALID,
            Self::OutOfMemory(_) => worker_exit::OUT_OF_MEMORY,
            Self::Failed(_) => worker_exit::FAILED,
        }
    }
}

/// Applies a worker's limits to the calling process, before it reads or compiles anything:
/// at most `memory` bytes of writable memory (`RLIMIT_DATA`: heap, thread stacks, anonymous
/// mappings), CPU time for `timeout` on every core plus a second (`RLIMIT_CPU`, a backstop
/// for a worker whose parent died and cannot kill it), and no core dump (`RLIMIT_CORE`).
///
/// `RLIMIT_DATA` rather than `RLIMIT_AS`: address space also counts reservations that use no
/// memory (the allocator reserves 64 MiB per thread arena), so a bound on it would depend on
/// the number of cores more than on the compile. A limit is never raised above the one the
/// process inherited.
pub fn limit_worker(memory: u64, timeout: Duration, parent: u32) -> std::io::Result<()> {
    use rlimit::Resource;
    // Killed with its daemon: a worker must not go on compiling (with up to its budget of
    // memory and CPU) for a daemon that is gone. If the daemon died before this, the worker
    // was handed to another parent already: stop now.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get())
        != i32::try_from(parent).ok()
    {
        return Err(std::io::Error::other(
            "the daemon that started this worker is gone",
        ));
    }
    let lower = |resource: Resource, soft: u64, hard: u64| -> std::io::Result<()> {
        let (_, inherited) = resource.get()?;
        resource.set(soft.min(inherited), hard.min(inherited))
    };
    lower(Resource::CORE, 0, 0)?;
    lower(Resource::DATA, memory, memory)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let cpu = timeout
        .as_secs()
        .saturating_add(1)
        .saturating_mul(cores)
        .saturating_add(1);
    // SIGXCPU at the soft limit, SIGKILL a second later.
    lower(Resource::CPU, cpu, cpu.saturating_add(1))
}

/// Compiles `bytes` (a component) into an artifact for an engine with `settings`: what a
/// worker writes to stdout and the sandbox loads with `Component::deserialize`.
pub fn precompile(settings: &CompileSettings, bytes: &[u8]) -> Result<Vec<u8>, WorkerError> {
    let engine = Engine::new(&settings.wasm_config())
        .map_err(|e| WorkerError::Failed(format!("cannot build the engine: {e:#}")))?;
    engine.precompile_component(bytes).map_err(|e| {
        let out_of_memory = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
        });
        if out_of_memory {
            WorkerError::OutOfMemory(format!("{e:#}"))
        } else {
            WorkerError::Invalid(format!("{e:#}"))
        }
    })
}

/// Compile workers for one sandbox: its budget, its settings, and the permits that bound
/// how many run at once.
pub(crate) struct Workers {
    budget: CompileBudget,
    settings: CompileSettings,
    permits: Semaphore,
}

impl Workers {
    /// Workers under `budget` for a sandbox with `settings`.
    pub(crate) fn new(budget: CompileBudget, settings: CompileSettings) -> Self {
        let permits = Semaphore::new(budget.concurrency.clamp(1, Semaphore::MAX_PERMITS));
        Self {
            budget,
            settings,
            permits,
        }
    }

    /// Waits (blocking the thread) until fewer than [`CompileBudget::concurrency`] compiles
    /// run; the permit is given back when dropped.
    pub(crate) fn permit(&self) -> Result<SemaphorePermit<'_>, LoadError> {
        futures::executor::block_on(self.permits.acquire()).map_err(|_| {
            LoadError::new(
                LoadErrorKind::Host,
                "the sandbox is shutting down its compiles",
            )
        })
    }

    /// Compiles `bytes` in a worker under the budget; the artifact, or why there is none.
    /// Blocks the thread for as long as the compile runs (at most the timeout).
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        let request = WorkerRequest {
            settings: self.settings,
            memory: self.budget.memory,
            timeout: self.budget.timeout,
            parent: std::process::id(),
        };
        let host = |what: &str, e: &dyn std::fmt::Display| {
            LoadError::new(
                LoadErrorKind::Host,
                format!(
                    "this host could not compile the component: {what} ({}): {e}",
                    self.budget.exe.display()
                ),
            )
        };
        let started = Instant::now();
        let mut child = Command::new(&self.budget.exe)
            .arg(WORKER_SUBCOMMAND)
            .args(request.args())
            .env_clear()
            // A group of its own: a Ctrl-C or a stop signal for the daemon's process group
            // is the daemon's to handle, not a crash of the compile.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| host("cannot start the compile worker", &e))?;
        let stdin = child.stdin.take();
        let pid = child.id();
        let output = std::thread::scope(|scope| {
            // Written from a thread of its own while the output is read: a worker that dies
            // early must not leave us blocked on a full pipe. Closing stdin ends the input.
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A worker that stopped reading has failed; its exit status says why.
                    let _ = stdin.write_all(bytes);
                }
            });
            // What the daemon keeps of the worker's output is bounded: an artifact is never
            // larger than the memory it was made in, and of stderr only the start is kept.
            let mut stdout_left = self.budget.memory;
            let mut stderr_left = STDERR_KEPT;
            let waited = child
                .controlled_with_output()
                .time_limit(self.budget.timeout)
                .terminate_for_timeout()
                .stdout_filter(move |bytes| {
                    stdout_left = stdout_left.checked_sub(bytes.len() as u64).ok_or_else(|| {
                        std::io::Error::other("the worker wrote more than its budget")
                    })?;
                    Ok(true)
                })
                .stderr_filter(move |bytes| {
                    let keep = stderr_left >= bytes.len();
                    stderr_left = stderr_left.saturating_sub(bytes.len());
                    Ok(keep)
                })
                .wait();
            if waited.is_err()
                && let Some(pid) = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
            {
                // The worker broke its bound (or could not be read): it goes.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            waited
        })
        .map_err(|e| host("cannot wait for the compile worker", &e))?;
        let run = match output {
            None => WorkerRun::TimedOut,
            Some(output) => WorkerRun::Exited {
                code: output.status.code(),
                signal: output.status.signal(),
                stdout: output.stdout,
                stderr: output.stderr,
            },
        };
        let result = run.verdict(&self.budget);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "compile worker finished"
        );
        result
    }
}

/// What a sandbox asks of a worker: the arguments of `sandbus compile-worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRequest {
    /// The engine's compilation settings.
    pub settings: CompileSettings,
    /// The memory limit, bytes.
    pub memory: u64,
    /// The time budget (the worker sets its CPU backstop from it).
    pub timeout: Duration,
    /// The daemon's process id: the worker dies with it.
    pub parent: u32,
}

impl WorkerRequest {
    /// The command-line arguments after the subcommand.
    pub fn args(&self) -> Vec<OsString> {
        let mut args = vec![
            "--memory".into(),
            self.memory.to_string().into(),
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string().into(),
            "--parent".into(),
            self.parent.to_string().into(),
        ];
        args.extend(self.settings.args());
        args
    }
}

/// How a worker run ended, as the sandbox saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerRun {
    /// It ran past the timeout and was killed.
    TimedOut,
    /// It exited (with a code) or was killed by a signal (not ours).
    Exited {
        /// The exit code, if it exited.
        code: Option<i64>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// What it wrote to stdout: the artifact, on success.
        stdout: Vec<u8>,
        /// What it wrote to stderr: why it failed.
        stderr: Vec<u8>,
    },
}

impl WorkerRun {
    /// The artifact, or the error that refuses the component: over the budget
    /// ([`LoadErrorKind::CompileBudget`]), not compilable ([`LoadErrorKind::Invalid`]), or
    /// the worker's own failure ([`LoadErrorKind::Host`]).
    pub fn verdict(self, budget: &CompileBudget) -> Result<Vec<u8>, LoadError> {
        let over_time = || {
            LoadError::new(
                LoadErrorKind::CompileBudget,
                format!(
                    "compiling this component took longer than the compile budget of {}; it was \
                     stopped (functions this large take long to compile: split them, or raise \
                     `compile_timeout` in the hosts' [sandbox] configuration)",
                    budget.timeout_text()
                ),
            )
        };
        let over_memory = || {
            LoadError::new(
                LoadErrorKind::CompileBudget,
                format!(
                    "compiling this component needed more than the compile budget of {} of \
                     memory; it was stopped (functions this large need much memory to compile: \
                     split them, or raise `compile_memory` in the hosts' [sandbox] \
                     configuration)",
                    budget.memory_text()
                ),
            )
        };
        let (code, signal, stdout, stderr) = match self {
            Self::TimedOut => return Err(over_time()),
            Self::Exited {
                code,
                signal,
                stdout,
                stderr,
            } => (code, signal, stdout, stderr),
        };
        let said = said(&stderr);
        match (code, signal) {
            (Some(0), _) if !stdout.is_empty() => Ok(stdout),
            (Some(code), _) if code == i64::from(worker_exit::OUT_OF_MEMORY) => Err(over_memory()),
            // Rust aborts when an allocation fails, after saying so.
            (_, Some(SIGABRT)) if said.contains("memory allocation of") => Err(over_memory()),
            (_, Some(SIGXCPU)) => Err(over_time()),
            (Some(code), _) if code == i64::from(worker_exit::INVALID) => {
                Err(LoadError::new(LoadErrorKind::Invalid, said))
            }
            // Killed by someone else (the kernel's OOM killer, a stop of the whole service):
            // the host's trouble, not the component's; it is tried again later.
            (_, Some(signal)) if [SIGKILL, SIGTERM, SIGINT, SIGHUP].contains(&signal) => {
                Err(LoadError::new(
                    LoadErrorKind::Host,
                    format!(
                        "this host could not compile the component: the compile worker was \
                         stopped by signal {signal} before it finished (the host out of \
                         memory, or stopping); it is tried again later"
                    ),
                ))
            }
            (_, Some(signal)) => Err(LoadError::new(
                LoadErrorKind::Invalid,
                format!(
                    "compiling this component crashed the compile worker (signal {signal}): {said}"
                ),
            )),
            (code, None) => Err(LoadError::new(
                LoadErrorKind::Host,
                format!(
                    "this host could not compile the component: the compile worker failed \
                     (exit code {}): {said}",
                    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
            )),
        }
    }
}

/// The worker's stderr for an error message: trimmed, at most [`STDERR_KEPT`] bytes, and
/// something when it said nothing.
fn said(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(&stderr[..stderr.len().min(STDERR_KEPT)]);
    let text = text.trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    if text.is_empty() {
        "it said nothing".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> CompileBudget {
        CompileBudget {
            exe: "/nonexistent/sandbus".into(),
            timeout: Duration::from_secs(30),
            memory: 1 << 30,
            concurrency: 1,
        }
    }

    fn exited(code: Option<i64>, signal: Option<i32>, stderr: &str) -> WorkerRun {
        WorkerRun::Exited {
            code,
            signal,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_timeout_names_the_time_budget() {
        let e = WorkerRun::TimedOut.verdict(&budget()).unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::CompileBudget);
        assert!(
            e.message.starts_with(
                "compiling this component took longer than the compile budget of 30s;"
            ),
            "{}",
            e.message
        );
        let e = exited(None, Some(SIGXCPU), "")
            .verdict(&budget())
            .unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::CompileBudget);
    }

    #[test]
    fn a_worker_stopped_from_outside_is_the_hosts_trouble_not_the_components() {
        for signal in [SIGKILL, SIGTERM, SIGINT, SIGHUP] {
            let e = exited(None, Some(signal), "")
                .verdict(&budget())
                .unwrap_err();
            assert_eq!(
                e.kind,
                LoadErrorKind::Host,
                "signal {signal}: {}",
                e.message
            );
        }
    }

    #[test]
    fn running_out_of_memory_names_the_memory_budget() {
        let abort = exited(
            None,
            Some(SIGABRT),
            "memory allocation of 4096 bytes failed\n",
        );
        let code = exited(
            Some(i64::from(worker_exit::OUT_OF_MEMORY)),
            None,
            "out of memory",
        );
        for run in [abort, code] {
            let e = run.verdict(&budget()).unwrap_err();
            assert_eq!(e.kind, LoadErrorKind::CompileBudget);
            assert!(
                e.message
                    .contains("needed more than the compile budget of 1.0 GiB of memory"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn an_invalid_component_keeps_the_workers_reason() {
        let run = exited(
            Some(i64::from(worker_exit::INVALID)),
            None,
            "the component does not compile: bad thing\n",
        );
        let e = run.verdict(&budget()).unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Invalid);
        assert_eq!(e.message, "the component does not compile: bad thing");
    }

    #[test]
    fn a_worker_failure_is_the_hosts() {
        let e = exited(Some(5), None, "error: cannot read stdin")
            .verdict(&budget())
            .unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Host);
        assert!(e.message.contains("cannot read stdin"), "{}", e.message);
        // Success without an artifact is a failure too.
        let e = exited(Some(0), None, "").verdict(&budget()).unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Host);
    }

    #[test]
    fn the_request_round_trips_through_arguments() {
        let request = WorkerRequest {
            settings: CompileSettings {
                fuel: true,
                max_wasm_stack: 1 << 19,
            },
            memory: 123,
            timeout: Duration::from_millis(1500),
            parent: 1,
        };
        let args: Vec<String> = request
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--memory",
                "123",
                "--timeout-ms",
                "1500",
                "--parent",
                "1",
                "--max-wasm-stack",
                "524288",
                "--fuel"
            ]
        );
    }
}
