//! USB descriptors as the bytes a device sends: the standard layouts of USB 2.0 chapter 9
//! (device, configuration, interface, endpoint, string), built from plain values.
//!
//! Both backends write descriptor bytes here: the simulated one builds every descriptor it
//! serves, the libusb one rebuilds them from libusb's parsed copy. What a standard descriptor
//! does not hold (class-specific descriptors, interface associations, anything libusb does not
//! parse) travels as the `extra` bytes of the descriptor it follows, so a configuration
//! rebuilt from libusb's copy is the one the device sent. Parsing is not here: guests parse
//! what they read.

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
    /// Descriptors sent between this one and the first interface (an interface association,
    /// say), already serialised.
    pub extra: Vec<u8>,
    /// The interfaces (every alternate setting), in the order they are sent; the alternate
    /// settings of one interface follow one another.
    pub interfaces: Vec<InterfaceDescriptor>,
}

impl ConfigurationDescriptor {
    /// The configuration descriptor, its extra bytes, then each interface with its own.
    /// `wTotalLength` and `bNumInterfaces` are counted here: an interface is a run of
    /// alternate settings with one `bInterfaceNumber`, as libusb groups them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = self.extra.clone();
        let mut count: u8 = 0;
        let mut previous = None;
        for interface in &self.interfaces {
            if previous != Some(interface.number) {
                count = count.saturating_add(1);
                previous = Some(interface.number);
            }
            body.extend(interface.to_bytes());
        }
        let total = u16::try_from(9 + body.len()).unwrap_or(u16::MAX);
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
    /// Descriptors sent between the interface and its first endpoint (a HID descriptor, an
    /// audio class's), already serialised.
    pub extra: Vec<u8>,
    /// The endpoints, in order.
    pub endpoints: Vec<EndpointDescriptor>,
}

impl InterfaceDescriptor {
    /// The interface descriptor, its extra bytes and its endpoints with theirs.
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
        bytes.extend(&self.extra);
        for endpoint in &self.endpoints {
            bytes.extend(endpoint.to_bytes());
        }
        bytes
    }
}

/// One endpoint descriptor: 7 bytes, or 9 for a USB Audio 1.0 endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDescriptor {
    /// `bEndpointAddress`: number 1-15, bit 7 set for IN.
    pub address: u8,
    /// The transfer type in `bmAttributes` bits 0-1.
    pub transfer: TransferType,
    /// `bmAttributes` bits 2-5, in place: an isochronous endpoint's synchronisation and usage
    /// types (a SuperSpeed interrupt endpoint's usage); 0 for other endpoints.
    pub sync_and_usage: u8,
    /// `wMaxPacketSize`.
    pub max_packet_size: u16,
    /// `bInterval`: polling interval (interrupt: frames at full speed), 0 for bulk.
    pub interval: u8,
    /// The two fields a USB Audio 1.0 endpoint adds; `None` for the standard 7 bytes.
    pub audio: Option<AudioSync>,
    /// Descriptors sent after this one and before the next endpoint or interface (a class's
    /// endpoint descriptor, a SuperSpeed companion), already serialised.
    pub extra: Vec<u8>,
}

/// `bRefresh` and `bSynchAddress`, which USB Audio 1.0 appends to an endpoint descriptor
/// (making it 9 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSync {
    /// `bRefresh`: how often (a power of 2, in frames) synchronisation feedback comes.
    pub refresh: u8,
    /// `bSynchAddress`: the endpoint that carries the synchronisation, 0 for none.
    pub synch_address: u8,
}

impl EndpointDescriptor {
    /// A standard 7-byte endpoint descriptor with nothing after it.
    pub fn new(address: u8, transfer: TransferType, max_packet_size: u16, interval: u8) -> Self {
        Self {
            address,
            transfer,
            sync_and_usage: 0,
            max_packet_size,
            interval,
            audio: None,
            extra: Vec::new(),
        }
    }

    /// The descriptor and its extra bytes, as the device sends them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let [low, high] = self.max_packet_size.to_le_bytes();
        let mut bytes = vec![
            if self.audio.is_some() { 9 } else { 7 },
            DT_ENDPOINT,
            self.address,
            self.transfer as u8 | (self.sync_and_usage & 0x3c),
            low,
            high,
            self.interval,
        ];
        if let Some(audio) = self.audio {
            bytes.extend([audio.refresh, audio.synch_address]);
        }
        bytes.extend(&self.extra);
        bytes
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
            extra: vec![9, DT_HID, 0x11, 0x01, 0, 1, DT_HID_REPORT, 63, 0],
            endpoints: vec![EndpointDescriptor::new(
                0x81,
                TransferType::Interrupt,
                8,
                10,
            )],
        };
        let config = ConfigurationDescriptor {
            value: 1,
            string: 4,
            attributes: 0xa0,
            max_power: 50,
            extra: Vec::new(),
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

    /// Splits a configuration into the builder's values the way libusb parses it: a
    /// descriptor that is not a standard interface or endpoint goes to the `extra` of the
    /// descriptor before it.
    fn split_like_libusb(bytes: &[u8]) -> ConfigurationDescriptor {
        let mut config = ConfigurationDescriptor {
            value: bytes[5],
            string: bytes[6],
            attributes: bytes[7],
            max_power: bytes[8],
            extra: Vec::new(),
            interfaces: Vec::new(),
        };
        let mut at = usize::from(bytes[0]);
        while at < bytes.len() {
            let d = &bytes[at..at + usize::from(bytes[at])];
            at += d.len();
            let last = config.interfaces.last_mut();
            match (d[1], last) {
                (DT_INTERFACE, _) => config.interfaces.push(InterfaceDescriptor {
                    number: d[2],
                    alternate_setting: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    string: d[8],
                    extra: Vec::new(),
                    endpoints: Vec::new(),
                }),
                (DT_ENDPOINT, Some(interface)) => interface.endpoints.push(EndpointDescriptor {
                    address: d[2],
                    transfer: [
                        TransferType::Control,
                        TransferType::Isochronous,
                        TransferType::Bulk,
                        TransferType::Interrupt,
                    ][usize::from(d[3] & 3)],
                    sync_and_usage: d[3] & 0x3c,
                    max_packet_size: u16::from_le_bytes([d[4], d[5]]),
                    interval: d[6],
                    audio: (d.len() >= 9).then(|| AudioSync {
                        refresh: d[7],
                        synch_address: d[8],
                    }),
                    extra: Vec::new(),
                }),
                (_, None) => config.extra.extend(d),
                (_, Some(interface)) => match interface.endpoints.last_mut() {
                    Some(endpoint) => endpoint.extra.extend(d),
                    None => interface.extra.extend(d),
                },
            }
        }
        config
    }

    #[test]
    fn a_composite_audio_and_hid_configuration_round_trips_byte_for_byte() {
        #[rustfmt::skip]
        let sent: Vec<u8> = [
            // Configuration: 142 bytes, 3 interfaces, bus powered, 100 mA.
            &[9, 2, 142, 0, 3, 1, 0, 0x80, 50][..],
            // Interface association: interfaces 0-1 are one audio function.
            &[8, 0x0b, 0, 2, 1, 0, 0, 0],
            // Interface 0, audio control, with its class-specific header and terminals.
            &[9, 4, 0, 0, 0, 1, 1, 0, 0],
            &[9, 0x24, 1, 0x00, 0x01, 30, 0, 1, 1],
            &[12, 0x24, 2, 1, 0x01, 0x01, 0, 2, 3, 0, 0, 0],
            &[9, 0x24, 3, 2, 0x01, 0x03, 0, 1, 0],
            // Interface 1: alternate setting 0 without endpoints, 1 streaming.
            &[9, 4, 1, 0, 0, 1, 2, 0, 0],
            &[9, 4, 1, 1, 2, 1, 2, 0, 0],
            &[7, 0x24, 1, 1, 1, 1, 0],
            &[11, 0x24, 2, 1, 2, 2, 16, 1, 0x44, 0xac, 0x00],
            // Isochronous asynchronous OUT, synchronised by 0x82, and its class descriptor.
            &[9, 5, 0x01, 0x05, 0xc0, 0x00, 1, 0, 0x82],
            &[7, 0x25, 1, 1, 0, 0, 0],
            // Its isochronous feedback IN endpoint, refreshed every 8 frames.
            &[9, 5, 0x82, 0x11, 3, 0, 1, 3, 0],
            // Interface 2, a boot keyboard: HID descriptor, interrupt IN.
            &[9, 4, 2, 0, 1, 3, 1, 1, 0],
            &[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 63, 0],
            &[7, 5, 0x81, 3, 8, 0, 10],
        ]
        .concat();
        let config = split_like_libusb(&sent);
        assert_eq!(config.extra, [8, 0x0b, 0, 2, 1, 0, 0, 0]);
        assert_eq!(config.interfaces.len(), 4, "four alternate settings");
        assert_eq!(config.interfaces[0].extra.len(), 30);
        let out = &config.interfaces[2].endpoints[0];
        assert_eq!(out.transfer, TransferType::Isochronous);
        assert_eq!(out.extra, [7, 0x25, 1, 1, 0, 0, 0]);
        assert_eq!(config.to_bytes(), sent);
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
