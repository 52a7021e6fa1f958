//! The daemon's configuration: `sandbus.toml`, overridden by command-line flags.
//!
//! Every table and key is optional; unknown keys are refused (a typo must not silently fall
//! back to a default). Example:
//!
//! ```toml
//! [nats]
//! url = "nats://nats.lab:4222"
//! creds = "/etc/sandbus/daemon.creds"
//!
//! [host]
//! id = "lab-7"
//! data_dir = "/var/lib/sandbus"
//!
//! [sandbox]
//! pool_instances = 256
//! memory_budget = "8GiB"                   # all guest instances together
//! compile_timeout = "60s"                  # compile budget per component, in a worker:
//! compile_memory = "2GiB"                  #   time and memory (over it: refused)
//! compile_concurrency = 1                  #   and compiles at once
//!
//! [events]
//! max_age = "14d"
//!
//! [listeners]
//! batch = 128
//! shutdown_grace = "10s"
//! idle_after = "60s"                       # an idle listener's consumer is deleted; "0s": never
//!
//! [devices]
//! simulate = "/etc/sandbus/devices.toml"   # simulated devices instead of real USB
//! hotplug = true                           # libusb hotplug events; false: poll only
//! scan_every = "2s"                        # how often devices are scanned
//!
//! [metrics]
//! listen = "127.0.0.1:9464"                # Prometheus text at GET /metrics
//!
//! [metering]
//! window = "10s"                           # one sandbus.metering event per window
//!
//! [kv]
//! max_bytes = "1GiB"                       # the guests' kv bucket, all components
//! cache_bytes = "64MiB"                    # this daemon's copy of it, serving reads ("0": none)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;

use crate::bus::{EventStreamConfig, NatsOptions};
use crate::error::{Input, InvalidInput};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// How to reach NATS.
    pub nats: NatsOptions,
    /// This host.
    pub host: HostSection,
    /// The sandbox.
    pub sandbox: SandboxSection,
    /// The events stream.
    pub events: EventStreamConfig,
    /// Listener dispatch.
    pub listeners: ListenersSection,
    /// USB devices.
    pub devices: DevicesSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Metering events.
    pub metering: MeteringSection,
    /// The guests' key-value bucket.
    pub kv: KvSection,
}

/// `[kv]`: the bucket holding every component's key-value space.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvSection {
    /// Most bytes the bucket holds, all components together (each also has its own
    /// `kv-bytes` quota); a write to a full bucket is refused. `"-1"`: no bound.
    #[serde(with = "bound_serde")]
    pub max_bytes: i64,
    /// Most bytes (keys and values) of this daemon's copy of the bucket, which serves guests'
    /// reads without a round trip to the server; keys past it are read from the server.
    /// `"0"`: no copy.
    pub cache_bytes: ByteSize,
}

impl Default for KvSection {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            cache_bytes: ByteSize(crate::bus::DEFAULT_CACHE_BYTES),
        }
    }
}

/// `serde(with)` for a bound written like `"1GiB"`, or `"-1"` for none.
mod bound_serde {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "-1" {
            return Ok(-1);
        }
        text.parse::<bytesize::ByteSize>()
            .ok()
            .and_then(|b| i64::try_from(b.as_u64()).ok())
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size like 1GiB (or -1 for no bound)"
                ))
            })
    }
}

/// `[metering]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeteringSection {
    /// How often the usage of every component is emitted as one `sandbus.metering` event.
    #[serde(with = "crate::bus::humantime_serde")]
    pub window: Duration,
}

impl Default for MeteringSection {
    fn default() -> Self {
        Self {
            window: super::metering::DEFAULT_WINDOW,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to serve `GET /metrics` (e.g. `127.0.0.1:9464`); off when absent.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[devices]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesSection {
    /// Use the simulated devices described in this file instead of real USB (libusb).
    pub simulate: Option<PathBuf>,
    /// Learn of USB arrivals and departures from libusb's hotplug events (at once) as well
    /// as by polling (every `scan_every`). `false` polls only.
    pub hotplug: bool,
    /// How often the devices are scanned (default 2 s): the only way to see arrivals and
    /// departures without hotplug, a backstop with it.
    #[serde(with = "crate::bus::humantime_serde")]
    pub scan_every: Duration,
}

impl Default for DevicesSection {
    fn default() -> Self {
        Self {
            simulate: None,
            hotplug: true,
            scan_every: crate::daemon::lab::SCAN_EVERY,
        }
    }
}

/// `[host]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostSection {
    /// Stable host id; by default generated once and kept in the data directory.
    pub id: Option<String>,
    /// Where the host id, the compile cache and (for `sandbus up`) the NATS store live.
    pub data_dir: Option<PathBuf>,
}

/// `[sandbox]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSection {
    /// Use the pooling allocator.
    pub pooling: bool,
    /// Instances alive at once, all components together.
    pub pool_instances: u32,
    /// Meter fuel.
    pub fuel: bool,
    /// Cache compiled components on disk.
    pub cache: bool,
    /// Where [default: `<data_dir>/cache`]. Must be private to the daemon's user.
    pub cache_dir: Option<PathBuf>,
    /// Linear memory all guest instances together may hold, e.g. `"8GiB"` [default: half
    /// of the machine's memory]. Calls wait for their memory cap to fit; a component whose
    /// `memory × instances` alone is over it is refused.
    pub memory_budget: Option<ByteSize>,
    /// Longest one component may take to compile (in a worker process, killed after it); a
    /// component that takes longer is refused on upload and fails to load.
    #[serde(with = "crate::bus::humantime_serde")]
    pub compile_timeout: Duration,
    /// Most memory one compile may use, e.g. `2GiB`; over it, as over the timeout.
    pub compile_memory: ByteSize,
    /// Compiles at once; the others wait for their turn.
    pub compile_concurrency: usize,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            pooling: true,
            pool_instances: 128,
            fuel: false,
            cache: true,
            cache_dir: None,
            memory_budget: None,
            compile_timeout: crate::sandbox::DEFAULT_COMPILE_TIMEOUT,
            compile_memory: ByteSize(crate::sandbox::DEFAULT_COMPILE_MEMORY),
            compile_concurrency: crate::sandbox::DEFAULT_COMPILE_CONCURRENCY,
        }
    }
}

/// Least memory a compile budget may give: the worker itself needs some before it compiles.
pub const MIN_COMPILE_MEMORY: u64 = 16 << 20;

/// `[listeners]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersSection {
    /// Most events asked for in one pull.
    pub batch: usize,
    /// How long events in flight may run on after SIGINT/SIGTERM before they are naked.
    #[serde(with = "crate::bus::humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a listener with nothing pending and nothing in flight keeps its consumer;
    /// then it is idle: its consumer is deleted (where it stood is kept) and made again by
    /// its next event. `"0s"`: listeners are never idled.
    #[serde(with = "crate::bus::humantime_serde")]
    pub idle_after: Duration,
}

/// How long a listener with nothing to do keeps its consumer, by default.
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(60);

impl ListenersSection {
    /// `idle_after`, or `None` when listeners are never idled.
    pub fn idle_after(&self) -> Option<Duration> {
        (!self.idle_after.is_zero()).then_some(self.idle_after)
    }
}

impl Default for ListenersSection {
    fn default() -> Self {
        Self {
            batch: 128,
            shutdown_grace: Duration::from_secs(10),
            idle_after: DEFAULT_IDLE_AFTER,
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path} is not a valid sandbus config: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
}

impl ConfigFile {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: ConfigFile = toml::from_str(&text).map_err(|e| ConfigFileError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check().map_err(|e| ConfigFileError::Invalid {
            path: path.to_owned(),
            message: e.message,
        })?;
        Ok(config)
    }

    /// Checks values serde can't.
    pub fn check(&self) -> Result<(), InvalidInput> {
        self.nats
            .validate()
            .map_err(|e| setting(e.message.clone()).caused_by(e))?;
        if let Some(prefix) = &self.nats.inbox_prefix
            && crate::subject::is_reply_inbox(prefix)
        {
            return Err(setting(format!(
                "nats.inbox_prefix `{}` is a reply inbox, which requests could name as their \
                 reply subject; leave it out (a daemon uses {})",
                crate::text::echo(prefix),
                crate::subject::DAEMON_INBOX_PREFIX
            )));
        }
        if let Some(id) = &self.host.id {
            validate_host_id(id)?;
        }
        if self.devices.scan_every < Duration::from_millis(100)
            || self.devices.scan_every > Duration::from_secs(3600)
        {
            return Err(setting(
                "devices.scan_every must be 100ms to 1h (a scan lists every USB device)",
            ));
        }
        if self.listeners.batch == 0 || self.listeners.batch > 4096 {
            return Err(setting("listeners.batch must be 1 to 4096"));
        }
        if self.sandbox.pool_instances == 0 {
            return Err(setting("sandbox.pool_instances must be at least 1"));
        }
        if self.kv.max_bytes != -1 && self.kv.max_bytes < 1 << 20 {
            return Err(setting(
                "kv.max_bytes must be at least 1MiB (or -1 for no bound)",
            ));
        }
        if self
            .sandbox
            .memory_budget
            .is_some_and(|b| b.as_u64() < 1 << 20)
        {
            return Err(setting("sandbox.memory_budget must be at least 1MiB"));
        }
        if self.sandbox.compile_timeout < Duration::from_millis(100) {
            return Err(setting("sandbox.compile_timeout must be at least 100ms"));
        }
        if self.sandbox.compile_memory.as_u64() < MIN_COMPILE_MEMORY {
            return Err(setting(format!(
                "sandbox.compile_memory must be at least {}",
                ByteSize(MIN_COMPILE_MEMORY).display().iec()
            )));
        }
        if !(1..=64).contains(&self.sandbox.compile_concurrency) {
            return Err(setting("sandbox.compile_concurrency must be 1 to 64"));
        }
        if self.events.stream.is_empty()
            || !self
                .events
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(setting("events.stream must be a name of [A-Za-z0-9_-]"));
        }
        if self.metering.window < Duration::from_millis(100) {
            return Err(setting("metering.window must be at least 100ms"));
        }
        if let Some(file) = &self.devices.simulate {
            crate::devices::simulated::SimulatedBackend::from_file(file)
                .map_err(|e| setting(format!("devices.simulate: {e}")).caused_by(e))?;
        }
        Ok(())
    }
}

/// A setting that is not acceptable, saying which and what is.
fn setting(message: impl Into<String>) -> InvalidInput {
    InvalidInput::new(Input::Setting, message)
}

/// Checks a host id: 1 to 64 of `[A-Za-z0-9_-]` (it is a KV key and part of event ids).
pub fn validate_host_id(id: &str) -> Result<(), InvalidInput> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(InvalidInput::new(
            Input::HostId,
            format!("host id `{id}` must be 1 to 64 of [A-Za-z0-9_-]"),
        ));
    }
    Ok(())
}

/// The default data directory: `$SANDBUS_DATA_DIR`, else `$XDG_DATA_HOME/sandbus`, else
/// `~/.local/share/sandbus`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SANDBUS_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("sandbus");
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/sandbus"))
        .unwrap_or_else(|| PathBuf::from(".sandbus"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config: ConfigFile = toml::from_str("").unwrap();
        assert_eq!(config, ConfigFile::default());
        assert!(config.check().is_ok());
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_the_key() {
        let typo = toml::from_str::<ConfigFile>("[nats]\nurll = \"x\"").unwrap_err();
        assert!(typo.to_string().contains("urll"), "{typo}");
        let config: ConfigFile = toml::from_str("[host]\nid = \"has space\"").unwrap();
        assert!(config.check().unwrap_err().message.contains("host id"));
        let config: ConfigFile = toml::from_str("[listeners]\nbatch = 0").unwrap();
        assert!(config.check().unwrap_err().message.contains("batch"));
        let grace = toml::from_str::<ConfigFile>("[listeners]\nshutdown_grace = \"later\"");
        assert!(grace.is_err());
        let memory = toml::from_str::<ConfigFile>("[sandbox]\ncompile_memory = \"lots\"");
        assert!(memory.is_err());
        let config: ConfigFile = toml::from_str("[sandbox]\ncompile_memory = \"1MiB\"").unwrap();
        assert!(
            config
                .check()
                .unwrap_err()
                .message
                .contains("compile_memory")
        );
        let config: ConfigFile = toml::from_str("[sandbox]\ncompile_timeout = \"1ms\"").unwrap();
        assert!(
            config
                .check()
                .unwrap_err()
                .message
                .contains("compile_timeout")
        );
        let config: ConfigFile = toml::from_str("[sandbox]\ncompile_concurrency = 0").unwrap();
        assert!(
            config
                .check()
                .unwrap_err()
                .message
                .contains("compile_concurrency")
        );
    }

    #[test]
    fn a_full_file_is_read() {
        let config: ConfigFile = toml::from_str(
            "[nats]\nurl = \"nats://n:4222\"\nuser = \"u\"\npassword = \"p\"\n\
             [host]\nid = \"lab-7\"\n[events]\nmax_age = \"14d\"\n\
             [sandbox]\ncompile_timeout = \"30s\"\ncompile_memory = \"512MiB\"\n\
             compile_concurrency = 2\nmemory_budget = \"512MiB\"\n\
             [listeners]\nshutdown_grace = \"3s\"",
        )
        .unwrap();
        assert_eq!(config.sandbox.memory_budget, Some(ByteSize(512 << 20)));
        assert_eq!(config.kv.max_bytes, 1 << 30, "the default bound");
        assert_eq!(config.kv.cache_bytes.as_u64(), 64 << 20, "the default copy");
        let no_copy: ConfigFile = toml::from_str("[kv]\ncache_bytes = \"0\"").unwrap();
        assert_eq!(no_copy.kv.cache_bytes.as_u64(), 0);
        let unbounded: ConfigFile = toml::from_str("[kv]\nmax_bytes = \"-1\"").unwrap();
        assert_eq!(unbounded.kv.max_bytes, -1);
        let bad = toml::from_str::<ConfigFile>("[sandbox]\nmemory_budget = \"lots\"");
        assert!(bad.unwrap_err().to_string().contains("memory_budget"));
        assert!(config.check().is_ok());
        assert_eq!(config.nats.url(), "nats://n:4222");
        assert_eq!(config.host.id.as_deref(), Some("lab-7"));
        assert_eq!(config.events.max_age, Duration::from_secs(14 * 86_400));
        assert_eq!(config.listeners.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.listeners.idle_after(), Some(DEFAULT_IDLE_AFTER));
        let never: ConfigFile = toml::from_str("[listeners]\nidle_after = \"0s\"").unwrap();
        assert_eq!(never.listeners.idle_after(), None, "0s: never idled");
        assert_eq!(config.sandbox.compile_timeout, Duration::from_secs(30));
        assert_eq!(config.sandbox.compile_memory, ByteSize::mib(512));
        assert_eq!(config.sandbox.compile_concurrency, 2);
    }

    #[test]
    fn devices_are_scanned_every_two_seconds_with_hotplug_unless_told_otherwise() {
        let config = ConfigFile::default();
        assert!(config.devices.hotplug);
        assert_eq!(config.devices.scan_every, Duration::from_secs(2));
        let config: ConfigFile =
            toml::from_str("[devices]\nhotplug = false\nscan_every = \"1m\"").unwrap();
        assert!(!config.devices.hotplug);
        assert_eq!(config.devices.scan_every, Duration::from_secs(60));
        assert!(config.check().is_ok());
        let config: ConfigFile = toml::from_str("[devices]\nscan_every = \"10ms\"").unwrap();
        assert!(config.check().unwrap_err().message.contains("scan_every"));
    }

    #[test]
    fn the_compile_budget_defaults_to_a_minute_and_two_gibibytes() {
        let config: ConfigFile = toml::from_str("[sandbox]\npool_instances = 4").unwrap();
        assert_eq!(config.sandbox.compile_timeout, Duration::from_secs(60));
        assert_eq!(config.sandbox.compile_memory, ByteSize::gib(2));
        assert_eq!(config.sandbox.compile_concurrency, 1);
    }

    #[test]
    fn the_module_example_is_a_valid_config() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let config: ConfigFile = toml::from_str(&doc).unwrap();
        assert_eq!(config.sandbox.compile_memory, ByteSize::gib(2));
    }
}
