//! Real USB devices through libusb (the `rusb` crate, with libusb built from source).
//!
//! Rules this backend keeps, and why:
//!
//! - **Its own contexts, never libusb's global one.** `rusb::has_hotplug()`,
//!   `rusb::devices()` and friends initialise the global context and panic when libusb cannot
//!   initialise (no `/dev/bus/usb`, as in most containers and CI machines). Here every libusb
//!   call goes through a `rusb::Context` created with `Context::new()`, whose failure is an
//!   ordinary error.
//! - **No USB is not an error.** When libusb cannot initialise, the backend logs one warning,
//!   [`DeviceBackend::scan`] returns no devices, [`DeviceBackend::unavailable`] says why, and
//!   `open`/`descriptors` fail with [`UsbErrorKind::Unavailable`]. A later scan tries again.
//! - **A fresh context per scan.** libusb caches its device list while hotplug is on, so each
//!   scan (and each `open`, which finds its device by scanning) lists devices through a new
//!   context; only [`DeviceBackend::watch`] keeps one, for hotplug events.
//!
//! Opening is exclusive within this process: a second `open` of a device is `Busy` until the
//! first handle drops (other processes may still hold it; claiming an interface then fails
//! with `Busy`). Dropping a handle releases the interfaces it claimed (libusb hands them back
//! to their kernel drivers, which `open` lets it unbind) and closes the device.
//!
//! Devices are named by where they are plugged in: id `usb-<bus>-<port path>` (e.g.
//! `usb-1-2.3`), stable while the device stays in the same port. Root hubs (no port path) are
//! not listed. Strings (manufacturer, product, serial) are read with a short timeout when the
//! device can be opened and cached until it is unplugged; unreadable strings are `None`.
//! [`DeviceBackend::descriptors`] rebuilds the descriptor bytes from libusb's parsed copy
//! (which on Linux is the kernel's cache), so it needs no permission on the device and sends
//! it nothing; class-specific descriptors are kept from libusb's "extra" bytes.

mod descriptors;
mod handle;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusb::UsbContext as _;

use descriptors::{configuration_bytes, device_descriptor_bytes};
use handle::{RusbHandle, lock, usb_error};

use super::{Descriptors, DeviceBackend, DeviceHandle, DeviceInfo, Speed, UsbError, UsbErrorKind};

/// USB device class of hubs (USB 2.0, 11.23.1).
const USB_CLASS_HUB: u8 = 0x09;

/// How long reading one string descriptor may take during a scan.
const STRING_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the hotplug thread wakes to see whether it should stop.
const EVENT_POLL: Duration = Duration::from_millis(500);

/// Real USB through libusb. One per daemon; cheap to create, and never fails: a host without
/// USB gives a backend that reports no devices and says why.
pub struct RusbBackend {
    /// Why the last attempt to initialise libusb failed; `None` once it worked.
    unavailable: Mutex<Option<String>>,
    /// Whether the "USB is unavailable" warning was logged already.
    warned: AtomicBool,
    /// Strings read from devices, by where and what they are (a replugged device gets a new
    /// address, so it is read again).
    strings: Mutex<HashMap<StringKey, Strings>>,
    /// Hotplug threads started by [`DeviceBackend::watch`], stopped on drop.
    watchers: Mutex<Vec<Watcher>>,
    /// Ids of the devices open through this backend: libusb lets a process open a device
    /// twice, but a run's use is exclusive, so a second `open` is `Busy` until the first
    /// handle drops (as with the simulated backend).
    open: Arc<Mutex<HashSet<String>>>,
    /// Whether [`DeviceBackend::watch`] may use libusb's hotplug events.
    hotplug: bool,
}

impl Default for RusbBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RusbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RusbBackend")
            .field("unavailable", &*lock(&self.unavailable))
            .finish_non_exhaustive()
    }
}

impl RusbBackend {
    /// A backend on this host's USB. Tries libusb once now, so that a host without USB logs
    /// its warning at startup rather than at the first scan.
    pub fn new() -> Self {
        let backend = Self {
            unavailable: Mutex::new(None),
            warned: AtomicBool::new(false),
            strings: Mutex::new(HashMap::new()),
            watchers: Mutex::new(Vec::new()),
            open: Arc::new(Mutex::new(HashSet::new())),
            hotplug: true,
        };
        drop(backend.context());
        backend
    }

    /// This backend without hotplug events: [`DeviceBackend::watch`] declines, and the
    /// daemon polls.
    pub fn without_hotplug(mut self) -> Self {
        self.hotplug = false;
        self
    }

    /// A new libusb context, or `None` (recording why, warning the first time).
    fn context(&self) -> Option<rusb::Context> {
        match rusb::Context::new() {
            Ok(context) => {
                *lock(&self.unavailable) = None;
                Some(context)
            }
            Err(e) => {
                let reason = unavailable_reason(e);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "USB is unavailable: {reason}; no USB devices will be listed");
                }
                *lock(&self.unavailable) = Some(reason);
                None
            }
        }
    }

    fn unavailable_error(&self) -> UsbError {
        let reason = lock(&self.unavailable)
            .clone()
            .unwrap_or_else(|| "libusb could not initialise".to_owned());
        UsbError::new(
            UsbErrorKind::Unavailable,
            format!("USB is unavailable: {reason}"),
        )
    }

    /// The device with this id, found in a fresh scan (without reading its strings).
    fn find(&self, id: &str) -> Result<rusb::Device<rusb::Context>, UsbError> {
        let context = self.context().ok_or_else(|| self.unavailable_error())?;
        let list = context
            .devices()
            .map_err(|e| usb_error(e, "listing USB devices"))?;
        list.iter()
            .find(|device| Place::of(device).is_some_and(|place| place.id() == id))
            .ok_or_else(|| {
                UsbError::new(
                    UsbErrorKind::NotFound,
                    format!("no USB device `{id}` on this host"),
                )
            })
    }
}

/// Why libusb could not initialise, for a person.
fn unavailable_reason(e: rusb::Error) -> String {
    let hint = if cfg!(target_os = "linux") {
        " (is /dev/bus/usb present? containers need the USB bus passed through)"
    } else {
        ""
    };
    format!("libusb could not initialise: {e}{hint}")
}

impl DeviceBackend for RusbBackend {
    fn name(&self) -> &'static str {
        "rusb"
    }

    fn scan(&self) -> Result<Vec<DeviceInfo>, UsbError> {
        let Some(context) = self.context() else {
            return Ok(Vec::new());
        };
        let list = context
            .devices()
            .map_err(|e| usb_error(e, "listing USB devices"))?;
        let mut cache = lock(&self.strings);
        let mut seen = HashSet::new();
        let mut found: Vec<(Place, DeviceInfo)> = Vec::new();
        for device in list.iter() {
            let Some(place) = Place::of(&device) else {
                continue;
            };
            let descriptor = match device.device_descriptor() {
                Ok(descriptor) => descriptor,
                Err(e) => {
                    tracing::debug!(device = %place.id(), error = %e, "skipping a USB device without a readable device descriptor");
                    continue;
                }
            };
            // Hubs are never handed to a run: resetting one after the run would drop every
            // device behind it, leased or not.
            if descriptor.class_code() == USB_CLASS_HUB {
                continue;
            }
            let key = StringKey {
                bus: device.bus_number(),
                address: device.address(),
                vendor_id: descriptor.vendor_id(),
                product_id: descriptor.product_id(),
            };
            seen.insert(key);
            let mut unusable = device_file_denied(&device);
            let strings = match cache.get(&key) {
                Some(strings) => strings.clone(),
                None => match sysfs_strings(&place)
                    .map(Ok)
                    .unwrap_or_else(|| read_strings(&device, &descriptor))
                {
                    Ok(strings) => {
                        cache.insert(key, strings.clone());
                        strings
                    }
                    Err(e) => {
                        if e == rusb::Error::Access {
                            unusable = Some(no_permission(&device));
                        }
                        Strings::default()
                    }
                },
            };
            found.push((
                place.clone(),
                DeviceInfo {
                    id: place.id(),
                    vendor_id: descriptor.vendor_id(),
                    product_id: descriptor.product_id(),
                    serial: strings.serial,
                    manufacturer: strings.manufacturer,
                    product: strings.product,
                    location: place.location(),
                    class: descriptor.class_code(),
                    speed: speed_of(device.speed()),
                    unusable,
                },
            ));
        }
        cache.retain(|key, _| seen.contains(key));
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, info)| info).collect())
    }

    fn unavailable(&self) -> Option<String> {
        lock(&self.unavailable).clone()
    }

    fn descriptors(&self, id: &str) -> Result<Descriptors, UsbError> {
        let device = self.find(id)?;
        let descriptor = device
            .device_descriptor()
            .map_err(|e| usb_error(e, &format!("{id}: reading the device descriptor")))?;
        let mut configurations = Vec::new();
        for index in 0..descriptor.num_configurations() {
            let config = device.config_descriptor(index).map_err(|e| {
                usb_error(
                    e,
                    &format!("{id}: reading configuration descriptor {index}"),
                )
            })?;
            configurations.push(configuration_bytes(&config));
        }
        Ok(Descriptors {
            device: device_descriptor_bytes(&descriptor),
            configurations,
        })
    }

    fn open(&self, id: &str) -> Result<Box<dyn DeviceHandle>, UsbError> {
        let device = self.find(id)?;
        // Held until the handle exists, so two racing opens cannot both succeed.
        let mut open = lock(&self.open);
        if open.contains(id) {
            return Err(UsbError::new(
                UsbErrorKind::Busy,
                format!("USB device `{id}` is already open"),
            ));
        }
        let handle = device
            .open()
            .map_err(|e| usb_error(e, &format!("opening {id}")))?;
        open.insert(id.to_owned());
        drop(open);
        // Let libusb unbind a kernel driver from an interface we claim (and rebind it when
        // released). Not every platform can; claiming then says so if it matters.
        if let Err(e) = handle.set_auto_detach_kernel_driver(true)
            && e != rusb::Error::NotSupported
        {
            tracing::debug!(device = %id, error = %e, "could not turn on kernel driver auto-detach");
        }
        Ok(Box::new(RusbHandle {
            id: id.to_owned(),
            handle,
            claimed: BTreeSet::new(),
            open: Arc::clone(&self.open),
        }))
    }

    fn watch(&self, notify: Box<dyn Fn() + Send + Sync>) -> bool {
        if !self.hotplug {
            tracing::info!("USB hotplug events are off; USB devices will be polled");
            return false;
        }
        let Some(context) = self.context() else {
            return false;
        };
        // Registering fails with NotSupported where libusb has no hotplug: the capability
        // check, done through this context rather than the global one.
        let registration = match rusb::HotplugBuilder::new()
            .register::<rusb::Context, _>(&context, Box::new(Notifier(notify)))
        {
            Ok(registration) => registration,
            Err(rusb::Error::NotSupported) => {
                tracing::debug!("libusb has no hotplug support here; USB devices will be polled");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not register for USB hotplug events; USB devices will be polled");
                return false;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("sandbus-usb-hotplug".to_owned())
            .spawn({
                let context = context.clone();
                let stop = Arc::clone(&stop);
                move || {
                    let _registration = registration;
                    handle_events(&context, &stop);
                }
            });
        match thread {
            Ok(thread) => {
                lock(&self.watchers).push(Watcher {
                    context,
                    stop,
                    thread: Some(thread),
                });
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start the USB hotplug thread; USB devices will be polled");
                false
            }
        }
    }
}

impl Drop for RusbBackend {
    fn drop(&mut self) {
        let watchers = std::mem::take(&mut *lock(&self.watchers));
        for mut watcher in watchers {
            watcher.stop.store(true, Ordering::Release);
            watcher.context.interrupt_handle_events();
            if let Some(thread) = watcher.thread.take()
                && thread.join().is_err()
            {
                tracing::warn!("the USB hotplug thread panicked");
            }
        }
    }
}

/// Runs libusb's event handling (which calls the hotplug callbacks) until `stop`.
fn handle_events(context: &rusb::Context, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        match context.handle_events(Some(EVENT_POLL)) {
            Ok(()) | Err(rusb::Error::Interrupted) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "handling USB events failed; retrying");
                }
                failing = true;
                std::thread::sleep(EVENT_POLL);
            }
        }
    }
}

/// A hotplug thread and how to stop it.
struct Watcher {
    context: rusb::Context,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Calls the daemon's `notify` on every arrival and departure.
struct Notifier(Box<dyn Fn() + Send + Sync>);

impl rusb::Hotplug<rusb::Context> for Notifier {
    fn device_arrived(&mut self, _device: rusb::Device<rusb::Context>) {
        (self.0)();
    }

    fn device_left(&mut self, _device: rusb::Device<rusb::Context>) {
        (self.0)();
    }
}

/// Where a device is plugged in: bus and port path. Orders like `lsusb -t`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    bus: u8,
    ports: Vec<u8>,
}

impl Place {
    /// `None` for root hubs (no port path) and when the path cannot be read.
    fn of(device: &rusb::Device<rusb::Context>) -> Option<Self> {
        let ports = device.port_numbers().ok()?;
        if ports.is_empty() {
            return None;
        }
        Some(Self {
            bus: device.bus_number(),
            ports,
        })
    }

    /// `<bus>-<ports joined by .>`, as Linux names it in sysfs.
    fn location(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u8::to_string).collect();
        format!("{}-{}", self.bus, ports.join("."))
    }

    fn id(&self) -> String {
        format!("usb-{}", self.location())
    }
}

/// Identifies one plugging-in of a device, for the string cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StringKey {
    bus: u8,
    address: u8,
    vendor_id: u16,
    product_id: u16,
}

/// A device's strings; `None` where it has none or it could not be read.
#[derive(Debug, Clone, Default)]
struct Strings {
    manufacturer: Option<String>,
    product: Option<String>,
    serial: Option<String>,
}

/// The strings the kernel read from the device when it enumerated it, from Linux's sysfs:
/// no transfer to the device and no permission needed, so a daemon that may not open a
/// device still names it. `None` off Linux or where sysfs does not have the device.
fn sysfs_strings(place: &Place) -> Option<Strings> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let dir = std::path::Path::new("/sys/bus/usb/devices").join(place.location());
    if !dir.is_dir() {
        return None;
    }
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    Some(Strings {
        manufacturer: read("manufacturer"),
        product: read("product"),
        serial: read("serial"),
    })
}

/// Whether this process lacks read-write access to the device's file (Linux:
/// `/dev/bus/usb/BBB/DDD`), checked without opening it; the reason when it does.
fn device_file_denied(device: &rusb::Device<rusb::Context>) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let path = format!(
        "/dev/bus/usb/{:03}/{:03}",
        device.bus_number(),
        device.address()
    );
    let access = rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK;
    // As this process's effective ids, which `open` uses.
    match rustix::fs::accessat(
        rustix::fs::CWD,
        path.as_str(),
        access,
        rustix::fs::AtFlags::EACCESS,
    ) {
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => Some(no_permission(device)),
        _ => None,
    }
}

/// Why a device this process may not open is unusable, and what to do about it.
fn no_permission(device: &rusb::Device<rusb::Context>) -> String {
    format!(
        "no permission to open /dev/bus/usb/{:03}/{:03} (the daemon runs as uid {}); give \
         the daemon's user read-write access to the device, e.g. with a udev rule",
        device.bus_number(),
        device.address(),
        rustix::process::geteuid().as_raw()
    )
}

/// The speed libusb reports, when it knows it.
fn speed_of(speed: rusb::Speed) -> Option<Speed> {
    match speed {
        rusb::Speed::Low => Some(Speed::Low),
        rusb::Speed::Full => Some(Speed::Full),
        rusb::Speed::High => Some(Speed::High),
        rusb::Speed::Super => Some(Speed::Super),
        rusb::Speed::SuperPlus => Some(Speed::SuperPlus),
        _ => None,
    }
}

/// Reads a device's strings in its first language. Fails when the device cannot be opened
/// (no permission, claimed elsewhere), so a later scan tries again.
fn read_strings(
    device: &rusb::Device<rusb::Context>,
    descriptor: &rusb::DeviceDescriptor,
) -> Result<Strings, rusb::Error> {
    let handle = device.open().inspect_err(|e| {
        tracing::debug!(bus = device.bus_number(), address = device.address(), error = %e, "cannot open a USB device to read its strings");
    })?;
    let Some(language) = handle
        .read_languages(STRING_TIMEOUT)
        .ok()
        .and_then(|languages| languages.into_iter().next())
    else {
        return Ok(Strings::default());
    };
    let clean = |text: rusb::Result<String>| {
        let text = text.ok()?;
        let text = text.trim_end_matches('\0').trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    Ok(Strings {
        manufacturer: clean(handle.read_manufacturer_string(language, descriptor, STRING_TIMEOUT)),
        product: clean(handle.read_product_string(language, descriptor, STRING_TIMEOUT)),
        serial: clean(handle.read_serial_number_string(language, descriptor, STRING_TIMEOUT)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_libusb_means_no_devices_and_a_reason() {
        let backend = RusbBackend::new();
        assert_eq!(backend.name(), "rusb");
        match rusb::Context::new() {
            Err(_) => {
                assert_eq!(backend.scan().unwrap(), Vec::new());
                let reason = backend.unavailable().unwrap();
                assert!(reason.contains("libusb could not initialise"), "{reason}");
                let open = backend.open("usb-1-1").err().map(|e| e.kind);
                assert_eq!(open, Some(UsbErrorKind::Unavailable));
                let descriptors = backend.descriptors("usb-1-1").err().map(|e| e.kind);
                assert_eq!(descriptors, Some(UsbErrorKind::Unavailable));
                assert!(!backend.watch(Box::new(|| {})));
            }
            Ok(_) => {
                let devices = backend.scan().unwrap();
                assert_eq!(backend.unavailable(), None);
                for device in &devices {
                    assert!(device.id.starts_with("usb-"), "{device:?}");
                    assert_eq!(device.id, format!("usb-{}", device.location));
                }
                let missing = backend.open("usb-255-9.9.9").err().map(|e| e.kind);
                assert_eq!(missing, Some(UsbErrorKind::NotFound));
            }
        }
    }

    #[test]
    fn places_name_devices_by_bus_and_port_path() {
        let place = Place {
            bus: 1,
            ports: vec![2, 3],
        };
        assert_eq!(place.location(), "1-2.3");
        assert_eq!(place.id(), "usb-1-2.3");
        let mut places = [
            Place {
                bus: 2,
                ports: vec![1],
            },
            place.clone(),
            Place {
                bus: 1,
                ports: vec![2],
            },
        ];
        places.sort();
        let ids: Vec<String> = places.iter().map(Place::id).collect();
        assert_eq!(ids, ["usb-1-2", "usb-1-2.3", "usb-2-1"]);
    }
}
