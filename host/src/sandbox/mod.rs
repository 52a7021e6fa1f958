//! The sandbox: one wasmtime engine, compiled components, and calls under hard limits.
//!
//! This module knows nothing of NATS or USB. What a guest may reach comes in as
//! [`Capabilities`] (a log sink, a publisher, a key-value store): small traits the bus side
//! and the dev loop implement. The flow of one call:
//!
//! 1. [`Sandbox::prepare`] checks the bytes (not wasm, core module, wrong world, unknown
//!    import), compiles them once per content digest (memory, then a verified on-disk cache,
//!    then Cranelift: in this process, or in a worker process under a compile budget, see
//!    [`CompileMode`]) and pre-links them into an `InstancePre`.
//! 2. [`PreparedComponent::handle`] / [`PreparedComponent::run`] /
//!    [`PreparedComponent::check`] go down one call path: wait for a free instance slot and
//!    for their memory cap in the host's memory budget, build a fresh `Store` (its own WASI,
//!    log stream, memory meter and deadline), instantiate from the pooling allocator, call
//!    the export, and drop it all. Nothing survives a call except what the guest put in kv
//!    or published.
//! 3. The result comes back with its [`Metering`]; a failure comes back as an
//!    [`InvokeError`] whose kind says what stopped it (timeout, memory limit, panic...).
//!
//! Deadlines use epoch interruption: a ticker thread bumps the engine's epoch every
//! [`SandboxConfig::epoch_tick`]; at each tick a running guest yields to the async runtime
//! (so one busy guest cannot starve others) and traps once its deadline has passed. The
//! whole call, host calls included, is additionally bounded by a timer.
//!
//! Where things are: `engine.rs` builds the [`Sandbox`] and prepares components,
//! `compiled.rs` keeps what was compiled or refused, `compile.rs` and `cache.rs` compile in a
//! worker and cache on disk, `component.rs` reads a component before compiling it;
//! `prepared.rs` is the [`PreparedComponent`] callers use, `call.rs` the one call path under
//! it, `export.rs` what differs between the worlds' exports, `failure.rs` how a failed call
//! is told, `state.rs` and `budget.rs` what one store and all of them may hold.

mod budget;
mod cache;
mod call;
mod compile;
mod compiled;
mod component;
mod engine;
mod error;
mod export;
mod failure;
mod import_check;
mod limits;
mod outcome;
mod prepared;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::imports::bus::PublishThrottle;
use crate::imports::bus::Publisher;
use crate::imports::kv::KvStore;
use crate::imports::log::{LogSink, LogSummary};
use crate::imports::usb::LeasedDevice;
use crate::invocation::InvocationId;

pub use budget::default_memory_budget;
pub use cache::{ArtifactCache, CacheLookup, engine_fingerprint};
pub use compile::{
    CompileBudget, CompileMode, CompileSettings, DEFAULT_COMPILE_CONCURRENCY,
    DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, WORKER_SUBCOMMAND, WorkerError, WorkerRequest,
    WorkerRun, limit_worker, precompile, worker_exit,
};
pub use component::{
    ComponentInfo, ComponentShape, Digest, ListenerHandler, MAX_NAME_LEN, MESSAGING_HANDLER,
    PACKAGE, PACKAGE_VERSION, World, inspect, validate_component_name,
};
pub use engine::{ComponentSpec, Sandbox, pooling_config};
pub use error::{ConfigError, InvokeError, InvokeErrorKind, LoadError, LoadErrorKind};
pub use limits::{
    LOG_BYTES, LimitError, LimitName, LimitOutOfBounds, Limits, MAX_INSTANCES, MAX_MEMORY,
    MAX_PAYLOAD, MAX_PUBLISH_BUDGET, MAX_PUBLISH_RATE, MAX_TIMEOUT,
};
pub use outcome::{HandlerOutcome, HookDecision, Report, Step, StepOutcome, Verdict};
pub use prepared::PreparedComponent;
pub use state::InvocationState;

/// Settings of the sandbox as a whole (one engine per daemon). Per-component settings are
/// [`Limits`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Use wasmtime's pooling allocator: pre-reserved memory slots make instantiation a few
    /// microseconds. Off means memory is mapped per instance (slower, less address space).
    pub pooling: bool,
    /// Component instances alive at once across all components (pool size).
    pub pool_instances: u32,
    /// Largest memory cap any component may be given (each pool slot can grow this far).
    pub memory_ceiling: u64,
    /// Largest wasm stack, in bytes. Engine-wide in wasmtime, so it is set here and not per
    /// component.
    pub max_wasm_stack: usize,
    /// Meter fuel (instructions, roughly) so calls report it and [`Limits::fuel`] applies.
    /// Costs some speed; off by default.
    pub fuel: bool,
    /// How often the epoch advances: the granularity of deadlines and of yielding.
    pub epoch_tick: Duration,
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Largest component file accepted, in bytes.
    pub max_component_size: u64,
    /// Bytes of linear memory all instances together may be given: each call reserves its
    /// component's memory cap here before it starts, and waits while the budget is spent, so
    /// the guests of a host can never hold more than this (however many components, at
    /// whatever limits). A component whose `memory × instances` alone is over it is refused.
    pub memory_budget: u64,
    /// Bytes of each pooled linear memory kept resident between instances and reset in
    /// place instead of unmapped. Used only where Linux's `PAGEMAP_SCAN` (6.7+) lets
    /// wasmtime reset just the touched pages; elsewhere the pool unmaps as usual (a
    /// blind `memset` of this many bytes would be slower). See `docs/benchmarks.md`.
    pub keep_resident: u64,
    /// Where and under which budget components are compiled: in this process (the default,
    /// for the dev loop, tests and benchmarks) or in a bounded worker process (the daemon).
    pub compile: CompileMode,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            pooling: true,
            pool_instances: 128,
            memory_ceiling: 1 << 30,
            max_wasm_stack: 512 << 10,
            fuel: false,
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
            max_component_size: 64 << 20,
            memory_budget: default_memory_budget(),
            keep_resident: 2 << 20,
            compile: CompileMode::InProcess,
        }
    }
}

/// Where a guest's imports lead for one invocation: its log, the bus, its key-value store.
///
/// The daemon passes NATS-backed ones; the dev loop and tests pass in-memory ones.
#[derive(Clone)]
pub struct Capabilities {
    /// Receives the invocation's log lines as they are written.
    pub log: Arc<dyn LogSink>,
    /// Takes the messages the guest publishes (after grant and limit checks).
    pub publisher: Arc<dyn Publisher>,
    /// Holds the component's key-value space.
    pub kv: Arc<dyn KvStore>,
    /// The USB device this call may use: the one its run leased, for a script; `None` for
    /// listeners and for runs without a device.
    pub usb: Option<LeasedDevice>,
}

/// What a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metering {
    /// Wall time from slot acquired to store dropped, microseconds.
    pub wall_us: u64,
    /// Highest total linear memory, bytes.
    pub peak_memory: u64,
    /// Fuel consumed, when the sandbox meters fuel.
    pub fuel: Option<u64>,
    /// Messages published or events emitted.
    pub published: u64,
    /// How much the component's publish rate cap held the call back.
    #[serde(default, skip_serializing_if = "PublishThrottle::is_quiet")]
    pub throttle: PublishThrottle,
}

/// A finished call: the guest's result and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Invocation<T> {
    /// The invocation id (also on every log line of the call).
    pub id: InvocationId,
    /// What the guest returned.
    pub output: T,
    /// What it used.
    pub metering: Metering,
    /// How much it logged.
    pub log: LogSummary,
}
