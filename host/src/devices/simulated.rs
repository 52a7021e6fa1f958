//! Simulated USB devices, described in a TOML file: tests and demos run on them.
//!
//! `sandbus daemon --simulate devices.toml` serves these instead of real hardware. Each
//! device answers the standard GET_DESCRIPTOR requests from descriptors generated out of its
//! entry, and each endpoint behaves as the file says: a bulk loopback that echoes what was
//! written, fixed answers to control requests, an interrupt endpoint with a fixed report,
//! endpoints that always stall or never answer, and a scripted detach.
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
//! vendor_id = 0x1209          # required
//! product_id = 0x0001         # required
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
//! ```
//!
//! # Behaviour
//!
//! - **Descriptors.** The device descriptor is USB 2.0, max packet 64, one configuration, with
//!   string indexes 1/2/3 for manufacturer/product/serial when given (else 0). The one
//!   configuration has interface 0 (class 0xff) with an endpoint descriptor (max packet 64)
//!   for every endpoint mentioned, in this order: loopback `out`, loopback `in`, interrupt
//!   endpoints, `stall`, `hang`. Interrupt endpoints are declared as interrupt (bInterval =
//!   period in ms), all others as bulk. String descriptor 0 offers language 0x0409 and strings
//!   are UTF-16LE (any language id is accepted). [`DeviceBackend::descriptors`] returns the
//!   same bytes GET_DESCRIPTOR does; answers are truncated to the requested length.
//! - **Control requests.** Standard GET_DESCRIPTOR (request_type 0x80, request 6) is answered
//!   from the descriptors; the file's `[[device.control]]` entries answer the rest; anything
//!   else stalls (including other standard requests). Control transfers need no claim.
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
//!   counted ([`SimulatedBackend::resets`]).
//! - **Detach.** Transfers count when they reach the device (after the argument and claim
//!   checks), whatever their outcome; with `detach_after_transfers = n`, the device detaches
//!   as the n-th transfer since it was attached completes (counted across handles). After a
//!   detach, scripted or through [`SimulatedBackend::detach`], every call on the old handle
//!   returns `Disconnected` (reads waiting are woken), [`DeviceBackend::scan`] no longer
//!   lists the device and `open` returns `NotFound`, until [`SimulatedBackend::attach`].
//!
//! Everything blocks the calling thread (std `Mutex`/`Condvar`, no async): callers run it on
//! `spawn_blocking`, as they do for real hardware.

use std::collections::VecDeque;
use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{
    ControlSetup, Descriptors, DeviceBackend, DeviceHandle, DeviceInfo, UsbError, UsbErrorKind,
};

/// Bytes a loopback holds before writes wait for reads, as a device's buffer would.
pub const LOOPBACK_CAPACITY: usize = 64 * 1024;

/// wMaxPacketSize of endpoint 0 and of every simulated endpoint.
const MAX_PACKET: u8 = 64;
/// The one language the string descriptors offer (English, United States).
const LANGUAGE: u16 = 0x0409;
/// Descriptor types (the high byte of wValue in GET_DESCRIPTOR).
const DT_DEVICE: u8 = 1;
const DT_CONFIGURATION: u8 = 2;
const DT_STRING: u8 = 3;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;
/// The longest string a descriptor can carry: (255 - 2) / 2 UTF-16 units.
const MAX_STRING_UNITS: usize = 126;
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
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Like [`Self::from_file`], from the file's text; errors name it `(inline TOML)`.
    pub fn from_toml_str(text: &str) -> Result<Self, UsbError> {
        Self::parse(text, "(inline TOML)")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, UsbError> {
        let invalid = |what: String| UsbError::new(UsbErrorKind::InvalidArgument, what);
        let file: FileSpec = toml::from_str(text)
            .map_err(|e| invalid(format!("{origin}: not a simulated device file: {e}")))?;
        let mut devices: Vec<Arc<SimDevice>> = Vec::with_capacity(file.device.len());
        for (i, value) in file.device.into_iter().enumerate() {
            let number = i + 1;
            let label = match value.get("id").and_then(toml::Value::as_str) {
                Some(id) => format!("device `{id}` (#{number})"),
                None => format!("device #{number}"),
            };
            let bad = |what: &dyn Display| invalid(format!("{origin}: {label}: {what}"));
            let spec: DeviceSpec = value.try_into().map_err(|e| bad(&e))?;
            let model = Model::from_spec(spec, number).map_err(|what| bad(&what))?;
            if devices.iter().any(|d| d.model.info.id == model.info.id) {
                return Err(bad(&"another device already has this id"));
            }
            devices.push(Arc::new(SimDevice {
                model,
                state: Mutex::new(State::default()),
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
        state.first_opened.get_or_insert_with(Instant::now);
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

// ---------------------------------------------------------------------------------------------
// The file, as serde reads it.

/// The whole file: only `[[device]]` tables. Devices stay raw values here so that an error
/// in one can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    device: Vec<toml::Value>,
}

/// One `[[device]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceSpec {
    id: String,
    vendor_id: u16,
    product_id: u16,
    serial: Option<String>,
    manufacturer: Option<String>,
    product: Option<String>,
    location: Option<String>,
    class: Option<u8>,
    device_version: Option<u16>,
    detach_after: Option<String>,
    detach_after_transfers: Option<u64>,
    loopback: Option<LoopbackSpec>,
    #[serde(default)]
    control: Vec<ControlSpec>,
    #[serde(default)]
    interrupt: Vec<InterruptSpec>,
    #[serde(default)]
    stall: Vec<u8>,
    #[serde(default)]
    hang: Vec<u8>,
}

/// `[device.loopback]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopbackSpec {
    out: u8,
    #[serde(rename = "in")]
    in_: u8,
    delay: Option<String>,
}

/// One `[[device.control]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSpec {
    request_type: u8,
    request: u8,
    #[serde(default)]
    value: u16,
    #[serde(default)]
    index: u16,
    answer: Option<Vec<u8>>,
    delay: Option<String>,
}

/// One `[[device.interrupt]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterruptSpec {
    endpoint: u8,
    answer: Vec<u8>,
    period: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The checked device model.

/// What one endpoint does.
#[derive(Debug)]
enum Role {
    /// Queues what is written.
    LoopbackOut { delay: Duration },
    /// Returns what was queued.
    LoopbackIn { delay: Duration },
    /// Returns `answer` once per `period`.
    Interrupt { answer: Vec<u8>, period: Duration },
    /// Every transfer stalls.
    Stall,
    /// Reads never complete.
    Hang,
}

#[derive(Debug)]
struct Endpoint {
    address: u8,
    role: Role,
}

/// A fixed answer to one control request.
#[derive(Debug)]
struct ControlAnswer {
    setup: ControlSetup,
    /// `Some` for IN requests.
    answer: Option<Vec<u8>>,
    delay: Duration,
}

/// A device as the file describes it, checked, with its descriptors built. Never changes.
#[derive(Debug)]
struct Model {
    info: DeviceInfo,
    detach_after: Option<Duration>,
    detach_after_transfers: Option<u64>,
    endpoints: Vec<Endpoint>,
    controls: Vec<ControlAnswer>,
    device_descriptor: Vec<u8>,
    configuration_descriptor: Vec<u8>,
    /// String descriptors by index: 0 is the language list; `None` where there is no string.
    strings: [Option<Vec<u8>>; 4],
}

/// Parses a duration field, naming it when it is wrong.
fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, String> {
    text.map(|t| {
        humantime::parse_duration(t)
            .map_err(|e| format!("`{field}`: `{t}` is not a duration like 5ms or 2s ({e})"))
    })
    .transpose()
}

/// Checks that `address` is a usable endpoint address, and IN when `must_be_in` says so.
fn check_endpoint(field: &str, address: u8, must_be_in: Option<bool>) -> Result<(), String> {
    if address & 0x0f == 0 || address & 0x70 != 0 {
        return Err(format!(
            "`{field}`: 0x{address:02x} is not an endpoint address (number 1-15, bit 7 for IN)"
        ));
    }
    match must_be_in {
        Some(true) if address & 0x80 == 0 => Err(format!(
            "`{field}`: 0x{address:02x} is an OUT address; it must be IN (bit 7 set, e.g. 0x{:02x})",
            address | 0x80
        )),
        Some(false) if address & 0x80 != 0 => Err(format!(
            "`{field}`: 0x{address:02x} is an IN address; it must be OUT (bit 7 clear, e.g. 0x{:02x})",
            address & 0x7f
        )),
        _ => Ok(()),
    }
}

impl Model {
    /// Checks one device entry; `number` counts devices from 1. Errors say which field.
    fn from_spec(spec: DeviceSpec, number: usize) -> Result<Self, String> {
        if spec.id.is_empty()
            || !spec
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "`id`: `{}` must be non-empty and use only a-z, 0-9 and `-`",
                spec.id
            ));
        }
        for (field, text) in [
            ("manufacturer", &spec.manufacturer),
            ("product", &spec.product),
            ("serial", &spec.serial),
        ] {
            if let Some(text) = text
                && text.encode_utf16().count() > MAX_STRING_UNITS
            {
                return Err(format!(
                    "`{field}`: longer than a string descriptor holds ({MAX_STRING_UNITS} UTF-16 units)"
                ));
            }
        }
        let detach_after = duration("detach_after", spec.detach_after.as_deref())?;
        if spec.detach_after_transfers == Some(0) {
            return Err("`detach_after_transfers`: must be at least 1".to_owned());
        }

        let mut endpoints = Vec::new();
        if let Some(lb) = &spec.loopback {
            check_endpoint("loopback.out", lb.out, Some(false))?;
            check_endpoint("loopback.in", lb.in_, Some(true))?;
            let delay = duration("loopback.delay", lb.delay.as_deref())?.unwrap_or_default();
            endpoints.push(Endpoint {
                address: lb.out,
                role: Role::LoopbackOut { delay },
            });
            endpoints.push(Endpoint {
                address: lb.in_,
                role: Role::LoopbackIn { delay },
            });
        }
        for (i, int) in spec.interrupt.iter().enumerate() {
            check_endpoint(
                &format!("interrupt[{i}].endpoint"),
                int.endpoint,
                Some(true),
            )?;
            let period = duration(&format!("interrupt[{i}].period"), int.period.as_deref())?
                .unwrap_or(DEFAULT_PERIOD);
            endpoints.push(Endpoint {
                address: int.endpoint,
                role: Role::Interrupt {
                    answer: int.answer.clone(),
                    period,
                },
            });
        }
        for (i, &address) in spec.stall.iter().enumerate() {
            check_endpoint(&format!("stall[{i}]"), address, None)?;
            endpoints.push(Endpoint {
                address,
                role: Role::Stall,
            });
        }
        for (i, &address) in spec.hang.iter().enumerate() {
            check_endpoint(&format!("hang[{i}]"), address, Some(true))?;
            endpoints.push(Endpoint {
                address,
                role: Role::Hang,
            });
        }
        for (i, a) in endpoints.iter().enumerate() {
            if endpoints[..i].iter().any(|b| b.address == a.address) {
                return Err(format!(
                    "endpoint 0x{:02x} is given more than one behaviour (loopback, interrupt, stall, hang)",
                    a.address
                ));
            }
        }

        let mut controls: Vec<ControlAnswer> = Vec::new();
        for (i, c) in spec.control.into_iter().enumerate() {
            let setup = ControlSetup {
                request_type: c.request_type,
                request: c.request,
                value: c.value,
                index: c.index,
            };
            if setup.request_type == 0x80 && setup.request == 6 {
                return Err(format!(
                    "`control[{i}]`: GET_DESCRIPTOR (0x80, 6) is answered from the generated descriptors"
                ));
            }
            if controls.iter().any(|other| other.setup == setup) {
                return Err(format!(
                    "`control[{i}]`: the same request (type, request, value, index) is listed twice"
                ));
            }
            let delay =
                duration(&format!("control[{i}].delay"), c.delay.as_deref())?.unwrap_or_default();
            match (&c.answer, setup.is_in()) {
                (None, true) => {
                    return Err(format!(
                        "`control[{i}]`: request_type 0x{:02x} is IN, so it needs an `answer` (may be [])",
                        setup.request_type
                    ));
                }
                (Some(_), false) => {
                    return Err(format!(
                        "`control[{i}].answer`: request_type 0x{:02x} is OUT (bit 7 clear); OUT requests take no answer",
                        setup.request_type
                    ));
                }
                (Some(answer), true) if answer.len() > usize::from(u16::MAX) => {
                    return Err(format!("`control[{i}].answer`: longer than 65535 bytes"));
                }
                _ => {}
            }
            controls.push(ControlAnswer {
                setup,
                answer: c.answer,
                delay,
            });
        }

        let class = spec.class.unwrap_or(0xff);
        let device_version = spec.device_version.unwrap_or(0x0100);
        let index_of = |present: bool, index: u8| if present { index } else { 0 };
        let device_descriptor = {
            let mut d = vec![18, DT_DEVICE, 0x00, 0x02, class, 0, 0, MAX_PACKET];
            d.extend(spec.vendor_id.to_le_bytes());
            d.extend(spec.product_id.to_le_bytes());
            d.extend(device_version.to_le_bytes());
            d.push(index_of(spec.manufacturer.is_some(), 1));
            d.push(index_of(spec.product.is_some(), 2));
            d.push(index_of(spec.serial.is_some(), 3));
            d.push(1);
            d
        };
        let configuration_descriptor = configuration_descriptor(&endpoints);
        let strings = [
            Some(string_descriptor_units(&[LANGUAGE])),
            spec.manufacturer.as_deref().map(string_descriptor),
            spec.product.as_deref().map(string_descriptor),
            spec.serial.as_deref().map(string_descriptor),
        ];

        Ok(Self {
            info: DeviceInfo {
                location: spec.location.unwrap_or_else(|| format!("sim-{number}")),
                id: spec.id,
                vendor_id: spec.vendor_id,
                product_id: spec.product_id,
                serial: spec.serial,
                manufacturer: spec.manufacturer,
                product: spec.product,
                class,
            },
            detach_after,
            detach_after_transfers: spec.detach_after_transfers,
            endpoints,
            controls,
            device_descriptor,
            configuration_descriptor,
            strings,
        })
    }

    fn endpoint(&self, address: u8) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }

    /// The answer to a standard GET_DESCRIPTOR with this wValue, or `None` (stall).
    fn get_descriptor(&self, value: u16) -> Option<&[u8]> {
        let [index, kind] = value.to_le_bytes();
        match (kind, index) {
            (DT_DEVICE, 0) => Some(&self.device_descriptor),
            (DT_CONFIGURATION, 0) => Some(&self.configuration_descriptor),
            (DT_STRING, i) => self.strings.get(usize::from(i))?.as_deref(),
            _ => None,
        }
    }
}

/// The configuration descriptor: one configuration, interface 0 (vendor class), `endpoints`.
fn configuration_descriptor(endpoints: &[Endpoint]) -> Vec<u8> {
    // At most 30 distinct endpoint addresses exist, so every count fits its byte.
    let count = u8::try_from(endpoints.len()).unwrap_or(u8::MAX);
    let mut body = vec![9, DT_INTERFACE, 0, 0, count, 0xff, 0, 0, 0];
    for endpoint in endpoints {
        let (attributes, interval) = match &endpoint.role {
            Role::Interrupt { period, .. } => {
                let ms = period.as_millis().clamp(1, 255);
                (0x03, u8::try_from(ms).unwrap_or(u8::MAX))
            }
            _ => (0x02, 0),
        };
        body.extend([
            7,
            DT_ENDPOINT,
            endpoint.address,
            attributes,
            MAX_PACKET,
            0,
            interval,
        ]);
    }
    let total = u16::try_from(9 + body.len()).unwrap_or(u16::MAX);
    let mut config = vec![9, DT_CONFIGURATION];
    config.extend(total.to_le_bytes());
    // One interface, configuration value 1, no string, bus powered, 100 mA.
    config.extend([1, 1, 0, 0x80, 50]);
    config.extend(body);
    config
}

/// A string descriptor holding `text` as UTF-16LE (callers checked its length).
fn string_descriptor(text: &str) -> Vec<u8> {
    string_descriptor_units(&text.encode_utf16().collect::<Vec<_>>())
}

fn string_descriptor_units(units: &[u16]) -> Vec<u8> {
    let length = u8::try_from(2 + 2 * units.len()).unwrap_or(u8::MAX);
    let mut d = vec![length, DT_STRING];
    for unit in units {
        d.extend(unit.to_le_bytes());
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Runtime state.

/// One device and what is happening to it.
#[derive(Debug)]
struct SimDevice {
    model: Model,
    state: Mutex<State>,
    /// Signalled on every change a waiter may care about: data or room in the loopback,
    /// a detach.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every detach, so handles from before it know they are stale.
    generation: u64,
    open: bool,
    detached: bool,
    /// When the device was first opened since it was (re)attached: the scripted
    /// `detach_after` timer starts there.
    first_opened: Option<Instant>,
    /// Transfers that reached the device since it was (re)attached.
    transfers: u64,
    opens: u64,
    resets: u64,
    loopback: VecDeque<u8>,
}

/// How a wait ended.
enum Waited {
    Ready,
    Gone,
    TimedOut,
}

impl SimDevice {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across any panic (every update is a single step), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the scripted `detach_after` fires, if it is armed.
    fn detach_at(&self, state: &State) -> Option<Instant> {
        if state.detached {
            return None;
        }
        let after = self.model.detach_after?;
        state
            .first_opened
            .map(|t| t.checked_add(after).unwrap_or(t))
    }

    /// Applies a scripted `detach_after` whose time has come.
    fn refresh(&self, state: &mut State) {
        if let Some(at) = self.detach_at(state)
            && Instant::now() >= at
        {
            self.detach_locked(state);
        }
    }

    fn detach_locked(&self, state: &mut State) {
        state.detached = true;
        state.open = false;
        state.generation += 1;
        state.loopback.clear();
        self.changed.notify_all();
    }

    fn present(&self) -> bool {
        let mut state = self.lock();
        self.refresh(&mut state);
        !state.detached
    }

    /// Waits until `ready`, a detach (of the handle with `generation`) or `deadline`,
    /// whichever comes first.
    fn wait_until<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        generation: u64,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> (MutexGuard<'a, State>, Waited) {
        loop {
            self.refresh(&mut state);
            if state.generation != generation {
                return (state, Waited::Gone);
            }
            if ready(&state) {
                return (state, Waited::Ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, Waited::TimedOut);
            }
            let wake = self
                .detach_at(&state)
                .map_or(deadline, |at| at.min(deadline));
            state = self
                .changed
                .wait_timeout(state, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// `timeout` from now, saturating far in the future instead of overflowing.
fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// An open simulated device.
struct SimulatedHandle {
    device: Arc<SimDevice>,
    /// The device's generation when opened; any other value means it was detached since.
    generation: u64,
    /// Whether interface 0 is claimed.
    claimed: bool,
}

/// Which transfer a caller asked for, to check it against the endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bulk,
    Interrupt,
}

impl SimulatedHandle {
    fn id(&self) -> &str {
        &self.device.model.info.id
    }

    fn disconnected(&self) -> UsbError {
        UsbError::new(
            UsbErrorKind::Disconnected,
            format!("simulated device `{}` was detached", self.id()),
        )
    }

    fn timeout(&self, what: &str) -> UsbError {
        UsbError::new(
            UsbErrorKind::Timeout,
            format!("{what} on simulated device `{}` timed out", self.id()),
        )
    }

    fn invalid(&self, what: String) -> UsbError {
        UsbError::new(
            UsbErrorKind::InvalidArgument,
            format!("simulated device `{}`: {what}", self.id()),
        )
    }

    /// Locks the state, failing with `Disconnected` when the device left since this handle
    /// was opened.
    fn lock_present(&self) -> Result<MutexGuard<'_, State>, UsbError> {
        let mut state = self.device.lock();
        self.device.refresh(&mut state);
        if state.generation != self.generation {
            return Err(self.disconnected());
        }
        Ok(state)
    }

    /// The endpoint a bulk or interrupt transfer of `kind` in direction `is_in` may use.
    fn endpoint(&self, address: u8, is_in: bool, kind: Kind) -> Result<&Endpoint, UsbError> {
        let (direction, call) = match (is_in, kind) {
            (true, Kind::Bulk) => ("IN", "bulk_in"),
            (false, Kind::Bulk) => ("OUT", "bulk_out"),
            (true, Kind::Interrupt) => ("IN", "interrupt_in"),
            (false, Kind::Interrupt) => ("OUT", "interrupt_out"),
        };
        if (address & 0x80 != 0) != is_in {
            return Err(self.invalid(format!(
                "{call} needs an {direction} endpoint address, got 0x{address:02x}"
            )));
        }
        let Some(endpoint) = self.device.model.endpoint(address) else {
            let have: Vec<String> = self
                .device
                .model
                .endpoints
                .iter()
                .map(|e| format!("0x{:02x}", e.address))
                .collect();
            let have = if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            };
            return Err(self.invalid(format!("no endpoint 0x{address:02x} (it has: {have})")));
        };
        let fits = match (&endpoint.role, kind) {
            (Role::Stall | Role::Hang, _) => true,
            (Role::Interrupt { .. }, kind) => kind == Kind::Interrupt,
            (Role::LoopbackIn { .. } | Role::LoopbackOut { .. }, kind) => kind == Kind::Bulk,
        };
        if !fits {
            let is = if kind == Kind::Bulk {
                "an interrupt"
            } else {
                "a bulk"
            };
            return Err(self.invalid(format!(
                "endpoint 0x{address:02x} is {is} endpoint; {call} does not apply"
            )));
        }
        Ok(endpoint)
    }

    fn check_claimed(&self) -> Result<(), UsbError> {
        if self.claimed {
            Ok(())
        } else {
            Err(UsbError::new(
                UsbErrorKind::NotClaimed,
                format!(
                    "claim interface 0 of simulated device `{}` before bulk or interrupt transfers",
                    self.id()
                ),
            ))
        }
    }

    /// Counts a transfer that reached the device, runs it, then applies a scripted
    /// `detach_after_transfers` that it completes.
    fn transfer<T>(
        &self,
        run: impl FnOnce(MutexGuard<'_, State>) -> Result<T, UsbError>,
    ) -> Result<T, UsbError> {
        let mut state = self.lock_present()?;
        state.transfers += 1;
        let count = state.transfers;
        let result = run(state);
        if let Some(limit) = self.device.model.detach_after_transfers
            && count >= limit
        {
            let mut state = self.device.lock();
            if state.generation == self.generation && !state.detached {
                self.device.detach_locked(&mut state);
            }
        }
        result
    }

    /// Sleeps `delay` (interrupted by a detach); a delay past `deadline` sleeps until it and
    /// times out.
    fn sleep<'a>(
        &self,
        state: MutexGuard<'a, State>,
        delay: Duration,
        deadline: Instant,
        what: &str,
    ) -> Result<MutexGuard<'a, State>, UsbError> {
        if delay.is_zero() {
            return Ok(state);
        }
        let until = Instant::now().checked_add(delay).unwrap_or(deadline);
        let (state, waited) =
            self.device
                .wait_until(state, self.generation, until.min(deadline), |_| false);
        match waited {
            Waited::Gone => Err(self.disconnected()),
            _ if until > deadline => Err(self.timeout(what)),
            _ => Ok(state),
        }
    }

    fn stall(&self, what: &str) -> UsbError {
        UsbError::new(
            UsbErrorKind::Stall,
            format!("simulated device `{}` stalled {what}", self.id()),
        )
    }

    fn read(
        &self,
        kind: Kind,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        drop(self.lock_present()?);
        let role = &self.endpoint(endpoint, true, kind)?.role;
        self.check_claimed()?;
        let what = format!("read from endpoint 0x{endpoint:02x}");
        let deadline = deadline(timeout);
        self.transfer(|state| match role {
            Role::LoopbackIn { delay } => {
                let state = self.sleep(state, *delay, deadline, &what)?;
                let (mut state, waited) =
                    self.device
                        .wait_until(state, self.generation, deadline, |s| {
                            length == 0 || !s.loopback.is_empty()
                        });
                match waited {
                    Waited::Gone => Err(self.disconnected()),
                    Waited::TimedOut => Err(self.timeout(&what)),
                    Waited::Ready => {
                        let n = length.min(state.loopback.len());
                        let data: Vec<u8> = state.loopback.drain(..n).collect();
                        self.device.changed.notify_all();
                        Ok(data)
                    }
                }
            }
            Role::Interrupt { answer, period } => {
                drop(self.sleep(state, *period, deadline, &what)?);
                Ok(answer[..length.min(answer.len())].to_vec())
            }
            Role::Hang => {
                let (_state, waited) =
                    self.device
                        .wait_until(state, self.generation, deadline, |_| false);
                match waited {
                    Waited::Gone => Err(self.disconnected()),
                    _ => Err(self.timeout(&what)),
                }
            }
            Role::Stall => Err(self.stall(&format!("endpoint 0x{endpoint:02x}"))),
            // `endpoint` only returns IN endpoints for reads.
            Role::LoopbackOut { .. } => {
                Err(self.invalid(format!("endpoint 0x{endpoint:02x} cannot be read")))
            }
        })
    }

    fn write(
        &self,
        kind: Kind,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        drop(self.lock_present()?);
        let role = &self.endpoint(endpoint, false, kind)?.role;
        self.check_claimed()?;
        let what = format!("write to endpoint 0x{endpoint:02x}");
        let deadline = deadline(timeout);
        self.transfer(|state| match role {
            Role::LoopbackOut { delay } => {
                let mut state = self.sleep(state, *delay, deadline, &what)?;
                let mut rest = data;
                while !rest.is_empty() {
                    let (mut s, waited) =
                        self.device
                            .wait_until(state, self.generation, deadline, |s| {
                                s.loopback.len() < LOOPBACK_CAPACITY
                            });
                    match waited {
                        Waited::Gone => return Err(self.disconnected()),
                        Waited::TimedOut => return Err(self.timeout(&what)),
                        Waited::Ready => {
                            let n = rest.len().min(LOOPBACK_CAPACITY - s.loopback.len());
                            s.loopback.extend(&rest[..n]);
                            rest = &rest[n..];
                            self.device.changed.notify_all();
                        }
                    }
                    state = s;
                }
                Ok(data.len())
            }
            Role::Stall => Err(self.stall(&format!("endpoint 0x{endpoint:02x}"))),
            _ => Err(self.invalid(format!("endpoint 0x{endpoint:02x} cannot be written"))),
        })
    }

    fn control_setup_text(setup: ControlSetup) -> String {
        format!(
            "control request type 0x{:02x} request 0x{:02x} value 0x{:04x} index 0x{:04x}",
            setup.request_type, setup.request, setup.value, setup.index
        )
    }
}

impl DeviceHandle for SimulatedHandle {
    fn claim_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        drop(self.lock_present()?);
        if interface != 0 {
            return Err(self.invalid(format!("no interface {interface}; the only one is 0")));
        }
        self.claimed = true;
        Ok(())
    }

    fn release_interface(&mut self, interface: u8) -> Result<(), UsbError> {
        drop(self.lock_present()?);
        if interface != 0 || !self.claimed {
            return Err(UsbError::new(
                UsbErrorKind::NotClaimed,
                format!(
                    "interface {interface} of simulated device `{}` is not claimed",
                    self.id()
                ),
            ));
        }
        self.claimed = false;
        Ok(())
    }

    fn control_in(
        &mut self,
        setup: ControlSetup,
        length: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        drop(self.lock_present()?);
        let text = Self::control_setup_text(setup);
        if !setup.is_in() {
            return Err(self.invalid(format!(
                "control_in needs a device-to-host request_type (bit 7 set): {text}"
            )));
        }
        let length = usize::from(length);
        let deadline = deadline(timeout);
        let model = &self.device.model;
        self.transfer(|state| {
            if setup.request_type == 0x80 && setup.request == 6 {
                let answer = model
                    .get_descriptor(setup.value)
                    .ok_or_else(|| self.stall(&text))?;
                return Ok(answer[..length.min(answer.len())].to_vec());
            }
            let entry = model
                .controls
                .iter()
                .find(|c| c.setup == setup)
                .ok_or_else(|| self.stall(&text))?;
            drop(self.sleep(state, entry.delay, deadline, &text)?);
            let answer = entry.answer.as_deref().unwrap_or_default();
            Ok(answer[..length.min(answer.len())].to_vec())
        })
    }

    fn control_out(
        &mut self,
        setup: ControlSetup,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        drop(self.lock_present()?);
        let text = Self::control_setup_text(setup);
        if setup.is_in() {
            return Err(self.invalid(format!(
                "control_out needs a host-to-device request_type (bit 7 clear): {text}"
            )));
        }
        if data.len() > usize::from(u16::MAX) {
            return Err(self.invalid(format!(
                "a control transfer carries at most 65535 bytes, not {}",
                data.len()
            )));
        }
        let deadline = deadline(timeout);
        self.transfer(|state| {
            let entry = self
                .device
                .model
                .controls
                .iter()
                .find(|c| c.setup == setup)
                .ok_or_else(|| self.stall(&text))?;
            drop(self.sleep(state, entry.delay, deadline, &text)?);
            Ok(data.len())
        })
    }

    fn bulk_in(
        &mut self,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        self.read(Kind::Bulk, endpoint, length, timeout)
    }

    fn bulk_out(
        &mut self,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        self.write(Kind::Bulk, endpoint, data, timeout)
    }

    fn interrupt_in(
        &mut self,
        endpoint: u8,
        length: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, UsbError> {
        self.read(Kind::Interrupt, endpoint, length, timeout)
    }

    fn interrupt_out(
        &mut self,
        endpoint: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<usize, UsbError> {
        self.write(Kind::Interrupt, endpoint, data, timeout)
    }

    fn reset(&mut self) -> Result<(), UsbError> {
        let mut state = self.lock_present()?;
        state.loopback.clear();
        state.resets += 1;
        self.device.changed.notify_all();
        drop(state);
        self.claimed = false;
        Ok(())
    }
}

impl Drop for SimulatedHandle {
    fn drop(&mut self) {
        let mut state = self.device.lock();
        if state.generation == self.generation {
            state.open = false;
            self.device.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::GET_DEVICE_DESCRIPTOR;

    const MS: Duration = Duration::from_millis(1);
    const SHORT: Duration = Duration::from_millis(30);
    const LONG: Duration = Duration::from_secs(5);

    const BOARD: &str = r#"
        [[device]]
        id = "board-1"
        vendor_id = 0x1209
        product_id = 0x0001
        serial = "SB-0001"
        manufacturer = "sandbus"
        product = "Loopback board"
        stall = [0x82, 0x02]
        hang = [0x84]

        [device.loopback]
        out = 0x01
        in = 0x81

        [[device.control]]
        request_type = 0xc0
        request = 0x01
        answer = [1, 2, 3]

        [[device.control]]
        request_type = 0x40
        request = 0x02
        value = 7

        [[device.interrupt]]
        endpoint = 0x83
        answer = [9, 8]
        period = "5ms"

        [[device]]
        id = "bare"
        vendor_id = 0x1209
        product_id = 0x0002
    "#;

    fn board() -> SimulatedBackend {
        SimulatedBackend::from_toml_str(BOARD).unwrap()
    }

    fn open_claimed(backend: &SimulatedBackend, id: &str) -> Box<dyn DeviceHandle> {
        let mut handle = backend.open(id).unwrap();
        handle.claim_interface(0).unwrap();
        handle
    }

    fn setup(request_type: u8, request: u8, value: u16) -> ControlSetup {
        ControlSetup {
            request_type,
            request,
            value,
            index: 0,
        }
    }

    fn kind<T>(result: Result<T, UsbError>) -> UsbErrorKind {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.kind,
        }
    }

    fn invalid_file(text: &str) -> String {
        let err = SimulatedBackend::from_toml_str(text).unwrap_err();
        assert_eq!(err.kind, UsbErrorKind::InvalidArgument, "{err}");
        err.message
    }

    #[test]
    fn documented_example_parses() {
        // The example in the module docs is the reference for the format: keep it valid.
        let source = include_str!("simulated.rs");
        let example: String = source
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start_matches(' ')))
            .collect();
        assert!(example.contains("[[device]]"));
        let backend = SimulatedBackend::from_toml_str(&example).unwrap();
        let ids: Vec<String> = backend.scan().unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["board-1", "bare"]);
    }

    #[test]
    fn scan_lists_devices_in_file_order_with_defaults() {
        let devices = board().scan().unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].id, "board-1");
        assert_eq!(devices[0].vid_pid(), "1209:0001");
        assert_eq!(devices[0].serial.as_deref(), Some("SB-0001"));
        assert_eq!(devices[0].manufacturer.as_deref(), Some("sandbus"));
        assert_eq!(devices[0].product.as_deref(), Some("Loopback board"));
        assert_eq!(devices[0].location, "sim-1");
        assert_eq!(devices[0].class, 0xff);
        assert_eq!(devices[1].id, "bare");
        assert_eq!(devices[1].location, "sim-2");
        assert_eq!(devices[1].serial, None);
        assert_eq!(board().name(), "simulated");
    }

    #[test]
    fn loopback_echoes_what_was_written() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        assert_eq!(handle.bulk_out(0x01, b"hello", LONG).unwrap(), 5);
        assert_eq!(handle.bulk_out(0x01, b" world", LONG).unwrap(), 6);
        // FIFO, and a read returns at most what was asked for.
        assert_eq!(handle.bulk_in(0x81, 3, LONG).unwrap(), b"hel");
        assert_eq!(handle.bulk_in(0x81, 64, LONG).unwrap(), b"lo world");
        // Drained: the next read waits for its timeout.
        assert_eq!(kind(handle.bulk_in(0x81, 64, SHORT)), UsbErrorKind::Timeout);
    }

    #[test]
    fn loopback_writes_wait_for_room_then_time_out() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        let full = vec![0x55; LOOPBACK_CAPACITY];
        assert_eq!(handle.bulk_out(0x01, &full, LONG).unwrap(), full.len());
        assert_eq!(
            kind(handle.bulk_out(0x01, &[1], SHORT)),
            UsbErrorKind::Timeout
        );
        assert_eq!(handle.bulk_in(0x81, 10, LONG).unwrap(), vec![0x55; 10]);
        assert_eq!(handle.bulk_out(0x01, &[1], SHORT).unwrap(), 1);
    }

    #[test]
    fn loopback_delay_is_added_to_each_transfer() {
        let backend = SimulatedBackend::from_toml_str(
            r#"
            [[device]]
            id = "slow"
            vendor_id = 1
            product_id = 2
            [device.loopback]
            out = 0x02
            in = 0x82
            delay = "40ms"
            "#,
        )
        .unwrap();
        let mut handle = open_claimed(&backend, "slow");
        let start = Instant::now();
        handle.bulk_out(0x02, b"x", LONG).unwrap();
        assert_eq!(handle.bulk_in(0x82, 1, LONG).unwrap(), b"x");
        assert!(start.elapsed() >= Duration::from_millis(80));
    }

    #[test]
    fn delays_longer_than_the_timeout_time_out_after_the_timeout() {
        let backend = SimulatedBackend::from_toml_str(
            r#"
            [[device]]
            id = "slow"
            vendor_id = 1
            product_id = 2
            [[device.control]]
            request_type = 0xc1
            request = 9
            answer = [1]
            delay = "10s"
            "#,
        )
        .unwrap();
        let mut handle = backend.open("slow").unwrap();
        let start = Instant::now();
        assert_eq!(
            kind(handle.control_in(setup(0xc1, 9, 0), 1, SHORT)),
            UsbErrorKind::Timeout
        );
        let took = start.elapsed();
        assert!(took >= SHORT && took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn reads_time_out_on_a_hanging_endpoint() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        let start = Instant::now();
        assert_eq!(kind(handle.bulk_in(0x84, 8, SHORT)), UsbErrorKind::Timeout);
        assert!(start.elapsed() >= SHORT);
        // Hanging endpoints do not care about the transfer type.
        assert_eq!(
            kind(handle.interrupt_in(0x84, 8, MS)),
            UsbErrorKind::Timeout
        );
    }

    #[test]
    fn stalled_endpoints_stall_both_ways() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        assert_eq!(kind(handle.bulk_in(0x82, 8, LONG)), UsbErrorKind::Stall);
        assert_eq!(kind(handle.bulk_out(0x02, b"x", LONG)), UsbErrorKind::Stall);
        assert_eq!(
            kind(handle.interrupt_out(0x02, b"x", LONG)),
            UsbErrorKind::Stall
        );
    }

    #[test]
    fn interrupt_endpoint_answers_its_report_each_period() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        let start = Instant::now();
        assert_eq!(handle.interrupt_in(0x83, 64, LONG).unwrap(), [9, 8]);
        assert_eq!(handle.interrupt_in(0x83, 1, LONG).unwrap(), [9]);
        assert!(start.elapsed() >= Duration::from_millis(10));
        // A period longer than the timeout is a timeout.
        assert_eq!(
            kind(handle.interrupt_in(0x83, 64, Duration::ZERO)),
            UsbErrorKind::Timeout
        );
    }

    #[test]
    fn transfers_on_endpoints_the_device_lacks_are_invalid() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        let err = handle.bulk_in(0x85, 8, LONG).unwrap_err();
        assert_eq!(err.kind, UsbErrorKind::InvalidArgument);
        assert!(err.message.contains("0x85"), "{err}");
        // Wrong direction, and wrong transfer type.
        assert_eq!(
            kind(handle.bulk_in(0x01, 8, LONG)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(handle.bulk_out(0x81, b"x", LONG)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(handle.bulk_in(0x83, 8, LONG)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(handle.interrupt_in(0x81, 8, LONG)),
            UsbErrorKind::InvalidArgument
        );
        let mut bare = open_claimed(&backend, "bare");
        assert_eq!(
            kind(bare.bulk_out(0x01, b"x", LONG)),
            UsbErrorKind::InvalidArgument
        );
    }

    #[test]
    fn transfers_need_the_interface_claimed_except_control() {
        let backend = board();
        let mut handle = backend.open("board-1").unwrap();
        assert_eq!(
            kind(handle.bulk_out(0x01, b"x", LONG)),
            UsbErrorKind::NotClaimed
        );
        assert_eq!(
            kind(handle.interrupt_in(0x83, 2, LONG)),
            UsbErrorKind::NotClaimed
        );
        assert_eq!(
            handle
                .control_in(GET_DEVICE_DESCRIPTOR, 18, LONG)
                .unwrap()
                .len(),
            18
        );
        assert_eq!(
            kind(handle.claim_interface(1)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(kind(handle.release_interface(0)), UsbErrorKind::NotClaimed);
        handle.claim_interface(0).unwrap();
        assert_eq!(handle.bulk_out(0x01, b"x", LONG).unwrap(), 1);
        handle.release_interface(0).unwrap();
        assert_eq!(
            kind(handle.bulk_in(0x81, 1, LONG)),
            UsbErrorKind::NotClaimed
        );
    }

    #[test]
    fn second_open_is_busy_until_the_first_handle_drops() {
        let backend = board();
        let first = backend.open("board-1").unwrap();
        assert!(backend.is_open("board-1"));
        assert_eq!(kind(backend.open("board-1")), UsbErrorKind::Busy);
        // Other devices are independent.
        drop(backend.open("bare").unwrap());
        drop(first);
        assert!(!backend.is_open("board-1"));
        drop(backend.open("board-1").unwrap());
        assert_eq!(backend.opens("board-1"), 2);
        assert_eq!(kind(backend.open("nope")), UsbErrorKind::NotFound);
    }

    #[test]
    fn scripted_detach_fails_transfers_and_hides_the_device() {
        let backend = SimulatedBackend::from_toml_str(
            r#"
            [[device]]
            id = "flaky"
            vendor_id = 1
            product_id = 2
            detach_after_transfers = 3
            [device.loopback]
            out = 0x01
            in = 0x81
            "#,
        )
        .unwrap();
        let mut handle = open_claimed(&backend, "flaky");
        // Transfers that fail on their arguments never reach the device and do not count.
        assert_eq!(
            kind(handle.bulk_in(0x82, 1, LONG)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(handle.bulk_out(0x01, b"ab", LONG).unwrap(), 2);
        assert_eq!(handle.bulk_in(0x81, 1, LONG).unwrap(), b"a");
        assert_eq!(backend.scan().unwrap().len(), 1);
        // The third transfer completes, and the device leaves with it.
        assert_eq!(handle.bulk_in(0x81, 1, LONG).unwrap(), b"b");
        assert_eq!(
            kind(handle.bulk_out(0x01, b"c", LONG)),
            UsbErrorKind::Disconnected
        );
        assert_eq!(
            kind(handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG)),
            UsbErrorKind::Disconnected
        );
        assert_eq!(kind(handle.claim_interface(0)), UsbErrorKind::Disconnected);
        assert_eq!(kind(handle.reset()), UsbErrorKind::Disconnected);
        assert!(backend.scan().unwrap().is_empty());
        assert_eq!(kind(backend.open("flaky")), UsbErrorKind::NotFound);
        assert_eq!(kind(backend.descriptors("flaky")), UsbErrorKind::NotFound);
        assert!(!backend.is_open("flaky"));
    }

    #[test]
    fn timed_detach_counts_from_the_first_open() {
        let backend = SimulatedBackend::from_toml_str(
            r#"
            [[device]]
            id = "flaky"
            vendor_id = 1
            product_id = 2
            detach_after = "60ms"
            hang = [0x81]
            "#,
        )
        .unwrap();
        // Not opened yet: the timer has not started.
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(backend.scan().unwrap().len(), 1);
        let mut handle = open_claimed(&backend, "flaky");
        // A read waiting past the detach is woken by it.
        let start = Instant::now();
        assert_eq!(
            kind(handle.bulk_in(0x81, 1, LONG)),
            UsbErrorKind::Disconnected
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(backend.scan().unwrap().is_empty());
        assert_eq!(kind(backend.open("flaky")), UsbErrorKind::NotFound);
    }

    #[test]
    fn detach_wakes_a_waiting_read_and_attach_brings_the_device_back() {
        let backend = Arc::new(board());
        let mut handle = open_claimed(&backend, "board-1");
        let reader = std::thread::spawn(move || {
            let result = handle.bulk_in(0x81, 8, LONG);
            (result, handle)
        });
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        backend.detach("board-1").unwrap();
        let (result, mut handle) = reader.join().unwrap();
        assert_eq!(kind(result), UsbErrorKind::Disconnected);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(backend.scan().unwrap().len(), 1);
        assert_eq!(kind(backend.detach("nope")), UsbErrorKind::NotFound);

        backend.attach("board-1").unwrap();
        assert_eq!(backend.scan().unwrap().len(), 2);
        // The old handle stays dead; a new open works although the old one is not dropped.
        assert_eq!(
            kind(handle.bulk_out(0x01, b"x", LONG)),
            UsbErrorKind::Disconnected
        );
        let mut fresh = open_claimed(&backend, "board-1");
        assert_eq!(fresh.bulk_out(0x01, b"x", LONG).unwrap(), 1);
        drop(handle);
        assert!(
            backend.is_open("board-1"),
            "dropping a stale handle closes nothing"
        );
    }

    #[test]
    fn unknown_control_request_stalls() {
        let backend = board();
        let mut handle = backend.open("board-1").unwrap();
        assert_eq!(
            kind(handle.control_in(setup(0xc0, 0x01, 1), 8, LONG)),
            UsbErrorKind::Stall
        );
        assert_eq!(
            kind(handle.control_out(setup(0x40, 0x02, 8), b"x", LONG)),
            UsbErrorKind::Stall
        );
        // Descriptors that do not exist stall too: string 4, configuration 1, BOS.
        for value in [0x0304, 0x0201, 0x0f00] {
            assert_eq!(
                kind(handle.control_in(setup(0x80, 6, value), 255, LONG)),
                UsbErrorKind::Stall
            );
        }
        let mut bare = backend.open("bare").unwrap();
        assert_eq!(
            kind(bare.control_in(setup(0x80, 6, 0x0301), 255, LONG)),
            UsbErrorKind::Stall
        );
    }

    #[test]
    fn listed_control_requests_are_answered() {
        let backend = board();
        let mut handle = backend.open("board-1").unwrap();
        assert_eq!(
            handle.control_in(setup(0xc0, 0x01, 0), 64, LONG).unwrap(),
            [1, 2, 3]
        );
        assert_eq!(
            handle.control_in(setup(0xc0, 0x01, 0), 2, LONG).unwrap(),
            [1, 2]
        );
        assert_eq!(
            handle
                .control_out(setup(0x40, 0x02, 7), b"abcd", LONG)
                .unwrap(),
            4
        );
        // Directions are checked against the call.
        assert_eq!(
            kind(handle.control_in(setup(0x40, 0x02, 7), 4, LONG)),
            UsbErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(handle.control_out(setup(0xc0, 0x01, 0), b"", LONG)),
            UsbErrorKind::InvalidArgument
        );
    }

    #[test]
    fn device_descriptor_answers_get_descriptor() {
        let backend = board();
        let mut handle = backend.open("board-1").unwrap();
        let device = handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG).unwrap();
        assert_eq!(
            device,
            [
                18, 1, 0x00, 0x02, 0xff, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1
            ]
        );
        // Truncated to the requested length, as hosts read the first 8 bytes first.
        assert_eq!(
            handle.control_in(GET_DEVICE_DESCRIPTOR, 8, LONG).unwrap(),
            device[..8]
        );
        assert_eq!(backend.descriptors("board-1").unwrap().device, device);

        // Without strings, the indexes are 0; class and version come from the file.
        let other = SimulatedBackend::from_toml_str(
            "[[device]]\nid = \"x\"\nvendor_id = 1\nproduct_id = 2\nclass = 0\ndevice_version = 0x0234\n",
        )
        .unwrap();
        let d = other.descriptors("x").unwrap().device;
        assert_eq!(d[4], 0);
        assert_eq!(&d[12..18], &[0x34, 0x02, 0, 0, 0, 1]);
    }

    #[test]
    fn configuration_descriptor_lists_every_endpoint() {
        let backend = board();
        let config = handle_config(&backend);
        let descriptors = backend.descriptors("board-1").unwrap();
        assert_eq!(descriptors.configurations, vec![config.clone()]);
        // 9 (configuration) + 9 (interface) + 6 endpoints of 7 bytes.
        let total = 9 + 9 + 6 * 7;
        assert_eq!(config.len(), total);
        assert_eq!(&config[..9], &[9, 2, total as u8, 0, 1, 1, 0, 0x80, 50]);
        assert_eq!(&config[9..18], &[9, 4, 0, 0, 6, 0xff, 0, 0, 0]);
        let endpoints: Vec<&[u8]> = config[18..].chunks(7).collect();
        assert_eq!(
            endpoints,
            [
                &[7, 5, 0x01, 2, 64, 0, 0][..],
                &[7, 5, 0x81, 2, 64, 0, 0],
                &[7, 5, 0x83, 3, 64, 0, 5],
                &[7, 5, 0x82, 2, 64, 0, 0],
                &[7, 5, 0x02, 2, 64, 0, 0],
                &[7, 5, 0x84, 2, 64, 0, 0],
            ]
        );
    }

    fn handle_config(backend: &SimulatedBackend) -> Vec<u8> {
        let mut handle = backend.open("board-1").unwrap();
        // Hosts read the 9-byte header, then wTotalLength bytes.
        let header = handle.control_in(setup(0x80, 6, 0x0200), 9, LONG).unwrap();
        assert_eq!(header.len(), 9);
        let total = u16::from_le_bytes([header[2], header[3]]);
        handle
            .control_in(setup(0x80, 6, 0x0200), total, LONG)
            .unwrap()
    }

    #[test]
    fn string_descriptors_are_utf16_with_language_0409() {
        let backend = SimulatedBackend::from_toml_str(
            "[[device]]\nid = \"x\"\nvendor_id = 1\nproduct_id = 2\nproduct = \"Bürette\"\n",
        )
        .unwrap();
        let mut handle = backend.open("x").unwrap();
        assert_eq!(
            handle
                .control_in(setup(0x80, 6, 0x0300), 255, LONG)
                .unwrap(),
            [4, 3, 0x09, 0x04]
        );
        let mut expected = vec![16, 3];
        for unit in "Bürette".encode_utf16() {
            expected.extend(unit.to_le_bytes());
        }
        let string = ControlSetup {
            index: 0x0409,
            ..setup(0x80, 6, 0x0302)
        };
        assert_eq!(handle.control_in(string, 255, LONG).unwrap(), expected);
        assert_eq!(handle.control_in(string, 2, LONG).unwrap(), [16, 3]);
        // Index 2 is the product; manufacturer (1) and serial (3) are absent.
        let device = handle.control_in(GET_DEVICE_DESCRIPTOR, 18, LONG).unwrap();
        assert_eq!(&device[14..17], &[0, 2, 0]);
    }

    #[test]
    fn reset_clears_state_and_is_counted() {
        let backend = board();
        let mut handle = open_claimed(&backend, "board-1");
        handle.bulk_out(0x01, b"left over", LONG).unwrap();
        assert_eq!(backend.resets("board-1"), 0);
        handle.reset().unwrap();
        assert_eq!(backend.resets("board-1"), 1);
        // The claim is gone with the reset ...
        assert_eq!(
            kind(handle.bulk_in(0x81, 64, LONG)),
            UsbErrorKind::NotClaimed
        );
        // ... and so is what the loopback held.
        handle.claim_interface(0).unwrap();
        assert_eq!(kind(handle.bulk_in(0x81, 64, SHORT)), UsbErrorKind::Timeout);
        handle.reset().unwrap();
        assert_eq!(backend.resets("board-1"), 2);
        assert_eq!(backend.resets("nope"), 0);
    }

    #[test]
    fn bad_file_names_the_device_and_the_field() {
        let unknown = invalid_file(
            "[[device]]\nid = \"board-1\"\nvendor_id = 1\nproduct_id = 2\nvendorid = 3\n",
        );
        assert!(unknown.contains("(inline TOML)"), "{unknown}");
        assert!(unknown.contains("board-1"), "{unknown}");
        assert!(unknown.contains("vendorid"), "{unknown}");

        let missing = invalid_file("[[device]]\nid = \"b\"\nvendor_id = 1\n");
        assert!(missing.contains("device `b`"), "{missing}");
        assert!(missing.contains("product_id"), "{missing}");

        let nested = invalid_file(
            "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\n[device.loopback]\nout = 1\nin = 0x81\nspeed = 3\n",
        );
        assert!(nested.contains("speed"), "{nested}");

        let direction = invalid_file(
            "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\n[device.loopback]\nout = 0x81\nin = 0x81\n",
        );
        assert!(direction.contains("loopback.out"), "{direction}");
        assert!(direction.contains("0x81"), "{direction}");

        let duration = invalid_file(
            "[[device]]\nid = \"b\"\nvendor_id = 1\nproduct_id = 2\ndetach_after = \"soon\"\n",
        );
        assert!(duration.contains("detach_after"), "{duration}");
        assert!(duration.contains("soon"), "{duration}");

        let range = invalid_file("[[device]]\nid = \"b\"\nvendor_id = 70000\nproduct_id = 2\n");
        assert!(range.contains("70000"), "{range}");

        // A device without an id is named by its position.
        let anonymous = invalid_file(
            "[[device]]\nid = \"a\"\nvendor_id = 1\nproduct_id = 2\n[[device]]\nvendor_id = 1\n",
        );
        assert!(anonymous.contains("device #2"), "{anonymous}");
        assert!(anonymous.contains("`id`"), "{anonymous}");
    }

    #[test]
    fn inconsistent_devices_are_rejected() {
        let cases = [
            // (file body after the ids, what the message must mention)
            ("id = \"Board\"", "`id`"),
            (
                "id = \"a\"\n[[device]]\nid = \"a\"\nvendor_id = 1\nproduct_id = 2",
                "already",
            ),
            ("id = \"a\"\nstall = [0x81]\nhang = [0x81]", "0x81"),
            ("id = \"a\"\nhang = [0x04]", "hang[0]"),
            ("id = \"a\"\nstall = [0x80]", "stall[0]"),
            (
                "id = \"a\"\ndetach_after_transfers = 0",
                "detach_after_transfers",
            ),
            (
                "id = \"a\"\n[[device.control]]\nrequest_type = 0xc0\nrequest = 1",
                "control[0]",
            ),
            (
                "id = \"a\"\n[[device.control]]\nrequest_type = 0x40\nrequest = 1\nanswer = [1]",
                "control[0].answer",
            ),
            (
                "id = \"a\"\n[[device.control]]\nrequest_type = 0x80\nrequest = 6\nanswer = [1]",
                "GET_DESCRIPTOR",
            ),
            (
                "id = \"a\"\n[[device.interrupt]]\nendpoint = 0x03\nanswer = []",
                "interrupt[0].endpoint",
            ),
        ];
        for (body, needle) in cases {
            let text = format!("[[device]]\nvendor_id = 1\nproduct_id = 2\n{body}\n");
            let message = invalid_file(&text);
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let top = invalid_file("[[devices]]\nid = \"a\"\n");
        assert!(top.contains("devices"), "{top}");
        let syntax = invalid_file("[[device]\n");
        assert!(syntax.contains("(inline TOML)"), "{syntax}");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        std::fs::write(&path, BOARD).unwrap();
        assert_eq!(
            SimulatedBackend::from_file(&path)
                .unwrap()
                .scan()
                .unwrap()
                .len(),
            2
        );

        std::fs::write(&path, "[[device]]\nid = \"x\"\n").unwrap();
        let err = SimulatedBackend::from_file(&path).unwrap_err();
        assert_eq!(err.kind, UsbErrorKind::InvalidArgument);
        assert!(err.message.contains("devices.toml"), "{err}");
        assert!(err.message.contains("device `x`"), "{err}");

        let missing = SimulatedBackend::from_file(dir.path().join("nope.toml")).unwrap_err();
        assert_eq!(missing.kind, UsbErrorKind::InvalidArgument);
        assert!(missing.message.contains("nope.toml"), "{missing}");

        // The daemon's chooser uses the same reader.
        assert_eq!(
            crate::devices::backend(Some(&dir.path().join("nope.toml")))
                .err()
                .map(|e| e.kind),
            Some(UsbErrorKind::InvalidArgument)
        );
    }
}
