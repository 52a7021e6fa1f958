//! The client commands: thin wrappers over the control API. Each prints text, or JSON with
//! `--json`, and exits non-zero on failure. A client reaches sandbus only through the API
//! (component bytes are staged through it too), so the NATS permissions of its role are all
//! it needs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use sandbus::api::{
    self, ApiError, ApiErrorKind, CancelReply, CastAccepted, Empty, EventListRequest, MessagePage,
    NameRequest, PublishRequest, RunIdRequest, RunLogRequest, StageReply, StageRequest,
    StatusRequest, StoredMessage, SubscribeRequest, UploadReply, UploadRequest, endpoint,
};
use sandbus::bus::{
    self, ApiClient, ComponentManifest, DeviceRecord, DeviceState, HostInfo, ListenerStatus,
    NatsOptions, PublishedEvent, RunRecord, RunReport, RunRequest, RunState, RunVerdict,
    Subscription, names,
};
use sandbus::devices::DeviceSelector;
use sandbus::event::CanonicalEvent;
use sandbus::grant::{ComponentPolicy, ManifestGrants, PolicyError};
use sandbus::sandbox::{ComponentShape, Digest, World};

use super::{EXIT_FAIL, EXIT_OK, EXIT_USAGE};

/// Exit code when no daemon answered or the bus failed.
pub const EXIT_UNAVAILABLE: u8 = 5;

/// Exit code when NATS refused the request: the user's permissions do not cover it.
pub const EXIT_PERMISSION_DENIED: u8 = 6;

/// How to reach NATS (flags, or `SANDBUS_NATS_*` environment variables).
#[derive(Args, Debug, Clone, Default)]
pub struct NatsArgs {
    /// NATS server URL(s) [default: nats://127.0.0.1:4222].
    #[arg(long = "nats", value_name = "URL", env = "SANDBUS_NATS_URL")]
    pub url: Option<String>,
    /// User name (with --password).
    #[arg(long, env = "SANDBUS_NATS_USER")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, env = "SANDBUS_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "SANDBUS_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding an nkey seed.
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// A .creds file (JWT + nkey seed).
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) for the server's TLS certificate.
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long)]
    pub tls_required: bool,
    /// Prefix of the reply subjects [default: _INBOX]. A NATS user with role permissions
    /// from `sandbus permissions` receives replies only on its role's inbox, e.g.
    /// _INBOX_viewer.
    #[arg(long, value_name = "PREFIX", env = "SANDBUS_INBOX_PREFIX")]
    pub inbox_prefix: Option<String>,
}

impl NatsArgs {
    /// The options these flags give.
    pub fn options(&self) -> NatsOptions {
        NatsOptions {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey: self.nkey.clone(),
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls_required,
            inbox_prefix: self.inbox_prefix.clone(),
        }
    }
}

/// What every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the daemon's reply.
    #[arg(long = "reply-timeout", value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A connected client of the control API.
pub(super) struct Client {
    api: ApiClient,
    pub(super) json: bool,
}

impl Client {
    async fn connect(args: &ClientArgs) -> Result<Self, ApiError> {
        let options = args.nats.options();
        // Options that cannot work (a malformed server list, half of user/password) are the
        // caller's mistake, not the bus being down: a usage error, before connecting.
        options
            .validate()
            .map_err(|e| ApiError::bad_request(e.message))?;
        let (nats, refusals) = bus::connect_client(&options)
            .await
            .map_err(|e| ApiError::new(ApiErrorKind::Unavailable, e.message))?;
        Ok(Self {
            api: ApiClient::new(nats, refusals, args.timeout),
            json: args.json,
        })
    }

    pub(super) async fn call<Q: Serialize + api::Validate, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        request: &Q,
    ) -> Result<R, ApiError> {
        self.api.call(endpoint, request).await
    }
}

/// Prints a failure and gives its exit code.
pub fn fail(error: &ApiError, json: bool) -> u8 {
    if json {
        super::outln!("{}", json!({ "error": error }));
    } else {
        eprintln!("error: {}", error.message);
    }
    match error.kind {
        ApiErrorKind::BadRequest => EXIT_USAGE,
        ApiErrorKind::Unavailable => EXIT_UNAVAILABLE,
        ApiErrorKind::PermissionDenied => EXIT_PERMISSION_DENIED,
        ApiErrorKind::NotFound | ApiErrorKind::Conflict | ApiErrorKind::Internal => EXIT_FAIL,
    }
}

/// Runs a client command body, turning its error into output and an exit code.
pub(super) async fn client<F, Fut>(args: &ClientArgs, body: F) -> u8
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<u8, ApiError>>,
{
    let json = args.json;
    let result = match Client::connect(args).await {
        Ok(client) => body(client).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    }
}

pub(super) fn print_json(value: &impl Serialize) {
    super::outln!("{}", serde_json::to_string(value).unwrap_or_default());
}

pub(super) fn print_cast(accepted: &CastAccepted, json: bool) {
    if json {
        print_json(accepted);
    } else {
        super::outln!(
            "accepted; the result comes as a sandbus.request.finished event with subject {}",
            accepted.request_id
        );
    }
}

/// `sandbus upload FILE --name NAME ...`
#[allow(clippy::too_many_arguments, reason = "one parameter per CLI flag")]
pub async fn upload(
    args: &ClientArgs,
    file: &Path,
    name: String,
    world: Option<World>,
    grants: &[String],
    limits: Vec<String>,
    cast: bool,
) -> anyhow::Result<u8> {
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    // Refuse what is plainly not a component, or a policy the daemon would refuse, before
    // anything goes on the bus: the same checks the daemon runs.
    let shape_world = match ComponentShape::read(&bytes).and_then(|s| s.check(world)) {
        Ok(world) => world,
        Err(e) => {
            return Ok(fail(
                &ApiError::bad_request(format!("{}: {}", file.display(), e.message)),
                args.json,
            ));
        }
    };
    let grants = match ManifestGrants::parse(grants)
        .map_err(PolicyError::from)
        .and_then(|g| {
            ComponentPolicy::check(&name, shape_world, &g.publish, &g.kv_read, &limits).map(|_| g)
        }) {
        Ok(grants) => grants,
        Err(e) => return Ok(fail(&ApiError::bad_request(e.to_string()), args.json)),
    };
    Ok(client(args, |c| async move {
        let digest = stage(&c, &bytes).await?;
        let request = UploadRequest {
            name,
            digest,
            world,
            grants: grants.publish,
            kv_read: grants.kv_read,
            limits,
            cast,
        };
        if cast {
            let accepted: CastAccepted = c.call(endpoint::UPLOAD, &request).await?;
            print_cast(&accepted, c.json);
            return Ok(EXIT_OK);
        }
        let reply: UploadReply = c.call(endpoint::UPLOAD, &request).await?;
        if c.json {
            print_json(&reply);
        } else if reply.unchanged {
            super::outln!(
                "{} is already version {} with these bytes and settings; nothing changed",
                reply.manifest.name,
                reply.manifest.version
            );
        } else {
            super::outln!(
                "uploaded {} version {} ({}, {} bytes, sha256:{})",
                reply.manifest.name,
                reply.manifest.version,
                reply.manifest.world,
                reply.manifest.size,
                reply.manifest.digest
            );
        }
        Ok(EXIT_OK)
    })
    .await)
}

/// Stages a component's bytes with a daemon, a part at a time (each part fits in one
/// message whatever the server's max payload); returns their digest.
async fn stage(c: &Client, bytes: &[u8]) -> Result<String, ApiError> {
    use base64::Engine as _;
    let digest = Digest::of(bytes).as_str().to_owned();
    let part_size = c.api.max_payload().saturating_sub(4096) / 4 * 3;
    let part_size = part_size.max(1024);
    let parts = bytes.len().div_ceil(part_size).max(1);
    let parts = u32::try_from(parts).map_err(|_| {
        ApiError::bad_request("the component is too large to send in parts; is it a component?")
    })?;
    for (part, chunk) in (0u32..).zip(bytes.chunks(part_size)) {
        let request = StageRequest {
            digest: digest.clone(),
            size: bytes.len() as u64,
            part,
            parts,
            data: base64::engine::general_purpose::STANDARD.encode(chunk),
        };
        let _: StageReply = c.call(endpoint::STAGE, &request).await?;
    }
    Ok(digest)
}

fn print_manifest(m: &ComponentManifest) {
    let restored = m
        .restored_from
        .map(|v| format!(" (restores v{v})"))
        .unwrap_or_default();
    super::outln!(
        "{:<24} v{:<4} {:<9} {:>9} B  sha256:{}…  {}{}",
        m.name,
        m.version,
        m.world.as_str(),
        m.size,
        &m.digest[..m.digest.len().min(12)],
        m.recorded_at,
        restored
    );
    if !m.grants.is_empty() || !m.kv_read.is_empty() {
        let grants: Vec<String> = m
            .grants
            .iter()
            .map(|g| format!("publish={g}"))
            .chain(m.kv_read.iter().map(|n| format!("kv-read={n}")))
            .collect();
        super::outln!("{:<24} grants: {}", "", grants.join(", "));
    }
    if !m.limits.is_empty() {
        super::outln!("{:<24} limits: {}", "", m.limits.join(", "));
    }
}

/// `sandbus ls`
pub async fn list(args: &ClientArgs) -> u8 {
    client(args, |c| async move {
        let manifests: Vec<ComponentManifest> = c.call(endpoint::LIST, &Empty {}).await?;
        if c.json {
            print_json(&manifests);
        } else if manifests.is_empty() {
            super::outln!("no components; `sandbus upload FILE --name NAME` adds one");
        } else {
            for m in &manifests {
                print_manifest(m);
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus rm NAME` and `sandbus rollback NAME`.
pub async fn name_command(
    args: &ClientArgs,
    endpoint: &'static str,
    name: String,
    cast: bool,
) -> u8 {
    client(args, |c| async move {
        let request = NameRequest { name, cast };
        if cast {
            let accepted: CastAccepted = c.call(endpoint, &request).await?;
            print_cast(&accepted, c.json);
            return Ok(EXIT_OK);
        }
        let value: serde_json::Value = c.call(endpoint, &request).await?;
        if c.json {
            print_json(&value);
        } else {
            match endpoint {
                api::endpoint::REMOVE => super::outln!("removed {}", request.name),
                api::endpoint::UNSUBSCRIBE => super::outln!("unsubscribed {}", request.name),
                _ => {
                    let m: ComponentManifest = serde_json::from_value(value)
                        .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
                    super::outln!(
                        "{} is now version {}, restoring version {}",
                        m.name,
                        m.version,
                        m.restored_from.unwrap_or(m.version)
                    );
                }
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus subscribe NAME --events P...`
pub async fn subscribe(args: &ClientArgs, request: SubscribeRequest) -> u8 {
    client(args, |c| async move {
        if request.cast {
            let accepted: CastAccepted = c.call(endpoint::SUBSCRIBE, &request).await?;
            print_cast(&accepted, c.json);
            return Ok(EXIT_OK);
        }
        let s: Subscription = c.call(endpoint::SUBSCRIBE, &request).await?;
        if c.json {
            print_json(&s);
        } else {
            super::outln!(
                "subscribed {} to {} (max in flight {}, max deliver {}, backoff {})",
                s.listener,
                s.events.join(", "),
                s.max_in_flight,
                s.max_deliver,
                backoff_text(&s.backoff)
            );
        }
        Ok(EXIT_OK)
    })
    .await
}

fn backoff_text(backoff: &[Duration]) -> String {
    backoff
        .iter()
        .map(|d| humantime::format_duration(*d).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `sandbus status [NAME]`
pub async fn status(args: &ClientArgs, name: Option<String>) -> u8 {
    client(args, |c| async move {
        let one = name.is_some();
        let request = StatusRequest { name };
        let all: Vec<ListenerStatus> = if one {
            vec![c.call(endpoint::STATUS, &request).await?]
        } else {
            c.call(endpoint::STATUS, &request).await?
        };
        if c.json {
            if one {
                print_json(&all[0]);
            } else {
                print_json(&all);
            }
            return Ok(EXIT_OK);
        }
        if all.is_empty() {
            super::outln!("no subscriptions; `sandbus subscribe NAME --events PATTERN` makes one");
        }
        for s in &all {
            super::outln!("{}", s.subscription.listener);
            super::outln!("  events:        {}", s.subscription.events.join(", "));
            super::outln!("  pending:       {}", s.pending);
            super::outln!("  in flight:     {}", s.in_flight);
            super::outln!("  redelivered:   {}", s.redelivered);
            super::outln!("  dead-lettered: {}", s.dead_lettered);
            match &s.last_error {
                Some(e) => super::outln!(
                    "  last error:    {} on {} (event {}, seq {}): {}",
                    e.at,
                    e.host,
                    e.event_id.as_deref().unwrap_or("?"),
                    e.sequence,
                    printable(&e.reason)
                ),
                None => super::outln!("  last error:    none"),
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus hosts`
pub async fn hosts(args: &ClientArgs) -> u8 {
    client(args, |c| async move {
        let hosts: Vec<HostInfo> = c.call(endpoint::HOSTS, &Empty {}).await?;
        if c.json {
            print_json(&hosts);
        } else if hosts.is_empty() {
            super::outln!("no live hosts");
        } else {
            for h in &hosts {
                super::outln!(
                    "{:<20} {:<16} v{} pid {} since {}  components: {}  listeners: {}",
                    h.id,
                    h.hostname,
                    h.version,
                    h.pid,
                    h.started_at,
                    h.components
                        .iter()
                        .map(|(n, v)| format!("{n}@v{v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    h.listeners.join(",")
                );
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// The event `sandbus publish TYPE --data JSON` describes.
pub fn event_from_flags(
    ty: &str,
    data: &str,
    id: Option<String>,
    source: Option<String>,
    subject: Option<String>,
) -> Result<serde_json::Value, ApiError> {
    let data: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        ApiError::bad_request(format!(
            "--data is not JSON: {e}; quote text as a JSON string, e.g. '\"hello\"'"
        ))
    })?;
    let mut event = json!({
        "specversion": "1.0",
        "id": id.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>())),
        "source": source.unwrap_or_else(|| "/sandbus/cli".into()),
        "type": ty,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    // Check it the way the daemon will, so a bad flag fails before anything is sent.
    CanonicalEvent::from_json(event.to_string().as_bytes())
        .map_err(|e| ApiError::bad_request(format!("the event is not valid: {e}")))?;
    Ok(event)
}

/// How long one try of a publish waits for its reply before it is sent again (to whichever
/// daemon takes it: a dead one no longer can).
const PUBLISH_TRY: Duration = Duration::from_secs(5);

/// `sandbus publish`: one event from flags, or the lines of a JSON Lines file, in order.
///
/// Each event goes until a daemon stored it: a try whose reply is lost (the daemon died, the
/// connection dropped) is sent again, after a short pause, for up to `--reply-timeout` per
/// event. That is safe because an event keeps its id and the stream stores an id once within
/// its duplicate window. When an event still did not go, the command stops and names the line
/// to resume from (`--from-line`).
pub async fn publish(
    args: &ClientArgs,
    events: Vec<(usize, serde_json::Value)>,
    file: Option<&Path>,
    cast: bool,
) -> u8 {
    let resume = |line: usize| match file {
        Some(path) => format!(
            "; nothing from line {line} on was published for sure: resume with `sandbus publish \
             --file {} --from-line {line}` (events already stored are kept once)",
            path.display()
        ),
        None => String::new(),
    };
    client(args, |c| async move {
        let patient = c.api.with_timeout(PUBLISH_TRY.min(args.timeout));
        let mut published = 0;
        let mut duplicates = 0;
        for (line, event) in events {
            let raw = serde_json::value::to_raw_value(&event)
                .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
            let request = PublishRequest { event: raw, cast };
            let started = Instant::now();
            let mut tries = 0u32;
            let reply: serde_json::Value = loop {
                tries += 1;
                match patient.call(endpoint::PUBLISH, &request).await {
                    Ok(reply) => break reply,
                    Err(e)
                        if e.kind == ApiErrorKind::Unavailable
                            && started.elapsed() < args.timeout =>
                    {
                        if !c.json {
                            eprintln!(
                                "line {line}: {}; trying again (try {})",
                                e.message,
                                tries + 1
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(tries.min(10))))
                            .await;
                    }
                    Err(e) => {
                        let mut message = format!("line {line}: {}", e.message);
                        if e.kind == ApiErrorKind::Unavailable {
                            message.push_str(&resume(line));
                        }
                        return Err(ApiError::new(e.kind, message));
                    }
                }
            };
            if cast {
                let accepted: CastAccepted = serde_json::from_value(reply)
                    .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
                print_cast(&accepted, c.json);
                continue;
            }
            let p: PublishedEvent = serde_json::from_value(reply)
                .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
            if c.json {
                print_json(&p);
            } else if p.duplicate {
                super::outln!(
                    "{} was already in {} (seq {}): not added again",
                    p.id,
                    p.stream,
                    p.sequence
                );
            } else {
                super::outln!("published {} on {} (seq {})", p.id, p.subject, p.sequence);
            }
            published += 1;
            if p.duplicate {
                duplicates += 1;
            }
        }
        if !c.json && published > 1 {
            super::outln!("{published} events, {duplicates} duplicates");
        }
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus events [PATTERN] [--follow] [--all]`: prints stored events (all of them, or none
/// with `--follow` alone), then with `--follow` new ones as they arrive. Pages come from a
/// daemon (`event.list`); a follower's next page waits on the daemon for new events.
pub async fn events(args: &ClientArgs, pattern: &str, follow: bool, all: bool) -> u8 {
    if let Err(why) = bus::validate_event_pattern(pattern) {
        return fail(&ApiError::bad_request(why), args.json);
    }
    let pattern = pattern.to_owned();
    client(args, |c| async move {
        let mut after = 0;
        if follow && !all {
            let now: MessagePage = c
                .call(
                    endpoint::EVENTS,
                    &EventListRequest {
                        pattern: Some(pattern.clone()),
                        max: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
            after = now.last_sequence;
        }
        loop {
            let page: MessagePage = follower_call(
                &c,
                follow,
                endpoint::EVENTS,
                &EventListRequest {
                    pattern: Some(pattern.clone()),
                    after,
                    max: None,
                    // A long poll, well inside the reply timeout.
                    wait_ms: if follow {
                        FOLLOW_WAIT_MS
                            .min(u64::try_from(args.timeout.as_millis() / 2).unwrap_or(u64::MAX))
                    } else {
                        0
                    },
                },
            )
            .await?;
            if page.messages.is_empty() && !follow {
                return Ok(EXIT_OK);
            }
            for message in &page.messages {
                after = after.max(message.sequence);
                print_event(message, c.json);
            }
        }
    })
    .await
}

/// A page request of a command that may follow: while following, a daemon that is busy (or
/// a reply lost) is asked again a moment later rather than ending the command.
async fn follower_call<Q: Serialize + api::Validate>(
    c: &Client,
    following: bool,
    endpoint: &str,
    request: &Q,
) -> Result<MessagePage, ApiError> {
    loop {
        match c.call(endpoint, request).await {
            Err(e) if following && e.kind == ApiErrorKind::Unavailable => {
                tracing::debug!(error = %e.message, "asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result,
        }
    }
}

/// How long a follower's request waits on the daemon for something new.
const FOLLOW_WAIT_MS: u64 = 10_000;

/// The body of a stored message, as stored.
fn body(message: &StoredMessage) -> Vec<u8> {
    use base64::Engine as _;
    match (&message.json, &message.base64) {
        (Some(json), _) => json.get().as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

fn print_event(message: &StoredMessage, json: bool) {
    let sequence = message.sequence;
    if let Some(size) = message.too_large {
        if json {
            print_json(&json!({ "sequence": sequence, "too_large": size }));
        } else {
            super::outln!("{sequence:>6} (an event of {size} bytes, too large to show here)");
        }
        return;
    }
    let payload = body(message);
    let payload = payload.as_slice();
    if json {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(payload);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        return;
    }
    match CanonicalEvent::from_json(payload) {
        Ok(e) => {
            let data = String::from_utf8_lossy(&e.data);
            let mut data = printable(&data);
            if data.len() > 160 {
                let mut cut = 160;
                while !data.is_char_boundary(cut) {
                    cut -= 1;
                }
                data.truncate(cut);
                data.push('…');
            }
            super::outln!(
                "{sequence:>6} {} {} {} {} {}",
                e.time.as_deref().unwrap_or("-"),
                printable(&e.ty),
                printable(&e.id),
                printable(&e.source),
                data
            );
        }
        Err(err) => super::outln!("{sequence:>6} (not a valid event: {err})"),
    }
    let _ = std::io::stdout().lock().flush();
}

/// Escapes control characters: event and guest text is untrusted.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Reads a JSON Lines file of events for `publish --file`, with their line numbers; every
/// bad line is reported.
pub fn read_event_file(path: &Path) -> Result<Vec<(usize, serde_json::Value)>, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::bad_request(format!("cannot read {}: {e}", path.display())))?;
    let events = sandbus::dev::read_events(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        ApiError::bad_request(format!(
            "{}: {} bad line(s), nothing was published:\n  {}",
            path.display(),
            lines.len(),
            lines.join("\n  ")
        ))
    })?;
    Ok(events
        .into_iter()
        .map(|(line, e)| {
            (
                line,
                serde_json::from_slice(&e.to_json()).unwrap_or_default(),
            )
        })
        .collect())
}

/// `sandbus devices`: every host's devices and their state.
pub async fn devices(args: &ClientArgs) -> u8 {
    client(args, |c| async move {
        let devices: Vec<DeviceRecord> = c.call(endpoint::DEVICES, &Empty {}).await?;
        if c.json {
            print_json(&devices);
        } else if devices.is_empty() {
            super::outln!("no devices on any live host");
        } else {
            super::outln!(
                "{:<16} {:<16} {:<10} {:<16} {:<8} {:<10} run",
                "host",
                "device",
                "vid:pid",
                "serial",
                "state",
                "location"
            );
            for d in &devices {
                let run = match (&d.run, d.queued) {
                    (Some(run), 0) => run.clone(),
                    (Some(run), n) => format!("{run} (+{n} queued)"),
                    (None, 0) => "-".into(),
                    (None, n) => format!("({n} queued)"),
                };
                super::outln!(
                    "{:<16} {:<16} {:<10} {:<16} {:<8} {:<10} {run}",
                    printable(&d.host),
                    printable(&d.info.id),
                    d.info.vid_pid(),
                    printable(d.info.serial.as_deref().unwrap_or("-")),
                    d.state.to_string(),
                    printable(&d.info.location),
                );
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// What `sandbus run` was asked.
pub struct RunArgs {
    /// The script's name.
    pub script: String,
    /// Which device.
    pub selector: DeviceSelector,
    /// Script arguments.
    pub args: Vec<(String, String)>,
    /// The run's deadline.
    pub timeout: Duration,
    /// How long to wait for the device.
    pub queue_timeout: Duration,
    /// Stream the log and wait for the report.
    pub follow: bool,
}

/// `sandbus run SCRIPT --device SELECTOR`: routes the run to the host that has a matching
/// device (a free one first, else the one with the shortest queue).
pub async fn run(args: &ClientArgs, run: RunArgs) -> u8 {
    client(args, |c| async move {
        let devices: Vec<DeviceRecord> = c.call(endpoint::DEVICES, &Empty {}).await?;
        let mut matching: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| d.state != DeviceState::Offline && run.selector.matches(&d.info))
            .collect();
        matching.sort_by_key(|d| (d.state != DeviceState::Free, d.queued));
        let Some(device) = matching.first() else {
            let seen: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "{}/{} {} ({})",
                        d.host,
                        d.info.id,
                        d.info.vid_pid(),
                        d.state
                    )
                })
                .collect();
            return Err(ApiError::new(
                ApiErrorKind::NotFound,
                format!(
                    "no device matches `{}` on a live host; devices: {}",
                    run.selector,
                    if seen.is_empty() {
                        "none".to_owned()
                    } else {
                        seen.join(", ")
                    }
                ),
            ));
        };
        let request = RunRequest {
            script: run.script.clone(),
            selector: run.selector.to_string(),
            device: device.info.id.clone(),
            args: run.args,
            timeout_ms: u64::try_from(run.timeout.as_millis()).unwrap_or(u64::MAX),
            queue_timeout_ms: u64::try_from(run.queue_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let record: RunRecord = c
            .api
            .call_host(&device.host, endpoint::RUN_START, &request)
            .await?;
        if !run.follow {
            if c.json {
                print_json(&record);
            } else {
                super::outln!("{}", record.id);
            }
            return Ok(EXIT_OK);
        }
        if !c.json {
            super::outln!(
                "run {} of {} on {}/{} ({})",
                record.id,
                record.request.script,
                record.host,
                device.info.id,
                device.info.vid_pid()
            );
        }
        follow_run(&c, &record.id, true).await
    })
    .await
}

/// `sandbus runs`: every run, newest first.
pub async fn runs(args: &ClientArgs) -> u8 {
    client(args, |c| async move {
        let runs: Vec<RunRecord> = c.call(endpoint::RUNS, &Empty {}).await?;
        if c.json {
            print_json(&runs);
        } else if runs.is_empty() {
            super::outln!("no runs");
        } else {
            super::outln!(
                "{:<26} {:<16} {:<14} {:<16} {:<9} {:<9} created",
                "run",
                "script",
                "host",
                "device",
                "state",
                "verdict"
            );
            for r in &runs {
                let state = match r.state {
                    RunState::Queued => "queued",
                    RunState::Running => "running",
                    RunState::Finished => "finished",
                };
                super::outln!(
                    "{:<26} {:<16} {:<14} {:<16} {:<9} {:<9} {}",
                    r.id,
                    printable(&r.request.script),
                    printable(&r.host),
                    printable(&r.request.device),
                    state,
                    r.verdict
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.created_at
                );
            }
        }
        Ok(EXIT_OK)
    })
    .await
}

/// `sandbus logs RUN_ID [--follow]`.
pub async fn logs(args: &ClientArgs, run: &str, follow: bool) -> u8 {
    let run = run.to_owned();
    client(args, |c| async move {
        let record: RunRecord = c
            .call(endpoint::RUN, &RunIdRequest { run: run.clone() })
            .await?;
        follow_run(&c, &record.id, follow).await
    })
    .await
}

/// `sandbus cancel RUN_ID`.
pub async fn cancel(args: &ClientArgs, run: &str) -> u8 {
    let run = run.to_owned();
    client(args, |c| async move {
        let record: RunRecord = c
            .call(endpoint::RUN, &RunIdRequest { run: run.clone() })
            .await?;
        if record.state == RunState::Finished {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "run {run} already finished ({})",
                    record.verdict.map(|v| v.to_string()).unwrap_or_default()
                ),
            ));
        }
        let reply: CancelReply = c
            .api
            .call_host(&record.host, endpoint::RUN_CANCEL, &RunIdRequest { run })
            .await?;
        if c.json {
            print_json(&reply);
        } else if reply.cancelled {
            super::outln!("cancelling {}", reply.run);
        } else {
            super::outln!("{} is not active on {}", reply.run, record.host);
        }
        Ok(if reply.cancelled { EXIT_OK } else { EXIT_FAIL })
    })
    .await
}

/// Prints a run's stored log lines and, with `wait`, follows it to its report. The exit
/// code follows the verdict when the report was seen (0 pass, 1 fail, 3 error, 4 timeout or
/// cancelled), else 0. Pages come from a daemon (`run.log`).
async fn follow_run(c: &Client, run: &str, wait: bool) -> Result<u8, ApiError> {
    let report_subject = names::run_report_subject(run);
    let mut after = 0;
    let mut finished_seen: Option<Instant> = None;
    loop {
        let page: MessagePage = follower_call(
            c,
            wait,
            endpoint::RUN_LOG,
            &RunLogRequest {
                run: run.to_owned(),
                after,
                wait_ms: if wait {
                    u64::try_from(FOLLOW_IDLE.min(c.api.timeout() / 2).as_millis())
                        .unwrap_or(u64::MAX)
                } else {
                    0
                },
            },
        )
        .await?;
        for message in &page.messages {
            after = after.max(message.sequence);
            let payload = body(message);
            if message.subject == report_subject {
                let report: RunReport = serde_json::from_slice(&payload).map_err(|e| {
                    ApiError::new(ApiErrorKind::Internal, format!("unreadable report: {e}"))
                })?;
                print_run_report(&report, c.json);
                return Ok(verdict_exit_code(report.verdict));
            }
            if c.json {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&payload);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            } else {
                match serde_json::from_slice::<sandbus::imports::log::LogLine>(&payload) {
                    Ok(line) => {
                        super::outln!("  {:<5} {}", line.level.as_str(), printable(&line.message))
                    }
                    Err(_) => super::outln!("  (unreadable log line)"),
                }
            }
        }
        if !page.messages.is_empty() {
            continue;
        }
        if !wait {
            return Ok(EXIT_OK);
        }
        // Quiet for a while: if the run is finished but its report never came (its host
        // could not store it), end with the record's verdict.
        let record: RunRecord = c
            .call(
                endpoint::RUN,
                &RunIdRequest {
                    run: run.to_owned(),
                },
            )
            .await?;
        if record.state == RunState::Finished {
            let seen = *finished_seen.get_or_insert_with(Instant::now);
            if seen.elapsed() >= FOLLOW_IDLE {
                let verdict = record.verdict.unwrap_or(RunVerdict::Error);
                if !c.json {
                    super::outln!(
                        "report: {verdict} (no stored report; from the run record)\nsummary: {}",
                        printable(record.summary.as_deref().unwrap_or("-"))
                    );
                } else {
                    print_json(&json!({ "type": "record", "record": record }));
                }
                return Ok(verdict_exit_code(verdict));
            }
        }
    }
}

/// How long `--follow` waits in silence before checking the run's record.
const FOLLOW_IDLE: Duration = Duration::from_secs(3);

/// The exit code of a finished run: 0 pass, 1 fail, 3 error, 4 timeout or cancelled.
fn verdict_exit_code(verdict: RunVerdict) -> u8 {
    match verdict {
        RunVerdict::Pass => EXIT_OK,
        RunVerdict::Fail => EXIT_FAIL,
        RunVerdict::Error => super::EXIT_SCRIPT_ERROR,
        RunVerdict::Timeout | RunVerdict::Cancelled => super::EXIT_DID_NOT_FINISH,
    }
}

fn print_run_report(report: &RunReport, json: bool) {
    if json {
        print_json(&json!({ "type": "report", "report": report }));
        return;
    }
    super::outln!("report: {}", report.verdict);
    for step in &report.steps {
        let mark = match step.outcome {
            sandbus::sandbox::StepOutcome::Passed => "pass",
            sandbus::sandbox::StepOutcome::Failed => "FAIL",
            sandbus::sandbox::StepOutcome::Skipped => "skip",
        };
        let detail = step
            .detail
            .as_deref()
            .map(|d| format!("  {}", printable(d)))
            .unwrap_or_default();
        super::outln!(
            "  [{mark}] {:<28} {:>6} ms{detail}",
            printable(&step.name),
            step.duration_ms
        );
    }
    super::outln!("summary: {}", printable(&report.summary));
    if let Some(device) = &report.device {
        super::outln!(
            "device: {} {} on {}",
            device.id,
            device.vid_pid(),
            report.host
        );
    }
    if report.log_lines_dropped > 0 {
        super::outln!(
            "({} log lines could not be stored)",
            report.log_lines_dropped
        );
    }
    super::outln!(
        "metering: {:.1} ms wall, {} KiB peak memory{}",
        report.metering.wall_us as f64 / 1000.0,
        report.metering.peak_memory / 1024,
        report
            .metering
            .fuel
            .map(|f| format!(", {f} fuel"))
            .unwrap_or_default()
    );
}
