//! Configuration descriptor bytes for fake devices: what `configuration-descriptors` would
//! return for them, built interface by interface.

use crate::descriptors::InterfaceClass;

/// One endpoint descriptor's fields.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    address: u8,
    attributes: u8,
    max_packet_size: u16,
    interval: u8,
}

impl EndpointSpec {
    /// A bulk endpoint (bit 7 of `address` set for IN).
    pub fn bulk(address: u8, max_packet_size: u16) -> Self {
        Self {
            address,
            attributes: 0x02,
            max_packet_size,
            interval: 0,
        }
    }

    /// An interrupt endpoint polled every `interval` frames.
    pub fn interrupt(address: u8, max_packet_size: u16, interval: u8) -> Self {
        Self {
            address,
            attributes: 0x03,
            max_packet_size,
            interval,
        }
    }
}

/// Builds a configuration descriptor: the header, then interfaces, each followed by its
/// endpoints and any raw class descriptors, in the order added.
#[derive(Debug, Clone)]
pub struct ConfigurationBuilder {
    value: u8,
    body: Vec<u8>,
    interfaces: u8,
}

impl ConfigurationBuilder {
    /// An empty configuration with this `bConfigurationValue`.
    pub fn new(value: u8) -> Self {
        Self {
            value,
            body: Vec::new(),
            interfaces: 0,
        }
    }

    /// Adds an interface descriptor (alternate setting 0); the endpoints added next belong
    /// to it. Its `bNumEndpoints` is not counted (the parser does not rely on it).
    pub fn interface(mut self, number: u8, class: InterfaceClass) -> Self {
        self.body.extend_from_slice(&[
            9,
            4,
            number,
            0,
            0,
            class.class,
            class.subclass,
            class.protocol,
            0,
        ]);
        self.interfaces = self.interfaces.saturating_add(1);
        self
    }

    /// Adds an endpoint descriptor.
    pub fn endpoint(mut self, endpoint: EndpointSpec) -> Self {
        let [low, high] = endpoint.max_packet_size.to_le_bytes();
        self.body.extend_from_slice(&[
            7,
            5,
            endpoint.address,
            endpoint.attributes,
            low,
            high,
            endpoint.interval,
        ]);
        self
    }

    /// Adds any descriptor, given whole (length and type bytes included).
    pub fn raw(mut self, descriptor: &[u8]) -> Self {
        self.body.extend_from_slice(descriptor);
        self
    }

    /// The descriptor bytes, `wTotalLength` filled in.
    pub fn build(self) -> Vec<u8> {
        let total = u16::try_from(9 + self.body.len()).unwrap_or(u16::MAX);
        let [low, high] = total.to_le_bytes();
        let mut bytes = vec![9, 2, low, high, self.interfaces, self.value, 0, 0x80, 50];
        bytes.extend(self.body);
        bytes
    }
}
