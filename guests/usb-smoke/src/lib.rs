//! The USB smoke test (world `script`): checks that the leased device is the board the run
//! expects and that its bulk loopback works. One step each, timed, in order:
//!
//! 1. `open`: the leased device opens;
//! 2. `device-descriptor`: a GET_DESCRIPTOR control transfer returns an 18-byte device
//!    descriptor whose vendor and product ids match `vendor` and `product`;
//! 3. `claim-interface`: interface `interface` (default 0) is claimed;
//! 4. `bulk-loopback`: `size` bytes (default 64) written to OUT endpoint `out` (default 0x01)
//!    come back unchanged from IN endpoint `in` (default 0x81).
//!
//! Arguments (`--arg name=value`): `vendor` and `product` (hex, `0x` optional; required),
//! `out`, `in`, `interface`, `size`, `timeout-ms` (per transfer, default 1000). An unknown or
//! malformed argument ends the run at once with verdict `error`. A failed step skips the
//! ones after it; the verdict is `pass` only when all four passed.

wit_bindgen::generate!({
    path: "../../wit",
    world: "script",
});

use exports::sandbus::host::runner::{Guest, Report, Step, StepOutcome, Verdict};
use sandbus::host::log::{self, Level};
use sandbus::host::usb::{self, ControlSetup, DeviceHandle};
use std::time::Instant;

/// The parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub vendor: u16,
    pub product: u16,
    pub out_endpoint: u8,
    pub in_endpoint: u8,
    pub interface: u8,
    pub size: u32,
    pub timeout_ms: u32,
}

/// Parses `0x1209`, `1209` (hex either way).
fn hex<T: TryFrom<u32>>(name: &str, value: &str) -> Result<T, String> {
    let digits = value.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(digits, 16)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("argument `{name}`: `{value}` is not a hex number in range"))
}

/// Reads the run's arguments; the error names the bad one.
pub fn parse_args(args: &[(String, String)]) -> Result<Args, String> {
    let mut vendor = None;
    let mut product = None;
    let mut parsed = Args {
        vendor: 0,
        product: 0,
        out_endpoint: 0x01,
        in_endpoint: 0x81,
        interface: 0,
        size: 64,
        timeout_ms: 1000,
    };
    for (name, value) in args {
        match name.as_str() {
            "vendor" => vendor = Some(hex(name, value)?),
            "product" => product = Some(hex(name, value)?),
            "out" => parsed.out_endpoint = hex(name, value)?,
            "in" => parsed.in_endpoint = hex(name, value)?,
            "interface" => parsed.interface = hex(name, value)?,
            "size" => {
                parsed.size = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=65536).contains(n))
                    .ok_or_else(|| format!("argument `size`: `{value}` is not 1 to 65536"))?
            }
            "timeout-ms" => {
                parsed.timeout_ms = value
                    .parse()
                    .map_err(|_| format!("argument `timeout-ms`: `{value}` is not a number"))?
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; this script takes vendor, product, out, in, \
                     interface, size, timeout-ms"
                ));
            }
        }
    }
    parsed.vendor = vendor.ok_or("argument `vendor` is required (hex vendor id)")?;
    parsed.product = product.ok_or("argument `product` is required (hex product id)")?;
    Ok(parsed)
}

/// Checks an 18-byte device descriptor against the expected ids.
pub fn check_descriptor(bytes: &[u8], vendor: u16, product: u16) -> Result<String, String> {
    if bytes.len() < 18 || bytes[1] != 1 {
        return Err(format!("not a device descriptor: {bytes:02x?}"));
    }
    let seen_vendor = u16::from_le_bytes([bytes[8], bytes[9]]);
    let seen_product = u16::from_le_bytes([bytes[10], bytes[11]]);
    let seen = format!("{seen_vendor:04x}:{seen_product:04x}");
    if (seen_vendor, seen_product) != (vendor, product) {
        return Err(format!("expected {vendor:04x}:{product:04x}, found {seen}"));
    }
    Ok(seen)
}

/// The bytes written in the loopback step: a pattern that shows reordering or truncation.
pub fn pattern(size: u32) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

struct Run {
    steps: Vec<Step>,
    failed: bool,
}

impl Run {
    fn step<T>(
        &mut self,
        name: &str,
        body: impl FnOnce() -> Result<(T, String), String>,
    ) -> Option<T> {
        if self.failed {
            self.steps.push(Step {
                name: name.into(),
                outcome: StepOutcome::Skipped,
                duration_ms: 0,
                detail: Some("an earlier step failed".into()),
            });
            return None;
        }
        let started = Instant::now();
        let result = body();
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((value, detail)) => {
                log::log(Level::Info, &format!("{name}: {detail}"));
                self.steps.push(Step {
                    name: name.into(),
                    outcome: StepOutcome::Passed,
                    duration_ms,
                    detail: Some(detail),
                });
                Some(value)
            }
            Err(detail) => {
                log::log(Level::Error, &format!("{name}: {detail}"));
                self.failed = true;
                self.steps.push(Step {
                    name: name.into(),
                    outcome: StepOutcome::Failed,
                    duration_ms,
                    detail: Some(detail),
                });
                None
            }
        }
    }
}

fn describe(e: usb::UsbError) -> String {
    format!("{e:?}")
}

struct UsbSmoke;

impl Guest for UsbSmoke {
    fn run(args: Vec<(String, String)>) -> Report {
        let args = match parse_args(&args) {
            Ok(args) => args,
            Err(summary) => {
                log::log(Level::Error, &summary);
                return Report {
                    verdict: Verdict::Error,
                    steps: Vec::new(),
                    summary,
                };
            }
        };
        let mut run = Run {
            steps: Vec::new(),
            failed: false,
        };
        let handle: Option<DeviceHandle> = run.step("open", || {
            let device = usb::leased_device().map_err(describe)?;
            let info = device.info();
            let handle = device.open().map_err(describe)?;
            let serial = info.serial.unwrap_or_else(|| "(none)".into());
            Ok((
                handle,
                format!("opened the device at {} (serial {serial})", info.location),
            ))
        });
        let setup = ControlSetup {
            request_type: 0x80,
            request: 0x06,
            value: 0x0100,
            index: 0,
        };
        run.step("device-descriptor", || {
            let handle = handle.as_ref().ok_or("no handle")?;
            let bytes = handle
                .control_in(setup, 18, args.timeout_ms)
                .map_err(describe)?;
            let seen = check_descriptor(&bytes, args.vendor, args.product)?;
            Ok(((), format!("vendor:product {seen}")))
        });
        run.step("claim-interface", || {
            let handle = handle.as_ref().ok_or("no handle")?;
            handle.claim_interface(args.interface).map_err(describe)?;
            Ok(((), format!("interface {}", args.interface)))
        });
        run.step("bulk-loopback", || {
            let handle = handle.as_ref().ok_or("no handle")?;
            let sent = pattern(args.size);
            let n = handle
                .bulk_out(args.out_endpoint, &sent, args.timeout_ms)
                .map_err(describe)?;
            if n as usize != sent.len() {
                return Err(format!("wrote {n} of {} bytes", sent.len()));
            }
            let mut got = Vec::with_capacity(sent.len());
            while got.len() < sent.len() {
                let chunk = handle
                    .bulk_in(
                        args.in_endpoint,
                        (sent.len() - got.len()) as u32,
                        args.timeout_ms,
                    )
                    .map_err(|e| {
                        format!(
                            "after {} of {} bytes: {}",
                            got.len(),
                            sent.len(),
                            describe(e)
                        )
                    })?;
                if chunk.is_empty() {
                    return Err(format!(
                        "the device returned nothing after {} bytes",
                        got.len()
                    ));
                }
                got.extend(chunk);
            }
            if got != sent {
                return Err("the bytes read back differ from the bytes written".into());
            }
            Ok((
                (),
                format!(
                    "{} bytes out {:#04x}, back in {:#04x}",
                    sent.len(),
                    args.out_endpoint,
                    args.in_endpoint
                ),
            ))
        });
        let passed = run
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, StepOutcome::Passed))
            .count();
        let verdict = if run.failed {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        let summary = match verdict {
            Verdict::Pass => format!(
                "the device {:04x}:{:04x} answered its descriptor and looped {} bytes back",
                args.vendor, args.product, args.size
            ),
            _ => format!("{passed} of {} steps passed", run.steps.len()),
        };
        Report {
            verdict,
            steps: run.steps,
            summary,
        }
    }
}

export!(UsbSmoke);

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn arguments_are_hex_and_vendor_product_are_required() {
        let parsed = parse_args(&args(&[
            ("vendor", "0x1209"),
            ("product", "0001"),
            ("in", "82"),
        ]))
        .unwrap();
        assert_eq!(
            (parsed.vendor, parsed.product, parsed.in_endpoint),
            (0x1209, 1, 0x82)
        );
        assert!(
            parse_args(&args(&[("vendor", "1209")]))
                .unwrap_err()
                .contains("product")
        );
        assert!(
            parse_args(&args(&[("vendor", "zz"), ("product", "1")]))
                .unwrap_err()
                .contains("vendor")
        );
        assert!(
            parse_args(&args(&[("vendor", "1"), ("product", "1"), ("out", "100")]))
                .unwrap_err()
                .contains("out")
        );
        assert!(
            parse_args(&args(&[("vendor", "1"), ("product", "1"), ("speed", "1")]))
                .unwrap_err()
                .contains("speed")
        );
    }

    #[test]
    fn descriptor_check_names_what_it_found() {
        let mut d = vec![
            18, 1, 0, 2, 0xff, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0, 1, 1, 2, 3, 1,
        ];
        assert_eq!(check_descriptor(&d, 0x1209, 1).unwrap(), "1209:0001");
        assert!(
            check_descriptor(&d, 0x1209, 2)
                .unwrap_err()
                .contains("found 1209:0001")
        );
        d[1] = 2;
        assert!(check_descriptor(&d, 0x1209, 1).is_err());
        assert!(check_descriptor(&d[..4], 0x1209, 1).is_err());
    }

    #[test]
    fn pattern_is_not_constant() {
        let p = pattern(300);
        assert_eq!(p.len(), 300);
        assert_ne!(p[1], p[2]);
    }
}
