//! Host presence: which daemons are alive, in a KV bucket whose entries expire.
//!
//! Each daemon writes its [`HostInfo`] under its stable host id every heartbeat. The bucket's
//! `max_age` is three heartbeats, so a host that dies (or loses the bus) disappears on its
//! own within that time; a daemon that stops cleanly deletes its entry at once.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use futures::TryStreamExt as _;

use super::names;
use super::store::ensure_kv;
use super::{BusError, BusErrorKind};

/// How often a daemon refreshes its presence entry.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a host says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// The stable host id.
    pub id: String,
    /// The machine's host name.
    pub hostname: String,
    /// The daemon's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// When the daemon started (RFC 3339).
    pub started_at: String,
    /// When this entry was written (RFC 3339).
    pub seen_at: String,
    /// Components loaded on this host: name → manifest version.
    pub components: std::collections::BTreeMap<String, u64>,
    /// Listeners this host is pulling events for.
    pub listeners: Vec<String>,
    /// Components this host could not load (name → why); retried every few seconds.
    #[serde(default)]
    pub failed_components: std::collections::BTreeMap<String, String>,
}

/// The live-hosts bucket.
#[derive(Clone)]
pub struct HostRegistry {
    hosts: kv::Store,
}

impl HostRegistry {
    /// Creates the bucket if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let hosts = ensure_kv(
            js,
            kv::Config {
                bucket: names::HOSTS_BUCKET.to_owned(),
                description: "sandbus live hosts (entries expire without heartbeats)".into(),
                history: 1,
                max_age: HEARTBEAT * 3,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self { hosts })
    }

    /// Writes (or refreshes) a host's entry.
    pub async fn beat(&self, info: &HostInfo) -> Result<(), BusError> {
        let body = serde_json::to_vec(info)
            .map_err(|e| BusError::new(BusErrorKind::Corrupt, e.to_string()))?;
        self.hosts
            .put(info.id.as_str(), body.into())
            .await
            .map_err(|e| BusError::unavailable("write the host's presence", e))?;
        Ok(())
    }

    /// Removes a host's entry (clean shutdown).
    pub async fn leave(&self, id: &str) -> Result<(), BusError> {
        self.hosts
            .purge(id)
            .await
            .map_err(|e| BusError::unavailable("remove the host's presence", e))
    }

    /// The live hosts, by id.
    pub async fn list(&self) -> Result<Vec<HostInfo>, BusError> {
        let mut keys: Vec<String> = self
            .hosts
            .keys()
            .await
            .map_err(|e| BusError::unavailable("list the hosts", e))?
            .try_collect()
            .await
            .map_err(|e| BusError::unavailable("list the hosts", e))?;
        keys.sort();
        let mut hosts = Vec::new();
        for key in keys {
            // A read that fails fails the whole list: callers decide that hosts missing from
            // it are gone, so a partial list must never look like a complete one.
            let entry = self
                .hosts
                .entry(key.as_str())
                .await
                .map_err(|e| BusError::unavailable("read a host's presence", e))?;
            if let Some(entry) = entry
                && entry.operation == Operation::Put
                && let Ok(info) = serde_json::from_slice(&entry.value)
            {
                hosts.push(info);
            }
        }
        Ok(hosts)
    }
}
