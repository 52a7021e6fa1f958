//! [`KvCache`]: this daemon's copy of the guests' kv bucket, kept by following the bucket's
//! stream, so that a guest's reads cost no round trip to the server.
//!
//! Reads through the stream leader were most of the server's work for a stateful listener
//! (a `STREAM.MSG.GET` costs it about three times a write; the billing listener made a dozen
//! per event). The daemon follows the bucket anyway, for the quotas ([`super::KvUsage`]), so
//! the same follow now brings the values too.
//!
//! **What a cached read sees.** The copy is built from one ordered consumer: every key's last
//! entry, then every change in stream order. So at any moment it is the bucket exactly as it
//! was at some revision, its *position* (a prefix of the stream; own writes are not put in
//! ahead of it). A read is served only once the position has reached every revision this
//! daemon has seen confirmed: its own writes' acknowledgements and whatever it read from the
//! server ([`NatsKv`](super::NatsKv) keeps that as its *seen* revision). Hence:
//! - a guest reads its own writes, and any write this daemon saw, at once;
//! - two reads are never out of order: a read after one that returned a value at revision
//!   `r` sees every write before `r` (the billing ledger's proof relies on exactly this);
//! - a write another host made a moment ago may not be seen yet (the follow brings it within
//!   milliseconds); every conditional write (`compare-and-swap`, `set-if-absent`, `delete`)
//!   is still checked by the server against the key's revision, so a stale read can only make
//!   one fail and be tried again, never overwrite a newer value.
//!
//! A read the copy cannot answer goes to the server: before the first full pass, while the
//! follow is behind for longer than [`CACHE_PATIENCE`], or for a key whose value was not kept
//! because the copy's memory budget ([`KvCache::new`]) was spent.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

/// How long a read waits for the copy to reach the revisions this daemon has seen before it
/// asks the server instead.
pub const CACHE_PATIENCE: Duration = Duration::from_millis(250);

/// What the copy knows about one key.
#[derive(Debug, Clone)]
enum Cached {
    /// Its value, written at `revision`.
    Value(Bytes, u64),
    /// Deleted or purged at this revision.
    Absent(u64),
}

#[derive(Debug)]
struct CopyState {
    entries: HashMap<String, Cached>,
    /// Bytes held by `entries` (keys and values).
    bytes: u64,
    /// Every key the stream has is in `entries` (none was left out for the budget), so a key
    /// that is not there has never been written.
    complete: bool,
    /// The first pass (every key's last entry) is done: from now on the copy is a prefix of
    /// the stream.
    synced: bool,
}

impl Default for CopyState {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            complete: true,
            synced: false,
        }
    }
}

/// What a cached read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The key holds `value`, written at `revision`.
    Found {
        /// The value.
        value: Bytes,
        /// The revision it was written at.
        revision: u64,
    },
    /// The key holds nothing; `revision` is its delete marker's (0: never written), which a
    /// write conditional on its absence expects.
    Absent {
        /// The revision a write expecting absence must name.
        revision: u64,
    },
    /// The copy cannot answer: ask the server.
    Miss,
}

/// This daemon's copy of the guests' kv bucket (see the module docs).
#[derive(Debug)]
pub struct KvCache {
    state: Mutex<CopyState>,
    /// The last revision applied: the copy is the bucket as of this revision once synced.
    position: watch::Sender<u64>,
    /// Most bytes of keys and values kept; past it, new keys are left to the server.
    budget: u64,
}

impl KvCache {
    /// An empty copy that keeps at most `budget` bytes of keys and values (0: keep nothing,
    /// every read goes to the server).
    pub fn new(budget: u64) -> Self {
        Self {
            state: Mutex::new(CopyState::default()),
            position: watch::channel(0).0,
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything: the follow starts a new first pass.
    pub fn restart(&self) {
        *self.lock() = CopyState::default();
        self.position.send_replace(0);
    }

    /// Applies what the follow brought: `key` (the bucket key, `<namespace>.<key>`) holds
    /// `value` (`None`: deleted or purged) as of `revision`. Entries must come in the
    /// follow's order.
    pub fn apply(&self, key: &str, value: Option<Bytes>, revision: u64) {
        let mut state = self.lock();
        let size = |cached: &Cached| match cached {
            Cached::Value(v, _) => (key.len() + v.len()) as u64,
            Cached::Absent(_) => key.len() as u64,
        };
        if let Some(old) = state.entries.remove(key) {
            state.bytes -= size(&old).min(state.bytes);
        }
        let new = match value {
            Some(value) => Cached::Value(value, revision),
            None => Cached::Absent(revision),
        };
        let grown = state.bytes + size(&new);
        if grown > self.budget {
            // Not kept: the key is left to the server from now on.
            state.complete = false;
        } else {
            state.bytes = grown;
            state.entries.insert(key.to_owned(), new);
        }
        drop(state);
        self.position.send_modify(|p| *p = (*p).max(revision));
    }

    /// The first pass is over: the copy answers reads from now on.
    pub fn mark_synced(&self) {
        self.lock().synced = true;
    }

    /// The last revision applied.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Reads `key` once the copy has reached revision `at_least`, waiting for it at most
    /// `patience`; [`Lookup::Miss`] when the copy cannot answer in time.
    pub async fn lookup(&self, key: &str, at_least: u64, patience: Duration) -> Lookup {
        if !self.lock().synced {
            return Lookup::Miss;
        }
        if self.position() < at_least {
            let mut position = self.position.subscribe();
            let reached = tokio::time::timeout(patience, position.wait_for(|p| *p >= at_least));
            if !matches!(reached.await, Ok(Ok(_))) {
                return Lookup::Miss;
            }
        }
        let state = self.lock();
        if !state.synced {
            return Lookup::Miss;
        }
        match state.entries.get(key) {
            Some(Cached::Value(value, revision)) => Lookup::Found {
                value: value.clone(),
                revision: *revision,
            },
            Some(Cached::Absent(revision)) => Lookup::Absent {
                revision: *revision,
            },
            None if state.complete => Lookup::Absent { revision: 0 },
            None => Lookup::Miss,
        }
    }

    /// Bytes of keys and values kept.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;

    fn found(value: &str, revision: u64) -> Lookup {
        Lookup::Found {
            value: Bytes::from(value.to_owned()),
            revision,
        }
    }

    #[tokio::test]
    async fn nothing_is_answered_before_the_first_pass_is_over() {
        let cache = KvCache::new(1 << 20);
        cache.apply("billing.total/acme", Some("5".into()), 3);
        assert_eq!(
            cache.lookup("billing.total/acme", 0, NOW).await,
            Lookup::Miss
        );
        cache.mark_synced();
        assert_eq!(
            cache.lookup("billing.total/acme", 0, NOW).await,
            found("5", 3)
        );
    }

    #[tokio::test]
    async fn a_key_never_written_is_absent_at_revision_zero_and_a_deleted_one_at_its_marker() {
        let cache = KvCache::new(1 << 20);
        cache.mark_synced();
        cache.apply("ns.gone", Some("x".into()), 4);
        cache.apply("ns.gone", None, 9);
        assert_eq!(
            cache.lookup("ns.never", 0, NOW).await,
            Lookup::Absent { revision: 0 }
        );
        assert_eq!(
            cache.lookup("ns.gone", 0, NOW).await,
            Lookup::Absent { revision: 9 }
        );
    }

    #[tokio::test]
    async fn a_read_waits_for_the_revisions_this_daemon_has_seen() {
        let cache = std::sync::Arc::new(KvCache::new(1 << 20));
        cache.mark_synced();
        cache.apply("ns.counted", Some("1".into()), 10);
        // This daemon saw revision 12 confirmed (its own write): a read must not answer from
        // the copy at 10, where the write is not yet.
        assert_eq!(
            cache
                .lookup("ns.shard", 12, Duration::from_millis(20))
                .await,
            Lookup::Miss,
            "not reached in time: ask the server"
        );
        let follow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                cache.apply("ns.shard", Some("7".into()), 12);
            })
        };
        assert_eq!(
            cache.lookup("ns.shard", 12, Duration::from_secs(5)).await,
            found("7", 12)
        );
        follow.await.unwrap();
    }

    #[tokio::test]
    async fn past_the_budget_new_keys_are_left_to_the_server() {
        // Room for one 10-byte entry.
        let cache = KvCache::new(16);
        cache.mark_synced();
        cache.apply("ns.a", Some("12345".into()), 1);
        cache.apply("ns.b", Some("12345".into()), 2);
        assert_eq!(cache.lookup("ns.a", 0, NOW).await, found("12345", 1));
        assert_eq!(cache.lookup("ns.b", 0, NOW).await, Lookup::Miss, "not kept");
        assert_eq!(
            cache.lookup("ns.never", 0, NOW).await,
            Lookup::Miss,
            "absent or only not kept: the copy cannot tell"
        );
        assert_eq!(cache.bytes(), 9);
        assert_eq!(cache.position(), 2);
    }

    #[tokio::test]
    async fn a_restart_forgets_everything_until_the_next_first_pass() {
        let cache = KvCache::new(1 << 20);
        cache.mark_synced();
        cache.apply("ns.a", Some("1".into()), 5);
        cache.restart();
        assert_eq!(cache.lookup("ns.a", 0, NOW).await, Lookup::Miss);
        assert_eq!((cache.position(), cache.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn no_budget_keeps_nothing() {
        let cache = KvCache::new(0);
        cache.mark_synced();
        cache.apply("ns.a", Some("1".into()), 5);
        assert_eq!(cache.lookup("ns.a", 0, NOW).await, Lookup::Miss);
        assert_eq!(cache.position(), 5);
    }
}
