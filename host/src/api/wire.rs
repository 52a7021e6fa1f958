//! The bodies of the control API: one request type per endpoint (unknown fields refused),
//! and the replies. Every request is checked with [`super::Validate`] on both sides.

use std::collections::BTreeMap;

use crate::sandbox::World;

/// `component.upload`: record a component whose bytes are in the component store, or were
/// staged part by part with `component.stage` (the daemon then stores them, checked against
/// the digest, and drops the parts).
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
    /// `wasi:config/store` values, by key, replacing the current version's; absent, the
    /// current version's values are kept (a redeploy of new bytes keeps what `configure`
    /// set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
    /// Send as a cast.
    #[serde(default)]
    pub cast: bool,
}

/// `component.configure`: changes a component's `wasi:config/store` values, recorded as a new
/// version with the same bytes and policy; an empty change is a read of the values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureRequest {
    /// The component.
    pub name: String,
    /// Keys to set (added or replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Keys to remove; each must be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
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

/// The reply to `listener.status`: the one listener asked for, or all of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum StatusReply {
    /// The listener named in the request.
    One(Box<crate::bus::ListenerStatus>),
    /// Every subscribed listener (the request named none).
    All(Vec<crate::bus::ListenerStatus>),
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

/// `component.stage`: one part of a component's bytes, staged for a `component.upload` of
/// the same digest. A client never writes the component store itself: a daemon checks the
/// assembled bytes against their digest and stores them. Parts expire if no upload follows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// sha256 of the whole component, hex.
    pub digest: String,
    /// Size of the whole component, in bytes.
    pub size: u64,
    /// This part's index, from 0.
    pub part: u32,
    /// How many parts there are.
    pub parts: u32,
    /// The part's bytes, base64.
    pub data: String,
}

/// The reply to `component.stage`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageReply {
    /// The digest the part was staged for.
    pub digest: String,
    /// The part staged.
    pub part: u32,
}

/// Most parts one component is staged in.
pub const MAX_STAGE_PARTS: u32 = 65_536;

/// `event.list`: a page of stored events, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventListRequest {
    /// Event type pattern (`vm.*`, `sandbus.>`); every event when absent.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Start after this stream sequence (0: from the first event).
    #[serde(default)]
    pub after: u64,
    /// Most events in the page (at most [`MAX_PAGE`]; default [`MAX_PAGE`]). 0 asks only for
    /// the stream's last sequence (to follow what comes next).
    #[serde(default)]
    pub max: Option<u32>,
    /// When no event after `after` is stored yet, wait this long for one (at most
    /// [`MAX_PAGE_WAIT_MS`]): a follower's long poll.
    #[serde(default)]
    pub wait_ms: u64,
}

/// Most entries one page (`event.list`, `run.log`, `kv.list`) holds. A page also stops
/// before its reply would pass the server's max payload.
pub const MAX_PAGE: u32 = 1000;

/// Longest a page request may wait for something new, in milliseconds.
pub const MAX_PAGE_WAIT_MS: u64 = 30_000;

/// One stored message in a page: its sequence and its body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The subject it was stored on.
    pub subject: String,
    /// The body when it is JSON (a CloudEvent, a log line, a report), byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Box<serde_json::value::RawValue>>,
    /// The body, base64, when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Set instead of a body when the body alone is too large for a reply: its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_large: Option<u64>,
}

/// A page of stored messages (`event.list`, `run.log`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MessagePage {
    /// The messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// The stream's last sequence when the page was read: `after` for a follower that wants
    /// only what comes next.
    pub last_sequence: u64,
}

/// `run.log`: a page of one run's log lines and, once stored, its report (the report is the
/// last message of a run).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLogRequest {
    /// The run id.
    pub run: String,
    /// Start after this stream sequence (0: from the run's first line).
    #[serde(default)]
    pub after: u64,
    /// When nothing after `after` is stored yet, wait this long (at most
    /// [`MAX_PAGE_WAIT_MS`]).
    #[serde(default)]
    pub wait_ms: u64,
}

/// `kv.get` and `kv.delete`: one key of a component's space.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvKeyRequest {
    /// The component whose space it is.
    pub namespace: String,
    /// The key.
    pub key: String,
}

/// `kv.set`: store a value (text) under a key of a component's space.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSetRequest {
    /// The component whose space it is.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The value, stored as this text.
    pub value: String,
}

/// `kv.list`: the keys (and values) of a component's space that start with a prefix, in
/// byte order, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvListRequest {
    /// The component whose space it is.
    pub namespace: String,
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: String,
    /// Only keys after this one (the last key of the previous page).
    #[serde(default)]
    pub after: Option<String>,
}

/// One key and its value: text when the value is UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value as text (absent when there is no value, or it is not UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value, base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl KvEntry {
    /// The entry for `key` holding `value` (none: absent).
    pub fn new(key: String, value: Option<Vec<u8>>) -> Self {
        use base64::Engine as _;
        match value.map(String::from_utf8) {
            None => Self {
                key,
                value: None,
                value_base64: None,
            },
            Some(Ok(text)) => Self {
                key,
                value: Some(text),
                value_base64: None,
            },
            Some(Err(bytes)) => Self {
                key,
                value: None,
                value_base64: Some(
                    base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes()),
                ),
            },
        }
    }

    /// Whether the key holds a value.
    pub fn exists(&self) -> bool {
        self.value.is_some() || self.value_base64.is_some()
    }
}

/// The reply to `kv.delete`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvDeleteReply {
    /// The key.
    pub key: String,
    /// Whether it existed.
    pub removed: bool,
}

/// The reply to `kv.list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvListReply {
    /// The entries, in key order.
    pub entries: Vec<KvEntry>,
    /// More keys follow: ask again with `after` = the last key here.
    pub more: bool,
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

/// The reply to `component.configure`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigureReply {
    /// The manifest now current, its `config` the values in force.
    pub manifest: crate::bus::ComponentManifest,
    /// True when the change left the values as they were (no new version).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields() {
        let error = serde_json::from_str::<NameRequest>(r#"{"name":"a","nmae":"b"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"));
        let ok: SubscribeRequest =
            serde_json::from_str(r#"{"name":"a","events":["vm.*"]}"#).unwrap();
        assert_eq!(ok.max_deliver, None);
        assert!(!ok.cast);
    }

    #[test]
    fn a_status_reply_is_the_bare_status_or_a_list_of_them() {
        let status = crate::bus::ListenerStatus {
            subscription: crate::bus::Subscription::new("audit", vec!["vm.*".to_owned()]),
            pending: 1,
            in_flight: 0,
            redelivered: 0,
            dead_lettered: 0,
            last_error: None,
            last_throttled: None,
            idle: false,
        };
        let bare = serde_json::to_value(&status).unwrap();
        let one = StatusReply::One(Box::new(status.clone()));
        let all = StatusReply::All(vec![status]);
        assert_eq!(serde_json::to_value(&one).unwrap(), bare);
        assert_eq!(
            serde_json::to_value(&all).unwrap(),
            serde_json::json!([bare])
        );
        assert_eq!(serde_json::from_value::<StatusReply>(bare).unwrap(), one);
    }
}
