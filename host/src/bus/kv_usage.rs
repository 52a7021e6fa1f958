//! [`KvUsage`]: how much each component's key-value space holds, as every daemon sees it, so
//! a write is checked against the component's quota (`kv-bytes`, `kv-keys`) without a round
//! trip.
//!
//! A daemon follows the guest bucket from its start ([`NatsKv::follow`](super::NatsKv::follow)):
//! the last entry of every key, then every change, in stream order. It also records its own writes as soon as the server acknowledges them, so a guest
//! writing in a loop sees its own usage grow at once; an entry's revision (its stream
//! sequence) keeps a write seen twice from counting twice, and a late old write from undoing a
//! newer one. Writes by other hosts arrive a moment later, so concurrent writers on several
//! hosts may pass a quota by what they write at the same instant.
//!
//! Memory: a hash, a size and a revision per key (about 40 bytes with the map's overhead), so
//! a million keys cost about 40 MB on every daemon.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::imports::kv::KvFootprint;

/// One key's entry as last seen: its size, and at which revision.
#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    revision: u64,
}

#[derive(Debug, Default)]
struct Space {
    bytes: u64,
    entries: HashMap<u64, Entry>,
}

impl Space {
    /// Applies what `key` holds as of `revision` (`None`: nothing), unless newer news is in.
    fn apply(&mut self, key: u64, size: Option<u64>, revision: u64) {
        if let Some(previous) = self.entries.get(&key) {
            if previous.revision > revision {
                return;
            }
            self.bytes -= previous.size.min(self.bytes);
        }
        match size {
            Some(size) => {
                self.bytes += size;
                self.entries.insert(key, Entry { size, revision });
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }
}

/// Every namespace's usage, as this daemon sees it.
#[derive(Debug)]
pub struct KvUsage {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
    /// Keys are counted by a hash keyed randomly per process: a guest cannot search offline
    /// for two keys that collide and so hide one's bytes from its quota.
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct State {
    spaces: HashMap<String, Space>,
    /// The last revision the watch brought: a write acknowledged at or before it is already
    /// counted (or overtaken).
    watched: u64,
}

impl Default for KvUsage {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: watch::channel(false).0,
            hasher: RandomState::new(),
        }
    }
}

impl KvUsage {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The usage of `namespace`, and of `key` in it.
    pub fn footprint(&self, namespace: &str, key: &str) -> KvFootprint {
        let state = self.lock();
        let Some(space) = state.spaces.get(namespace) else {
            return KvFootprint::default();
        };
        KvFootprint {
            bytes: space.bytes,
            keys: space.entries.len() as u64,
            key_bytes: space.entries.get(&self.hash(key)).map(|e| e.size),
        }
    }

    /// Records this host's write of a `value_len`-byte value under `key` of `namespace`,
    /// acknowledged at stream revision `revision`, so the next check sees it at once.
    pub fn record_write(&self, namespace: &str, key: &str, value_len: u64, revision: u64) {
        let mut state = self.lock();
        if revision <= state.watched {
            return;
        }
        state.spaces.entry(namespace.to_owned()).or_default().apply(
            self.hash(key),
            Some(key.len() as u64 + value_len),
            revision,
        );
    }

    /// Records what the watch brought: `key` of `namespace` holds `value_len` bytes (`None`:
    /// nothing) as of `revision`.
    pub(super) fn record_watched(
        &self,
        namespace: &str,
        key: &str,
        value_len: Option<u64>,
        revision: u64,
    ) {
        let mut state = self.lock();
        state.watched = state.watched.max(revision);
        state.spaces.entry(namespace.to_owned()).or_default().apply(
            self.hash(key),
            value_len.map(|v| key.len() as u64 + v),
            revision,
        );
    }

    /// Waits until the bucket's existing keys have all been counted, or `timeout` passed;
    /// whether they have. Before that, quotas see less than is there.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Forgets every count: the follow starts a new first pass.
    pub(super) fn restart(&self) {
        *self.lock() = State::default();
    }

    /// Every key stored when the follow started has been counted.
    pub(super) fn mark_ready(&self) {
        self.ready.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_counts_once_however_often_it_is_seen() {
        let usage = KvUsage::default();
        usage.record_write("billing", "total/acme", 4, 10);
        usage.record_watched("billing", "total/acme", Some(4), 10);
        let f = usage.footprint("billing", "total/acme");
        assert_eq!((f.bytes, f.keys, f.key_bytes), (14, 1, Some(14)));
        // A late, older write changes nothing; a newer one replaces the size.
        usage.record_watched("billing", "total/acme", Some(400), 9);
        usage.record_write("billing", "total/acme", 6, 11);
        assert_eq!(usage.footprint("billing", "x").bytes, 16);
        usage.record_watched("billing", "usage/1", Some(1), 12);
        assert_eq!(usage.footprint("billing", "x").keys, 2);
        assert_eq!(usage.footprint("other", "x"), KvFootprint::default());
    }

    #[test]
    fn a_write_the_watch_has_passed_is_not_counted_again() {
        let usage = KvUsage::default();
        // This host wrote k at 10; before it recorded that, the watch brought 10 and a delete
        // of k by another host at 11.
        usage.record_watched("ns", "k", Some(3), 10);
        usage.record_watched("ns", "k", None, 11);
        usage.record_write("ns", "k", 3, 10);
        assert_eq!(usage.footprint("ns", "k"), KvFootprint::default());
        // A newer write of this host counts before the watch brings it, and once after.
        usage.record_write("ns", "k", 3, 12);
        usage.record_watched("ns", "k", Some(3), 12);
        assert_eq!(usage.footprint("ns", "k").bytes, 4);
        assert_eq!(usage.footprint("ns", "k").keys, 1);
    }
}
