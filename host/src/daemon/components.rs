//! The components loaded on this host, kept in step with the cluster's manifests.
//!
//! The daemon feeds every [`ManifestChange`] it watches into [`LoadedComponents::apply`]. A
//! new version is fetched from the object store, checked against its digest, compiled (off
//! the async threads) and then swapped in with one map write: calls that already started
//! finish on the version they started with, every later call gets the new one, and until
//! then the version before keeps answering. A removed name is dropped, and its compiled
//! code too once no name uses that digest.
//!
//! An upload records a manifest without compiling it, so every host compiles in the
//! background; what is compiling or failed here is [`LoadedComponents::not_ready`], which
//! the heartbeat publishes (at once on every change) for `sandbus ls`, `hosts` and
//! `upload --wait`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::context::ComponentSource;
use crate::bus::{ComponentManifest, ComponentStore, LoadState, ManifestChange, NotReady};
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
    })
}

/// Every component loaded on this host, by name.
pub struct LoadedComponents {
    sandbox: Arc<Sandbox>,
    store: ComponentStore,
    loaded: RwLock<HashMap<String, Arc<LoadedComponent>>>,
    /// Manifests that could not be loaded, with why; retried by [`Self::retry_failed`].
    failed: std::sync::Mutex<HashMap<String, (ComponentManifest, String)>>,
    /// Versions being fetched and compiled now: name → version.
    compiling: std::sync::Mutex<HashMap<String, u64>>,
    changed: watch::Sender<u64>,
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
    /// An empty set that loads from `store` into `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>, store: ComponentStore) -> Self {
        Self {
            sandbox,
            store,
            loaded: RwLock::new(HashMap::new()),
            failed: std::sync::Mutex::new(HashMap::new()),
            compiling: std::sync::Mutex::new(HashMap::new()),
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

    /// Component versions this host has seen but cannot run yet: compiling, or failed and
    /// why. What the heartbeat publishes as the host's `not_ready`.
    pub fn not_ready(&self) -> BTreeMap<String, NotReady> {
        let mut not_ready: BTreeMap<String, NotReady> = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
        for (name, &version) in self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
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
        if let Some(&version) = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Unready::Compiling(version);
        }
        match self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            Some((manifest, why)) => Unready::Failed(manifest.version, why.clone()),
            None => Unready::Unknown,
        }
    }

    /// Tries again to load the manifests that failed (the object store was unreachable, the
    /// pool was full...). The daemon calls this every few seconds.
    pub async fn retry_failed(&self) {
        let pending: Vec<ComponentManifest> = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(m, _)| m.clone())
            .collect();
        for manifest in pending {
            if let Err(e) = self.apply(ManifestChange::Put(manifest)).await {
                tracing::warn!(error = %e, "still cannot load a component; will retry");
            }
        }
    }

    /// Applies one manifest change. Loading the same version again does nothing. A failed
    /// load is remembered and retried by [`Self::retry_failed`] until it works or the
    /// manifest changes.
    pub async fn apply(&self, change: ManifestChange) -> Result<(), LoadFailure> {
        match change {
            ManifestChange::Put(manifest) => self.load(manifest).await,
            ManifestChange::Removed(name) => {
                let was_failed = self
                    .failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name)
                    .is_some();
                let removed = self
                    .loaded
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                if let Some(old) = &removed {
                    tracing::info!(component = %name, version = old.manifest.version, "unloaded component");
                    self.forget_if_unused(old.prepared.digest());
                }
                if was_failed || removed.is_some() {
                    self.changed.send_modify(|n| *n += 1);
                }
                Ok(())
            }
        }
    }

    async fn load(&self, manifest: ComponentManifest) -> Result<(), LoadFailure> {
        if let Some(current) = self.get(&manifest.name)
            && current.manifest == manifest
        {
            self.failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&manifest.name);
            return Ok(());
        }
        // Shown as compiling until this load ends (a retry of a failed version stays shown
        // as failed meanwhile: it mostly fails again at once).
        let retry = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&manifest.name)
            .is_some_and(|(failed, _)| *failed == manifest);
        if !retry {
            self.compiling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(manifest.name.clone(), manifest.version);
            self.changed.send_modify(|n| *n += 1);
        }
        let result = self.compile_and_swap(&manifest).await;
        // The outcome is recorded before the compile stops showing, so whoever looks in
        // between sees one or the other, never neither.
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(()) => failed.remove(&manifest.name),
            Err(e) => failed.insert(manifest.name.clone(), (manifest.clone(), e.message.clone())),
        };
        drop(failed);
        let mut compiling = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if compiling.get(&manifest.name) == Some(&manifest.version) {
            compiling.remove(&manifest.name);
        }
        drop(compiling);
        self.changed.send_modify(|n| *n += 1);
        result
    }

    /// Fetches, compiles and swaps in `manifest`'s version (the previous one answers calls
    /// until the swap).
    async fn compile_and_swap(&self, manifest: &ComponentManifest) -> Result<(), LoadFailure> {
        let failure = |message: String| LoadFailure {
            name: manifest.name.clone(),
            version: manifest.version,
            message,
        };
        let spec = spec_of(manifest).map_err(|e| failure(e.to_string()))?;
        let bytes = self
            .store
            .bytes(&manifest.digest, self.sandbox.config().max_component_size)
            .await
            .map_err(|e| failure(e.to_string()))?;
        let sandbox = self.sandbox.clone();
        let prepared = tokio::task::spawn_blocking(move || sandbox.prepare(spec, &bytes))
            .await
            .map_err(|e| failure(format!("the compile task failed: {e}")))?
            .map_err(|e| failure(e.to_string()))?;
        let loaded = Arc::new(LoadedComponent {
            manifest: manifest.clone(),
            prepared: Arc::new(prepared),
        });
        let previous = self
            .loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(manifest.name.clone(), loaded);
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
