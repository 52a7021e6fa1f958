//! The host-wide memory budget: linear memory all guest instances of a host may be given
//! together. Every call reserves its component's memory cap before it starts (the guest may
//! grow to it at any moment of the call) and waits while the budget is spent, so however
//! many components run, at whatever limits, their guests never hold more than the budget.
//! Counted in wasm pages, the unit a cap is reserved in.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;

use super::InvokeError;
use super::failure::Failure;

/// The memory budget a host gets unless configured: half of its physical memory (at least
/// 1 GiB), or 4 GiB when that can't be read.
pub fn default_memory_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
        });
    total.map_or(4 << 30, |bytes| (bytes / 2).max(1 << 30))
}

/// Memory is reserved from the budget in wasm pages (64 KiB).
pub(super) const PAGE: u64 = 64 << 10;

/// The host-wide memory budget: a semaphore of wasm pages, and what is reserved of it.
pub(super) struct MemoryBudget {
    pages: Arc<Semaphore>,
    pub(super) reserved: std::sync::atomic::AtomicU64,
    pub(super) peak: std::sync::atomic::AtomicU64,
}

impl MemoryBudget {
    pub(super) fn new(total: u64) -> Self {
        let pages = usize::try_from(total / PAGE).unwrap_or(Semaphore::MAX_PERMITS);
        Self {
            pages: Arc::new(Semaphore::new(pages.min(Semaphore::MAX_PERMITS))),
            reserved: 0.into(),
            peak: 0.into(),
        }
    }

    /// Waits until `bytes` (rounded up to pages) are free and reserves them until the
    /// returned reservation is dropped.
    pub(super) async fn reserve(
        self: &Arc<Self>,
        bytes: u64,
    ) -> Result<MemoryReservation, InvokeError> {
        let pages = u32::try_from(bytes.div_ceil(PAGE)).unwrap_or(u32::MAX);
        let permit = self
            .pages
            .clone()
            .acquire_many_owned(pages)
            .await
            .map_err(|_| Failure::shutting_down().before_start())?;
        let bytes = u64::from(pages) * PAGE;
        let now = self.reserved.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(MemoryReservation {
            budget: self.clone(),
            bytes,
            _permit: permit,
        })
    }
}

/// Memory of the budget held by one call.
pub(super) struct MemoryReservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}
