//! Scripts on a simulated USB device: the guest reaches only the device its run was given,
//! transfers are bounded by the run's deadline, and the device is usable (after a reset) by
//! the next run whatever the last one did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbus::devices::simulated::SimulatedBackend;
use sandbus::devices::{self, DeviceBackend};
use sandbus::imports::usb::LeasedDevice;
use sandbus::sandbox::{InvokeErrorKind, PreparedComponent, World};
use sandbus::sandbox::{StepOutcome, Verdict};

use super::support::guest;
use super::{Harness, sandbox, spec};

/// Two boards: a loopback board and a second one the scripts are not given.
const DEVICES: &str = r#"
[[device]]
id = "board-1"
vendor_id = 0x1209
product_id = 0x0001
serial = "SB-0001"
manufacturer = "sandbus"
product = "Loopback board"

[device.loopback]
out = 0x01
in = 0x81

[[device]]
id = "board-2"
vendor_id = 0x1209
product_id = 0x0002
serial = "SB-0002"

[device.loopback]
out = 0x01
in = 0x81
"#;

fn backend() -> Arc<SimulatedBackend> {
    Arc::new(SimulatedBackend::from_toml_str(DEVICES).unwrap())
}

fn leased(backend: &Arc<SimulatedBackend>, id: &str) -> LeasedDevice {
    let info = backend
        .scan()
        .unwrap()
        .into_iter()
        .find(|d| d.id == id)
        .unwrap();
    LeasedDevice {
        info,
        backend: backend.clone() as Arc<dyn DeviceBackend>,
        own_thread: None,
    }
}

fn script(name: &str, limits: &[&str]) -> PreparedComponent {
    sandbox()
        .prepare(spec(name, World::Script, &[], limits), &guest(name))
        .unwrap()
}

fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn usb_smoke_reads_the_descriptor_and_loops_bytes_back() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-1"));
    let smoke = script("usb-smoke", &[]);
    let run = smoke
        .run(
            args(&[("vendor", "1209"), ("product", "0001"), ("size", "300")]),
            &harness.caps,
        )
        .await
        .unwrap();
    let report = run.output;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.summary);
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "open",
            "device-descriptor",
            "claim-interface",
            "bulk-loopback"
        ]
    );
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Passed)
    );
    assert!(report.summary.contains("300 bytes"), "{}", report.summary);
}

#[tokio::test]
async fn usb_smoke_fails_on_a_board_of_the_wrong_kind() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-2"));
    let run = script("usb-smoke", &[])
        .run(
            args(&[("vendor", "1209"), ("product", "0001")]),
            &harness.caps,
        )
        .await
        .unwrap();
    let report = run.output;
    assert_eq!(report.verdict, Verdict::Fail);
    let step = &report.steps[1];
    assert_eq!(step.outcome, StepOutcome::Failed);
    assert!(
        step.detail
            .as_deref()
            .unwrap_or("")
            .contains("found 1209:0002"),
        "{:?}",
        step.detail
    );
    // The steps after a failed one are skipped, not run.
    assert_eq!(report.steps[3].outcome, StepOutcome::Skipped);
}

#[tokio::test]
async fn script_without_a_device_is_told_there_is_none() {
    let harness = Harness::new();
    let run = script("usb-smoke", &[])
        .run(
            args(&[("vendor", "1209"), ("product", "0001")]),
            &harness.caps,
        )
        .await
        .unwrap();
    assert_eq!(run.output.verdict, Verdict::Fail);
    let detail = run.output.steps[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("NoDevice"), "{detail}");
}

#[tokio::test]
async fn script_reaching_for_a_device_it_did_not_lease_is_refused() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-1"));
    let probe = script("usb-probe-script", &[]);
    // board-2 exists on this host, but the run leased board-1.
    let run = probe
        .run(
            args(&[("mode", "other"), ("vendor", "1209"), ("product", "0002")]),
            &harness.caps,
        )
        .await
        .unwrap();
    assert_eq!(run.output.verdict, Verdict::Fail);
    assert!(
        run.output.summary.contains("NotLeased(\"1209:0002\")"),
        "{}",
        run.output.summary
    );
    assert_eq!(
        backend.opens("board-2"),
        0,
        "the other board was never opened"
    );
    // The right ids but another serial: refused the same way.
    let run = probe
        .run(
            args(&[
                ("mode", "other"),
                ("vendor", "1209"),
                ("product", "0001"),
                ("serial", "SB-9999"),
            ]),
            &harness.caps,
        )
        .await
        .unwrap();
    assert!(
        run.output.summary.contains("NotLeased"),
        "{}",
        run.output.summary
    );
    // And the leased one is found.
    let run = probe
        .run(
            args(&[("mode", "other"), ("vendor", "1209"), ("product", "0001")]),
            &harness.caps,
        )
        .await
        .unwrap();
    assert_eq!(run.output.verdict, Verdict::Pass, "{}", run.output.summary);
}

#[tokio::test]
async fn script_looping_on_the_device_times_out_and_the_device_is_reset_for_the_next_run() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-1"));
    let hog = script("usb-probe-script", &["timeout=500ms"]);
    let started = Instant::now();
    let err = hog
        .run(args(&[("mode", "hog")]), &harness.caps)
        .await
        .unwrap_err();
    assert_eq!(err.kind, InvokeErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let resets = backend.resets("board-1");
    let id = "board-1".to_owned();
    let reset_backend = backend.clone();
    tokio::task::spawn_blocking(move || devices::reset_after_run(&*reset_backend, &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.resets("board-1"), resets + 1);
    // The next run gets a working device.
    let run = script("usb-smoke", &[])
        .run(
            args(&[("vendor", "1209"), ("product", "0001")]),
            &harness.caps,
        )
        .await
        .unwrap();
    assert_eq!(run.output.verdict, Verdict::Pass, "{}", run.output.summary);
}

#[tokio::test]
async fn device_detached_mid_run_fails_the_read_with_disconnected() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-1"));
    let detacher = backend.clone();
    let detach = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        detacher.detach("board-1").unwrap();
    });
    let probe = script("usb-probe-script", &[]);
    let started = Instant::now();
    // Nothing was written, so the read waits until the device goes away.
    let run = probe
        .run(
            args(&[("mode", "read"), ("timeout-ms", "30000")]),
            &harness.caps,
        )
        .await
        .unwrap();
    detach.await.unwrap();
    assert_eq!(run.output.verdict, Verdict::Fail);
    assert!(
        run.output.summary.contains("Disconnected"),
        "{}",
        run.output.summary
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the read ended when the device left, not at its timeout"
    );
    assert!(backend.scan().unwrap().iter().all(|d| d.id != "board-1"));
}

#[tokio::test]
async fn long_read_is_cut_at_the_run_deadline_and_the_device_is_free_at_once() {
    let backend = backend();
    let mut harness = Harness::new();
    harness.caps.usb = Some(leased(&backend, "board-1"));
    let probe = script("usb-probe-script", &["timeout=500ms"]);
    let started = Instant::now();
    // The guest asks for a ten-minute read; the run's deadline is half a second. The read
    // gives up at the deadline, so either the guest sees its timeout and reports, or the
    // deadline stops the guest first: never ten minutes.
    let result = probe
        .run(
            args(&[("mode", "read"), ("timeout-ms", "600000")]),
            &harness.caps,
        )
        .await;
    match result {
        Ok(run) => assert!(
            run.output.summary.contains("Timeout"),
            "{}",
            run.output.summary
        ),
        Err(e) => assert_eq!(e.kind, InvokeErrorKind::Timeout, "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The transfer thread lets go of the device within one slice: a reset finds it free
    // well inside the reset wait.
    let reset_backend = backend.clone();
    let reset_started = Instant::now();
    tokio::task::spawn_blocking(move || devices::reset_after_run(&*reset_backend, "board-1"))
        .await
        .unwrap()
        .unwrap();
    assert!(reset_started.elapsed() < Duration::from_secs(5));
    assert!(!backend.is_open("board-1"));
}
