//! The device file as serde reads it, checked into a [`Model`] of each device: its
//! descriptors, endpoints and scripted behaviour. A device with a class model
//! (`[device.mass-storage]`, `[device.serial-console]`, `[device.keyboard]`) takes its
//! descriptors from that model; its spec is read by the model's own module.

use std::time::Duration;

use serde::Deserialize;

use super::class_model::{ClassModel, Identity};
use super::keyboard::KeyboardSpec;
use super::mass_storage::MassStorageSpec;
use super::serial_console::SerialConsoleSpec;
use super::{DEFAULT_PERIOD, MAX_PACKET};
use crate::devices::descriptor::{
    ConfigurationDescriptor, DT_CONFIGURATION, DT_DEVICE, DT_STRING, DeviceDescriptor,
    EndpointDescriptor, InterfaceDescriptor, LANGUAGE_EN_US, MAX_STRING_UNITS, TransferType,
    language_descriptor, string_descriptor,
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
    pub(super) vendor_id: Option<u16>,
    pub(super) product_id: Option<u16>,
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
    #[serde(rename = "mass-storage")]
    pub(super) mass_storage: Option<MassStorageSpec>,
    #[serde(rename = "serial-console")]
    pub(super) serial_console: Option<SerialConsoleSpec>,
    pub(super) keyboard: Option<KeyboardSpec>,
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
    /// The device's class model moves the data; transfers must be of this type.
    Class(TransferType),
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

/// A device as the file describes it, checked, with its descriptors built. Never changes;
/// what changes at run time (a class model's state among it) is in the device's `State`.
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
    pub(super) strings: Vec<Option<Vec<u8>>>,
    /// Bit 6 of the configuration's attributes, for GET_STATUS.
    pub(super) self_powered: bool,
}

/// A device entry's field that is not valid; the message names the field.
pub(super) fn invalid(message: impl Into<String>) -> UsbError {
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

/// Checks that `text` fits a string descriptor.
fn check_string(field: &str, text: Option<&str>) -> Result<(), UsbError> {
    match text {
        Some(text) if text.encode_utf16().count() > MAX_STRING_UNITS => Err(invalid(format!(
            "`{field}`: longer than a string descriptor holds ({MAX_STRING_UNITS} UTF-16 units)"
        ))),
        _ => Ok(()),
    }
}

/// The class model a `[[device]]` entry names, checked, with the identity it gives the
/// device; `None` for a device without one.
type CheckedClass = Option<(&'static str, Identity, Box<dyn ClassModel>)>;

impl Model {
    /// Checks one device entry; `number` counts devices from 1. Errors say which field.
    /// Returns the class model's initial state beside the model, for the device's state.
    pub(super) fn from_spec(
        mut spec: DeviceSpec,
        number: usize,
    ) -> Result<(Self, Option<Box<dyn ClassModel>>), UsbError> {
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
        check_string("manufacturer", spec.manufacturer.as_deref())?;
        check_string("product", spec.product.as_deref())?;
        check_string("serial", spec.serial.as_deref())?;
        let detach_after = duration("detach_after", spec.detach_after.as_deref())?;
        if spec.detach_after_transfers == Some(0) {
            return Err(invalid(
                "`detach_after_transfers`: must be at least 1".to_owned(),
            ));
        }
        let class = class_model(&mut spec)?;
        let (model, state) = match class {
            Some((table, identity, state)) => {
                refuse_generic_keys(&spec, table)?;
                (Self::with_class(spec, number, &identity), Some(state))
            }
            None => (Self::generic(spec, number)?, None),
        };
        Ok((
            Self {
                detach_after,
                ..model
            },
            state,
        ))
    }

    /// A device without a class model: vendor interface 0 with the endpoints the file lists.
    fn generic(spec: DeviceSpec, number: usize) -> Result<Self, UsbError> {
        let required = |field: &str, value: Option<u16>| {
            value.ok_or_else(|| {
                invalid(format!(
                    "`{field}`: missing; only a device with a class model (mass-storage, \
                     serial-console, keyboard) has a default"
                ))
            })
        };
        let vendor_id = required("vendor_id", spec.vendor_id)?;
        let product_id = required("product_id", spec.product_id)?;
        let endpoints = generic_endpoints(&spec)?;
        let controls = generic_controls(spec.control)?;
        let class = spec.class.unwrap_or(0xff);
        let index_of = |present: bool, index: u8| if present { index } else { 0 };
        let device_descriptor = DeviceDescriptor {
            usb_version: 0x0200,
            class,
            subclass: 0,
            protocol: 0,
            max_packet_size0: MAX_PACKET,
            vendor_id,
            product_id,
            device_version: spec.device_version.unwrap_or(0x0100),
            manufacturer_string: index_of(spec.manufacturer.is_some(), 1),
            product_string: index_of(spec.product.is_some(), 2),
            serial_string: index_of(spec.serial.is_some(), 3),
            configurations: 1,
        };
        let configuration = ConfigurationDescriptor {
            value: 1,
            string: 0,
            // Bus powered, 100 mA.
            attributes: 0x80,
            max_power: 50,
            extra: Vec::new(),
            interfaces: vec![generic_interface(&endpoints)],
        };
        let strings = vec![
            Some(language_descriptor(&[LANGUAGE_EN_US])),
            spec.manufacturer.as_deref().map(string_descriptor),
            spec.product.as_deref().map(string_descriptor),
            spec.serial.as_deref().map(string_descriptor),
        ];
        Ok(Self {
            info: DeviceInfo {
                location: spec.location.unwrap_or_else(|| format!("sim-{number}")),
                id: spec.id,
                vendor_id,
                product_id,
                serial: spec.serial,
                manufacturer: spec.manufacturer,
                product: spec.product,
                class,
                speed: None,
                unusable: None,
            },
            detach_after: None,
            detach_after_transfers: spec.detach_after_transfers,
            endpoints,
            controls,
            device_descriptor: device_descriptor.to_bytes(),
            configuration_descriptor: configuration.to_bytes(),
            strings,
            self_powered: false,
        })
    }

    /// A device whose class model gives its descriptors; the entry's ids, strings and
    /// version override the model's defaults.
    fn with_class(spec: DeviceSpec, number: usize, identity: &Identity) -> Self {
        let manufacturer = spec
            .manufacturer
            .unwrap_or_else(|| identity.manufacturer.to_owned());
        let product = spec.product.unwrap_or_else(|| identity.product.to_owned());
        let serial = spec.serial.unwrap_or_else(|| identity.serial.to_owned());
        let vendor_id = spec.vendor_id.unwrap_or(identity.vendor_id);
        let product_id = spec.product_id.unwrap_or(identity.product_id);
        let device_descriptor = DeviceDescriptor {
            usb_version: identity.usb_version,
            class: 0,
            subclass: 0,
            protocol: 0,
            max_packet_size0: identity.max_packet_size0,
            vendor_id,
            product_id,
            device_version: spec.device_version.unwrap_or(identity.device_version),
            manufacturer_string: 1,
            product_string: 2,
            serial_string: 3,
            configurations: 1,
        };
        let configuration = ConfigurationDescriptor {
            string: if identity.configuration_string.is_some() {
                4
            } else {
                0
            },
            ..identity.configuration.clone()
        };
        let mut strings = vec![
            Some(language_descriptor(&[LANGUAGE_EN_US])),
            Some(string_descriptor(&manufacturer)),
            Some(string_descriptor(&product)),
            Some(string_descriptor(&serial)),
        ];
        if let Some(text) = identity.configuration_string {
            strings.push(Some(string_descriptor(text)));
        }
        let endpoints = identity
            .interface()
            .map(|interface| {
                interface
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        address: e.address,
                        role: Role::Class(e.transfer),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            info: DeviceInfo {
                location: spec.location.unwrap_or_else(|| format!("sim-{number}")),
                id: spec.id,
                vendor_id,
                product_id,
                serial: Some(serial),
                manufacturer: Some(manufacturer),
                product: Some(product),
                class: 0,
                speed: None,
                unusable: None,
            },
            detach_after: None,
            detach_after_transfers: spec.detach_after_transfers,
            endpoints,
            controls: Vec::new(),
            device_descriptor: device_descriptor.to_bytes(),
            self_powered: configuration.attributes & 0x40 != 0,
            configuration_descriptor: configuration.to_bytes(),
            strings,
        }
    }

    pub(super) fn endpoint(&self, address: u8) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.address == address)
    }

    /// The addresses of every endpoint the device has.
    pub(super) fn endpoint_addresses(&self) -> Vec<u8> {
        self.endpoints.iter().map(|e| e.address).collect()
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

/// Takes the one class model table out of `spec` and checks it; an error when it names
/// more than one.
fn class_model(spec: &mut DeviceSpec) -> Result<CheckedClass, UsbError> {
    let given: Vec<&str> = [
        ("mass-storage", spec.mass_storage.is_some()),
        ("serial-console", spec.serial_console.is_some()),
        ("keyboard", spec.keyboard.is_some()),
    ]
    .into_iter()
    .filter_map(|(table, present)| present.then_some(table))
    .collect();
    if let [first, second, ..] = given[..] {
        return Err(invalid(format!(
            "`[device.{first}]` and `[device.{second}]`: a device plays one class model"
        )));
    }
    if let Some(table) = spec.mass_storage.take() {
        let (identity, model) = table.check()?;
        return Ok(Some(("mass-storage", identity, Box::new(model))));
    }
    if let Some(table) = spec.serial_console.take() {
        let (identity, model) = table.check()?;
        return Ok(Some(("serial-console", identity, Box::new(model))));
    }
    if let Some(table) = spec.keyboard.take() {
        let (identity, model) = table.check()?;
        return Ok(Some(("keyboard", identity, Box::new(model))));
    }
    Ok(None)
}

/// A class model defines the device's endpoints, requests and class: the keys that describe
/// those for a generic device are refused beside it.
fn refuse_generic_keys(spec: &DeviceSpec, table: &str) -> Result<(), UsbError> {
    let present = [
        ("loopback", spec.loopback.is_some()),
        ("control", !spec.control.is_empty()),
        ("interrupt", !spec.interrupt.is_empty()),
        ("stall", !spec.stall.is_empty()),
        ("hang", !spec.hang.is_empty()),
        ("class", spec.class.is_some()),
    ];
    match present.iter().find(|(_, given)| *given) {
        Some((key, _)) => Err(invalid(format!(
            "`{key}` cannot be combined with `[device.{table}]`: the class model defines the \
             device's class, endpoints and requests"
        ))),
        None => Ok(()),
    }
}

/// The endpoints of a generic device, in the documented order: loopback, interrupt, stall,
/// hang.
fn generic_endpoints(spec: &DeviceSpec) -> Result<Vec<Endpoint>, UsbError> {
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
    Ok(endpoints)
}

/// The fixed control answers of a generic device.
fn generic_controls(specs: Vec<ControlSpec>) -> Result<Vec<ControlAnswer>, UsbError> {
    let mut controls: Vec<ControlAnswer> = Vec::new();
    for (i, c) in specs.into_iter().enumerate() {
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
    Ok(controls)
}

/// Interface 0 of a generic device: vendor class, an endpoint descriptor (max packet 64) for
/// every endpoint; interrupt endpoints poll at their period, all others are bulk.
fn generic_interface(endpoints: &[Endpoint]) -> InterfaceDescriptor {
    InterfaceDescriptor {
        number: 0,
        alternate_setting: 0,
        class: 0xff,
        subclass: 0,
        protocol: 0,
        string: 0,
        extra: Vec::new(),
        endpoints: endpoints
            .iter()
            .map(|endpoint| {
                let (transfer, interval) = match &endpoint.role {
                    Role::Interrupt { period, .. } => {
                        let ms = period.as_millis().clamp(1, 255);
                        (TransferType::Interrupt, u8::try_from(ms).unwrap_or(u8::MAX))
                    }
                    Role::Class(transfer) => (*transfer, 0),
                    _ => (TransferType::Bulk, 0),
                };
                EndpointDescriptor::new(endpoint.address, transfer, u16::from(MAX_PACKET), interval)
            })
            .collect(),
    }
}
