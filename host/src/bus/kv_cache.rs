//! [`KvCache`]: this daemon's copy of the guests' kv bucket, kept by following the bucket's
//! stream, so that a guest's reads cost no round trip to the server.
//!
//! Reads through the stream leader were most of the server's work for a stateful listener
//! (a `STREAM.MSG.GET` costs it about three times a write; the billing listener made a dozen
//! per event). The daemon follows the bucket anyway, for the quotas ([`super::KvUsage`]), so
//! the same follow now brings the values too.
//!
//! **What a cached read sees.** The copy is built from one ordered consumer: every key's last
//! entry, then every change in stream order. It answers only while it is *caught up*: it has
//! applied everything the stream held at some moment (a message came with nothing pending
//! behind it) and no message was skipped since. (The bucket keeps one revision per key, so a
//! write overwritten before the follow was sent it is gone; the follow jumps over it, and for
//! a moment the copy would hold that key's older value next to newer values of other keys.
//! A jump in the stream sequence marks the copy behind until the follow catches up again.)
//! While caught up the copy is the bucket exactly as it was at its *position*, a revision (its
//! own writes are not put in ahead of it). A read is served only once the position has reached
//! every revision this daemon has seen confirmed: its own writes' acknowledgements and
//! whatever it read from the server ([`NatsKv`](super::NatsKv) keeps that as its *seen*
//! revision). Hence:
//! - a guest reads its own writes, and any write this daemon saw, at once;
//! - two reads are never out of order: a read after one that returned a value at revision
//!   `r` sees every write before `r` (the billing ledger's proof relies on exactly this);
//! - a write another host made a moment ago may not be seen yet (the follow brings it within
//!   milliseconds). A compare-and-swap (or set-if-absent, or delete) whose expected value
//!   differs from what the copy holds returns `false` as of the copy's moment; one that
//!   matches is checked by the server against the key's revision, so a copy that is behind
//!   only makes it fail and be tried again, never overwrite a newer value.
//!
//! A read the copy cannot answer goes to the server: before the first full pass, while the
//! follow is behind (for longer than [`CACHE_PATIENCE`], or after a skipped message), or for a
//! key whose value was not kept because the copy's memory budget ([`KvCache::new`]) was
//! spent.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

/// How long a read waits for the copy to reach the revisions this daemon has seen before it
/// asks the server instead.
/// The follow usually trails by well under a millisecond; a wait this long that still times
/// out means it is behind, and later reads skip waiting until it has caught up with that
/// revision.
pub const CACHE_PATIENCE: Duration = Duration::from_millis(50);

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
    /// The copy is caught up (see the module docs): it answers reads.
    synced: bool,
    /// The last revision applied, to notice a skipped one.
    last: u64,
    /// A wait for this revision timed out: until the position reaches it, reads do not wait.
    behind_until: u64,
}

impl Default for CopyState {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            complete: true,
            synced: false,
            last: 0,
            behind_until: 0,
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
    /// follow's order. Once caught up, a revision that is not the one after the last marks the
    /// copy behind (messages were skipped) until [`KvCache::caught_up`].
    pub fn apply(&self, key: &str, value: Option<Bytes>, revision: u64) {
        let mut state = self.lock();
        if state.synced && revision != state.last + 1 {
            state.synced = false;
        }
        state.last = revision;
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

    /// The follow has applied everything the stream holds (a message came with nothing
    /// pending behind it, or there was nothing to follow): the copy answers reads again.
    pub fn caught_up(&self) {
        self.lock().synced = true;
    }

    /// Whether the copy keeps any value (a budget of 0 keeps none).
    pub fn keeps_values(&self) -> bool {
        self.budget > 0
    }

    /// The last revision applied.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Reads `key` once the copy has reached revision `at_least`, waiting for it at most
    /// `patience`; [`Lookup::Miss`] when the copy cannot answer in time.
    pub async fn lookup(&self, key: &str, at_least: u64, patience: Duration) -> Lookup {
        if !self.keeps_values() {
            return Lookup::Miss;
        }
        {
            let state = self.lock();
            if !state.synced {
                return Lookup::Miss;
            }
            let position = self.position();
            if position < at_least && position < state.behind_until {
                // Known to be behind: do not wait again.
                return Lookup::Miss;
            }
        }
        if self.position() < at_least {
            let mut position = self.position.subscribe();
            let reached = tokio::time::timeout(patience, position.wait_for(|p| *p >= at_least));
            if !matches!(reached.await, Ok(Ok(_))) {
                let mut state = self.lock();
                state.behind_until = state.behind_until.max(at_least);
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

    /// A copy that followed a first pass bringing `entries` and caught up.
    fn followed(budget: u64, entries: &[(&str, Option<&str>, u64)]) -> KvCache {
        let cache = KvCache::new(budget);
        for (key, value, revision) in entries {
            cache.apply(key, value.map(|v| Bytes::from(v.to_owned())), *revision);
        }
        cache.caught_up();
        cache
    }

    #[tokio::test]
    async fn nothing_is_answered_before_the_first_pass_is_over() {
        let cache = KvCache::new(1 << 20);
        cache.apply("billing.total/acme", Some("5".into()), 3);
        assert_eq!(
            cache.lookup("billing.total/acme", 0, NOW).await,
            Lookup::Miss
        );
        cache.caught_up();
        assert_eq!(
            cache.lookup("billing.total/acme", 0, NOW).await,
            found("5", 3)
        );
    }

    #[tokio::test]
    async fn a_key_never_written_is_absent_at_revision_zero_and_a_deleted_one_at_its_marker() {
        let cache = followed(1 << 20, &[("ns.gone", None, 9)]);
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
    async fn a_skipped_revision_stops_answers_until_the_follow_catches_up() {
        // K was written at 11 and overwritten at 13 before the follow was sent 11: the follow
        // goes 10, 12, 13. At 12 the copy would hold K's value from before 11 beside F.
        let cache = followed(1 << 20, &[("ns.k", Some("v1"), 10)]);
        cache.apply("ns.f", Some("done".into()), 12);
        assert_eq!(cache.lookup("ns.f", 0, NOW).await, Lookup::Miss, "behind");
        assert_eq!(cache.lookup("ns.k", 0, NOW).await, Lookup::Miss, "behind");
        cache.apply("ns.k", Some("v3".into()), 13);
        assert_eq!(
            cache.lookup("ns.k", 0, NOW).await,
            Lookup::Miss,
            "still behind"
        );
        cache.caught_up();
        assert_eq!(cache.lookup("ns.k", 0, NOW).await, found("v3", 13));
        // The next revision in order keeps it answering.
        cache.apply("ns.k", Some("v4".into()), 14);
        assert_eq!(cache.lookup("ns.k", 0, NOW).await, found("v4", 14));
    }

    #[tokio::test]
    async fn a_read_waits_for_the_revisions_this_daemon_has_seen() {
        let cache = std::sync::Arc::new(followed(1 << 20, &[("ns.counted", Some("1"), 10)]));
        let follow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                cache.apply("ns.other", Some("x".into()), 11);
                cache.apply("ns.shard", Some("7".into()), 12);
            })
        };
        // This daemon saw revision 12 confirmed (its own write): the read must not answer
        // from the copy at 10, where the write is not yet.
        assert_eq!(
            cache.lookup("ns.shard", 12, Duration::from_secs(5)).await,
            found("7", 12)
        );
        follow.await.unwrap();
    }

    #[tokio::test]
    async fn a_wait_that_timed_out_is_not_waited_again_until_the_copy_gets_there() {
        let cache = followed(1 << 20, &[("ns.a", Some("1"), 10)]);
        let patience = Duration::from_millis(30);
        assert_eq!(cache.lookup("ns.a", 12, patience).await, Lookup::Miss);
        let started = std::time::Instant::now();
        assert_eq!(cache.lookup("ns.a", 11, patience).await, Lookup::Miss);
        assert!(
            started.elapsed() < patience,
            "known to be behind: no second wait"
        );
        cache.apply("ns.a", Some("2".into()), 11);
        cache.apply("ns.a", Some("3".into()), 12);
        assert_eq!(cache.lookup("ns.a", 12, patience).await, found("3", 12));
    }

    #[tokio::test]
    async fn past_the_budget_new_keys_are_left_to_the_server() {
        // Room for one 9-byte entry.
        let cache = followed(
            16,
            &[("ns.a", Some("12345"), 1), ("ns.b", Some("12345"), 2)],
        );
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
        let cache = followed(1 << 20, &[("ns.a", Some("1"), 5)]);
        cache.restart();
        assert_eq!(cache.lookup("ns.a", 0, NOW).await, Lookup::Miss);
        assert_eq!((cache.position(), cache.bytes()), (0, 0));
    }

    #[tokio::test]
    async fn no_budget_answers_nothing() {
        let cache = followed(0, &[("ns.a", Some("1"), 5)]);
        assert!(!cache.keeps_values());
        assert_eq!(cache.lookup("ns.a", 0, NOW).await, Lookup::Miss);
        assert_eq!(cache.lookup("ns.never", 0, NOW).await, Lookup::Miss);
    }
}
