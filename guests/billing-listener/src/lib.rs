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
//! Every event counts exactly once, whatever the delivery order, duplicates or crashes, using
//! only per-key atomic operations (layout in [`model`]):
//!
//! 1. Record this event's fact: `set-if-absent(start|stop/<tenant>/<instance>, unix seconds)`.
//!    A duplicate carries the same time, so first-write-wins is right.
//! 2. Read the other fact. If it is absent, stop here: the other event completes the record.
//! 3. Both known: `set-if-absent(usage/<tenant>/<shard>/<instance>, max(0, stop - start))`,
//!    `<shard>` being the instance's fixed shard, `00` to `15` ([`model::Shard::of`]).
//! 4. Emit `billing.usage` with a deterministic id; the bus drops a re-emitted copy.
//! 5. Recompute the sums, in two levels, each written with `compare-and-swap` against the
//!    value read before summing (retried, at most [`TOTAL_TRIES`] times each):
//!    1. `shard/<tenant>/<shard>`, for the instance's shard, as the sum of every
//!       `usage/<tenant>/<shard>/*` (one `list-keys`, one `get` per usage key of that shard:
//!       about 1/16 of the tenant's instances);
//!    2. `total/<tenant>` as the sum of the [`model::SHARDS`] `shard/<tenant>/<shard>` values,
//!       an absent one counting 0 (16 `get`s, however many instances the tenant has).
//!
//!    Both run on every delivery that reaches step 5, even when 5.1 found nothing to change.
//!
//! Why the sums end exact. Usage keys are written once, never removed and never negative, so
//! the sum of a shard's usage keys only grows. A shard key only ever receives such a sum, read
//! after the value it replaces, and a swap fails if the key changed in between, so a swap that
//! wins writes a sum that includes everything its writer saw and shard values only grow; the
//! same holds one level up for the total, a sum of shard values. So the total never goes down
//! and never exceeds the sum of the shards, which never exceeds the sum of the usage keys.
//! A handler that reaches step 5 runs 5.1 after its usage key exists: when 5.1 ends, the shard
//! includes that usage (its swap won, or the shard already held a sum that includes it). It
//! then runs 5.2, reading every shard after that. In particular the handler whose swap was the
//! last change to any of the tenant's shards recomputes the total afterwards from every
//! shard's final value, so the total ends equal to the sum of every usage key, each counted
//! once (one key per instance).
//!
//! A crash between any two steps is repaired by the redelivery: steps 1 and 3 are no-ops the
//! second time, 4 is de-duplicated, 5 repeats 5.1 and 5.2 from scratch. So is a 5.1 or 5.2
//! that gives up after [`TOTAL_TRIES`] lost swaps: the event is retried.
//!
//! Outcomes: a malformed event (bad JSON, bad tenant or instance, missing or bad `time`) is
//! rejected with a reason naming what is wrong; other event types are acknowledged and
//! ignored. `kv` or bus `unavailable` and bus `rate-limited` ask for a retry. An emit refused
//! as `not-granted` is logged at error level and the event still succeeds: kv is the source of
//! truth, the operator only forgot the grant `events.billing.>`. Any other emit error
//! (a bug or a too-small payload limit) rejects, after the total is updated.

pub mod model;
pub mod time;

wit_bindgen::generate!({
    path: "../../wit",
    world: "listener",
});

use exports::sandbus::host::handler::{Event, Guest, Outcome};
use model::{Charge, Fact, Meter, Shard, UsageData, VmEvent};
use sandbus::host::bus::{self, BusError};
use sandbus::host::kv::{self, KvError};
use sandbus::host::log::{self, Level};

/// How many times a shard sum or the tenant total is recomputed when other handlers keep
/// changing it.
pub const TOTAL_TRIES: usize = 64;

/// Why an event was not handled now.
enum Failure {
    /// The event itself is wrong (bad JSON, a bad name); nothing was changed.
    Malformed(String),
    /// Transient: ask the host to deliver again later.
    Retry(String),
    /// The event cannot be handled; the reason goes to the dead-letter stream.
    Reject(String),
}

type Result<T> = std::result::Result<T, Failure>;

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
    let shard = Shard::of(instance);
    let shard_sum = update_shard(Meter::VmSeconds, tenant, shard)?;
    let total = update_total(Meter::VmSeconds, tenant)?;
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
        let shard = Shard::of(entry);
        update_shard(*meter, account, shard)?;
        let total = update_total(*meter, account)?;
        log::log(
            Level::Info,
            &format!("{account} charged {charged} {meter} for {entry} (total {total})"),
        );
    }
    Ok(())
}

/// First-write-wins: stores `value` under `key` unless a value is there, and returns the
/// value that is there now (ours, or the one a previous delivery stored).
fn record(key: &str, value: i64) -> Result<i64> {
    let text = value.to_string();
    if kv::set_if_absent(key, text.as_bytes()).map_err(|e| kv_failure("set-if-absent", key, e))? {
        return Ok(value);
    }
    let stored = read(key)?.ok_or_else(|| {
        Failure::Retry(format!(
            "kv `{key}` existed, then vanished before it was read"
        ))
    })?;
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
    match kv::get(key).map_err(|e| kv_failure("get", key, e))? {
        None => Ok(None),
        Some(bytes) => model::parse_stored(key, &bytes)
            .map(Some)
            .map_err(Failure::Reject),
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
        Err(BusError::RateLimited) => Err(Failure::Retry(format!(
            "emit {}: rate-limited",
            model::USAGE_TYPE
        ))),
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

/// Step 5.1: recomputes `<m>shard/<account>/<shard>` from the usage keys of that shard;
/// returns the sum written (or found).
fn update_shard(meter: Meter, account: &str, shard: Shard) -> Result<i64> {
    let prefix = model::usage_shard_prefix(meter, account, shard);
    recompute(&model::shard_key(meter, account, shard), || {
        let keys = kv::list_keys(&prefix).map_err(|e| kv_failure("list-keys", &prefix, e))?;
        // Usage keys are never deleted; one missing now counts as nothing.
        sum_of(account, keys.iter().map(|key| read(key)))
    })
}

/// Step 5.2: recomputes `<m>total/<account>` from the account's shard sums (an absent shard
/// counts 0); returns the total written (or found).
fn update_total(meter: Meter, account: &str) -> Result<i64> {
    recompute(&model::total_key(meter, account), || {
        sum_of(
            account,
            Shard::all().map(|shard| read(&model::shard_key(meter, account, shard))),
        )
    })
}

/// The compare-and-swap loop of steps 5.1 and 5.2: reads `key`, then computes `sum` (whose
/// reads all come after), and stores the sum unless `key` changed in between; at most
/// [`TOTAL_TRIES`] times. Returns the sum stored (or found already there).
fn recompute(key: &str, mut sum: impl FnMut() -> Result<i64>) -> Result<i64> {
    for _ in 0..TOTAL_TRIES {
        let old = kv::get(key).map_err(|e| kv_failure("get", key, e))?;
        let sum = sum()?;
        let new = sum.to_string();
        if old.as_deref() == Some(new.as_bytes()) {
            return Ok(sum);
        }
        if kv::compare_and_swap(key, old.as_deref(), new.as_bytes())
            .map_err(|e| kv_failure("compare-and-swap", key, e))?
        {
            return Ok(sum);
        }
    }
    Err(Failure::Retry(format!(
        "kv `{key}` kept changing; gave up after {TOTAL_TRIES} tries"
    )))
}

/// The sum of stored values of `account`, an absent one counting 0; stops at the first read
/// that fails.
fn sum_of(account: &str, values: impl Iterator<Item = Result<Option<i64>>>) -> Result<i64> {
    let mut sum: i64 = 0;
    for value in values {
        let Some(value) = value? else { continue };
        sum = sum
            .checked_add(value)
            .ok_or_else(|| Failure::Reject(format!("the usage of {account} overflows 64 bits")))?;
    }
    Ok(sum)
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
