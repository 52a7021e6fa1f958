//! Storage check (world `script`): checks a USB disk over mass storage Bulk-Only Transport,
//! with `sandbus-usb`. Steps, in order (a failed one skips the rest):
//!
//! 1. `find-interface`: the leased device has a Bulk-Only mass storage interface (class
//!    08/06/50) with bulk IN and OUT endpoints; it is claimed;
//! 2. `max-lun`: GET MAX LUN answers (a stall means one unit); unit 0 is tested;
//! 3. `inquiry`: INQUIRY's vendor and product, trimmed, are `vendor` and `product`;
//! 4. `unit-ready`: TEST UNIT READY passes, retried while the unit reports a unit attention
//!    or that it is becoming ready (10 s at most);
//! 5. `capacity`: READ CAPACITY(10) gives `blocks` blocks of 512 bytes;
//! 6. `read-marker`: block `marker-lba` starts with the text `marker`, zeros after it;
//! 7. `scratch-write-read`: a pattern written to block `scratch-lba` (default the last
//!    block) reads back the same; the block's old content is written back afterwards.
//!
//! Arguments (`--arg name=value`): `vendor`, `product`, `blocks` (decimal), `marker-lba`
//! (decimal), `marker` (text), all required; `scratch-lba` (decimal) optional. An unknown
//! or malformed argument ends the run at once with verdict `error`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "script",
    with: {
        "sandbus:host/usb@0.1.0": sandbus_usb::usb,
        "sandbus:host/log@0.1.0": sandbus_usb::log,
    },
});

mod args;
mod checks;

use exports::sandbus::host::runner::{Guest, Report};
use sandbus_usb::LeasedDevice;

struct StorageCheck;

impl Guest for StorageCheck {
    fn run(args: Vec<(String, String)>) -> Report {
        sandbus_usb::runner_report!(checks::run(&args, LeasedDevice::open))
    }
}

export!(StorageCheck);
