//! USB descriptors as the bytes a device sends: the standard layouts of USB 2.0 chapter 9
//! (device, configuration, interface, endpoint, string), built from plain values.
//!
//! The simulated backend builds every descriptor it serves here; anything else that needs to
//! write descriptor bytes (the libusb backend rebuilds them from libusb's parsed copy) can use
//! the same layouts. Parsing is not here: guests parse what they read.

/// `bDescriptorType` of a device descriptor.
pub const DT_DEVICE: u8 = 1;
/// `bDescriptorType` of a configuration descriptor.
pub const DT_CONFIGURATION: u8 = 2;
/// `bDescriptorType` of a string descriptor.
pub const DT_STRING: u8 = 3;
/// `bDescriptorType` of an interface descriptor.
pub const DT_INTERFACE: u8 = 4;
/// `bDescriptorType` of an endpoint descriptor.
pub const DT_ENDPOINT: u8 = 5;
/// `bDescriptorType` of a HID class descriptor (HID 1.11, 7.1).
pub const DT_HID: u8 = 0x21;
/// `bDescriptorType` of a HID report descriptor (HID 1.11, 7.1).
pub const DT_HID_REPORT: u8 = 0x22;

/// Language id of English (United States), the one language most devices offer.
pub const LANGUAGE_EN_US: u16 = 0x0409;
/// The most UTF-16 units a string descriptor holds: its length is one byte, (255 - 2) / 2.
pub const MAX_STRING_UNITS: usize = 126;

/// How an endpoint moves data (`bmAttributes` bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferType {
    /// Control (endpoint 0 only, in practice).
    Control = 0,
    /// Isochronous: reserved bandwidth, no retries.
    Isochronous = 1,
    /// Bulk: whatever bandwidth is left, retried until delivered.
    Bulk = 2,
    /// Interrupt: polled every `bInterval`, retried.
    Interrupt = 3,
}

/// The 18-byte device descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescriptor {
    /// `bcdUSB`, e.g. `0x0200`.
    pub usb_version: u16,
    /// `bDeviceClass`; 0 means each interface names its own class.
    pub class: u8,
    /// `bDeviceSubClass`.
    pub subclass: u8,
    /// `bDeviceProtocol`.
    pub protocol: u8,
    /// `bMaxPacketSize0`: 8, 16, 32 or 64 for USB 2.0.
    pub max_packet_size0: u8,
    /// `idVendor`.
    pub vendor_id: u16,
    /// `idProduct`.
    pub product_id: u16,
    /// `bcdDevice`.
    pub device_version: u16,
    /// `iManufacturer`: index of the string descriptor, 0 for none.
    pub manufacturer_string: u8,
    /// `iProduct`: index of the string descriptor, 0 for none.
    pub product_string: u8,
    /// `iSerialNumber`: index of the string descriptor, 0 for none.
    pub serial_string: u8,
    /// `bNumConfigurations`.
    pub configurations: u8,
}

impl DeviceDescriptor {
    /// The descriptor as the device sends it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![18, DT_DEVICE];
        bytes.extend(self.usb_version.to_le_bytes());
        bytes.extend([
            self.class,
            self.subclass,
            self.protocol,
            self.max_packet_size0,
        ]);
        bytes.extend(self.vendor_id.to_le_bytes());
        bytes.extend(self.product_id.to_le_bytes());
        bytes.extend(self.device_version.to_le_bytes());
        bytes.extend([
            self.manufacturer_string,
            self.product_string,
            self.serial_string,
            self.configurations,
        ]);
        bytes
    }
}

/// A configuration with its interfaces: serialised, the full `wTotalLength` block a host
/// reads with GET_DESCRIPTOR(CONFIGURATION).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationDescriptor {
    /// `bConfigurationValue`, what SET_CONFIGURATION selects (1 for the first).
    pub value: u8,
    /// `iConfiguration`: index of the string descriptor, 0 for none.
    pub string: u8,
    /// `bmAttributes`: 0x80 always, 0x40 self-powered, 0x20 remote wakeup.
    pub attributes: u8,
    /// `bMaxPower`, in units of 2 mA.
    pub max_power: u8,
    /// The interfaces (every alternate setting), in the order they are sent.
    pub interfaces: Vec<InterfaceDescriptor>,
}

impl ConfigurationDescriptor {
    /// The configuration descriptor followed by each interface, its class-specific
    /// descriptors and its endpoints. `wTotalLength` and `bNumInterfaces` (distinct interface
    /// numbers) are counted here.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut numbers: Vec<u8> = Vec::new();
        for interface in &self.interfaces {
            if !numbers.contains(&interface.number) {
                numbers.push(interface.number);
            }
            body.extend(interface.to_bytes());
        }
        let total = u16::try_from(9 + body.len()).unwrap_or(u16::MAX);
        let count = u8::try_from(numbers.len()).unwrap_or(u8::MAX);
        let mut bytes = vec![9, DT_CONFIGURATION];
        bytes.extend(total.to_le_bytes());
        bytes.extend([
            count,
            self.value,
            self.string,
            self.attributes,
            self.max_power,
        ]);
        bytes.extend(body);
        bytes
    }
}

/// One interface (alternate setting) with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDescriptor {
    /// `bInterfaceNumber`.
    pub number: u8,
    /// `bAlternateSetting`.
    pub alternate_setting: u8,
    /// `bInterfaceClass` (0x03 HID, 0x08 mass storage, 0xff vendor specific...).
    pub class: u8,
    /// `bInterfaceSubClass`.
    pub subclass: u8,
    /// `bInterfaceProtocol`.
    pub protocol: u8,
    /// `iInterface`: index of the string descriptor, 0 for none.
    pub string: u8,
    /// Class-specific descriptors sent between the interface and its endpoints (a HID
    /// descriptor, for instance), already serialised.
    pub class_descriptors: Vec<u8>,
    /// The endpoints, in order.
    pub endpoints: Vec<EndpointDescriptor>,
}

impl InterfaceDescriptor {
    /// The interface descriptor, its class-specific descriptors and its endpoints.
    pub fn to_bytes(&self) -> Vec<u8> {
        // At most 30 endpoint addresses exist, so the count fits its byte.
        let count = u8::try_from(self.endpoints.len()).unwrap_or(u8::MAX);
        let mut bytes = vec![
            9,
            DT_INTERFACE,
            self.number,
            self.alternate_setting,
            count,
            self.class,
            self.subclass,
            self.protocol,
            self.string,
        ];
        bytes.extend(&self.class_descriptors);
        for endpoint in &self.endpoints {
            bytes.extend(endpoint.to_bytes());
        }
        bytes
    }
}

/// One endpoint descriptor (7 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDescriptor {
    /// `bEndpointAddress`: number 1-15, bit 7 set for IN.
    pub address: u8,
    /// The transfer type in `bmAttributes` (synchronisation and usage bits stay 0).
    pub transfer: TransferType,
    /// `wMaxPacketSize`.
    pub max_packet_size: u16,
    /// `bInterval`: polling interval (interrupt: frames at full speed), 0 for bulk.
    pub interval: u8,
}

impl EndpointDescriptor {
    /// The descriptor as the device sends it.
    pub fn to_bytes(&self) -> [u8; 7] {
        let [low, high] = self.max_packet_size.to_le_bytes();
        [
            7,
            DT_ENDPOINT,
            self.address,
            self.transfer as u8,
            low,
            high,
            self.interval,
        ]
    }
}

/// A string descriptor holding `text` as UTF-16LE. Text longer than [`MAX_STRING_UNITS`]
/// units is cut there (callers that take text from a user check its length first).
pub fn string_descriptor(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().take(MAX_STRING_UNITS).collect();
    string_descriptor_units(&units)
}

/// String descriptor 0: the language ids the device offers.
pub fn language_descriptor(languages: &[u16]) -> Vec<u8> {
    string_descriptor_units(&languages[..languages.len().min(MAX_STRING_UNITS)])
}

fn string_descriptor_units(units: &[u16]) -> Vec<u8> {
    let length = u8::try_from(2 + 2 * units.len()).unwrap_or(u8::MAX);
    let mut bytes = vec![length, DT_STRING];
    for unit in units {
        bytes.extend(unit.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_counts_its_length_and_interfaces() {
        let interface = |number, alternate_setting| InterfaceDescriptor {
            number,
            alternate_setting,
            class: 0x03,
            subclass: 1,
            protocol: 1,
            string: 0,
            class_descriptors: vec![9, DT_HID, 0x11, 0x01, 0, 1, DT_HID_REPORT, 63, 0],
            endpoints: vec![EndpointDescriptor {
                address: 0x81,
                transfer: TransferType::Interrupt,
                max_packet_size: 8,
                interval: 10,
            }],
        };
        let config = ConfigurationDescriptor {
            value: 1,
            string: 4,
            attributes: 0xa0,
            max_power: 50,
            // Two alternate settings of interface 0, and interface 1: two interfaces.
            interfaces: vec![interface(0, 0), interface(0, 1), interface(1, 0)],
        };
        let bytes = config.to_bytes();
        assert_eq!(bytes.len(), 9 + 3 * (9 + 9 + 7));
        assert_eq!(&bytes[..9], &[9, 2, 84, 0, 2, 1, 4, 0xa0, 50]);
        // Interface, then its class descriptor, then its endpoint.
        assert_eq!(&bytes[9..18], &[9, 4, 0, 0, 1, 3, 1, 1, 0]);
        assert_eq!(bytes[18 + 1], DT_HID);
        assert_eq!(&bytes[27..34], &[7, 5, 0x81, 3, 8, 0, 10]);
    }

    #[test]
    fn strings_are_utf16_and_cut_at_what_a_descriptor_holds() {
        assert_eq!(string_descriptor("Aé"), [6, 3, 0x41, 0, 0xe9, 0]);
        assert_eq!(language_descriptor(&[LANGUAGE_EN_US]), [4, 3, 0x09, 0x04]);
        let long = string_descriptor(&"x".repeat(300));
        assert_eq!(long.len(), 2 + 2 * MAX_STRING_UNITS);
        assert_eq!(long[0], 254);
    }

    #[test]
    fn a_device_descriptor_is_18_bytes_little_endian() {
        let device = DeviceDescriptor {
            usb_version: 0x0200,
            class: 0,
            subclass: 0,
            protocol: 0,
            max_packet_size0: 64,
            vendor_id: 0x0403,
            product_id: 0x6001,
            device_version: 0x0400,
            manufacturer_string: 1,
            product_string: 2,
            serial_string: 3,
            configurations: 1,
        };
        assert_eq!(
            device.to_bytes(),
            [
                18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x03, 0x04, 0x01, 0x60, 0x00, 0x04, 1, 2, 3, 1
            ]
        );
    }
}
