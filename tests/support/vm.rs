//! Lab hosts in VMs: a Debian kernel under QEMU with emulated USB devices, running the release
//! `sandbus daemon` on a real kernel USB stack (see `scripts/vm-lab.sh`, which builds the image
//! and holds the one QEMU command line).
//!
//! A [`LabVm`] is one booted VM. Through it a test plugs and unplugs devices ([`LabVm::qmp`]
//! on QEMU's QMP socket), types on an emulated keyboard, reads the VM's console, and runs
//! shell commands inside the VM ([`LabVm::shell`], on its second serial port) to see what the
//! kernel sees (which driver is bound to an interface). The VM is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::workspace_root;

/// How long a VM may take to boot and run its first command (software emulation on a busy
/// two-core machine).
pub const BOOT_PATIENCE: Duration = Duration::from_secs(180);

/// What to plug into a VM at boot, and how its daemon runs.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// The daemon's host id.
    pub host_id: String,
    /// QEMU ids of the `usb-kbd` keyboards (also their serial numbers).
    pub keyboards: Vec<String>,
    /// `usb-storage` sticks: QEMU id (also the serial number) and raw disk image.
    pub storage: Vec<(String, PathBuf)>,
    /// `usb-serial` (FTDI) adapters: QEMU id (also the serial number) and the unix socket
    /// the test listens on for the adapter's other end.
    pub serial: Vec<(String, PathBuf)>,
    /// Run the daemon as `nobody` (no access to `/dev/bus/usb`).
    pub unprivileged: bool,
    /// Turn libusb hotplug off in the daemon: it polls.
    pub poll: bool,
    /// How often the daemon scans its devices (`2s` when `None`). A long interval on a VM
    /// with hotplug proves that arrivals come from libusb's events, not from the scan.
    pub scan_every: Option<String>,
    /// The image directory ([`ensure_image_at`]); [`lab_dir`] when `None`.
    pub image: Option<PathBuf>,
}

/// Builds the VM image (`scripts/vm-lab.sh image`) when it is missing or older than the
/// release binary it carries. The release binary itself is built by `scripts/test.sh` (or
/// `cargo build --release -p sandbus`); tests never run cargo.
pub fn ensure_image() -> Result<PathBuf, String> {
    let root = workspace_root();
    let binary = std::env::var_os("SANDBUS_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/sandbus"));
    ensure_image_at(&lab_dir(), &binary, &[])
}

/// [`ensure_image`] into `dir`, carrying `binary` as the daemon and `extras` as more programs
/// in the VM's `/bin` (a benchmark's native half). Returns the image directory.
pub fn ensure_image_at(dir: &Path, binary: &Path, extras: &[PathBuf]) -> Result<PathBuf, String> {
    let root = workspace_root();
    let built = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let image = dir.join("initrd.img");
    if built(binary).is_none() {
        return Err(format!(
            "{} is missing: the VM lab runs the release daemon; build it with \
             `cargo build --release -p sandbus` (scripts/test.sh does)",
            binary.display()
        ));
    }
    let inputs = [
        binary.to_owned(),
        root.join("scripts/vm-lab-init.sh"),
        root.join("scripts/vm-lab.sh"),
    ];
    let fresh = built(&image).is_some_and(|image_time| {
        inputs
            .iter()
            .chain(extras)
            .all(|input| built(input).is_some_and(|t| t <= image_time))
    });
    if !fresh {
        let extras: Vec<String> = extras.iter().map(|e| e.display().to_string()).collect();
        let out = Command::new(root.join("scripts/vm-lab.sh"))
            .arg("image")
            .env("SANDBUS_BINARY", binary)
            .env("SANDBUS_VM_LAB_DIR", dir)
            .env("SANDBUS_VM_EXTRA", extras.join(":"))
            .output()
            .map_err(|e| format!("cannot run scripts/vm-lab.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/vm-lab.sh image failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(dir.to_owned())
}

/// Where the image is built by default.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("SANDBUS_VM_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/vm-lab"))
}

/// One booted lab VM.
pub struct LabVm {
    /// The daemon's host id.
    pub host_id: String,
    dir: PathBuf,
    qemu: Child,
    qmp: Option<Qmp>,
    shell: Option<UnixStream>,
    /// Commands sent to the shell so far (each answer is numbered).
    commands: u64,
    /// When the VM was started.
    pub started: Instant,
}

impl LabVm {
    /// Starts QEMU for `spec` (files in `dir`), its daemon joining the nats-server on
    /// 127.0.0.1:`nats_port`. Returns at once: [`LabVm::wait_booted`] waits for the shell.
    pub fn start(spec: &VmSpec, dir: &Path, nats_port: u16) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut command = Command::new(workspace_root().join("scripts/vm-lab.sh"));
        command.arg("boot").arg("--dir").arg(dir);
        command.args(["--nats", &nats_port.to_string(), "--host-id", &spec.host_id]);
        for keyboard in &spec.keyboards {
            command.args(["--keyboard", keyboard]);
        }
        for (id, image) in &spec.storage {
            command
                .arg("--storage")
                .arg(format!("{id}={}", image.display()));
        }
        for (id, socket) in &spec.serial {
            command
                .arg("--serial")
                .arg(format!("{id}={}", socket.display()));
        }
        if spec.unprivileged {
            command.args(["--daemon-user", "nobody"]);
        }
        if spec.poll {
            command.arg("--poll");
        }
        if let Some(every) = &spec.scan_every {
            command.args(["--scan-every", every]);
        }
        // No VM outlives the test binary, however it ends.
        command.arg("--die-with-parent");
        let log = std::fs::File::create(dir.join("qemu.log")).map_err(|e| e.to_string())?;
        let qemu = command
            .env(
                "SANDBUS_VM_LAB_DIR",
                spec.image.clone().unwrap_or_else(lab_dir),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start scripts/vm-lab.sh boot: {e}"))?;
        Ok(Self {
            host_id: spec.host_id.clone(),
            dir: dir.to_owned(),
            qemu,
            qmp: None,
            shell: None,
            commands: 0,
            started: Instant::now(),
        })
    }

    /// Waits until the VM's shell answers (the kernel is up, its drivers loaded, the daemon
    /// starting); returns how long the boot took.
    pub fn wait_booted(&mut self) -> Result<Duration, String> {
        let deadline = self.started + BOOT_PATIENCE;
        loop {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return Err(format!(
                    "QEMU exited ({status}) while booting {}:\n{}\n{}",
                    self.host_id,
                    self.qemu_log(),
                    self.console_tail(40)
                ));
            }
            // One connection, probed again and again: what was written before the VM's shell
            // ran is read by it later, and a late answer to an earlier probe is told apart
            // by its number (a slow boot on a busy machine must not restart the handshake).
            if self.shell.is_none() {
                self.shell = UnixStream::connect(self.dir.join("shell.sock")).ok();
            }
            if self.shell.is_some() && self.shell_timeout("true", Duration::from_secs(5)).is_ok() {
                return Ok(self.started.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not boot within {BOOT_PATIENCE:?} (its shell {} after {} probes):\n{}",
                    self.host_id,
                    if self.shell.is_some() {
                        "did not answer"
                    } else {
                        "could not be reached"
                    },
                    self.commands,
                    self.console_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The VM's console (kernel messages and the daemon's log).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The last `lines` lines of the console, headed with the host id.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = self.console();
        let all: Vec<&str> = console.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- console of {} (last {lines} lines)\n{tail}",
            self.host_id
        )
    }

    fn qemu_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }

    /// Runs `command` in the VM's shell; its output (stdout and stderr). Errors when it
    /// exits non-zero or does not answer within 30 s.
    pub fn shell(&mut self, command: &str) -> Result<String, String> {
        self.shell_timeout(command, Duration::from_secs(30))
    }

    /// [`LabVm::shell`] with its own patience for the answer.
    pub fn shell_timeout(&mut self, command: &str, timeout: Duration) -> Result<String, String> {
        // Each command's answer ends with its own number: an answer to an earlier command
        // that came too late is skipped, never taken for this one's.
        self.commands += 1;
        let done = format!("__done__{} ", self.commands);
        let stream = self
            .shell
            .as_mut()
            .ok_or_else(|| "the VM has not booted".to_owned())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        assert!(!command.contains('\n'), "one shell command a line");
        // Written so that the command's text (echoed while the VM's terminal is still in its
        // boot-time mode) never contains the marker itself.
        let n = self.commands;
        if let Err(e) =
            stream.write_all(format!("{command}; echo \"__done__$(({n})) $?\"\n").as_bytes())
        {
            self.shell = None;
            return Err(format!("the VM's shell is gone: {e}"));
        }
        let mut output = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => {
                    self.shell = None;
                    return Err("the VM's shell closed".to_owned());
                }
                Ok(_) => output.push(byte[0]),
                Err(e) => return Err(format!("`{command}` in the VM: no answer ({e})")),
            }
            let text = String::from_utf8_lossy(&output);
            if text.ends_with('\n')
                && let Some(at) = text.rfind(&done)
            {
                let status = text[at + done.len()..].trim();
                // A late answer to an earlier command ends with its own marker line.
                let start = text[..at]
                    .rfind("__done__")
                    .and_then(|end| text[end..].find('\n').map(|nl| end + nl + 1))
                    .unwrap_or(0);
                let out = text[start.min(at)..at].replace('\r', "");
                return if status == "0" {
                    Ok(out)
                } else {
                    Err(format!("`{command}` in the VM exited {status}: {out}"))
                };
            }
        }
    }

    /// The driver the kernel has bound to USB interface `interface` (a sysfs name such as
    /// `1-1:1.0`), or `None`.
    pub fn interface_driver(&mut self, interface: &str) -> Result<Option<String>, String> {
        let out = self.shell(&format!(
            "readlink /sys/bus/usb/devices/{interface}/driver || true"
        ))?;
        Ok(out
            .trim()
            .rsplit('/')
            .next()
            .filter(|d| !d.is_empty())
            .map(str::to_owned))
    }

    /// Sends a QMP command; its `return` value, or the error QEMU gave.
    pub fn qmp(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.dir.join("qmp.sock"))?);
        }
        let qmp = self.qmp.as_mut().ok_or("no QMP connection")?;
        qmp.execute(command, arguments)
    }

    /// Plugs a `usb-kbd` with QEMU id (and serial) `id` into the xHCI controller.
    pub fn plug_keyboard(&mut self, id: &str) -> Result<(), String> {
        self.qmp(
            "device_add",
            json!({"driver": "usb-kbd", "bus": "xhci.0", "id": id, "serial": id}),
        )
        .map(drop)
    }

    /// Plugs a `usb-storage` stick with QEMU id (and serial) `id`, backed by `image`.
    pub fn plug_storage(&mut self, id: &str, image: &Path) -> Result<(), String> {
        let node = format!("{id}-hot");
        // A node of an earlier plugging of this id stays until deleted.
        let _ = self.qmp("blockdev-del", json!({"node-name": node}));
        self.qmp(
            "blockdev-add",
            json!({"driver": "raw", "node-name": node,
                   "file": {"driver": "file", "filename": image}}),
        )?;
        self.qmp(
            "device_add",
            json!({"driver": "usb-storage", "bus": "xhci.0", "id": id, "serial": id,
                   "drive": node, "removable": true}),
        )
        .map(drop)
    }

    /// Plugs back the `usb-serial` adapter `id` that was plugged at boot (its character
    /// device, and so its connection to the test's socket, stays while it is unplugged).
    pub fn plug_serial(&mut self, id: &str) -> Result<(), String> {
        self.qmp(
            "device_add",
            json!({"driver": "usb-serial", "bus": "xhci.0", "id": id, "serial": id,
                   "chardev": format!("{id}-chr"), "always-plugged": true}),
        )
        .map(drop)
    }

    /// Unplugs device `id` and waits until QEMU says it is gone.
    pub fn unplug(&mut self, id: &str) -> Result<(), String> {
        self.qmp("device_del", json!({"id": id}))?;
        let qmp = self.qmp.as_mut().ok_or("no QMP connection")?;
        qmp.wait_event("DEVICE_DELETED", |data| data["device"] == id)
    }

    /// Types `text` (lowercase letters, digits, space, `\n` for Enter), one press and release
    /// per character, on the VM's keyboard. QEMU routes the keys itself: without a display
    /// it cannot bind events to one named device, so a lab VM that types has one keyboard.
    pub fn type_text(&mut self, text: &str) -> Result<(), String> {
        for c in text.chars() {
            let key = match c {
                'a'..='z' | '0'..='9' => c.to_string(),
                ' ' => "spc".to_owned(),
                '\n' => "ret".to_owned(),
                other => return Err(format!("cannot type {other:?}")),
            };
            for down in [true, false] {
                self.qmp(
                    "input-send-event",
                    json!({"events": [
                        {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": key}}}
                    ]}),
                )?;
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        Ok(())
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.qemu.try_wait(), Ok(None))
    }
}

impl Drop for LabVm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// A QMP connection: JSON lines, commands answered in order, events in between.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for a command's answer.
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, String> {
        let stream =
            UnixStream::connect(path).map_err(|e| format!("QMP at {}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP closed".to_owned()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}")),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let request = json!({"execute": command, "arguments": arguments});
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|e| format!("QMP: {e}"))?;
        loop {
            let answer = self.read()?;
            if let Some(value) = answer.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("QMP {command}: {error}"));
            }
            self.events.push(answer);
        }
    }

    /// Waits up to 30 s for event `name` whose data satisfies `matches`.
    fn wait_event(&mut self, name: &str, matches: impl Fn(&Value) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = self
                .events
                .iter()
                .position(|e| e["event"] == name && matches(&e["data"]))
            {
                self.events.remove(at);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("QMP: no {name} event within 30 s"));
            }
            let event = self.read()?;
            self.events.push(event);
        }
    }
}

/// A raw disk image of `blocks` 512-byte blocks at `path`, with `marker` written at the
/// start of block `marker_lba` (the rest of the image zeros).
pub fn disk_image(path: &Path, blocks: u64, marker_lba: u64, marker: &str) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::create(path)?;
    file.set_len(blocks * 512)?;
    file.seek(SeekFrom::Start(marker_lba * 512))?;
    file.write_all(marker.as_bytes())?;
    file.sync_all()
}
