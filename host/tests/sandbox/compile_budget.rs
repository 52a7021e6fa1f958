//! The compile budget: a sandbox that compiles in worker processes (`sandbus compile-worker`,
//! this package's binary) refuses a component whose compile runs past the time budget or
//! needs more memory than the memory budget, with `LoadErrorKind::CompileBudget` naming the
//! budget, and keeps nothing of it (no compiled code in memory, no cache entry) but the
//! refusal, so the same bytes are refused again without a worker; compiles beyond the
//! concurrency wait their turn; a normal guest compiles in a worker under the same budget,
//! loads into the pooling engine, runs, and is cached so the next sandbox needs no worker. Needs the guests built by
//! `scripts/build-guests.sh`; cargo builds the binary for integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandbus::sandbox::{
    CompileBudget, CompileMode, CompileSettings, HandlerOutcome, LoadErrorKind, Sandbox,
    SandboxConfig, World, engine_fingerprint, pooling_config, precompile,
};

use super::billing::vm_event;
use super::support::{guest, straight_line_listener};
use super::{Harness, event, spec};

/// The `sandbus` binary cargo built for these tests: the compile worker's program.
fn worker_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sandbus"))
}

/// 300,000 straight-line adds (about 900 KB): a debug-built worker needs about 9 s and
/// 324 MiB to compile it, a normal guest a fraction of a second and 8 to 18 MiB.
fn hostile() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| straight_line_listener(300_000))
}

/// A sandbox compiling in workers under `timeout` and `memory`, caching in `cache`.
fn budgeted(timeout: Duration, memory: u64, cache: Option<&Path>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_instances: 16,
        cache_dir: cache.map(Path::to_owned),
        compile: CompileMode::Worker(CompileBudget {
            exe: worker_exe(),
            timeout,
            memory,
            concurrency: 1,
        }),
        ..SandboxConfig::default()
    })
    .unwrap()
}

/// The `.cwasm` entries in a cache directory.
fn cache_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count()
}

#[test]
fn a_compile_over_the_time_budget_is_refused_and_nothing_is_kept() {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = budgeted(Duration::from_millis(300), 2 << 30, Some(cache.path()));
    let started = Instant::now();
    let err = sandbox
        .prepare(spec("hostile", World::Listener, &[], &[]), hostile())
        .err()
        .expect("a compile over the time budget must be refused");
    assert_eq!(err.kind, LoadErrorKind::CompileBudget, "{}", err.message);
    assert!(
        err.message.starts_with(
            "compiling this component took longer than the compile budget of 300ms; it was stopped"
        ),
        "{}",
        err.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the worker must be stopped at the budget, not run on ({:?})",
        started.elapsed()
    );
    assert_eq!(sandbox.compiled_count(), 0);
    assert_eq!(cache_entries(cache.path()), 0);

    // The same bytes again are refused at once, without a worker (which would run for the
    // whole 300 ms before being stopped): a daemon retrying a failed load costs nothing.
    let started = Instant::now();
    let again = sandbox
        .prepare(spec("hostile", World::Listener, &[], &[]), hostile())
        .err()
        .unwrap();
    assert_eq!(again, err);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[test]
fn compiles_beyond_the_concurrency_wait_their_turn() {
    // Two different components, each stopped at the 300 ms budget: one compile at a time
    // takes at least 600 ms for both, two at once about 300 ms. Waiting is not compiling,
    // so both are refused over the time budget, neither over the wait.
    let sandbox = budgeted(Duration::from_millis(300), 2 << 30, None);
    let (one, other) = (hostile(), straight_line_listener(300_001));
    let started = Instant::now();
    let errors = std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            sandbox
                .prepare(spec("one", World::Listener, &[], &[]), one)
                .err()
        });
        let second = scope.spawn(|| {
            sandbox
                .prepare(spec("two", World::Listener, &[], &[]), &other)
                .err()
        });
        [first.join().unwrap(), second.join().unwrap()]
    });
    let elapsed = started.elapsed();
    for e in errors {
        let e = e.expect("both must be refused");
        assert_eq!(e.kind, LoadErrorKind::CompileBudget, "{}", e.message);
    }
    assert!(
        elapsed >= Duration::from_millis(600),
        "the two compiles ran at once ({elapsed:?})"
    );
}

#[tokio::test]
async fn a_compile_over_the_memory_budget_is_refused_and_a_normal_guest_fits() {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = budgeted(Duration::from_secs(120), 128 << 20, Some(cache.path()));
    let err = sandbox
        .prepare(spec("hostile", World::Listener, &[], &[]), hostile())
        .err()
        .expect("a compile over the memory budget must be refused");
    assert_eq!(err.kind, LoadErrorKind::CompileBudget, "{}", err.message);
    assert!(
        err.message.starts_with(
            "compiling this component needed more than the compile budget of 128.0 MiB of \
             memory; it was stopped"
        ),
        "{}",
        err.message
    );
    assert_eq!(sandbox.compiled_count(), 0);
    assert_eq!(cache_entries(cache.path()), 0);

    // The same budget is plenty for a real guest.
    let billing = sandbox
        .prepare(
            spec("billing", World::Listener, &["events.billing.>"], &[]),
            &guest("billing-listener"),
        )
        .unwrap();
    let h = Harness::new();
    let started = vm_event("started", "acme", "vm-1", 1_790_000_000);
    let done = billing.handle(started, &h.caps).await.unwrap();
    assert_eq!(done.output, HandlerOutcome::Ok, "{:?}", h.log.take());
    assert_eq!(cache_entries(cache.path()), 1);
}

#[tokio::test]
async fn a_normal_guest_compiles_in_a_worker_runs_and_is_cached() {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = budgeted(Duration::from_secs(120), 2 << 30, Some(cache.path()));
    let noop = sandbox
        .prepare(
            spec("noop", World::Listener, &[], &[]),
            &guest("noop-listener"),
        )
        .unwrap();
    let h = Harness::new();
    noop.handle(event("vm.started", "e", "{}"), &h.caps)
        .await
        .unwrap();
    assert_eq!(sandbox.compiled_count(), 1);
    assert_eq!(cache_entries(cache.path()), 1);

    // A digest in the cache needs no compile: a sandbox whose worker cannot compile
    // anything (`true` exits at once with no artifact) still loads it.
    let no_worker = Sandbox::new(SandboxConfig {
        pool_instances: 16,
        cache_dir: Some(cache.path().to_owned()),
        compile: CompileMode::Worker(CompileBudget::new("/bin/true".into())),
        ..SandboxConfig::default()
    })
    .unwrap();
    let again = no_worker
        .prepare(
            spec("noop", World::Listener, &[], &[]),
            &guest("noop-listener"),
        )
        .unwrap();
    again
        .handle(event("vm.started", "e2", "{}"), &h.caps)
        .await
        .unwrap();
}

#[test]
fn a_worker_that_makes_no_artifact_is_the_hosts_fault_not_the_components() {
    let sandbox = Sandbox::new(SandboxConfig {
        pooling: false,
        compile: CompileMode::Worker(CompileBudget::new("/bin/true".into())),
        ..SandboxConfig::default()
    })
    .unwrap();
    let err = sandbox
        .prepare(
            spec("noop", World::Listener, &[], &[]),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Host, "{}", err.message);
    assert!(
        err.message
            .contains("this host could not compile the component"),
        "{}",
        err.message
    );
    assert_eq!(sandbox.compiled_count(), 0);
}

#[test]
fn a_missing_worker_program_is_a_configuration_error() {
    let err = Sandbox::new(SandboxConfig {
        pooling: false,
        compile: CompileMode::Worker(CompileBudget::new("/nonexistent/sandbus".into())),
        ..SandboxConfig::default()
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("/nonexistent/sandbus"), "{err}");
}

/// The worker compiles without the pooling allocator (it would reserve the pool's address
/// space for nothing); the sandbox loads the artifact into its pooling engine. wasmtime
/// documents that the allocator does not change compiled code; this holds it to that.
#[test]
fn an_artifact_from_a_non_pooling_engine_loads_in_the_pooling_engine() {
    let config = SandboxConfig {
        pool_instances: 16,
        ..SandboxConfig::default()
    };
    let settings = CompileSettings::of(&config);
    let artifact = precompile(&settings, &guest("noop-listener")).unwrap();

    let plain = wasmtime::Engine::new(&settings.wasm_config()).unwrap();
    let mut pooled_config = settings.wasm_config();
    pooled_config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
        pooling_config(&config),
    ));
    let pooled = wasmtime::Engine::new(&pooled_config).unwrap();
    assert_eq!(engine_fingerprint(&plain), engine_fingerprint(&pooled));
    // SAFETY: the artifact was just made by `precompile` in this process.
    let component = unsafe { wasmtime::component::Component::deserialize(&pooled, &artifact) };
    component.unwrap();

    // Other compilation settings do not load: the check is real.
    let fuelled = CompileSettings {
        fuel: true,
        ..settings
    };
    let other = wasmtime::Engine::new(&fuelled.wasm_config()).unwrap();
    // SAFETY: as above; wasmtime refuses it before using it.
    let refused = unsafe { wasmtime::component::Component::deserialize(&other, &artifact) };
    assert!(refused.is_err());
}
