//! Descriptor bytes rebuilt from libusb's parsed copy (on Linux, the kernel's cache), so
//! reading them needs no permission on the device and sends it nothing.

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
    let mut bytes = vec![18, 1];
    bytes.extend(bcd(d.usb_version()).to_le_bytes());
    bytes.extend([
        d.class_code(),
        d.sub_class_code(),
        d.protocol_code(),
        d.max_packet_size(),
    ]);
    bytes.extend(d.vendor_id().to_le_bytes());
    bytes.extend(d.product_id().to_le_bytes());
    bytes.extend(bcd(d.device_version()).to_le_bytes());
    bytes.extend([
        d.manufacturer_string_index().unwrap_or(0),
        d.product_string_index().unwrap_or(0),
        d.serial_number_string_index().unwrap_or(0),
        d.num_configurations(),
    ]);
    bytes
}

/// A configuration's full descriptor (`wTotalLength` bytes), rebuilt from libusb's parsed
/// copy in the order the device sends it: configuration, then each interface alternate
/// setting followed by its endpoints, with the descriptors libusb did not parse ("extra")
/// where they stood.
pub(super) fn configuration_bytes(config: &rusb::ConfigDescriptor) -> Vec<u8> {
    let attributes = 0x80
        | if config.self_powered() { 0x40 } else { 0 }
        | if config.remote_wakeup() { 0x20 } else { 0 };
    let max_power = u8::try_from(config.max_power() / 2).unwrap_or(u8::MAX);
    let mut bytes = vec![
        9,
        2,
        0,
        0,
        config.num_interfaces(),
        config.number(),
        config.description_string_index().unwrap_or(0),
        attributes,
        max_power,
    ];
    bytes.extend(config.extra());
    for interface in config.interfaces() {
        for setting in interface.descriptors() {
            bytes.extend([
                9,
                4,
                setting.interface_number(),
                setting.setting_number(),
                setting.num_endpoints(),
                setting.class_code(),
                setting.sub_class_code(),
                setting.protocol_code(),
                setting.description_string_index().unwrap_or(0),
            ]);
            bytes.extend(setting.extra());
            for endpoint in setting.endpoint_descriptors() {
                bytes.extend(endpoint_bytes(&endpoint));
                bytes.extend(endpoint.extra().unwrap_or_default());
            }
        }
    }
    let total = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    if total != config.total_length() {
        tracing::debug!(
            rebuilt = total,
            reported = config.total_length(),
            "a rebuilt configuration descriptor differs in length from what the device reported"
        );
    }
    let [low, high] = total.to_le_bytes();
    bytes[2] = low;
    bytes[3] = high;
    bytes
}

/// One endpoint descriptor: 7 bytes, or 9 for audio endpoints that carry bRefresh and
/// bSynchAddress.
pub(super) fn endpoint_bytes(endpoint: &rusb::EndpointDescriptor<'_>) -> Vec<u8> {
    let transfer = match endpoint.transfer_type() {
        rusb::TransferType::Control => 0,
        rusb::TransferType::Isochronous => 1,
        rusb::TransferType::Bulk => 2,
        rusb::TransferType::Interrupt => 3,
    };
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
    let audio = endpoint.length() >= 9;
    let [low, high] = endpoint.max_packet_size().to_le_bytes();
    let mut bytes = vec![
        if audio { 9 } else { 7 },
        5,
        endpoint.address(),
        transfer | (sync << 2) | (usage << 4),
        low,
        high,
        endpoint.interval(),
    ];
    if audio {
        bytes.extend([endpoint.refresh(), endpoint.synch_address()]);
    }
    bytes
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
