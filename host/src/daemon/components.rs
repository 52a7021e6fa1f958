//! The components loaded on this host, kept in step with the cluster's manifests.
//!
//! The daemon feeds every [`ManifestChange`] it watches into [`LoadedComponents::apply`]. A
//! new version is fetched from the object store, checked against its digest, compiled (off
//! the async threads) and then swapped in with one map write: calls that already started
//! finish on the version they started with, every later call gets the new one. A removed
//! name is dropped, and its compiled code too once no name uses that digest.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use crate::bus::{ComponentManifest, ComponentStore, ManifestChange};
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
/// reason shows under `failed_components` in `sandbus hosts`.
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
    changed: watch::Sender<u64>,
}

impl LoadedComponents {
    /// An empty set that loads from `store` into `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>, store: ComponentStore) -> Self {
        Self {
            sandbox,
            store,
            loaded: RwLock::new(HashMap::new()),
            failed: std::sync::Mutex::new(HashMap::new()),
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

    /// Components that could not be loaded here: name → why.
    pub fn failures(&self) -> std::collections::BTreeMap<String, String> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, (_, why))| (name.clone(), why.clone()))
            .collect()
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
            ManifestChange::Put(manifest) => {
                let name = manifest.name.clone();
                let result = self.load(manifest.clone()).await;
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                match &result {
                    Ok(()) => {
                        failed.remove(&name);
                    }
                    Err(e) => {
                        failed.insert(name, (manifest, e.message.clone()));
                    }
                }
                drop(failed);
                if result.is_err() {
                    self.changed.send_modify(|n| *n += 1);
                }
                result
            }
            ManifestChange::Removed(name) => {
                self.failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                let removed = self
                    .loaded
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                if let Some(old) = removed {
                    tracing::info!(component = %name, version = old.manifest.version, "unloaded component");
                    self.forget_if_unused(old.prepared.digest());
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
            return Ok(());
        }
        let failure = |message: String| LoadFailure {
            name: manifest.name.clone(),
            version: manifest.version,
            message,
        };
        let spec = spec_of(&manifest).map_err(|e| failure(e.to_string()))?;
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
        self.changed.send_modify(|n| *n += 1);
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
