//! The control API: request and response bodies, error codes, and the client the CLI uses.
//!
//! Every daemon serves the API as a NATS service named `sandbus` (discoverable with
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`), with one request/reply endpoint per operation
//! under `sandbus.api.`. Bodies are JSON. A failed request is answered with the service
//! error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`) and `Sandbus-Error-Kind`.
//!
//! Mutations can be sent as a *call* (the reply carries the result) or a *cast*
//! (`"cast": true`: the reply only says the request was accepted, with a request id; the
//! result comes later as a `sandbus.request.finished` event with that id as its subject).

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::names;
use crate::sandbox::World;

/// Endpoint names (the subject is `sandbus.api.<name>`).
pub mod endpoint {
    /// Record a component whose bytes are in the object store.
    pub const UPLOAD: &str = "component.upload";
    /// List components.
    pub const LIST: &str = "component.list";
    /// Remove a component.
    pub const REMOVE: &str = "component.remove";
    /// Point a component back at its previous content.
    pub const ROLLBACK: &str = "component.rollback";
    /// Subscribe a listener to event patterns.
    pub const SUBSCRIBE: &str = "listener.subscribe";
    /// Unsubscribe a listener.
    pub const UNSUBSCRIBE: &str = "listener.unsubscribe";
    /// A listener's status (or all of them).
    pub const STATUS: &str = "listener.status";
    /// Publish a canonical event.
    pub const PUBLISH: &str = "event.publish";
    /// Live hosts.
    pub const HOSTS: &str = "host.list";
    /// Every host's devices (inventory, with states).
    pub const DEVICES: &str = "device.list";
    /// Script runs, newest first.
    pub const RUNS: &str = "run.list";
    /// One run's record.
    pub const RUN: &str = "run.get";
    /// Start a run on a device of the answering host (`sandbus.host.<id>.run.start`).
    pub const RUN_START: &str = "run.start";
    /// Cancel a run of the answering host (`sandbus.host.<id>.run.cancel`).
    pub const RUN_CANCEL: &str = "run.cancel";
    /// Register a hook at an extension point.
    pub const HOOK_ADD: &str = "hook.add";
    /// Remove a hook from an extension point.
    pub const HOOK_REMOVE: &str = "hook.remove";
    /// Set an extension point's policy and deadline.
    pub const HOOK_POLICY: &str = "hook.policy";
    /// List the extension points and their hooks.
    pub const HOOK_LIST: &str = "hook.list";
    /// Ask an extension point about a proposed operation.
    pub const HOOK_CALL: &str = "hook.call";

    /// Endpoints each host answers on its own subjects (`sandbus.host.<id>.<name>`): runs
    /// must reach the host that has the device.
    pub const HOST_ONLY: &[&str] = &[RUN_START, RUN_CANCEL];

    /// Every endpoint, with whether it may be cast (mutations) or only called (queries).
    pub const ALL: &[(&str, bool)] = &[
        (UPLOAD, true),
        (LIST, false),
        (REMOVE, true),
        (ROLLBACK, true),
        (SUBSCRIBE, true),
        (UNSUBSCRIBE, true),
        (STATUS, false),
        (PUBLISH, true),
        (HOSTS, false),
        (DEVICES, false),
        (RUNS, false),
        (RUN, false),
        (HOOK_ADD, true),
        (HOOK_REMOVE, true),
        (HOOK_POLICY, true),
        (HOOK_LIST, false),
        // A call is a question whose answer the caller waits for.
        (HOOK_CALL, false),
    ];
}

/// Longest error message a reply carries, in bytes; longer ones are clipped, saying how long
/// they were ([`crate::text::clip`]).
pub const MAX_ERROR_LEN: usize = 4096;

/// Longest reason one hook's answer carries, in bytes (in `hook.call` replies and
/// `sandbus.hook.denied` events); longer ones are clipped, saying how long they were.
pub const MAX_HOOK_REASON_LEN: usize = 1024;

/// Header carrying an error's [`ApiErrorKind`].
pub const ERROR_KIND_HEADER: &str = "Sandbus-Error-Kind";

/// What kind of error a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiErrorKind {
    /// The request was wrong; nothing changed. The message says what to fix.
    BadRequest,
    /// The thing named does not exist.
    NotFound,
    /// The request conflicts with the current state (for example removing a subscribed
    /// listener).
    Conflict,
    /// No daemon answered, or the bus failed; retrying later may work.
    Unavailable,
    /// A bug or an unexpected failure in the daemon.
    Internal,
}

impl ApiErrorKind {
    /// The numeric code on the wire (HTTP-like).
    pub fn code(self) -> usize {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The kind for a wire name or code.
    pub fn parse(name: Option<&str>, code: Option<usize>) -> Self {
        match (name, code) {
            (Some("bad-request"), _) | (_, Some(400)) => Self::BadRequest,
            (Some("not-found"), _) | (_, Some(404)) => Self::NotFound,
            (Some("conflict"), _) | (_, Some(409)) => Self::Conflict,
            (Some("unavailable"), _) | (_, Some(503)) => Self::Unavailable,
            _ => Self::Internal,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ApiErrorKind,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A bad request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::BadRequest, message)
    }
}

impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        use crate::bus::BusErrorKind as K;
        let kind = match e.kind {
            K::NotFound => ApiErrorKind::NotFound,
            K::Conflict => ApiErrorKind::Conflict,
            K::Connect | K::Unavailable | K::NotSetUp => ApiErrorKind::Unavailable,
            K::Corrupt => ApiErrorKind::Internal,
        };
        Self::new(kind, e.message)
    }
}

/// `component.upload`: record a component whose bytes the client put in the object store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The name to record it under.
    pub name: String,
    /// sha256 of the bytes, hex.
    pub digest: String,
    /// The role it must have; `None` accepts what it is.
    #[serde(default)]
    pub world: Option<World>,
    /// Publish grants (subject patterns).
    #[serde(default)]
    pub grants: Vec<String>,
    /// `kv-read` grants (component names).
    #[serde(default)]
    pub kv_read: Vec<String>,
    /// Limit settings, `NAME=VALUE`.
    #[serde(default)]
    pub limits: Vec<String>,
    /// The client stored the bytes for this upload (they were not in the store before), so
    /// a refused upload removes them again.
    #[serde(default)]
    pub bytes_added: bool,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// A request naming one component or listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    /// The name.
    pub name: String,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `listener.status`: one listener, or all when `name` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// The listener.
    #[serde(default)]
    pub name: Option<String>,
}

/// `listener.subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    /// The listener (a component name).
    pub name: String,
    /// Event type patterns.
    pub events: Vec<String>,
    /// Events in flight at once (default 128).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Deliveries before dead-lettering (default 5).
    #[serde(default)]
    pub max_deliver: Option<u32>,
    /// Retry delays in milliseconds (default 1000, 5000, 30000).
    #[serde(default)]
    pub backoff_ms: Option<Vec<u64>>,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `event.publish`: one CloudEvents JSON object.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The event.
    pub event: Box<serde_json::value::RawValue>,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `hook.add` / `hook.remove`: one hook at one extension point.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRequest {
    /// The hook (a component of world `hook`).
    pub name: String,
    /// The extension point, e.g. `vm.pre-create`.
    pub point: String,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `hook.policy`: what is given changes, the rest stays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookPolicyRequest {
    /// The extension point.
    pub point: String,
    /// What a failed hook counts as.
    #[serde(default)]
    pub policy: Option<crate::bus::HookPolicy>,
    /// How long a call waits for the hooks, in milliseconds.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `hook.call`: a proposed operation, as a CloudEvents JSON object, for the hooks at
/// `point`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookCallRequest {
    /// The extension point.
    pub point: String,
    /// The proposed operation.
    pub event: Box<serde_json::value::RawValue>,
}

/// What one hook answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookOutcome {
    /// It allowed the operation.
    Allow,
    /// It denied it.
    Deny,
    /// It could not answer: it returned an error, trapped, or is not loaded.
    Error,
    /// It did not answer within the point's deadline.
    Timeout,
}

impl HookOutcome {
    /// The name in replies and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Allow => "allow",
            HookOutcome::Deny => "deny",
            HookOutcome::Error => "error",
            HookOutcome::Timeout => "timeout",
        }
    }
}

/// One hook's part of a [`HookCallReply`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookAnswer {
    /// The hook.
    pub hook: String,
    /// What it answered.
    pub outcome: HookOutcome,
    /// Its reason (deny), or what went wrong (error, timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// The reply to `hook.call`: the combined verdict and every hook's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookCallReply {
    /// The point asked.
    pub point: String,
    /// Its policy for failed hooks.
    pub policy: crate::bus::HookPolicy,
    /// Its deadline, in milliseconds.
    pub deadline_ms: u64,
    /// Whether the operation may go ahead.
    pub allowed: bool,
    /// Why not: one line per denying (or, fail-closed, failing) hook, `<hook>: <reason>`.
    pub reasons: Vec<String>,
    /// Every hook's answer, in registration order (sorted by name).
    pub hooks: Vec<HookAnswer>,
}

/// A request body the daemon checks before acting on it, with the same rules the CLI
/// applies before sending it: the API trusts nothing a client sends, whether or not the
/// client is our CLI. A failure is a [`ApiErrorKind::BadRequest`] that says what to fix,
/// with any echoed name clipped (see [`crate::text`]).
pub trait Validate {
    /// Checks the request; nothing has been done yet.
    fn validate(&self) -> Result<(), ApiError>;
}

fn component_name(name: &str) -> Result<(), ApiError> {
    crate::sandbox::validate_component_name(name).map_err(|e| ApiError::bad_request(e.message))
}

fn point_name(point: &str) -> Result<(), ApiError> {
    crate::bus::validate_point(point).map_err(ApiError::bad_request)
}

impl Validate for UploadRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.name)?;
        if self.digest.len() != 64 || !self.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(format!(
                "`{}` is not a sha256 digest (64 hex digits)",
                crate::text::echo(&self.digest)
            )));
        }
        // The grants and limits are checked with the component's world, once the daemon has
        // read the bytes (`ComponentPolicy::check`).
        Ok(())
    }
}

impl Validate for NameRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.name)
    }
}

impl Validate for StatusRequest {
    fn validate(&self) -> Result<(), ApiError> {
        self.name.as_deref().map_or(Ok(()), component_name)
    }
}

impl Validate for SubscribeRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.name)?;
        let mut subscription = crate::bus::Subscription::new(&self.name, self.events.clone());
        if let Some(n) = self.max_in_flight {
            subscription.max_in_flight = n;
        }
        if let Some(n) = self.max_deliver {
            subscription.max_deliver = n;
        }
        if let Some(backoff) = &self.backoff_ms {
            subscription.backoff = backoff.iter().copied().map(Duration::from_millis).collect();
        }
        subscription.validate().map_err(ApiError::bad_request)
    }
}

impl Validate for PublishRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let event = crate::event::CanonicalEvent::from_json(self.event.get().as_bytes())
            .map_err(|e| ApiError::bad_request(format!("the event is not valid: {e}")))?;
        if crate::subject::is_host_event_type(&event.ty) {
            return Err(ApiError::bad_request(format!(
                "the type `{}` is reserved: `{}.*` events come only from sandbus daemons \
                 (billing charges on them); publish your event under a type of your own",
                crate::text::echo(&event.ty),
                crate::subject::HOST_EVENT_PREFIX
            )));
        }
        Ok(())
    }
}

impl Validate for HookRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.name)?;
        point_name(&self.point)
    }
}

impl Validate for HookPolicyRequest {
    fn validate(&self) -> Result<(), ApiError> {
        point_name(&self.point)?;
        if self.policy.is_none() && self.deadline_ms.is_none() {
            return Err(ApiError::bad_request(
                "nothing to change: give a policy (--on-failure) or a deadline (--deadline)",
            ));
        }
        if let Some(ms) = self.deadline_ms {
            crate::bus::validate_hook_deadline(Duration::from_millis(ms))
                .map_err(ApiError::bad_request)?;
        }
        Ok(())
    }
}

impl Validate for HookCallRequest {
    fn validate(&self) -> Result<(), ApiError> {
        point_name(&self.point)?;
        crate::event::CanonicalEvent::from_json(self.event.get().as_bytes())
            .map(|_| ())
            .map_err(|e| {
                ApiError::bad_request(format!("the proposed operation is not a valid event: {e}"))
            })
    }
}

impl Validate for RunIdRequest {
    fn validate(&self) -> Result<(), ApiError> {
        crate::bus::validate_run_id(&self.run).map_err(ApiError::bad_request)
    }
}

impl Validate for crate::bus::RunRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.script)?;
        let printable = |what: &str, text: &str, max: usize| {
            if text.is_empty() || text.len() > max || text.chars().any(char::is_control) {
                Err(ApiError::bad_request(format!(
                    "the {what} `{}` must be 1 to {max} bytes of printable text",
                    crate::text::echo(text)
                )))
            } else {
                Ok(())
            }
        };
        printable("device", &self.device, 128)?;
        printable("selector", &self.selector, 256)?;
        let size: usize = self.args.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.args.len() > MAX_RUN_ARGS || size > MAX_RUN_ARGS_BYTES {
            return Err(ApiError::bad_request(format!(
                "a run takes at most {MAX_RUN_ARGS} arguments of {MAX_RUN_ARGS_BYTES} bytes in \
                 all; these are {} arguments of {size} bytes",
                self.args.len()
            )));
        }
        let day = crate::sandbox::MAX_TIMEOUT;
        for (what, ms) in [
            ("run timeout", self.timeout_ms),
            ("queue timeout", self.queue_timeout_ms),
        ] {
            let timeout = Duration::from_millis(ms);
            if timeout.is_zero() || timeout > day {
                return Err(ApiError::bad_request(format!(
                    "the {what} must be between 1 ms and {}",
                    humantime::format_duration(day)
                )));
            }
        }
        Ok(())
    }
}

/// Most arguments a run takes.
pub const MAX_RUN_ARGS: usize = 256;

/// Most bytes of arguments (names and values) a run takes.
pub const MAX_RUN_ARGS_BYTES: usize = 64 << 10;

impl Validate for Empty {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// An empty request body.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The reply to a cast.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CastAccepted {
    /// Always true.
    pub accepted: bool,
    /// The id the `sandbus.request.finished` event will carry as its subject.
    pub request_id: String,
}

/// The reply to `component.upload`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadReply {
    /// The manifest now current.
    pub manifest: crate::bus::ComponentManifest,
    /// True when the same bytes and policy were already current (no new version).
    pub unchanged: bool,
}

/// Names one run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIdRequest {
    /// The run id.
    pub run: String,
}

/// Reply to `run.cancel`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CancelReply {
    /// The run.
    pub run: String,
    /// Whether the run was still queued or running (and is now being cancelled).
    pub cancelled: bool,
}

/// A client of the control API over one NATS connection.
#[derive(Clone)]
pub struct ApiClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl ApiClient {
    /// A client that waits at most `timeout` for each reply.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Sends `request` to `endpoint` and decodes the reply.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        request: &Q,
    ) -> Result<R, ApiError> {
        self.call_subject(names::api_subject(endpoint), request)
            .await
    }

    /// Sends `request` to one host's own `endpoint` (see [`endpoint::HOST_ONLY`]).
    pub async fn call_host<Q: Serialize, R: DeserializeOwned>(
        &self,
        host: &str,
        endpoint: &str,
        request: &Q,
    ) -> Result<R, ApiError> {
        self.call_subject(
            format!("{}.{endpoint}", names::host_api_prefix(host)),
            request,
        )
        .await
    }

    async fn call_subject<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: String,
        request: &Q,
    ) -> Result<R, ApiError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(Bytes::from(body))
            .timeout(Some(self.timeout));
        let reply = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| {
                use async_nats::RequestErrorKind as K;
                let message = match e.kind() {
                    K::NoResponders => "no sandbus daemon is answering on this NATS server; \
                                        start one with `sandbus up` or `sandbus daemon`"
                        .to_owned(),
                    K::TimedOut => format!(
                        "no reply from the daemon within {}",
                        humantime::format_duration(self.timeout)
                    ),
                    _ => format!("the request failed: {e}"),
                };
                ApiError::new(ApiErrorKind::Unavailable, message)
            })?;
        if let Some(headers) = &reply.headers
            && let Some(message) = headers.get(async_nats::service::NATS_SERVICE_ERROR)
        {
            let code = headers
                .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
                .and_then(|c| c.as_str().parse().ok());
            let kind =
                ApiErrorKind::parse(headers.get(ERROR_KIND_HEADER).map(|k| k.as_str()), code);
            return Err(ApiError::new(kind, message.as_str()));
        }
        serde_json::from_slice(&reply.payload).map_err(|e| {
            ApiError::new(
                ApiErrorKind::Internal,
                format!("the daemon's reply is not what this CLI expects ({e}); are both the same version?"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_through_the_wire_code() {
        for kind in [
            ApiErrorKind::BadRequest,
            ApiErrorKind::NotFound,
            ApiErrorKind::Conflict,
            ApiErrorKind::Unavailable,
            ApiErrorKind::Internal,
        ] {
            assert_eq!(ApiErrorKind::parse(None, Some(kind.code())), kind);
            assert_eq!(ApiErrorKind::parse(Some(kind.as_str()), None), kind);
        }
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let error = serde_json::from_str::<NameRequest>(r#"{"name":"a","nmae":"b"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"));
        let ok: SubscribeRequest =
            serde_json::from_str(r#"{"name":"a","events":["vm.*"]}"#).unwrap();
        assert_eq!(ok.max_deliver, None);
        assert!(!ok.cast);
    }
}
