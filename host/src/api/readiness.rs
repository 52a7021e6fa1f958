//! Where a component version stands across the live hosts: ready, compiling, failed (and
//! why) or waiting on each. An upload only records a component; every host compiles it in
//! the background and reports in its presence entry ([`HostInfo::not_ready`]), so this is
//! read from `host.list`: `sandbus ls` shows it per component and `sandbus upload --wait`
//! waits on it.

use crate::bus::{ComponentManifest, HostComponentState, HostInfo};

/// One host that could not load a component, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostFailure {
    /// The host's id.
    pub host: String,
    /// Why it could not load it.
    pub reason: String,
}

/// A component version's state on every live host, by host id (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    /// Hosts where it (or a newer version) answers calls.
    pub ready: Vec<String>,
    /// Hosts compiling it.
    pub compiling: Vec<String>,
    /// Hosts that could not load it, with why.
    pub failed: Vec<HostFailure>,
    /// Hosts that have not reported it yet.
    pub waiting: Vec<String>,
}

impl Readiness {
    /// Where version `version` of `name` stands on each of `hosts`.
    pub fn of(name: &str, version: u64, hosts: &[HostInfo]) -> Self {
        let mut readiness = Self::default();
        let mut hosts: Vec<&HostInfo> = hosts.iter().collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        for host in hosts {
            let id = host.id.clone();
            match host.state_of(name, version) {
                HostComponentState::Ready => readiness.ready.push(id),
                HostComponentState::Compiling => readiness.compiling.push(id),
                HostComponentState::Failed(reason) => {
                    readiness.failed.push(HostFailure { host: id, reason });
                }
                HostComponentState::Waiting => readiness.waiting.push(id),
            }
        }
        readiness
    }

    /// Every live host runs it (and there is at least one).
    pub fn all_ready(&self) -> bool {
        !self.ready.is_empty()
            && self.compiling.is_empty()
            && self.failed.is_empty()
            && self.waiting.is_empty()
    }

    /// How many live hosts there are.
    pub fn hosts(&self) -> usize {
        self.ready.len() + self.compiling.len() + self.failed.len() + self.waiting.len()
    }

    /// One line for a table: `2/3 ready, 1 compiling`; failures say where and why after it
    /// ([`Self::failures_text`]).
    pub fn summary(&self) -> String {
        let mut text = format!("{}/{} ready", self.ready.len(), self.hosts());
        for (count, state) in [
            (self.compiling.len(), "compiling"),
            (self.failed.len(), "failed"),
            (self.waiting.len(), "waiting"),
        ] {
            if count > 0 {
                text.push_str(&format!(", {count} {state}"));
            }
        }
        text
    }

    /// `failed on HOST: REASON`, one per failed host.
    pub fn failures_text(&self) -> Vec<String> {
        self.failed
            .iter()
            .map(|f| format!("failed on {}: {}", f.host, f.reason))
            .collect()
    }
}

/// A manifest as `sandbus ls --json` lists it: the manifest's fields, and where it stands on
/// the live hosts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedComponent {
    /// The current manifest.
    #[serde(flatten)]
    pub manifest: ComponentManifest,
    /// Where its version stands on each live host.
    pub hosts: Readiness,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bus::{LoadState, NotReady};

    fn host(id: &str, ready: &[(&str, u64)], not_ready: &[(&str, NotReady)]) -> HostInfo {
        HostInfo {
            id: id.into(),
            hostname: String::new(),
            version: String::new(),
            pid: 1,
            started_at: String::new(),
            seen_at: String::new(),
            components: ready.iter().map(|(n, v)| ((*n).into(), *v)).collect(),
            listeners: Vec::new(),
            not_ready: not_ready
                .iter()
                .map(|(n, s)| ((*n).into(), s.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn compiling(version: u64) -> NotReady {
        NotReady {
            state: LoadState::Compiling,
            version,
            reason: None,
        }
    }

    #[test]
    fn a_host_still_running_the_old_version_while_compiling_the_new_one_counts_as_compiling() {
        let hosts = [
            host("a", &[("billing", 2)], &[]),
            host("b", &[("billing", 1)], &[("billing", compiling(2))]),
            host("c", &[], &[]),
        ];
        let readiness = Readiness::of("billing", 2, &hosts);
        assert_eq!(readiness.ready, ["a"]);
        assert_eq!(readiness.compiling, ["b"]);
        assert_eq!(readiness.waiting, ["c"]);
        assert_eq!(readiness.summary(), "1/3 ready, 1 compiling, 1 waiting");
        assert!(!readiness.all_ready());
    }

    #[test]
    fn a_failure_names_the_host_and_the_reason() {
        let failed = NotReady {
            state: LoadState::Failed,
            version: 3,
            reason: Some("over the compile budget".into()),
        };
        let hosts = [
            host("small", &[("big", 2)], &[("big", failed)]),
            host("roomy", &[("big", 3)], &[]),
        ];
        let readiness = Readiness::of("big", 3, &hosts);
        assert_eq!(readiness.summary(), "1/2 ready, 1 failed");
        assert_eq!(
            readiness.failures_text(),
            ["failed on small: over the compile budget"]
        );
    }

    #[test]
    fn an_older_failure_does_not_hide_a_newer_version_being_ready() {
        let failed = NotReady {
            state: LoadState::Failed,
            version: 1,
            reason: Some("gone".into()),
        };
        let hosts = [host("a", &[("x", 2)], &[("x", failed)])];
        let readiness = Readiness::of("x", 2, &hosts);
        assert!(readiness.all_ready(), "{readiness:?}");
    }

    #[test]
    fn no_live_host_is_not_all_ready() {
        let readiness = Readiness::of("x", 1, &[]);
        assert!(!readiness.all_ready());
        assert_eq!(readiness.summary(), "0/0 ready");
    }
}
