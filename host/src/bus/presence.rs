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
    /// Components ready on this host (compiled, answering calls): name → manifest version.
    pub components: std::collections::BTreeMap<String, u64>,
    /// Listeners this host is pulling events for.
    pub listeners: Vec<String>,
    /// Component versions this host has seen but cannot run yet: name → compiling, or failed
    /// and why (retried every few seconds). While a new version compiles, the one before
    /// stays under `components` and keeps answering. Only what is not ready is listed, so
    /// the entry stays small however many components a host runs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub not_ready: std::collections::BTreeMap<String, NotReady>,
}

impl HostInfo {
    /// Where version `version` of component `name` stands on this host. A newer version
    /// ready or failed here counts as that version's state (it superseded this one).
    pub fn state_of(&self, name: &str, version: u64) -> HostComponentState {
        if let Some(not_ready) = self.not_ready.get(name)
            && not_ready.version >= version
        {
            return match not_ready.state {
                LoadState::Compiling => HostComponentState::Compiling,
                LoadState::Failed => HostComponentState::Failed(
                    not_ready
                        .reason
                        .clone()
                        .unwrap_or_else(|| "no reason given".into()),
                ),
            };
        }
        match self.components.get(name) {
            Some(&ready) if ready >= version => HostComponentState::Ready,
            _ => HostComponentState::Waiting,
        }
    }
}

/// A component version a host has seen but cannot run yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotReady {
    /// Compiling or failed.
    pub state: LoadState,
    /// The manifest version concerned.
    pub version: u64,
    /// Why it failed (for `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a component version is not ready on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadState {
    /// Being fetched and compiled (or waiting for its turn to compile).
    Compiling,
    /// It could not be loaded; the reason says why. Retried every few seconds.
    Failed,
}

/// Where one component version stands on one host, as [`HostInfo::state_of`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostComponentState {
    /// It (or a newer version) answers calls here.
    Ready,
    /// It is being compiled here.
    Compiling,
    /// It could not be loaded here, for this reason.
    Failed(String),
    /// The host has not reported it yet (it has not seen the manifest, is busy loading
    /// others, or runs an older sandbus that does not report compiles).
    Waiting,
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
