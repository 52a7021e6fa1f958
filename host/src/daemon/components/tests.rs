//! The loading rules, without a NATS server: component bytes from a store held in memory,
//! whose reads a test can hold back, loaded into a real sandbox.
//!
//! Needs the guests built by `scripts/build-guests.sh` into `target/guests` (or
//! `SANDBUS_GUESTS_DIR`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use super::{ComponentBytes, LoadedComponents, Unready};
use crate::bus::{BusError, BusErrorKind, ComponentManifest, ManifestChange};
use crate::sandbox::{Digest, Sandbox, SandboxConfig, World};

/// How long a test waits for what must happen at once.
const PATIENCE: Duration = Duration::from_secs(30);

/// A built guest fixture's bytes.
fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("SANDBUS_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guests"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "guest `{name}` is not built ({}: {e}): run scripts/build-guests.sh",
            path.display()
        )
    })
}

/// A sandbox of its own (so no test finds code another prepared), sharing one compile
/// cache on disk so each guest is compiled once for all the tests.
fn sandbox() -> Arc<Sandbox> {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    Arc::new(
        Sandbox::new(SandboxConfig {
            pooling: false,
            cache_dir: Some(cache.path().to_owned()),
            ..SandboxConfig::default()
        })
        .expect("a sandbox with the default configuration starts"),
    )
}

/// Component bytes by digest, whose reads are counted, can be held back until released, and
/// can fail once.
#[derive(Default)]
struct HeldStore {
    bytes: HashMap<String, Vec<u8>>,
    /// Reads of these digests wait for a permit.
    gates: HashMap<String, Arc<Semaphore>>,
    /// Digests whose next read fails.
    failing: Mutex<HashSet<String>>,
    /// How many reads started.
    reads: watch::Sender<usize>,
}

impl HeldStore {
    /// A store holding `guests`; reads of those named in `held` wait for [`Self::release`].
    fn with(guests: &[&str], held: &[&str]) -> (Arc<Self>, HashMap<String, String>) {
        let mut store = Self::default();
        let mut digests = HashMap::new();
        for name in guests {
            let bytes = guest(name);
            let digest = Digest::of(&bytes).as_str().to_owned();
            if held.contains(name) {
                store
                    .gates
                    .insert(digest.clone(), Arc::new(Semaphore::new(0)));
            }
            store.bytes.insert(digest.clone(), bytes);
            digests.insert((*name).to_owned(), digest);
        }
        (Arc::new(store), digests)
    }

    /// Lets every read of `digest` through, now and later.
    fn release(&self, digest: &str) {
        self.gates[digest].add_permits(1);
    }

    fn fail_next_read_of(&self, digest: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.to_owned());
    }

    fn reads(&self) -> usize {
        *self.reads.borrow()
    }

    /// Waits until `n` reads have started.
    async fn started(&self, n: usize) {
        let mut reads = self.reads.subscribe();
        tokio::time::timeout(PATIENCE, reads.wait_for(|r| *r >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} reads started", self.reads()))
            .expect("the store lives");
    }
}

#[async_trait::async_trait]
impl ComponentBytes for Arc<HeldStore> {
    async fn bytes(&self, digest: &str, _max: u64) -> Result<Vec<u8>, BusError> {
        self.reads.send_modify(|n| *n += 1);
        if let Some(gate) = self.gates.get(digest) {
            let _pass = gate.acquire().await;
        }
        if self
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest)
        {
            return Err(BusError::new(
                BusErrorKind::Unavailable,
                "the store is away",
            ));
        }
        self.bytes
            .get(digest)
            .cloned()
            .ok_or_else(|| BusError::new(BusErrorKind::NotFound, "no such bytes"))
    }
}

fn manifest(name: &str, version: u64, digest: &str) -> ComponentManifest {
    ComponentManifest {
        name: name.to_owned(),
        version,
        digest: digest.to_owned(),
        size: 0,
        world: World::Listener,
        grants: Vec::new(),
        kv_read: Vec::new(),
        limits: Vec::new(),
        config: Default::default(),
        recorded_at: "2026-01-01T00:00:00Z".to_owned(),
        restored_from: None,
        configured_from: None,
    }
}

fn put(name: &str, version: u64, digest: &str) -> ManifestChange {
    ManifestChange::Put(manifest(name, version, digest))
}

/// Waits until every load spawned on `tasks` has ended.
async fn settled(tasks: &TaskTracker) {
    tasks.close();
    tokio::time::timeout(PATIENCE, tasks.wait())
        .await
        .expect("the loads end");
}

/// Waits until `name` is loaded at `version`.
async fn loaded(components: &LoadedComponents, name: &str, version: u64) {
    let mut changes = components.changes();
    let found = tokio::time::timeout(PATIENCE, async {
        while components.get(name).map(|c| c.manifest.version) != Some(version) {
            changes.changed().await.expect("the components live");
        }
    })
    .await;
    assert!(found.is_ok(), "`{name}` version {version} did not load");
}

#[tokio::test]
async fn a_later_version_wins_over_an_earlier_one_whose_load_ends_later() {
    let (store, digests) = HeldStore::with(&["noop-listener", "echo-listener"], &["noop-listener"]);
    let components = Arc::new(LoadedComponents::new(sandbox(), store.clone()));
    let tasks = TaskTracker::new();
    components
        .apply_in_background(put("a", 1, &digests["noop-listener"]), &tasks)
        .await;
    components
        .apply_in_background(put("a", 2, &digests["echo-listener"]), &tasks)
        .await;
    loaded(&components, "a", 2).await;
    store.release(&digests["noop-listener"]);
    settled(&tasks).await;
    let a = components.get("a").expect("`a` is loaded");
    assert_eq!(a.manifest.version, 2);
    assert_eq!(a.prepared.digest().as_str(), digests["echo-listener"]);
    assert!(components.not_ready().is_empty());
}

#[tokio::test]
async fn a_removal_during_a_load_leaves_nothing_loaded() {
    let (store, digests) = HeldStore::with(&["noop-listener"], &["noop-listener"]);
    let components = Arc::new(LoadedComponents::new(sandbox(), store.clone()));
    let tasks = TaskTracker::new();
    components
        .apply_in_background(put("a", 1, &digests["noop-listener"]), &tasks)
        .await;
    store.started(1).await;
    assert_eq!(components.unready("a"), Unready::Compiling(1));
    components
        .apply_in_background(ManifestChange::Removed("a".into()), &tasks)
        .await;
    store.release(&digests["noop-listener"]);
    settled(&tasks).await;
    assert!(components.get("a").is_none());
    assert_eq!(components.unready("a"), Unready::Unknown);
    assert!(components.not_ready().is_empty());
}

#[tokio::test]
async fn loads_of_different_components_wait_on_the_store_at_the_same_time() {
    let held = ["noop-listener", "echo-listener"];
    let (store, digests) = HeldStore::with(&held, &held);
    let components = Arc::new(LoadedComponents::new(sandbox(), store.clone()));
    let tasks = TaskTracker::new();
    components
        .apply_in_background(put("a", 1, &digests["noop-listener"]), &tasks)
        .await;
    components
        .apply_in_background(put("b", 1, &digests["echo-listener"]), &tasks)
        .await;
    store.started(2).await;
    for guest in held {
        store.release(&digests[guest]);
    }
    settled(&tasks).await;
    assert_eq!(components.names(), ["a", "b"]);
}

#[tokio::test]
async fn names_with_the_same_bytes_read_and_compile_them_once() {
    let (store, digests) = HeldStore::with(&["noop-listener"], &[]);
    let sandbox = sandbox();
    let components = Arc::new(LoadedComponents::new(sandbox.clone(), store.clone()));
    let tasks = TaskTracker::new();
    let names: Vec<String> = (0..20).map(|i| format!("listener-{i:02}")).collect();
    for name in &names {
        components
            .apply_in_background(put(name, 1, &digests["noop-listener"]), &tasks)
            .await;
    }
    settled(&tasks).await;
    assert_eq!(components.names(), names);
    assert_eq!(store.reads(), 1, "the bytes are read once");
    assert_eq!(sandbox.compiled_count(), 1);
    for name in &names {
        let loaded = components.get(name).expect("loaded");
        assert_eq!(
            loaded.prepared.name(),
            name,
            "each name keeps its own policy"
        );
    }
}

#[tokio::test]
async fn a_failed_load_shows_as_failed_and_is_retried_until_it_loads() {
    let (store, digests) = HeldStore::with(&["noop-listener"], &[]);
    store.fail_next_read_of(&digests["noop-listener"]);
    let components = LoadedComponents::new(sandbox(), store.clone());
    let failure = components
        .apply(put("a", 1, &digests["noop-listener"]))
        .await
        .expect_err("the store is away");
    assert!(failure.message.contains("the store is away"), "{failure}");
    assert!(matches!(components.unready("a"), Unready::Failed(1, _)));
    components.retry_failed().await;
    assert_eq!(components.get("a").map(|a| a.manifest.version), Some(1));
    assert!(components.not_ready().is_empty());
}

#[tokio::test]
async fn a_retry_of_a_failed_version_never_replaces_a_newer_one() {
    let (store, digests) = HeldStore::with(&["noop-listener", "echo-listener"], &["echo-listener"]);
    store.fail_next_read_of(&digests["noop-listener"]);
    let components = Arc::new(LoadedComponents::new(sandbox(), store.clone()));
    let _ = components
        .apply(put("a", 1, &digests["noop-listener"]))
        .await;
    let tasks = TaskTracker::new();
    components
        .apply_in_background(put("a", 2, &digests["echo-listener"]), &tasks)
        .await;
    // Version 1 would load now; version 2 is newer and still loading.
    components.retry_failed().await;
    store.release(&digests["echo-listener"]);
    settled(&tasks).await;
    assert_eq!(components.get("a").map(|a| a.manifest.version), Some(2));
    assert!(components.not_ready().is_empty());
}
