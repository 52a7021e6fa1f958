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
//! 2. [`PreparedComponent::handle`] / [`PreparedComponent::run`] wait for a free instance
//!    slot and for their memory cap in the host's memory budget, build a fresh `Store` (its own WASI, log stream, memory meter and deadline),
//!    instantiate from the pooling allocator, call the export, and drop it all. Nothing
//!    survives a call except what the guest put in kv or published.
//! 3. The result comes back with its [`Metering`]; a failure comes back as an
//!    [`InvokeError`] whose kind says what stopped it (timeout, memory limit, panic...).
//!
//! Deadlines use epoch interruption: a ticker thread bumps the engine's epoch every
//! [`SandboxConfig::epoch_tick`]; at each tick a running guest yields to the async runtime
//! (so one busy guest cannot starve others) and traps once its deadline has passed. The
//! whole call, host calls included, is additionally bounded by a timer.

mod budget;
mod cache;
mod compile;
mod component;
mod error;
mod limits;
mod outcome;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

use crate::bindings::hook::{Hook, HookPre};
use crate::bindings::listener::{Listener, ListenerPre};
use crate::bindings::script::{Script, ScriptPre};
use crate::event::CanonicalEvent;
use crate::imports;
use crate::imports::bus::{BusState, PublishRate, Publisher};
use crate::imports::kv::{KvQuota, KvState, KvStore};
use crate::imports::kv_read::{KvReadGrants, KvReadState};
use crate::imports::log::{InvocationLog, LogSink, LogState, LogSummary};
use crate::imports::usb::{LeasedDevice, UsbState};
use crate::invocation::InvocationId;
use crate::subject::PublishGrants;

pub use budget::default_memory_budget;
use budget::{MemoryBudget, MemoryReservation, PAGE};
pub use cache::{ArtifactCache, CacheLookup, engine_fingerprint};
pub use compile::{
    CompileBudget, CompileMode, CompileSettings, DEFAULT_COMPILE_CONCURRENCY,
    DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_TIMEOUT, WORKER_SUBCOMMAND, WorkerError, WorkerRequest,
    WorkerRun, limit_worker, precompile, worker_exit,
};
pub use component::{
    ComponentInfo, ComponentShape, Digest, MAX_NAME_LEN, PACKAGE, PACKAGE_VERSION, World, inspect,
    validate_component_name,
};
pub use error::{ConfigError, InvokeError, InvokeErrorKind, LoadError, LoadErrorKind};
pub use limits::{
    LOG_BYTES, LimitError, Limits, MAX_INSTANCES, MAX_MEMORY, MAX_PAYLOAD, MAX_PUBLISH_RATE,
    MAX_TIMEOUT,
};
pub use outcome::{HandlerOutcome, HookDecision, Report, Step, StepOutcome, Verdict};
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

/// Bumps the engine epoch on a thread of its own until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, ConfigError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("sandbus-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| ConfigError(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The engine, the linker, and the compiled components, shared by every call.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<InvocationState>,
    compiled: Mutex<HashMap<Digest, Component>>,
    /// One permit per pool slot: calls wait here instead of failing when the pool is full.
    pool: Arc<Semaphore>,
    /// Linear memory all calls together may hold.
    budget: Arc<MemoryBudget>,
    cache: Option<ArtifactCache>,
    /// The compile workers, when compiling under a budget.
    workers: Option<compile::Workers>,
    /// Digests a worker refused (over the budget, or not compilable), why, when, and until
    /// when (`None`: for good): the same bytes under the same budget are refused again at
    /// once instead of compiled again, so a daemon retrying a failed load does not spend a
    /// budget on it every few seconds. A refusal for the budget, which a busy or crowded
    /// moment may have caused, lasts [`REFUSED_FOR_BUDGET`]; one for bytes that do not
    /// compile lasts until the daemon restarts. A host's own trouble is never remembered.
    refused: Mutex<HashMap<Digest, Refusal>>,
    config: SandboxConfig,
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Builds the engine and the linker. Fails if the configuration is unusable (for example
    /// the pool can't reserve its address space).
    pub fn new(config: SandboxConfig) -> Result<Self, ConfigError> {
        let settings = CompileSettings::of(&config);
        let mut wasm = settings.wasm_config();
        if config.pooling {
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&config)));
        }
        let engine = Engine::new(&wasm).map_err(|e| ConfigError(format!("{e:#}")))?;
        let linker = build_linker(&engine).map_err(|e| ConfigError(format!("{e:#}")))?;
        // The cache only saves time: without a usable one, compile every time and say so.
        let cache =
            config
                .cache_dir
                .as_ref()
                .and_then(|dir| match ArtifactCache::open(dir, &engine) {
                    Ok(cache) => Some(cache),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "compile cache disabled");
                        None
                    }
                });
        let workers = match &config.compile {
            CompileMode::InProcess => None,
            CompileMode::Worker(budget) => {
                if !budget.exe.exists() {
                    return Err(ConfigError(format!(
                        "the compile worker's program {} does not exist",
                        budget.exe.display()
                    )));
                }
                Some(compile::Workers::new(budget.clone(), settings))
            }
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            pool: Arc::new(Semaphore::new(if config.pooling {
                config.pool_instances.max(1) as usize
            } else {
                Semaphore::MAX_PERMITS
            })),
            budget: Arc::new(MemoryBudget::new(config.memory_budget)),
            cache,
            workers,
            refused: Mutex::new(HashMap::new()),
            config,
            _ticker: ticker,
        })
    }

    /// The sandbox settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Bytes of the memory budget held by calls now, and the most ever held at once.
    pub fn memory_reserved(&self) -> (u64, u64) {
        (
            self.budget.reserved.load(Ordering::SeqCst),
            self.budget.peak.load(Ordering::SeqCst),
        )
    }

    /// Checks, compiles (or loads from cache) and pre-links a component.
    ///
    /// Refused with a [`LoadError`] naming the problem: not wasm, a core module, too large,
    /// the wrong world, a missing export, an import this host does not provide, limits over
    /// the sandbox's ceiling, a compile over the budget ([`LoadErrorKind::CompileBudget`]).
    /// Compilation is CPU-heavy the first time a digest is seen, and under a budget it waits
    /// for its turn and for the worker: call this from a blocking-friendly context
    /// (`spawn_blocking`) in a server.
    pub fn prepare(
        &self,
        spec: ComponentSpec,
        bytes: &[u8],
    ) -> Result<PreparedComponent, LoadError> {
        if bytes.len() as u64 > self.config.max_component_size {
            return Err(LoadError::new(
                LoadErrorKind::TooLarge,
                format!(
                    "the component is {} bytes, over the limit of {} bytes",
                    bytes.len(),
                    self.config.max_component_size
                ),
            ));
        }
        validate_component_name(&spec.name)?;
        let world = ComponentShape::read(bytes)?.check(spec.expect)?;
        let limits = spec.limits;
        limits
            .validate()
            .map_err(|why| LoadError::new(LoadErrorKind::Limits, why))?;
        if limits.fuel.is_some() && !self.config.fuel {
            return Err(LoadError::new(
                LoadErrorKind::Limits,
                "a fuel limit was given but this sandbox does not meter fuel; enable fuel \
                 metering (`--fuel`) or drop the limit",
            ));
        }
        if self.config.pooling && limits.max_instances > self.config.pool_instances {
            return Err(LoadError::new(
                LoadErrorKind::Limits,
                format!(
                    "instances={} is more than this host's pool of {} instances",
                    limits.max_instances, self.config.pool_instances
                ),
            ));
        }
        if limits.memory > self.config.memory_ceiling {
            return Err(LoadError::new(
                LoadErrorKind::Limits,
                format!(
                    "memory limit {} bytes is over this host's ceiling of {} bytes",
                    limits.memory, self.config.memory_ceiling
                ),
            ));
        }
        // In the budget's own unit, wasm pages: a cap that is not a whole number of pages
        // reserves the page it starts, and the budget holds only whole pages.
        let wanted = limits
            .memory
            .div_ceil(PAGE)
            .saturating_mul(u64::from(limits.max_instances))
            .saturating_mul(PAGE);
        if wanted > self.config.memory_budget / PAGE * PAGE {
            let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
            return Err(LoadError::new(
                LoadErrorKind::Limits,
                format!(
                    "memory={} × instances={} is {}, more than this host's memory budget of {} \
                     for all instances together; lower memory or instances (or raise the \
                     host's [sandbox] memory_budget)",
                    size(limits.memory),
                    limits.max_instances,
                    size(wanted),
                    size(self.config.memory_budget)
                ),
            ));
        }
        let digest = Digest::of(bytes);
        let component = self.compile(&digest, bytes)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::new(
                LoadErrorKind::IncompatibleInterface,
                format!("the component's imports don't match this host: {e:#}"),
            )
        })?;
        let incompatible = |e: wasmtime::Error| {
            LoadError::new(
                LoadErrorKind::IncompatibleInterface,
                format!(
                    "the component's {world} export doesn't match {PACKAGE}@{PACKAGE_VERSION}: {e:#}"
                ),
            )
        };
        let pre = match world {
            World::Listener => Pre::Listener(ListenerPre::new(instance_pre).map_err(incompatible)?),
            World::Script => Pre::Script(ScriptPre::new(instance_pre).map_err(incompatible)?),
            World::Hook => Pre::Hook(HookPre::new(instance_pre).map_err(incompatible)?),
        };
        Ok(PreparedComponent {
            name: spec.name.into(),
            digest,
            world,
            pre,
            rate: Arc::new(PublishRate::new(
                limits.publish_rate,
                limits.publish_rate.max(1),
            )),
            slots: Arc::new(Semaphore::new(limits.max_instances as usize)),
            pool: self.pool.clone(),
            budget: self.budget.clone(),
            grants: Arc::new(spec.grants),
            kv_read: Arc::new(spec.kv_read),
            limits,
            engine: self.engine.clone(),
            fuel: self.config.fuel,
            max_wasm_stack: self.config.max_wasm_stack,
        })
    }

    /// Drops the compiled code of `digest` from memory (the disk cache keeps it). Components
    /// already prepared from it keep working; the next [`Sandbox::prepare`] of those bytes
    /// loads them again. The daemon calls this when no loaded component uses a digest.
    pub fn evict(&self, digest: &Digest) {
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }

    /// How many compiled components are held in memory.
    pub fn compiled_count(&self) -> usize {
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<Component, LoadError> {
        if let Some(component) = self.remembered(digest) {
            return Ok(component);
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, digest).1);
        if let Some(component) = cached {
            return Ok(self.remember(digest, component));
        }
        let Some(workers) = &self.workers else {
            let started = Instant::now();
            let component = Component::new(&self.engine, bytes).map_err(|e| {
                LoadError::new(
                    LoadErrorKind::Invalid,
                    format!("the component does not compile: {e:#}"),
                )
            })?;
            tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
            if let Some(cache) = &self.cache
                && let Err(e) = cache.store(digest, &component)
            {
                tracing::warn!(%digest, error = %e, "could not write the compile cache");
            }
            return Ok(self.remember(digest, component));
        };
        self.compile_in_worker(workers, digest, bytes)
    }

    /// Compiles `bytes` in a worker under the budget, one of [`CompileBudget::concurrency`]
    /// at a time, and caches the artifact. Bytes a worker refused are refused again at once.
    fn compile_in_worker(
        &self,
        workers: &compile::Workers,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        if let Some(e) = self.refused_before(digest) {
            return Err(e);
        }
        let _permit = workers.permit()?;
        // Another prepare of the same bytes may have compiled (or been refused) while this
        // one waited.
        if let Some(component) = self.remembered(digest) {
            return Ok(component);
        }
        if let Some(e) = self.refused_before(digest) {
            return Err(e);
        }
        let started = Instant::now();
        let artifact = workers.compile(bytes).inspect_err(|e| {
            tracing::warn!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, kind = ?e.kind, reason = %e.message, "compile refused");
            if matches!(
                e.kind,
                LoadErrorKind::CompileBudget | LoadErrorKind::Invalid
            ) {
                let now = Instant::now();
                let until =
                    (e.kind == LoadErrorKind::CompileBudget).then(|| now + REFUSED_FOR_BUDGET);
                let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
                // Each entry cost a whole compile, but they must not pile up without bound:
                // past the most, the oldest goes.
                if refused.len() >= MAX_REFUSED
                    && let Some(oldest) = refused
                        .iter()
                        .min_by_key(|(_, r)| r.at)
                        .map(|(digest, _)| digest.clone())
                {
                    refused.remove(&oldest);
                }
                refused.insert(
                    digest.clone(),
                    Refusal {
                        error: e.clone(),
                        at: now,
                        until,
                    },
                );
            }
        })?;
        // SAFETY: `artifact` is what `Engine::precompile_component` produced, for an engine
        // with this sandbox's compilation settings (`CompileSettings`), in a worker process
        // this sandbox just started from the configured program (the daemon's own binary) and
        // whose stdout only this sandbox read. Compiling there is compiling here, in a process
        // that may run out of memory on its own. wasmtime additionally checks the artifact's
        // version and settings header.
        let component =
            unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(|e| {
                LoadError::new(
                    LoadErrorKind::Host,
                    format!(
                        "this host could not load what its compile worker made (is the worker \
                     program the daemon's own binary?): {e:#}"
                    ),
                )
            })?;
        tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component in a worker");
        if let Some(cache) = &self.cache
            && let Err(e) = cache.store_artifact(digest, &artifact)
        {
            tracing::warn!(%digest, error = %e, "could not write the compile cache");
        }
        Ok(self.remember(digest, component))
    }

    /// Why a worker refused `digest` before, if it did and the refusal still holds.
    fn refused_before(&self, digest: &Digest) -> Option<LoadError> {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match refused.get(digest) {
            Some(Refusal {
                until: Some(until), ..
            }) if Instant::now() >= *until => {
                refused.remove(digest);
                None
            }
            Some(refusal) => Some(refusal.error.clone()),
            None => None,
        }
    }

    /// The compiled code of `digest`, if it is in memory.
    fn remembered(&self, digest: &Digest) -> Option<Component> {
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Keeps `component` in memory as the compiled code of `digest`; returns it.
    fn remember(&self, digest: &Digest, component: Component) -> Component {
        self.compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.clone(), component.clone());
        component
    }
}

/// The pooling allocator settings for `config`: slots sized from
/// [`SandboxConfig::pool_instances`] and [`SandboxConfig::memory_ceiling`], and, where the
/// kernel can scan page maps, memories and tables kept resident and reset in place (and
/// async stacks kept mapped; wasm cannot read its native stack), which makes
/// instantiate + call + drop about three times faster.
pub fn pooling_config(config: &SandboxConfig) -> PoolingAllocationConfig {
    let n = config.pool_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memories_per_component(4)
        .max_memory_size(usize::try_from(config.memory_ceiling).unwrap_or(usize::MAX));
    if config.keep_resident > 0 && PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(
                usize::try_from(config.keep_resident).unwrap_or(usize::MAX),
            )
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(128 << 10);
    }
    pool
}

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<InvocationState>> {
    let mut linker = Linker::<InvocationState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    imports::log::add_to_linker(&mut linker, |s| &mut s.log)?;
    imports::bus::add_to_linker(&mut linker, |s| &mut s.bus)?;
    imports::kv::add_to_linker(&mut linker, |s| &mut s.kv)?;
    imports::kv_read::add_to_linker(&mut linker, |s| &mut s.kv_read)?;
    imports::usb::add_to_linker(&mut linker, |s| &mut s.usb)?;
    Ok(linker)
}

/// What to load and under which policy.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name: its kv namespace and the name on its log lines.
    pub name: String,
    /// The role it must play; `None` accepts either.
    pub expect: Option<World>,
    /// Subjects it may publish on.
    pub grants: PublishGrants,
    /// Other components' key-value spaces it may read.
    pub kv_read: KvReadGrants,
    /// Its limits.
    pub limits: Limits,
}

enum Pre {
    Listener(ListenerPre<InvocationState>),
    Script(ScriptPre<InvocationState>),
    Hook(HookPre<InvocationState>),
}

/// A compiled, pre-linked component with its policy, ready to be called many times.
pub struct PreparedComponent {
    name: Arc<str>,
    digest: Digest,
    world: World,
    pre: Pre,
    limits: Limits,
    grants: Arc<PublishGrants>,
    kv_read: Arc<KvReadGrants>,
    rate: Arc<PublishRate>,
    slots: Arc<Semaphore>,
    pool: Arc<Semaphore>,
    budget: Arc<MemoryBudget>,
    engine: Engine,
    fuel: bool,
    max_wasm_stack: usize,
}

/// A store being used for one call, with its slot and log.
struct ActiveCall {
    id: InvocationId,
    store: Store<InvocationState>,
    log: InvocationLog,
    started: Instant,
    timeout: Duration,
    fuel_start: u64,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _pool_slot: tokio::sync::OwnedSemaphorePermit,
    _memory: MemoryReservation,
}

impl PreparedComponent {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The content digest of its bytes.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its role.
    pub fn world(&self) -> World {
        self.world
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Hands one event to a listener, on a fresh instance.
    ///
    /// Waits for a free instance slot first (backpressure, never shedding). An event larger
    /// than the payload limit is refused without running anything.
    pub async fn handle(
        &self,
        event: CanonicalEvent,
        caps: &Capabilities,
    ) -> Result<Invocation<HandlerOutcome>, InvokeError> {
        let Pre::Listener(pre) = &self.pre else {
            return Err(self.not_this_world(World::Listener));
        };
        if event.size() as u64 > self.limits.max_payload {
            return Err(self.refused_input(event.size()));
        }
        let mut call = self.begin(caps, self.limits.timeout, event.depth).await?;
        let event = event.into();
        let result = self
            .bounded(self.limits.timeout, async {
                let listener: Listener = pre
                    .instantiate_async(&mut call.store)
                    .await
                    .map_err(Stage::Instantiate)?;
                listener
                    .sandbus_host_handler()
                    .call_handle(&mut call.store, &event)
                    .await
                    .map_err(Stage::Call)
            })
            .await;
        self.finish(call, result, |o| {
            let outcome = HandlerOutcome::from(o);
            (outcome.size(), outcome)
        })
    }

    /// Runs a script once with `args`, on a fresh instance, under the component's timeout.
    pub async fn run(
        &self,
        args: Vec<(String, String)>,
        caps: &Capabilities,
    ) -> Result<Invocation<Report>, InvokeError> {
        self.run_for(args, caps, self.limits.timeout).await
    }

    /// Runs a script once with `args` under `timeout` instead of the component's own (a run
    /// started with `sandbus run --timeout`). Every other limit still applies.
    pub async fn run_for(
        &self,
        args: Vec<(String, String)>,
        caps: &Capabilities,
        timeout: Duration,
    ) -> Result<Invocation<Report>, InvokeError> {
        let Pre::Script(pre) = &self.pre else {
            return Err(self.not_this_world(World::Script));
        };
        let size: usize = args.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size as u64 > self.limits.max_payload {
            return Err(self.refused_input(size));
        }
        let mut call = self.begin(caps, timeout, 0).await?;
        let result = self
            .bounded(timeout, async {
                let script: Script = pre
                    .instantiate_async(&mut call.store)
                    .await
                    .map_err(Stage::Instantiate)?;
                script
                    .sandbus_host_runner()
                    .call_run(&mut call.store, &args)
                    .await
                    .map_err(Stage::Call)
            })
            .await;
        self.finish(call, result, |r| {
            let report = Report::from(r);
            (report.size(), report)
        })
    }

    /// Asks a hook about a proposed operation, on a fresh instance, under `timeout` when it
    /// is shorter than the component's own (the extension point's deadline).
    ///
    /// A proposal larger than the payload limit is refused without running anything.
    pub async fn check(
        &self,
        proposed: CanonicalEvent,
        caps: &Capabilities,
        timeout: Duration,
    ) -> Result<Invocation<HookDecision>, InvokeError> {
        let Pre::Hook(pre) = &self.pre else {
            return Err(self.not_this_world(World::Hook));
        };
        if proposed.size() as u64 > self.limits.max_payload {
            return Err(self.refused_input(proposed.size()));
        }
        let timeout = timeout.min(self.limits.timeout);
        let mut call = self.begin(caps, timeout, 0).await?;
        let proposed = proposed.into();
        let result = self
            .bounded(timeout, async {
                let hook: Hook = pre
                    .instantiate_async(&mut call.store)
                    .await
                    .map_err(Stage::Instantiate)?;
                hook.sandbus_host_check()
                    .call_check(&mut call.store, &proposed)
                    .await
                    .map_err(Stage::Call)
            })
            .await;
        self.finish(call, result, |d| {
            let decision = HookDecision::from(d);
            (decision.size(), decision)
        })
    }

    /// Largest amount of data copied from the guest in one host call or return value: the
    /// payload limit (or the log cap, for one log line), plus room for the small fields.
    fn hostcall_budget(&self) -> usize {
        let bytes = self.limits.max_payload.max(self.limits.log_bytes) + (64 << 10);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    fn not_this_world(&self, wanted: World) -> InvokeError {
        InvokeError {
            kind: InvokeErrorKind::Host,
            message: format!("`{}` is a {}, not a {wanted}", self.name, self.world),
            metering: Metering::default(),
            log: LogSummary::default(),
        }
    }

    fn refused_input(&self, size: usize) -> InvokeError {
        InvokeError {
            kind: InvokeErrorKind::InputTooLarge,
            message: format!(
                "the input is {size} bytes, over the payload limit of {} bytes",
                self.limits.max_payload
            ),
            metering: Metering::default(),
            log: LogSummary::default(),
        }
    }

    /// Waits for one of the component's slots, then for a slot of the shared pool (so a
    /// busy component makes others wait, never fail), and builds a fresh store. `depth` is
    /// the depth of the event the call handles (0 when it handles none).
    async fn begin(
        &self,
        caps: &Capabilities,
        timeout: Duration,
        depth: u32,
    ) -> Result<ActiveCall, InvokeError> {
        let closed = |_| InvokeError {
            kind: InvokeErrorKind::Host,
            message: "the component is being unloaded".into(),
            metering: Metering::default(),
            log: LogSummary::default(),
        };
        let slot = self.slots.clone().acquire_owned().await.map_err(closed)?;
        let pool_slot = self.pool.clone().acquire_owned().await.map_err(closed)?;
        // The whole memory cap is reserved: the guest may grow to it at any point of the call.
        let memory = self.budget.reserve(self.limits.memory).await?;
        let started = Instant::now();
        let id = InvocationId::next();
        let log = InvocationLog::new(
            caps.log.clone(),
            self.limits.log_bytes,
            self.name.clone(),
            id,
        );
        let deadline = started + timeout;
        let state = InvocationState {
            wasi: None,
            table: {
                // A guest holds few WASI handles; bound the table so it can't turn a loop
                // of `get-stdout` calls into host memory the memory cap doesn't see.
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            log: LogState { log: log.clone() },
            bus: BusState {
                grants: self.grants.clone(),
                publisher: caps.publisher.clone(),
                max_payload: self.limits.max_payload,
                rate: self.rate.clone(),
                published: 0,
                depth,
            },
            kv: KvState {
                store: caps.kv.clone(),
                namespace: self.name.clone(),
                max_value: self.limits.max_payload,
                quota: KvQuota {
                    bytes: self.limits.kv_bytes,
                    keys: self.limits.kv_keys,
                },
            },
            kv_read: KvReadState {
                store: caps.kv.clone(),
                grants: self.kv_read.clone(),
            },
            usb: UsbState::new(caps.usb.clone(), deadline),
            memory: state::MemoryMeter::new(self.limits.memory),
            deadline,
            timed_out: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        // Bytes the host may copy out of the guest in one host call or one return value.
        // Counted per copy, so a list whose elements all point at the same big string
        // can't make the host allocate many times the guest's memory.
        store.set_hostcall_fuel(self.hostcall_budget());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let mut fuel_start = 0;
        if self.fuel {
            fuel_start = self.limits.fuel.unwrap_or(u64::MAX);
            if let Err(e) = store.set_fuel(fuel_start) {
                tracing::warn!(error = %e, "could not set fuel");
            }
        }
        Ok(ActiveCall {
            id,
            store,
            log,
            started,
            timeout,
            fuel_start,
            _slot: slot,
            _pool_slot: pool_slot,
            _memory: memory,
        })
    }

    /// Bounds the whole call (guest code and host calls) by the deadline, with one epoch
    /// tick of grace so that the epoch trap, which names the cause better, normally wins.
    async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, Stage>>,
    ) -> Result<T, Stage> {
        let budget = timeout + Duration::from_millis(50);
        match tokio::time::timeout(budget, call).await {
            Ok(result) => result,
            Err(_) => Err(Stage::HostDeadline),
        }
    }

    fn finish<W, T>(
        &self,
        call: ActiveCall,
        result: Result<W, Stage>,
        convert: impl FnOnce(W) -> (usize, T),
    ) -> Result<Invocation<T>, InvokeError> {
        let fuel = self.fuel.then(|| {
            call.fuel_start
                .saturating_sub(call.store.get_fuel().unwrap_or(0))
        });
        let state = call.store.data();
        let metering = Metering {
            wall_us: call.started.elapsed().as_micros() as u64,
            peak_memory: state.memory.peak(),
            fuel,
            published: state.bus.published,
        };
        let failure = |kind, message: String, log: &InvocationLog| InvokeError {
            kind,
            message,
            metering,
            log: log.finish(),
        };
        let result = match result {
            Ok(value) => {
                let (size, output) = convert(value);
                if size as u64 > self.limits.max_payload {
                    Err(failure(
                        InvokeErrorKind::OutputTooLarge,
                        format!(
                            "the guest returned {size} bytes, over the payload limit of {} bytes",
                            self.limits.max_payload
                        ),
                        &call.log,
                    ))
                } else {
                    Ok(Invocation {
                        id: call.id,
                        output,
                        metering,
                        log: call.log.finish(),
                    })
                }
            }
            Err(stage) => {
                let (kind, message) = self.classify(stage, state, &call.log, call.timeout);
                Err(failure(kind, message, &call.log))
            }
        };
        match &result {
            Ok(_) => {
                tracing::debug!(component = %self.name, invocation = %call.id, wall_us = metering.wall_us, "call finished")
            }
            Err(e) => {
                tracing::warn!(component = %self.name, invocation = %call.id, kind = %e.kind, reason = %e.message, "call failed")
            }
        }
        result
    }

    fn classify(
        &self,
        stage: Stage,
        state: &InvocationState,
        log: &InvocationLog,
        deadline: Duration,
    ) -> (InvokeErrorKind, String) {
        let timeout = || {
            (
                InvokeErrorKind::Timeout,
                format!(
                    "the call ran past its deadline of {}",
                    humantime::format_duration(deadline)
                ),
            )
        };
        let memory = |detail: &str| {
            (
                InvokeErrorKind::MemoryLimit,
                format!(
                    "the guest hit its memory limit of {} bytes ({detail})",
                    self.limits.memory
                ),
            )
        };
        let (error, instantiating) = match stage {
            Stage::HostDeadline => {
                return (
                    InvokeErrorKind::Timeout,
                    format!(
                        "the call ran past its deadline of {} while waiting in a host call",
                        humantime::format_duration(deadline)
                    ),
                );
            }
            Stage::Instantiate(e) => (e, true),
            Stage::Call(e) => (e, false),
        };
        if state.timed_out {
            return timeout();
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => return timeout(),
            Some(Trap::StackOverflow) => {
                return (
                    InvokeErrorKind::StackOverflow,
                    format!(
                        "the guest overflowed its wasm stack of {} bytes",
                        self.max_wasm_stack
                    ),
                );
            }
            Some(Trap::OutOfFuel) => {
                return (
                    InvokeErrorKind::OutOfFuel,
                    format!(
                        "the call used up its fuel of {}",
                        self.limits.fuel.unwrap_or(u64::MAX)
                    ),
                );
            }
            _ => {}
        }
        let detail = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        // A panic line names the cause better than an allocation refused earlier (Rust's
        // out-of-memory abort prints no panic line, so a real OOM stays `memory-limit`).
        if let Some(panic) = log.guest_panic() {
            return (
                InvokeErrorKind::Panic,
                format!(
                    "the guest panicked at {}: {}",
                    panic.location, panic.message
                ),
            );
        }
        if state.memory.cap_hit() {
            return memory(&detail);
        }
        // wasmtime's own type for this is private; its message is pinned by the tests.
        if detail.contains("fuel allocated for hostcalls has been exhausted") {
            return (
                InvokeErrorKind::OutputTooLarge,
                format!(
                    "the guest passed or returned more than {} bytes in one go, over its \
                     payload limit of {} bytes",
                    self.hostcall_budget(),
                    self.limits.max_payload
                ),
            );
        }
        if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return (
                InvokeErrorKind::Trap,
                format!("the guest called exit({}) instead of returning", exit.0),
            );
        }
        if instantiating {
            return (
                InvokeErrorKind::Instantiate,
                format!("instantiation failed: {error:#}"),
            );
        }
        // The host's own imports never fail a call, so anything else is the guest's doing:
        // a trap, or values that break the component ABI (bad UTF-8, out-of-bounds lists).
        match error.downcast_ref::<Trap>() {
            Some(_) => (
                InvokeErrorKind::Trap,
                format!("the guest trapped: {detail}"),
            ),
            None => (
                InvokeErrorKind::Trap,
                format!("the guest broke the component ABI or a WASI rule: {detail}"),
            ),
        }
    }
}

/// How long bytes a worker refused for the budget are refused without compiling again: long
/// enough that a daemon retrying a failed load every few seconds does not spend a budget
/// each time, short enough that a compile slowed or crowded by a busy moment gets another
/// chance.
const REFUSED_FOR_BUDGET: Duration = Duration::from_secs(600);

/// A compile refusal, remembered ([`Sandbox::refused`]).
struct Refusal {
    error: LoadError,
    at: Instant,
    until: Option<Instant>,
}

/// Most refused digests a sandbox remembers (`Sandbox::refused`); past it, it forgets them all
/// and starts again.
const MAX_REFUSED: usize = 1024;

/// Most WASI resources (streams, pollables...) one invocation may hold at once.
const MAX_RESOURCES: usize = 4096;

/// Where a call failed.
enum Stage {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
    HostDeadline,
}
