//! The control API: who may call what, the request and reply bodies, and the error codes.
//!
//! Every daemon serves the API as a NATS service named `sandbus` (discoverable with
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`), with one request/reply endpoint per operation.
//! Each endpoint belongs to a [`Role`] and its subject says so:
//! `sandbus.api.<role>.<endpoint>` ([`endpoint`]), so NATS permissions can give people a
//! role. Bodies are JSON (the request and reply types here); every request is validated by the daemon exactly as
//! the CLI validates it before sending ([`Validate`]). A failed request is answered with the
//! service error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`) and
//! `Sandbus-Error-Kind`.
//!
//! Mutations can be sent as a *call* (the reply carries the result) or a *cast*
//! (`"cast": true`: the reply only says the request was accepted, with a request id; the
//! result comes later as a `sandbus.request.finished` event with that id as its subject).
//!
//! Both sides on NATS live with the rest of NATS: the client in [`crate::bus::ApiClient`], the
//! daemon's service in [`crate::bus::ControlService`].

pub mod endpoint;
mod readiness;
mod request;
mod validate;
mod wire;

pub use endpoint::{Endpoint, Role};
pub use readiness::{HostFailure, ListedComponent, Readiness};
pub use request::Request;
pub use validate::{MAX_RUN_ARGS, MAX_RUN_ARGS_BYTES, Validate, outside_event};
pub use wire::*;

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
    /// NATS refused the request: the user may not publish (or receive replies) on a subject
    /// its role needs. The message names the subject. Nothing changed.
    PermissionDenied,
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
            Self::PermissionDenied => 403,
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
            (Some("permission-denied"), _) | (_, Some(403)) => Self::PermissionDenied,
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
            Self::PermissionDenied => "permission-denied",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// A failed request: its [`ApiErrorKind`], what was wrong and what to do, and (on the side
/// that made it) the error underneath as its `source` ([`crate::error::Error`]). On the wire
/// it is `{"kind": …, "message": …}`.
pub type ApiError = crate::error::Error<ApiErrorKind>;

impl ApiError {
    /// A bad request; `why` says what was wrong (a validator's error, or a text).
    pub fn bad_request(why: impl std::fmt::Display) -> Self {
        Self::new(ApiErrorKind::BadRequest, why.to_string())
    }
}

/// The bus error's message, with the kind a requester acts on; the bus error is kept as the
/// source.
impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        use crate::bus::BusErrorKind as K;
        let kind = match e.kind {
            K::NotFound => ApiErrorKind::NotFound,
            K::Conflict => ApiErrorKind::Conflict,
            K::Connect | K::Unavailable | K::NotSetUp | K::ServerLimit => ApiErrorKind::Unavailable,
            K::Corrupt => ApiErrorKind::Internal,
            K::PermissionDenied => ApiErrorKind::PermissionDenied,
        };
        Self::new(kind, e.message.clone()).caused_by(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_through_the_wire_code() {
        for kind in [
            ApiErrorKind::BadRequest,
            ApiErrorKind::PermissionDenied,
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
    fn an_error_reply_is_its_kind_and_message_as_before() {
        let error = ApiError::bad_request("the request body is not valid: EOF");
        let json = serde_json::to_value(&error).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"kind": "bad-request", "message": "the request body is not valid: EOF"})
        );
        let back: ApiError = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, error);
    }

    #[test]
    fn a_bus_failure_keeps_its_message_and_stays_reachable_as_the_source() {
        use std::error::Error as _;

        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let bus = crate::bus::BusError::unavailable("read the manifest", timeout);
        let api = ApiError::from(bus);
        assert_eq!(api.kind, ApiErrorKind::Unavailable);
        assert_eq!(api.message, "cannot read the manifest: timed out");
        let bus = api
            .source()
            .and_then(|s| s.downcast_ref::<crate::bus::BusError>())
            .expect("the bus error is the source");
        assert_eq!(bus.kind, crate::bus::BusErrorKind::Unavailable);
        let io = bus
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the client's error is the bus error's source");
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    }
}
