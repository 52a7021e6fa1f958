//! The billing listener (world `listener`): turns `vm.started` / `vm.stopped` events into billed
//! seconds per instance and a running total per tenant, in its key-value space, and emits one
//! `billing.usage` event per instance. It also charges what the sandbus daemons report:
//! device lease time per script (`sandbus.lease.released`, `held_ms` per run) and compute per
//! component (`sandbus.metering`: invocations, wall microseconds and fuel per window), each
//! on its own meter ([`model::Meter`]; layout in [`model`]). Subscribe it to the events it
//! should bill, e.g. `vm.>`, `sandbus.lease.released` and `sandbus.metering`. The billing
//! tests in the sandbox tests run it (duplicates, stops before starts, redelivery after a
//! crash mid-handling, concurrent instances, lease and metering charges).
//!
//! Lease time and compute follow steps 3 and 5 below with the run or the metering event as
//! the entry (step 1, 2 and 4 are vm-only: those charges are known from one event).
//!
//! Every event counts exactly once, whatever the delivery order, duplicates, concurrent
//! handlers on other hosts or crashes, using only per-key atomic operations (layout in
//! [`model`]):
//!
//! 1. Record this event's fact: `set-if-absent(start|stop/<tenant>/<instance>, unix seconds)`.
//!    A duplicate carries the same time, so first-write-wins is right.
//! 2. Read the other fact. If it is absent, stop here: the other event completes the record.
//! 3. Both known: `set-if-absent(usage/<tenant>/<shard>/<instance>, max(0, stop - start))`,
//!    `<shard>` being the instance's fixed shard, `00` to `15` ([`model::Shard::of`]).
//! 4. Emit `billing.usage` with a deterministic id; the bus drops a re-emitted copy.
//! 5. Settle the recorded amount ([`ledger::settle`]): add it to its shard's sum exactly once
//!    (the shard value lists the entries in flight, and a `counted/` key marks an entry done),
//!    then recompute the tenant's total from the 16 shard sums. The cost is flat: it does not
//!    grow with the number of instances billed. The argument that it is exact is in
//!    [`ledger`], and its tests check it against every interleaving of concurrent and
//!    crashed deliveries.
//!
//! A crash between any two steps is repaired by the redelivery: steps 1 and 3 are no-ops the
//! second time, 4 is de-duplicated, 5 finishes what the crashed delivery started. So is a
//! step 5 that gives up after [`ledger::TRIES`] lost swaps: the event is retried.
//!
//! Outcomes: a malformed event (bad JSON, bad tenant or instance, missing or bad `time`) is
//! rejected with a reason naming what is wrong; other event types are acknowledged and
//! ignored. `kv` or bus `unavailable` and bus `rate-limited` ask for a retry. An emit refused
//! as `not-granted` is logged at error level and the event still succeeds: kv is the source of
//! truth, the operator only forgot the grant `events.billing.>`. Any other emit error
//! (a bug or a too-small payload limit) rejects, after the total is updated.

pub mod ledger;
pub mod model;
pub mod time;

wit_bindgen::generate!({
    path: "../../wit",
    world: "listener",
});

use exports::sandbus::host::handler::{Event, Guest, Outcome};
use ledger::{Failure, Result, Settled, Store};
use model::{Charge, Fact, Meter, UsageData, VmEvent};
use sandbus::host::bus::{self, BusError};
use sandbus::host::kv::{self, KvError};
use sandbus::host::log::{self, Level};

/// How long to wait before retrying an event whose `billing.usage` emit was rate-limited: the
/// host only refuses a publish when the component's turn is over a second away, so sooner is
/// pointless. The kv steps before the emit are redone as no-ops.
const RATE_LIMITED_RETRY_MS: u64 = 2_000;

/// The component.
struct Billing;

impl Guest for Billing {
    fn handle(event: Event) -> Outcome {
        let handled = match event.type_.as_str() {
            model::STARTED | model::STOPPED => {
                match model::parse_vm_event(&event.type_, event.time.as_deref(), &event.data) {
                    Ok(Some(vm)) => handle_vm_event(&vm),
                    Ok(None) => Ok(()),
                    Err(reason) => Err(Failure::Malformed(reason)),
                }
            }
            model::LEASE_RELEASED => model::parse_lease_released(&event.data)
                .map_err(Failure::Malformed)
                .and_then(|charge| charge_all(&[charge])),
            model::METERING => model::parse_metering(&event.id, &event.data)
                .map_err(Failure::Malformed)
                .and_then(|charges| charge_all(&charges)),
            _ => {
                log::log(
                    Level::Debug,
                    &format!("ignoring event {} of type {}", event.id, event.type_),
                );
                Ok(())
            }
        };
        match handled {
            Ok(()) => Outcome::Ok,
            Err(Failure::Malformed(reason)) => {
                log::log(
                    Level::Warn,
                    &format!("rejecting event {}: {reason}", event.id),
                );
                Outcome::Reject(reason)
            }
            Err(Failure::Retry(reason)) => {
                log::log(
                    Level::Warn,
                    &format!("event {} will be retried: {reason}", event.id),
                );
                Outcome::Retry(None)
            }
            Err(Failure::RetryAfter(ms, reason)) => {
                log::log(
                    Level::Warn,
                    &format!("event {} will be retried in {ms} ms: {reason}", event.id),
                );
                Outcome::Retry(Some(ms))
            }
            Err(Failure::Reject(reason)) => {
                log::log(
                    Level::Error,
                    &format!("rejecting event {}: {reason}", event.id),
                );
                Outcome::Reject(reason)
            }
        }
    }
}

export!(Billing);

/// Steps 1 to 5 of the module docs for one checked event.
fn handle_vm_event(vm: &VmEvent) -> Result<()> {
    let (tenant, instance) = (vm.tenant.as_str(), vm.instance.as_str());
    let mine = record(&vm.fact.key(tenant, instance), vm.at)?;
    let Some(other) = read(&vm.fact.other().key(tenant, instance))? else {
        log::log(
            Level::Info,
            &format!(
                "tenant {tenant} instance {instance} {} at {}; waiting for it to {}",
                vm.fact.verb(),
                time::format_rfc3339(mine),
                match vm.fact {
                    Fact::Start => "stop",
                    Fact::Stop => "start",
                },
            ),
        );
        return Ok(());
    };
    let (start, stop) = match vm.fact {
        Fact::Start => (mine, other),
        Fact::Stop => (other, mine),
    };
    if stop < start {
        log::log(
            Level::Warn,
            &format!(
                "tenant {tenant} instance {instance} stopped at {} before it started at {}; \
                 billing 0 s",
                time::format_rfc3339(stop),
                time::format_rfc3339(start),
            ),
        );
    }
    let seconds = record(
        &model::usage_key(Meter::VmSeconds, tenant, instance),
        model::usage_seconds(start, stop),
    )?;

    let deferred = emit_usage(&UsageData::new(tenant, instance, seconds, start, stop))?;
    let Settled {
        shard,
        shard_sum,
        total,
    } = ledger::settle(&HostKv, Meter::VmSeconds, tenant, instance, seconds)?;
    log::log(
        Level::Info,
        &format!(
            "tenant {tenant} instance {instance} billed {seconds} s \
             (shard {shard} {shard_sum} s, tenant total {total} s)"
        ),
    );
    match deferred {
        Some(reason) => Err(Failure::Reject(reason)),
        None => Ok(()),
    }
}

/// Charges each amount once (steps 3 and 5 of the module docs, for lease time and compute):
/// records its usage key, then recomputes its shard and the account's total.
fn charge_all(charges: &[Charge]) -> Result<()> {
    for charge in charges {
        let Charge {
            meter,
            account,
            entry,
            amount,
        } = charge;
        let charged = record(&model::usage_key(*meter, account, entry), *amount)?;
        let Settled { total, .. } = ledger::settle(&HostKv, *meter, account, entry, charged)?;
        log::log(
            Level::Info,
            &format!("{account} charged {charged} {meter} for {entry} (total {total})"),
        );
    }
    Ok(())
}

/// First-write-wins ([`ledger::record`]), warning when an earlier delivery stored a
/// different value (which is kept).
fn record(key: &str, value: i64) -> Result<i64> {
    let stored = ledger::record(&HostKv, key, value)?;
    if stored != value {
        log::log(
            Level::Warn,
            &format!("kv `{key}` already holds {stored}; keeping it and ignoring {value}"),
        );
    }
    Ok(stored)
}

/// The decimal value under `key`, if any.
fn read(key: &str) -> Result<Option<i64>> {
    ledger::read(&HostKv, key)
}

/// The listener's own key-value space, through the host's `kv` interface.
struct HostKv;

impl Store for HostKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        kv::get(key).map_err(|e| kv_failure("get", key, e))
    }

    fn set_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        kv::set_if_absent(key, value).map_err(|e| kv_failure("set-if-absent", key, e))
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
        kv::compare_and_swap(key, expected, new).map_err(|e| kv_failure("compare-and-swap", key, e))
    }
}

/// Emits the `billing.usage` event. `Ok(Some(reason))` is an error that must reject the
/// event, but only after the total is updated.
fn emit_usage(usage: &UsageData<'_>) -> Result<Option<String>> {
    let event = Event {
        id: model::usage_event_id(usage.tenant, usage.instance),
        source: model::USAGE_SOURCE.to_string(),
        type_: model::USAGE_TYPE.to_string(),
        subject: Some(usage.tenant.to_string()),
        time: Some(usage.stopped.clone()),
        datacontenttype: Some("application/json".to_string()),
        data: usage.to_json(),
    };
    match bus::emit(&event) {
        Ok(()) => Ok(None),
        Err(BusError::NotGranted(subject)) => {
            log::log(
                Level::Error,
                &format!(
                    "cannot emit {} for tenant {} instance {}: publishing on `{subject}` is not \
                     granted (grant publish=events.billing.>); the usage is recorded in kv",
                    model::USAGE_TYPE,
                    usage.tenant,
                    usage.instance,
                ),
            );
            Ok(None)
        }
        Err(BusError::RateLimited) => Err(Failure::RetryAfter(
            RATE_LIMITED_RETRY_MS,
            format!("emit {}: rate-limited", model::USAGE_TYPE),
        )),
        Err(BusError::Unavailable(why)) => Err(Failure::Retry(format!(
            "emit {}: bus unavailable: {why}",
            model::USAGE_TYPE
        ))),
        Err(other) => Ok(Some(format!(
            "emit {} refused: {}",
            model::USAGE_TYPE,
            bus_error_text(&other)
        ))),
    }
}

/// `unavailable` is worth a retry; anything else is a reason to reject.
fn kv_failure(op: &str, key: &str, error: KvError) -> Failure {
    let text = match error {
        KvError::Unavailable(why) => {
            return Failure::Retry(format!("kv {op} `{key}`: unavailable: {why}"));
        }
        KvError::InvalidKey(why) => format!("invalid key: {why}"),
        KvError::ValueTooLarge(limit) => format!("value larger than {limit} bytes"),
        KvError::NotANumber => "not a number".to_string(),
        KvError::Overflow => "overflow".to_string(),
    };
    Failure::Reject(format!("kv {op} `{key}`: {text}"))
}

/// A bus error in words.
fn bus_error_text(error: &BusError) -> String {
    match error {
        BusError::NotGranted(subject) => format!("`{subject}` is not granted"),
        BusError::InvalidSubject(why) => format!("invalid subject: {why}"),
        BusError::InvalidEvent(why) => format!("invalid event: {why}"),
        BusError::InvalidHeader(why) => format!("invalid header: {why}"),
        BusError::PayloadTooLarge(limit) => format!("payload larger than {limit} bytes"),
        BusError::RateLimited => "rate-limited".to_string(),
        BusError::Unavailable(why) => format!("unavailable: {why}"),
    }
}
