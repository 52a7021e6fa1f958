//! Per-component limits: what one component may use, per call and in total.
//!
//! Every limit has a safe default and can be set per component with `NAME=VALUE` strings
//! (`--limit memory=64MiB --limit timeout=2s`), which is also how manifests will carry them.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;

use super::World;

/// Longest deadline a call may be given: a day (a script run can be long, not endless).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest memory cap: all of a 32-bit wasm address space. A host's own ceiling
/// ([`super::SandboxConfig::memory_ceiling`]) and memory budget may be lower.
pub const MAX_MEMORY: u64 = 4 << 30;

/// Largest payload limit: 64 MiB, the most a NATS message can ever carry.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Smallest and largest log cap per invocation. Below a kilobyte a component could not even
/// say why it failed; above 64 MiB one call's log would be a storage problem.
pub const LOG_BYTES: std::ops::RangeInclusive<u64> = (1 << 10)..=(64 << 20);

/// Most instances of one component alive at once. A host's pool
/// ([`super::SandboxConfig::pool_instances`]) and memory budget may allow fewer.
pub const MAX_INSTANCES: u32 = 4096;

/// Highest publish rate cap, per second.
pub const MAX_PUBLISH_RATE: u32 = 1_000_000;

/// Most publishes one call may make before the rate cap applies to it.
pub const MAX_PUBLISH_BUDGET: u32 = 1_000;

/// Limits applied to every invocation of one component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Cap on the guest's linear memory, all memories together, in bytes.
    pub memory: u64,
    /// Wall-clock deadline of one call, covering guest code and the host calls it makes.
    #[serde(with = "humantime_serde_shim")]
    pub timeout: Duration,
    /// Fuel (roughly: wasm instructions) per call; used only when the sandbox meters fuel.
    pub fuel: Option<u64>,
    /// Instances of this component alive at once; further calls wait for a free slot.
    pub max_instances: u32,
    /// Bytes of log one invocation may write; the rest is dropped and counted.
    pub log_bytes: u64,
    /// Messages per second the component may publish (all its invocations together) beyond
    /// what each call's [`publish_budget`](Self::publish_budget) covers.
    pub publish_rate: u32,
    /// Publishes (and emits) each call may make before [`publish_rate`](Self::publish_rate)
    /// counts them. A listener earns them with each event it is handed, so one that emits
    /// this many per event runs as fast as its events come, never at the rate cap. The
    /// default, 1, cannot amplify: a chain of listeners (even a loop, which the depth guard
    /// ends) gets at most one free event per event it consumes.
    #[serde(default = "default_publish_budget")]
    pub publish_budget: u32,
    /// Largest payload in or out: event data, published payloads, kv values, return values.
    pub max_payload: u64,
    /// Bytes the component's key-value space may hold (keys and values): a write that would
    /// grow it past this is refused.
    #[serde(default = "default_kv_bytes")]
    pub kv_bytes: u64,
    /// Keys the component's key-value space may hold: a write that would add one past this
    /// is refused.
    #[serde(default = "default_kv_keys")]
    pub kv_keys: u64,
}

fn default_publish_budget() -> u32 {
    Limits::default().publish_budget
}

fn default_kv_bytes() -> u64 {
    Limits::default().kv_bytes
}

fn default_kv_keys() -> u64 {
    Limits::default().kv_keys
}

/// Bounds of a kv-bytes quota: a kilobyte to a terabyte.
pub const KV_BYTES: std::ops::RangeInclusive<u64> = (1 << 10)..=(1 << 40);

/// Bounds of a kv-keys quota.
pub const KV_KEYS: std::ops::RangeInclusive<u64> = 1..=100_000_000;

impl Limits {
    /// The defaults for a role: listeners get a short deadline, scripts a long one.
    pub fn for_world(world: World) -> Self {
        let timeout = match world {
            World::Listener => Duration::from_secs(2),
            World::Script => Duration::from_secs(600),
            // Asked while an operation waits; the extension point's deadline may be shorter.
            World::Hook => Duration::from_secs(1),
        };
        Self {
            timeout,
            ..Self::default()
        }
    }

    /// Applies one `NAME=VALUE` setting, for example `memory=64MiB` or `timeout=2s`.
    ///
    /// Names: `memory`, `timeout`, `fuel`, `instances`, `log`, `publish-rate`,
    /// `publish-budget`, `payload`, `kv-bytes`, `kv-keys`.
    /// On error nothing is changed.
    pub fn apply(&mut self, setting: &str) -> Result<(), LimitError> {
        let (name, value) = setting.split_once('=').ok_or_else(|| {
            LimitError::new(setting, "expected NAME=VALUE, for example memory=64MiB")
        })?;
        let (name, value) = (name.trim(), value.trim());
        let bytes = |v: &str| -> Result<u64, LimitError> {
            v.parse::<ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| LimitError::new(setting, &format!("not a size ({e}); use e.g. 64MiB")))
        };
        let count = |v: &str| -> Result<u64, LimitError> {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| LimitError::new(setting, "not a whole number"))
        };
        let mut next = self.clone();
        match name {
            "memory" => next.memory = bytes(value)?,
            "timeout" => {
                next.timeout = humantime::parse_duration(value).map_err(|e| {
                    LimitError::new(
                        setting,
                        &format!("not a duration ({e}); use e.g. 2s or 500ms"),
                    )
                })?
            }
            "fuel" => next.fuel = Some(count(value)?),
            "instances" => {
                next.max_instances = u32::try_from(count(value)?)
                    .map_err(|_| LimitError::new(setting, "too many instances"))?
            }
            "log" => next.log_bytes = bytes(value)?,
            "publish-rate" => {
                let v = value.strip_suffix("/s").unwrap_or(value);
                next.publish_rate = u32::try_from(count(v)?)
                    .map_err(|_| LimitError::new(setting, "rate too large"))?
            }
            "publish-budget" => {
                next.publish_budget = u32::try_from(count(value)?)
                    .map_err(|_| LimitError::new(setting, "budget too large"))?
            }
            "payload" => next.max_payload = bytes(value)?,
            "kv-bytes" => next.kv_bytes = bytes(value)?,
            "kv-keys" => next.kv_keys = count(value)?,
            _ => {
                return Err(LimitError::new(
                    setting,
                    "unknown limit; known: memory, timeout, fuel, instances, log, publish-rate, \
                     publish-budget, payload, kv-bytes, kv-keys",
                ));
            }
        }
        next.validate()
            .map_err(|why| LimitError::new(setting, &why.message))?;
        *self = next;
        Ok(())
    }

    /// Checks every limit is within its bounds (the same everywhere; a host may have lower
    /// ceilings of its own, checked when it loads the component).
    pub fn validate(&self) -> Result<(), LimitOutOfBounds> {
        use LimitName as L;
        let out = |limit, message: String| Err(LimitOutOfBounds::new(limit, message));
        let size = |bytes: u64| ByteSize(bytes).display().iec().to_string();
        if self.memory < 64 * 1024 {
            return out(
                L::Memory,
                "memory must be at least 64KiB (one wasm page)".into(),
            );
        }
        if self.memory > MAX_MEMORY {
            return out(
                L::Memory,
                format!(
                    "memory must be at most {} (a 32-bit wasm address space)",
                    size(MAX_MEMORY)
                ),
            );
        }
        if self.timeout.is_zero() {
            return out(L::Timeout, "timeout must be more than zero".into());
        }
        if self.timeout > MAX_TIMEOUT {
            return out(
                L::Timeout,
                format!(
                    "timeout must be at most {}",
                    humantime::format_duration(MAX_TIMEOUT)
                ),
            );
        }
        if self.publish_rate == 0 {
            return out(
                L::PublishRate,
                "publish-rate must be at least 1/s; grant no subject to forbid publishing".into(),
            );
        }
        if self.publish_rate > MAX_PUBLISH_RATE {
            return out(
                L::PublishRate,
                format!("publish-rate must be at most {MAX_PUBLISH_RATE}/s"),
            );
        }
        if self.publish_budget > MAX_PUBLISH_BUDGET {
            return out(
                L::PublishBudget,
                format!("publish-budget must be at most {MAX_PUBLISH_BUDGET} per call"),
            );
        }
        if self.max_instances == 0 {
            return out(L::Instances, "instances must be at least 1".into());
        }
        if self.max_instances > MAX_INSTANCES {
            return out(
                L::Instances,
                format!("instances must be at most {MAX_INSTANCES}"),
            );
        }
        if self.max_payload == 0 {
            return out(L::Payload, "payload must be more than zero".into());
        }
        if self.max_payload > MAX_PAYLOAD {
            return out(
                L::Payload,
                format!(
                    "payload must be at most {} (the most a NATS message can carry)",
                    size(MAX_PAYLOAD)
                ),
            );
        }
        if !KV_BYTES.contains(&self.kv_bytes) {
            return out(
                L::KvBytes,
                format!(
                    "kv-bytes must be {} to {}",
                    size(*KV_BYTES.start()),
                    size(*KV_BYTES.end())
                ),
            );
        }
        if !KV_KEYS.contains(&self.kv_keys) {
            return out(
                L::KvKeys,
                format!("kv-keys must be {} to {}", KV_KEYS.start(), KV_KEYS.end()),
            );
        }
        if !LOG_BYTES.contains(&self.log_bytes) {
            return out(
                L::Log,
                format!(
                    "log must be {} to {}",
                    size(*LOG_BYTES.start()),
                    size(*LOG_BYTES.end())
                ),
            );
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            timeout: Duration::from_secs(2),
            fuel: None,
            max_instances: 16,
            log_bytes: 1 << 20,
            publish_rate: 100,
            publish_budget: 1,
            max_payload: 1 << 20,
            kv_bytes: 64 << 20,
            kv_keys: 100_000,
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory={} timeout={} instances={} log={} publish-rate={}/s publish-budget={} \
             payload={} kv-bytes={} kv-keys={}",
            ByteSize(self.memory).display().iec(),
            humantime::format_duration(self.timeout),
            self.max_instances,
            ByteSize(self.log_bytes).display().iec(),
            self.publish_rate,
            self.publish_budget,
            ByteSize(self.max_payload).display().iec(),
            ByteSize(self.kv_bytes).display().iec(),
            self.kv_keys,
        )?;
        if let Some(fuel) = self.fuel {
            write!(f, " fuel={fuel}")?;
        }
        Ok(())
    }
}

/// Which limit [`Limits::validate`] found out of its bounds, by its `NAME=VALUE` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitName {
    /// `memory`.
    Memory,
    /// `timeout`.
    Timeout,
    /// `publish-rate`.
    PublishRate,
    /// `publish-budget`.
    PublishBudget,
    /// `instances`.
    Instances,
    /// `payload`.
    Payload,
    /// `kv-bytes`.
    KvBytes,
    /// `kv-keys`.
    KvKeys,
    /// `log`.
    Log,
}

/// A limit out of its bounds: which one, and (the message) what its bounds are.
pub type LimitOutOfBounds = crate::error::Error<LimitName>;

/// A limit setting that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limit `{setting}`: {reason}")]
pub struct LimitError {
    /// The setting as given.
    pub setting: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

impl LimitError {
    fn new(setting: &str, reason: &str) -> Self {
        Self {
            setting: setting.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Serialises durations as humantime text (`2s`), the same form the CLI takes.
mod humantime_serde_shim {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_units() {
        let mut l = Limits::default();
        l.apply("memory=32MiB").unwrap();
        l.apply("timeout=750ms").unwrap();
        l.apply("publish-rate=50/s").unwrap();
        l.apply("publish-budget=4").unwrap();
        l.apply("payload=64KiB").unwrap();
        l.apply("fuel=1_000_000").unwrap();
        l.apply("kv-bytes=1GiB").unwrap();
        l.apply("kv-keys=1_000_000").unwrap();
        assert_eq!((l.kv_bytes, l.kv_keys), (1 << 30, 1_000_000));
        assert_eq!(l.memory, 32 << 20);
        assert_eq!(l.timeout, Duration::from_millis(750));
        assert_eq!(l.publish_rate, 50);
        assert_eq!(l.publish_budget, 4);
        assert_eq!(l.max_payload, 64 << 10);
        assert_eq!(l.fuel, Some(1_000_000));
    }

    #[test]
    fn bad_settings_say_why_and_change_nothing() {
        let mut l = Limits::default();
        for (bad, needle) in [
            ("memory", "NAME=VALUE"),
            ("memory=lots", "not a size"),
            ("timeout=soon", "not a duration"),
            ("timeout=0s", "more than zero"),
            ("memory=1KiB", "at least 64KiB"),
            ("colour=blue", "unknown limit"),
            ("timeout=300000000000years", "at most"),
            ("timeout=2days", "at most 1day"),
            ("publish-rate=0", "at least 1/s"),
            ("publish-rate=2000000/s", "at most 1000000/s"),
            ("publish-budget=5000", "at most 1000 per call"),
            ("publish-budget=-1", "not a whole number"),
            ("payload=1TiB", "at most 64.0 MiB"),
            ("memory=1TiB", "at most 4.0 GiB"),
            ("log=0", "log must be 1.0 KiB to 64.0 MiB"),
            ("log=1GiB", "log must be"),
            ("instances=0", "at least 1"),
            ("instances=100000", "at most 4096"),
            ("kv-bytes=10", "kv-bytes must be"),
            ("kv-keys=0", "kv-keys must be 1 to"),
        ] {
            let err = l.apply(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        assert_eq!(l, Limits::default());
    }

    #[test]
    fn a_limit_out_of_bounds_is_named() {
        let out = |limits: Limits| limits.validate().map_err(|e| e.kind).err();
        let defaults = Limits::default();
        assert_eq!(out(defaults.clone()), None);
        assert_eq!(
            out(Limits {
                memory: 1,
                ..defaults.clone()
            }),
            Some(LimitName::Memory)
        );
        assert_eq!(
            out(Limits {
                kv_keys: 0,
                ..defaults.clone()
            }),
            Some(LimitName::KvKeys)
        );
        assert_eq!(
            out(Limits {
                log_bytes: 0,
                ..defaults
            }),
            Some(LimitName::Log)
        );
    }
}
