//! The components loaded on this host, kept in step with the cluster's manifests.
//!
//! The daemon feeds every [`ManifestChange`] it watches into
//! [`LoadedComponents::apply_in_background`], in the watch's order. A new version is fetched
//! from the object store, checked against its digest, compiled (off the async threads) and
//! then swapped in with one map write: calls that already started finish on the version they
//! started with, every later call gets the new one, and until then the version before keeps
//! answering. A removed name is dropped, and its compiled code too once no name uses that
//! digest.
//!
//! Loads run a few at a time (a restart loads every component; `pacing.rs` sizes how many
//! to the machine), so they may end in another order than they started. Each change of a
//! name takes a ticket, and a load records its outcome only while its ticket is still its
//! name's newest: a later version wins over an earlier one whose load ends later, and a
//! removal during a load leaves nothing loaded. Names with the same bytes read and compile
//! them once.
//!
//! An upload records a manifest without compiling it, so every host compiles in the
//! background; what is compiling or failed here is [`LoadedComponents::not_ready`], which
//! the heartbeat publishes (at once on every change) for `sandbus ls`, `hosts` and
//! `upload --wait`.

mod pacing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use self::pacing::{DigestTurns, LoadLimits};
use super::context::ComponentSource;
use crate::bus::{
    BusError, ComponentManifest, ComponentStore, LoadState, ManifestChange, NotReady,
};
use crate::component_config::ComponentConfig;
use crate::grant::{ComponentPolicy, PolicyError};
use crate::sandbox::{ComponentSpec, Digest, PreparedComponent, Sandbox};

/// One component as loaded here: its manifest and its compiled, pre-linked code.
pub struct LoadedComponent {
    /// The manifest version that is loaded.
    pub manifest: ComponentManifest,
    /// The compiled component.
    pub prepared: Arc<PreparedComponent>,
}

/// Why a manifest could not be turned into a runnable component.
#[derive(Debug, thiserror::Error)]
#[error("component `{name}` version {version}: {message}")]
pub struct LoadFailure {
    /// The component.
    pub name: String,
    /// The manifest version.
    pub version: u64,
    /// What went wrong.
    pub message: String,
}

/// Builds the sandbox spec of a manifest: its world, grants and limits, through the one
/// policy check every entry point runs ([`ComponentPolicy::check`]). A manifest written by
/// hand (or by an older version) with a grant into a reserved space is refused here, and the
/// reason shows under `not_ready` in `sandbus hosts --json`.
pub fn spec_of(manifest: &ComponentManifest) -> Result<ComponentSpec, PolicyError> {
    let policy = ComponentPolicy::check(
        &manifest.name,
        manifest.world,
        &manifest.grants,
        &manifest.kv_read,
        &manifest.limits,
    )?;
    Ok(ComponentSpec {
        name: manifest.name.clone(),
        expect: Some(manifest.world),
        grants: policy.publish,
        kv_read: policy.kv_read,
        limits: policy.limits,
        // A manifest read from the bucket may have been written by hand: its values pass
        // the same checks as an upload's.
        config: ComponentConfig::from_map(manifest.config.as_map().clone())?,
    })
}

/// Where a load reads a component's bytes: the cluster's [`ComponentStore`] in the daemon,
/// a fixed set in tests.
#[async_trait::async_trait]
pub trait ComponentBytes: Send + Sync {
    /// The bytes stored under `digest`, checked against it; at most `max` bytes.
    async fn bytes(&self, digest: &str, max: u64) -> Result<Vec<u8>, BusError>;
}

#[async_trait::async_trait]
impl ComponentBytes for ComponentStore {
    async fn bytes(&self, digest: &str, max: u64) -> Result<Vec<u8>, BusError> {
        ComponentStore::bytes(self, digest, max).await
    }
}

/// Every component loaded on this host, by name.
pub struct LoadedComponents {
    sandbox: Arc<Sandbox>,
    source: Arc<dyn ComponentBytes>,
    loaded: RwLock<HashMap<String, Arc<LoadedComponent>>>,
    /// What each name should be and how its loads stand; one lock, so that a load's outcome,
    /// a newer change and a removal happen in one order.
    book: Mutex<LoadBook>,
    /// How many loads run at once, and how many of them compile.
    limits: LoadLimits,
    /// Names with the same bytes load one after the other ([`DigestTurns`]).
    turns: DigestTurns,
    changed: watch::Sender<u64>,
}

/// What this host knows of every name's loads.
#[derive(Default)]
struct LoadBook {
    /// Numbers the changes, newest highest: a load records its outcome only while its
    /// ticket is still the newest of its name, so a later version always wins over an
    /// earlier one whose load ends later, and a removal during a load leaves nothing.
    last_ticket: u64,
    /// The newest change of every name not removed: its ticket and manifest.
    wanted: HashMap<String, (u64, ComponentManifest)>,
    /// Manifests that could not be loaded, with why; retried by
    /// [`LoadedComponents::retry_failed`].
    failed: HashMap<String, (ComponentManifest, String)>,
    /// Versions being fetched and compiled now: name → version.
    compiling: HashMap<String, u64>,
}

impl LoadBook {
    fn next_ticket(&mut self) -> u64 {
        self.last_ticket += 1;
        self.last_ticket
    }

    /// Whether `load` is still the newest change of its name.
    fn is_newest(&self, load: &Load) -> bool {
        self.wanted
            .get(&load.manifest.name)
            .is_some_and(|(ticket, _)| *ticket == load.ticket)
    }
}

/// One manifest to load, under the ticket of the change that asked for it.
struct Load {
    ticket: u64,
    manifest: ComponentManifest,
}

/// Where a component that is not ready stands on this host, as callers that wanted it are
/// told ([`LoadedComponents::unready`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// Version `0` is compiling here.
    Compiling(u64),
    /// Version `0` failed to load here, for reason `1`.
    Failed(u64, String),
    /// This host has no manifest of that name.
    Unknown,
}

impl LoadedComponents {
    /// An empty set that loads from `source` (the cluster's [`ComponentStore`] in the
    /// daemon) into `sandbox`, a few at once (sized to
    /// this machine's cores).
    pub fn new(sandbox: Arc<Sandbox>, source: impl ComponentBytes + 'static) -> Self {
        Self {
            sandbox,
            source: Arc::new(source),
            loaded: RwLock::new(HashMap::new()),
            book: Mutex::new(LoadBook::default()),
            limits: LoadLimits::of_this_machine(),
            turns: DigestTurns::default(),
            changed: watch::channel(0).0,
        }
    }

    /// The component loaded under `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedComponent>> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Names loaded here, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Loaded name → manifest version.
    pub fn versions(&self) -> std::collections::BTreeMap<String, u64> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, c)| (name.clone(), c.manifest.version))
            .collect()
    }

    /// A receiver that changes whenever a component is loaded, swapped or removed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn book(&self) -> MutexGuard<'_, LoadBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Component versions this host has seen but cannot run yet: compiling, or failed and
    /// why. What the heartbeat publishes as the host's `not_ready`.
    pub fn not_ready(&self) -> BTreeMap<String, NotReady> {
        let book = self.book();
        let mut not_ready: BTreeMap<String, NotReady> = book
            .failed
            .iter()
            .map(|(name, (manifest, why))| {
                let failed = NotReady {
                    state: LoadState::Failed,
                    version: manifest.version,
                    reason: Some(why.clone()),
                };
                (name.clone(), failed)
            })
            .collect();
        // A compile of a newer version says more than the failure of an older one.
        for (name, &version) in &book.compiling {
            if not_ready.get(name).is_none_or(|n| n.version < version) {
                let compiling = NotReady {
                    state: LoadState::Compiling,
                    version,
                    reason: None,
                };
                not_ready.insert(name.clone(), compiling);
            }
        }
        not_ready
    }

    /// Why `name` is not loaded here: compiling, failed, or unknown to this host.
    pub fn unready(&self, name: &str) -> Unready {
        let book = self.book();
        if let Some(&version) = book.compiling.get(name) {
            return Unready::Compiling(version);
        }
        match book.failed.get(name) {
            Some((manifest, why)) => Unready::Failed(manifest.version, why.clone()),
            None => Unready::Unknown,
        }
    }

    /// Tries again to load the manifests that failed (the object store was unreachable, the
    /// pool was full...), one after the other. The daemon calls this every few seconds. A
    /// failed version that a newer change replaced meanwhile is not tried again.
    pub async fn retry_failed(&self) {
        let pending: Vec<ComponentManifest> = self
            .book()
            .failed
            .values()
            .map(|(m, _)| m.clone())
            .collect();
        for manifest in pending {
            let Some(load) = self.record_retry(manifest) else {
                continue;
            };
            if let Err(e) = self.run(load).await {
                tracing::warn!(error = %e, "still cannot load a component; will retry");
            }
        }
    }

    /// Applies one manifest change and waits for its load, if it needs one. Loading the
    /// same version again does nothing. A failed load is remembered and retried by
    /// [`Self::retry_failed`] until it works or the manifest changes. A load that a newer
    /// change of its name overtook records nothing and returns `Ok`.
    pub async fn apply(&self, change: ManifestChange) -> Result<(), LoadFailure> {
        match self.record(change) {
            Some(load) => self.run(load).await,
            None => Ok(()),
        }
    }

    /// Applies one manifest change as [`Self::apply`] does, but runs its load on a task of
    /// its own, spawned on `tasks`: returns once the change is recorded and its load
    /// started, after waiting for a free slot (a few loads per core run at once). Changes must come in
    /// the order they happened (a watch's order): the newest change of a name wins, whichever
    /// load ends last. A failed load is logged, and retried as with [`Self::apply`].
    pub async fn apply_in_background(
        self: &Arc<Self>,
        change: ManifestChange,
        tasks: &TaskTracker,
    ) {
        let Some(load) = self.record(change) else {
            return;
        };
        let slot = self.limits.load_slot().await;
        let components = self.clone();
        tasks.spawn(async move {
            if let Err(e) = components.run(load).await {
                tracing::error!(error = %e, "could not load a component");
            }
            drop(slot);
        });
    }

    /// Records `change` as the newest of its name: a removal is done at once, a put returns
    /// the load it needs (`None` when that version is loaded or loading already).
    fn record(&self, change: ManifestChange) -> Option<Load> {
        let manifest = match change {
            ManifestChange::Put(manifest) => manifest,
            ManifestChange::Removed(name) => {
                self.remove(&name);
                return None;
            }
        };
        let mut book = self.book();
        let name = manifest.name.clone();
        let ticket = book.next_ticket();
        if self.get(&name).is_some_and(|c| c.manifest == manifest) {
            // Loaded already: whatever an older change started is overtaken.
            let failed = book.failed.remove(&name).is_some();
            let compiling = book.compiling.remove(&name).is_some();
            book.wanted.insert(name, (ticket, manifest));
            drop(book);
            if failed || compiling {
                self.notify();
            }
            return None;
        }
        if book.compiling.contains_key(&name)
            && book.wanted.get(&name).is_some_and(|(_, w)| *w == manifest)
        {
            return None;
        }
        // Shown as compiling until this load ends (a retry of a failed version stays shown
        // as failed meanwhile: it mostly fails again at once).
        let retry = book.failed.get(&name).is_some_and(|(f, _)| *f == manifest);
        if !retry {
            book.compiling.insert(name.clone(), manifest.version);
        }
        book.wanted.insert(name, (ticket, manifest.clone()));
        drop(book);
        if !retry {
            self.notify();
        }
        Some(Load { ticket, manifest })
    }

    /// The load that retries `manifest`, if it failed and is still its name's newest change.
    fn record_retry(&self, manifest: ComponentManifest) -> Option<Load> {
        let mut book = self.book();
        let still_failed = book
            .failed
            .get(&manifest.name)
            .is_some_and(|(f, _)| *f == manifest);
        let still_wanted = book
            .wanted
            .get(&manifest.name)
            .is_some_and(|(_, w)| *w == manifest);
        if !still_failed || !still_wanted {
            return None;
        }
        let ticket = book.next_ticket();
        book.wanted
            .insert(manifest.name.clone(), (ticket, manifest.clone()));
        Some(Load { ticket, manifest })
    }

    /// Forgets `name`: unloaded now, and a load of it still running records nothing.
    fn remove(&self, name: &str) {
        let mut book = self.book();
        book.wanted.remove(name);
        let failed = book.failed.remove(name).is_some();
        let compiling = book.compiling.remove(name).is_some();
        let removed = self
            .loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        drop(book);
        if let Some(old) = &removed {
            tracing::info!(component = %name, version = old.manifest.version, "unloaded component");
            self.forget_if_unused(old.prepared.digest());
        }
        if failed || compiling || removed.is_some() {
            self.notify();
        }
    }

    /// Runs `load` and records its outcome, unless a newer change of its name overtook it.
    async fn run(&self, load: Load) -> Result<(), LoadFailure> {
        let prepared = self.prepare(&load).await;
        self.finish(load, prepared)
    }

    /// Fetches, checks and compiles `load`'s version; `None` when a newer change of its name
    /// overtook it first. Names with the same bytes take turns: the first reads and compiles
    /// them, the ones after it reuse that code without reading the bytes again.
    async fn prepare(&self, load: &Load) -> Result<Option<PreparedComponent>, String> {
        let manifest = &load.manifest;
        let spec = spec_of(manifest).map_err(|e| e.to_string())?;
        let digest = Digest::from_hex(&manifest.digest);
        let _turn = self.turns.take(&digest).await;
        if !self.book().is_newest(load) {
            return Ok(None);
        }
        if let Some(prepared) = self.sandbox.prepare_known(spec.clone(), &digest) {
            return prepared.map(Some).map_err(|e| e.to_string());
        }
        let bytes = self
            .source
            .bytes(&manifest.digest, self.sandbox.config().max_component_size)
            .await
            .map_err(|e| e.to_string())?;
        if !self.book().is_newest(load) {
            return Ok(None);
        }
        let _core = self.limits.compile_slot().await;
        let sandbox = self.sandbox.clone();
        tokio::task::spawn_blocking(move || sandbox.prepare(spec, &bytes))
            .await
            .map_err(|e| format!("the compile task failed: {e}"))?
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Records what `load` came to: swapped in (the previous version answered calls until
    /// now) or failed; nothing when a newer change of its name overtook it.
    fn finish(
        &self,
        load: Load,
        outcome: Result<Option<PreparedComponent>, String>,
    ) -> Result<(), LoadFailure> {
        let outcome = match outcome {
            Ok(None) => return Ok(()),
            Ok(Some(prepared)) => Ok(prepared),
            Err(why) => Err(why),
        };
        let mut book = self.book();
        if !book.is_newest(&load) {
            tracing::debug!(component = %load.manifest.name, version = load.manifest.version, "a newer change overtook this load");
            return Ok(());
        }
        let manifest = load.manifest;
        let name = manifest.name.clone();
        // The outcome is recorded under the same lock as the compile stops showing, so
        // whoever looks sees one or the other, never neither.
        book.compiling.remove(&name);
        let previous = match outcome {
            Ok(prepared) => {
                book.failed.remove(&name);
                let loaded = Arc::new(LoadedComponent {
                    manifest: manifest.clone(),
                    prepared: Arc::new(prepared),
                });
                self.loaded
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.clone(), loaded)
            }
            Err(why) => {
                book.failed.insert(name, (manifest.clone(), why.clone()));
                drop(book);
                self.notify();
                return Err(LoadFailure {
                    name: manifest.name,
                    version: manifest.version,
                    message: why,
                });
            }
        };
        drop(book);
        self.notify();
        tracing::info!(
            component = %manifest.name,
            version = manifest.version,
            digest = %manifest.digest,
            swapped_from = previous.as_ref().map(|p| p.manifest.version),
            "loaded component"
        );
        if let Some(previous) = previous
            && previous.prepared.digest().as_str() != manifest.digest
        {
            self.forget_if_unused(previous.prepared.digest());
        }
        Ok(())
    }

    fn forget_if_unused(&self, digest: &Digest) {
        let used = self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|c| c.prepared.digest() == digest);
        if !used {
            self.sandbox.evict(digest);
        }
    }
}

/// The component loaded under `name`, waiting up to `patience` while it is compiling
/// here (a caller that comes right after an upload gets it once it is ready rather than
/// a refusal). `Err` says why it is not there: still compiling after `patience`, failed,
/// or unknown.
pub async fn ready(
    components: &dyn ComponentSource,
    name: &str,
    patience: Duration,
) -> Result<Arc<LoadedComponent>, Unready> {
    let mut changes = components.changes();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(loaded) = components.get(name) {
            return Ok(loaded);
        }
        let why = components.unready(name);
        if !matches!(why, Unready::Compiling(_)) {
            return Err(why);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(why),
            changed = changes.changed() => if changed.is_err() { return Err(why) },
        }
    }
}
