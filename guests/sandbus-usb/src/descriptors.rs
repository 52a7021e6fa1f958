//! Configuration descriptors (USB 2.0, 9.6.3-9.6.6) parsed into interfaces and endpoints, so
//! a script finds "the bulk-only mass storage interface" and its endpoints by class instead
//! of hard-coding numbers that differ between devices.
//!
//! Descriptors the parser does not model (interface associations, HID, SuperSpeed endpoint
//! companions, vendor descriptors) are skipped by their length; the ones that follow an
//! interface are kept raw in [`Interface::class_descriptors`].

use std::fmt;

const DT_CONFIGURATION: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;

/// An interface's class, subclass and protocol: what it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InterfaceClass {
    /// `bInterfaceClass`.
    pub class: u8,
    /// `bInterfaceSubClass`.
    pub subclass: u8,
    /// `bInterfaceProtocol`.
    pub protocol: u8,
}

impl InterfaceClass {
    /// Mass storage (0x08), SCSI transparent command set (0x06), Bulk-Only Transport (0x50).
    pub const MASS_STORAGE_BULK_ONLY: Self = Self::new(0x08, 0x06, 0x50);
    /// HID (0x03), boot interface subclass (0x01), keyboard (0x01).
    pub const HID_BOOT_KEYBOARD: Self = Self::new(0x03, 0x01, 0x01);
    /// Vendor specific in all three fields: what FTDI serial adapters report.
    pub const VENDOR_SPECIFIC: Self = Self::new(0xff, 0xff, 0xff);

    /// A class triple.
    pub const fn new(class: u8, subclass: u8, protocol: u8) -> Self {
        Self {
            class,
            subclass,
            protocol,
        }
    }
}

impl fmt::Display for InterfaceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "class {:02x}/{:02x}/{:02x}",
            self.class, self.subclass, self.protocol
        )
    }
}

/// How an endpoint moves data (`bmAttributes` bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferType {
    /// Control.
    Control,
    /// Isochronous.
    Isochronous,
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
}

/// Which way an endpoint moves data (bit 7 of its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device to host.
    In,
    /// Host to device.
    Out,
}

/// One endpoint of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `bEndpointAddress`: the number, with bit 7 set for IN. What the transfers take.
    pub address: u8,
    /// Bulk, interrupt, ...
    pub transfer_type: TransferType,
    /// The largest packet, in bytes (`wMaxPacketSize` bits 0-10). Protocols that frame data
    /// per packet (FTDI status bytes) or must read whole packets need it.
    pub max_packet_size: u16,
    /// `bInterval`: the polling interval, in frames or as an exponent depending on speed.
    pub interval: u8,
}

impl Endpoint {
    /// IN or OUT.
    pub fn direction(&self) -> Direction {
        if self.address & 0x80 != 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

/// One interface (one alternate setting of it) with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `bInterfaceNumber`: what `claim-interface` and class requests (`wIndex`) take.
    pub number: u8,
    /// `bAlternateSetting`.
    pub alternate_setting: u8,
    /// Class, subclass, protocol.
    pub class: InterfaceClass,
    /// The endpoints, in descriptor order.
    pub endpoints: Vec<Endpoint>,
    /// Descriptors between the interface descriptor and the next interface that are not
    /// endpoints (a HID descriptor, for instance), raw, each with its length and type bytes.
    pub class_descriptors: Vec<Vec<u8>>,
}

impl Interface {
    /// The first bulk IN and the first bulk OUT endpoint: what a bulk protocol (mass
    /// storage, a serial adapter) runs on. `None` when either is missing.
    pub fn bulk_endpoints(&self) -> Option<(&Endpoint, &Endpoint)> {
        self.endpoint(TransferType::Bulk, Direction::In)
            .zip(self.endpoint(TransferType::Bulk, Direction::Out))
    }

    /// The first endpoint of this type and direction.
    pub fn endpoint(&self, transfer_type: TransferType, direction: Direction) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.transfer_type == transfer_type && e.direction() == direction)
    }
}

/// One configuration with its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// `bConfigurationValue`.
    pub value: u8,
    /// `bmAttributes` (bit 6 self-powered, bit 5 remote wakeup).
    pub attributes: u8,
    /// Every interface descriptor, alternate settings included, in descriptor order.
    pub interfaces: Vec<Interface>,
}

impl Configuration {
    /// The first interface of this class (alternate setting 0 preferred).
    pub fn interface(&self, class: InterfaceClass) -> Option<&Interface> {
        let mut matching = self.interfaces.iter().filter(|i| i.class == class);
        let first = matching.clone().next();
        matching.find(|i| i.alternate_setting == 0).or(first)
    }
}

/// The first interface of this class in any of the configurations.
pub fn find_interface(
    configurations: &[Configuration],
    class: InterfaceClass,
) -> Option<&Interface> {
    configurations.iter().find_map(|c| c.interface(class))
}

/// Why a configuration descriptor could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorError {
    /// The bytes do not start with a configuration descriptor.
    NotAConfiguration {
        /// The descriptor type found (`bDescriptorType`), if there was one.
        found: Option<u8>,
    },
    /// A descriptor runs past the end of the bytes, or `wTotalLength` says there are more
    /// bytes than were given.
    Truncated {
        /// Where the broken descriptor starts.
        offset: usize,
    },
    /// A descriptor's `bLength` is too small for its type.
    BadLength {
        /// Where it starts.
        offset: usize,
        /// Its `bLength`.
        length: u8,
    },
    /// An endpoint descriptor came before any interface descriptor.
    EndpointOutsideInterface {
        /// Where it starts.
        offset: usize,
    },
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAConfiguration { found: Some(t) } => write!(
                f,
                "not a configuration descriptor (type {t:#04x}, expected {DT_CONFIGURATION:#04x})"
            ),
            Self::NotAConfiguration { found: None } => {
                write!(f, "not a configuration descriptor (too short)")
            }
            Self::Truncated { offset } => write!(
                f,
                "the configuration descriptor is cut short at byte {offset}"
            ),
            Self::BadLength { offset, length } => write!(
                f,
                "the descriptor at byte {offset} has an impossible length {length}"
            ),
            Self::EndpointOutsideInterface { offset } => write!(
                f,
                "the endpoint descriptor at byte {offset} belongs to no interface"
            ),
        }
    }
}

impl std::error::Error for DescriptorError {}

/// Parses one configuration descriptor in full (as `configuration-descriptors` returns it).
pub fn parse_configuration(bytes: &[u8]) -> Result<Configuration, DescriptorError> {
    if bytes.len() < 9 || bytes[1] != DT_CONFIGURATION {
        return Err(DescriptorError::NotAConfiguration {
            found: bytes.get(1).copied(),
        });
    }
    let total = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    let bytes = bytes.get(..total).ok_or(DescriptorError::Truncated {
        offset: bytes.len(),
    })?;
    let mut configuration = Configuration {
        value: bytes[5],
        attributes: bytes[7],
        interfaces: Vec::new(),
    };
    let mut offset = usize::from(bytes[0]);
    while offset < bytes.len() {
        let length = bytes[offset];
        let descriptor = bytes
            .get(offset..offset + usize::from(length))
            .ok_or(DescriptorError::Truncated { offset })?;
        let bad_length = || DescriptorError::BadLength { offset, length };
        match descriptor.get(1).copied() {
            _ if length < 2 => return Err(bad_length()),
            Some(DT_INTERFACE) => {
                if length < 9 {
                    return Err(bad_length());
                }
                configuration.interfaces.push(Interface {
                    number: descriptor[2],
                    alternate_setting: descriptor[3],
                    class: InterfaceClass::new(descriptor[5], descriptor[6], descriptor[7]),
                    endpoints: Vec::new(),
                    class_descriptors: Vec::new(),
                });
            }
            Some(DT_ENDPOINT) => {
                if length < 7 {
                    return Err(bad_length());
                }
                let interface = configuration
                    .interfaces
                    .last_mut()
                    .ok_or(DescriptorError::EndpointOutsideInterface { offset })?;
                interface.endpoints.push(Endpoint {
                    address: descriptor[2],
                    transfer_type: match descriptor[3] & 0x03 {
                        0 => TransferType::Control,
                        1 => TransferType::Isochronous,
                        2 => TransferType::Bulk,
                        _ => TransferType::Interrupt,
                    },
                    max_packet_size: u16::from_le_bytes([descriptor[4], descriptor[5]]) & 0x07ff,
                    interval: descriptor[6],
                });
            }
            _ => {
                if let Some(interface) = configuration.interfaces.last_mut() {
                    interface.class_descriptors.push(descriptor.to_vec());
                }
            }
        }
        offset += usize::from(length);
    }
    Ok(configuration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::descriptor::{ConfigurationBuilder, EndpointSpec};

    fn storage_and_keyboard() -> Vec<u8> {
        ConfigurationBuilder::new(1)
            .interface(0, InterfaceClass::MASS_STORAGE_BULK_ONLY)
            .endpoint(EndpointSpec::bulk(0x81, 512))
            .endpoint(EndpointSpec::bulk(0x02, 512))
            .interface(1, InterfaceClass::HID_BOOT_KEYBOARD)
            .raw(&[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0])
            .endpoint(EndpointSpec::interrupt(0x83, 8, 10))
            .build()
    }

    #[test]
    fn interfaces_are_found_by_class_with_their_endpoints() {
        let configuration = parse_configuration(&storage_and_keyboard()).unwrap();
        assert_eq!(configuration.value, 1);
        let storage = configuration
            .interface(InterfaceClass::MASS_STORAGE_BULK_ONLY)
            .unwrap();
        assert_eq!(storage.number, 0);
        let bulk_in = storage.endpoint(TransferType::Bulk, Direction::In).unwrap();
        let bulk_out = storage
            .endpoint(TransferType::Bulk, Direction::Out)
            .unwrap();
        assert_eq!((bulk_in.address, bulk_in.max_packet_size), (0x81, 512));
        assert_eq!(bulk_out.address, 0x02);
        assert_eq!(storage.bulk_endpoints(), Some((bulk_in, bulk_out)));
        let configurations = [configuration.clone()];
        let keyboard = find_interface(&configurations, InterfaceClass::HID_BOOT_KEYBOARD).unwrap();
        assert_eq!(keyboard.number, 1);
        let report_in = keyboard
            .endpoint(TransferType::Interrupt, Direction::In)
            .unwrap();
        assert_eq!((report_in.address, report_in.interval), (0x83, 10));
        assert_eq!(
            keyboard.class_descriptors.len(),
            1,
            "the HID descriptor is kept"
        );
        assert_eq!(
            configuration.interface(InterfaceClass::VENDOR_SPECIFIC),
            None
        );
    }

    #[test]
    fn unknown_descriptors_are_skipped_by_their_length() {
        // A SuperSpeed endpoint companion (type 0x30) after each endpoint.
        let bytes = ConfigurationBuilder::new(1)
            .interface(0, InterfaceClass::MASS_STORAGE_BULK_ONLY)
            .endpoint(EndpointSpec::bulk(0x81, 1024))
            .raw(&[6, 0x30, 15, 0, 0, 0])
            .endpoint(EndpointSpec::bulk(0x02, 1024))
            .raw(&[6, 0x30, 15, 0, 0, 0])
            .build();
        let configuration = parse_configuration(&bytes).unwrap();
        assert_eq!(configuration.interfaces[0].endpoints.len(), 2);
        assert_eq!(
            configuration.interfaces[0].endpoints[1].max_packet_size,
            1024
        );
    }

    #[test]
    fn broken_descriptors_say_where_they_break() {
        let good = storage_and_keyboard();
        assert_eq!(
            parse_configuration(&good[..good.len() - 3]),
            Err(DescriptorError::Truncated {
                offset: good.len() - 3
            })
        );
        let mut zero_length = good.clone();
        zero_length[9] = 0;
        assert_eq!(
            parse_configuration(&zero_length),
            Err(DescriptorError::BadLength {
                offset: 9,
                length: 0
            })
        );
        let device_descriptor = [18, 1, 0, 2, 0, 0, 0, 64, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            parse_configuration(&device_descriptor),
            Err(DescriptorError::NotAConfiguration { found: Some(1) })
        );
        let orphan_endpoint = ConfigurationBuilder::new(1)
            .endpoint(EndpointSpec::bulk(0x81, 64))
            .build();
        assert_eq!(
            parse_configuration(&orphan_endpoint),
            Err(DescriptorError::EndpointOutsideInterface { offset: 9 })
        );
        let error = DescriptorError::Truncated { offset: 40 };
        assert!(error.to_string().contains("byte 40"), "{error}");
    }
}
