//! The USB devices of a host: what one is ([`DeviceInfo`]) and `sandbus.device.attached` /
//! `sandbus.device.detached`.

use serde::{Deserialize, Serialize};

use crate::HostEvent;

/// A device as its host sees it: enough to list it, select it and describe it to a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Stable id on this host: the simulated device's name, or `usb-<bus>-<port path>` for
    /// real hardware (stable while the device stays in the same port).
    pub id: String,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// Serial number string, when the device has one and it could be read.
    pub serial: Option<String>,
    /// Manufacturer string, when readable.
    pub manufacturer: Option<String>,
    /// Product string, when readable.
    pub product: Option<String>,
    /// Where it is plugged in: bus and port path, e.g. `1-2.3`.
    pub location: String,
    /// Device class from the device descriptor (0 = per interface).
    pub class: u8,
    /// The speed the device runs at, when the host knows it (not for simulated devices).
    #[serde(default)]
    pub speed: Option<Speed>,
    /// Why this host cannot use the device (for instance no permission on its device file),
    /// or `None` when it can. A run asking for an unusable device is refused with this
    /// reason.
    #[serde(default)]
    pub unusable: Option<String>,
}

/// The speed a USB device runs at (USB 2.0 9.6.1 and USB 3.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Speed {
    /// 1.5 Mbit/s (USB 1.x low speed).
    Low,
    /// 12 Mbit/s (USB 1.x full speed).
    Full,
    /// 480 Mbit/s (USB 2.0).
    High,
    /// 5 Gbit/s (USB 3.x SuperSpeed).
    Super,
    /// 10 Gbit/s (USB 3.x SuperSpeed+).
    SuperPlus,
}

impl std::fmt::Display for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Speed::Low => "low",
            Speed::Full => "full",
            Speed::High => "high",
            Speed::Super => "super",
            Speed::SuperPlus => "super-plus",
        })
    }
}

impl DeviceInfo {
    /// `vvvv:pppp` in lower-case hex, as `lsusb` prints it.
    pub fn vid_pid(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.product_id)
    }
}

/// `sandbus.device.attached`: a USB device appeared on a host (or changed: a device whose
/// description changed is announced again). Its subject is the device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAttached {
    /// The host it is plugged into.
    pub host: String,
    /// The device.
    pub device: DeviceInfo,
}

impl HostEvent for DeviceAttached {
    const TYPE: &'static str = "sandbus.device.attached";
}

/// `sandbus.device.detached`: a USB device went away from a host. Its subject is the device
/// id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetached {
    /// The host it was plugged into.
    pub host: String,
    /// The device, as it was last seen.
    pub device: DeviceInfo,
}

impl HostEvent for DeviceDetached {
    const TYPE: &'static str = "sandbus.device.detached";
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    /// A board as the simulated backend describes one; no serial, so a `null` is in the JSON.
    pub(crate) fn board() -> DeviceInfo {
        DeviceInfo {
            id: "board-1".into(),
            vendor_id: 0x1209,
            product_id: 0x0001,
            serial: None,
            manufacturer: Some("pid.codes".into()),
            product: Some("Test board".into()),
            location: "1-2.3".into(),
            class: 0,
            speed: Some(Speed::High),
            unusable: None,
        }
    }

    /// The device's JSON, every field present.
    pub(crate) fn board_json() -> serde_json::Value {
        json!({
            "id": "board-1",
            "vendor_id": 4617,
            "product_id": 1,
            "serial": null,
            "manufacturer": "pid.codes",
            "product": "Test board",
            "location": "1-2.3",
            "class": 0,
            "speed": "high",
            "unusable": null,
        })
    }

    #[test]
    fn a_device_is_written_with_every_field_and_named_by_vid_pid() {
        assert_eq!(serde_json::to_value(board()).unwrap(), board_json());
        assert_eq!(board().vid_pid(), "1209:0001");
    }

    #[test]
    fn device_attached_and_detached_name_the_host_and_the_device() {
        let (host, device) = ("h1", board());
        assert_same_json(
            &DeviceAttached {
                host: host.into(),
                device: device.clone(),
            },
            json!({ "host": host, "device": device }),
        );
        assert_same_json(
            &DeviceDetached {
                host: host.into(),
                device: device.clone(),
            },
            json!({ "host": host, "device": device }),
        );
    }
}
