//! A daemon's own life: `sandbus.host.started` and `sandbus.host.stopped`.

use serde::{Deserialize, Serialize};

use crate::HostEvent;

/// `sandbus.host.started`: a daemon started. Its id names the daemon's start time, so every
/// run of a daemon is its own fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStarted {
    /// The daemon's host id.
    pub host: String,
    /// When this run of the daemon started (RFC 3339).
    pub started_at: String,
    /// The daemon's version (`sandbus` crate version).
    pub version: String,
}

impl HostEvent for HostStarted {
    const TYPE: &'static str = "sandbus.host.started";
}

/// `sandbus.host.stopped`: a daemon stopped cleanly (a daemon that crashed emits nothing; its
/// presence entry expires instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStopped {
    /// The daemon's host id.
    pub host: String,
    /// When this run of the daemon started (RFC 3339): pairs the stop with its start.
    pub started_at: String,
    /// The daemon's version (`sandbus` crate version).
    pub version: String,
}

impl HostEvent for HostStopped {
    const TYPE: &'static str = "sandbus.host.stopped";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    #[test]
    fn host_started_and_stopped_carry_the_host_its_start_and_version() {
        let (host, started_at, version) = ("h1", "2026-11-22T10:00:00.123Z", "0.1.0");
        let before = json!({ "host": host, "started_at": started_at, "version": version });
        assert_same_json(
            &HostStarted {
                host: host.into(),
                started_at: started_at.into(),
                version: version.into(),
            },
            before.clone(),
        );
        assert_same_json(
            &HostStopped {
                host: host.into(),
                started_at: started_at.into(),
                version: version.into(),
            },
            before,
        );
    }
}
