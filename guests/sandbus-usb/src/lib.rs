//! `sandbus-usb`: what a sandbus test script needs to talk to a USB device by its protocol
//! rather than by raw transfers.
//!
//! - [`descriptors`]: configuration descriptors parsed into interfaces (class, subclass,
//!   protocol) and endpoints, to find "the bulk-only mass storage interface" by class;
//! - [`mass_storage`]: USB mass storage, Bulk-Only Transport with its error recovery, and
//!   the SCSI commands of a disk (INQUIRY, TEST UNIT READY, READ CAPACITY, READ, WRITE);
//! - [`ftdi`]: a serial console on an FTDI FT232 adapter (line settings, reads with the
//!   status bytes stripped, `read_until` a prompt, `write_line`);
//! - [`hid`]: a keyboard in HID boot protocol, reports turned into key events and text;
//! - [`script`]: strict `--arg` parsing and a report of named, timed steps;
//! - [`fakes`] (feature `fakes`): fake devices playing the device side of each protocol,
//!   for native unit tests.
//!
//! Every protocol drives the device through the [`Transfers`] trait: the leased device's
//! `device-handle` implements it in a component, a fake implements it in a native test.
//!
//! # Sharing the WIT types with a script
//!
//! This crate generates bindings for `sandbus:host/usb` and `sandbus:host/log` (from
//! `wit/world.wit`) and re-exports them as [`usb`] and [`log`]. A script generates its own
//! world `script` with wit-bindgen's `with` option pointing those two interfaces at these
//! modules, so they are not generated twice and a `DeviceHandle` the script opens is the
//! type the library takes. The script keeps its own `runner` export (exports are always
//! generated where the world is); [`runner_report!`] fills its report from a
//! [`script::RunReport`]. A whole script:
//!
//! ```no_run
//! wit_bindgen::generate!({
//!     path: "../../wit",
//!     world: "script",
//!     with: {
//!         "sandbus:host/usb@0.1.0": sandbus_usb::usb,
//!         "sandbus:host/log@0.1.0": sandbus_usb::log,
//!     },
//! });
//!
//! use exports::sandbus::host::runner::{Guest, Report};
//! use sandbus_usb::script::{RunReport, ScriptArgs, Steps};
//! use sandbus_usb::{InterfaceClass, LeasedDevice, find_interface};
//!
//! struct HasStorage;
//!
//! impl Guest for HasStorage {
//!     fn run(args: Vec<(String, String)>) -> Report {
//!         if let Err(error) = ScriptArgs::new(&args, &[]) {
//!             return sandbus_usb::runner_report!(RunReport::bad_arguments(&error));
//!         }
//!         let mut steps = Steps::new();
//!         steps.run("find-interface", || {
//!             let device = LeasedDevice::open().map_err(|e| e.to_string())?;
//!             let class = InterfaceClass::MASS_STORAGE_BULK_ONLY;
//!             let interface = find_interface(&device.configurations, class)
//!                 .ok_or("no Bulk-Only mass storage interface")?;
//!             Ok(((), format!("interface {}", interface.number)))
//!         });
//!         sandbus_usb::runner_report!(RunReport::from_steps(steps, || "a disk".into()))
//!     }
//! }
//!
//! export!(HasStorage);
//! # fn main() {}
//! ```
//!
//! The crate's generated world is named `sandbus:usb-library/usb-library`; a component
//! built with it still has world `script` (wit-component merges the two, and they agree on
//! both interfaces).

/// The generated bindings: a world of this crate's own that imports `sandbus:host/usb` and
/// `sandbus:host/log`.
pub mod wit {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package sandbus:usb-library;
            world usb-library {
                import sandbus:host/usb@0.1.0;
                import sandbus:host/log@0.1.0;
            }
        ",
        world: "sandbus:usb-library/usb-library",
        with: {
            "sandbus:host/usb@0.1.0": generate,
            "sandbus:host/log@0.1.0": generate,
        },
        additional_derives: [PartialEq, Eq],
    });
}

pub mod descriptors;
mod device;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod ftdi;
pub mod hid;
pub mod mass_storage;
pub mod script;
mod transfers;

pub use descriptors::{
    Configuration, Direction, Endpoint, Interface, InterfaceClass, TransferType, find_interface,
};
pub use device::{LeasedDevice, OpenError};
pub use transfers::{
    CLASS_INTERFACE_IN, CLASS_INTERFACE_OUT, Transfers, VENDOR_DEVICE_IN, VENDOR_DEVICE_OUT,
    describe_usb_error, setup,
};
/// `sandbus:host/log`, for scripts to map with wit-bindgen's `with`.
pub use wit::sandbus::host::log;
/// `sandbus:host/usb`, for scripts to map with wit-bindgen's `with`.
pub use wit::sandbus::host::usb;
