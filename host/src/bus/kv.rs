//! [`NatsKv`]: the guests' key-value spaces in one JetStream KV bucket.
//!
//! Each component's keys live under its namespace (`<component>.<key>`), so one bucket holds
//! every space and a guest can only ever reach its own. Compare-and-swap uses the bucket's
//! per-key revision, which makes it atomic across every daemon of the cluster.

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use futures::StreamExt as _;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::BusError;
use super::bucket::{BucketSpec, ensure_bucket, open_bucket};
use super::cas::is_lost_race;
use super::kv_usage::KvUsage;
use super::names;
use crate::imports::kv::{KvFootprint, KvStore, KvStoreError};

/// Most keys `list-keys` returns (as the WIT documents).
const MAX_LIST: usize = 10_000;

/// Guest key-value storage in a NATS KV bucket.
#[derive(Clone)]
pub struct NatsKv {
    bucket: kv::Store,
    client: async_nats::Client,
    usage: Arc<KvUsage>,
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
        Ok(Self {
            bucket,
            client: js.client(),
            usage: Arc::default(),
            max_bytes,
        })
    }

    /// Opens the bucket a daemon created (tools do this; they never create it).
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let bucket = open_bucket(js, names::GUEST_KV_BUCKET, "the guest key-value bucket").await?;
        let max_bytes = bucket.stream.cached_info().config.max_bytes;
        Ok(Self {
            bucket,
            client: js.client(),
            usage: Arc::default(),
            max_bytes,
        })
    }

    /// Keeps every namespace's usage ([`KvUsage`]) current until `stop`, for the quota
    /// checks; the daemon runs this for its whole life. Until it has counted what is stored
    /// ([`NatsKv::usage_ready`]) quotas see less than there is.
    pub async fn follow_usage(&self, stop: CancellationToken) {
        self.usage
            .follow(self.bucket.clone(), self.client.clone(), stop)
            .await;
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

fn unavailable(e: impl std::fmt::Display) -> KvStoreError {
    KvStoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl KvStore for NatsKv {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvStoreError> {
        self.bucket
            .get(names::guest_kv_key(namespace, key))
            .await
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(unavailable)
    }

    async fn set(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), KvStoreError> {
        let len = value.len() as u64;
        let revision = self
            .bucket
            .put(names::guest_kv_key(namespace, key), value.into())
            .await
            .map_err(|e| self.write_failed(e))?;
        self.usage.record_write(namespace, key, len, revision);
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvStoreError> {
        let full = names::guest_kv_key(namespace, key);
        let existed = matches!(
            self.bucket.entry(full.as_str()).await.map_err(unavailable)?,
            Some(entry) if entry.operation == Operation::Put
        );
        if existed {
            self.bucket
                .delete(full.as_str())
                .await
                .map_err(unavailable)?;
        }
        Ok(existed)
    }

    async fn compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvStoreError> {
        let full = names::guest_kv_key(namespace, key);
        // The revision check makes the write conditional on nothing having changed since the
        // read; when something did, read again and compare again.
        for _ in 0..64 {
            let entry = self
                .bucket
                .entry(full.as_str())
                .await
                .map_err(unavailable)?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (Some(&e.value[..]), e.revision),
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            if current != expected {
                return Ok(false);
            }
            match self
                .bucket
                .update(full.as_str(), new.clone().into(), revision)
                .await
            {
                Ok(written) => {
                    self.usage
                        .record_write(namespace, key, new.len() as u64, written);
                    return Ok(true);
                }
                Err(e) if is_lost_race(&e) => continue,
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
