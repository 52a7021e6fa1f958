//! Descriptor bytes rebuilt from libusb's parsed copy (on Linux, the kernel's cache), so
//! reading them needs no permission on the device and sends it nothing. libusb's fields go
//! into the shared [`descriptor`](crate::devices::descriptor) builder, which writes the bytes.

use crate::devices::descriptor::{
    AudioSync, ConfigurationDescriptor, DeviceDescriptor, EndpointDescriptor, InterfaceDescriptor,
    TransferType,
};

/// A version as the BCD field it was read from (`0xJJMN`).
pub(super) fn bcd(version: rusb::Version) -> u16 {
    let major = u16::from(version.major());
    ((major / 10) << 12)
        | ((major % 10) << 8)
        | (u16::from(version.minor() & 0x0f) << 4)
        | u16::from(version.sub_minor() & 0x0f)
}

/// The 18-byte device descriptor, rebuilt from libusb's parsed copy.
pub(super) fn device_descriptor_bytes(d: &rusb::DeviceDescriptor) -> Vec<u8> {
    DeviceDescriptor {
        usb_version: bcd(d.usb_version()),
        class: d.class_code(),
        subclass: d.sub_class_code(),
        protocol: d.protocol_code(),
        max_packet_size0: d.max_packet_size(),
        vendor_id: d.vendor_id(),
        product_id: d.product_id(),
        device_version: bcd(d.device_version()),
        manufacturer_string: d.manufacturer_string_index().unwrap_or(0),
        product_string: d.product_string_index().unwrap_or(0),
        serial_string: d.serial_number_string_index().unwrap_or(0),
        configurations: d.num_configurations(),
    }
    .to_bytes()
}

/// A configuration's full descriptor (`wTotalLength` bytes), rebuilt from libusb's parsed
/// copy in the order the device sends it: configuration, then each interface alternate
/// setting followed by its endpoints, with the descriptors libusb did not parse ("extra")
/// where they stood.
pub(super) fn configuration_bytes(config: &rusb::ConfigDescriptor) -> Vec<u8> {
    let interfaces = config
        .interfaces()
        .flat_map(|interface| interface.descriptors())
        .map(|setting| InterfaceDescriptor {
            number: setting.interface_number(),
            alternate_setting: setting.setting_number(),
            class: setting.class_code(),
            subclass: setting.sub_class_code(),
            protocol: setting.protocol_code(),
            string: setting.description_string_index().unwrap_or(0),
            extra: setting.extra().to_vec(),
            endpoints: setting
                .endpoint_descriptors()
                .map(|endpoint| endpoint_descriptor(&endpoint))
                .collect(),
        })
        .collect();
    let bytes = ConfigurationDescriptor {
        value: config.number(),
        string: config.description_string_index().unwrap_or(0),
        attributes: 0x80
            | if config.self_powered() { 0x40 } else { 0 }
            | if config.remote_wakeup() { 0x20 } else { 0 },
        // libusb reports bMaxPower doubled, in milliamps.
        max_power: u8::try_from(config.max_power() / 2).unwrap_or(u8::MAX),
        extra: config.extra().to_vec(),
        interfaces,
    }
    .to_bytes();
    let total = u16::from_le_bytes([bytes[2], bytes[3]]);
    if total != config.total_length() {
        tracing::debug!(
            rebuilt = total,
            reported = config.total_length(),
            "a rebuilt configuration descriptor differs in length from what the device reported"
        );
    }
    bytes
}

/// One endpoint descriptor with what follows it: 9 bytes for audio endpoints that carry
/// bRefresh and bSynchAddress, 7 otherwise.
fn endpoint_descriptor(endpoint: &rusb::EndpointDescriptor<'_>) -> EndpointDescriptor {
    let sync = match endpoint.sync_type() {
        rusb::SyncType::NoSync => 0,
        rusb::SyncType::Asynchronous => 1,
        rusb::SyncType::Adaptive => 2,
        rusb::SyncType::Synchronous => 3,
    };
    let usage = match endpoint.usage_type() {
        rusb::UsageType::Data => 0,
        rusb::UsageType::Feedback => 1,
        rusb::UsageType::FeedbackData => 2,
        rusb::UsageType::Reserved => 3,
    };
    EndpointDescriptor {
        address: endpoint.address(),
        transfer: match endpoint.transfer_type() {
            rusb::TransferType::Control => TransferType::Control,
            rusb::TransferType::Isochronous => TransferType::Isochronous,
            rusb::TransferType::Bulk => TransferType::Bulk,
            rusb::TransferType::Interrupt => TransferType::Interrupt,
        },
        sync_and_usage: (sync << 2) | (usage << 4),
        max_packet_size: endpoint.max_packet_size(),
        interval: endpoint.interval(),
        audio: (endpoint.length() >= 9).then(|| AudioSync {
            refresh: endpoint.refresh(),
            synch_address: endpoint.synch_address(),
        }),
        extra: endpoint.extra().unwrap_or_default().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcd_versions_round_trip() {
        for raw in [
            0x0100, 0x0110, 0x0200, 0x0210, 0x0320, 0x1234, 0x9999, 0x0001,
        ] {
            assert_eq!(bcd(rusb::Version::from_bcd(raw)), raw, "0x{raw:04x}");
        }
    }
}
