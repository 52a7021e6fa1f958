//! Simulated USB devices, described in a TOML file: tests and demos run on them.
//!
//! `sandbus daemon --simulate devices.toml` serves these instead of real hardware. Each
//! device answers the standard GET_DESCRIPTOR requests from descriptors generated out of its
//! entry. A generic device's endpoints behave as the file says: a bulk loopback that echoes
//! what was written, fixed answers to control requests, an interrupt endpoint with a fixed
//! report, endpoints that always stall or never answer. A device may instead play a class
//! model, a real kind of device speaking its standard protocol: a USB stick
//! (`mass_storage/`), an FTDI serial adapter with a console behind it (`serial_console.rs`),
//! a boot keyboard (`keyboard.rs`); each module says how closely it follows its standard.
//! Any device may detach on a script.
//!
//! # The file
//!
//! A list of `[[device]]` tables; every table rejects keys it does not know, and a bad file
//! fails [`SimulatedBackend::from_file`] with an [`UsbErrorKind::InvalidArgument`] error naming
//! the file, the device and what is wrong. Numbers may be written in hex (`0x1209`); durations
//! are strings like `5ms` or `2s`. A device's own keys (`stall`, `hang`, ...) go before its
//! sub-tables: in TOML, keys after `[device.loopback]` or `[[device.interrupt]]` belong to
//! that table (and would be rejected there as unknown).
//!
//! ```toml
//! [[device]]
//! id = "board-1"              # required, unique, lower-case letters, digits and `-`
//! vendor_id = 0x1209          # required (but with a class model)
//! product_id = 0x0001         # required (but with a class model)
//! serial = "SB-0001"          # optional (string descriptor 3)
//! manufacturer = "sandbus"    # optional (string descriptor 1)
//! product = "Loopback board"  # optional (string descriptor 2)
//! location = "sim-1"          # optional, default "sim-<n>" (n counts devices from 1)
//! class = 0xff                # optional, default 0xff (bDeviceClass)
//! device_version = 0x0100     # optional, default 0x0100 (bcdDevice)
//! detach_after = "2s"         # optional: vanish this long after the device is first opened
//! detach_after_transfers = 3  # optional: vanish once this many transfers have completed
//! stall = [0x82]              # optional: endpoints whose transfers always stall
//! hang = [0x84]               # optional: IN endpoints whose reads never complete
//!
//! [device.loopback]           # optional: bytes written to `out` are read back from `in`
//! out = 0x01
//! in = 0x81
//! delay = "5ms"               # optional, added to each loopback transfer
//!
//! [[device.control]]          # a fixed answer to one control request
//! request_type = 0xc0         # matched on request_type, request, value and index
//! request = 0x01
//! value = 0                   # optional, default 0
//! index = 0                   # optional, default 0
//! answer = [1, 2, 3]          # IN requests: the bytes returned (required, may be [])
//! delay = "1ms"               # optional
//!
//! [[device.control]]          # an OUT request: no `answer`, whatever it carries is accepted
//! request_type = 0x40
//! request = 0x02
//!
//! [[device.interrupt]]        # an interrupt IN endpoint answering a fixed report
//! endpoint = 0x83
//! answer = [0, 1]
//! period = "10ms"             # optional, default 10ms: each read completes after this long
//!
//! [[device]]
//! id = "bare"
//! vendor_id = 0x1209
//! product_id = 0x0002
//!
//! # Class models: one of the three tables below instead of loopback, control, interrupt,
//! # stall, hang and class. vendor_id, product_id, manufacturer, product, serial and
//! # device_version become optional: their defaults are those of the QEMU device mirrored.
//!
//! [[device]]
//! id = "stick-1"
//! serial = "STICK-0001"       # default "1"
//!
//! [device.mass-storage]       # a USB stick: bulk-only transport, SCSI, 46f4:0001
//! blocks = 2048               # required: the capacity, at most 1 GiB in all
//! block_size = 512            # optional, default 512 (or 1024, 2048, 4096)
//! vendor = "SANDBUS"          # optional INQUIRY strings: at most 8, 16 and 4 ASCII
//! product = "SIM STICK"       #   characters, default "QEMU", "QEMU HARDDISK", "2.5+"
//! revision = "1.0"
//! unit_attention = true       # optional, default false: the first command after power-on
//!                             # or reset (but INQUIRY) fails with UNIT ATTENTION, 29h/00h
//!
//! [[device.mass-storage.block]]   # optional: a block's content, text then zeros
//! lba = 0
//! text = "hello from block 0"
//!
//! [[device]]
//! id = "console-1"
//!
//! [device.serial-console]     # an FTDI FT232 (0403:6001) with a console on its line
//! banner = "simbox 1.0\n"     # optional, default none: said first, then the login prompt
//! login = "login: "           # optional, this default: the login prompt
//! prompt = "$ "               # optional, this default: the shell prompt
//! baud = 115200               # optional, this default: the console's speed (8N1)
//!
//! [[device.serial-console.command]]   # a command line and its answer; any other line
//! line = "uname"                      # gets `sh: WORD: not found`
//! answer = "Linux simbox"
//!
//! [[device]]
//! id = "keypad-1"
//!
//! [device.keyboard]           # a HID boot keyboard (0627:0001)
//! text = "Hello 42\n"         # required: letters, digits, space and \n (Enter)
//! start_after = "1s"          # optional: type even if the host never sets the device up
//! ```
//!
//! # Behaviour
//!
//! - **Descriptors.** A generic device's descriptor is USB 2.0, max packet 64, one configuration, with
//!   string indexes 1/2/3 for manufacturer/product/serial when given (else 0). The one
//!   configuration has interface 0 (class 0xff) with an endpoint descriptor (max packet 64)
//!   for every endpoint mentioned, in this order: loopback `out`, loopback `in`, interrupt
//!   endpoints, `stall`, `hang`. Interrupt endpoints are declared as interrupt (bInterval =
//!   period in ms), all others as bulk. String descriptor 0 offers language 0x0409 and strings
//!   are UTF-16LE (any language id is accepted). [`DeviceBackend::descriptors`] returns the
//!   same bytes GET_DESCRIPTOR does; answers are truncated to the requested length.
//!   A class model's device has the descriptors of the QEMU device it mirrors (its module
//!   says which), with string 4 naming the configuration where QEMU's does.
//! - **Control requests.** Standard GET_DESCRIPTOR (request_type 0x80, request 6) is answered
//!   from the descriptors; the file's `[[device.control]]` entries answer the rest; anything
//!   else stalls (including other standard requests). Control transfers need no claim. A
//!   class model's device also answers GET_STATUS (an endpoint's halt bit),
//!   CLEAR_FEATURE(ENDPOINT_HALT), GET/SET_CONFIGURATION and GET/SET_INTERFACE; its model
//!   answers its class and vendor requests and stalls the rest.
//! - **Endpoints.** A transfer on an endpoint the device does not have, in the wrong direction
//!   or of the wrong type (bulk on an interrupt endpoint and the reverse; `stall` and `hang`
//!   endpoints take either) fails with `InvalidArgument`. Bulk and interrupt transfers need
//!   interface 0 claimed, else `NotClaimed`.
//! - **Loopback.** Writes to `out` are queued (FIFO, up to [`LOOPBACK_CAPACITY`] bytes; a
//!   writer waits for room like a device NAKing) and reads from `in` return up to the asked
//!   length of what is queued, waiting for data until the timeout, then `Timeout`.
//! - **Time.** A delay or period longer than the transfer's timeout sleeps the timeout and
//!   returns `Timeout`. A zero timeout never waits.
//! - **Opening.** A device is exclusive: a second `open` is `Busy` until the first handle is
//!   dropped. [`DeviceHandle::reset`] empties the loopback, drops the handle's claim and is
//!   counted ([`SimulatedBackend::resets`]). Opening and resetting power a class model up
//!   again: its protocol starts over (halts cleared, the console silent, the text untyped),
//!   while what it stores (a disk's blocks) stays for the life of the backend.
//! - **Class models** block the way real devices do: a read with nothing to send yet waits
//!   (until the console's latency timer, the keyboard's next poll, or the timeout); a stall
//!   halts a mass-storage endpoint until [`DeviceHandle::clear_halt`] or
//!   CLEAR_FEATURE(ENDPOINT_HALT); a read shorter than what the device sends in one go (a
//!   CSW, a keyboard report, a serial status header) fails with `Overflow`, as babble does.
//! - **Detach.** Transfers count when they reach the device (after the argument and claim
//!   checks), whatever their outcome; with `detach_after_transfers = n`, the device detaches
//!   as the n-th transfer since it was attached completes (counted across handles). After a
//!   detach, scripted or through [`SimulatedBackend::detach`], every call on the old handle
//!   returns `Disconnected` (reads waiting are woken), [`DeviceBackend::scan`] no longer
//!   lists the device and `open` returns `NotFound`, until [`SimulatedBackend::attach`].
//!
//! Everything blocks the calling thread (std `Mutex`/`Condvar`, no async): callers run it on
//! `spawn_blocking`, as they do for real hardware.

mod class_model;
mod handle;
mod keyboard;
mod mass_storage;
mod model;
mod serial_console;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use handle::{SimDevice, SimulatedHandle, State};
use model::{DeviceSpec, FileSpec, Model};

use super::{Descriptors, DeviceBackend, DeviceHandle, DeviceInfo, UsbError, UsbErrorKind};

/// Bytes a loopback holds before writes wait for reads, as a device's buffer would.
pub const LOOPBACK_CAPACITY: usize = 64 * 1024;

/// wMaxPacketSize of endpoint 0 and of every endpoint of a generic simulated device.
const MAX_PACKET: u8 = 64;
/// Interrupt period when the file gives none.
const DEFAULT_PERIOD: Duration = Duration::from_millis(10);

/// Devices read from a TOML file (see the [module docs](self) for the format), shared by
/// every thread of the daemon.
///
/// Besides [`DeviceBackend`], it offers hooks for tests: [`Self::detach`] and
/// [`Self::attach`] to unplug and replug a device, and counters ([`Self::opens`],
/// [`Self::resets`], [`Self::is_open`]) to check what a run did to it.
#[derive(Debug)]
pub struct SimulatedBackend {
    devices: Vec<Arc<SimDevice>>,
}

impl SimulatedBackend {
    /// Reads and checks a device file. Any problem (unreadable file, bad TOML, unknown key,
    /// invalid endpoint, duplicate id, ...) is an `InvalidArgument` error naming the file,
    /// the device and what is wrong.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, UsbError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsbError::new(
                UsbErrorKind::InvalidArgument,
                format!(
                    "{}: cannot read the simulated device file: {e}",
                    path.display()
                ),
            )
            .caused_by(e)
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Like [`Self::from_file`], from the file's text; errors name it `(inline TOML)`.
    pub fn from_toml_str(text: &str) -> Result<Self, UsbError> {
        Self::parse(text, "(inline TOML)")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, UsbError> {
        let invalid = |what: String| UsbError::new(UsbErrorKind::InvalidArgument, what);
        let file: FileSpec = toml::from_str(text).map_err(|e| {
            invalid(format!("{origin}: not a simulated device file: {e}")).caused_by(e)
        })?;
        let mut devices: Vec<Arc<SimDevice>> = Vec::with_capacity(file.device.len());
        for (i, value) in file.device.into_iter().enumerate() {
            let number = i + 1;
            let label = match value.get("id").and_then(toml::Value::as_str) {
                Some(id) => format!("device `{id}` (#{number})"),
                None => format!("device #{number}"),
            };
            let bad = |what: &dyn Display| invalid(format!("{origin}: {label}: {what}"));
            let spec: DeviceSpec = value.try_into().map_err(|e| bad(&e).caused_by(e))?;
            let (model, class) =
                Model::from_spec(spec, number).map_err(|e| bad(&e).caused_by(e))?;
            if devices.iter().any(|d| d.model.info.id == model.info.id) {
                return Err(bad(&"another device already has this id"));
            }
            devices.push(Arc::new(SimDevice {
                model,
                state: Mutex::new(State {
                    class,
                    ..State::default()
                }),
                changed: Condvar::new(),
            }));
        }
        Ok(Self { devices })
    }

    fn device(&self, id: &str) -> Option<&Arc<SimDevice>> {
        self.devices.iter().find(|d| d.model.info.id == id)
    }

    fn known(&self, id: &str) -> Result<&Arc<SimDevice>, UsbError> {
        self.device(id).ok_or_else(|| {
            UsbError::new(
                UsbErrorKind::NotFound,
                format!("no simulated device `{id}` in the device file"),
            )
        })
    }

    /// Unplugs a device now, as a scripted detach would: its open handle fails every call
    /// with `Disconnected` (waking reads that wait), and it leaves scans. `NotFound` for an id
    /// the file does not have; detaching a detached device does nothing.
    pub fn detach(&self, id: &str) -> Result<(), UsbError> {
        let device = self.known(id)?;
        let mut state = device.lock();
        if !state.detached {
            device.detach_locked(&mut state);
        }
        Ok(())
    }

    /// Plugs a detached device back in, fresh: empty loopback, transfer count and scripted
    /// detach timer restarted. Does nothing to a device that is present.
    pub fn attach(&self, id: &str) -> Result<(), UsbError> {
        let device = self.known(id)?;
        let mut state = device.lock();
        device.refresh(&mut state);
        if state.detached {
            state.detached = false;
            state.first_opened = None;
            state.transfers = 0;
            state.loopback.clear();
        }
        Ok(())
    }

    /// How many times the device was opened successfully (0 for an unknown id).
    pub fn opens(&self, id: &str) -> u64 {
        self.device(id).map_or(0, |d| d.lock().opens)
    }

    /// How many times [`DeviceHandle::reset`] was called on the device (0 for an unknown id).
    pub fn resets(&self, id: &str) -> u64 {
        self.device(id).map_or(0, |d| d.lock().resets)
    }

    /// Whether a handle to the device is open now (false once it was dropped or detached).
    pub fn is_open(&self, id: &str) -> bool {
        self.device(id).is_some_and(|d| {
            let mut state = d.lock();
            d.refresh(&mut state);
            state.open
        })
    }
}

impl DeviceBackend for SimulatedBackend {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn scan(&self) -> Result<Vec<DeviceInfo>, UsbError> {
        Ok(self
            .devices
            .iter()
            .filter(|d| d.present())
            .map(|d| d.model.info.clone())
            .collect())
    }

    fn descriptors(&self, id: &str) -> Result<Descriptors, UsbError> {
        let device = self.present(id)?;
        Ok(Descriptors {
            device: device.model.device_descriptor.clone(),
            configurations: vec![device.model.configuration_descriptor.clone()],
        })
    }

    fn open(&self, id: &str) -> Result<Box<dyn DeviceHandle>, UsbError> {
        let device = self.present(id)?;
        let mut state = device.lock();
        device.refresh(&mut state);
        if state.detached {
            return Err(not_present(id));
        }
        if state.open {
            return Err(UsbError::new(
                UsbErrorKind::Busy,
                format!("simulated device `{id}` is already open"),
            ));
        }
        state.open = true;
        state.opens += 1;
        let now = Instant::now();
        state.first_opened.get_or_insert(now);
        if let Some(class) = state.class.as_deref_mut() {
            class.power_on(now);
        }
        let generation = state.generation;
        drop(state);
        Ok(Box::new(SimulatedHandle {
            device: Arc::clone(device),
            generation,
            claimed: false,
        }))
    }
}

impl SimulatedBackend {
    /// The device `id` if it is in the file and attached now, else `NotFound`.
    fn present(&self, id: &str) -> Result<&Arc<SimDevice>, UsbError> {
        match self.device(id) {
            Some(device) if device.present() => Ok(device),
            _ => Err(not_present(id)),
        }
    }
}

fn not_present(id: &str) -> UsbError {
    UsbError::new(
        UsbErrorKind::NotFound,
        format!("no simulated device `{id}` is attached"),
    )
}
