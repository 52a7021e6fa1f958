//! The bus: everything that speaks NATS.
//!
//! This is one of the three boundaries of the host (with [`crate::sandbox`] and
//! [`crate::imports`]). It connects to NATS ([`NatsOptions`]), owns the JetStream layout
//! ([`names`]), and implements the capability traits the sandbox calls through:
//! [`NatsPublisher`] for `bus`, [`NatsKv`] for `kv`. It also holds the shared, cluster-wide
//! state every daemon reads and writes: the canonical event stream ([`EventStream`]), the
//! [`ComponentStore`], the [`SubscriptionStore`], host presence ([`HostRegistry`]), and the
//! device lab's state: the [`DeviceInventory`], device leases ([`LeaseTable`]) and script
//! runs ([`RunStore`]).
//!
//! Nothing here runs guests; the daemon wires the bus to the sandbox.

mod api_client;
mod bucket;
mod bucket_error;
mod cas;
mod control_service;
mod delivery;
mod direct_publish;
mod events;
mod hooks;
mod idle;
mod micro;
pub use events::humantime_serde;
mod inventory;
mod json_bucket;
mod kv;
mod kv_cache;
mod kv_usage;
mod layout;
mod leases;
pub mod names;
mod pages;
pub mod permissions;
mod presence;
mod publisher;
mod refusals;
mod runs;
mod store;
mod subscription;
mod subscriptions;
mod uploads;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;

pub use api_client::ApiClient;
pub use control_service::{ControlHandler, ControlRequest, ControlService, RequestSlot};
pub use delivery::{Deliveries, Delivery, DeliveryInfo, DeliverySource, PullError};
pub use direct_publish::{
    DEFAULT_WINDOW, DirectPublishStop, DirectPublisher, MAX_WINDOW, OutgoingEvent,
};
pub use events::{DeadLetter, EventStream, EventStreamConfig, PublishedEvent};
pub use hooks::{
    DEFAULT_DEADLINE as DEFAULT_HOOK_DEADLINE, HookPoint, HookPoints, HookPolicy,
    MAX_DEADLINE as MAX_HOOK_DEADLINE, validate_deadline as validate_hook_deadline, validate_point,
};
pub use idle::{EventFeed, FedEvent, Rested};
pub use inventory::{DeviceInventory, DeviceRecord, DeviceState};
pub use kv::{DEFAULT_CACHE_BYTES, NatsKv};
pub use kv_cache::{KvCache, Lookup};
pub use kv_usage::KvUsage;
pub use layout::{BusLayout, DaemonBus};
pub use leases::{HeldLease, LEASE_RENEW, LEASE_TTL, Lease, LeaseTable, RenewedLease};
pub use pages::read_page;
pub use presence::{HEARTBEAT, HostComponentState, HostInfo, HostRegistry, LoadState, NotReady};
pub use publisher::NatsPublisher;
pub use refusals::{Refusal, Refusals};
pub use runs::{
    RunRecord, RunReport, RunRequest, RunState, RunStore, RunVerdict, new_run_id, validate_run_id,
};
pub(crate) use store::now_rfc3339;
pub use store::{ComponentManifest, ComponentStore, ManifestChange, ManifestDraft, ManifestEvent};
pub use subscription::{
    DEFAULT_BACKOFF, DEFAULT_MAX_DELIVER, DEFAULT_MAX_IN_FLIGHT, IdlePosition, Subscription,
    SubscriptionError, SubscriptionErrorKind, validate_event_pattern,
};
pub use subscriptions::{
    LastError, ListenerStatus, SubscriptionChange, SubscriptionStore, ack_wait_for,
};
pub use uploads::{STAGE_TTL, StagedUploads};

/// Default server URL, as `nats-server` listens out of the box.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// What kind of failure a bus operation met. `Copy` so callers can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusErrorKind {
    /// Could not connect or authenticate.
    Connect,
    /// The streams and buckets are missing: no daemon has set up this NATS server.
    NotSetUp,
    /// A JetStream request failed or timed out; retrying later may work.
    Unavailable,
    /// The thing asked for does not exist.
    NotFound,
    /// Someone else changed it at the same time; read again and retry.
    Conflict,
    /// What is stored is not what it should be (corrupt manifest, digest mismatch).
    Corrupt,
    /// The server refused a publish or subscription: the user's permissions do not cover
    /// the subject (named in the message).
    PermissionDenied,
    /// The server refused because one of its limits is reached (the consumers a stream may
    /// hold, say). The message names the limit, where it is set and what to change; nothing
    /// was created, and asking again fails the same way until the limit is raised.
    ServerLimit,
}

/// A failed bus operation: its [`BusErrorKind`], a message for a person, and the client's
/// (or server's, or serde's) error underneath as its `source` ([`crate::error::Error`]).
pub type BusError = crate::error::Error<BusErrorKind>;

impl BusError {
    /// A JetStream request that failed with `e`; `what` says what was being done. The
    /// message quotes `e`, which is kept as the source.
    pub(crate) fn unavailable(
        what: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let e = e.into();
        Self::new(BusErrorKind::Unavailable, format!("cannot {what}: {e}")).caused_by(e)
    }

    /// A bucket or stream that should exist and does not (opening it failed with `e`, kept
    /// as the source).
    pub(crate) fn not_set_up(
        what: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let e = e.into();
        Self::new(
            BusErrorKind::NotSetUp,
            format!(
                "cannot open {what} ({e}); start a sandbus daemon on this NATS server first \
                 (`sandbus up` or `sandbus daemon --server URL`)"
            ),
        )
        .caused_by(e)
    }
}

/// How to reach and authenticate to NATS. Shared by the daemon and the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsOptions {
    /// Server URL(s), comma separated.
    pub url: Option<String>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// File holding an nkey seed (`SU...`).
    pub nkey: Option<PathBuf>,
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes them.
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// Prefix of this connection's reply subjects (default `_INBOX`). A NATS user whose
    /// permissions give it a private inbox (`sandbus permissions ROLE`) must use that one.
    pub inbox_prefix: Option<String>,
}

impl NatsOptions {
    /// The server list as given (comma separated), or [`DEFAULT_URL`]; for messages. What is
    /// connected to is [`servers`](Self::servers).
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }

    /// The servers to connect to: [`url`](Self::url) split on commas ([`parse_servers`]).
    pub fn servers(&self) -> Result<Vec<ServerAddr>, BusError> {
        parse_servers(self.url())
    }

    /// Fills every field that is unset here from `other` (flags over config file).
    pub fn or(self, other: NatsOptions) -> NatsOptions {
        NatsOptions {
            url: self.url.or(other.url),
            user: self.user.or(other.user),
            password: self.password.or(other.password),
            token: self.token.or(other.token),
            nkey: self.nkey.or(other.nkey),
            creds: self.creds.or(other.creds),
            tls_ca: self.tls_ca.or(other.tls_ca),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            tls_required: self.tls_required || other.tls_required,
            inbox_prefix: self.inbox_prefix.or(other.inbox_prefix),
        }
    }

    /// Checks that the options make sense together, before anything connects.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |m: &str| Err(BusError::new(BusErrorKind::Connect, m));
        if self.user.is_some() != self.password.is_some() {
            return bad("--user and --password go together; give both or neither");
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey.is_some(),
            self.creds.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return bad("give one way to authenticate: user/password, token, nkey or creds");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("--tls-cert and --tls-key go together; give both or neither");
        }
        if let Some(prefix) = &self.inbox_prefix {
            crate::subject::validate_publish_subject(prefix).map_err(|why| {
                BusError::new(
                    BusErrorKind::Connect,
                    format!("--inbox-prefix is not a subject prefix: {why}"),
                )
                .caused_by(why)
            })?;
        }
        self.servers().map(|_| ())
    }

    /// The async-nats options for these settings. `name` is the connection name the server
    /// shows (`sandbus-daemon`, `sandbus-cli`).
    pub async fn connect_options(
        &self,
        name: &str,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        self.validate()?;
        let mut options = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    BusError::new(
                        BusErrorKind::Connect,
                        format!("cannot read the credentials file {}: {e}", path.display()),
                    )
                    .caused_by(e)
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                BusError::new(
                    BusErrorKind::Connect,
                    format!("cannot read the nkey seed file {}: {e}", path.display()),
                )
                .caused_by(e)
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix.clone());
        }
        Ok(options.name(name))
    }
}

/// Splits a server list (`--server`, `SANDBUS_NATS_URL`, `NATS_URL`, `[nats] url`) on commas into server
/// addresses, each trimmed: `nats://a:4222, nats://b:4222`. A part without a scheme is taken
/// as `nats://` (`127.0.0.1:4222`), one without a port gets 4222.
///
/// async-nats takes one string as one URL, so a list must be split here. An empty part (a
/// stray comma) or a part that is not a NATS server URL is refused, naming the part and what
/// to give instead, rather than dropped: a typo in the list should not silently leave a
/// daemon with fewer servers than its operator meant.
pub fn parse_servers(list: &str) -> Result<Vec<ServerAddr>, BusError> {
    let bad = |message: String| BusError::new(BusErrorKind::Connect, message);
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            if part.is_empty() {
                return Err(bad(format!(
                    "the NATS server list `{list}` has an empty entry (entry {} of {count}); \
                     give URLs separated by single commas, e.g. \
                     nats://10.0.0.1:4222,nats://10.0.0.2:4222",
                    i + 1
                )));
            }
            let addr: ServerAddr = part.parse().map_err(|e| {
                bad(format!(
                    "`{part}` in the NATS server list `{list}` is not a NATS server URL ({e}); \
                     give nats://HOST:PORT (or tls://, ws://, wss://)"
                ))
                .caused_by(e)
            })?;
            if addr.host().is_empty() {
                return Err(bad(format!(
                    "`{part}` in the NATS server list `{list}` names no host; \
                     give nats://HOST:PORT"
                )));
            }
            Ok(addr)
        })
        .collect()
}

/// Connects for a short-lived client (the CLI): fails fast when nothing answers. The
/// [`Refusals`] report what the server refuses on this connection, for
/// [`Refusals::guard`].
pub async fn connect_client(
    options: &NatsOptions,
) -> Result<(async_nats::Client, Refusals), BusError> {
    if let Some(prefix) = &options.inbox_prefix
        && !crate::subject::is_reply_inbox(prefix)
    {
        return Err(BusError::new(
            BusErrorKind::Connect,
            format!(
                "--inbox-prefix `{}` is not a reply inbox: daemons answer only on subjects whose \
                 first token is {1} or starts with {1}_, e.g. {1}_viewer",
                crate::text::echo(prefix),
                crate::subject::REPLY_INBOX_PREFIX
            ),
        ));
    }
    let servers = options.servers()?;
    let refusals = Refusals::default();
    let reporter = refusals.clone();
    let connect = options
        .connect_options("sandbus-cli")
        .await?
        .event_callback(move |event| {
            let reporter = reporter.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(error)) = event
                {
                    reporter.report(&error);
                }
            }
        })
        .connection_timeout(Duration::from_secs(5))
        // Enough attempts to try every listed server once, however many are down.
        .max_reconnects(servers.len().max(3))
        .request_timeout(Some(Duration::from_secs(30)));
    let client = connect.connect(servers).await.map_err(|e| {
        BusError::new(
            BusErrorKind::Connect,
            format!(
                "cannot connect to NATS at {}: {e}; is a server running there? \
                 (`sandbus up` starts one with a daemon)",
                options.url()
            ),
        )
        .caused_by(e)
    })?;
    Ok((client, refusals))
}

/// Connects for the daemon: waits for the server if it is not up yet and reconnects
/// forever, with backoff, when the connection drops. Connection state changes are logged.
pub async fn connect_daemon(options: &NatsOptions) -> Result<async_nats::Client, BusError> {
    connect_daemon_as(options, "sandbus-daemon", None).await
}

/// Requests one control API endpoint of a daemon queues before it drops more (the requester
/// then times out): what a flood of requests can make a daemon hold, per endpoint.
pub const API_REQUEST_QUEUE: usize = 16;

/// Connects the daemon's control API: a connection of its own (the same way as
/// [`connect_daemon`]) whose subscriptions queue at most [`API_REQUEST_QUEUE`] requests
/// each, so that a flood of requests (up to the server's max payload each) can neither fill
/// the daemon's memory nor delay its JetStream traffic.
pub async fn connect_daemon_api(options: &NatsOptions) -> Result<async_nats::Client, BusError> {
    connect_daemon_as(options, "sandbus-daemon-api", Some(API_REQUEST_QUEUE)).await
}

async fn connect_daemon_as(
    options: &NatsOptions,
    name: &str,
    queue: Option<usize>,
) -> Result<async_nats::Client, BusError> {
    let servers = options.servers()?;
    // The daemon's own replies come on an inbox no request may name as its reply subject.
    let inbox = options
        .inbox_prefix
        .clone()
        .unwrap_or_else(|| crate::subject::DAEMON_INBOX_PREFIX.to_owned());
    if crate::subject::is_reply_inbox(&inbox) {
        return Err(BusError::new(
            BusErrorKind::Connect,
            format!(
                "a daemon's inbox prefix must not be a reply inbox (`{}`): requests could name \
                 it as their reply subject; leave [nats] inbox_prefix out (default {})",
                crate::text::echo(&inbox),
                crate::subject::DAEMON_INBOX_PREFIX
            ),
        ));
    }
    let mut connect = options
        .connect_options(name)
        .await?
        .custom_inbox_prefix(inbox)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                async_nats::Event::ServerError(async_nats::ServerError::Other(error))
                    if Refusal::parse(&error).is_some() =>
                {
                    tracing::error!(
                        %error,
                        "NATS refused this daemon a subject it needs: its user lacks a \
                         permission (`sandbus permissions daemon` prints what a daemon needs)"
                    )
                }
                async_nats::Event::SlowConsumer(_) if queue.is_some() => {
                    tracing::debug!("control requests dropped: more arrived than the daemon queues")
                }
                other => tracing::info!(event = %other, "NATS connection event"),
            }
        });
    if let Some(queue) = queue {
        connect = connect.subscription_capacity(queue);
    }
    connect.connect(servers).await.map_err(|e| {
        BusError::new(
            BusErrorKind::Connect,
            format!("cannot connect to NATS at {}: {e}", options.url()),
        )
        .caused_by(e)
    })
}

/// Backoff between reconnect attempts: 100 ms doubling to at most 5 s, with jitter so a
/// fleet of daemons does not reconnect in lockstep.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = attempts.min(6) as u32;
    let base = 100u64.saturating_mul(1 << exp).min(5_000);
    let jitter = rand::random::<u64>() % (base / 4 + 1);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_options_must_be_consistent() {
        let user_only = NatsOptions {
            user: Some("u".into()),
            ..Default::default()
        };
        assert_eq!(
            user_only.validate().unwrap_err().kind,
            BusErrorKind::Connect
        );
        let two_methods = NatsOptions {
            token: Some("t".into()),
            creds: Some("x.creds".into()),
            ..Default::default()
        };
        assert!(
            two_methods
                .validate()
                .unwrap_err()
                .message
                .contains("one way")
        );
        let cert_only = NatsOptions {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(cert_only.validate().is_err());
        let ok = NatsOptions {
            user: Some("u".into()),
            password: Some("p".into()),
            tls_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn flags_override_the_config_file() {
        let flags = NatsOptions {
            url: Some("nats://a:1".into()),
            ..Default::default()
        };
        let file = NatsOptions {
            url: Some("nats://b:2".into()),
            token: Some("t".into()),
            ..Default::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.url(), "nats://a:1");
        assert_eq!(merged.token.as_deref(), Some("t"));
    }

    #[test]
    fn a_comma_separated_server_list_gives_every_server() {
        let servers = parse_servers("nats://127.0.0.1:4222, tls://nats.lab:4443 ,10.0.0.3")
            .expect("a good list parses");
        let hosts: Vec<(&str, &str, u16)> = servers
            .iter()
            .map(|s| (s.scheme(), s.host(), s.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("nats", "127.0.0.1", 4222),
                ("tls", "nats.lab", 4443),
                ("nats", "10.0.0.3", 4222),
            ]
        );
        assert_eq!(parse_servers(DEFAULT_URL).map(|s| s.len()).ok(), Some(1));
        let options = NatsOptions {
            url: Some("nats://a:1,nats://b:2".into()),
            ..Default::default()
        };
        assert_eq!(options.servers().map(|s| s.len()).ok(), Some(2));
        assert!(options.validate().is_ok());
    }

    #[test]
    fn a_server_list_with_an_empty_entry_is_refused_saying_where() {
        for list in [
            "nats://a:1,,nats://b:2",
            "nats://a:1,",
            ",nats://a:1",
            " ",
            "",
        ] {
            let err = parse_servers(list).unwrap_err();
            assert_eq!(err.kind, BusErrorKind::Connect, "{list}");
            assert!(err.message.contains("empty entry"), "{list}: {err}");
            assert!(err.message.contains("separated by single commas"), "{err}");
        }
        let err = parse_servers("nats://a:1,,nats://b:2").unwrap_err();
        assert!(err.message.contains("entry 2 of 3"), "{err}");
    }

    #[test]
    fn a_server_list_with_a_bad_url_is_refused_naming_it() {
        for (list, bad) in [
            ("nats://a:1,http://b:2", "http://b:2"),
            ("nats://a:notaport", "nats://a:notaport"),
            ("nats://a b:1", "nats://a b:1"),
            ("nats://", "nats://"),
        ] {
            let err = parse_servers(list).unwrap_err();
            assert_eq!(err.kind, BusErrorKind::Connect, "{list}");
            assert!(err.message.contains(&format!("`{bad}`")), "{list}: {err}");
            assert!(err.message.contains("nats://HOST:PORT"), "{list}: {err}");
        }
        // Caught before connecting, and by `--check-config` (which validates).
        let options = NatsOptions {
            url: Some("nats://a:1,,nats://b:2".into()),
            ..Default::default()
        };
        assert_eq!(options.validate().unwrap_err().kind, BusErrorKind::Connect);
    }

    #[test]
    fn reconnect_delay_grows_and_is_capped() {
        assert!(reconnect_delay(0) < Duration::from_millis(200));
        for attempt in 0..100 {
            assert!(reconnect_delay(attempt) <= Duration::from_millis(6_250));
        }
        assert!(reconnect_delay(20) >= Duration::from_secs(5));
    }
}
