//! The device lab on a real kernel USB stack. Three lab hosts run in QEMU VMs (Debian's
//! kernel, software emulation; see `scripts/vm-lab.sh`), each a release `sandbus daemon`
//! joined to one nats-server on this machine; the test drives them with the real CLI and
//! plugs, unplugs and types through QEMU's QMP:
//!
//! - `lab-a`: a keyboard (`kbd1`) and a USB stick (`stick1`, a disk image with a marker),
//!   its daemon scanning once a minute (so hotplug is libusb's);
//! - `lab-b`: an FTDI serial adapter (`ser1`) whose other end is a [`board::BoardConsole`];
//! - `lab-c`: a keyboard (`kbd9`), its daemon running as `nobody` (no access to
//!   `/dev/bus/usb`) and polling for devices instead of libusb hotplug.
//!
//! The VMs boot once, when the first trial needs them, and every trial runs on them one after
//! another (a custom harness: `libtest-mimic`, one thread). Each trial leaves the lab as it
//! found it (devices plugged back, no run left).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test, with its message"
)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../e2e/cluster.rs"]
#[allow(dead_code, reason = "the VM lab uses part of the e2e harness")]
mod cluster;

mod board;
mod devices;
mod runs;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

use board::BoardConsole;
use cluster::Cluster;
use support::vm::{LabVm, VmSpec, disk_image, ensure_image};

/// Blocks of the stick's disk image (8 MiB).
pub const STICK_BLOCKS: u64 = 16_384;
/// Where the test wrote the stick's marker, and what.
pub const MARKER_LBA: u64 = 100;
/// The marker text at [`MARKER_LBA`].
pub const MARKER: &str = "sandbus vm-lab marker block";

/// The booted lab: one nats-server, three VMs, the board behind the serial adapter.
pub struct Lab {
    /// The nats-server, the CLI and waiting helpers.
    pub cluster: Cluster,
    /// Keyboard and stick.
    pub a: LabVm,
    /// Serial adapter to the board.
    pub b: LabVm,
    /// Unprivileged, polling daemon with a keyboard.
    pub c: LabVm,
    /// The board on the serial adapter's other end.
    pub board: BoardConsole,
    /// The stick's disk image.
    pub stick: PathBuf,
    /// How long each VM took until its shell answered.
    pub boot_times: Vec<(String, Duration)>,
}

impl Lab {
    fn boot() -> Result<Self, String> {
        ensure_image()?;
        let mut cluster = Cluster::new();
        let dir = cluster.dir.path().to_owned();
        let stick = dir.join("stick1.img");
        disk_image(&stick, STICK_BLOCKS, MARKER_LBA, MARKER).map_err(|e| e.to_string())?;
        let board = BoardConsole::listen(&dir.join("ser1.sock")).map_err(|e| e.to_string())?;
        let port = cluster.nats.port();
        // lab-a scans once a minute: what it sees come and go within seconds, libusb's
        // hotplug events told it.
        let spec_a = VmSpec {
            host_id: "lab-a".into(),
            keyboards: vec!["kbd1".into()],
            storage: vec![("stick1".into(), stick.clone())],
            scan_every: Some("60s".into()),
            ..VmSpec::default()
        };
        let spec_b = VmSpec {
            host_id: "lab-b".into(),
            serial: vec![("ser1".into(), board.path().to_owned())],
            ..VmSpec::default()
        };
        let spec_c = VmSpec {
            host_id: "lab-c".into(),
            keyboards: vec!["kbd9".into()],
            unprivileged: true,
            poll: true,
            ..VmSpec::default()
        };
        let mut a = LabVm::start(&spec_a, &dir.join("lab-a"), port)?;
        let mut b = LabVm::start(&spec_b, &dir.join("lab-b"), port)?;
        let mut c = LabVm::start(&spec_c, &dir.join("lab-c"), port)?;
        let mut boot_times = Vec::new();
        for vm in [&mut a, &mut b, &mut c] {
            let took = vm.wait_booted()?;
            eprintln!(
                "vm-lab: {} booted in {:.1} s",
                vm.host_id,
                took.as_secs_f64()
            );
            boot_times.push((vm.host_id.clone(), took));
        }
        for host in ["lab-a", "lab-b", "lab-c"] {
            cluster.wait_for_host(host);
        }
        Ok(Self {
            cluster,
            a,
            b,
            c,
            board,
            stick,
            boot_times,
        })
    }

    /// The VM of host `host`.
    pub fn vm(&mut self, host: &str) -> &mut LabVm {
        match host {
            "lab-a" => &mut self.a,
            "lab-b" => &mut self.b,
            "lab-c" => &mut self.c,
            other => panic!("no lab host {other}"),
        }
    }

    /// Polls `done` every 100 ms for up to `within`; panics with `what` and the consoles'
    /// tails when it does not hold by then.
    pub fn wait_within(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        while !done(self) {
            if std::time::Instant::now() > deadline {
                self.fail(&format!("{what}: not within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails the trial with `message` and the tail of each VM's console.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n{}\n{}\n{}",
            self.a.console_tail(30),
            self.b.console_tail(30),
            self.c.console_tail(30)
        );
    }
}

/// The lab, booted by the first trial that asks; `Err` when it could not boot (every trial
/// then fails with the reason).
static LAB: Mutex<Option<Result<Lab, String>>> = Mutex::new(None);

/// The booted lab, for one trial at a time.
pub fn lab() -> Result<MutexGuard<'static, Option<Result<Lab, String>>>, Failed> {
    let mut guard = LAB.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(Lab::boot());
    }
    match guard.as_ref() {
        Some(Ok(_)) => Ok(guard),
        Some(Err(e)) => Err(format!("the VM lab did not boot: {e}").into()),
        None => Err("the VM lab did not boot".into()),
    }
}

/// A trial on the booted lab.
fn trial(name: &'static str, body: fn(&mut Lab)) -> Trial {
    Trial::test(name, move || {
        let mut guard = lab()?;
        let Some(Ok(lab)) = guard.as_mut() else {
            return Err("the VM lab did not boot".into());
        };
        body(lab);
        Ok(())
    })
}

fn main() -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // One lab, shared: trials run one after another.
    args.test_threads = Some(1);
    let mut trials = devices::trials();
    trials.extend(runs::trials());
    let conclusion = libtest_mimic::run(&args, trials);
    // Shut the VMs and the server down before exiting (statics are never dropped).
    if let Some(Ok(lab)) = LAB.lock().unwrap_or_else(|e| e.into_inner()).take() {
        for (host, took) in &lab.boot_times {
            eprintln!("vm-lab: {host} had booted in {:.1} s", took.as_secs_f64());
        }
        drop(lab);
    }
    conclusion.exit_code()
}
