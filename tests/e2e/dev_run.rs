//! `sandbus dev run`: the log is printed, then the report; the exit code is the verdict.

use std::path::Path;

use super::support::{guest_path, wat_script};
use super::{json_lines, sandbus, stderr, stdout};

#[test]
fn passing_self_check_prints_log_and_report_and_exits_zero() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("self-check");
    let out = sandbus(&["dev", "run", script.to_str().unwrap()], cache.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("report: Pass"), "{text}");
    for step in ["log-levels", "kv-roundtrip", "kv-compare-and-swap"] {
        assert!(text.contains(step), "step {step} missing:\n{text}");
    }
    // Lines from the log import and from stdout/stderr both appear.
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("error")),
        "{text}"
    );
}

#[test]
fn failing_step_gives_fail_verdict_and_exit_one() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("self-check");
    let out = sandbus(
        &[
            "dev",
            "run",
            script.to_str().unwrap(),
            "--arg",
            "fail=kv-increment",
            "--json",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&out);
    let origins: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "log")
        .filter_map(|l| l["line"]["origin"].as_str())
        .collect();
    for origin in ["log", "stdout", "stderr"] {
        assert!(
            origins.contains(&origin),
            "no {origin} line in the log: {origins:?}"
        );
    }
    let report = lines.last().unwrap();
    assert_eq!(report["type"], "report");
    let output = &report["invocation"]["output"];
    assert_eq!(output["verdict"], "fail");
    let failed: Vec<_> = output["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "failed")
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(failed, ["kv-increment"]);
    assert!(
        report["invocation"]["metering"]["peak_memory"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn unknown_argument_gives_error_verdict_and_exit_three() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("self-check");
    let out = sandbus(
        &[
            "dev",
            "run",
            script.to_str().unwrap(),
            "--arg",
            "colour=blue",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("colour"));
}

#[test]
fn script_past_its_deadline_exits_four() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spin-script.wasm");
    std::fs::write(
        &file,
        wat_script(
            r#"(func (export "sandbus:host/runner@0.1.0#run") (param i32 i32) (result i32)
            (loop $l (br $l)) unreachable)"#,
        ),
    )
    .unwrap();
    let out = sandbus(
        &[
            "dev",
            "run",
            file.to_str().unwrap(),
            "--limit",
            "timeout=300ms",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("did not finish: timeout"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn listener_is_refused_as_a_script() {
    let cache = tempfile::tempdir().unwrap();
    let listener = guest_path("spin-listener");
    let out = sandbus(&["dev", "run", listener.to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("this is a listener component"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_limit_is_refused_before_anything_runs() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("self-check");
    let out = sandbus(
        &[
            "dev",
            "run",
            script.to_str().unwrap(),
            "--limit",
            "memory=lots",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid limit `memory=lots`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).is_empty(),
        "nothing should have run: {}",
        stdout(&out)
    );
}

#[test]
fn non_wasm_file_is_refused_with_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let file = cache.path().join("script.wasm");
    std::fs::write(&file, "echo hello").unwrap();
    let out = sandbus(&["dev", "run", file.to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a WebAssembly file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_component_name_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("self-check");
    let out = sandbus(
        &["dev", "run", script.to_str().unwrap(), "--name", "a/b"],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid component name `a/b`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usb_smoke_runs_locally_on_a_simulated_board_and_the_board_is_reset() {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path("usb-smoke");
    let devices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/devices.toml");
    let run = |selector: &str| {
        sandbus(
            &[
                "dev",
                "run",
                script.to_str().unwrap(),
                "--simulate",
                devices.to_str().unwrap(),
                "--device",
                selector,
                "--arg",
                "vendor=1209",
                "--arg",
                "product=0001",
            ],
            cache.path(),
        )
    };
    let out = run("serial=SB-0002");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("device loopback-2 1209:0001 (simulated backend)"),
        "{text}"
    );
    assert!(text.contains("[pass] bulk-loopback"), "{text}");
    assert!(text.contains("device reset"), "{text}");
    // No such device: bad input, nothing runs.
    let out = run("1209:9999");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no device matches `1209:9999`"), "{err}");
    assert!(err.contains("loopback-1 1209:0001"), "{err}");
    assert!(!stdout(&out).contains("running"));
}

/// `sandbus dev run SCRIPT --simulate scripts/devices.toml --device SELECTOR ARGS...`.
fn run_on_demo_devices(script: &str, selector: &str, args: &[&str]) -> std::process::Output {
    let cache = tempfile::tempdir().unwrap();
    let script = guest_path(script);
    let devices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/devices.toml");
    let mut all = vec![
        "dev",
        "run",
        script.to_str().unwrap(),
        "--simulate",
        devices.to_str().unwrap(),
        "--device",
        selector,
    ];
    for arg in args {
        all.extend(["--arg", arg]);
    }
    sandbus(&all, cache.path())
}

#[test]
fn the_device_examples_pass_on_the_simulated_stick_console_and_keypad() {
    // The same scripts that pass on QEMU's devices in the VM lab (tests/vm_lab).
    let storage = run_on_demo_devices(
        "storage-check",
        "serial=STICK-0001",
        &[
            "vendor=SANDBUS",
            "product=SIM STICK",
            "blocks=2048",
            "marker-lba=0",
            "marker=sandbus simulated stick",
        ],
    );
    let console = run_on_demo_devices(
        "console-check",
        "0403:6001",
        &["user=tester", "command=uname -a", "expect=simbox"],
    );
    let keypad = run_on_demo_devices("keypad-check", "0627:0001", &["expect=sandbus42"]);
    for (name, out) in [
        ("storage-check", &storage),
        ("console-check", &console),
        ("keypad-check", &keypad),
    ] {
        let text = stdout(out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}:\n{text}\n{}",
            stderr(out)
        );
        assert!(text.contains("report: Pass"), "{name}:\n{text}");
    }
    assert!(stdout(&storage).contains("[pass] scratch-write-read"));
    assert!(stdout(&console).contains("Linux simbox 6.1.0 sandbus"));
    // A wrong expectation fails: the checks compare.
    let wrong = run_on_demo_devices("keypad-check", "0627:0001", &["expect=sandbus43"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", stdout(&wrong));
}
