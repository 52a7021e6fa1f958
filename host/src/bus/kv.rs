//! [`NatsKv`]: the guests' key-value spaces in one JetStream KV bucket.
//!
//! Each component's keys live under its namespace (`<component>.<key>`), so one bucket holds
//! every space and a guest can only ever reach its own. Compare-and-swap, set-if-absent and
//! delete are writes conditional on the key's revision (its last sequence in the bucket's
//! stream), which makes them atomic across every daemon of the cluster.
//!
//! A daemon follows the bucket ([`NatsKv::follow`]): for the quotas ([`KvUsage`]) and for its
//! copy of the values ([`KvCache`]), which serves reads, and the reads before conditional
//! writes, without a round trip once it has caught up with what this daemon has seen (the
//! consistency a guest gets is in [`super::kv_cache`]).

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use futures::StreamExt as _;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::BusError;
use super::bucket::{BucketSpec, ensure_bucket, open_bucket};
use super::cas::is_lost_race;
use super::kv_cache::{CACHE_PATIENCE, KvCache, Lookup};
use super::kv_usage::KvUsage;
use super::names;
use crate::imports::kv::{KvFootprint, KvStore, KvStoreError};

/// Most keys `list-keys` returns (as the WIT documents).
const MAX_LIST: usize = 10_000;

/// How many bytes of keys and values a daemon's copy of the bucket keeps, by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Guest key-value storage in a NATS KV bucket.
#[derive(Clone)]
pub struct NatsKv {
    bucket: kv::Store,
    client: async_nats::Client,
    usage: Arc<KvUsage>,
    cache: Arc<KvCache>,
    /// The highest revision this daemon has seen confirmed by the server (its writes'
    /// acknowledgements, its reads from the server): a cached read waits for the copy to
    /// reach it.
    seen: Arc<AtomicU64>,
    /// Reads served by the copy, and by the server.
    reads: Arc<[AtomicU64; 2]>,
    max_bytes: i64,
}

impl NatsKv {
    /// Opens the bucket, creating it if missing. `max_value` caps one value in bytes;
    /// `max_bytes` the whole bucket (-1: no bound), applied to an existing bucket too. A
    /// write to a full bucket is refused, naming the bound.
    pub async fn ensure(
        js: &jetstream::Context,
        replicas: usize,
        max_value: i32,
        max_bytes: i64,
    ) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::GUEST_KV_BUCKET,
            "sandbus guest key-value spaces",
            replicas,
        )
        .max_value_size(max_value)
        .max_bytes(max_bytes);
        let bucket = ensure_bucket(js, spec).await?;
        let current = bucket.stream.cached_info().config.clone();
        if current.max_bytes != max_bytes {
            let what = format!("bound the KV bucket {} at {max_bytes} bytes", bucket.name);
            js.update_stream(&jetstream::stream::Config {
                max_bytes,
                ..current
            })
            .await
            .map_err(|e| BusError::unavailable(&what, e))?;
        }
        Ok(Self::over(bucket, js, max_bytes))
    }

    fn over(bucket: kv::Store, js: &jetstream::Context, max_bytes: i64) -> Self {
        Self {
            bucket,
            client: js.client(),
            usage: Arc::default(),
            cache: Arc::new(KvCache::new(DEFAULT_CACHE_BYTES)),
            seen: Arc::default(),
            reads: Arc::default(),
            max_bytes,
        }
    }

    /// Keeps at most `bytes` of keys and values in this daemon's copy of the bucket (0: no
    /// copy, every read goes to the server). Call before [`NatsKv::follow`].
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = Arc::new(KvCache::new(bytes));
        self
    }

    /// Opens the bucket a daemon created (tools do this; they never create it).
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let bucket = open_bucket(js, names::GUEST_KV_BUCKET, "the guest key-value bucket").await?;
        let max_bytes = bucket.stream.cached_info().config.max_bytes;
        Ok(Self::over(bucket, js, max_bytes))
    }

    /// Follows the bucket until `stop`: every key's last entry, then every change, into the
    /// usage counts the quotas check ([`KvUsage`]) and into this daemon's copy of the values
    /// ([`KvCache`]). The daemon runs this for its whole life; a store that is not followed
    /// reads everything from the server. Until the first pass is done ([`NatsKv::usage_ready`])
    /// quotas see less than there is.
    pub async fn follow(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                result = self.follow_once() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "lost the kv follow; reading the bucket again");
                    }
                    // Nothing is followed until the next pass: the copy must not answer.
                    self.cache.restart();
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow_once(&self) -> Result<(), async_nats::Error> {
        // Without a copy, sizes are enough: the server sends headers and each value's size.
        let headers_only = !self.cache.keeps_values();
        let consumer = self
            .bucket
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}>", self.bucket.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                headers_only,
                ..Default::default()
            })
            .await?;
        self.usage.restart();
        self.cache.restart();
        if consumer.cached_info().num_pending == 0 {
            self.usage.mark_ready();
            self.cache.caught_up();
        }
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let (revision, pending) = message
                .info()
                .map(|i| (i.stream_sequence, i.pending))
                .unwrap_or((0, 1));
            let headers = message.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.to_string());
            let deleted = header("KV-Operation").is_some_and(|op| op == "DEL" || op == "PURGE");
            let size = if headers_only {
                header("Nats-Msg-Size").and_then(|s| s.parse::<u64>().ok())
            } else {
                None
            }
            .unwrap_or(message.payload.len() as u64);
            if let Some(key) = message
                .subject
                .as_str()
                .strip_prefix(self.bucket.prefix.as_str())
            {
                if let Some((namespace, rest)) = key.split_once('.') {
                    self.usage.record_watched(
                        namespace,
                        rest,
                        (!deleted).then_some(size),
                        revision,
                    );
                }
                // A copy of the value, not a slice of the connection's read buffer (which
                // would keep the whole buffer alive).
                let value = (!deleted).then(|| Bytes::copy_from_slice(&message.payload));
                self.cache.apply(key, value, revision);
            }
            // Nothing more in the stream now: every key is as the stream has it.
            if pending == 0 {
                self.usage.mark_ready();
                self.cache.caught_up();
            }
        }
        Ok(())
    }

    /// Reads served so far by this daemon's copy, and by the server (for the metrics: a copy
    /// that rarely answers is behind, or over its budget).
    pub fn read_counts(&self) -> (u64, u64) {
        (
            self.reads[0].load(Ordering::Relaxed),
            self.reads[1].load(Ordering::Relaxed),
        )
    }

    /// Bytes of keys and values this daemon's copy holds.
    pub fn copy_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Notes that the server confirmed `revision`.
    fn saw(&self, revision: u64) {
        self.seen.fetch_max(revision, Ordering::AcqRel);
    }

    /// `full` (a bucket key) as this daemon's copy has it, once it has caught up with what
    /// this daemon has seen; else from the server. The value and its revision (for a key
    /// holding nothing, the revision a write expecting absence must name).
    async fn read(&self, full: &str) -> Result<(Option<Bytes>, u64), KvStoreError> {
        let seen = self.seen.load(Ordering::Acquire);
        let found = match self.cache.lookup(full, seen, CACHE_PATIENCE).await {
            Lookup::Found { value, revision } => (Some(value), revision),
            Lookup::Absent { revision } => (None, revision),
            Lookup::Miss => return self.read_from_server(full).await,
        };
        self.reads[0].fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    /// `full` as the stream leader has it now.
    async fn read_from_server(&self, full: &str) -> Result<(Option<Bytes>, u64), KvStoreError> {
        self.reads[1].fetch_add(1, Ordering::Relaxed);
        let entry = self.bucket.entry(full).await.map_err(unavailable)?;
        Ok(match entry {
            Some(e) => {
                self.saw(e.revision);
                match e.operation {
                    Operation::Put => (Some(e.value), e.revision),
                    _ => (None, e.revision),
                }
            }
            None => (None, 0),
        })
    }

    /// Waits until the stored keys have been counted (or `timeout`); whether they have.
    pub async fn usage_ready(&self, timeout: std::time::Duration) -> bool {
        self.usage.wait_ready(timeout).await
    }

    /// A write failure, named: a full bucket says so.
    fn write_failed(&self, e: impl std::fmt::Display) -> KvStoreError {
        let text = e.to_string();
        if text.to_ascii_lowercase().contains("maximum bytes") {
            return KvStoreError::Unavailable(format!(
                "the key-value bucket is full (it holds at most {} bytes, [kv] max_bytes); \
                 delete keys, or have the operator raise the bound",
                self.max_bytes
            ));
        }
        unavailable(text)
    }

    /// The bucket (tests and tools read guests' state through it).
    pub fn bucket(&self) -> &kv::Store {
        &self.bucket
    }
}

/// After losing a race on a key for the `attempt`th time in a row: none the first time, then
/// a random pause of up to `attempt` × 200 µs (at most 2 ms), so contenders spread out.
async fn lost_race_pause(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let most = u64::from(attempt.min(10)) * 200;
    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % (most + 1))).await;
}

fn unavailable(e: impl std::fmt::Display) -> KvStoreError {
    KvStoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl KvStore for NatsKv {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvStoreError> {
        let (value, _) = self.read(&names::guest_kv_key(namespace, key)).await?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn set(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), KvStoreError> {
        let len = value.len() as u64;
        let revision = self
            .bucket
            .put(names::guest_kv_key(namespace, key), value.into())
            .await
            .map_err(|e| self.write_failed(e))?;
        self.saw(revision);
        self.usage.record_write(namespace, key, len, revision);
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvStoreError> {
        let full = names::guest_kv_key(namespace, key);
        let (mut current, mut revision) = self.read(&full).await?;
        // A delete marker conditional on the revision read: if the key changed meanwhile,
        // read it again from the server and decide again.
        for attempt in 0..64 {
            if current.is_none() {
                return Ok(false);
            }
            match self
                .bucket
                .delete_expect_revision(full.as_str(), Some(revision))
                .await
            {
                Ok(()) => {
                    // The marker's revision, so this daemon's next read waits for it.
                    self.read_from_server(&full).await?;
                    return Ok(true);
                }
                Err(e) if is_lost_race(&e) => {
                    lost_race_pause(attempt).await;
                    (current, revision) = self.read_from_server(&full).await?;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(KvStoreError::Unavailable(
            "the key kept changing; try again".into(),
        ))
    }

    async fn compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvStoreError> {
        let full = names::guest_kv_key(namespace, key);
        // The first read is this daemon's copy (no round trip); the write is conditional on
        // the revision read, so a copy that is behind only makes it fail: then read the key
        // from the server and compare again.
        let (mut current, mut revision) = self.read(&full).await?;
        for attempt in 0..64 {
            if current.as_deref() != expected {
                return Ok(false);
            }
            match self
                .bucket
                .update(full.as_str(), new.clone().into(), revision)
                .await
            {
                Ok(written) => {
                    self.saw(written);
                    self.usage
                        .record_write(namespace, key, new.len() as u64, written);
                    return Ok(true);
                }
                Err(e) if is_lost_race(&e) => {
                    lost_race_pause(attempt).await;
                    (current, revision) = self.read_from_server(&full).await?;
                }
                Err(e) => return Err(self.write_failed(e)),
            }
        }
        Err(KvStoreError::Unavailable(
            "the key kept changing; try again".into(),
        ))
    }

    async fn footprint(&self, namespace: &str, key: &str) -> Result<KvFootprint, KvStoreError> {
        Ok(self.usage.footprint(namespace, key))
    }

    async fn list_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, KvStoreError> {
        // The latest message per key, headers only, of this namespace's subjects: the same
        // way the bucket lists its keys, restricted to one namespace.
        let filter = format!(
            "{}{}",
            self.bucket.prefix,
            names::guest_kv_namespace_filter(namespace)
        );
        let consumer = self
            .bucket
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter,
                headers_only: true,
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending;
        let mut keys = Vec::new();
        if pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let strip = format!("{}{namespace}.", self.bucket.prefix);
        let mut seen = 0u64;
        while seen < pending {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(unavailable)?;
            seen += 1;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if let Some(key) = message.subject.as_str().strip_prefix(&strip)
                && !deleted
                && key.starts_with(prefix)
            {
                keys.push(key.to_owned());
            }
            if message.info().is_ok_and(|info| info.pending == 0) {
                break;
            }
        }
        keys.sort();
        keys.truncate(MAX_LIST);
        Ok(keys)
    }
}
