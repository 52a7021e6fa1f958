//! The device file as serde reads it, checked into a [`Model`] of each device: its
//! descriptors, endpoints and scripted behaviour.

use std::time::Duration;

use serde::Deserialize;

use super::{
    DEFAULT_PERIOD, DT_CONFIGURATION, DT_DEVICE, DT_ENDPOINT, DT_INTERFACE, DT_STRING, LANGUAGE,
    MAX_PACKET, MAX_STRING_UNITS,
};
use crate::devices::{ControlSetup, DeviceInfo, UsbError, UsbErrorKind};

// ---------------------------------------------------------------------------------------------
// The file, as serde reads it.

/// The whole file: only `[[device]]` tables. Devices stay raw values here so that an error
/// in one can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    #[serde(default)]
    pub(super) device: Vec<toml::Value>,
}

/// One `[[device]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceSpec {
    pub(super) id: String,
    pub(super) vendor_id: u16,
    pub(super) product_id: u16,
    pub(super) serial: Option<String>,
    pub(super) manufacturer: Option<String>,
    pub(super) product: Option<String>,
    pub(super) location: Option<String>,
    pub(super) class: Option<u8>,
    pub(super) device_version: Option<u16>,
    pub(super) detach_after: Option<String>,
    pub(super) detach_after_transfers: Option<u64>,
    pub(super) loopback: Option<LoopbackSpec>,
    #[serde(default)]
    pub(super) control: Vec<ControlSpec>,
    #[serde(default)]
    pub(super) interrupt: Vec<InterruptSpec>,
    #[serde(default)]
    pub(super) stall: Vec<u8>,
    #[serde(default)]
    pub(super) hang: Vec<u8>,
}

/// `[device.loopback]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoopbackSpec {
    pub(super) out: u8,
    #[serde(rename = "in")]
    pub(super) in_: u8,
    pub(super) delay: Option<String>,
}

/// One `[[device.control]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlSpec {
    pub(super) request_type: u8,
    pub(super) request: u8,
    #[serde(default)]
    pub(super) value: u16,
    #[serde(default)]
    pub(super) index: u16,
    pub(super) answer: Option<Vec<u8>>,
    pub(super) delay: Option<String>,
}

/// One `[[device.interrupt]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InterruptSpec {
    pub(super) endpoint: u8,
    pub(super) answer: Vec<u8>,
    pub(super) period: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The checked device model.

/// What one endpoint does.
#[derive(Debug)]
pub(super) enum Role {
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
pub(super) struct Endpoint {
    pub(super) address: u8,
    pub(super) role: Role,
}

/// A fixed answer to one control request.
#[derive(Debug)]
pub(super) struct ControlAnswer {
    pub(super) setup: ControlSetup,
    /// `Some` for IN requests.
    pub(super) answer: Option<Vec<u8>>,
    pub(super) delay: Duration,
}

/// A device as the file describes it, checked, with its descriptors built. Never changes.
#[derive(Debug)]
pub(super) struct Model {
    pub(super) info: DeviceInfo,
    pub(super) detach_after: Option<Duration>,
    pub(super) detach_after_transfers: Option<u64>,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) controls: Vec<ControlAnswer>,
    pub(super) device_descriptor: Vec<u8>,
    pub(super) configuration_descriptor: Vec<u8>,
    /// String descriptors by index: 0 is the language list; `None` where there is no string.
    pub(super) strings: [Option<Vec<u8>>; 4],
}

/// A device entry's field that is not valid; the message names the field.
fn invalid(message: impl Into<String>) -> UsbError {
    UsbError::new(UsbErrorKind::InvalidArgument, message)
}

/// Parses a duration field, naming it when it is wrong.
pub(super) fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, UsbError> {
    text.map(|t| {
        humantime::parse_duration(t).map_err(|e| {
            invalid(format!(
                "`{field}`: `{t}` is not a duration like 5ms or 2s ({e})"
            ))
            .caused_by(e)
        })
    })
    .transpose()
}

/// Checks that `address` is a usable endpoint address, and IN when `must_be_in` says so.
pub(super) fn check_endpoint(
    field: &str,
    address: u8,
    must_be_in: Option<bool>,
) -> Result<(), UsbError> {
    if address & 0x0f == 0 || address & 0x70 != 0 {
        return Err(invalid(format!(
            "`{field}`: 0x{address:02x} is not an endpoint address (number 1-15, bit 7 for IN)"
        )));
    }
    match must_be_in {
        Some(true) if address & 0x80 == 0 => Err(invalid(format!(
            "`{field}`: 0x{address:02x} is an OUT address; it must be IN (bit 7 set, e.g. 0x{:02x})",
            address | 0x80
        ))),
        Some(false) if address & 0x80 != 0 => Err(invalid(format!(
            "`{field}`: 0x{address:02x} is an IN address; it must be OUT (bit 7 clear, e.g. 0x{:02x})",
            address & 0x7f
        ))),
        _ => Ok(()),
    }
}

impl Model {
    /// Checks one device entry; `number` counts devices from 1. Errors say which field.
    pub(super) fn from_spec(spec: DeviceSpec, number: usize) -> Result<Self, UsbError> {
        if spec.id.is_empty()
            || !spec
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(format!(
                "`id`: `{}` must be non-empty and use only a-z, 0-9 and `-`",
                spec.id
            )));
        }
        for (field, text) in [
            ("manufacturer", &spec.manufacturer),
            ("product", &spec.product),
            ("serial", &spec.serial),
        ] {
            if let Some(text) = text
                && text.encode_utf16().count() > MAX_STRING_UNITS
            {
                return Err(invalid(format!(
                    "`{field}`: longer than a string descriptor holds ({MAX_STRING_UNITS} UTF-16 units)"
                )));
            }
        }
        let detach_after = duration("detach_after", spec.detach_after.as_deref())?;
        if spec.detach_after_transfers == Some(0) {
            return Err(invalid(
                "`detach_after_transfers`: must be at least 1".to_owned(),
            ));
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
                return Err(invalid(format!(
                    "endpoint 0x{:02x} is given more than one behaviour (loopback, interrupt, stall, hang)",
                    a.address
                )));
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
                return Err(invalid(format!(
                    "`control[{i}]`: GET_DESCRIPTOR (0x80, 6) is answered from the generated descriptors"
                )));
            }
            if controls.iter().any(|other| other.setup == setup) {
                return Err(invalid(format!(
                    "`control[{i}]`: the same request (type, request, value, index) is listed twice"
                )));
            }
            let delay =
                duration(&format!("control[{i}].delay"), c.delay.as_deref())?.unwrap_or_default();
            match (&c.answer, setup.is_in()) {
                (None, true) => {
                    return Err(invalid(format!(
                        "`control[{i}]`: request_type 0x{:02x} is IN, so it needs an `answer` (may be [])",
                        setup.request_type
                    )));
                }
                (Some(_), false) => {
                    return Err(invalid(format!(
                        "`control[{i}].answer`: request_type 0x{:02x} is OUT (bit 7 clear); OUT requests take no answer",
                        setup.request_type
                    )));
                }
                (Some(answer), true) if answer.len() > usize::from(u16::MAX) => {
                    return Err(invalid(format!(
                        "`control[{i}].answer`: longer than 65535 bytes"
                    )));
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
                speed: None,
                unusable: None,
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

    pub(super) fn endpoint(&self, address: u8) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }

    /// The answer to a standard GET_DESCRIPTOR with this wValue, or `None` (stall).
    pub(super) fn get_descriptor(&self, value: u16) -> Option<&[u8]> {
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
pub(super) fn configuration_descriptor(endpoints: &[Endpoint]) -> Vec<u8> {
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
pub(super) fn string_descriptor(text: &str) -> Vec<u8> {
    string_descriptor_units(&text.encode_utf16().collect::<Vec<_>>())
}

pub(super) fn string_descriptor_units(units: &[u16]) -> Vec<u8> {
    let length = u8::try_from(2 + 2 * units.len()).unwrap_or(u8::MAX);
    let mut d = vec![length, DT_STRING];
    for unit in units {
        d.extend(unit.to_le_bytes());
    }
    d
}
