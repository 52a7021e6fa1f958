//! The device inventory: every host's devices, in one KV bucket the whole cluster reads.
//!
//! Each daemon writes one entry per device it has (`<host>.<device>`) when it appears or its
//! state changes, and deletes it when the device goes. `sandbus devices` reads the bucket and
//! the live hosts together: a device whose host is no longer live shows as `offline`, and a
//! device with a live lease as `leased`.

use async_nats::jetstream;

use super::BusError;
use super::bucket::BucketSpec;
use super::json_bucket::{JsonBucket, Unreadable};
use super::names;
use crate::devices::DeviceInfo;

/// Whether a device can take a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Present and not leased.
    Free,
    /// A run holds it.
    Leased,
    /// Its host is not live (or the device is not answering).
    Offline,
    /// Present, but its host cannot use it; the device's `unusable` says why.
    Unusable,
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceState::Free => "free",
            DeviceState::Leased => "leased",
            DeviceState::Offline => "offline",
            DeviceState::Unusable => "unusable",
        })
    }
}

/// One device as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    /// The host that has it.
    pub host: String,
    /// Its identity on that host.
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// Free, leased or offline.
    pub state: DeviceState,
    /// The run holding it, when leased.
    pub run: Option<String>,
    /// Runs waiting for it on its host.
    #[serde(default)]
    pub queued: usize,
    /// `rusb` or `simulated`.
    pub backend: String,
    /// When this entry was written (RFC 3339).
    pub seen_at: String,
}

/// The inventory bucket.
#[derive(Clone)]
pub struct DeviceInventory {
    devices: JsonBucket<DeviceRecord>,
}

impl DeviceInventory {
    /// Creates the bucket if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::DEVICES_BUCKET,
            "sandbus device inventory, one entry per device per host",
            replicas,
        );
        Ok(Self {
            devices: JsonBucket::ensure(js, spec).await?,
        })
    }

    /// Writes a device's entry.
    pub async fn put(&self, record: &DeviceRecord) -> Result<(), BusError> {
        self.devices
            .put(&names::lease_key(&record.host, &record.info.id), record)
            .await
            .map_err(|e| e.into_bus_error("write the device inventory"))?;
        Ok(())
    }

    /// Removes a device's entry (it was detached).
    pub async fn remove(&self, host: &str, device: &str) -> Result<(), BusError> {
        self.devices
            .purge(&names::lease_key(host, device))
            .await
            .map_err(|e| e.into_bus_error("update the device inventory"))
    }

    /// Every device of every host, as last written (states are the writers' view; see
    /// [`DeviceInventory::list_live`]). A device whose entry cannot be read is left out.
    pub async fn list(&self) -> Result<Vec<DeviceRecord>, BusError> {
        let mut records = self
            .devices
            .values(Unreadable::Skip)
            .await
            .map_err(|e| e.into_bus_error("list the devices"))?;
        records.sort_by(|a, b| (&a.host, &a.info.id).cmp(&(&b.host, &b.info.id)));
        Ok(records)
    }

    /// Every device, with those of hosts not in `live_hosts` marked offline.
    pub async fn list_live(&self, live_hosts: &[String]) -> Result<Vec<DeviceRecord>, BusError> {
        let mut records = self.list().await?;
        for record in &mut records {
            if !live_hosts.contains(&record.host) {
                record.state = DeviceState::Offline;
                record.run = None;
            }
        }
        Ok(records)
    }
}
