//! The lab's inventory: which devices this host has now, kept in step with the backend and
//! written to the cluster's inventory, each arrival and departure announced.

use std::collections::HashMap;

use super::DeviceLab;
use crate::bus::{DeviceRecord, DeviceState};
use crate::daemon::host_events::{DeviceAttached, DeviceDetached, HostEvent};
use crate::devices::DeviceInfo;

impl DeviceLab {
    /// One scan: announce what came and went, refresh the inventory.
    pub(super) async fn scan(&self) {
        let backend = self.backend.clone();
        let found = match tokio::task::spawn_blocking(move || backend.scan()).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "device scan failed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "device scan panicked");
                return;
            }
        };
        let (attached, usability, detached) = {
            let mut state = self.state();
            let now: HashMap<String, DeviceInfo> =
                found.into_iter().map(|d| (d.id.clone(), d)).collect();
            // New or changed devices are announced; a device whose only change is whether
            // this host may use it (udev applying its permissions just after the kernel
            // announced it) is written to the inventory again, not announced again.
            let same_device = |a: &DeviceInfo, b: &DeviceInfo| {
                DeviceInfo {
                    unusable: None,
                    ..a.clone()
                } == DeviceInfo {
                    unusable: None,
                    ..b.clone()
                }
            };
            let attached: Vec<DeviceInfo> = now
                .values()
                .filter(|d| !state.present.get(&d.id).is_some_and(|p| same_device(p, d)))
                .cloned()
                .collect();
            let usability: Vec<DeviceInfo> = now
                .values()
                .filter(|d| {
                    state
                        .present
                        .get(&d.id)
                        .is_some_and(|p| same_device(p, d) && p.unusable != d.unusable)
                })
                .cloned()
                .collect();
            let detached: Vec<DeviceInfo> = state
                .present
                .values()
                .filter(|d| !now.contains_key(&d.id))
                .cloned()
                .collect();
            // A run whose device is gone ends now, even if its script ignores the errors.
            for run in state.active.values() {
                if run.running && detached.iter().any(|d| d.id == run.device) {
                    run.unplugged.cancel();
                }
            }
            state.present = now;
            (attached, usability, detached)
        };
        self.refresh_device_gauges();
        for device in usability {
            match &device.unusable {
                Some(why) => tracing::warn!(device = %device.id, reason = %why, "device unusable"),
                None => tracing::info!(device = %device.id, "device usable"),
            }
            self.publish_device(&device).await;
        }
        for device in attached {
            tracing::info!(device = %device.id, kind = %device.vid_pid(), "device attached");
            self.publish_device(&device).await;
            let host = self.host_id().to_owned();
            self.announce_device(&device.id.clone(), DeviceAttached { host, device })
                .await;
        }
        for device in detached {
            tracing::warn!(device = %device.id, "device detached");
            if let Err(e) = self.bus.inventory.remove(self.host_id(), &device.id).await {
                tracing::warn!(error = %e, "could not update the device inventory");
            }
            let host = self.host_id().to_owned();
            self.announce_device(&device.id.clone(), DeviceDetached { host, device })
                .await;
        }
    }

    /// Emits `event`, a `sandbus.device.*` event about `device`. Each attach or detach is its
    /// own fact, so its id names the moment.
    async fn announce_device<E: HostEvent>(&self, device: &str, event: E) {
        let id = format!(
            "{}/{}/{}/{}",
            E::TYPE,
            self.host_id(),
            device,
            crate::bus::now_rfc3339()
        );
        self.host_events
            .emit_or_log(&event, id, Some(device.to_owned()))
            .await;
    }

    /// Writes one device's inventory entry with its current state.
    pub(super) async fn publish_device(&self, device: &DeviceInfo) {
        let (run, queued) = {
            let state = self.state();
            let on_device = state.active.iter().filter(|(_, r)| r.device == device.id);
            let mut run = None;
            let mut queued = 0;
            for (id, r) in on_device {
                if r.running {
                    run = Some(id.clone());
                } else {
                    queued += 1;
                }
            }
            (run, queued)
        };
        self.refresh_device_gauges();
        let record = DeviceRecord {
            host: self.host_id().to_owned(),
            info: device.clone(),
            state: if run.is_some() {
                DeviceState::Leased
            } else if device.unusable.is_some() {
                DeviceState::Unusable
            } else {
                DeviceState::Free
            },
            run,
            queued,
            backend: self.backend.name().to_owned(),
            seen_at: crate::bus::now_rfc3339(),
        };
        if let Err(e) = self.bus.inventory.put(&record).await {
            tracing::warn!(error = %e, "could not write the device inventory");
        }
    }

    /// Devices by state, and leases held, for the metrics.
    fn refresh_device_gauges(&self) {
        let (present, leased) = {
            let state = self.state();
            let leased = state.active.values().filter(|r| r.running).count();
            (state.present.len(), leased)
        };
        let free = present.saturating_sub(leased);
        self.host
            .metrics
            .set("sandbus_devices", &[("state", "free")], free as f64);
        self.host
            .metrics
            .set("sandbus_devices", &[("state", "leased")], leased as f64);
        self.host
            .metrics
            .set("sandbus_leases_held", &[], leased as f64);
    }

    /// Rewrites the inventory entry of device `id`, if it is still present.
    pub(super) async fn publish_device_by_id(&self, id: &str) {
        let device = self.state().present.get(id).cloned();
        if let Some(device) = device {
            self.publish_device(&device).await;
        }
    }

    /// Drops the inventory entries of this host's devices that are not present now: they
    /// went away while the daemon was down.
    pub(super) async fn forget_devices_gone_while_down(&self) {
        let present: Vec<String> = self.state().present.keys().cloned().collect();
        match self.bus.inventory.list().await {
            Ok(records) => {
                for record in records {
                    if record.host == self.host_id()
                        && !present.contains(&record.info.id)
                        && let Err(e) = self
                            .bus
                            .inventory
                            .remove(self.host_id(), &record.info.id)
                            .await
                    {
                        tracing::warn!(error = %e, "could not update the device inventory");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the device inventory"),
        }
    }
}
