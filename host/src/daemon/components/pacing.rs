//! How the loads of one host share it: how many run at once ([`LoadLimits`]), and names
//! with the same bytes taking turns ([`DigestTurns`]) so the bytes are read and compiled
//! once.
//!
//! A restart loads every component at once, ten thousand of them on a big host. One at a
//! time, most of a load's time is spent waiting: four requests to the object store, then a
//! core to deserialize the compiled code. A few loads per core keep both the server and the
//! cores busy without flooding either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::sandbox::Digest;

/// Loads under way at once per core (reading bytes, waiting for a core, compiling).
const LOADS_PER_CORE: usize = 4;
/// Most loads under way at once, however many cores: each holds its component's bytes.
const MAX_LOADS: usize = 32;

/// How many loads run at once, and how many of them compile.
pub(super) struct LoadLimits {
    /// Loads under way: [`LOADS_PER_CORE`] per core, at least 4, at most [`MAX_LOADS`].
    loads: Arc<Semaphore>,
    /// Compiles (or loads from the compile cache) at once: one per core.
    compiles: Semaphore,
}

impl LoadLimits {
    /// Sized to the cores this process may use.
    pub(super) fn of_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::for_cores(cores)
    }

    fn for_cores(cores: usize) -> Self {
        Self {
            loads: Arc::new(Semaphore::new(
                cores.saturating_mul(LOADS_PER_CORE).clamp(4, MAX_LOADS),
            )),
            compiles: Semaphore::new(cores.max(1)),
        }
    }

    /// A slot for one load, held until it ends; waits while every slot is taken.
    pub(super) async fn load_slot(&self) -> Option<OwnedSemaphorePermit> {
        // Never closed: `None` cannot happen, and would only lift the bound.
        self.loads.clone().acquire_owned().await.ok()
    }

    /// A core to compile on, held while compiling; waits while every core compiles.
    pub(super) async fn compile_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.compiles.acquire().await.ok()
    }
}

/// One turn per digest: loads of names with the same bytes run one after the other, so
/// the first reads and compiles the bytes and the ones after it find the code prepared
/// ([`Sandbox::prepare_known`](crate::sandbox::Sandbox::prepare_known)).
#[derive(Default)]
pub(super) struct DigestTurns {
    /// The digests some load holds or waits for; an entry goes when no one does.
    turns: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl DigestTurns {
    /// Waits for `digest`'s turn; the turn passes on when the returned [`Turn`] drops.
    pub(super) async fn take(&self, digest: &Digest) -> Turn<'_> {
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .clone();
        Turn {
            turns: self,
            digest: digest.clone(),
            guard: Some(turn.lock_owned().await),
        }
    }
}

/// A load's turn at one digest ([`DigestTurns::take`]).
pub(super) struct Turn<'a> {
    turns: &'a DigestTurns,
    digest: Digest,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = self
            .turns
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.guard = None;
        // Under the map's lock no one can take a new handle: one left is the map's own.
        if turns
            .get(&self.digest)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            turns.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_of_two_cores_loads_eight_at_once_and_compiles_two() {
        let limits = LoadLimits::for_cores(2);
        assert_eq!(limits.loads.available_permits(), 8);
        assert_eq!(limits.compiles.available_permits(), 2);
    }

    #[test]
    fn a_big_machine_loads_no_more_than_the_ceiling_at_once() {
        assert_eq!(
            LoadLimits::for_cores(64).loads.available_permits(),
            MAX_LOADS
        );
        assert_eq!(LoadLimits::for_cores(1).loads.available_permits(), 4);
    }

    #[tokio::test]
    async fn a_digest_is_forgotten_once_no_load_holds_or_waits_for_its_turn() {
        let turns = DigestTurns::default();
        let digest = Digest::of(b"bytes");
        let first = turns.take(&digest).await;
        let second = {
            let turns = &turns;
            let digest = digest.clone();
            async move { turns.take(&digest).await }
        };
        let mut second = Box::pin(second);
        assert!(
            futures::FutureExt::now_or_never(&mut second).is_none(),
            "the second load waits for the first"
        );
        drop(first);
        let second = second.await;
        assert_eq!(
            turns
                .turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            1
        );
        drop(second);
        assert!(
            turns
                .turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }
}
