//! The quota hook (world `hook`): denies an operation for a tenant that has used up its quota
//! of billed vm seconds. It is the example of a hook that reads another component's space:
//! the usage comes from the totals the billing listener keeps, read-only through `kv-read`;
//! the quotas are the hook's own, in its `kv`, so billing never has to know about them.
//!
//! Register it at an extension point whose proposals name a tenant in their JSON data (for
//! example `vm.pre-create`, data `{"tenant":"acme",...}`), uploaded with the grant to read
//! the billing listener's space: `--grant kv-read=billing`. Store the quotas, in seconds, in
//! the hook's space: `limit/<tenant>`, and `limit/default` for every other tenant. Layout in
//! [`model`].
//!
//! For each proposal:
//!
//! 1. Data that is not a JSON object with a valid `tenant` is denied, with the reason: the hook
//!    understands the proposal is malformed, and an error would let it through a fail-open
//!    point.
//! 2. The limit is `limit/<tenant>`, else `limit/default`. Neither set: allow (the usage is not
//!    even read).
//! 3. The usage is `total/<tenant>` in the space named by `config/usage-namespace` (default
//!    `billing`); absent counts 0.
//! 4. Usage at or over the limit: deny, with a sentence naming tenant, usage and limit; else
//!    allow.
//!
//! A stored value that is not a non-negative decimal integer, and any failed read (store
//! unavailable, read not granted, invalid key), is an error: the hook cannot decide, and the
//! point's fail-open or fail-closed policy does. Each decision is logged (allow at info, deny
//! at warn, an error at error). The hook only reads: nothing to undo if another hook denies.

pub mod model;

wit_bindgen::generate!({
    path: "../../wit",
    world: "hook",
});

use exports::sandbus::host::check::{Decision, Event, Guest};
use model::Verdict;
use sandbus::host::kv::{self, KvError};
use sandbus::host::kv_read::{self, KvReadError};
use sandbus::host::log::{self, Level};

/// The component.
struct Quota;

impl Guest for Quota {
    fn check(proposed: Event) -> Result<Decision, String> {
        let what = format!("{} {}", proposed.type_, proposed.id);
        match verdict(&proposed) {
            Ok(Verdict::Allow(why)) => {
                log::log(Level::Info, &format!("allowing {what}: {why}"));
                Ok(Decision::Allow)
            }
            Ok(Verdict::Deny(why)) => {
                log::log(Level::Warn, &format!("denying {what}: {why}"));
                Ok(Decision::Deny(why))
            }
            Err(why) => {
                log::log(Level::Error, &format!("cannot decide on {what}: {why}"));
                Err(why)
            }
        }
    }
}

export!(Quota);

/// Steps 1 to 4 of the module docs. `Err` means the hook cannot decide.
fn verdict(proposed: &Event) -> Result<Verdict, String> {
    let tenant = match model::parse_proposal(&proposed.type_, &proposed.data) {
        Ok(tenant) => tenant,
        Err(reason) => return Ok(Verdict::Deny(reason)),
    };
    let Some(limit) = limit_of(&tenant)? else {
        return Ok(model::no_quota(&tenant));
    };
    let namespace = match get(model::USAGE_NAMESPACE_KEY)? {
        Some(value) => model::parse_namespace(&value)?,
        None => model::DEFAULT_USAGE_NAMESPACE.to_string(),
    };
    let key = model::usage_key(&tenant);
    let usage = match kv_read::get(&namespace, &key) {
        Ok(Some(value)) => {
            model::parse_seconds(&format!("`{key}` in the space of `{namespace}`"), &value)?
        }
        Ok(None) => 0,
        Err(KvReadError::NotGranted(space)) => return Err(model::not_granted(&space, &key)),
        Err(KvReadError::Kv(error)) => {
            return Err(format!(
                "cannot read `{key}` from the space of `{namespace}`: {}",
                kv_error_text(&error)
            ));
        }
    };
    Ok(model::decide(&tenant, usage, limit))
}

/// The tenant's quota in seconds: `limit/<tenant>`, else `limit/default`, else none. A bad
/// tenant value is an error, not a reason to fall back to the default.
fn limit_of(tenant: &str) -> Result<Option<u64>, String> {
    for key in [
        model::limit_key(tenant),
        model::DEFAULT_LIMIT_KEY.to_string(),
    ] {
        if let Some(value) = get(&key)? {
            return model::parse_seconds(&format!("kv `{key}`"), &value).map(Some);
        }
    }
    Ok(None)
}

/// The value under `key` in the hook's own space, if any.
fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    kv::get(key).map_err(|error| format!("cannot read kv `{key}`: {}", kv_error_text(&error)))
}

/// A kv error in words.
fn kv_error_text(error: &KvError) -> String {
    match error {
        KvError::Unavailable(why) => format!("the store is unavailable: {why}"),
        KvError::InvalidKey(why) => format!("invalid key: {why}"),
        KvError::ValueTooLarge(limit) => format!("value larger than {limit} bytes"),
        KvError::NotANumber => "not a number".to_string(),
        KvError::Overflow => "overflow".to_string(),
    }
}
