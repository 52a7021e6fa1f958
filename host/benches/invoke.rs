//! Per-event cost of the sandbox, against wasmtime's own floor in the same run.
//!
//! - `per_event/pooling/N`: what the daemon pays per event with the pooling allocator:
//!   `PreparedComponent::handle` on the trivial `noop-listener` with an N-byte payload — slot,
//!   fresh store (WASI, log, memory meter, deadline), instantiate, call, drop.
//! - `per_event/on_demand/N`: the same without the pooling allocator.
//! - `live_instance/N`: a call into an instance kept alive (no instantiation): the cost of the
//!   call itself, lowering and lifting the event.
//! - `wasmtime_floor/instantiate_call`: bare wasmtime, pooling on, unit store data:
//!   `Store::new` + `instantiate_async` + call + drop, with no limiter, deadline, WASI
//!   context or log. `per_event/pooling/0` divided by this is our overhead ratio.
//!
//! - `per_event_language/{rust,python,javascript}`: `per_event/pooling` for the trivial
//!   listener written in Rust, Python (componentize-py) and JavaScript (componentize-js).
//! - `per_event_language/wasmcloud-messaging`: the Rust `messaging-echo-listener` (a
//!   wasmCloud messaging component), handed each event as a broker message (the event
//!   serialised to CloudEvents JSON), logging one line and having its ungranted echo publish
//!   refused; against the `rust` row, what the messaging shape costs on top of a no-op.
//! - `language_instantiate/{...}`, `language_first_call/{...}`, `language_live_call/{...}`:
//!   the same three listeners on the sandbox's engine settings without the sandbox: a fresh
//!   instance made and dropped, made + called once + dropped, and a call into a live
//!   instance: where `per_event_language` goes.
//!
//! Needs `target/guests/noop-listener.wasm` and the Python and JavaScript no-op listeners
//! (`scripts/build-guests.sh`). Run through
//! `scripts/bench.sh`, which prints the table recorded in `docs/benchmarks.md`.

#![allow(
    missing_docs,
    reason = "criterion_group! and criterion_main! generate undocumented items"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sandbus::bindings::listener::ListenerPre;
use sandbus::bindings::types::Event;
use sandbus::event::CanonicalEvent;
use sandbus::imports::bus::{BusState, PublishRate, RecordingPublisher};
use sandbus::imports::kv::{KvQuota, KvState, MemoryKv};
use sandbus::imports::log::{DiscardLog, InvocationLog, LogState};
use sandbus::imports::{bus, kv, log};
use sandbus::invocation::InvocationId;
use sandbus::sandbox::{
    Capabilities, CompileSettings, ComponentSpec, Limits, Sandbox, SandboxConfig, World,
    pooling_config,
};
use sandbus::subject::PublishGrants;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceTable, ResourceType};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

const PAYLOADS: [usize; 3] = [0, 1024, 64 * 1024];

fn noop_listener() -> Vec<u8> {
    guest("noop-listener")
}

/// A component of `target/guests`.
fn guest(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/guests/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{} missing ({e}): run scripts/build-guests.sh",
            path.display()
        )
    })
}

fn event(size: usize) -> CanonicalEvent {
    CanonicalEvent {
        id: "0f8e2c1a-bench".into(),
        source: "/bench".into(),
        ty: "vm.started".into(),
        subject: Some("vm-1".into()),
        time: Some("2026-11-21T10:00:00Z".into()),
        datacontenttype: Some("application/octet-stream".into()),
        data: vec![b'x'; size],
        depth: 0,
    }
}

fn caps() -> Capabilities {
    Capabilities {
        log: Arc::new(DiscardLog),
        publisher: Arc::new(RecordingPublisher::default()),
        kv: Arc::new(MemoryKv::default()),
        usb: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn per_event(c: &mut Criterion) {
    let bytes = noop_listener();
    let rt = runtime();
    let caps = caps();
    let mut group = c.benchmark_group("per_event");
    for (label, pooling) in [("pooling", true), ("on_demand", false)] {
        let sandbox = Sandbox::new(SandboxConfig {
            pooling,
            ..SandboxConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let spec = ComponentSpec {
            name: "noop".into(),
            expect: Some(World::Listener),
            grants: PublishGrants::default(),
            kv_read: Default::default(),
            config: Default::default(),
            limits: Limits {
                max_payload: 1 << 20,
                ..Limits::for_world(World::Listener)
            },
        };
        let listener = sandbox
            .prepare(spec, &bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        for size in PAYLOADS {
            let ev = event(size);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(label, size), &ev, |b, ev| {
                // The daemon hands over the event it parsed; cloning it is not part of the cost.
                b.to_async(&rt).iter_batched(
                    || ev.clone(),
                    |ev| async {
                        let done = listener.handle(ev, &caps).await;
                        assert!(done.is_ok());
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// The trivial listener in each guest language, through `PreparedComponent::handle` with
/// pooling, a 16-byte event: what a fresh instance per event costs a Python (componentize-py)
/// or JavaScript (componentize-js) guest, with the Rust one as the baseline.
fn per_event_language(c: &mut Criterion) {
    let rt = runtime();
    let caps = caps();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("per_event_language");
    for (label, name) in [
        ("rust", "noop-listener"),
        ("python", "python-noop-listener"),
        ("javascript", "js-noop-listener"),
        ("wasmcloud-messaging", "messaging-echo-listener"),
    ] {
        let spec = ComponentSpec {
            name: name.into(),
            expect: Some(World::Listener),
            grants: PublishGrants::default(),
            kv_read: Default::default(),
            limits: Limits::for_world(World::Listener),
            config: Default::default(),
        };
        let listener = sandbox
            .prepare(spec, &guest(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ev = event(16);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(label), &ev, |b, ev| {
            b.to_async(&rt).iter_batched(
                || ev.clone(),
                |ev| async {
                    let done = listener.handle(ev, &caps).await;
                    assert!(done.is_ok(), "{done:?}");
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The sandbox's engine (its compile settings and pooling allocator), without the sandbox:
/// for rows that take one call apart.
fn sandbox_engine() -> Engine {
    let config = SandboxConfig::default();
    let mut wasm = CompileSettings::of(&config).wasm_config();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&config)));
    Engine::new(&wasm).unwrap_or_else(|e| panic!("{e}"))
}

/// Store data for [`language_parts`]: WASI (which the Python runtime reads on its first
/// call), built on first use as the sandbox does, and `wasi:http` (which the JavaScript
/// runtime imports); every other import is a stub that fails.
struct PartsState {
    wasi: Option<WasiCtx>,
    http: WasiHttpCtx,
    http_hooks: NoRequests,
    table: ResourceTable,
}

impl PartsState {
    fn new() -> Self {
        Self {
            wasi: None,
            http: WasiHttpCtx::new(),
            http_hooks: NoRequests,
            table: ResourceTable::new(),
        }
    }
}

/// `wasi:http` hooks that refuse every request: a no-op listener sends none.
struct NoRequests;

impl WasiHttpHooks for NoRequests {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

impl WasiHttpView for PartsState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for PartsState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| WasiCtx::builder().build()),
            table: &mut self.table,
        }
    }
}

/// The WASI packages `wasmtime_wasi::p2` and `wasmtime_wasi_http::p2` serve.
const WASI_P2: [&str; 7] = [
    "wasi:http/",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// Defines every import of `component` that [`WASI_P2`] does not serve (sandbus's own,
/// `wasi:logging`...) as a function that fails: a no-op listener calls none of
/// them. (wasmtime's `define_unknown_imports_as_traps` would also stub the newer WASI versions
/// a guest names, which the WASI linked here serves.)
fn stub_sandbus_imports(
    linker: &mut Linker<PartsState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        if WASI_P2.iter().any(|package| name.starts_with(package)) {
            continue;
        }
        let mut stubs = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    let which = format!("{name}#{export}");
                    stubs.func_new(export, move |_, _, _, _| {
                        wasmtime::bail!("{which} is a stub in this bench")
                    })?;
                }
                ComponentItem::Resource(_) => {
                    stubs.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A store for [`language_parts`] on `engine`, with no deadline in reach.
fn parts_store(engine: &Engine) -> Store<PartsState> {
    let mut store = Store::new(engine, PartsState::new());
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// `per_event_language` taken apart, on the sandbox's engine settings with WASI linked and
/// every other import stubbed (a no-op listener calls none):
///
/// - `language_instantiate`: a fresh instance made and dropped, no call;
/// - `language_first_call`: made, called once, dropped: what wasmtime alone costs per event;
///   `per_event_language` over this is the sandbox's own share;
/// - `language_live_call`: a call into one instance kept alive: the guest's own work once it
///   is warm. `first_call - instantiate - live_call` is what a first call costs more than a
///   warm one (first-touch page faults, lazy table entries, the runtime's one-time set-up).
fn language_parts(c: &mut Criterion) {
    let rt = runtime();
    let engine = sandbox_engine();
    let ev: Event = event(16).into();
    let pres: Vec<_> = [
        ("rust", "noop-listener"),
        ("python", "python-noop-listener"),
        ("javascript", "js-noop-listener"),
    ]
    .into_iter()
    .map(|(label, name)| {
        let component = Component::new(&engine, guest(name)).unwrap_or_else(|e| panic!("{e}"));
        let mut linker = Linker::<PartsState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap_or_else(|e| panic!("{e}"));
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .unwrap_or_else(|e| panic!("{e}"));
        stub_sandbus_imports(&mut linker, &engine, &component).unwrap_or_else(|e| panic!("{e}"));
        let pre = linker
            .instantiate_pre(&component)
            .unwrap_or_else(|e| panic!("{e}"));
        (
            label,
            ListenerPre::new(pre).unwrap_or_else(|e| panic!("{e}")),
        )
    })
    .collect();
    let mut group = c.benchmark_group("language_instantiate");
    for (label, pre) in &pres {
        group.throughput(Throughput::Elements(1));
        group.bench_function(*label, |b| {
            b.to_async(&rt).iter(|| async {
                let mut store = parts_store(&engine);
                pre.instantiate_async(&mut store)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("language_first_call");
    for (label, pre) in &pres {
        group.throughput(Throughput::Elements(1));
        group.bench_function(*label, |b| {
            b.to_async(&rt).iter(|| async {
                let mut store = parts_store(&engine);
                let listener = pre
                    .instantiate_async(&mut store)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                listener
                    .sandbus_host_handler()
                    .call_handle(&mut store, &ev)
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {e}"))
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("language_live_call");
    for (label, pre) in &pres {
        let mut store = parts_store(&engine);
        let listener = rt
            .block_on(pre.instantiate_async(&mut store))
            .unwrap_or_else(|e| panic!("{e}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function(*label, |b| {
            b.iter(|| {
                rt.block_on(listener.sandbus_host_handler().call_handle(&mut store, &ev))
                    .unwrap_or_else(|e| panic!("{label}: {e}"))
            })
        });
    }
    group.finish();
}

/// Store data for the benchmarks that drive wasmtime directly.
struct BenchState {
    wasi: WasiCtx,
    table: ResourceTable,
    log: LogState,
    bus: BusState,
    kv: KvState,
}

impl WasiView for BenchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl BenchState {
    fn new() -> Self {
        let log = InvocationLog::new(
            Arc::new(DiscardLog),
            1 << 20,
            "noop".into(),
            InvocationId::next(),
        );
        Self {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            log: LogState { log },
            bus: BusState {
                grants: Arc::new(PublishGrants::default()),
                publisher: Arc::new(RecordingPublisher::default()),
                max_payload: 1 << 20,
                rate: Arc::new(PublishRate::new(100, 100)),
                budget: 1,
                throttle: Default::default(),
                published: 0,
                depth: 0,
            },
            kv: KvState {
                store: Arc::new(MemoryKv::default()),
                namespace: "noop".into(),
                max_value: 1 << 20,
                quota: KvQuota::NONE,
            },
        }
    }
}

/// A plain engine (no epoch interruption, no fuel) with the sandbox's pooling allocator.
fn pooling_engine() -> Engine {
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
        &SandboxConfig::default(),
    )));
    Engine::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

/// The noop listener pre-linked with every import a guest gets, for calls into a live
/// instance.
fn bare_listener() -> (Engine, ListenerPre<BenchState>) {
    let engine = pooling_engine();
    let component = Component::new(&engine, noop_listener()).unwrap_or_else(|e| panic!("{e}"));
    let mut linker = Linker::<BenchState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap_or_else(|e| panic!("{e}"));
    log::add_to_linker(&mut linker, |s| &mut s.log).unwrap_or_else(|e| panic!("{e}"));
    bus::add_to_linker(&mut linker, |s| &mut s.bus).unwrap_or_else(|e| panic!("{e}"));
    kv::add_to_linker(&mut linker, |s| &mut s.kv).unwrap_or_else(|e| panic!("{e}"));
    let pre = linker
        .instantiate_pre(&component)
        .unwrap_or_else(|e| panic!("{e}"));
    (
        engine,
        ListenerPre::new(pre).unwrap_or_else(|e| panic!("{e}")),
    )
}

fn live_instance(c: &mut Criterion) {
    let rt = runtime();
    let (engine, pre) = bare_listener();
    let mut store = Store::new(&engine, BenchState::new());
    let listener = rt
        .block_on(pre.instantiate_async(&mut store))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("live_instance");
    for size in PAYLOADS {
        let ev: Event = event(size).into();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(size), &ev, |b, ev| {
            b.iter(|| {
                rt.block_on(listener.sandbus_host_handler().call_handle(&mut store, ev))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.finish();
}

fn wasmtime_floor(c: &mut Criterion) {
    let rt = runtime();
    let engine = pooling_engine();
    let component = Component::new(&engine, noop_listener()).unwrap_or_else(|e| panic!("{e}"));
    // The noop listener imports only the types-only `types` interface: an empty instance.
    let mut linker = Linker::<()>::new(&engine);
    linker
        .instance("sandbus:host/types@0.1.0")
        .unwrap_or_else(|e| panic!("{e}"));
    let pre = ListenerPre::new(
        linker
            .instantiate_pre(&component)
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev: Event = event(0).into();
    let mut group = c.benchmark_group("wasmtime_floor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("instantiate_call", |b| {
        b.to_async(&rt).iter(|| async {
            let mut store = Store::new(&engine, ());
            let listener = pre
                .instantiate_async(&mut store)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            listener
                .sandbus_host_handler()
                .call_handle(&mut store, &ev)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = wasmtime_floor, per_event, live_instance, per_event_language, language_parts
}
criterion_main!(benches);
