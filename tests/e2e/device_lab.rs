//! The device lab end to end: simulated boards behind a real daemon, runs through the real
//! CLI, leases in a real nats-server. Never two runs on one device; never a device left
//! occupied, whatever the run did.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{Cluster, guest, write};

/// One loopback board, plus a second board of another kind.
const BOARDS: &str = r#"
[[device]]
id = "board-1"
vendor_id = 0x1209
product_id = 0x0001
serial = "SB-0001"
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

/// A daemon `lab` with the boards, and the two scripts uploaded.
fn lab(devices: &str) -> Cluster {
    lab_with(devices, "")
}

/// [`lab`] with a daemon config file holding `config`.
fn lab_with(devices: &str, config: &str) -> Cluster {
    let mut cluster = Cluster::new();
    let file = write(&cluster, "devices.toml", devices.as_bytes());
    let config = write(&cluster, "sandbus.toml", config.as_bytes());
    cluster.spawn_daemon("lab", &["--simulate", &file, "--config", &config]);
    cluster.wait_for_host("lab");
    cluster.cli_ok(&["upload", &guest("usb-smoke"), "--name", "smoke"]);
    cluster.cli_ok(&[
        "upload",
        &guest("usb-probe-script"),
        "--name",
        "probe",
        "--limit",
        "timeout=10m",
    ]);
    cluster.wait_for_component("lab", "smoke", 1);
    cluster.wait_for_component("lab", "probe", 1);
    cluster.wait("the boards in the inventory", |c| {
        c.cli_json(&["devices"])
            .as_array()
            .is_some_and(|d| d.len() == devices.matches("[[device]]").count())
    });
    cluster
}

/// Starts a run without following it; its id.
fn start(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["run"];
    all.extend(args);
    let record = cluster.cli_json(&all);
    record["id"].as_str().unwrap().to_owned()
}

fn run_record(cluster: &Cluster, id: &str) -> Value {
    cluster
        .cli_json(&["runs"])
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_finished(cluster: &mut Cluster, id: &str) -> Value {
    cluster.wait(&format!("run {id} to finish"), |c| {
        run_record(c, id)["state"] == "finished"
    });
    run_record(cluster, id)
}

/// Runs the smoke test on board 1 and follows it to its end.
fn follow_smoke(cluster: &Cluster) -> std::process::Output {
    cluster.cli(&[
        "run",
        "smoke",
        "--device",
        "serial=SB-0001",
        "--arg",
        "vendor=1209",
        "--arg",
        "product=0001",
        "--follow",
    ])
}

#[test]
fn devices_lists_the_simulated_boards_as_free() {
    let cluster = lab(BOARDS);
    let devices = cluster.cli_json(&["devices"]);
    let devices = devices.as_array().unwrap();
    let board = devices.iter().find(|d| d["id"] == "board-1").unwrap();
    assert_eq!(board["host"], "lab");
    assert_eq!(board["vendor_id"], 0x1209);
    assert_eq!(board["serial"], "SB-0001");
    assert_eq!(board["state"], "free");
    assert_eq!(board["backend"], "simulated");
    let text = cluster.cli_ok(&["devices"]);
    assert!(
        text.contains("1209:0001") && text.contains("SB-0002"),
        "{text}"
    );
    // Each board was announced.
    let attached = cluster.events("sandbus.device.attached");
    assert_eq!(attached.len(), 2, "{attached:?}");
}

#[test]
fn smoke_test_runs_on_the_selected_board_and_follow_streams_log_and_report() {
    let cluster = lab(BOARDS);
    let out = follow_smoke(&cluster);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("bulk-loopback: 64 bytes"), "live log: {text}");
    assert!(text.contains("report: pass"), "{text}");
    assert!(text.contains("device: board-1 1209:0001 on lab"), "{text}");
    // The run is listed, its log replays, and run.finished carries the report.
    let runs = cluster.cli_json(&["runs"]);
    let run = &runs.as_array().unwrap()[0];
    assert_eq!(run["verdict"], "pass");
    assert_eq!(run["device"], "board-1");
    let id = run["id"].as_str().unwrap();
    let log = cluster.cli_ok(&["logs", id]);
    assert!(
        log.contains("device-descriptor: vendor:product 1209:0001"),
        "{log}"
    );
    let finished = cluster.events("sandbus.run.finished");
    assert_eq!(finished[0]["data"]["verdict"], "pass");
    assert_eq!(finished[0]["data"]["steps"].as_array().unwrap().len(), 4);
    assert!(finished[0]["data"]["metering"]["wall_us"].as_u64().unwrap() > 0);
}

#[test]
fn two_runs_racing_for_one_device_run_one_after_the_other() {
    let mut cluster = lab(BOARDS);
    let hold = [
        "probe",
        "--device",
        "1209:0001",
        "--arg",
        "mode=hold",
        "--arg",
        "ms=1500",
    ];
    let first = start(&cluster, &hold);
    let second = start(&cluster, &hold);
    let a = wait_finished(&mut cluster, &first);
    let b = wait_finished(&mut cluster, &second);
    assert_eq!(a["verdict"], "pass", "{a}");
    assert_eq!(b["verdict"], "pass", "{b}");
    // The lease events, in stream order, never show the device held twice.
    let mut holder: Option<String> = None;
    let mut acquired = Vec::new();
    for event in cluster.events("sandbus.lease.*") {
        let run = event["data"]["run"].as_str().unwrap().to_owned();
        match event["type"].as_str().unwrap() {
            "sandbus.lease.acquired" => {
                assert!(
                    holder.is_none(),
                    "{run} took the device while {holder:?} held it"
                );
                holder = Some(run.clone());
                acquired.push(run);
            }
            "sandbus.lease.released" => {
                assert_eq!(holder.as_deref(), Some(run.as_str()));
                assert_eq!(event["data"]["reset"], "ok");
                assert!(event["data"]["held_ms"].as_u64().unwrap() >= 1500);
                holder = None;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(acquired, [first, second], "first come, first served");
    assert!(holder.is_none(), "the device was left leased");
}

#[test]
fn script_looping_on_the_device_times_out_and_the_next_waiter_runs() {
    let mut cluster = lab(BOARDS);
    let hog = start(
        &cluster,
        &[
            "probe",
            "--device",
            "1209:0001",
            "--arg",
            "mode=hog",
            "--timeout",
            "2s",
        ],
    );
    let smoke = start(
        &cluster,
        &[
            "smoke",
            "--device",
            "1209:0001",
            "--arg",
            "vendor=1209",
            "--arg",
            "product=0001",
        ],
    );
    let out = cluster.cli(&["logs", &hog, "--follow"]);
    assert_eq!(out.status.code(), Some(4), "timeout exits 4");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("holding the device forever"), "{text}");
    assert!(text.contains("report: timeout"), "{text}");
    let record = wait_finished(&mut cluster, &hog);
    assert_eq!(record["verdict"], "timeout");
    assert!(
        record["summary"]
            .as_str()
            .unwrap()
            .contains("deadline of 2s"),
        "{record}"
    );
    // The device was reset and released, and the waiting run then passed on it.
    let released: Vec<Value> = cluster
        .events("sandbus.lease.released")
        .into_iter()
        .filter(|e| e["data"]["run"] == hog.as_str())
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["data"]["reset"], "ok");
    assert_eq!(released[0]["data"]["verdict"], "timeout");
    assert_eq!(wait_finished(&mut cluster, &smoke)["verdict"], "pass");
}

#[test]
fn cancelled_run_releases_its_device() {
    let mut cluster = lab(BOARDS);
    let held = start(
        &cluster,
        &[
            "probe",
            "--device",
            "1209:0002",
            "--arg",
            "mode=hold",
            "--arg",
            "ms=600000",
        ],
    );
    cluster.wait("the run to hold the device", |c| {
        run_record(c, &held)["state"] == "running"
    });
    let board = |c: &Cluster| {
        c.cli_json(&["devices"])
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "board-2")
            .cloned()
            .unwrap()
    };
    cluster.wait("the board to show as leased", |c| {
        let b = board(c);
        b["state"] == "leased" && b["run"] == held.as_str()
    });
    cluster.cli_ok(&["cancel", &held]);
    assert_eq!(wait_finished(&mut cluster, &held)["verdict"], "cancelled");
    cluster.wait("the board to be free", |c| board(c)["state"] == "free");
    // Cancelling a finished run is refused and changes nothing.
    let again = cluster.cli(&["cancel", &held]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
}

#[test]
fn script_reaching_for_a_device_it_did_not_lease_gets_an_error() {
    let mut cluster = lab(BOARDS);
    let id = start(
        &cluster,
        &[
            "probe",
            "--device",
            "1209:0001",
            "--arg",
            "mode=other",
            "--arg",
            "vendor=1209",
            "--arg",
            "product=0002",
        ],
    );
    let record = wait_finished(&mut cluster, &id);
    assert_eq!(record["verdict"], "fail");
    assert!(
        record["summary"]
            .as_str()
            .unwrap()
            .contains("NotLeased(\"1209:0002\")"),
        "{record}"
    );
}

#[test]
fn device_detached_mid_run_fails_the_run_with_a_clear_reason() {
    let detaching = r#"
[[device]]
id = "flaky"
vendor_id = 0x1209
product_id = 0x0003
detach_after = "1s"

[device.loopback]
out = 0x01
in = 0x81
"#;
    let mut cluster = lab(detaching);
    let out = cluster.cli(&[
        "run",
        "probe",
        "--device",
        "1209:0003",
        "--arg",
        "mode=read",
        "--arg",
        "timeout-ms=20000",
        "--follow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The daemon ends the run as `error: disconnected`, keeping what the script said.
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("disconnected: device flaky was unplugged during the run"),
        "{text}"
    );
    assert!(text.contains("bulk-in: UsbError::Disconnected"), "{text}");
    cluster.wait("device.detached", |c| {
        c.events("sandbus.device.detached")
            .iter()
            .any(|e| e["data"]["device"]["id"] == "flaky")
    });
    cluster.wait("the device to leave the inventory", |c| {
        c.cli_json(&["devices"])
            .as_array()
            .is_some_and(Vec::is_empty)
    });
}

#[test]
fn daemon_holding_a_device_killed_its_lease_expires_and_the_run_is_reported_as_error() {
    let mut cluster = lab(BOARDS);
    cluster.start_daemon("peer");
    let id = start(
        &cluster,
        &[
            "probe",
            "--device",
            "1209:0001",
            "--arg",
            "mode=hold",
            "--arg",
            "ms=600000",
        ],
    );
    cluster.wait("the run to hold the device", |c| {
        run_record(c, &id)["state"] == "running"
    });
    let nats = cluster.connect();
    let lease_held = |nats: &async_nats::Client, rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let js = async_nats::jetstream::new(nats.clone());
            let leases = js.get_key_value("sandbus-leases").await.unwrap();
            matches!(leases.get("lab.board-1").await, Ok(Some(_)))
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(lease_held(&nats, &rt));
    cluster.kill_daemon("lab");
    let killed = Instant::now();
    while lease_held(&nats, &rt) {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the lease outlived its 10 s TTL by far"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The surviving daemon sees the host gone and finishes its run as an error.
    let record = wait_finished(&mut cluster, &id);
    assert_eq!(record["verdict"], "error");
    assert!(
        record["summary"]
            .as_str()
            .unwrap()
            .contains("stopped answering"),
        "{record}"
    );
    let devices = cluster.cli_json(&["devices"]);
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "offline"),
        "{devices}"
    );
}

#[test]
fn rusb_backend_on_a_machine_without_usb_starts_with_no_devices_and_says_why() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("plain");
    assert_eq!(cluster.cli_json(&["devices"]), serde_json::json!([]));
    cluster.wait("the daemon to say why", |c| {
        c.daemon_log("plain")
            .contains("no USB devices on this host")
    });
    // A run for a device nobody has is refused before anything is queued.
    let out = cluster.cli(&["run", "smoke", "--device", "1209:0001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no device matches `1209:0001`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.cli_json(&["runs"]), serde_json::json!([]));
}

#[test]
fn bad_run_requests_change_nothing() {
    let mut cluster = lab(BOARDS);
    // A listener is not a script.
    cluster.cli_ok(&["upload", &guest("noop-listener"), "--name", "noop"]);
    cluster.wait_for_component("lab", "noop", 1);
    for (args, code, needle) in [
        (
            vec!["run", "noop", "--device", "1209:0001"],
            2,
            "not a script",
        ),
        (vec!["run", "smoke", "--device", "12345"], 2, "VID:PID"),
        (
            vec!["run", "nosuch", "--device", "1209:0001"],
            1,
            "no script `nosuch`",
        ),
        (
            vec!["run", "smoke", "--device", "1209:0001", "--timeout", "0s"],
            2,
            "timeout",
        ),
    ] {
        let out = cluster.cli(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(cluster.cli_json(&["runs"]), serde_json::json!([]));
}

#[test]
fn run_cancelled_in_the_middle_of_a_long_usb_read_frees_the_device_for_the_next_run() {
    let mut cluster = lab(BOARDS);
    // Nothing was written, so this read would wait ten minutes.
    let reading = start(
        &cluster,
        &[
            "probe",
            "--device",
            "1209:0001",
            "--arg",
            "mode=read",
            "--arg",
            "timeout-ms=600000",
        ],
    );
    cluster.wait("the run to hold the device", |c| {
        run_record(c, &reading)["state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(500));
    cluster.cli_ok(&["cancel", &reading]);
    assert_eq!(
        wait_finished(&mut cluster, &reading)["verdict"],
        "cancelled"
    );
    let released: Vec<Value> = cluster
        .events("sandbus.lease.released")
        .into_iter()
        .filter(|e| e["data"]["run"] == reading.as_str())
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["data"]["reset"], "ok", "{released:?}");
    // The device opens again at once for the next run.
    let out = cluster.cli(&[
        "run",
        "smoke",
        "--device",
        "1209:0001",
        "--arg",
        "vendor=1209",
        "--arg",
        "product=0001",
        "--follow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // Exactly one report per run.
    let finished: Vec<Value> = cluster
        .events("sandbus.run.finished")
        .into_iter()
        .filter(|e| e["data"]["run"] == reading.as_str())
        .collect();
    assert_eq!(finished.len(), 1);
}

#[test]
fn a_device_lease_has_one_holder_at_a_time() {
    use sandbus::bus::{BusErrorKind, Lease, LeaseTable};
    let cluster = lab(BOARDS);
    let nats = cluster.connect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats);
        let leases = LeaseTable::ensure(&js, 1).await.unwrap();
        let lease = |run: &str| Lease {
            run: run.into(),
            host: "elsewhere".into(),
            device: "board-9".into(),
            acquired_at: "2026-11-22T00:00:00Z".into(),
        };
        let mut first = leases.acquire(lease("run-a")).await.unwrap();
        // A second run, from any host, is refused and told who holds it.
        let err = leases.acquire(lease("run-b")).await.unwrap_err();
        assert_eq!(err.kind, BusErrorKind::Conflict);
        assert!(err.message.contains("run-a"), "{err}");
        // The holder renews; a retried acquire by the holder itself adopts its lease.
        leases.renew(&mut first).await.unwrap();
        let again = leases.acquire(lease("run-a")).await.unwrap();
        assert_eq!(again.lease.run, "run-a");
        // Released: the next run gets it, and the old holder's renewals now fail.
        leases.release(first.clone()).await.unwrap();
        leases.acquire(lease("run-b")).await.unwrap();
        let err = leases.renew(&mut first).await.unwrap_err();
        assert_eq!(err.kind, BusErrorKind::Conflict);
        assert_eq!(
            leases
                .holder("elsewhere", "board-9")
                .await
                .unwrap()
                .map(|l| l.run),
            Some("run-b".to_owned())
        );
    });
}

#[test]
fn billing_charges_each_run_its_lease_time_and_each_component_its_compute() {
    let mut cluster = lab_with(BOARDS, "[metering]\nwindow = \"500ms\"\n");
    cluster.cli_ok(&[
        "upload",
        &guest("billing-listener"),
        "--name",
        "billing",
        "--limit",
        "timeout=10s",
    ]);
    cluster.cli_ok(&[
        "subscribe",
        "billing",
        "--events",
        "sandbus.lease.released",
        "--events",
        "sandbus.metering",
    ]);
    cluster.wait_for_component("lab", "billing", 1);
    for _ in 0..2 {
        let out = follow_smoke(&cluster);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // What the daemon reported, read back from the event stream.
    let held_ms: u64 = cluster
        .events("sandbus.lease.released")
        .iter()
        .map(|e| e["data"]["held_ms"].as_u64().unwrap())
        .sum();
    let smoke_compute = |c: &Cluster| -> (u64, u64) {
        let mut usage = (0, 0);
        for event in c.events("sandbus.metering") {
            for component in event["data"]["components"].as_array().unwrap() {
                if component["component"] == "smoke" {
                    usage.0 += component["usage"]["invocations"].as_u64().unwrap();
                    usage.1 += component["usage"]["wall_us"].as_u64().unwrap();
                }
            }
        }
        usage
    };
    cluster.wait("both runs metered", |c| smoke_compute(c).0 == 2);
    let (_, wall_us) = smoke_compute(&cluster);
    assert!(held_ms > 0 && wall_us > 0, "{held_ms} ms, {wall_us} us");
    let charged = |c: &Cluster, key: &str| -> Option<u64> {
        c.kv_get("billing", key).map(|v| v.parse().unwrap())
    };
    cluster.wait("the lease time and compute charged", |c| {
        charged(c, "lease-ms/total/smoke") == Some(held_ms)
            && charged(c, "invocations/total/smoke") == Some(2)
            && charged(c, "wall-us/total/smoke") == Some(wall_us)
            // The listener's own calls are metered and charged too.
            && charged(c, "invocations/total/billing").is_some()
    });
    // One usage key per run.
    assert_eq!(cluster.kv("billing", "lease-ms/usage/smoke/").len(), 2);
    let status = cluster.status("billing");
    assert_eq!(status["dead_lettered"], 0, "{status}");
}
