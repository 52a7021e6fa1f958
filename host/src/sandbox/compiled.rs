//! The compiled components of a sandbox: what it compiled (kept in memory by digest, and on
//! disk in the [`ArtifactCache`]) and what its compile workers refused (remembered, so that
//! the same bytes are not compiled again under the same budget).
//!
//! [`Sandbox::prepare`](super::Sandbox::prepare) asks here for the code of a component's
//! bytes: memory first, then the verified disk cache, then Cranelift, in this process or in a
//! worker ([`CompileMode`](super::CompileMode)).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::compile::Workers;
use super::{ArtifactCache, Digest, LoadError, LoadErrorKind};

/// How long bytes a worker refused for the budget are refused without compiling again: long
/// enough that a daemon retrying a failed load every few seconds does not spend a budget
/// each time, short enough that a compile slowed or crowded by a busy moment gets another
/// chance.
const REFUSED_FOR_BUDGET: Duration = Duration::from_secs(600);

/// Most refused digests a sandbox remembers ([`CompiledComponents::refused`]); past it, the
/// oldest refusal is forgotten.
const MAX_REFUSED: usize = 1024;

/// A compile refusal, remembered ([`CompiledComponents::refused`]).
struct Refusal {
    error: LoadError,
    at: Instant,
    until: Option<Instant>,
}

/// The compiled code of a sandbox, by content digest, and the digests its workers refused.
pub(super) struct CompiledComponents {
    engine: Engine,
    in_memory: Mutex<HashMap<Digest, Component>>,
    cache: Option<ArtifactCache>,
    /// The compile workers, when compiling under a budget.
    workers: Option<Workers>,
    /// Digests a worker refused (over the budget, or not compilable), why, when, and until
    /// when (`None`: for good): the same bytes under the same budget are refused again at
    /// once instead of compiled again, so a daemon retrying a failed load does not spend a
    /// budget on it every few seconds. A refusal for the budget, which a busy or crowded
    /// moment may have caused, lasts [`REFUSED_FOR_BUDGET`]; one for bytes that do not
    /// compile lasts until the daemon restarts. A host's own trouble is never remembered.
    refused: Mutex<HashMap<Digest, Refusal>>,
}

impl CompiledComponents {
    /// Nothing compiled yet; compiles for `engine`, caching in `cache` and compiling in
    /// `workers` when given.
    pub(super) fn new(
        engine: Engine,
        cache: Option<ArtifactCache>,
        workers: Option<Workers>,
    ) -> Self {
        Self {
            engine,
            in_memory: Mutex::new(HashMap::new()),
            cache,
            workers,
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the compiled code of `digest` from memory (the disk cache keeps it).
    pub(super) fn evict(&self, digest: &Digest) {
        self.in_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }

    /// How many compiled components are held in memory.
    pub(super) fn len(&self) -> usize {
        self.in_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The compiled code of `bytes` (whose digest is `digest`): from memory, from the disk
    /// cache, or compiled now, in this process or in a worker under the compile budget.
    pub(super) fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<Component, LoadError> {
        if let Some(component) = self.remembered(digest) {
            return Ok(component);
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.load(&self.engine, digest).1);
        if let Some(component) = cached {
            return Ok(self.remember(digest, component));
        }
        let Some(workers) = &self.workers else {
            let started = Instant::now();
            let component = Component::new(&self.engine, bytes).map_err(|e| {
                LoadError::new(
                    LoadErrorKind::Invalid,
                    format!("the component does not compile: {e:#}"),
                )
            })?;
            tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
            if let Some(cache) = &self.cache
                && let Err(e) = cache.store(digest, &component)
            {
                tracing::warn!(%digest, error = %e, "could not write the compile cache");
            }
            return Ok(self.remember(digest, component));
        };
        self.compile_in_worker(workers, digest, bytes)
    }

    /// Compiles `bytes` in a worker under the budget, one of
    /// [`CompileBudget::concurrency`](super::CompileBudget::concurrency)
    /// at a time, and caches the artifact. Bytes a worker refused are refused again at once.
    fn compile_in_worker(
        &self,
        workers: &Workers,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        if let Some(e) = self.refused_before(digest) {
            return Err(e);
        }
        let _permit = workers.permit()?;
        // Another prepare of the same bytes may have compiled (or been refused) while this
        // one waited.
        if let Some(component) = self.remembered(digest) {
            return Ok(component);
        }
        if let Some(e) = self.refused_before(digest) {
            return Err(e);
        }
        let started = Instant::now();
        let artifact = workers.compile(bytes).inspect_err(|e| {
            tracing::warn!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, kind = ?e.kind, reason = %e.message, "compile refused");
            if matches!(
                e.kind,
                LoadErrorKind::CompileBudget | LoadErrorKind::Invalid
            ) {
                let now = Instant::now();
                let until =
                    (e.kind == LoadErrorKind::CompileBudget).then(|| now + REFUSED_FOR_BUDGET);
                let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
                // Each entry cost a whole compile, but they must not pile up without bound:
                // past the most, the oldest goes.
                if refused.len() >= MAX_REFUSED
                    && let Some(oldest) = refused
                        .iter()
                        .min_by_key(|(_, r)| r.at)
                        .map(|(digest, _)| digest.clone())
                {
                    refused.remove(&oldest);
                }
                refused.insert(
                    digest.clone(),
                    Refusal {
                        error: e.clone(),
                        at: now,
                        until,
                    },
                );
            }
        })?;
        // SAFETY: `artifact` is what `Engine::precompile_component` produced, for an engine
        // with this sandbox's compilation settings (`CompileSettings`), in a worker process
        // this sandbox just started from the configured program (the daemon's own binary) and
        // whose stdout only this sandbox read. Compiling there is compiling here, in a process
        // that may run out of memory on its own. wasmtime additionally checks the artifact's
        // version and settings header.
        let component =
            unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(|e| {
                LoadError::new(
                    LoadErrorKind::Host,
                    format!(
                        "this host could not load what its compile worker made (is the worker \
                     program the daemon's own binary?): {e:#}"
                    ),
                )
            })?;
        tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component in a worker");
        if let Some(cache) = &self.cache
            && let Err(e) = cache.store_artifact(digest, &artifact)
        {
            tracing::warn!(%digest, error = %e, "could not write the compile cache");
        }
        Ok(self.remember(digest, component))
    }

    /// Why a worker refused `digest` before, if it did and the refusal still holds.
    fn refused_before(&self, digest: &Digest) -> Option<LoadError> {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        match refused.get(digest) {
            Some(Refusal {
                until: Some(until), ..
            }) if Instant::now() >= *until => {
                refused.remove(digest);
                None
            }
            Some(refusal) => Some(refusal.error.clone()),
            None => None,
        }
    }

    /// The compiled code of `digest`, if it is in memory.
    fn remembered(&self, digest: &Digest) -> Option<Component> {
        self.in_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Keeps `component` in memory as the compiled code of `digest`; returns it.
    fn remember(&self, digest: &Digest, component: Component) -> Component {
        self.in_memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.clone(), component.clone());
        component
    }
}
