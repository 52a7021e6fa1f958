//! USB through a sandboxed script against a native rusb program, on a real kernel USB stack:
//! one lab VM (`scripts/vm-lab.sh`, QEMU under software emulation) with a USB stick, its
//! release `sandbus daemon` joined to a nats-server on this machine.
//!
//! Not a criterion benchmark, and not in CI: it prints a table (`cargo bench --bench
//! usb_lab`). Each case runs the same transfers twice per round, alternating: through the
//! `usb-bench` script (`guests/usb-bench`: a run on the leased stick, timed inside the guest)
//! and through this very program run inside the VM with `--native` (rusb, the same
//! transfers, timed the same way). Both are slowed alike by the emulation, so the ratio is
//! the figure; the absolute numbers are the VM's, not hardware's.
//!
//! - **control**: GET_DESCRIPTOR (18-byte device descriptor) round trips;
//! - **read 512 B / 64 KiB**: Bulk-Only Transport READ(10)s: command out, data in, status in.
//!
//! Needs `nats-server` on PATH (or `$SANDBUS_NATS_SERVER`), QEMU (installed by the script when
//! run as root) and the guests built (`scripts/build-guests.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark harness: a failure aborts the run"
)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::nats::NatsServer;
use support::vm::{LabVm, VmSpec, disk_image, ensure_image_at};
use support::workspace_root;

/// Rounds per case (alternating script and native); the table shows medians.
const ROUNDS: usize = 5;

/// The stick's vendor and product (QEMU's usb-storage).
const STICK: (u16, u16) = (0x46f4, 0x0001);

/// One measured case: what, transfer size, transfers a round.
struct Case {
    name: &'static str,
    mode: &'static str,
    size: u32,
    count: u32,
}

const CASES: [Case; 4] = [
    Case {
        name: "host call, no transfer",
        mode: "call",
        size: 512,
        count: 2_000,
    },
    Case {
        name: "control (GET_DESCRIPTOR, 18 B)",
        mode: "control",
        size: 512,
        count: 2_000,
    },
    Case {
        name: "bulk read 512 B",
        mode: "read",
        size: 512,
        count: 2_000,
    },
    Case {
        name: "bulk read 64 KiB",
        mode: "read",
        size: 65_536,
        count: 500,
    },
];

/// One round's figures: transfers, bytes, microseconds.
#[derive(Debug, Clone, Copy)]
struct Figures {
    transfers: u64,
    bytes: u64,
    micros: u64,
}

impl Figures {
    /// Parses `transfers=N bytes=B micros=T`.
    fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            text.split_whitespace()
                .find_map(|part| part.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        Some(Self {
            transfers: field("transfers")?,
            bytes: field("bytes")?,
            micros: field("micros")?,
        })
    }

    fn micros_per_transfer(&self) -> f64 {
        self.micros.max(1) as f64 / self.transfers as f64
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.micros.max(1) as f64
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--native") {
        native::main(&args[2..]);
        return;
    }
    let root = workspace_root();
    let guest = root.join("target/guests/usb-bench.wasm");
    assert!(
        guest.exists(),
        "{} is missing: run scripts/build-guests.sh",
        guest.display()
    );
    let sandbus = PathBuf::from(env!("CARGO_BIN_EXE_sandbus"));
    let me = std::env::current_exe().unwrap();
    let image = ensure_image_at(
        &root.join("target/vm-lab-bench"),
        &sandbus,
        std::slice::from_ref(&me),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start();
    let stick = dir.path().join("stick.img");
    disk_image(&stick, 131_072, 0, "sandbus usb bench").unwrap();
    let spec = VmSpec {
        host_id: "bench".into(),
        storage: vec![("stick1".into(), stick)],
        image: Some(image),
        ..VmSpec::default()
    };
    let mut vm = LabVm::start(&spec, &dir.path().join("vm"), nats.port()).unwrap();
    let to_shell = vm.wait_booted().unwrap_or_else(|e| panic!("{e}"));
    // `sandbus ARGS --json`, or `Value::Null` when it fails (`hosts` before any host).
    let cli = |args: &[&str]| -> Value {
        let out = Command::new(&sandbus)
            .args(args)
            .arg("--json")
            .env("SANDBUS_NATS_URL", nats.url())
            .env_remove("SANDBUS_LOG")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let until = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: timed out\n{}",
                vm.console_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("the host to be listed", &mut || {
        cli(&["hosts"])
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["id"] == "bench"))
    });
    let to_host = vm.started.elapsed();
    cli(&[
        "upload",
        guest.to_str().unwrap(),
        "--name",
        "usb-bench",
        "--limit",
        "timeout=10m",
    ]);
    until("the script to load", &mut || {
        cli(&["hosts"]).as_array().is_some_and(|h| {
            h.iter()
                .any(|h| h["id"] == "bench" && h["components"]["usb-bench"] == 1)
        })
    });
    let native_program = format!("/bin/{}", me.file_name().unwrap().to_string_lossy());

    // One blocked `run --follow` per round: no polling process competing with the VM for
    // this machine's CPU while the script is measured.
    let script_round = |case: &Case| -> Figures {
        let out = Command::new(&sandbus)
            .args([
                "run",
                "usb-bench",
                "--device",
                &format!("{:04x}:{:04x}", STICK.0, STICK.1),
                "--arg",
                &format!("mode={}", case.mode),
                "--arg",
                &format!("size={}", case.size),
                "--arg",
                &format!("count={}", case.count),
                "--follow",
                "--json",
            ])
            .env("SANDBUS_NATS_URL", nats.url())
            .env_remove("SANDBUS_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let report: Value = text
            .lines()
            .rev()
            .find_map(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("report").cloned())
            })
            .unwrap_or_else(|| panic!("no report in:\n{text}"));
        assert_eq!(report["verdict"], "pass", "{report}");
        let summary = report["summary"].as_str().unwrap_or_default();
        Figures::parse(summary).unwrap_or_else(|| panic!("{summary}"))
    };

    println!("\nUSB in a lab VM (QEMU TCG, xHCI, usb-storage): script vs native rusb, same VM");
    println!(
        "VM boot: {:.1} s to a shell, {:.1} s until the daemon is listed\n",
        to_shell.as_secs_f64(),
        to_host.as_secs_f64()
    );
    println!(
        "{:<32} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "case", "script µs/tr", "native µs/tr", "script MB/s", "native MB/s", "ratio"
    );
    for case in &CASES {
        let mut script = Vec::new();
        let mut native = Vec::new();
        for round in 0..ROUNDS {
            let native_round = |vm: &mut LabVm| -> Figures {
                let out = vm
                    .shell(&format!(
                        "{native_program} --native {} {} {} {:04x}:{:04x}",
                        case.mode, case.size, case.count, STICK.0, STICK.1
                    ))
                    .unwrap_or_else(|e| panic!("{e}"));
                Figures::parse(&out).unwrap_or_else(|| panic!("native: {out}"))
            };
            if round % 2 == 0 {
                script.push(script_round(case));
                native.push(native_round(&mut vm));
            } else {
                native.push(native_round(&mut vm));
                script.push(script_round(case));
            }
        }
        let script = median(&script);
        let native = median(&native);
        println!(
            "{:<32} {:>12.1} {:>12.1} {:>10.2} {:>10.2} {:>7.2}x",
            case.name,
            script.micros_per_transfer(),
            native.micros_per_transfer(),
            script.megabytes_per_second(),
            native.megabytes_per_second(),
            native.micros_per_transfer() / script.micros_per_transfer(),
        );
    }
    println!(
        "\nratio: native time per transfer / script time per transfer (1.00x: the script is \
         as fast as native; for bulk reads it is also the throughput ratio). Medians of \
         {ROUNDS} rounds, alternating."
    );
    drop(vm);
    drop(dir);
}

/// The median round by time per transfer.
fn median(rounds: &[Figures]) -> Figures {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.micros_per_transfer().total_cmp(&b.micros_per_transfer()));
    sorted[sorted.len() / 2]
}

/// The native half: run inside the VM as `PROGRAM --native MODE SIZE COUNT VID:PID`; prints
/// `transfers=N bytes=B micros=T` like the script.
mod native {
    use std::time::{Duration, Instant};

    use rusb::UsbContext as _;

    const TIMEOUT: Duration = Duration::from_secs(5);

    pub fn main(args: &[String]) {
        let [mode, size, count, kind] = args else {
            panic!("usage: --native control|read SIZE COUNT VID:PID");
        };
        let size: usize = size.parse().unwrap();
        let count: u32 = count.parse().unwrap();
        let (vid, pid) = kind.split_once(':').unwrap();
        let vid = u16::from_str_radix(vid, 16).unwrap();
        let pid = u16::from_str_radix(pid, 16).unwrap();
        let context = rusb::Context::new().unwrap();
        let device = context
            .devices()
            .unwrap()
            .iter()
            .find(|d| {
                d.device_descriptor()
                    .is_ok_and(|dd| dd.vendor_id() == vid && dd.product_id() == pid)
            })
            .expect("the stick is plugged in");
        let handle = device.open().unwrap();
        handle.set_auto_detach_kernel_driver(true).unwrap();
        handle.claim_interface(0).unwrap();
        let config = device.config_descriptor(0).unwrap();
        let (mut out, mut input) = (0, 0);
        for interface in config.interfaces() {
            for setting in interface.descriptors() {
                for endpoint in setting.endpoint_descriptors() {
                    if endpoint.transfer_type() == rusb::TransferType::Bulk {
                        match endpoint.direction() {
                            rusb::Direction::In if input == 0 => input = endpoint.address(),
                            rusb::Direction::Out if out == 0 => out = endpoint.address(),
                            _ => {}
                        }
                    }
                }
            }
        }
        let started = Instant::now();
        let bytes = match mode.as_str() {
            // What the script's `device.info` returns, read natively: no transfer either.
            "call" => {
                for _ in 0..count {
                    let descriptor = device.device_descriptor().unwrap();
                    assert_ne!(descriptor.vendor_id(), 0);
                }
                0
            }
            "control" => {
                let mut buf = [0u8; 18];
                for _ in 0..count {
                    let n = handle
                        .read_control(0x80, 0x06, 0x0100, 0, &mut buf, TIMEOUT)
                        .unwrap();
                    assert_eq!(n, 18);
                }
                u64::from(count) * 18
            }
            "read" => {
                let blocks = u16::try_from(size / 512).unwrap();
                let mut data = vec![0u8; size];
                let mut csw = [0u8; 13];
                for tag in 1..=count {
                    handle
                        .write_bulk(out, &read_command(tag, blocks), TIMEOUT)
                        .unwrap();
                    let n = handle.read_bulk(input, &mut data, TIMEOUT).unwrap();
                    assert_eq!(n, size);
                    let n = handle.read_bulk(input, &mut csw, TIMEOUT).unwrap();
                    assert!(n == 13 && &csw[0..4] == b"USBS" && csw[12] == 0);
                    assert_eq!(csw[4..8], tag.to_le_bytes());
                }
                u64::from(count) * size as u64
            }
            other => panic!("no mode {other}"),
        };
        let micros = started.elapsed().as_micros();
        handle.release_interface(0).unwrap();
        println!("transfers={count} bytes={bytes} micros={micros}");
    }

    /// A READ(10) Command Block Wrapper, as `guests/usb-bench` builds it.
    fn read_command(tag: u32, blocks: u16) -> [u8; 31] {
        let mut cbw = [0u8; 31];
        cbw[0..4].copy_from_slice(b"USBC");
        cbw[4..8].copy_from_slice(&tag.to_le_bytes());
        cbw[8..12].copy_from_slice(&(u32::from(blocks) * 512).to_le_bytes());
        cbw[12] = 0x80;
        cbw[14] = 10;
        cbw[15] = 0x28;
        cbw[22..24].copy_from_slice(&blocks.to_be_bytes());
        cbw
    }
}
