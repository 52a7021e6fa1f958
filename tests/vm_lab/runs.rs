//! Script runs on real devices: the kernel driver given back after each run, a device
//! unplugged or a run cancelled in the middle of a blocking transfer, queued runs in order,
//! and each run routed to the host that has its device.

use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use serde_json::Value;

use super::devices::{announced, device};
use super::{Lab, trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "a_run_takes_the_interface_from_its_kernel_driver_and_gives_it_back",
            a_run_takes_the_interface_from_its_kernel_driver_and_gives_it_back,
        ),
        trial(
            "unplugging_the_device_during_a_blocking_read_ends_the_run_within_2s",
            unplugging_the_device_during_a_blocking_read_ends_the_run_within_2s,
        ),
        trial(
            "queued_runs_for_one_device_run_in_arrival_order_and_see_only_their_device",
            queued_runs_for_one_device_run_in_arrival_order_and_see_only_their_device,
        ),
        trial(
            "storage_check_reads_the_marker_and_a_scratch_block_on_the_stick",
            storage_check_reads_the_marker_and_a_scratch_block_on_the_stick,
        ),
        trial(
            "console_check_logs_in_to_the_board_behind_the_serial_adapter",
            console_check_logs_in_to_the_board_behind_the_serial_adapter,
        ),
        trial(
            "keypad_check_reads_the_word_typed_on_the_keyboard",
            keypad_check_reads_the_word_typed_on_the_keyboard,
        ),
    ]
}

/// Uploads the fixture scripts once per lab (a no-op when already there).
pub fn scripts(lab: &mut Lab) {
    let listed = lab.cluster.cli_json(&["ls"]);
    let have = |name: &str| {
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == name))
    };
    for (name, file) in [
        ("storage-check", "storage-check"),
        ("console-check", "console-check"),
        ("keypad-check", "keypad-check"),
    ] {
        if !have(name) {
            lab.cluster
                .cli_ok(&["upload", &super::cluster::guest(file), "--name", name]);
        }
    }
    if !have("probe") {
        lab.cluster.cli_ok(&[
            "upload",
            &super::cluster::guest("usb-probe-script"),
            "--name",
            "probe",
            "--limit",
            "timeout=10m",
        ]);
    }
    for host in ["lab-a", "lab-b", "lab-c"] {
        for name in ["probe", "storage-check", "console-check", "keypad-check"] {
            lab.cluster.wait_for_component(host, name, 1);
        }
    }
}

/// Starts a run (not followed); its id.
pub fn start(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["run"];
    all.extend(args);
    let record = lab.cluster.cli_json(&all);
    record["id"].as_str().unwrap().to_owned()
}

/// The run's record as `sandbus runs` lists it.
pub fn run_record(lab: &Lab, id: &str) -> Value {
    lab.cluster
        .cli_json(&["runs"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The state of `serial`'s device on `host` (`free`, `leased`...), or `absent`.
fn device_state(lab: &Lab, host: &str, serial: &str) -> String {
    device(lab, host, serial)
        .map(|d| d["state"].as_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "absent".to_owned())
}

/// The sysfs name of interface 0 of `serial`'s device on `host` (`1-1:1.0`).
fn interface0(lab: &Lab, host: &str, serial: &str) -> String {
    let found = device(lab, host, serial).unwrap_or_else(|| panic!("no {serial} on {host}"));
    format!("{}:1.0", found["location"].as_str().unwrap())
}

/// `sandbus.run.finished` events of run `id`.
fn finished_events(lab: &Lab, id: &str) -> usize {
    lab.cluster
        .events("sandbus.run.finished")
        .iter()
        .filter(|e| e["data"]["run"] == id)
        .count()
}

fn a_run_takes_the_interface_from_its_kernel_driver_and_gives_it_back(lab: &mut Lab) {
    scripts(lab);
    let interface = interface0(lab, "lab-a", "kbd1");
    assert_eq!(
        lab.a.interface_driver(&interface).unwrap().as_deref(),
        Some("usbhid")
    );
    let attached = announced(lab, "attached", "lab-a", "kbd1");
    // The probe claims interface 0 and waits in one long read of its interrupt endpoint.
    let id = start(
        lab,
        &[
            "probe",
            "--device",
            "serial=kbd1",
            "--arg",
            "mode=read",
            "--arg",
            "in=0x81",
            "--arg",
            "timeout-ms=60000",
            "--timeout",
            "90s",
        ],
    );
    lab.wait_within(
        Duration::from_secs(60),
        "the run to hold the keyboard",
        |lab| run_record(lab, &id)["state"] == "running",
    );
    // While the run has it, the interface is bound to usbfs (the run's claim), not usbhid.
    lab.wait_within(Duration::from_secs(10), "usbhid to let go of it", |lab| {
        lab.a.interface_driver(&interface).unwrap().as_deref() == Some("usbfs")
    });
    // Cancelled in the middle of a blocking read: the device is free within a second.
    lab.cluster.cli_ok(&["cancel", &id]);
    let cancelled = Instant::now();
    lab.wait_within(Duration::from_secs(5), "the keyboard to be free", |lab| {
        device_state(lab, "lab-a", "kbd1") == "free"
    });
    let freed = cancelled.elapsed();
    eprintln!("vm-lab: the keyboard was free {freed:?} after the cancel");
    assert!(freed < Duration::from_secs(1), "freed after {freed:?}");
    lab.wait_within(Duration::from_secs(10), "usbhid bound again", |lab| {
        lab.a.interface_driver(&interface).unwrap().as_deref() == Some("usbhid")
    });
    let record = run_record(lab, &id);
    assert_eq!(record["verdict"], "cancelled", "{record}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(finished_events(lab, &id), 1, "exactly one run.finished");
    // The reset after the run is no unplugging: nothing is announced again.
    assert_eq!(announced(lab, "attached", "lab-a", "kbd1"), attached);
    assert_eq!(announced(lab, "detached", "lab-a", "kbd1"), 0);
}

fn unplugging_the_device_during_a_blocking_read_ends_the_run_within_2s(lab: &mut Lab) {
    scripts(lab);
    // The probe reads the serial adapter's bulk endpoint in a loop and ignores every error:
    // only the daemon seeing the device go can end the run before its deadline.
    let id = start(
        lab,
        &[
            "probe",
            "--device",
            "serial=ser1",
            "--arg",
            "mode=hog",
            "--arg",
            "in=0x81",
            "--timeout",
            "90s",
        ],
    );
    lab.wait_within(
        Duration::from_secs(60),
        "the run to hold the adapter",
        |lab| run_record(lab, &id)["state"] == "running",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        run_record(lab, &id)["state"],
        "running",
        "the read returned"
    );
    lab.b.unplug("ser1").unwrap();
    let unplugged = Instant::now();
    lab.wait_within(Duration::from_secs(10), "the run to end", |lab| {
        run_record(lab, &id)["state"] == "finished"
    });
    let ended = unplugged.elapsed();
    eprintln!("vm-lab: the run ended {ended:?} after the unplug");
    let record = run_record(lab, &id);
    assert!(
        ended < Duration::from_secs(2),
        "ended {ended:?} after the unplug"
    );
    assert_eq!(record["verdict"], "error", "{record}");
    assert!(
        record["summary"]
            .as_str()
            .unwrap()
            .starts_with("disconnected"),
        "{record}"
    );
    lab.wait_within(
        Duration::from_secs(5),
        "the adapter to leave the inventory",
        |lab| device(lab, "lab-b", "ser1").is_none(),
    );
    // Plugged back, the adapter is used by the next run.
    lab.b.plug_serial("ser1").unwrap();
    lab.wait_within(Duration::from_secs(10), "the adapter back, free", |lab| {
        device_state(lab, "lab-b", "ser1") == "free"
    });
    let out = lab.cluster.cli(&[
        "run",
        "probe",
        "--device",
        "serial=ser1",
        "--arg",
        "mode=hold",
        "--arg",
        "ms=100",
        "--follow",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let interface = interface0(lab, "lab-b", "ser1");
    lab.wait_within(Duration::from_secs(10), "ftdi_sio bound again", |lab| {
        lab.b.interface_driver(&interface).unwrap().as_deref() == Some("ftdi_sio")
    });
}

fn queued_runs_for_one_device_run_in_arrival_order_and_see_only_their_device(lab: &mut Lab) {
    scripts(lab);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            start(
                lab,
                &[
                    "probe",
                    "--device",
                    "0403:6001",
                    "--arg",
                    "mode=hold",
                    "--arg",
                    "ms=1500",
                ],
            )
        })
        .collect();
    lab.wait_within(
        Duration::from_secs(120),
        "the three runs to finish",
        |lab| {
            ids.iter()
                .all(|id| run_record(lab, id)["state"] == "finished")
        },
    );
    let started: Vec<String> = lab
        .cluster
        .events("sandbus.lease.acquired")
        .iter()
        .filter_map(|e| e["data"]["run"].as_str().map(str::to_owned))
        .filter(|run| ids.contains(run))
        .collect();
    assert_eq!(started, ids, "runs started in arrival order");
    for id in &ids {
        let record = run_record(lab, id);
        assert_eq!(record["verdict"], "pass", "{record}");
        // Routed to the host that has the adapter.
        assert_eq!(record["host"], "lab-b", "{record}");
    }
    // A run on the adapter asking for the keyboard of another host gets `not-leased`.
    let out = lab.cluster.cli(&[
        "run",
        "probe",
        "--device",
        "serial=ser1",
        "--arg",
        "mode=other",
        "--arg",
        "vendor=0627",
        "--arg",
        "product=0001",
        "--follow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NotLeased"), "{text}");
}

/// Follows `args` to the report: the CLI's output, asserting the run passed on `host` and
/// that the kernel driver `driver` has the device's interface 0 again afterwards.
fn passes_on(lab: &mut Lab, host: &str, serial: &str, driver: &str, args: &[&str]) -> String {
    let out = lab.cluster.cli(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        lab.fail(&format!(
            "{args:?} did not pass:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert!(text.contains(&format!(" on {host}")), "{text}");
    let interface = interface0(lab, host, serial);
    let vm = host.to_owned();
    lab.wait_within(
        Duration::from_secs(10),
        "the kernel driver bound again",
        |lab| lab.vm(&vm).interface_driver(&interface).unwrap().as_deref() == Some(driver),
    );
    text
}

fn storage_check_reads_the_marker_and_a_scratch_block_on_the_stick(lab: &mut Lab) {
    scripts(lab);
    // `sandbus run storage-check` on the stick, expecting `marker` at the marker block.
    let args = |marker: &str| -> Vec<String> {
        [
            "run",
            "storage-check",
            "--device",
            "46f4:0001",
            "--arg",
            "vendor=QEMU",
            "--arg",
            "product=QEMU HARDDISK",
            "--arg",
            &format!("blocks={}", super::STICK_BLOCKS),
            "--arg",
            &format!("marker-lba={}", super::MARKER_LBA),
            "--arg",
            &format!("marker={marker}"),
            "--follow",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let passing = args(super::MARKER);
    let passing: Vec<&str> = passing.iter().map(String::as_str).collect();
    let text = passes_on(lab, "lab-a", "stick1", "usb-storage", &passing);
    for step in ["inquiry", "capacity", "read-marker", "scratch-write-read"] {
        assert!(text.contains(&format!("[pass] {step}")), "{step}: {text}");
    }
    // A wrong expectation fails the run: the check really compares.
    let failing = args("not what the test wrote");
    let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
    let out = lab.cluster.cli(&failing);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("[FAIL] read-marker"), "{text}");
}

fn console_check_logs_in_to_the_board_behind_the_serial_adapter(lab: &mut Lab) {
    scripts(lab);
    let text = passes_on(
        lab,
        "lab-b",
        "ser1",
        "ftdi_sio",
        &[
            "run",
            "console-check",
            "--device",
            "0403:6001",
            "--arg",
            "user=tester",
            "--arg",
            "command=uname -a",
            "--arg",
            "expect=sandbus-board",
            "--follow",
        ],
    );
    assert!(text.contains("[pass] check-answer"), "{text}");
    let received = lab.board.received.lock().unwrap().clone();
    assert!(
        received.iter().any(|l| l == "tester") && received.iter().any(|l| l == "uname -a"),
        "the board received {received:?}"
    );
}

fn keypad_check_reads_the_word_typed_on_the_keyboard(lab: &mut Lab) {
    scripts(lab);
    let id = start(
        lab,
        &[
            "keypad-check",
            "--device",
            "serial=kbd1",
            "--arg",
            "expect=sandbus42",
        ],
    );
    // Keys typed before the script reads them would go to the kernel's keyboard driver.
    lab.wait_within(Duration::from_secs(60), "the script to read keys", |lab| {
        lab.cluster
            .cli_ok(&["logs", &id])
            .contains("set-boot-protocol")
    });
    lab.a.type_text("sandbus42\n").unwrap();
    lab.wait_within(Duration::from_secs(30), "the run to finish", |lab| {
        run_record(lab, &id)["state"] == "finished"
    });
    let record = run_record(lab, &id);
    assert_eq!(record["verdict"], "pass", "{record}");
    let interface = interface0(lab, "lab-a", "kbd1");
    lab.wait_within(Duration::from_secs(10), "usbhid bound again", |lab| {
        lab.a.interface_driver(&interface).unwrap().as_deref() == Some("usbhid")
    });
}
