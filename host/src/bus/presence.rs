//! Host presence: which daemons are alive, in a KV bucket whose entries expire.
//!
//! Each daemon writes its [`HostInfo`] under its stable host id every heartbeat. The bucket's
//! `max_age` is three heartbeats, so a host that dies (or loses the bus) disappears on its
//! own within that time; a daemon that stops cleanly deletes its entry at once.

use std::time::Duration;

use async_nats::jetstream;

use super::BusError;
use super::bucket::BucketSpec;
use super::json_bucket::{JsonBucket, Unreadable};
use super::names;

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
    hosts: JsonBucket<HostInfo>,
}

impl HostRegistry {
    /// Creates the bucket if missing.
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::HOSTS_BUCKET,
            "sandbus live hosts (entries expire without heartbeats)",
            replicas,
        )
        .max_age(HEARTBEAT * 3);
        Ok(Self {
            hosts: JsonBucket::ensure(js, spec).await?,
        })
    }

    /// Writes (or refreshes) a host's entry.
    pub async fn beat(&self, info: &HostInfo) -> Result<(), BusError> {
        self.hosts
            .put(&info.id, info)
            .await
            .map_err(|e| e.into_bus_error("write the host's presence"))?;
        Ok(())
    }

    /// Removes a host's entry (clean shutdown).
    pub async fn leave(&self, id: &str) -> Result<(), BusError> {
        self.hosts
            .purge(id)
            .await
            .map_err(|e| e.into_bus_error("remove the host's presence"))
    }

    /// The live hosts, by id.
    pub async fn list(&self) -> Result<Vec<HostInfo>, BusError> {
        // A read that fails fails the whole list: callers decide that hosts missing from it
        // are gone, so a partial list must never look like a complete one.
        self.hosts
            .values(Unreadable::SkipUndecodable)
            .await
            .map_err(|e| e.into_bus_error("list the hosts"))
    }
}
