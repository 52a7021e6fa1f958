//! The billing listener (world `listener`): turns `vm.started` / `vm.stopped` events into billed
//! seconds per instance and a running total per tenant, in its key-value space, and emits one
//! `billing.usage` event per instance. The billing tests in the sandbox tests run it (duplicates,
//! stops before starts, redelivery after a crash mid-handling, concurrent instances).
//!
//! Every event counts exactly once, whatever the delivery order, duplicates or crashes, using
//! only per-key atomic operations (layout in [`model`]):
//!
//! 1. Record this event's fact: `set-if-absent(start|stop/<tenant>/<instance>, unix seconds)`.
//!    A duplicate carries the same time, so first-write-wins is right.
//! 2. Read the other fact. If it is absent, stop here: the other event completes the record.
//! 3. Both known: `set-if-absent(usage/<tenant>/<instance>, max(0, stop - start))`.
//! 4. Emit `billing.usage` with a deterministic id; the bus drops a re-emitted copy.
//! 5. Recompute `total/<tenant>` as the sum of every `usage/<tenant>/*`, written with
//!    `compare-and-swap` against the total read before summing (retried, at most
//!    [`TOTAL_TRIES`] times). Usage keys are never removed and never negative, so a swap
//!    that wins always writes a sum that includes every usage its writer saw.
//!
//! A crash between any two steps is repaired by the redelivery: steps 1 and 3 are no-ops the
//! second time, 4 is de-duplicated, 5 recomputes from scratch.
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
use model::{Fact, UsageData, VmEvent};
use sandbus::host::bus::{self, BusError};
use sandbus::host::kv::{self, KvError};
use sandbus::host::log::{self, Level};

/// How many times the tenant total is recomputed when other handlers keep changing it.
pub const TOTAL_TRIES: usize = 64;

/// Why an event was not handled now.
enum Failure {
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
        let vm = match model::parse_vm_event(&event.type_, event.time.as_deref(), &event.data) {
            Ok(Some(vm)) => vm,
            Ok(None) => {
                log::log(
                    Level::Debug,
                    &format!("ignoring event {} of type {}", event.id, event.type_),
                );
                return Outcome::Ok;
            }
            Err(reason) => {
                log::log(
                    Level::Warn,
                    &format!("rejecting event {}: {reason}", event.id),
                );
                return Outcome::Reject(reason);
            }
        };
        match handle_vm_event(&vm) {
            Ok(()) => Outcome::Ok,
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
        &model::usage_key(tenant, instance),
        model::usage_seconds(start, stop),
    )?;

    let deferred = emit_usage(&UsageData::new(tenant, instance, seconds, start, stop))?;
    let total = update_total(tenant)?;
    log::log(
        Level::Info,
        &format!("tenant {tenant} instance {instance} billed {seconds} s (tenant total {total} s)"),
    );
    match deferred {
        Some(reason) => Err(Failure::Reject(reason)),
        None => Ok(()),
    }
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

/// Recomputes `total/<tenant>` from the usage keys; returns the total written (or found).
fn update_total(tenant: &str) -> Result<i64> {
    let total_key = model::total_key(tenant);
    let prefix = model::usage_prefix(tenant);
    for _ in 0..TOTAL_TRIES {
        let old = kv::get(&total_key).map_err(|e| kv_failure("get", &total_key, e))?;
        let keys = kv::list_keys(&prefix).map_err(|e| kv_failure("list-keys", &prefix, e))?;
        let mut sum: i64 = 0;
        for key in &keys {
            // Usage keys are never deleted; one missing now counts as nothing.
            let Some(seconds) = read(key)? else { continue };
            sum = sum.checked_add(seconds).ok_or_else(|| {
                Failure::Reject(format!("the usage of tenant {tenant} overflows 64 bits"))
            })?;
        }
        let new = sum.to_string();
        if old.as_deref() == Some(new.as_bytes()) {
            return Ok(sum);
        }
        if kv::compare_and_swap(&total_key, old.as_deref(), new.as_bytes())
            .map_err(|e| kv_failure("compare-and-swap", &total_key, e))?
        {
            return Ok(sum);
        }
    }
    Err(Failure::Retry(format!(
        "kv `{total_key}` kept changing; gave up after {TOTAL_TRIES} tries"
    )))
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
