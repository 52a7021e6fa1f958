//! Opening the KV buckets sandbus keeps its state in: created from a [`BucketSpec`], and
//! always read through their stream leader.
//!
//! Every bucket a daemon or a tool uses is opened here, whether its values are JSON records
//! ([`JsonBucket`](super::json_bucket::JsonBucket)) or raw bytes ([`NatsKv`](super::NatsKv),
//! [`StagedUploads`](super::StagedUploads)), so the rule that no read may land on a lagging
//! replica ([`read_through_leader`]) holds for all of them.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::{BusError, BusErrorKind};

/// What a KV bucket is made with when it does not exist yet: its name, what it is for, how
/// many revisions of a key it keeps, how long and how much it keeps, and its replicas.
///
/// An existing bucket is taken as it is (a daemon never rewrites another daemon's settings
/// here); only direct get is switched off ([`read_through_leader`]).
#[derive(Debug, Clone)]
pub(crate) struct BucketSpec {
    config: kv::Config,
}

impl BucketSpec {
    /// A bucket named `name` (one of the [`names`](super::names) constants), described as
    /// `description`, on `replicas` servers, keeping one revision a key, with no age or size
    /// bound.
    pub(crate) fn new(name: &str, description: &str, replicas: usize) -> Self {
        Self {
            config: kv::Config {
                bucket: name.to_owned(),
                description: description.to_owned(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        }
    }

    /// Keeps the last `revisions` revisions of every key (at most 64, the server's bound).
    pub(crate) fn history(mut self, revisions: i64) -> Self {
        self.config.history = revisions;
        self
    }

    /// Drops every revision `age` after it was written: the bucket's entries expire unless
    /// they are written again (presence, leases, runs).
    pub(crate) fn max_age(mut self, age: Duration) -> Self {
        self.config.max_age = age;
        self
    }

    /// Holds at most `bytes` bytes in all (-1: no bound); a write that would pass it is
    /// refused.
    pub(crate) fn max_bytes(mut self, bytes: i64) -> Self {
        self.config.max_bytes = bytes;
        self
    }

    /// Takes values of at most `bytes` bytes.
    pub(crate) fn max_value_size(mut self, bytes: i32) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// The bucket's name.
    pub(crate) fn name(&self) -> &str {
        &self.config.bucket
    }
}

/// Opens the bucket `spec` names, creating it as `spec` says if it does not exist, and makes
/// it serve reads from its stream leader only ([`read_through_leader`]). Daemons do this.
pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    spec: BucketSpec,
) -> Result<kv::Store, BusError> {
    let bucket = spec.name().to_owned();
    let mut store = match js.get_key_value(bucket.as_str()).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(spec.config).await {
            Ok(store) => store,
            // Another daemon created it in between.
            Err(e) => js
                .get_key_value(bucket.as_str())
                .await
                .map_err(|_| BusError::unavailable(&format!("create the KV bucket {bucket}"), e))?,
        },
    };
    read_through_leader(js, &mut store).await?;
    Ok(store)
}

/// Opens a KV bucket a daemon created (clients do this); [`BusErrorKind::NotSetUp`] naming
/// `what` if it does not exist. Like [`ensure_bucket`], it turns direct get off if an older
/// daemon left it on; when this client may not change the bucket, it logs why and reads as the
/// bucket allows (a client only shows what it reads, it bases no compare-and-set on it).
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    what: &str,
) -> Result<kv::Store, BusError> {
    let mut store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| BusError::not_set_up(what, e))?;
    if let Err(e) = read_through_leader(js, &mut store).await {
        tracing::warn!(bucket, error = %e, "reads of this bucket may lag behind its writes");
    }
    Ok(store)
}

/// Turns off direct get on the bucket's stream, if it is on, and refreshes the store's cached
/// stream info so that it reads through the stream leader.
///
/// async-nats creates every KV bucket with `allow_direct`, and a store whose cached stream
/// info says so answers `get` and `entry` with a direct get, which any replica of a
/// replicated bucket may serve, including one that has not applied the latest writes yet: a
/// reader can miss a write it should see (a guest's read-modify-write misses the write before
/// it), and a compare-and-swap that read a stale revision loses until the replica catches
/// up. With direct get off, the store reads with `STREAM.MSG.GET`, which the leader answers.
/// The store decides from the stream info it cached when it was opened, hence the refresh
/// after the update. Buckets made by earlier versions (direct get on) are switched over here
/// too.
async fn read_through_leader(
    js: &jetstream::Context,
    store: &mut kv::Store,
) -> Result<(), BusError> {
    if !store.stream.cached_info().config.allow_direct {
        return Ok(());
    }
    let what = format!("turn off direct get on the KV bucket {}", store.name);
    let mut config = store.stream.cached_info().config.clone();
    config.allow_direct = false;
    js.update_stream(&config)
        .await
        .map_err(|e| BusError::unavailable(&what, e))?;
    let info = store
        .stream
        .info()
        .await
        .map_err(|e| BusError::unavailable(&what, e))?;
    if info.config.allow_direct {
        return Err(BusError::new(
            BusErrorKind::Unavailable,
            format!("cannot {what}: the server still reports it on after the update"),
        ));
    }
    Ok(())
}
