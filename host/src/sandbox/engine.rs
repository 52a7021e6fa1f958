//! The [`Sandbox`]: one wasmtime engine per daemon, its linker and epoch ticker, and
//! [`Sandbox::prepare`], which turns a component's bytes and policy into a
//! [`PreparedComponent`] once the host's own ceilings (pool, memory, fuel) allow it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::budget::{MemoryBudget, PAGE};
use super::compile::Workers;
use super::compiled::CompiledComponents;
use super::component::check_world;
use super::prepared::{Pre, PreparedComponent};
use super::{
    ArtifactCache, CompileMode, CompileSettings, ComponentShape, ConfigError, Digest,
    InvocationState, Limits, ListenerHandler, LoadError, LoadErrorKind, MESSAGING_HANDLER, PACKAGE,
    PACKAGE_VERSION, SandboxConfig, World, validate_component_name,
};
use crate::bindings::hook::HookPre;
use crate::bindings::listener::ListenerPre;
use crate::bindings::script::ScriptPre;
use crate::bindings::wasmcloud_messaging::ListenerPre as MessagingListenerPre;
use crate::component_config::ComponentConfig;
use crate::imports;
use crate::imports::bus::PublishRate;
use crate::imports::kv_read::KvReadGrants;
use crate::subject::PublishGrants;

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

/// Code compiled and pre-linked for one digest: all a [`PreparedComponent`] needs besides
/// its policy.
#[derive(Clone)]
struct LinkedCode {
    world: World,
    pre: Pre,
}

/// The engine, the linker, and the compiled components, shared by every call.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<InvocationState>,
    compiled: CompiledComponents,
    /// Compiled code pre-linked against [`Self::linker`], by digest, with its world: what
    /// every name with the same bytes shares ([`Sandbox::prepare_known`]). Evicted with the
    /// compiled code.
    linked: Mutex<HashMap<Digest, LinkedCode>>,
    /// One permit per pool slot: calls wait here instead of failing when the pool is full.
    pool: Arc<Semaphore>,
    /// Linear memory all calls together may hold.
    budget: Arc<MemoryBudget>,
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
                Some(Workers::new(budget.clone(), settings))
            }
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            compiled: CompiledComponents::new(engine.clone(), cache, workers),
            linked: Mutex::new(HashMap::new()),
            engine,
            linker,
            pool: Arc::new(Semaphore::new(if config.pooling {
                config.pool_instances.max(1) as usize
            } else {
                Semaphore::MAX_PERMITS
            })),
            budget: Arc::new(MemoryBudget::new(config.memory_budget)),
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

    /// Checks everything about a component that can be known without compiling it: its
    /// size and name, that it is a component of the expected world importing only what this
    /// host provides, and that its limits fit this host's ceilings (pool, memory budget,
    /// fuel). Returns its world. Cheap (it reads the component's outer sections, no
    /// Cranelift): the control API runs it on an upload before recording the component, and
    /// [`Sandbox::prepare`] runs it before compiling. [`ComponentShape::validate`] adds the
    /// full validation of the code.
    pub fn check(&self, spec: &ComponentSpec, bytes: &[u8]) -> Result<World, LoadError> {
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
        self.check_limits(&spec.limits)?;
        Ok(world)
    }

    /// Checks that `limits` are valid and fit this host's ceilings (pool, memory budget,
    /// fuel): the part of [`Sandbox::check`] that does not depend on the bytes.
    fn check_limits(&self, limits: &Limits) -> Result<(), LoadError> {
        limits
            .validate()
            .map_err(|why| LoadError::new(LoadErrorKind::Limits, why.message))?;
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
        Ok(())
    }

    /// Checks ([`Sandbox::check`]), compiles (or loads from cache) and pre-links a component.
    ///
    /// Refused with a [`LoadError`] naming the problem: what [`Sandbox::check`] refuses, a
    /// missing export or an export or import of the wrong shape, a compile over the budget
    /// ([`LoadErrorKind::CompileBudget`]). Compilation is CPU-heavy the first time a digest
    /// is seen, and under a budget it waits for its turn and for the worker: call this from
    /// a blocking-friendly context (`spawn_blocking`) in a server.
    pub fn prepare(
        &self,
        spec: ComponentSpec,
        bytes: &[u8],
    ) -> Result<PreparedComponent, LoadError> {
        let world = self.check(&spec, bytes)?;
        let digest = Digest::of(bytes);
        let pre = match self.linked_code(&digest) {
            Some(linked) => linked.pre,
            None => self.link(&digest, world, bytes)?,
        };
        Ok(self.prepared(spec, digest, world, pre))
    }

    /// [`Sandbox::prepare`] without the bytes, for a digest whose code this sandbox holds
    /// already (another name with the same bytes was prepared, and not evicted since): the
    /// compiled, pre-linked code is shared and only `spec` is checked. `None` when the code
    /// is not held here: read the bytes and call [`Sandbox::prepare`].
    pub fn prepare_known(
        &self,
        spec: ComponentSpec,
        digest: &Digest,
    ) -> Option<Result<PreparedComponent, LoadError>> {
        let linked = self.linked_code(digest)?;
        let checked = validate_component_name(&spec.name)
            .and_then(|()| check_world(linked.world, spec.expect))
            .and_then(|()| self.check_limits(&spec.limits));
        Some(checked.map(|()| self.prepared(spec, digest.clone(), linked.world, linked.pre)))
    }

    /// The pre-linked code of `digest` held here, if any.
    fn linked_code(&self, digest: &Digest) -> Option<LinkedCode> {
        self.linked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Compiles (or loads from cache) checked bytes of `world` and pre-links them against
    /// this host's imports; the result is kept for [`Sandbox::prepare_known`].
    fn link(&self, digest: &Digest, world: World, bytes: &[u8]) -> Result<Pre, LoadError> {
        let component = self.compiled.compile(digest, bytes)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::new(
                LoadErrorKind::IncompatibleInterface,
                format!("the component's imports don't match this host: {e:#}"),
            )
        })?;
        let incompatible_with = |what: &str| {
            let what = what.to_owned();
            move |e: wasmtime::Error| {
                LoadError::new(
                    LoadErrorKind::IncompatibleInterface,
                    format!("the component's {world} export doesn't match {what}: {e:#}"),
                )
            }
        };
        let incompatible = incompatible_with(&format!("{PACKAGE}@{PACKAGE_VERSION}"));
        let pre = match world {
            World::Listener => match ComponentShape::read(bytes)?.listener_handler() {
                Some(ListenerHandler::WasmcloudMessaging) => Pre::MessagingListener(
                    MessagingListenerPre::new(instance_pre)
                        .map_err(incompatible_with(MESSAGING_HANDLER))?,
                ),
                _ => Pre::Listener(ListenerPre::new(instance_pre).map_err(incompatible)?),
            },
            World::Script => Pre::Script(ScriptPre::new(instance_pre).map_err(incompatible)?),
            World::Hook => Pre::Hook(HookPre::new(instance_pre).map_err(incompatible)?),
        };
        self.linked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                digest.clone(),
                LinkedCode {
                    world,
                    pre: pre.clone(),
                },
            );
        Ok(pre)
    }

    /// A [`PreparedComponent`] of checked `spec` over the pre-linked code `pre`.
    fn prepared(
        &self,
        spec: ComponentSpec,
        digest: Digest,
        world: World,
        pre: Pre,
    ) -> PreparedComponent {
        let limits = spec.limits;
        PreparedComponent {
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
            config: Arc::new(spec.config),
            limits,
            engine: self.engine.clone(),
            fuel: self.config.fuel,
            max_wasm_stack: self.config.max_wasm_stack,
        }
    }

    /// Drops the compiled code of `digest` from memory (the disk cache keeps it). Components
    /// already prepared from it keep working; the next [`Sandbox::prepare`] of those bytes
    /// loads them again. The daemon calls this when no loaded component uses a digest.
    pub fn evict(&self, digest: &Digest) {
        self.linked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
        self.compiled.evict(digest);
    }

    /// How many compiled components are held in memory.
    pub fn compiled_count(&self) -> usize {
        self.compiled.len()
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
    imports::http::add_to_linker(&mut linker)?;
    imports::log::add_to_linker(&mut linker, |s| &mut s.log)?;
    imports::wasi_logging::add_to_linker(&mut linker, |s| &mut s.log)?;
    imports::wasi_config::add_to_linker(&mut linker, |s| &mut s.config)?;
    imports::bus::add_to_linker(&mut linker, |s| &mut s.bus)?;
    imports::kv::add_to_linker(&mut linker, |s| &mut s.kv)?;
    imports::wasi_keyvalue::add_to_linker(&mut linker, |s| imports::wasi_keyvalue::WasiKeyValue {
        kv: &mut s.kv,
        table: &mut s.table,
    })?;
    imports::wasmcloud_messaging::add_to_linker(&mut linker, |s| {
        imports::wasmcloud_messaging::Messaging {
            bus: &mut s.bus,
            deadline: s.deadline,
        }
    })?;
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
    /// The values it reads through `wasi:config/store`.
    pub config: ComponentConfig,
}
