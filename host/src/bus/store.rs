//! The component store, shared by every daemon on the cluster.
//!
//! Component bytes live in a JetStream object store, one object per sha256 digest (content
//! addressed, chunked, so a component larger than the server's max payload is fine). What a
//! name means lives in a KV bucket of versioned [`ComponentManifest`]s: every upload or
//! rollback writes the next version with a compare-and-set on the previous revision, so two
//! concurrent uploads of one name can't both claim a version. Daemons watch the bucket and
//! load, swap and unload components as manifests change.

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use tokio::io::AsyncReadExt as _;

use super::cas::is_lost_race;
use super::names;
use super::{BusError, BusErrorKind};
use crate::sandbox::{Digest, Limits, World};

/// Manifest versions of one name kept in the bucket (the reach of `rollback`).
const HISTORY: i64 = 32;

/// What a name points at: one version of a component and the policy it runs under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComponentManifest {
    /// The component's name: its kv namespace, its subscription name, its log name.
    pub name: String,
    /// 1 for the first upload, +1 for every upload or rollback after it.
    pub version: u64,
    /// sha256 of the bytes, hex; the object's name in the object store.
    pub digest: String,
    /// Size of the bytes.
    pub size: u64,
    /// Its role.
    pub world: World,
    /// Subjects it may publish on.
    pub grants: Vec<String>,
    /// Components whose key-value spaces it may read (`kv-read` grants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_read: Vec<String>,
    /// Limit settings (`NAME=VALUE`) applied over the world's defaults.
    pub limits: Vec<String>,
    /// When this version was recorded (RFC 3339).
    pub recorded_at: String,
    /// For a rollback: the version whose content this one restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
}

impl ComponentManifest {
    /// The version whose upload this content came from (itself unless a rollback).
    pub fn content_version(&self) -> u64 {
        self.restored_from.unwrap_or(self.version)
    }

    /// The effective limits: the world's defaults with the manifest's settings applied.
    pub fn resolved_limits(&self) -> Result<Limits, String> {
        let mut limits = Limits::for_world(self.world);
        for setting in &self.limits {
            limits.apply(setting).map_err(|e| e.to_string())?;
        }
        Ok(limits)
    }
}

/// A manifest to record: everything but the version and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDraft {
    /// Name.
    pub name: String,
    /// Digest of bytes already in the object store.
    pub digest: Digest,
    /// Size of the bytes.
    pub size: u64,
    /// Role.
    pub world: World,
    /// Publish grants.
    pub grants: Vec<String>,
    /// `kv-read` grants.
    pub kv_read: Vec<String>,
    /// Limit settings.
    pub limits: Vec<String>,
}

/// A change seen by [`ComponentStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestChange {
    /// A name now points at this manifest (new, upgraded or rolled back).
    Put(ComponentManifest),
    /// A name was removed.
    Removed(String),
}

/// The cluster's components: bytes by digest, manifests by name.
#[derive(Clone)]
pub struct ComponentStore {
    objects: object_store::ObjectStore,
    manifests: kv::Store,
    client: async_nats::Client,
}

impl ComponentStore {
    /// Creates the bucket and the object store if missing (the daemon does this).
    pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Self, BusError> {
        let objects = match js.get_object_store(names::COMPONENTS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names::COMPONENTS_BUCKET.to_owned(),
                    description: Some("sandbus component bytes by sha256".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| BusError::unavailable("create the component object store", e))?,
        };
        let manifests = ensure_kv(
            js,
            kv::Config {
                bucket: names::MANIFESTS_BUCKET.to_owned(),
                description: "sandbus component manifests".into(),
                history: HISTORY,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            objects,
            manifests,
            client: js.client(),
        })
    }

    /// Opens the existing store (the CLI does this).
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let objects = js
            .get_object_store(names::COMPONENTS_BUCKET)
            .await
            .map_err(|e| BusError::not_set_up("the component store", e))?;
        let manifests = open_kv(js, names::MANIFESTS_BUCKET, "the manifest bucket").await?;
        Ok(Self {
            objects,
            manifests,
            client: js.client(),
        })
    }

    /// Stores component bytes under their digest, unless they are there already; the digest
    /// and whether this call added them.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<(Digest, bool), BusError> {
        let digest = Digest::of(bytes);
        if let Ok(info) = self.objects.info(digest.as_str()).await
            && !info.deleted
            && info.size == bytes.len()
        {
            return Ok((digest, false));
        }
        // Chunks must fit the server's max payload (async-nats defaults to 128 KiB, more
        // than a server configured for 64 KiB takes), headers included.
        let max_payload = self.client.server_info().max_payload;
        let chunk_size = max_payload.saturating_sub(1024).clamp(4096, 128 * 1024);
        let meta = object_store::ObjectMetadata {
            name: digest.as_str().to_owned(),
            chunk_size: Some(chunk_size),
            ..Default::default()
        };
        let mut reader = bytes;
        self.objects
            .put(meta, &mut reader)
            .await
            .map_err(|e| BusError::unavailable("store the component bytes", e))?;
        Ok((digest, true))
    }

    /// The bytes stored under `digest`, checked against it. At most `max` bytes are read.
    pub async fn bytes(&self, digest: &str, max: u64) -> Result<Vec<u8>, BusError> {
        let mut object = self.objects.get(digest).await.map_err(|e| {
            if e.kind() == object_store::GetErrorKind::NotFound {
                BusError::new(
                    BusErrorKind::NotFound,
                    format!(
                        "no component bytes with digest {digest} in the store; upload them first"
                    ),
                )
            } else {
                BusError::unavailable("read the component bytes", e)
            }
        })?;
        let size = object.info().size as u64;
        if size > max {
            return Err(BusError::new(
                BusErrorKind::Corrupt,
                format!("the stored component is {size} bytes, over the limit of {max} bytes"),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| BusError::unavailable("read the component bytes", e))?;
        let actual = Digest::of(&bytes);
        if actual.as_str() != digest {
            return Err(BusError::new(
                BusErrorKind::Corrupt,
                format!(
                    "the stored bytes for {digest} hash to {actual}; upload the component again"
                ),
            ));
        }
        Ok(bytes)
    }

    /// Deletes bytes no manifest version points at any more (after a refused upload).
    pub async fn forget_bytes_if_unused(&self, digest: &str) -> Result<(), BusError> {
        for manifest in self.all_versions().await? {
            if manifest.digest == digest {
                return Ok(());
            }
        }
        self.objects
            .delete(digest)
            .await
            .map_err(|e| BusError::unavailable("delete unused component bytes", e))
    }

    /// The current manifest of `name`.
    pub async fn manifest(&self, name: &str) -> Result<Option<ComponentManifest>, BusError> {
        Ok(self.current(name).await?.map(|(m, _)| m))
    }

    async fn current(&self, name: &str) -> Result<Option<(ComponentManifest, u64)>, BusError> {
        let entry = self
            .manifests
            .entry(names::manifest_key(name))
            .await
            .map_err(|e| BusError::unavailable("read the manifest", e))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                Ok(Some((parse_manifest(&entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Every manifest version of `name` still in the bucket, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<ComponentManifest>, BusError> {
        let mut history = self
            .manifests
            .history(names::manifest_key(name))
            .await
            .map_err(|e| BusError::unavailable("read the manifest history", e))?;
        let mut versions = Vec::new();
        while let Some(entry) = history
            .try_next()
            .await
            .map_err(|e| BusError::unavailable("read the manifest history", e))?
        {
            if entry.operation == Operation::Put
                && let Ok(manifest) = parse_manifest(&entry.value)
            {
                versions.push(manifest);
            }
        }
        Ok(versions)
    }

    /// Records the next version of a name and returns it. Retries on a concurrent change.
    pub async fn record(&self, draft: ManifestDraft) -> Result<ComponentManifest, BusError> {
        self.write_next(&draft.name, |version| ComponentManifest {
            name: draft.name.clone(),
            version,
            digest: draft.digest.as_str().to_owned(),
            size: draft.size,
            world: draft.world,
            grants: draft.grants.clone(),
            kv_read: draft.kv_read.clone(),
            limits: draft.limits.clone(),
            recorded_at: now_rfc3339(),
            restored_from: None,
        })
        .await
    }

    /// Points `name` back at the content it had before its current content, as a new
    /// version. Fails if there is no earlier version in the history.
    pub async fn rollback(&self, name: &str) -> Result<ComponentManifest, BusError> {
        let (current, _) = self.current(name).await?.ok_or_else(|| not_found(name))?;
        let history = self.history(name).await?;
        let target = history
            .iter()
            .rev()
            .find(|m| m.version < current.content_version() && m.restored_from.is_none())
            .cloned()
            .ok_or_else(|| {
                BusError::new(
                    BusErrorKind::NotFound,
                    format!(
                        "`{name}` has no version before version {} to roll back to",
                        current.content_version()
                    ),
                )
            })?;
        self.write_next(name, |version| ComponentManifest {
            version,
            recorded_at: now_rfc3339(),
            restored_from: Some(target.version),
            ..target.clone()
        })
        .await
    }

    async fn write_next(
        &self,
        name: &str,
        make: impl Fn(u64) -> ComponentManifest,
    ) -> Result<ComponentManifest, BusError> {
        let key = names::manifest_key(name);
        for _ in 0..16 {
            let entry = self
                .manifests
                .entry(key.as_str())
                .await
                .map_err(|e| BusError::unavailable("read the manifest", e))?;
            let revision = entry.as_ref().map_or(0, |e| e.revision);
            // Versions continue across removals, so a name never reuses a version number.
            let last = self
                .history(name)
                .await?
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0);
            let manifest = make(last + 1);
            let body = serde_json::to_vec(&manifest)
                .map_err(|e| BusError::new(BusErrorKind::Corrupt, e.to_string()))?;
            match self
                .manifests
                .update(key.as_str(), body.into(), revision)
                .await
            {
                Ok(_) => return Ok(manifest),
                Err(e) if is_lost_race(&e) => continue,
                Err(e) => return Err(BusError::unavailable("record the manifest", e)),
            }
        }
        Err(BusError::new(
            BusErrorKind::Conflict,
            format!("`{name}` kept changing while recording it; try again"),
        ))
    }

    /// Removes `name`; returns the manifest it had. Its history stays (for the record and
    /// for version numbering), its bytes stay (another name may share them).
    pub async fn remove(&self, name: &str) -> Result<ComponentManifest, BusError> {
        let (current, revision) = self.current(name).await?.ok_or_else(|| not_found(name))?;
        match self
            .manifests
            .delete_expect_revision(names::manifest_key(name), Some(revision))
            .await
        {
            Ok(()) => Ok(current),
            Err(e) if is_lost_race(&e) => Err(BusError::new(
                BusErrorKind::Conflict,
                format!("`{name}` changed while removing it; try again"),
            )),
            Err(e) => Err(BusError::unavailable("remove the manifest", e)),
        }
    }

    /// Every current manifest, by name.
    pub async fn list(&self) -> Result<Vec<ComponentManifest>, BusError> {
        let mut keys: Vec<String> = match self.manifests.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| BusError::unavailable("list the manifests", e))?,
            Err(e) => return Err(BusError::unavailable("list the manifests", e)),
        };
        keys.sort();
        let mut manifests = Vec::new();
        for key in keys {
            if let Some(name) = key.strip_prefix("component.")
                && let Some(manifest) = self.manifest(name).await?
            {
                manifests.push(manifest);
            }
        }
        Ok(manifests)
    }

    async fn all_versions(&self) -> Result<Vec<ComponentManifest>, BusError> {
        let mut all = Vec::new();
        let keys: Vec<String> = match self.manifests.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| BusError::unavailable("list the manifests", e))?,
            Err(e) => return Err(BusError::unavailable("list the manifests", e)),
        };
        for key in keys {
            if let Some(name) = key.strip_prefix("component.") {
                all.extend(self.history(name).await?);
            }
        }
        Ok(all)
    }

    /// The current manifests, then every change as it happens. The stream ends if the watch
    /// breaks; watch again (changes are idempotent to apply). An entry this version cannot
    /// read (written by a newer one, or damaged) is logged and skipped, so it cannot hold up
    /// every change after it.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<ManifestChange, BusError>> + use<>, BusError> {
        let watch = self
            .manifests
            .watch_with_history(">")
            .await
            .map_err(|e| BusError::unavailable("watch the manifests", e))?;
        Ok(watch.filter_map(|entry| {
            std::future::ready((|| {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(BusError::unavailable("watch the manifests", e))),
            };
            let name = entry
                .key
                .strip_prefix("component.")
                .unwrap_or(&entry.key)
                .to_owned();
            match entry.operation {
                Operation::Put => match parse_manifest(&entry.value) {
                    Ok(manifest) => Some(Ok(ManifestChange::Put(manifest))),
                    Err(e) => {
                        tracing::error!(key = %entry.key, revision = entry.revision, error = %e, "skipping a manifest this daemon cannot read");
                        None
                    }
                },
                Operation::Delete | Operation::Purge => Some(Ok(ManifestChange::Removed(name))),
            }
            })())
        }))
    }
}

/// Opens a KV bucket, creating it with `config` if it does not exist, and makes it serve
/// reads from its stream leader only ([`read_through_leader`]). Every bucket a daemon uses
/// is made here.
pub(crate) async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, BusError> {
    let bucket = config.bucket.clone();
    let mut store = match js.get_key_value(bucket.as_str()).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(config).await {
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
/// `what` if it does not exist. Like [`ensure_kv`], it turns direct get off if an older daemon
/// left it on; when this client may not change the bucket, it logs why and reads as the
/// bucket allows (a client only shows what it reads, it bases no compare-and-set on it).
pub(crate) async fn open_kv(
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
        return Err(BusError::unavailable(
            &what,
            "the server still reports it on after the update",
        ));
    }
    Ok(())
}

fn parse_manifest(bytes: &Bytes) -> Result<ComponentManifest, BusError> {
    serde_json::from_slice(bytes).map_err(|e| {
        BusError::new(
            BusErrorKind::Corrupt,
            format!("a stored manifest is not valid: {e}"),
        )
    })
}

fn not_found(name: &str) -> BusError {
    BusError::new(
        BusErrorKind::NotFound,
        format!("no component named `{name}`; `sandbus ls` lists them"),
    )
}

/// The current time, RFC 3339, to the second.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
