//! The store state of one invocation: every interface's state, one resource table, and the
//! meters the limits are enforced by.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::imports::bus::BusState;
use crate::imports::http::HttpState;
use crate::imports::kv::KvState;
use crate::imports::kv_read::KvReadState;
use crate::imports::log::LogState;
use crate::imports::usb::UsbState;
use crate::imports::wasi;
use crate::imports::wasi_config::ConfigState;

/// Everything a guest's imports can reach during one call. Dropped with the store when the
/// call ends: nothing carries over to the next invocation.
pub struct InvocationState {
    /// Built on first use: most calls of a trivial guest never touch WASI, and building a
    /// context seeds random generators, a sizeable part of a few-microsecond call.
    pub(crate) wasi: Option<WasiCtx>,
    pub(crate) table: ResourceTable,
    pub(crate) http: HttpState,
    pub(crate) config: ConfigState,
    pub(crate) log: LogState,
    pub(crate) bus: BusState,
    pub(crate) kv: KvState,
    pub(crate) kv_read: KvReadState,
    pub(crate) usb: UsbState,
    pub(crate) memory: MemoryMeter,
    pub(crate) deadline: Instant,
    pub(crate) timed_out: bool,
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let log = &self.log.log;
        let ctx = self.wasi.get_or_insert_with(|| wasi::locked_down_ctx(log));
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

/// Enforces the memory cap and records the peak, across all of the instance's memories.
#[derive(Debug)]
pub struct MemoryMeter {
    cap: u64,
    current: u64,
    peak: u64,
    cap_hit: bool,
    /// The last growth granted, taken back if wasmtime then fails to grow.
    last_growth: u64,
    /// Table elements of all tables together.
    table_elements: usize,
}

/// Most table elements an instance may have, all tables together.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryMeter {
    pub(crate) fn new(cap: u64) -> Self {
        Self {
            cap,
            current: 0,
            peak: 0,
            cap_hit: false,
            last_growth: 0,
            table_elements: 0,
        }
    }

    /// Highest total linear memory seen, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Whether a growth was refused because of the cap.
    pub fn cap_hit(&self) -> bool {
        self.cap_hit
    }
}

impl wasmtime::ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum wasmtime refuses anyway; that is not our cap.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        if self.current.saturating_add(growth) > self.cap {
            self.cap_hit = true;
            return Ok(false);
        }
        self.current += growth;
        self.last_growth = growth;
        self.peak = self.peak.max(self.current);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.current = self.current.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_elements + desired.saturating_sub(current);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}
