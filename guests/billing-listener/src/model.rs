//! The billing listener's pure logic: reading the events it bills, checking names, the
//! key-value layout, and the `billing.usage` event it emits. No host calls here, so it is
//! unit-tested natively (`cargo test -p billing-listener`); the billing tests in the sandbox
//! tests run the whole listener through the host.
//!
//! What is billed, each on its own [`Meter`], to an account:
//!
//! | event                    | meter                             | account   | entry           | amount                   |
//! |--------------------------|-----------------------------------|-----------|-----------------|--------------------------|
//! | `vm.started`/`vm.stopped`| `vm-seconds`                      | tenant    | instance        | `max(0, stop - start)` s |
//! | `sandbus.lease.released` | `lease-ms`                        | script    | run id          | `held_ms`                |
//! | `sandbus.metering`       | `invocations`, `wall-us`, `fuel`  | component | the event's id  | the window's usage       |
//!
//! Key-value layout (the listener's private space; every value is decimal text). `<m>` is the
//! meter's key prefix: empty for `vm-seconds` (the layout it always had), `<meter name>/`
//! for the others (`lease-ms/`, `invocations/`, `wall-us/`, `fuel/`).
//!
//! | key                                    | value                                           | written with       |
//! |----------------------------------------|-------------------------------------------------|--------------------|
//! | `start/<tenant>/<instance>`            | unix seconds of the `vm.started` event          | `set-if-absent`    |
//! | `stop/<tenant>/<instance>`             | unix seconds of the `vm.stopped` event          | `set-if-absent`    |
//! | `<m>usage/<account>/<shard>/<entry>`   | the amount charged for one entry                | `set-if-absent`    |
//! | `<m>shard/<account>/<shard>`           | the shard's sum, then its pending entries ([`crate::ledger`]) | `compare-and-swap` |
//! | `<m>counted/<account>/<shard>/<entry>` | the amount, once it is in the shard sum         | `set-if-absent`    |
//! | `<m>sums/<account>`                    | the 16 shard sums the total counts, one per line | `compare-and-swap` |
//! | `<m>total/<account>`                   | the sum of `<m>sums/<account>`                  | `compare-and-swap` |
//!
//! `<shard>` is [`Shard::of`] the entry: a stable hash of its name modulo [`SHARDS`], written
//! as two decimal digits (`00` to `15`). Handlers of different shards swap different keys, so
//! the 16 shards spread the contention on an account's sum. The usage keys are the only keys
//! under `<m>usage/`: one per billed entry, so a listing of `usage/<tenant>/` (or of one
//! shard, `usage/<tenant>/<shard>/`) holds usage keys only. Meter names differ from the first
//! key parts of the `vm-seconds` layout (`start`, `stop`, `usage`, `shard`, `counted`,
//! `sums`, `total`), so meters never share a key.
//!
//! The shard of an entry is part of its stored keys, so [`Shard::of`] must never change:
//! a different hash (or a different [`SHARDS`]) would file a redelivered event's usage under a
//! new key and bill it twice.

use std::fmt;

use sandbus_host_events::{HostEvent, LeaseReleased, Metering};
use serde::{Deserialize, Serialize};

/// The event type that records a start.
pub const STARTED: &str = "vm.started";
/// The event type that records a stop.
pub const STOPPED: &str = "vm.stopped";
/// A device lease ended (from the host daemon): charged as lease time.
pub const LEASE_RELEASED: &str = LeaseReleased::TYPE;
/// A metering window's compute usage per component (from the host daemon).
pub const METERING: &str = Metering::TYPE;
/// The type of the event emitted once an instance's usage is known.
pub const USAGE_TYPE: &str = "billing.usage";
/// The `source` of the emitted events.
pub const USAGE_SOURCE: &str = "/listeners/billing";
/// Longest tenant or instance accepted, in bytes: keeps every key well under the host's
/// 512-byte key limit (the longest, a usage key, is 410 bytes) and the emitted id under its
/// 1024-byte attribute limit.
pub const MAX_NAME_LEN: usize = 200;
/// How many shards a tenant's usage keys are spread over. Part of every stored usage key:
/// never change it for existing data (see the module docs).
pub const SHARDS: u8 = 16;

/// What an amount measures. Each meter keeps its own usage, shard and total keys (see the
/// module docs), so a tenant's vm seconds and a script's lease milliseconds never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Meter {
    /// Seconds a vm ran, per tenant.
    VmSeconds,
    /// Milliseconds a script run held its device, per script.
    LeaseMs,
    /// Calls a component made, per component.
    Invocations,
    /// Wall time of a component's calls in microseconds, per component.
    WallUs,
    /// Fuel a component's calls consumed (0 unless the host meters fuel), per component.
    Fuel,
}

impl Meter {
    /// Every meter.
    pub const ALL: [Meter; 5] = [
        Meter::VmSeconds,
        Meter::LeaseMs,
        Meter::Invocations,
        Meter::WallUs,
        Meter::Fuel,
    ];

    /// The meter's name, as in log lines and (except `vm-seconds`) its key prefix.
    pub fn name(self) -> &'static str {
        match self {
            Meter::VmSeconds => "vm-seconds",
            Meter::LeaseMs => "lease-ms",
            Meter::Invocations => "invocations",
            Meter::WallUs => "wall-us",
            Meter::Fuel => "fuel",
        }
    }

    /// The prefix of the meter's keys: empty for `vm-seconds` (its keys predate the other
    /// meters and must not move), `<name>/` for the others.
    fn key_prefix(self) -> String {
        match self {
            Meter::VmSeconds => String::new(),
            other => format!("{}/", other.name()),
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One amount to charge, exactly once, to an account on a meter. The entry names what is
/// charged (an instance, a run, a metering event) and is unique within the account and
/// meter: a redelivered event charges the same entry again, which changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// What the amount measures.
    pub meter: Meter,
    /// Who pays: valid as one key part ([`validate_name`]).
    pub account: String,
    /// What is charged: valid as one key part.
    pub entry: String,
    /// How much, never negative.
    pub amount: i64,
}

/// Reads a `sandbus.lease.released` event ([`LeaseReleased`], as the host emits it, every
/// field present): the run's device time, charged to its script. The entry is the run id: one
/// lease per run, charged once.
pub fn parse_lease_released(data: &[u8]) -> Result<Charge, String> {
    let data: LeaseReleased = parse_json(
        LEASE_RELEASED,
        data,
        "the fields `run`, `host`, `script`, `reset` (strings), `device` (an object), \
         `held_ms` (an integer) and `verdict` (`pass`, `fail`...); billing charges `held_ms` \
         to `script`",
    )?;
    validate_name("run", &data.run)?;
    validate_name("script", &data.script)?;
    Ok(Charge {
        meter: Meter::LeaseMs,
        account: data.script,
        entry: data.run,
        amount: amount("held_ms", data.held_ms)?,
    })
}

/// Reads a `sandbus.metering` event ([`Metering`], as the host emits it, every field
/// present): per component, its invocations, wall time and fuel over the window (`failed`
/// and `peak_memory` are not charged). The entry is the event id ([`entry_from_id`]): each
/// window is emitted once with one id, and a component appears once per window. Zero amounts
/// charge nothing and are left out.
pub fn parse_metering(id: &str, data: &[u8]) -> Result<Vec<Charge>, String> {
    let data: Metering = parse_json(
        METERING,
        data,
        "the fields `host`, `window_start`, `window_end` (strings) and `components`, a list \
         of {component, world, usage: {invocations, failed, wall_us, peak_memory, fuel}}",
    )?;
    let entry = entry_from_id(id)?;
    let mut charges = Vec::new();
    for component in data.components {
        validate_name("component", &component.component)?;
        let usage = component.usage;
        for (meter, field, value) in [
            (Meter::Invocations, "invocations", usage.invocations),
            (Meter::WallUs, "wall_us", usage.wall_us),
            (Meter::Fuel, "fuel", usage.fuel),
        ] {
            let amount = amount(field, value)?;
            if amount > 0 {
                charges.push(Charge {
                    meter,
                    account: component.component.clone(),
                    entry: entry.clone(),
                    amount,
                });
            }
        }
    }
    Ok(charges)
}

/// Parses event data as JSON of type `T`; the error names the event type and, for a wrong
/// shape, what was `expected`.
fn parse_json<T: serde::de::DeserializeOwned>(
    ty: &str,
    data: &[u8],
    expected: &str,
) -> Result<T, String> {
    serde_json::from_slice(data).map_err(|e| {
        if e.is_data() {
            format!("{ty} data must be a JSON object with {expected}: {e}")
        } else {
            format!("{ty} data is not valid JSON: {e}")
        }
    })
}

/// An amount as stored (a signed 64-bit integer); the error names the field.
fn amount(field: &str, value: u64) -> Result<i64, String> {
    i64::try_from(value).map_err(|_| format!("`{field}` {value} is larger than {}", i64::MAX))
}

/// An event id made into one key part, injectively: letters, digits, `_` and `-` stay, every
/// other byte becomes `=` and two upper-case hex digits (`sandbus.metering/h1/...` becomes
/// `sandbus=2Emetering=2Fh1=2F...`). Two different ids never give the same entry, and `=`
/// is escaped too, so an id cannot pose as another's escape. The error says when the result
/// would be longer than [`MAX_NAME_LEN`].
pub fn entry_from_id(id: &str) -> Result<String, String> {
    if id.is_empty() {
        return Err("the event id is empty".to_string());
    }
    let mut entry = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            entry.push(char::from(byte));
        } else {
            entry.push_str(&format!("={byte:02X}"));
        }
    }
    if entry.len() > MAX_NAME_LEN {
        return Err(format!(
            "the event id {id:?} is too long to bill by ({} bytes once escaped; at most \
             {MAX_NAME_LEN})",
            entry.len()
        ));
    }
    Ok(entry)
}

/// Which fact an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// The instance started (`vm.started`).
    Start,
    /// The instance stopped (`vm.stopped`).
    Stop,
}

impl Fact {
    /// The other fact: the one that completes a usage record.
    pub fn other(self) -> Self {
        match self {
            Fact::Start => Fact::Stop,
            Fact::Stop => Fact::Start,
        }
    }

    /// The key under which this fact is kept for `tenant`/`instance`.
    pub fn key(self, tenant: &str, instance: &str) -> String {
        let prefix = match self {
            Fact::Start => "start",
            Fact::Stop => "stop",
        };
        format!("{prefix}/{tenant}/{instance}")
    }

    /// The verb for log lines (`started`, `stopped`).
    pub fn verb(self) -> &'static str {
        match self {
            Fact::Start => "started",
            Fact::Stop => "stopped",
        }
    }
}

/// A `vm.started` or `vm.stopped` event, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvent {
    /// Start or stop.
    pub fact: Fact,
    /// The tenant billed, valid as a key part.
    pub tenant: String,
    /// The instance, valid as a key part.
    pub instance: String,
    /// When it happened, unix seconds (from the event's `time`).
    pub at: i64,
}

/// The JSON `data` of a vm event. Other fields are allowed and ignored.
#[derive(Deserialize)]
struct VmData {
    tenant: String,
    instance: String,
}

/// Reads a vm event from its attributes.
///
/// `Ok(None)` means the type is not one the listener bills (the event is acknowledged and
/// ignored); `Err` is the reason to reject it.
pub fn parse_vm_event(
    ty: &str,
    time: Option<&str>,
    data: &[u8],
) -> Result<Option<VmEvent>, String> {
    let fact = match ty {
        STARTED => Fact::Start,
        STOPPED => Fact::Stop,
        _ => return Ok(None),
    };
    let data: VmData = serde_json::from_slice(data).map_err(|e| {
        if e.is_data() {
            format!(
                "{ty} data must be a JSON object with string fields `tenant` and `instance`: {e}"
            )
        } else {
            format!("{ty} data is not valid JSON: {e}")
        }
    })?;
    validate_name("tenant", &data.tenant)?;
    validate_name("instance", &data.instance)?;
    let time = time.ok_or_else(|| format!("{ty} event has no `time` attribute"))?;
    let at = crate::time::parse_rfc3339(time).map_err(|e| format!("{ty} event `time`: {e}"))?;
    Ok(Some(VmEvent {
        fact,
        tenant: data.tenant,
        instance: data.instance,
        at,
    }))
}

/// Checks that a tenant or instance can be one part of a key: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, only `[A-Za-z0-9._=-]` (no `/`, which separates key parts), and no
/// empty `.`-separated part (the host's key rules, which follow NATS KV).
///
/// The error names the field.
pub fn validate_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "`{field}` is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-')))
    {
        return Err(format!(
            "`{field}` `{value}` has the character {c:?}; only [A-Za-z0-9._=-] are allowed"
        ));
    }
    if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        return Err(format!(
            "`{field}` `{value}` must not start or end with `.` or contain `..`"
        ));
    }
    Ok(())
}

/// One of the [`SHARDS`] parts a tenant's usage keys are spread over. Shown (and used in
/// keys) as two decimal digits, `00` to `15`, so every shard's keys have the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard(u8);

impl Shard {
    /// The shard of an instance: the 64-bit FNV-1a hash of its name modulo [`SHARDS`]. Stable
    /// across builds, platforms and versions (no seed, no `std` hasher), as it must be: it is
    /// part of the stored usage key.
    pub fn of(instance: &str) -> Self {
        let shard = fnv1a_64(instance.as_bytes()) % u64::from(SHARDS);
        // Below SHARDS, so it fits.
        Shard(u8::try_from(shard).unwrap_or(0))
    }

    /// Every shard, `00` to `15`, in order.
    pub fn all() -> impl Iterator<Item = Shard> {
        (0..SHARDS).map(Shard)
    }

    /// The shard's number, below [`SHARDS`].
    pub fn index(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// The 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The key holding the amount charged for one entry, in its shard:
/// `<m>usage/<account>/<shard>/<entry>` (for vm seconds: `usage/<tenant>/<shard>/<instance>`).
pub fn usage_key(meter: Meter, account: &str, entry: &str) -> String {
    format!(
        "{}usage/{account}/{}/{entry}",
        meter.key_prefix(),
        Shard::of(entry)
    )
}

/// The prefix of every usage key of an account on a meter, all shards (the trailing `/` keeps
/// `acme` from matching `acme2`).
pub fn usage_prefix(meter: Meter, account: &str) -> String {
    format!("{}usage/{account}/", meter.key_prefix())
}

/// The prefix of the usage keys of one shard of an account (the trailing `/` keeps `acme`
/// from matching `acme2`).
pub fn usage_shard_prefix(meter: Meter, account: &str, shard: Shard) -> String {
    format!("{}usage/{account}/{shard}/", meter.key_prefix())
}

/// The key marking that an entry's amount is in its shard sum:
/// `<m>counted/<account>/<shard>/<entry>` (see [`crate::ledger`]).
pub fn counted_key(meter: Meter, account: &str, entry: &str) -> String {
    format!(
        "{}counted/{account}/{}/{entry}",
        meter.key_prefix(),
        Shard::of(entry)
    )
}

/// The key holding one shard's sum (and its pending entries): `<m>shard/<account>/<shard>`.
pub fn shard_key(meter: Meter, account: &str, shard: Shard) -> String {
    format!("{}shard/{account}/{shard}", meter.key_prefix())
}

/// The key recording the shard sums an account's total counts: `<m>sums/<account>`
/// (see [`crate::ledger::ShardSums`]).
pub fn sums_key(meter: Meter, account: &str) -> String {
    format!("{}sums/{account}", meter.key_prefix())
}

/// The key holding an account's total on a meter: the sum of its [`sums_key`] record
/// (`total/<tenant>` for vm seconds, `lease-ms/total/<script>` for lease time...).
pub fn total_key(meter: Meter, account: &str) -> String {
    format!("{}total/{account}", meter.key_prefix())
}

/// Billed seconds: `stop - start`, never negative (a stop stamped before its start, from
/// clock skew between hosts, bills nothing rather than a credit).
pub fn usage_seconds(start: i64, stop: i64) -> i64 {
    stop.saturating_sub(start).max(0)
}

/// The id of the `billing.usage` event of one instance: deterministic, so a redelivered
/// stop or start re-emits the same id and the bus drops the copy.
///
/// The parts are joined with `/`, which a tenant or instance cannot contain, so two different
/// (tenant, instance) pairs never share an id. (Joining with `-`, which they may contain,
/// would let `a-b`/`c` and `a`/`b-c` collide and the bus would drop one as a duplicate.)
pub fn usage_event_id(tenant: &str, instance: &str) -> String {
    format!("billing-usage/{tenant}/{instance}")
}

/// The JSON `data` of a `billing.usage` event. `started` and `stopped` are RFC 3339 in UTC
/// (`2026-11-21T10:00:00Z`), whole seconds, whatever offset the vm events were stamped with.
#[derive(Debug, Serialize)]
pub struct UsageData<'a> {
    /// The tenant billed.
    pub tenant: &'a str,
    /// The instance.
    pub instance: &'a str,
    /// Billed seconds.
    pub seconds: i64,
    /// When the instance started, RFC 3339 UTC.
    pub started: String,
    /// When it stopped, RFC 3339 UTC.
    pub stopped: String,
}

impl<'a> UsageData<'a> {
    /// The payload for one instance.
    pub fn new(tenant: &'a str, instance: &'a str, seconds: i64, start: i64, stop: i64) -> Self {
        Self {
            tenant,
            instance,
            seconds,
            started: crate::time::format_rfc3339(start),
            stopped: crate::time::format_rfc3339(stop),
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Reads a stored decimal value (unix seconds or billed seconds); the error names the key.
pub fn parse_stored(key: &str, value: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            format!(
                "kv `{key}` holds {:?}, not a decimal integer",
                String::from_utf8_lossy(value)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ty: &str, time: Option<&str>, data: &str) -> Result<Option<VmEvent>, String> {
        parse_vm_event(ty, time, data.as_bytes())
    }

    const T: Option<&str> = Some("2026-11-21T10:00:00Z");

    #[test]
    fn reads_a_start_and_a_stop() {
        let e = parse(STARTED, T, r#"{"tenant":"acme","instance":"vm-1"}"#).unwrap();
        assert_eq!(
            e,
            Some(VmEvent {
                fact: Fact::Start,
                tenant: "acme".into(),
                instance: "vm-1".into(),
                at: 1_795_255_200,
            })
        );
        let e = parse(
            STOPPED,
            Some("2026-11-21T12:00:00+02:00"),
            r#"{"tenant":"acme","instance":"vm-1","extra":[1,2]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.fact, Fact::Stop);
        assert_eq!(e.at, 1_795_255_200);
    }

    #[test]
    fn ignores_other_types() {
        assert_eq!(parse("vm.paused", None, "not json"), Ok(None));
        assert_eq!(parse("billing.usage", T, "{}"), Ok(None));
    }

    #[test]
    fn rejects_bad_json_with_the_parse_error() {
        let e = parse(STARTED, T, "{not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        assert!(e.contains("line 1 column 2"), "{e}");
        let e = parse(STARTED, T, "").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn rejects_wrong_shapes() {
        let e = parse(STARTED, T, r#"{"tenant":"acme"}"#).unwrap_err();
        assert!(e.contains("missing field `instance`"), "{e}");
        let e = parse(STARTED, T, r#"{"tenant":5,"instance":"vm-1"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = parse(STARTED, T, "[1]").unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
    }

    #[test]
    fn rejects_missing_or_bad_time() {
        let data = r#"{"tenant":"acme","instance":"vm-1"}"#;
        let e = parse(STOPPED, None, data).unwrap_err();
        assert!(e.contains("no `time`"), "{e}");
        let e = parse(STOPPED, Some("yesterday"), data).unwrap_err();
        assert!(e.contains("yesterday"), "{e}");
    }

    #[test]
    fn rejects_bad_names_naming_the_field() {
        let cases = [
            (r#"{"tenant":"","instance":"vm-1"}"#, "`tenant` is empty"),
            (r#"{"tenant":"acme","instance":""}"#, "`instance` is empty"),
            (r#"{"tenant":"ac/me","instance":"vm-1"}"#, "`tenant`"),
            (r#"{"tenant":"acme","instance":"vm/1"}"#, "`instance`"),
            (r#"{"tenant":"acme","instance":"vm 1"}"#, "`instance`"),
            (r#"{"tenant":"acmé","instance":"vm-1"}"#, "`tenant`"),
            (r#"{"tenant":"acme","instance":"vm*"}"#, "`instance`"),
            (r#"{"tenant":"acme.","instance":"vm-1"}"#, "`tenant`"),
            (r#"{"tenant":"a..b","instance":"vm-1"}"#, "`tenant`"),
        ];
        for (data, want) in cases {
            let e = parse(STARTED, T, data).unwrap_err();
            assert!(e.contains(want), "{data}: {e}");
        }
    }

    #[test]
    fn names_allow_the_key_alphabet() {
        assert_eq!(validate_name("tenant", "Acme_Corp.eu-1=x"), Ok(()));
        assert_eq!(validate_name("tenant", &"a".repeat(MAX_NAME_LEN)), Ok(()));
        let e = validate_name("tenant", &"a".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(e.contains("`tenant`"), "{e}");
    }

    #[test]
    fn keys_and_ids() {
        assert_eq!(Fact::Start.key("acme", "vm-1"), "start/acme/vm-1");
        assert_eq!(Fact::Stop.key("acme", "vm-1"), "stop/acme/vm-1");
        assert_eq!(Fact::Start.other(), Fact::Stop);
        assert_eq!(
            usage_key(Meter::VmSeconds, "acme", "vm-1"),
            "usage/acme/06/vm-1"
        );
        assert_eq!(
            usage_key(Meter::VmSeconds, "acme", "vm-2"),
            "usage/acme/03/vm-2"
        );
        assert_eq!(usage_prefix(Meter::VmSeconds, "acme"), "usage/acme/");
        assert_eq!(
            usage_shard_prefix(Meter::VmSeconds, "acme", Shard::of("vm-1")),
            "usage/acme/06/"
        );
        assert_eq!(
            shard_key(Meter::VmSeconds, "acme", Shard::of("vm-1")),
            "shard/acme/06"
        );
        assert_eq!(total_key(Meter::VmSeconds, "acme"), "total/acme");
        assert_eq!(usage_event_id("acme", "vm-1"), "billing-usage/acme/vm-1");
        assert_ne!(usage_event_id("a-b", "c"), usage_event_id("a", "b-c"));
    }

    #[test]
    fn fnv1a_64_matches_the_reference_vectors() {
        // From the FNV reference test suite: the shard must not depend on a hasher that can
        // change (it is part of every stored usage key).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_are_stable() {
        // Pinned: changing any of these re-files stored usage under new keys.
        let pinned = [("vm-1", 6), ("vm-2", 3), ("a", 12), ("acme", 15)];
        for (instance, want) in pinned {
            assert_eq!(Shard::of(instance).index(), want, "{instance}");
            // The shard depends on the instance name only, not on the tenant.
            assert_eq!(
                usage_key(Meter::VmSeconds, "acme", instance).strip_prefix("usage/acme/"),
                usage_key(Meter::VmSeconds, "globex", instance).strip_prefix("usage/globex/"),
            );
        }
        assert_eq!(SHARDS, 16);
    }

    #[test]
    fn shards_are_in_range_and_fixed_width() {
        let all: Vec<String> = Shard::all().map(|s| s.to_string()).collect();
        assert_eq!(all.len(), usize::from(SHARDS));
        assert_eq!(all.first().map(String::as_str), Some("00"));
        assert_eq!(all.get(9).map(String::as_str), Some("09"));
        assert_eq!(all.last().map(String::as_str), Some("15"));
        for (i, (shard, text)) in Shard::all().zip(&all).enumerate() {
            assert_eq!(usize::from(shard.index()), i);
            assert_eq!(text.len(), 2, "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_digit()), "{text}");
        }
        // Every instance lands in one of them, and a few hundred instances use all of them.
        let mut used = [0usize; SHARDS as usize];
        for i in 0..500 {
            let shard = Shard::of(&format!("vm-{i}"));
            assert!(shard.index() < SHARDS);
            assert!(Shard::all().any(|s| s == shard));
            used[usize::from(shard.index())] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "{used:?}");
        let long = "x".repeat(MAX_NAME_LEN);
        assert!(Shard::of(&long).index() < SHARDS);
    }

    /// The checks the host makes on every key (`[A-Za-z0-9._=/-]`, at most 512 bytes, no
    /// empty `.`-separated part).
    fn assert_valid_key(key: &str) {
        assert!(
            !key.is_empty() && key.len() <= 512,
            "{} bytes: {key}",
            key.len()
        );
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '/' | '-')),
            "{key}"
        );
        assert!(
            !key.starts_with('.') && !key.ends_with('.') && !key.contains(".."),
            "{key}"
        );
    }

    #[test]
    fn keys_are_valid_even_for_the_longest_names() {
        let long = "a".repeat(MAX_NAME_LEN);
        let shard = Shard::of(&long);
        for key in [
            Fact::Start.key(&long, &long),
            Fact::Stop.key(&long, &long),
            usage_key(Meter::VmSeconds, &long, &long),
            shard_key(Meter::VmSeconds, &long, shard),
            counted_key(Meter::VmSeconds, &long, &long),
            sums_key(Meter::VmSeconds, &long),
            total_key(Meter::VmSeconds, &long),
            usage_prefix(Meter::VmSeconds, &long) + "x",
            usage_shard_prefix(Meter::VmSeconds, &long, shard) + "x",
        ] {
            assert_valid_key(&key);
        }
        assert_eq!(usage_key(Meter::VmSeconds, &long, &long).len(), 410);
    }

    #[test]
    fn shard_and_usage_keys_never_collide() {
        let tenants = ["acme", "acme2", "a", "a.b", "00", "shard", "usage", "total"];
        let instances = [
            "vm-1",
            "vm-2",
            "00",
            "15",
            "x",
            "shard",
            "usage",
            "a.b=c_d-e",
        ];
        let mut usage = Vec::new();
        let mut others = Vec::new();
        for tenant in tenants {
            for instance in instances {
                usage.push((
                    tenant,
                    Shard::of(instance),
                    usage_key(Meter::VmSeconds, tenant, instance),
                ));
                others.push(Fact::Start.key(tenant, instance));
                others.push(Fact::Stop.key(tenant, instance));
                others.push(counted_key(Meter::VmSeconds, tenant, instance));
            }
            for shard in Shard::all() {
                others.push(shard_key(Meter::VmSeconds, tenant, shard));
            }
            others.push(sums_key(Meter::VmSeconds, tenant));
            others.push(total_key(Meter::VmSeconds, tenant));
        }
        // Only usage keys are under `usage/`: counting them counts billed instances.
        for key in &others {
            assert!(!key.starts_with("usage/"), "{key}");
            assert!(usage.iter().all(|(_, _, u)| u != key), "{key}");
        }
        for tenant in tenants {
            for shard in Shard::all() {
                let prefix = usage_shard_prefix(Meter::VmSeconds, tenant, shard);
                assert!(
                    prefix.starts_with(&usage_prefix(Meter::VmSeconds, tenant)),
                    "{prefix}"
                );
                // A shard's prefix lists exactly that tenant's usage keys in that shard.
                for (t, s, key) in &usage {
                    assert_eq!(
                        key.starts_with(&prefix),
                        *t == tenant && *s == shard,
                        "{prefix} vs {key}"
                    );
                }
                for key in &others {
                    assert!(!key.starts_with(&prefix), "{prefix} vs {key}");
                }
            }
            // The tenant prefix lists that tenant's usage keys only (not `acme2`'s for `acme`).
            for (t, _, key) in &usage {
                assert_eq!(
                    key.starts_with(&usage_prefix(Meter::VmSeconds, tenant)),
                    *t == tenant,
                    "{key}"
                );
            }
        }
        // One usage key per (tenant, instance).
        let mut keys: Vec<&String> = usage.iter().map(|(_, _, k)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), tenants.len() * instances.len());
    }

    #[test]
    fn usage_is_never_negative() {
        assert_eq!(usage_seconds(100, 220), 120);
        assert_eq!(usage_seconds(220, 100), 0);
        assert_eq!(usage_seconds(i64::MIN, i64::MAX), i64::MAX);
    }

    #[test]
    fn usage_data_json() {
        let json = UsageData::new("acme", "vm-1", 120, 1_795_255_200, 1_795_255_320).to_json();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"tenant":"acme","instance":"vm-1","seconds":120,"started":"2026-11-21T10:00:00Z","stopped":"2026-11-21T10:02:00Z"}"#
        );
    }

    #[test]
    fn stored_values() {
        assert_eq!(parse_stored("k", b"120"), Ok(120));
        assert_eq!(parse_stored("k", b"-5"), Ok(-5));
        let e = parse_stored("usage/acme/vm-1", b"12x").unwrap_err();
        assert!(e.contains("usage/acme/vm-1"), "{e}");
        assert!(parse_stored("k", &[0xff]).is_err());
    }

    /// A `sandbus.lease.released` event's data as the host emits it (every field, the device
    /// whole), for run `run` of `script` that held its device `held_ms`.
    fn lease_released(run: &str, script: &str, held_ms: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "run": run,
            "host": "h1",
            "device": {
                "id": "board-1", "vendor_id": 4617, "product_id": 1, "serial": null,
                "manufacturer": "pid.codes", "product": "Test board", "location": "1-2.3",
                "class": 0,
            },
            "script": script,
            "held_ms": held_ms,
            "reset": "ok",
            "verdict": "pass",
        })
    }

    fn bytes(data: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(data).unwrap()
    }

    #[test]
    fn a_released_lease_charges_its_run_to_the_script() {
        let data = lease_released("r-1795255200000-0a1b2c3d", "smoke", 1520.into());
        assert_eq!(
            parse_lease_released(&bytes(&data)),
            Ok(Charge {
                meter: Meter::LeaseMs,
                account: "smoke".into(),
                entry: "r-1795255200000-0a1b2c3d".into(),
                amount: 1520,
            })
        );
        let mut without_held_ms = lease_released("r-1", "smoke", 1.into());
        without_held_ms.as_object_mut().unwrap().remove("held_ms");
        let e = parse_lease_released(&bytes(&without_held_ms)).unwrap_err();
        assert!(e.contains("held_ms"), "{e}");
        assert!(e.contains(LEASE_RELEASED), "{e}");
        assert!(e.contains("missing field `held_ms`"), "{e}");
        let e =
            parse_lease_released(&bytes(&lease_released("r/1", "smoke", 1.into()))).unwrap_err();
        assert!(e.contains("`run`"), "{e}");
        let e =
            parse_lease_released(&bytes(&lease_released("r-1", "smoke", (-1).into()))).unwrap_err();
        assert!(e.contains("held_ms"), "{e}");
        let e = parse_lease_released(&bytes(&lease_released("r-1", "smoke", u64::MAX.into())))
            .unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }

    /// A `sandbus.metering` event's data as the host emits it (every field), for a window
    /// with `components`.
    fn metering(components: serde_json::Value) -> Vec<u8> {
        bytes(&serde_json::json!({
            "host": "h1",
            "window_start": "2026-11-22T10:00:00.123Z",
            "window_end": "2026-11-22T10:00:10.123Z",
            "components": components,
        }))
    }

    #[test]
    fn a_metering_window_charges_each_component_its_nonzero_usage() {
        let data = br#"{"host":"h1","window_start":"a","window_end":"b","components":[
            {"component":"billing","world":"listener","usage":{"invocations":3,"failed":1,"wall_us":900,"peak_memory":65536,"fuel":0}},
            {"component":"smoke","world":"script","usage":{"invocations":1,"failed":0,"wall_us":5,"peak_memory":1,"fuel":77}}]}"#;
        let id = "sandbus.metering/h1/2026-11-22T10:00:00.123Z/4";
        let charges = parse_metering(id, data).unwrap();
        let entry = "sandbus=2Emetering=2Fh1=2F2026-11-22T10=3A00=3A00=2E123Z=2F4";
        let got: Vec<(Meter, &str, &str, i64)> = charges
            .iter()
            .map(|c| (c.meter, c.account.as_str(), c.entry.as_str(), c.amount))
            .collect();
        assert_eq!(
            got,
            [
                (Meter::Invocations, "billing", entry, 3),
                (Meter::WallUs, "billing", entry, 900),
                (Meter::Invocations, "smoke", entry, 1),
                (Meter::WallUs, "smoke", entry, 5),
                (Meter::Fuel, "smoke", entry, 77),
            ]
        );
        let bad_name = serde_json::json!([{
            "component": "a b",
            "world": "listener",
            "usage": { "invocations": 1, "failed": 0, "wall_us": 1, "peak_memory": 1, "fuel": 0 },
        }]);
        let e = parse_metering(id, &metering(bad_name)).unwrap_err();
        assert!(e.contains("`component`"), "{e}");
        let e = parse_metering(id, &metering(5.into())).unwrap_err();
        assert!(e.contains(METERING), "{e}");
        let e = parse_metering("", &metering(serde_json::json!([]))).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn entries_from_ids_are_injective_valid_key_parts() {
        let ids = [
            "a.b", "a=2Eb", "a/b", "a:b", "a_b", "a-b", "ab", "a..b", "=", "é",
        ];
        let entries: Vec<String> = ids.iter().map(|id| entry_from_id(id).unwrap()).collect();
        for entry in &entries {
            assert_eq!(validate_name("entry", entry), Ok(()), "{entry}");
        }
        let mut unique = entries.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{entries:?}");
        assert_eq!(entry_from_id("a=2Eb").unwrap(), "a=3D2Eb");
        let e = entry_from_id(&"/".repeat(MAX_NAME_LEN)).unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn meters_never_share_keys() {
        let mut keys = Vec::new();
        for meter in Meter::ALL {
            for account in ["acme", "lease-ms", "usage", "counted", "sums", "total"] {
                keys.push(usage_key(meter, account, "e"));
                keys.push(shard_key(meter, account, Shard::of("e")));
                keys.push(counted_key(meter, account, "e"));
                keys.push(sums_key(meter, account));
                keys.push(total_key(meter, account));
                let (long_account, long_entry) =
                    ("a".repeat(MAX_NAME_LEN), "e".repeat(MAX_NAME_LEN));
                assert_valid_key(&usage_key(meter, &long_account, &long_entry));
                assert_valid_key(&counted_key(meter, &long_account, &long_entry));
            }
        }
        let count = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count);
        assert_eq!(total_key(Meter::LeaseMs, "smoke"), "lease-ms/total/smoke");
        assert_eq!(total_key(Meter::VmSeconds, "acme"), "total/acme");
        assert_eq!(
            usage_key(Meter::WallUs, "billing", "vm-1"),
            "wall-us/usage/billing/06/vm-1"
        );
    }
}
