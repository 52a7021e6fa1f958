//! The script half of the USB benchmark (world `script`; `cargo bench --bench usb_lab` runs
//! it in a lab VM and compares it with a native rusb program doing the same transfers in the
//! same VM). It times a loop of transfers on a USB mass-storage stick and reports the figures
//! in its summary, `transfers=N bytes=B micros=T`.
//!
//! Arguments: `mode` = `call` (`device.info`, a host call that touches no device: the
//! sandbox's own cost), `control` (GET_DESCRIPTOR for the 18-byte device descriptor) or `read`
//! (Bulk-Only Transport READ(10) from block 0: command block out, `size` bytes in, status
//! in), `size` (bytes a read, a multiple of 512; default 65536) and `count` (default 1000).
//! Raw transfers on purpose: the figure is the host's cost per transfer, so the script does
//! nothing the native program does not.

wit_bindgen::generate!({
    path: "../../wit",
    world: "script",
});

use exports::sandbus::host::runner::{Guest, Report, Verdict};
use sandbus::host::usb::{self, ControlSetup, DeviceHandle};
use std::time::Instant;

/// How long one transfer may take.
const TIMEOUT_MS: u32 = 5_000;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Host calls that touch no device (`device.info`): the sandbox's own cost per call.
    Call,
    /// Control round trips.
    Control,
    /// Bulk-Only Transport reads of `size` bytes.
    Read,
}

/// The parsed arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    pub size: u32,
    pub count: u32,
}

/// Parses the run's arguments; the error says which one is wrong.
pub fn parse_args(args: &[(String, String)]) -> Result<Args, String> {
    let mut parsed = Args {
        mode: Mode::Read,
        size: 65_536,
        count: 1_000,
    };
    for (name, value) in args {
        let number = || {
            value
                .parse::<u32>()
                .map_err(|_| format!("{name}={value}: not a whole number"))
        };
        match name.as_str() {
            "mode" => {
                parsed.mode = match value.as_str() {
                    "call" => Mode::Call,
                    "control" => Mode::Control,
                    "read" => Mode::Read,
                    _ => return Err(format!("mode={value}: use call, control or read")),
                }
            }
            "size" => parsed.size = number()?,
            "count" => parsed.count = number()?,
            _ => return Err(format!("unknown argument `{name}`; use mode, size, count")),
        }
    }
    if parsed.size == 0 || !parsed.size.is_multiple_of(512) || parsed.size > 1 << 20 {
        return Err(format!(
            "size={}: a multiple of 512 up to 1 MiB",
            parsed.size
        ));
    }
    Ok(parsed)
}

/// The 31-byte Command Block Wrapper of a READ(10) of `blocks` 512-byte blocks from block 0.
pub fn read_command(tag: u32, blocks: u16) -> [u8; 31] {
    let mut cbw = [0u8; 31];
    cbw[0..4].copy_from_slice(b"USBC");
    cbw[4..8].copy_from_slice(&tag.to_le_bytes());
    cbw[8..12].copy_from_slice(&(u32::from(blocks) * 512).to_le_bytes());
    cbw[12] = 0x80; // data in
    cbw[14] = 10; // command length
    cbw[15] = 0x28; // READ(10), LBA 0
    cbw[22..24].copy_from_slice(&blocks.to_be_bytes());
    cbw
}

/// Checks a 13-byte Command Status Wrapper: signature, tag, status good.
pub fn check_status(csw: &[u8], tag: u32) -> Result<(), String> {
    if csw.len() != 13 || &csw[0..4] != b"USBS" {
        return Err(format!("not a command status: {csw:02x?}"));
    }
    if csw[4..8] != tag.to_le_bytes() {
        return Err(format!("status for another command: {csw:02x?}"));
    }
    match csw[12] {
        0 => Ok(()),
        status => Err(format!("command failed, status {status}")),
    }
}

/// The bulk endpoints of the stick's interface 0: (OUT, IN).
fn bulk_endpoints(configuration: &[u8]) -> Option<(u8, u8)> {
    let (mut out, mut input) = (None, None);
    let mut at = 0;
    while at + 2 <= configuration.len() {
        let length = usize::from(configuration[at]);
        if length < 2 || at + length > configuration.len() {
            break;
        }
        // An endpoint descriptor with the bulk transfer type.
        if configuration[at + 1] == 5 && length >= 7 && configuration[at + 3] & 3 == 2 {
            let address = configuration[at + 2];
            if address & 0x80 != 0 {
                input.get_or_insert(address);
            } else {
                out.get_or_insert(address);
            }
        }
        at += length;
    }
    Some((out?, input?))
}

fn usb_error(what: &str, e: usb::UsbError) -> String {
    format!("{what}: {e:?}")
}

/// Runs the measured loop; (transfers, bytes moved) on success.
fn measure(
    device: &usb::Device,
    handle: &DeviceHandle,
    args: Args,
    endpoints: (u8, u8),
) -> Result<(u64, u64), String> {
    match args.mode {
        Mode::Call => {
            for _ in 0..args.count {
                if device.info().vendor_id == 0 {
                    return Err("the device has vendor id 0".to_owned());
                }
            }
            Ok((u64::from(args.count), 0))
        }
        Mode::Control => {
            let setup = ControlSetup {
                request_type: 0x80,
                request: 0x06,
                value: 0x0100,
                index: 0,
            };
            for _ in 0..args.count {
                let bytes = handle
                    .control_in(setup, 18, TIMEOUT_MS)
                    .map_err(|e| usb_error("GET_DESCRIPTOR", e))?;
                if bytes.len() != 18 {
                    return Err(format!("device descriptor of {} bytes", bytes.len()));
                }
            }
            Ok((u64::from(args.count), u64::from(args.count) * 18))
        }
        Mode::Read => {
            let (out, input) = endpoints;
            let blocks = u16::try_from(args.size / 512).map_err(|e| e.to_string())?;
            for tag in 1..=args.count {
                handle
                    .bulk_out(out, &read_command(tag, blocks), TIMEOUT_MS)
                    .map_err(|e| usb_error("command", e))?;
                let data = handle
                    .bulk_in(input, args.size, TIMEOUT_MS)
                    .map_err(|e| usb_error("data", e))?;
                if data.len() != args.size as usize {
                    return Err(format!("read {} bytes of {}", data.len(), args.size));
                }
                let csw = handle
                    .bulk_in(input, 13, TIMEOUT_MS)
                    .map_err(|e| usb_error("status", e))?;
                check_status(&csw, tag)?;
            }
            Ok((
                u64::from(args.count),
                u64::from(args.count) * u64::from(args.size),
            ))
        }
    }
}

fn failed(verdict: Verdict, summary: String) -> Report {
    Report {
        verdict,
        steps: Vec::new(),
        summary,
    }
}

struct UsbBench;

impl Guest for UsbBench {
    fn run(args: Vec<(String, String)>) -> Report {
        let args = match parse_args(&args) {
            Ok(args) => args,
            Err(e) => return failed(Verdict::Error, e),
        };
        let setup = || -> Result<(usb::Device, DeviceHandle, (u8, u8)), String> {
            let device = usb::leased_device().map_err(|e| usb_error("leased-device", e))?;
            let configurations = device
                .configuration_descriptors()
                .map_err(|e| usb_error("descriptors", e))?;
            let endpoints = configurations
                .first()
                .and_then(|c| bulk_endpoints(c))
                .ok_or("the device has no bulk IN and OUT endpoints")?;
            let handle = device.open().map_err(|e| usb_error("open", e))?;
            handle
                .claim_interface(0)
                .map_err(|e| usb_error("claim", e))?;
            Ok((device, handle, endpoints))
        };
        let (device, handle, endpoints) = match setup() {
            Ok(ready) => ready,
            Err(e) => return failed(Verdict::Error, e),
        };
        let started = Instant::now();
        match measure(&device, &handle, args, endpoints) {
            Ok((transfers, bytes)) => failed(
                Verdict::Pass,
                format!(
                    "transfers={transfers} bytes={bytes} micros={}",
                    started.elapsed().as_micros()
                ),
            ),
            Err(e) => failed(Verdict::Fail, e),
        }
    }
}

export!(UsbBench);

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn arguments_choose_mode_size_and_count() {
        let parsed = parse_args(&args(&[("mode", "control"), ("count", "5")])).unwrap();
        assert_eq!(parsed.mode, Mode::Control);
        assert_eq!(parsed.count, 5);
        assert!(parse_args(&args(&[("size", "100")])).is_err());
        assert!(parse_args(&args(&[("mode", "write")])).is_err());
        assert!(parse_args(&args(&[("speed", "1")])).is_err());
    }

    #[test]
    fn a_read_command_is_a_bulk_only_read10_from_block_zero() {
        let cbw = read_command(7, 128);
        assert_eq!(&cbw[0..4], b"USBC");
        assert_eq!(u32::from_le_bytes([cbw[4], cbw[5], cbw[6], cbw[7]]), 7);
        assert_eq!(
            u32::from_le_bytes([cbw[8], cbw[9], cbw[10], cbw[11]]),
            65_536
        );
        assert_eq!((cbw[12], cbw[14], cbw[15]), (0x80, 10, 0x28));
        assert_eq!(&cbw[17..21], &[0, 0, 0, 0]);
        assert_eq!(&cbw[22..24], &[0, 128]);
    }

    #[test]
    fn a_status_must_be_good_and_for_this_command() {
        let mut csw = [0u8; 13];
        csw[0..4].copy_from_slice(b"USBS");
        csw[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(check_status(&csw, 3).is_ok());
        assert!(check_status(&csw, 4).is_err());
        csw[12] = 1;
        assert!(check_status(&csw, 3).is_err());
    }

    #[test]
    fn bulk_endpoints_are_found_in_a_configuration() {
        let configuration = [
            9, 2, 32, 0, 1, 1, 0, 0x80, 50, // configuration
            9, 4, 0, 0, 2, 8, 6, 0x50, 0, // interface: mass storage, BOT
            7, 5, 0x81, 2, 0, 2, 0, // bulk IN
            7, 5, 0x02, 2, 0, 2, 0, // bulk OUT
        ];
        assert_eq!(bulk_endpoints(&configuration), Some((0x02, 0x81)));
        assert_eq!(bulk_endpoints(&configuration[..25]), None);
    }
}
