//! The component store, shared by every daemon on the cluster.
//!
//! Component bytes live in a JetStream object store, one object per sha256 digest (content
//! addressed, chunked, so a component larger than the server's max payload is fine). What a
//! name means lives in a KV bucket of versioned [`ComponentManifest`]s: every upload or
//! rollback writes the next version with a compare-and-set on the previous revision, so two
//! concurrent uploads of one name can't both claim a version. Daemons watch the bucket and
//! load, swap and unload components as manifests change.
//!
//! Bytes are read through a consumer of the read's own, deleted when the read is done, not
//! through the object store's reader: that reader makes an ordered consumer per read, which
//! the server keeps for 30 s after it, and a stream holds at most 1,000 consumers on
//! nats-server 2.15 by default. A daemon loading a thousand components at start (or a burst
//! of uploads) was refused on the next read. (Direct gets, one per chunk, leave nothing at
//! all, but were six times slower for a 300 KB component.)

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, object_store, stream};
use futures::{Stream, StreamExt as _};

use super::bucket::BucketSpec;
use super::json_bucket::{BucketErrorKind, Change, JsonBucket, Unreadable, Versioned};
use super::names;
use super::{BusError, BusErrorKind};
use crate::component_config::ComponentConfig;
use crate::sandbox::{Digest, LimitError, Limits, World};

/// How long a read of component bytes may take, and how long the server keeps its consumer
/// when the daemon dies before deleting it.
const CHUNK_READER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Manifest versions of one name kept in the bucket (the reach of `rollback`).
const HISTORY: i64 = 32;

/// What every manifest key starts with ([`names::manifest_key`]), before the component's name.
const MANIFEST_KEY_PREFIX: &str = "component.";

/// What a name points at: one version of a component and the policy it runs under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ComponentManifest {
    /// The component's name: its kv namespace, its subscription name, its log name.
    pub name: String,
    /// 1 for the first upload, +1 for every upload, rollback or configure after it.
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
    /// The values it reads through `wasi:config/store` (set with `--config`, changed with
    /// `sandbus configure`).
    #[serde(default, skip_serializing_if = "ComponentConfig::is_empty")]
    pub config: ComponentConfig,
    /// When this version was recorded (RFC 3339).
    pub recorded_at: String,
    /// For a rollback: the version whose content this one restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    /// For a `sandbus configure`: the version whose values this one changed (same bytes,
    /// grants and limits); a rollback goes back to exactly that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_from: Option<u64>,
}

impl ComponentManifest {
    /// What a rollback of this version restores, out of the name's `history` (oldest
    /// first): after a configure, the version it changed; otherwise the newest version
    /// recorded as itself (an upload or a configure, not a rollback) older than this content.
    pub fn rollback_target<'a>(
        &self,
        history: &'a [ComponentManifest],
    ) -> Option<&'a ComponentManifest> {
        if let Some(changed) = self.configured_from {
            return history.iter().find(|m| m.version == changed);
        }
        history
            .iter()
            .rev()
            .find(|m| m.version < self.content_version() && m.restored_from.is_none())
    }

    /// `self` (a [`Self::rollback_target`]) restored as `version`: its bytes, policy and
    /// values, saying which version's content it is.
    pub fn restored_as(&self, version: u64) -> ComponentManifest {
        ComponentManifest {
            version,
            recorded_at: now_rfc3339(),
            restored_from: Some(self.content_version()),
            configured_from: None,
            ..self.clone()
        }
    }

    /// The version whose upload this content came from (itself unless a rollback).
    pub fn content_version(&self) -> u64 {
        self.restored_from.unwrap_or(self.version)
    }

    /// The effective limits: the world's defaults with the manifest's settings applied.
    pub fn resolved_limits(&self) -> Result<Limits, LimitError> {
        let mut limits = Limits::for_world(self.world);
        for setting in &self.limits {
            limits.apply(setting)?;
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
    /// `wasi:config/store` values.
    pub config: ComponentConfig,
}

/// A change seen by [`ComponentStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestChange {
    /// A name now points at this manifest (new, upgraded or rolled back).
    Put(ComponentManifest),
    /// A name was removed.
    Removed(String),
}

/// What [`ComponentStore::watch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per manifest change, passed along one at a time, never held in bulk"
)]
pub enum ManifestEvent {
    /// A manifest changed (or, early in a watch, is there).
    Change(ManifestChange),
    /// Every manifest that was there when the watch began has been yielded: a daemon that
    /// started loading them knows what its first load is.
    CaughtUp,
}

/// The cluster's components: bytes by digest, manifests by name.
#[derive(Clone)]
pub struct ComponentStore {
    objects: object_store::ObjectStore,
    /// The object store's stream, which the chunks are read from.
    chunks: stream::Stream,
    manifests: JsonBucket<ComponentManifest>,
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
        let spec = BucketSpec::new(
            names::MANIFESTS_BUCKET,
            "sandbus component manifests",
            replicas,
        )
        .history(HISTORY);
        let manifests = JsonBucket::ensure(js, spec).await?;
        Ok(Self {
            objects,
            chunks: chunk_stream(js).await?,
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
        let manifests =
            JsonBucket::open(js, names::MANIFESTS_BUCKET, "the manifest bucket").await?;
        Ok(Self {
            objects,
            chunks: chunk_stream(js).await?,
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
    /// The read's consumer is deleted after it, so reads leave nothing behind.
    pub async fn bytes(&self, digest: &str, max: u64) -> Result<Vec<u8>, BusError> {
        let missing = || {
            BusError::new(
                BusErrorKind::NotFound,
                format!("no component bytes with digest {digest} in the store; upload them first"),
            )
        };
        let info = match self.objects.info(digest).await {
            Ok(info) if info.deleted => return Err(missing()),
            Ok(info) => info,
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(BusError::unavailable("read the component bytes", e)),
        };
        let size = info.size as u64;
        if size > max {
            return Err(BusError::new(
                BusErrorKind::Corrupt,
                format!("the stored component is {size} bytes, over the limit of {max} bytes"),
            ));
        }
        let bytes = self.read_chunks(&info).await?;
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

    /// The chunks of the object `info` describes, through a consumer of this read's own that
    /// is deleted after it (the server would expire it 30 s later anyway, if this daemon dies
    /// before it can).
    async fn read_chunks(&self, info: &object_store::ObjectInfo) -> Result<Vec<u8>, BusError> {
        let unavailable = |e: Box<dyn std::error::Error + Send + Sync>| {
            BusError::unavailable("read the component bytes", e)
        };
        let consumer = self
            .chunks
            .create_consumer(pull::Config {
                filter_subject: format!("$O.{}.C.{}", names::COMPONENTS_BUCKET, info.nuid),
                ack_policy: AckPolicy::None,
                inactive_threshold: CHUNK_READER_EXPIRY,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(e.into()))?;
        let name = consumer.cached_info().name.clone();
        let read = async {
            let mut bytes = Vec::with_capacity(info.size);
            let mut chunks = consumer
                .fetch()
                .max_messages(info.chunks)
                .expires(CHUNK_READER_EXPIRY)
                .messages()
                .await
                .map_err(|e| unavailable(e.into()))?;
            for _ in 0..info.chunks {
                let chunk = match chunks.next().await {
                    Some(chunk) => chunk.map_err(&unavailable)?,
                    None => break,
                };
                if bytes.len() + chunk.payload.len() > info.size {
                    break;
                }
                bytes.extend_from_slice(&chunk.payload);
            }
            Ok(bytes)
        }
        .await;
        if let Err(e) = self.chunks.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "a chunk reader is left to expire");
        }
        read
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
        Ok(self.current(name).await?.map(|m| m.value))
    }

    async fn current(&self, name: &str) -> Result<Option<Versioned<ComponentManifest>>, BusError> {
        self.manifests
            .entry(&names::manifest_key(name))
            .await
            .map_err(|e| e.into_bus_error("read the manifest"))
    }

    /// Every manifest version of `name` still in the bucket, oldest first (those this version
    /// cannot read left out).
    pub async fn history(&self, name: &str) -> Result<Vec<ComponentManifest>, BusError> {
        self.manifests
            .history(&names::manifest_key(name))
            .await
            .map_err(|e| e.into_bus_error("read the manifest history"))
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
            config: draft.config.clone(),
            recorded_at: now_rfc3339(),
            restored_from: None,
            configured_from: None,
        })
        .await
    }

    /// Points `name` back at the content it had before its current content, as a new
    /// version. Fails if there is no earlier version in the history.
    pub async fn rollback(&self, name: &str) -> Result<ComponentManifest, BusError> {
        let current = self.manifest(name).await?.ok_or_else(|| not_found(name))?;
        let history = self.history(name).await?;
        let target = current.rollback_target(&history).cloned().ok_or_else(|| {
            BusError::new(
                BusErrorKind::NotFound,
                format!(
                    "`{name}` has no earlier version to roll back to from version {} (the \
                         last {HISTORY} versions are kept)",
                    current.version
                ),
            )
        })?;
        self.write_next(name, |version| target.restored_as(version))
            .await
    }

    /// Records `name`'s current content and policy with `config` as its values, as a new
    /// version: what `sandbus configure` does, no bytes uploaded again. `expected` is the
    /// version the change was computed from; if another change came in between, this one
    /// is refused rather than silently applied over it.
    pub async fn configure(
        &self,
        name: &str,
        expected: u64,
        config: ComponentConfig,
    ) -> Result<ComponentManifest, BusError> {
        let current = self.current(name).await?.ok_or_else(|| not_found(name))?;
        let changed = |version: u64| {
            BusError::new(
                BusErrorKind::Conflict,
                format!("`{name}` changed to version {version} while configuring it; try again"),
            )
        };
        if current.value.version != expected {
            return Err(changed(current.value.version));
        }
        // The current entry is the name's last change (it was not removed), so the next
        // version is one more than its own.
        let manifest = ComponentManifest {
            version: current.value.version + 1,
            recorded_at: now_rfc3339(),
            config,
            restored_from: None,
            configured_from: Some(current.value.version),
            ..current.value.clone()
        };
        match self
            .manifests
            .update(&names::manifest_key(name), &manifest, current.revision)
            .await
        {
            Ok(_) => Ok(manifest),
            Err(e) if e.kind() == BucketErrorKind::LostRace => {
                Err(changed(current.value.version + 1))
            }
            Err(e) => Err(e.into_bus_error("record the manifest")),
        }
    }

    async fn write_next(
        &self,
        name: &str,
        make: impl Fn(u64) -> ComponentManifest,
    ) -> Result<ComponentManifest, BusError> {
        let key = names::manifest_key(name);
        for _ in 0..16 {
            // The revision of the key's last change, a removal included: a removal in between
            // must fail the write as much as an upload.
            let revision = self
                .manifests
                .read(&key)
                .await
                .map_err(|e| e.into_bus_error("read the manifest"))?
                .revision;
            // Versions continue across removals, so a name never reuses a version number.
            let last = self
                .history(name)
                .await?
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0);
            let manifest = make(last + 1);
            match self.manifests.update(&key, &manifest, revision).await {
                Ok(_) => return Ok(manifest),
                Err(e) if e.kind() == BucketErrorKind::LostRace => continue,
                Err(e) => return Err(e.into_bus_error("record the manifest")),
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
        let current = self.current(name).await?.ok_or_else(|| not_found(name))?;
        match self
            .manifests
            .delete_at(&names::manifest_key(name), current.revision)
            .await
        {
            Ok(()) => Ok(current.value),
            Err(e) if e.kind() == BucketErrorKind::LostRace => Err(BusError::new(
                BusErrorKind::Conflict,
                format!("`{name}` changed while removing it; try again"),
            )),
            Err(e) => Err(e.into_bus_error("remove the manifest")),
        }
    }

    /// Every current manifest, by name.
    pub async fn list(&self) -> Result<Vec<ComponentManifest>, BusError> {
        self.manifests
            .values_under(MANIFEST_KEY_PREFIX, Unreadable::Fails)
            .await
            .map_err(|e| e.into_bus_error("list the manifests"))
    }

    async fn all_versions(&self) -> Result<Vec<ComponentManifest>, BusError> {
        let keys = self
            .manifests
            .keys()
            .await
            .map_err(|e| e.into_bus_error("list the manifests"))?;
        let mut all = Vec::new();
        for key in keys {
            if let Some(name) = key.strip_prefix(MANIFEST_KEY_PREFIX) {
                all.extend(self.history(name).await?);
            }
        }
        Ok(all)
    }

    /// The current manifests, then every change as it happens, with
    /// [`ManifestEvent::CaughtUp`] once after the manifests that were there when the watch
    /// began. The stream ends if the watch breaks; watch again (changes are idempotent to
    /// apply). An entry this version cannot read (written by a newer one, or damaged) is
    /// logged and skipped, so it cannot hold up every change after it.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<ManifestEvent, BusError>> + use<>, BusError> {
        let watch = self
            .manifests
            .watch_with_progress()
            .await
            .map_err(|e| e.into_bus_error("watch the manifests"))?;
        let mut caught_up = false;
        Ok(watch.flat_map(move |seen| {
            let mut events = Vec::with_capacity(2);
            match seen {
                Ok(seen) => {
                    events.extend(
                        seen.change
                            .map(|change| Ok(ManifestEvent::Change(manifest_change(change)))),
                    );
                    if seen.caught_up && !caught_up {
                        caught_up = true;
                        events.push(Ok(ManifestEvent::CaughtUp));
                    }
                }
                Err(e) => events.push(Err(e.into_bus_error("watch the manifests"))),
            }
            futures::stream::iter(events)
        }))
    }
}

/// The manifest change a bucket change is.
fn manifest_change(change: Change<ComponentManifest>) -> ManifestChange {
    match change {
        Change::Put { value, .. } => ManifestChange::Put(value),
        Change::Removed { key } => {
            let name = key.strip_prefix(MANIFEST_KEY_PREFIX).unwrap_or(&key);
            ManifestChange::Removed(name.to_owned())
        }
    }
}

/// The object store's stream (`OBJ_<bucket>`), for reading chunks.
async fn chunk_stream(js: &jetstream::Context) -> Result<stream::Stream, BusError> {
    js.get_stream(names::object_stream(names::COMPONENTS_BUCKET))
        .await
        .map_err(|e| BusError::not_set_up("the component store", e))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Version `version` of `c`, with `bytes` and `values` (`KEY=VALUE`).
    fn version(version: u64, bytes: &str, values: &[&str]) -> ComponentManifest {
        ComponentManifest {
            name: "c".into(),
            version,
            digest: bytes.into(),
            size: 1,
            world: World::Listener,
            grants: Vec::new(),
            kv_read: Vec::new(),
            limits: Vec::new(),
            config: ComponentConfig::from_settings(values).expect("valid values"),
            recorded_at: String::new(),
            restored_from: None,
            configured_from: None,
        }
    }

    fn configured(of: &ComponentManifest, version: u64, values: &[&str]) -> ComponentManifest {
        ComponentManifest {
            version,
            config: ComponentConfig::from_settings(values).expect("valid values"),
            restored_from: None,
            configured_from: Some(of.version),
            ..of.clone()
        }
    }

    /// Rolls the last version of `history` back, appending the result; what it restored.
    fn roll_back(history: &mut Vec<ComponentManifest>) -> Option<u64> {
        let current = history.last().expect("a version").clone();
        let target = current.rollback_target(history)?.clone();
        history.push(target.restored_as(current.version + 1));
        Some(target.version)
    }

    #[test]
    fn a_rollback_after_a_configure_restores_the_values_before_it() {
        let v1 = version(1, "A", &["greeting=hello"]);
        let v2 = configured(&v1, 2, &["greeting=bonjour"]);
        let mut history = vec![v1, v2];
        assert_eq!(roll_back(&mut history), Some(1));
        let v3 = history.last().expect("v3");
        assert_eq!(
            (v3.digest.as_str(), v3.config.get("greeting")),
            ("A", Some("hello"))
        );
        // Nothing before the first upload.
        assert_eq!(roll_back(&mut history), None);
    }

    #[test]
    fn a_configure_of_a_rolled_back_version_is_undone_to_that_version_not_further() {
        // Upload A, upload B, roll back to A, configure: a rollback gives A with its old
        // values, and the one after it has nothing before A.
        let v1 = version(1, "A", &["k=a"]);
        let v2 = version(2, "B", &["k=b"]);
        let mut history = vec![v1, v2];
        assert_eq!(roll_back(&mut history), Some(1));
        let v3 = history.last().expect("v3").clone();
        history.push(configured(&v3, 4, &["k=changed"]));
        assert_eq!(roll_back(&mut history), Some(3));
        let v5 = history.last().expect("v5");
        assert_eq!((v5.digest.as_str(), v5.config.get("k")), ("A", Some("a")));
        assert_eq!(v5.restored_from, Some(1));
        assert_eq!(roll_back(&mut history), None);
    }

    #[test]
    fn a_rollback_of_an_upload_after_a_configure_goes_back_to_the_configured_values() {
        // Upload A, configure, upload B: back to A with the configured values, then to A as
        // uploaded.
        let v1 = version(1, "A", &["k=1"]);
        let v2 = configured(&v1, 2, &["k=2"]);
        let v3 = version(3, "B", &["k=2"]);
        let mut history = vec![v1, v2, v3];
        assert_eq!(roll_back(&mut history), Some(2));
        assert_eq!(history.last().expect("v4").config.get("k"), Some("2"));
        assert_eq!(roll_back(&mut history), Some(1));
        assert_eq!(history.last().expect("v5").config.get("k"), Some("1"));
    }
}
