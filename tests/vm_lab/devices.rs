//! What the lab hosts see of their devices on a real kernel USB stack: enumeration with
//! strings, hotplug through libusb and through polling, and devices a daemon may not use.

use std::time::Duration;

use libtest_mimic::Trial;
use serde_json::Value;

use super::{Lab, trial};

/// The devices `sandbus devices --json` lists on `host`.
pub fn devices_on(lab: &Lab, host: &str) -> Vec<Value> {
    lab.cluster
        .cli_json(&["devices"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["host"] == host)
        .cloned()
        .collect()
}

/// The device with serial `serial` on `host`, if listed.
pub fn device(lab: &Lab, host: &str, serial: &str) -> Option<Value> {
    devices_on(lab, host)
        .into_iter()
        .find(|d| d["serial"] == serial)
}

/// How many `sandbus.device.<kind>` events for serial `serial` on `host` are stored.
pub fn announced(lab: &Lab, kind: &str, host: &str, serial: &str) -> usize {
    lab.cluster
        .events(&format!("sandbus.device.{kind}"))
        .iter()
        .filter(|e| e["data"]["host"] == host && e["data"]["device"]["serial"] == serial)
        .count()
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "devices_lists_each_vms_devices_with_kind_serial_product_and_no_hubs",
            devices_lists_each_vms_devices_with_kind_serial_product_and_no_hubs,
        ),
        trial(
            "hotplug_through_libusb_is_announced_and_in_the_inventory_within_5s",
            hotplug_through_libusb_is_announced_and_in_the_inventory_within_5s,
        ),
        trial(
            "hotplug_without_libusb_events_is_found_by_polling_within_5s",
            hotplug_without_libusb_events_is_found_by_polling_within_5s,
        ),
        trial(
            "a_daemon_without_permission_lists_its_devices_as_unusable_and_refuses_runs",
            a_daemon_without_permission_lists_its_devices_as_unusable_and_refuses_runs,
        ),
        trial(
            "the_lab_shell_outlives_a_line_cut_in_half",
            the_lab_shell_outlives_a_line_cut_in_half,
        ),
    ]
}

/// A probe written before a VM opened its shell's serial port arrives cut (the UART's FIFO
/// is cleared on open); a cut line with a syntax error once ended the shell, and every test
/// of that boot failed with "its shell did not answer".
fn the_lab_shell_outlives_a_line_cut_in_half(lab: &mut Lab) {
    let cut = lab.a.shell_timeout("(1)) $?\"", Duration::from_secs(3));
    assert!(cut.is_err(), "a syntax error answered: {cut:?}");
    let after = lab
        .a
        .shell("echo still here")
        .unwrap_or_else(|e| lab.fail(&e));
    assert_eq!(after.trim(), "still here");
}

fn devices_lists_each_vms_devices_with_kind_serial_product_and_no_hubs(lab: &mut Lab) {
    let expected = [
        ("lab-a", "kbd1", 0x0627, 0x0001, "QEMU USB Keyboard"),
        ("lab-a", "stick1", 0x46f4, 0x0001, "QEMU USB HARDDRIVE"),
        ("lab-b", "ser1", 0x0403, 0x6001, "QEMU USB SERIAL"),
        ("lab-c", "kbd9", 0x0627, 0x0001, "QEMU USB Keyboard"),
    ];
    for (host, serial, vid, pid, product) in expected {
        let found = device(lab, host, serial)
            .unwrap_or_else(|| lab.fail(&format!("{host} does not list {serial}")));
        assert_eq!(found["vendor_id"], vid, "{found}");
        assert_eq!(found["product_id"], pid, "{found}");
        assert_eq!(found["product"], product, "{found}");
        assert_eq!(found["manufacturer"], "QEMU", "{found}");
        assert_eq!(found["backend"], "rusb", "{found}");
        assert!(found["speed"].is_string(), "{found}");
        let location = found["location"].as_str().unwrap();
        assert_eq!(found["id"], format!("usb-{location}"), "{found}");
    }
    for host in ["lab-a", "lab-b", "lab-c"] {
        let listed = devices_on(lab, host);
        assert!(
            listed.iter().all(|d| d["class"] != 9),
            "a hub is listed: {listed:?}"
        );
        let want = expected.iter().filter(|e| e.0 == host).count();
        assert_eq!(listed.len(), want, "{host}: {listed:?}");
    }
    // The table a person reads names the product too.
    let table = lab.cluster.cli_ok(&["devices"]);
    assert!(
        table.contains("QEMU USB HARDDRIVE") && table.contains("0403:6001"),
        "{table}"
    );
}

/// Plugs a second keyboard into `host`, checks it is announced and listed within 5 s,
/// unplugs it, checks it is gone within 5 s.
fn hotplug_round(lab: &mut Lab, host: &str, id: &str) {
    let before = announced(lab, "attached", host, id);
    lab.vm(host).plug_keyboard(id).unwrap();
    lab.wait_within(Duration::from_secs(5), "the keyboard attached", |lab| {
        announced(lab, "attached", host, id) > before && device(lab, host, id).is_some()
    });
    let gone = announced(lab, "detached", host, id);
    lab.vm(host).unplug(id).unwrap();
    lab.wait_within(Duration::from_secs(5), "the keyboard detached", |lab| {
        announced(lab, "detached", host, id) > gone && device(lab, host, id).is_none()
    });
}

fn hotplug_through_libusb_is_announced_and_in_the_inventory_within_5s(lab: &mut Lab) {
    assert!(
        lab.a.console().contains("hotplug=true"),
        "lab-a should watch through libusb hotplug"
    );
    hotplug_round(lab, "lab-a", "kbd2");
}

fn hotplug_without_libusb_events_is_found_by_polling_within_5s(lab: &mut Lab) {
    assert!(
        lab.c.console().contains("hotplug=false"),
        "lab-c should poll:\n{}",
        lab.c.console_tail(20)
    );
    hotplug_round(lab, "lab-c", "kbd8");
}

fn a_daemon_without_permission_lists_its_devices_as_unusable_and_refuses_runs(lab: &mut Lab) {
    super::runs::scripts(lab);
    let keyboard = device(lab, "lab-c", "kbd9").unwrap();
    assert_eq!(keyboard["state"], "unusable", "{keyboard}");
    let why = keyboard["unusable"].as_str().unwrap();
    assert!(
        why.contains("no permission to open /dev/bus/usb/") && why.contains("uid 65534"),
        "{why}"
    );
    // The table says why where a run would be.
    let table = lab.cluster.cli_ok(&["devices"]);
    assert!(table.contains("unusable"), "{table}");
    // A run on it is refused with the reason, and nothing is queued.
    let out = lab.cluster.cli(&[
        "run",
        "probe",
        "--device",
        "serial=kbd9",
        "--arg",
        "mode=hold",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no permission to open"), "{stderr}");
    let runs = lab.cluster.cli_json(&["runs"]);
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["host"] != "lab-c"),
        "{runs}"
    );
    // The daemon kept running and answering.
    assert!(lab.c.console().contains("daemon ready host=lab-c"));
}
