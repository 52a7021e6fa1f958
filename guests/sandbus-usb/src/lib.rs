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
//! world `script` and tells wit-bindgen to use these modules instead of generating the two
//! interfaces again, so a `DeviceHandle` the script opens is the one the library takes:
//!
//! ```ignore
//! wit_bindgen::generate!({
//!     path: "../../wit",
//!     world: "script",
//!     with: {
//!         "sandbus:host/usb@0.1.0": sandbus_usb::usb,
//!         "sandbus:host/log@0.1.0": sandbus_usb::log,
//!     },
//! });
//! ```
//!
//! The script then uses `sandbus_usb::usb` (not `sandbus::host::usb`, which is no longer
//! generated) and exports `runner` as usual.

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
