//! Hostile guests: each is stopped with the right error kind, and the same sandbox serves
//! the next invocation normally.

use std::time::{Duration, Instant};

use sandbus::sandbox::{HandlerOutcome, InvokeErrorKind, PreparedComponent};

use super::support::{guest, wat_listener, wat_listener_importing};
use super::{Harness, event, listener};

/// A well-behaved listener must still work after each hostile call.
async fn sandbox_still_serves(h: &Harness) {
    let ok = listener("well-behaved", &guest("noop-listener"), &[]);
    let done = ok
        .handle(event("vm.started", "after", "{}"), &h.caps)
        .await
        .unwrap();
    assert_eq!(done.output, HandlerOutcome::Ok);
}

async fn expect_failure(
    component: &PreparedComponent,
    kind: InvokeErrorKind,
    needle: &str,
) -> Harness {
    let h = Harness::new();
    let err = component
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .expect_err("the hostile call must fail");
    assert_eq!(err.kind, kind, "{err}");
    assert!(
        err.message.contains(needle),
        "{:?} should mention {needle:?}",
        err.message
    );
    sandbox_still_serves(&h).await;
    h
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_its_deadline() {
    let spin = listener(
        "wat-spin",
        &wat_listener(
            r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32)
            (loop $l (br $l)) unreachable)"#,
        ),
        &["timeout=300ms"],
    );
    let started = Instant::now();
    expect_failure(&spin, InvokeErrorKind::Timeout, "deadline of 300ms").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped far too late: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rust_spin_loop_is_stopped_at_its_deadline() {
    let spin = listener("spin-listener", &guest("spin-listener"), &["timeout=200ms"]);
    expect_failure(&spin, InvokeErrorKind::Timeout, "deadline").await;
}

#[tokio::test]
async fn memory_grow_bomb_hits_its_cap() {
    let bomb = listener(
        "wat-bomb",
        &wat_listener(
            r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32)
            (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
            unreachable)"#,
        ),
        &["memory=8MiB"],
    );
    let h = expect_failure(&bomb, InvokeErrorKind::MemoryLimit, "8388608 bytes").await;
    drop(h);
}

#[tokio::test]
async fn rust_allocation_bomb_hits_its_cap() {
    let bomb = listener(
        "memory-bomb-listener",
        &guest("memory-bomb-listener"),
        &["memory=32MiB"],
    );
    let h = Harness::new();
    let err = bomb
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::MemoryLimit, "{err}");
    assert!(
        err.metering.peak_memory <= 32 << 20,
        "peak {} over the cap",
        err.metering.peak_memory
    );
    assert!(
        err.metering.peak_memory > 16 << 20,
        "peak {} suspiciously low",
        err.metering.peak_memory
    );
    sandbox_still_serves(&h).await;
}

#[tokio::test]
async fn deep_recursion_overflows_the_wasm_stack() {
    let recurse = listener(
        "wat-recursion",
        &wat_listener(
            r#"
            (func $down (param i32) (result i32)
              (call $down (i32.add (local.get 0) (i32.const 1))))
            (func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32)
              (call $down (i32.const 0)))"#,
        ),
        &[],
    );
    expect_failure(&recurse, InvokeErrorKind::StackOverflow, "wasm stack").await;
}

#[tokio::test]
async fn unreachable_trap_fails_only_that_call() {
    let trap = listener(
        "wat-unreachable",
        &wat_listener(
            r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32)
            unreachable)"#,
        ),
        &[],
    );
    expect_failure(&trap, InvokeErrorKind::Trap, "unreachable").await;
}

#[tokio::test]
async fn rust_panic_is_reported_with_its_message() {
    let panic = listener("panic-listener", &guest("panic-listener"), &[]);
    expect_failure(
        &panic,
        InvokeErrorKind::Panic,
        "boom: the listener panicked on purpose",
    )
    .await;
}

#[tokio::test]
async fn huge_return_value_is_refused() {
    let huge = listener("huge-return-listener", &guest("huge-return-listener"), &[]);
    expect_failure(
        &huge,
        InvokeErrorKind::OutputTooLarge,
        "payload limit of 1048576",
    )
    .await;
}

#[tokio::test]
async fn oversized_event_is_refused_before_anything_runs() {
    let ok = listener("noop-listener", &guest("noop-listener"), &["payload=1KiB"]);
    let h = Harness::new();
    let err = ok
        .handle(event("vm.started", "big", &"x".repeat(2048)), &h.caps)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::InputTooLarge);
    assert_eq!(err.metering.wall_us, 0, "nothing should have run");
}

#[tokio::test]
async fn log_flood_is_capped_and_the_call_completes() {
    let flood = listener(
        "log-flood-listener",
        &guest("log-flood-listener"),
        &["log=64KiB", "timeout=20s"],
    );
    let h = Harness::new();
    let done = flood
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .unwrap();
    assert_eq!(done.output, HandlerOutcome::Ok);
    assert!(done.log.bytes <= 64 * 1024, "{:?}", done.log);
    assert!(done.log.dropped_bytes > 100 << 20, "{:?}", done.log);
    let lines = h.log.take();
    let kept: usize = lines.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 * 1024 + 200, "sink got {kept} bytes");
    let last = lines.last().unwrap();
    assert!(last.message.starts_with("log truncated:"), "{last:?}");
}

#[tokio::test]
async fn publishing_to_an_ungranted_subject_is_an_error_the_guest_sees() {
    let leaky = listener(
        "publish-ungranted-listener",
        &guest("publish-ungranted-listener"),
        &[],
    );
    let h = Harness::new();
    let done = leaky
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .unwrap();
    let HandlerOutcome::Reject { reason } = done.output else {
        panic!(
            "expected the guest to report what it saw, got {:?}",
            done.output
        )
    };
    assert!(
        reason.contains("NotGranted(\"secret.payroll\")"),
        "{reason}"
    );
    assert!(
        reason.contains("NotGranted(\"events.audit.leak\")"),
        "{reason}"
    );
    assert!(h.publisher.take().is_empty(), "nothing may reach the bus");
}

/// A guest that never yields must not starve other guests on the same thread: the epoch
/// tick makes it yield, so a normal call completes while it spins.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_does_not_starve_others_on_the_same_thread() {
    let spin = listener("spin-listener", &guest("spin-listener"), &["timeout=3s"]);
    let ok = listener("noop-listener", &guest("noop-listener"), &[]);
    let h = Harness::new();
    let spinning = spin.handle(event("vm.started", "s", "{}"), &h.caps);
    let normal = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let r = ok
            .handle(event("vm.started", "n", "{}"), &h.caps)
            .await
            .unwrap();
        (r, started.elapsed())
    };
    let (spun, (normal, took)) = tokio::join!(spinning, normal);
    assert_eq!(spun.unwrap_err().kind, InvokeErrorKind::Timeout);
    assert_eq!(normal.output, HandlerOutcome::Ok);
    assert!(
        took < Duration::from_secs(2),
        "the normal call waited for the spinner: {took:?}"
    );
}

#[tokio::test]
async fn concurrent_instances_are_bounded_and_extra_calls_wait() {
    let spin = listener(
        "spin-bounded",
        &guest("spin-listener"),
        &["timeout=400ms", "instances=1"],
    );
    let h = Harness::new();
    let started = Instant::now();
    let (a, b) = tokio::join!(
        spin.handle(event("vm.started", "a", "{}"), &h.caps),
        spin.handle(event("vm.started", "b", "{}"), &h.caps),
    );
    assert_eq!(a.unwrap_err().kind, InvokeErrorKind::Timeout);
    assert_eq!(b.unwrap_err().kind, InvokeErrorKind::Timeout);
    // With one slot the second call starts only when the first ends: two deadlines in a row.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fuel_is_metered_and_its_limit_stops_a_loop() {
    let fueled = sandbus::sandbox::Sandbox::new(sandbus::sandbox::SandboxConfig {
        pooling: false,
        fuel: true,
        ..Default::default()
    })
    .unwrap();
    let h = Harness::new();
    let noop = fueled
        .prepare(
            super::spec("noop", sandbus::sandbox::World::Listener, &[], &[]),
            &guest("noop-listener"),
        )
        .unwrap();
    let done = noop
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .unwrap();
    let used = done.metering.fuel.expect("fuel is reported when metered");
    assert!(used > 0 && used < 1_000_000, "noop used {used} fuel");

    let spin = fueled
        .prepare(
            super::spec(
                "spin",
                sandbus::sandbox::World::Listener,
                &[],
                &["fuel=5_000_000", "timeout=30s"],
            ),
            &guest("spin-listener"),
        )
        .unwrap();
    let err = spin
        .handle(event("vm.started", "e2", "{}"), &h.caps)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::OutOfFuel, "{err}");
    assert_eq!(err.metering.fuel, Some(5_000_000));
}

/// A bus that takes a message and never answers.
struct HangingPublisher;

#[async_trait::async_trait]
impl sandbus::imports::bus::Publisher for HangingPublisher {
    async fn publish(
        &self,
        _message: sandbus::imports::bus::OutboundMessage,
    ) -> Result<(), sandbus::imports::bus::PublishError> {
        std::future::pending().await
    }
}

/// The deadline covers time spent inside host calls, not only guest code: a publish that
/// never returns still ends the call at its deadline.
#[tokio::test]
async fn a_host_call_that_hangs_is_cut_off_at_the_deadline() {
    // publish("a.b", [], []) with the result written at 512, then `ok`.
    let publisher = wat_listener_importing(
        r#"(import "sandbus:host/bus@0.1.0" "publish"
             (func $publish (param i32 i32 i32 i32 i32 i32 i32)))"#,
        r#"(data (i32.const 256) "a.b")
           (func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32)
             (call $publish (i32.const 256) (i32.const 3) (i32.const 0) (i32.const 0)
                            (i32.const 0) (i32.const 0) (i32.const 512))
             (call $ok))"#,
    );
    let hanging = super::sandbox()
        .prepare(
            super::spec(
                "wat-publisher",
                sandbus::sandbox::World::Listener,
                &["a.b"],
                &["timeout=300ms"],
            ),
            &publisher,
        )
        .unwrap();
    let mut h = Harness::new();
    h.caps.publisher = std::sync::Arc::new(HangingPublisher);
    let started = Instant::now();
    let err = hanging
        .handle(event("vm.started", "e1", "{}"), &h.caps)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The same component with a working bus publishes and returns ok.
    let h = Harness::new();
    let done = hanging
        .handle(event("vm.started", "e2", "{}"), &h.caps)
        .await
        .unwrap();
    assert_eq!(done.output, HandlerOutcome::Ok);
    assert_eq!(h.publisher.take().len(), 1);
}

/// A report whose 50,000 steps all name the same 1 MiB string would be 50 GiB once copied
/// out: the copy budget stops it at the payload limit, and the host stays up.
#[tokio::test]
async fn aliased_strings_in_a_return_value_cannot_amplify_host_memory() {
    let amplifier = super::support::wat_script(
        r#"(func (export "sandbus:host/runner@0.1.0#run") (param i32 i32) (result i32)
             (local $i i32) (local $p i32)
             (drop (memory.grow (i32.const 64)))
             (local.set $p (i32.const 0x200000))
             (loop $steps
               (i32.store (local.get $p) (i32.const 0x100000))
               (i32.store offset=4 (local.get $p) (i32.const 0x100000))
               (i32.store8 offset=8 (local.get $p) (i32.const 0))
               (i64.store offset=16 (local.get $p) (i64.const 0))
               (i32.store8 offset=24 (local.get $p) (i32.const 0))
               (local.set $p (i32.add (local.get $p) (i32.const 40)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $steps (i32.lt_u (local.get $i) (i32.const 50000))))
             (i32.store8 (i32.const 64) (i32.const 0))
             (i32.store offset=4 (i32.const 64) (i32.const 0x200000))
             (i32.store offset=8 (i32.const 64) (i32.const 50000))
             (i32.store offset=12 (i32.const 64) (i32.const 0))
             (i32.store offset=16 (i32.const 64) (i32.const 0))
             (i32.const 64))"#,
    );
    let script = super::sandbox()
        .prepare(
            super::spec("wat-amplifier", sandbus::sandbox::World::Script, &[], &[]),
            &amplifier,
        )
        .unwrap();
    let h = Harness::new();
    let err = script.run(vec![], &h.caps).await.unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::OutputTooLarge, "{err}");
    assert!(
        err.message.contains("payload limit of 1048576"),
        "{}",
        err.message
    );
    sandbox_still_serves(&h).await;
}
