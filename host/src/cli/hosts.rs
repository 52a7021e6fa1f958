//! `sandbus hosts` and `sandbus devices`: the live hosts (what each runs, and the component
//! versions it is compiling or could not load, with why), and the USB devices each has
//! (free, leased by a run, or offline).

use sandbus::api::{Empty, endpoint};
use sandbus::bus::{DeviceRecord, HostInfo, LoadState};

use super::connect::{ClientArgs, with_client};
use super::output::{EXIT_OK, outln, print_json_or, printable};

/// `sandbus hosts`
pub async fn hosts(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let hosts: Vec<HostInfo> = c.call::<endpoint::Hosts>(&Empty {}).await?;
        print_json_or(c.json, &hosts, |hosts| {
            if hosts.is_empty() {
                outln!("no live hosts");
            }
            for h in hosts {
                outln!(
                    "{:<20} {:<16} v{} pid {} since {}  components: {}  listeners: {}",
                    h.id,
                    h.hostname,
                    h.version,
                    h.pid,
                    h.started_at,
                    h.components
                        .iter()
                        .map(|(n, v)| format!("{n}@v{v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    h.listeners.join(",")
                );
                for (name, not_ready) in &h.not_ready {
                    let state = match (&not_ready.state, &not_ready.reason) {
                        (LoadState::Failed, Some(why)) => format!("failed: {}", printable(why)),
                        (LoadState::Failed, None) => "failed".to_owned(),
                        (LoadState::Compiling, _) => "compiling".to_owned(),
                    };
                    outln!("{:<20} {name} v{} {state}", "", not_ready.version);
                }
            }
        });
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus devices`: every host's devices and their state.
pub async fn devices(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let devices: Vec<DeviceRecord> = c.call::<endpoint::Devices>(&Empty {}).await?;
        print_json_or(c.json, &devices, |devices| print_devices(devices));
        Ok(EXIT_OK)
    })
    .await
}

fn print_devices(devices: &[DeviceRecord]) {
    if devices.is_empty() {
        outln!("no devices on any live host");
        return;
    }
    outln!(
        "{:<16} {:<16} {:<10} {:<16} {:<24} {:<8} {:<10} run",
        "host",
        "device",
        "vid:pid",
        "serial",
        "product",
        "state",
        "location"
    );
    for d in devices {
        let run = match (&d.run, d.queued) {
            (Some(run), 0) => run.clone(),
            (Some(run), n) => format!("{run} (+{n} queued)"),
            (None, 0) => "-".into(),
            (None, n) => format!("({n} queued)"),
        };
        // An unusable device says why where a run would be.
        let run = match &d.info.unusable {
            Some(why) if d.run.is_none() => printable(why),
            _ => run,
        };
        outln!(
            "{:<16} {:<16} {:<10} {:<16} {:<24} {:<8} {:<10} {run}",
            printable(&d.host),
            printable(&d.info.id),
            d.info.vid_pid(),
            printable(d.info.serial.as_deref().unwrap_or("-")),
            printable(d.info.product.as_deref().unwrap_or("-")),
            d.state.to_string(),
            printable(&d.info.location),
        );
    }
}
