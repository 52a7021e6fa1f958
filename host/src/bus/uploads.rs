//! [`StagedUploads`]: component bytes sent part by part through the control API, held until
//! an upload of the same digest stores them in the component store.
//!
//! A client never writes the component store: write access to it is write access to every
//! component's code. Instead it stages its bytes a part at a time (`component.stage`, each
//! part fitting in one message), and `component.upload` asks a daemon to assemble them,
//! check them against the digest, and store them. Parts live in a KV bucket, so any daemon of
//! the cluster can take any part and another can assemble them; they expire after
//! [`STAGE_TTL`] if no upload follows.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::kv;
use async_nats::jetstream::{self};
use futures::StreamExt as _;

use super::bucket::{BucketSpec, ensure_bucket};
use super::{BusError, BusErrorKind, names};
use crate::sandbox::Digest;

/// Most bytes staged at once, all uploads together: sixteen of the largest components.
pub const MAX_STAGED_BYTES: i64 = 1 << 30;

/// How long staged parts wait for their upload.
pub const STAGE_TTL: Duration = Duration::from_secs(3600);

/// The staged parts of every upload in progress.
#[derive(Clone)]
pub struct StagedUploads {
    bucket: kv::Store,
    client: async_nats::Client,
}

impl StagedUploads {
    /// Opens the bucket, creating it if missing (the daemon does this).
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let spec = BucketSpec::new(
            names::UPLOADS_BUCKET,
            "sandbus component bytes staged for an upload",
            replicas,
        )
        .max_age(STAGE_TTL)
        // A flood of parts can only fill this bucket, never the others.
        .max_bytes(MAX_STAGED_BYTES);
        let bucket = ensure_bucket(js, spec).await?;
        Ok(Self {
            bucket,
            client: js.client(),
        })
    }

    /// Largest part this server carries, in bytes: what a client may put in one part (its
    /// request carries it in base64, with room for the rest of the request).
    pub fn max_part(&self) -> usize {
        let payload = self.client.server_info().max_payload;
        payload.saturating_sub(4096) / 4 * 3
    }

    /// Stages part `part` of `parts` of the bytes with `digest`.
    pub async fn stage(
        &self,
        digest: &Digest,
        parts: u32,
        part: u32,
        bytes: Vec<u8>,
    ) -> Result<(), BusError> {
        self.bucket
            .put(
                names::staged_part_key(digest.as_str(), parts, part),
                bytes.into(),
            )
            .await
            .map_err(|e| BusError::unavailable("stage the component part", e))?;
        Ok(())
    }

    /// The staged bytes of `digest`, assembled and checked against it; `None` when no part is
    /// staged. An incomplete, oversized or mismatching set is an error saying what is wrong
    /// (the client sends the parts again).
    pub async fn assemble(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, BusError> {
        let prefix = format!("{}{}.", self.bucket.prefix, digest.as_str());
        let consumer = self
            .bucket
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{prefix}>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::unavailable("read the staged parts", e))?;
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(None);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::unavailable("read the staged parts", e))?;
        // parts count → part → bytes; a set staged with another count is a different upload.
        let mut sets: BTreeMap<u32, BTreeMap<u32, bytes::Bytes>> = BTreeMap::new();
        let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
        let mut total = 0u64;
        for _ in 0..pending {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|elapsed| {
                    BusError::new(
                        BusErrorKind::Unavailable,
                        "the staged parts stopped arriving; try the upload again",
                    )
                    .caused_by(elapsed)
                })?;
            let Some(message) = next else {
                break;
            };
            let message = message.map_err(|e| BusError::unavailable("read the staged parts", e))?;
            let deleted = message.headers.as_ref().is_some_and(|h| {
                h.get("KV-Operation")
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
            });
            let Some((parts, part)) = message
                .subject
                .as_str()
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(n, i)| Some((n.parse().ok()?, i.parse().ok()?)))
            else {
                continue;
            };
            if deleted {
                continue;
            }
            // What is read is bounded: a set is at most `max` bytes (more is not a component
            // this host takes), and all sets together a few times that.
            total += message.payload.len() as u64;
            if total > max.saturating_mul(4) {
                return Err(BusError::new(
                    BusErrorKind::Corrupt,
                    format!(
                        "more than {} bytes are staged for {digest}; wait for the staged parts to \
                         expire ({} min) and send them again",
                        max.saturating_mul(4),
                        STAGE_TTL.as_secs() / 60
                    ),
                ));
            }
            let size = sizes.entry(parts).or_default();
            *size += message.payload.len() as u64;
            if *size > max {
                // Over the size limit: not a set that can be the component.
                sets.remove(&parts);
                continue;
            }
            sets.entry(parts)
                .or_default()
                .insert(part, message.payload.clone());
        }
        if sets.is_empty() {
            return Ok(None);
        }
        // Parts staged under another parts count are another upload of the same digest (or
        // someone's junk): the first complete set that hashes to the digest is the one.
        let mut problem = None;
        for (parts, set) in sets.into_iter().rev() {
            if set.len() as u64 != u64::from(parts) {
                problem.get_or_insert_with(|| {
                    BusError::new(
                        BusErrorKind::NotFound,
                        format!(
                            "only {} of the {parts} parts of {digest} are staged; send them all \
                             again",
                            set.len()
                        ),
                    )
                });
                continue;
            }
            let mut bytes = Vec::new();
            for part in set.into_values() {
                bytes.extend_from_slice(&part);
            }
            let actual = Digest::of(&bytes);
            if &actual == digest {
                return Ok(Some(bytes));
            }
            problem.get_or_insert_with(|| {
                BusError::new(
                    BusErrorKind::Corrupt,
                    format!("the staged parts of {digest} hash to {actual}; send them again"),
                )
            });
        }
        Err(problem.unwrap_or_else(|| {
            BusError::new(
                BusErrorKind::NotFound,
                format!("no parts of {digest} are staged"),
            )
        }))
    }

    /// Drops every staged part of `digest` (its upload is done, or refused).
    pub async fn drop_staged(&self, digest: &Digest) -> Result<(), BusError> {
        self.bucket
            .stream
            .purge()
            .filter(format!("{}{}.>", self.bucket.prefix, digest.as_str()))
            .await
            .map_err(|e| BusError::unavailable("drop the staged parts", e))?;
        Ok(())
    }
}
