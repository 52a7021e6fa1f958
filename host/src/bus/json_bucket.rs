//! [`JsonBucket`]: a KV bucket whose every value is one serde type, stored as JSON.
//!
//! The cluster's shared records (component manifests, subscriptions, listener status, live
//! hosts, devices, leases, runs, extension points) each live in a KV bucket, one JSON record a
//! key. This is the one place that reads, writes, lists and watches them: it encodes and
//! decodes the records, checks keys before they reach the server, tells a lost
//! compare-and-set race from a failure ([`is_lost_race`](super::cas::is_lost_race)) and says what failed in a
//! [`BucketError`] whose [`BucketErrorKind`] the caller matches on. The stores built on it
//! keep only their own rules: their key layout, what a record means, and when a write is
//! conditional.
//!
//! A value this version cannot decode (written by a newer one, or damaged) is an error of
//! kind [`BucketErrorKind::Undecodable`] on a read, is left out or fails a listing as the
//! caller asks ([`Unreadable`]), and is logged and skipped by a [`watch`](JsonBucket::watch),
//! so that it can never hold up every change after it.

use std::error::Error as StdError;
use std::marker::PhantomData;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::BusError;
use super::bucket::{BucketSpec, ensure_bucket, open_bucket};
pub(crate) use super::bucket_error::{BucketError, BucketErrorKind};

/// Whether the bucket takes `key`: not empty, neither starting nor ending with a dot, and only
/// letters, digits and `-/_=.` (what the server and async-nats accept).
pub(crate) fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
}

/// A value and the revision it was read at: what a conditional write
/// ([`JsonBucket::update`], [`JsonBucket::delete_at`]) bases itself on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned<T> {
    /// The value.
    pub(crate) value: T,
    /// The revision of the key it was read at.
    pub(crate) revision: u64,
}

/// A key as [`JsonBucket::read`] found it.
#[derive(Debug)]
pub(crate) struct Current<T> {
    /// The revision of the key's last change (a put, or a delete that left a marker); 0 when
    /// the key holds nothing at all. An [`update`](JsonBucket::update) on it succeeds only if
    /// nothing changed the key since.
    pub(crate) revision: u64,
    /// Its value: `None` when absent or deleted, an error of kind
    /// [`BucketErrorKind::Undecodable`] when what is stored is not a record of this type.
    pub(crate) value: Result<Option<T>, BucketError>,
}

/// A change seen by [`JsonBucket::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change<T> {
    /// `key` now holds `value` (new or changed).
    Put {
        /// The key.
        key: String,
        /// What it holds.
        value: T,
    },
    /// `key` was deleted or purged.
    Removed {
        /// The key.
        key: String,
    },
}

/// One entry seen by [`JsonBucket::watch_with_progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen<T> {
    /// What changed; `None` for an entry this version cannot decode (logged).
    pub(crate) change: Option<Change<T>>,
    /// No entry was pending after this one when it was sent: the watch has caught up.
    pub(crate) caught_up: bool,
}

/// What a listing ([`JsonBucket::values`]) does with a key it cannot read or decode: the
/// stores differ, by what their callers conclude from a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// A failed read or an undecodable value fails the whole listing.
    Fails,
    /// An undecodable value is left out; a failed read fails the listing (a caller that
    /// takes what is missing from the list as gone must never get a partial list).
    SkipUndecodable,
    /// Whatever cannot be read or decoded is left out.
    Skip,
}

impl Unreadable {
    /// What the listing keeps of one key's read: its value, nothing, or the error that fails
    /// the listing.
    fn keep<T>(self, read: Result<Option<T>, BucketError>) -> Result<Option<T>, BucketError> {
        match (self, read) {
            (_, Ok(value)) => Ok(value),
            (Unreadable::Skip, Err(_)) => Ok(None),
            (Unreadable::SkipUndecodable, Err(e)) if e.kind() == BucketErrorKind::Undecodable => {
                Ok(None)
            }
            (_, Err(e)) => Err(e),
        }
    }
}

/// A KV bucket of `T` records, JSON-encoded, one per key; cheap to clone (clones share the
/// connection).
pub(crate) struct JsonBucket<T> {
    store: kv::Store,
    records: PhantomData<fn() -> T>,
}

impl<T> Clone for JsonBucket<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            records: PhantomData,
        }
    }
}

impl<T> JsonBucket<T> {
    /// The same bucket, holding records of `U`: for a bucket whose keys hold two kinds of
    /// record, told apart by their keys.
    pub(crate) fn records_of<U>(&self) -> JsonBucket<U> {
        JsonBucket {
            store: self.store.clone(),
            records: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> JsonBucket<T> {
    /// Opens the bucket, creating it as `spec` says if missing (daemons do this); it reads
    /// through its stream leader ([`ensure_bucket`]). Opening fails with a [`BusError`]
    /// already worded for a person: a store only passes it on.
    pub(crate) async fn ensure(
        js: &jetstream::Context,
        spec: BucketSpec,
    ) -> Result<Self, BusError> {
        Ok(Self::over(ensure_bucket(js, spec).await?))
    }

    /// Opens the bucket `name` a daemon created (clients do this);
    /// [`BusErrorKind::NotSetUp`](super::BusErrorKind::NotSetUp) naming `what` if there is
    /// none ([`open_bucket`]).
    pub(crate) async fn open(
        js: &jetstream::Context,
        name: &str,
        what: &str,
    ) -> Result<Self, BusError> {
        Ok(Self::over(open_bucket(js, name, what).await?))
    }

    fn over(store: kv::Store) -> Self {
        Self {
            store,
            records: PhantomData,
        }
    }

    /// The value of `key` and the revision it was read at; `None` when absent or deleted.
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<Versioned<T>>, BucketError> {
        let current = self.read(key).await?;
        Ok(current.value?.map(|value| Versioned {
            value,
            revision: current.revision,
        }))
    }

    /// The value of `key`; `None` when absent or deleted.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<T>, BucketError> {
        self.read(key).await?.value
    }

    /// `key` as it is now: its revision even when it holds no value (or one that does not
    /// decode), for a write conditional on nothing having changed since.
    pub(crate) async fn read(&self, key: &str) -> Result<Current<T>, BucketError> {
        self.check(key)?;
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| self.failed(key, e))?;
        Ok(match entry {
            None => Current {
                revision: 0,
                value: Ok(None),
            },
            Some(entry) => Current {
                revision: entry.revision,
                value: decode_entry(self.name(), key, entry.operation, &entry.value),
            },
        })
    }

    /// Writes `value` under `key`, whatever it held; the new revision.
    pub(crate) async fn put(&self, key: &str, value: &T) -> Result<u64, BucketError> {
        let bytes = self.encode(key, value)?;
        self.store
            .put(key, bytes)
            .await
            .map_err(|e| self.failed(key, e))
    }

    /// Writes `value` under `key` only if the key holds nothing (absent or deleted); the new
    /// revision. [`BucketErrorKind::LostRace`] when it holds a value.
    pub(crate) async fn create(&self, key: &str, value: &T) -> Result<u64, BucketError> {
        let bytes = self.encode(key, value)?;
        self.store
            .create(key, bytes)
            .await
            .map_err(|e| self.failed(key, e))
    }

    /// Writes `value` under `key` only if the key's last change is still `revision` (0: the
    /// key holds nothing at all); the new revision. [`BucketErrorKind::LostRace`] when
    /// someone changed it since.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, BucketError> {
        let bytes = self.encode(key, value)?;
        self.store
            .update(key, bytes, revision)
            .await
            .map_err(|e| self.failed(key, e))
    }

    /// Deletes `key`, leaving a delete marker (its history stays, up to the bucket's bound).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), BucketError> {
        self.check(key)?;
        self.store
            .delete(key)
            .await
            .map_err(|e| self.failed(key, e))
    }

    /// Deletes `key` only if its last change is still `revision`, leaving a delete marker.
    /// [`BucketErrorKind::LostRace`] when someone changed it since.
    pub(crate) async fn delete_at(&self, key: &str, revision: u64) -> Result<(), BucketError> {
        self.check(key)?;
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| self.failed(key, e))
    }

    /// Purges `key`: every revision of it goes, leaving only a purge marker.
    pub(crate) async fn purge(&self, key: &str) -> Result<(), BucketError> {
        self.check(key)?;
        self.store.purge(key).await.map_err(|e| self.failed(key, e))
    }

    /// Every key that holds a value, sorted.
    pub(crate) async fn keys(&self) -> Result<Vec<String>, BucketError> {
        let mut keys: Vec<String> = self
            .store
            .keys()
            .await
            .map_err(|e| self.failed("", e))?
            .try_collect()
            .await
            .map_err(|e| self.failed("", e))?;
        keys.sort();
        Ok(keys)
    }

    /// The value of every key, in key order; `unreadable` says what a key that cannot be
    /// read or decoded does to the listing.
    pub(crate) async fn values(&self, unreadable: Unreadable) -> Result<Vec<T>, BucketError> {
        self.values_under("", unreadable).await
    }

    /// The value of every key that starts with `prefix`, in key order; `unreadable` as for
    /// [`values`](Self::values).
    pub(crate) async fn values_under(
        &self,
        prefix: &str,
        unreadable: Unreadable,
    ) -> Result<Vec<T>, BucketError> {
        let mut values = Vec::new();
        for key in self.keys().await? {
            if !key.starts_with(prefix) {
                continue;
            }
            let read = match self.read(&key).await {
                Ok(current) => current.value,
                Err(e) => Err(e),
            };
            values.extend(unreadable.keep(read)?);
        }
        Ok(values)
    }

    /// Every value `key` still has in the bucket's history, oldest first. Deletes are not
    /// values, and a value this version cannot decode is left out.
    ///
    /// Read one stored message at a time (the history is bounded by the bucket's), not with
    /// the client's history reader: that leaves an ordered consumer on the bucket's stream
    /// for 30 s, and a stream holds 1,000 consumers by default on nats-server 2.15, so a
    /// thousand uploads in half a minute refused the next one.
    pub(crate) async fn history(&self, key: &str) -> Result<Vec<T>, BucketError> {
        self.check(key)?;
        let subject = format!("{}{key}", self.store.prefix);
        let stream = &self.store.stream;
        let mut values = Vec::new();
        let mut next = 1;
        loop {
            // From the stream's leader, not a direct get any replica may answer: a version
            // number is derived from this history right after a write.
            let got = stream
                .raw_message_builder()
                .next_by_subject(subject.clone())
                .sequence(next)
                .send()
                .await;
            let message = match got {
                Ok(message) => message,
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    break;
                }
                Err(e) => return Err(self.failed(key, e)),
            };
            next = message.sequence + 1;
            let operation = match message.headers.get("KV-Operation").map(|v| v.as_str()) {
                Some("DEL") => kv::Operation::Delete,
                Some("PURGE") => kv::Operation::Purge,
                _ => kv::Operation::Put,
            };
            if let Ok(Some(value)) = decode_entry(self.name(), key, operation, &message.payload) {
                values.push(value);
            }
        }
        Ok(values)
    }

    /// The current value of every key, then every change as it happens. The stream ends (or
    /// yields an error) if the watch breaks; watch again (a change is idempotent to apply).
    /// A value this version cannot decode is logged and skipped.
    pub(crate) async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<Change<T>, BucketError>> + use<T>, BucketError> {
        let watch = self.watch_with_progress().await?;
        Ok(watch.filter_map(|item| {
            std::future::ready(match item {
                Ok(seen) => seen.change.map(Ok),
                Err(e) => Some(Err(e)),
            })
        }))
    }

    /// [`JsonBucket::watch`], saying with each entry whether the watch has caught up with
    /// the bucket (no entry is pending after it), so a watcher can tell when it has seen
    /// every value that was there when it began. An entry this version cannot decode is
    /// yielded without a change (it may be the one that catches up); so is the catching up
    /// of a bucket that was empty when the watch began.
    pub(crate) async fn watch_with_progress(
        &self,
    ) -> Result<impl Stream<Item = Result<Seen<T>, BucketError>> + use<T>, BucketError> {
        // An empty bucket sends no entry to catch up with: caught up at once.
        let empty = self
            .store
            .status()
            .await
            .map_err(|e| self.failed("", e))?
            .values()
            == 0;
        let caught_up_at_once = futures::stream::iter(empty.then_some(Ok(Seen {
            change: None,
            caught_up: true,
        })));
        let watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| self.failed("", e))?;
        let bucket = self.name().to_owned();
        Ok(caught_up_at_once.chain(watch.map(move |entry| match entry {
            Ok(entry) => Ok(Seen {
                caught_up: entry.delta == 0,
                change: change_of(
                    &bucket,
                    entry.key,
                    entry.operation,
                    entry.revision,
                    &entry.value,
                ),
            }),
            Err(e) => Err(BucketError::failed(&bucket, "", e)),
        })))
    }

    /// The bucket's name.
    fn name(&self) -> &str {
        &self.store.name
    }

    fn failed(&self, key: &str, error: impl StdError + Send + Sync + 'static) -> BucketError {
        BucketError::failed(self.name(), key, error)
    }

    /// Refuses a key the bucket does not take, before it reaches the server.
    fn check(&self, key: &str) -> Result<(), BucketError> {
        if is_valid_key(key) {
            Ok(())
        } else {
            Err(BucketError::new(
                BucketErrorKind::InvalidKey,
                self.name(),
                key,
                None,
            ))
        }
    }

    fn encode(&self, key: &str, value: &T) -> Result<Bytes, BucketError> {
        self.check(key)?;
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
            BucketError::new(
                BucketErrorKind::Unencodable,
                self.name(),
                key,
                Some(Box::new(e)),
            )
        })
    }
}

/// The value an entry of `key` holds: `None` for a delete or purge marker.
fn decode_entry<T: DeserializeOwned>(
    bucket: &str,
    key: &str,
    operation: kv::Operation,
    bytes: &[u8],
) -> Result<Option<T>, BucketError> {
    match operation {
        kv::Operation::Put => serde_json::from_slice(bytes).map(Some).map_err(|e| {
            BucketError::new(BucketErrorKind::Undecodable, bucket, key, Some(Box::new(e)))
        }),
        kv::Operation::Delete | kv::Operation::Purge => Ok(None),
    }
}

/// The change a watched entry makes; `None` (logged) for a value that does not decode.
fn change_of<T: DeserializeOwned>(
    bucket: &str,
    key: String,
    operation: kv::Operation,
    revision: u64,
    bytes: &[u8],
) -> Option<Change<T>> {
    match decode_entry(bucket, &key, operation, bytes) {
        Ok(Some(value)) => Some(Change::Put { key, value }),
        Ok(None) => Some(Change::Removed { key }),
        Err(e) => {
            tracing::error!(bucket, key, revision, error = %e, "skipping an entry this daemon cannot read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusErrorKind;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Record {
        name: String,
        count: u32,
    }

    fn record(count: u32) -> Record {
        Record {
            name: "r".into(),
            count,
        }
    }

    fn undecodable() -> BucketError {
        decode_entry::<Record>("b", "k", kv::Operation::Put, b"{\"name\":1}")
            .expect_err("a record with a number for a name does not decode")
    }

    #[test]
    fn keys_the_bucket_takes_are_accepted_and_others_refused() {
        for ok in [
            "a",
            "component.billing",
            "host-1.board_9",
            "r-1764489600000-0a1b2c3d",
            "a/b=c",
            "vm.pre-create",
        ] {
            assert!(is_valid_key(ok), "{ok}");
        }
        for bad in [
            "", ".a", "a.", "a b", "a.*", "a.>", ">", "ü", "a\nb", "a:b", "a,b",
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_put_decodes_to_its_record_and_a_delete_or_purge_to_nothing() {
        let bytes = serde_json::to_vec(&record(3)).unwrap();
        let value = decode_entry::<Record>("b", "k", kv::Operation::Put, &bytes).unwrap();
        assert_eq!(value, Some(record(3)));
        for marker in [kv::Operation::Delete, kv::Operation::Purge] {
            let value = decode_entry::<Record>("b", "k", marker, b"").unwrap();
            assert_eq!(value, None);
        }
    }

    #[test]
    fn a_value_that_does_not_decode_is_undecodable_naming_the_key_and_keeping_why() {
        let error = undecodable();
        assert_eq!(error.kind(), BucketErrorKind::Undecodable);
        let text = error.to_string();
        assert!(text.contains("`k` in the KV bucket b"), "{text}");
        assert!(error.source().is_some_and(|s| s.is::<serde_json::Error>()));
        let bus = undecodable().into_bus_error("read the thing");
        assert_eq!(bus.kind, BusErrorKind::Corrupt);
        assert!(bus.message.starts_with("cannot read the thing: "), "{bus}");
    }

    #[test]
    fn a_listing_keeps_or_drops_what_it_cannot_read_as_asked() {
        let timed_out =
            || BucketError::failed("b", "k", kv::EntryError::new(kv::EntryErrorKind::TimedOut));
        // Values, and deleted keys, are the same under every policy.
        for policy in [
            Unreadable::Fails,
            Unreadable::SkipUndecodable,
            Unreadable::Skip,
        ] {
            assert_eq!(policy.keep(Ok(Some(1))).unwrap(), Some(1));
            assert_eq!(policy.keep::<u32>(Ok(None)).unwrap(), None);
        }
        assert!(Unreadable::Fails.keep::<u32>(Err(undecodable())).is_err());
        assert!(Unreadable::Fails.keep::<u32>(Err(timed_out())).is_err());
        assert_eq!(
            Unreadable::SkipUndecodable
                .keep::<u32>(Err(undecodable()))
                .unwrap(),
            None
        );
        let failed = Unreadable::SkipUndecodable.keep::<u32>(Err(timed_out()));
        assert_eq!(
            failed.map_err(|e| e.kind()).unwrap_err(),
            BucketErrorKind::Unavailable
        );
        assert_eq!(
            Unreadable::Skip.keep::<u32>(Err(undecodable())).unwrap(),
            None
        );
        assert_eq!(
            Unreadable::Skip.keep::<u32>(Err(timed_out())).unwrap(),
            None
        );
    }

    #[test]
    fn a_watched_entry_becomes_a_change_unless_it_does_not_decode() {
        let bytes = serde_json::to_vec(&record(1)).unwrap();
        let put = change_of::<Record>("b", "k".into(), kv::Operation::Put, 4, &bytes);
        assert_eq!(
            put,
            Some(Change::Put {
                key: "k".into(),
                value: record(1)
            })
        );
        for marker in [kv::Operation::Delete, kv::Operation::Purge] {
            let removed = change_of::<Record>("b", "k".into(), marker, 5, b"");
            assert_eq!(removed, Some(Change::Removed { key: "k".into() }));
        }
        let skipped = change_of::<Record>("b", "k".into(), kv::Operation::Put, 6, b"not json");
        assert_eq!(skipped, None);
    }
}
