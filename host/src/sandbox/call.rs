//! The call path: one call of a prepared component, whatever its world.
//!
//! [`PreparedComponent::handle`], [`PreparedComponent::run_for`] and
//! [`PreparedComponent::check`] all come down to [`PreparedComponent::call`], which only
//! asks of a world what differs between worlds ([`Export`]: which export, what it is given,
//! how its result is read; see `export.rs`). The call itself is always the same:
//!
//! 1. refuse the wrong world, and an input over the payload limit, before anything runs;
//! 2. wait for one of the component's instance slots, a slot of the shared pool and the
//!    component's memory cap in the host's memory budget (backpressure, never shedding);
//! 3. build a fresh store: its own WASI, log stream, memory meter, fuel and deadline;
//! 4. instantiate and call the export, all of it bounded by the deadline;
//! 5. meter what the call used, tell a failure by [`Failure::classify`], and drop the store,
//!    which releases the slots and the memory.
//!
//! Each call runs in a `debug` span `sandbox.call` with the component's name, its world and
//! the invocation id, so a trace follows one call through the host functions it calls.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::budget::MemoryReservation;
use super::export::Export;
use super::failure::{Bounds, Evidence, Failure, Stage};
use super::prepared::PreparedComponent;
use super::state::MemoryMeter;
use super::{Capabilities, Invocation, InvocationState, InvokeError, Metering};
use crate::imports::bus::{BusState, PublishThrottle};
use crate::imports::http::HttpState;
use crate::imports::kv::{KvQuota, KvState};
use crate::imports::kv_read::KvReadState;
use crate::imports::log::{InvocationLog, LogState};
use crate::imports::usb::UsbState;
use crate::imports::wasi_config::ConfigState;
use crate::invocation::InvocationId;

/// Most WASI resources (streams, pollables...) one invocation may hold at once.
const MAX_RESOURCES: usize = 4096;

/// A store being used for one call, with its slots, memory reservation and log.
struct ActiveCall {
    id: InvocationId,
    store: Store<InvocationState>,
    log: InvocationLog,
    started: Instant,
    timeout: Duration,
    fuel_start: u64,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _pool_slot: tokio::sync::OwnedSemaphorePermit,
    _memory: MemoryReservation,
}

impl PreparedComponent {
    /// Calls the export of world `E` with `given` on a fresh instance, under `timeout`.
    ///
    /// Refused without running anything when the component is of another world or `given`
    /// is over the payload limit; otherwise waits for its slots and memory, runs, and comes
    /// back with the output, or the failure, and what the call used.
    #[tracing::instrument(
        level = "debug",
        name = "sandbox.call",
        skip_all,
        fields(component = %self.name, world = %E::WORLD, invocation = tracing::field::Empty),
    )]
    pub(super) async fn call<E: Export>(
        &self,
        given: E::Given,
        caps: &Capabilities,
        timeout: Duration,
    ) -> Result<Invocation<E::Output>, InvokeError> {
        let Some(pre) = E::pre(&self.pre) else {
            return Err(Failure::wrong_world(&self.name, self.world, E::WORLD).before_start());
        };
        let size = E::size(&given);
        if size as u64 > self.limits.max_payload {
            return Err(Failure::input_too_large(size, self.limits.max_payload).before_start());
        }
        let mut call = self.begin(caps, timeout, E::depth(&given)).await?;
        let input = E::Input::from(given);
        let result = bounded(timeout, async {
            let instance = E::instantiate(pre, &mut call.store)
                .await
                .map_err(Stage::Instantiate)?;
            instance
                .call_export(&mut call.store, &input)
                .await
                .map_err(Stage::Call)
        })
        .await;
        self.finish(call, result, E::read)
    }

    /// Largest amount of data copied from the guest in one host call or return value: the
    /// payload limit (or the log cap, for one log line), plus room for the small fields.
    fn hostcall_budget(&self) -> usize {
        let bytes = self.limits.max_payload.max(self.limits.log_bytes) + (64 << 10);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Waits for one of the component's slots, then for a slot of the shared pool (so a
    /// busy component makes others wait, never fail), and builds a fresh store. `depth` is
    /// the depth of the event the call handles (0 when it handles none).
    async fn begin(
        &self,
        caps: &Capabilities,
        timeout: Duration,
        depth: u32,
    ) -> Result<ActiveCall, InvokeError> {
        let closed = |_| Failure::unloading().before_start();
        let slot = self.slots.clone().acquire_owned().await.map_err(closed)?;
        let pool_slot = self.pool.clone().acquire_owned().await.map_err(closed)?;
        // The whole memory cap is reserved: the guest may grow to it at any point of the call.
        let memory = self.budget.reserve(self.limits.memory).await?;
        let started = Instant::now();
        let id = InvocationId::next();
        tracing::Span::current().record("invocation", tracing::field::display(id));
        let log = InvocationLog::new(
            caps.log.clone(),
            self.limits.log_bytes,
            self.name.clone(),
            id,
        );
        let deadline = started + timeout;
        let state = InvocationState {
            wasi: None,
            table: {
                // A guest holds few WASI handles; bound the table so it can't turn a loop
                // of `get-stdout` calls into host memory the memory cap doesn't see.
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            http: HttpState::new(log.clone()),
            config: ConfigState::new(self.config.clone()),
            log: LogState { log: log.clone() },
            bus: BusState {
                grants: self.grants.clone(),
                publisher: caps.publisher.clone(),
                max_payload: self.limits.max_payload,
                rate: self.rate.clone(),
                budget: self.limits.publish_budget,
                throttle: PublishThrottle::default(),
                published: 0,
                depth,
            },
            kv: KvState {
                store: caps.kv.clone(),
                namespace: self.name.clone(),
                max_value: self.limits.max_payload,
                quota: KvQuota {
                    bytes: self.limits.kv_bytes,
                    keys: self.limits.kv_keys,
                },
            },
            kv_read: KvReadState {
                store: caps.kv.clone(),
                grants: self.kv_read.clone(),
            },
            usb: UsbState::new(caps.usb.clone(), deadline),
            memory: MemoryMeter::new(self.limits.memory),
            deadline,
            timed_out: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        // Bytes the host may copy out of the guest in one host call or one return value.
        // Counted per copy, so a list whose elements all point at the same big string
        // can't make the host allocate many times the guest's memory.
        store.set_hostcall_fuel(self.hostcall_budget());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let mut fuel_start = 0;
        if self.fuel {
            fuel_start = self.limits.fuel.unwrap_or(u64::MAX);
            if let Err(e) = store.set_fuel(fuel_start) {
                tracing::warn!(error = %e, "could not set fuel");
            }
        }
        Ok(ActiveCall {
            id,
            store,
            log,
            started,
            timeout,
            fuel_start,
            _slot: slot,
            _pool_slot: pool_slot,
            _memory: memory,
        })
    }

    /// Meters what the call used and turns its result into the caller's: the output read
    /// by `read` (refused when over the payload limit), or the failure told by
    /// [`Failure::classify`]. Dropping `call` then releases its slots and memory.
    fn finish<R, T>(
        &self,
        call: ActiveCall,
        result: Result<R, Stage>,
        read: impl FnOnce(R) -> (usize, T),
    ) -> Result<Invocation<T>, InvokeError> {
        let fuel = self.fuel.then(|| {
            call.fuel_start
                .saturating_sub(call.store.get_fuel().unwrap_or(0))
        });
        let state = call.store.data();
        let metering = Metering {
            wall_us: call.started.elapsed().as_micros() as u64,
            peak_memory: state.memory.peak(),
            fuel,
            published: state.bus.published,
            throttle: state.bus.throttle,
        };
        let result = match result {
            Ok(returned) => {
                let (size, output) = read(returned);
                if size as u64 > self.limits.max_payload {
                    Err(Failure::output_too_large(size, self.limits.max_payload)
                        .after(metering, call.log.finish()))
                } else {
                    Ok(Invocation {
                        id: call.id,
                        output,
                        metering,
                        log: call.log.finish(),
                    })
                }
            }
            Err(stage) => {
                let evidence = Evidence {
                    timed_out: state.timed_out,
                    memory_cap_hit: state.memory.cap_hit(),
                    panic: call.log.guest_panic(),
                    exception: call.log.guest_exception(),
                };
                let bounds = Bounds {
                    deadline: call.timeout,
                    memory: self.limits.memory,
                    fuel: self.limits.fuel,
                    max_wasm_stack: self.max_wasm_stack,
                    hostcall_budget: self.hostcall_budget(),
                    max_payload: self.limits.max_payload,
                };
                Err(Failure::classify(stage, &evidence, &bounds).after(metering, call.log.finish()))
            }
        };
        match &result {
            Ok(_) => {
                tracing::debug!(component = %self.name, invocation = %call.id, wall_us = metering.wall_us, "call finished")
            }
            Err(e) => {
                tracing::warn!(component = %self.name, invocation = %call.id, kind = %e.kind, reason = %e.message, "call failed")
            }
        }
        result
    }
}

/// Bounds the whole call (guest code and host calls) by the deadline, with one epoch tick of
/// grace so that the epoch trap, which names the cause better, normally wins.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, Stage>>,
) -> Result<T, Stage> {
    let budget = timeout + Duration::from_millis(50);
    match tokio::time::timeout(budget, call).await {
        Ok(result) => result,
        Err(_) => Err(Stage::HostDeadline),
    }
}
