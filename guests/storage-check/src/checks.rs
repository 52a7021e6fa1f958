//! The storage check's steps, on any device that implements `Transfers`: the leased disk in
//! a component, a fake disk in the tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbus_usb::mass_storage::{BulkOnlyTransport, Capacity, ScsiDisk};
use sandbus_usb::script::{RunReport, Steps};
use sandbus_usb::{InterfaceClass, LeasedDevice, OpenError, Transfers, find_interface};

use crate::args::StorageArgs;

/// How long the unit may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The block size `blocks` counts in.
const COUNTED_BLOCK: u64 = 512;

/// Runs the check: arguments, then the steps on the device `open` returns.
pub fn run<H: Transfers>(
    pairs: &[(String, String)],
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
) -> RunReport {
    let args = match StorageArgs::parse(pairs) {
        Ok(args) => args,
        Err(error) => return RunReport::bad_arguments(&error),
    };
    let mut steps = Steps::new();
    // A step's body only runs when every step before it passed, so `disk` is there when
    // a body needs it.
    let mut disk = steps.run("find-interface", || find_disk(open));
    steps.run("max-lun", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let max_lun = disk.transport().max_lun().map_err(|e| e.to_string())?;
        Ok(((), format!("max LUN {max_lun}; testing unit 0")))
    });
    steps.run("inquiry", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let inquiry = disk.inquiry().map_err(|e| e.to_string())?;
        let seen = format!(
            "vendor {:?}, product {:?}, revision {:?}",
            inquiry.vendor, inquiry.product, inquiry.revision
        );
        if inquiry.vendor != args.vendor || inquiry.product != args.product {
            return Err(format!(
                "{seen}; expected vendor {:?}, product {:?}",
                args.vendor, args.product
            ));
        }
        Ok(((), seen))
    });
    steps.run("unit-ready", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let readiness = disk
            .wait_until_ready(READY_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let reported: Vec<String> = readiness.reported.iter().map(|s| s.to_string()).collect();
        let mut detail = format!("ready after {} TEST UNIT READY", readiness.attempts);
        if !reported.is_empty() {
            detail.push_str(&format!("; reported on the way: {}", reported.join(", ")));
        }
        Ok(((), detail))
    });
    let capacity = steps.run("capacity", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let capacity = disk.read_capacity().map_err(|e| e.to_string())?;
        check_capacity(&capacity, args.blocks).map(|detail| (capacity, detail))
    });
    steps.run("read-marker", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let block = disk.read(args.marker_lba, 1).map_err(|e| e.to_string())?;
        check_marker(&block, args.marker.as_bytes())
            .map_err(|e| format!("block {}: {e}", args.marker_lba))?;
        Ok((
            (),
            format!(
                "block {} starts with {:?}, zeros after",
                args.marker_lba, args.marker
            ),
        ))
    });
    let scratch = steps.run("scratch-write-read", || {
        let disk = disk.as_mut().ok_or("no disk")?;
        let capacity = capacity.ok_or("no capacity")?;
        let lba = args.scratch_lba.unwrap_or(capacity.blocks() - 1);
        let detail = scratch_write_read(disk, lba, capacity.block_size)?;
        Ok((lba, detail))
    });
    let recoveries = disk.as_mut().map_or(0, |d| d.transport().recoveries());
    RunReport::from_steps(steps, || {
        let mut summary = format!(
            "{} {}: {} blocks; block {} holds the marker; block {} written and read back",
            args.vendor,
            args.product,
            args.blocks,
            args.marker_lba,
            scratch.unwrap_or_default()
        );
        if recoveries > 0 {
            summary.push_str(&format!(
                "; the device needed {recoveries} Bulk-Only reset recoveries on the way"
            ));
        }
        summary
    })
}

/// Opens the device, finds its Bulk-Only interface and claims it.
fn find_disk<H: Transfers>(
    open: impl FnOnce() -> Result<LeasedDevice<H>, OpenError>,
) -> Result<(ScsiDisk<H>, String), String> {
    let device = open().map_err(|e| e.to_string())?;
    let interface = find_interface(
        &device.configurations,
        InterfaceClass::MASS_STORAGE_BULK_ONLY,
    )
    .ok_or_else(|| {
        format!(
            "{} has no Bulk-Only mass storage interface (class 08/06/50)",
            device.describe()
        )
    })?
    .clone();
    let endpoints: Vec<String> = interface
        .endpoints
        .iter()
        .map(|e| format!("{:#04x}", e.address))
        .collect();
    let detail = format!(
        "interface {} (endpoints {}) of {}",
        interface.number,
        endpoints.join(", "),
        device.describe()
    );
    let transport =
        BulkOnlyTransport::open(device.handle, &interface).map_err(|e| e.to_string())?;
    Ok((ScsiDisk::new(transport, 0), detail))
}

/// Compares the capacity with the expected count of 512-byte blocks.
fn check_capacity(capacity: &Capacity, expected: u64) -> Result<String, String> {
    let detail = format!(
        "{} blocks of {} bytes ({} bytes)",
        capacity.blocks(),
        capacity.block_size,
        capacity.bytes()
    );
    let counted = capacity.bytes() / COUNTED_BLOCK;
    if counted != expected || !capacity.bytes().is_multiple_of(COUNTED_BLOCK) {
        return Err(format!(
            "{detail}: {counted} blocks of {COUNTED_BLOCK} bytes, expected {expected}"
        ));
    }
    Ok(detail)
}

/// Checks a block starts with `marker` and holds zeros after it.
pub fn check_marker(block: &[u8], marker: &[u8]) -> Result<(), String> {
    if !block.starts_with(marker) {
        let shown = &block[..block.len().min(marker.len().max(16))];
        return Err(format!(
            "starts with {:?}, expected {:?}",
            String::from_utf8_lossy(shown),
            String::from_utf8_lossy(marker)
        ));
    }
    match block[marker.len()..].iter().position(|b| *b != 0) {
        None => Ok(()),
        Some(at) => Err(format!(
            "byte {} is {:#04x}; after the marker the block should hold zeros",
            marker.len() + at,
            block[marker.len() + at]
        )),
    }
}

/// A block of bytes no earlier run left behind: a xorshift sequence seeded by the time and
/// the block address.
pub fn scratch_pattern(lba: u64, seed: u64, length: usize) -> Vec<u8> {
    let mut state = (seed ^ lba.rotate_left(32)) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes a pattern to block `lba`, reads it back and compares, then writes the old content
/// back.
fn scratch_write_read<H: Transfers>(
    disk: &mut ScsiDisk<H>,
    lba: u64,
    block_size: u32,
) -> Result<String, String> {
    let original = disk
        .read(lba, 1)
        .map_err(|e| format!("reading block {lba}: {e}"))?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |t| t.as_nanos() as u64);
    let pattern = scratch_pattern(lba, seed, block_size as usize);
    disk.write(lba, &pattern)
        .map_err(|e| format!("writing block {lba}: {e}"))?;
    let back = disk
        .read(lba, 1)
        .map_err(|e| format!("reading block {lba} back: {e}"))?;
    let restored = disk.write(lba, &original);
    if let Some(at) = back.iter().zip(&pattern).position(|(a, b)| a != b) {
        return Err(format!(
            "block {lba} read back differs at byte {at}: {:#04x}, written {:#04x}",
            back[at], pattern[at]
        ));
    }
    restored.map_err(|e| format!("writing block {lba}'s old content back: {e}"))?;
    Ok(format!(
        "block {lba}: {block_size} bytes written, read back equal, old content restored"
    ))
}

#[cfg(test)]
mod tests;
