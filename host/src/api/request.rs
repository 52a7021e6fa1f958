//! [`Request`]: a control API request read and validated, one variant per endpoint.
//!
//! The one place that maps an endpoint to the body it takes. The daemon's router matches on
//! it, and the fuzz targets feed it arbitrary bodies: whatever reaches the API is read here,
//! strictly (unknown fields refused), and checked with [`Validate`] before anything acts on
//! it.

use serde::de::DeserializeOwned;

use super::endpoint;
use super::{
    ApiError, ApiErrorKind, Empty, EventListRequest, HookCallRequest, HookPolicyRequest,
    HookRequest, KvKeyRequest, KvListRequest, KvSetRequest, NameRequest, PublishRequest,
    RunIdRequest, RunLogRequest, StageRequest, StatusRequest, SubscribeRequest, UploadRequest,
    Validate,
};
use crate::bus::RunRequest;
use crate::event::CanonicalEvent;

/// A request, read and validated.
#[derive(Debug)]
pub enum Request {
    /// `component.stage`.
    Stage(StageRequest),
    /// `component.upload`.
    Upload(UploadRequest),
    /// `component.list`.
    List,
    /// `component.remove`.
    Remove(NameRequest),
    /// `component.rollback`.
    Rollback(NameRequest),
    /// `listener.subscribe`.
    Subscribe(SubscribeRequest),
    /// `listener.unsubscribe`.
    Unsubscribe(NameRequest),
    /// `listener.status`.
    Status(StatusRequest),
    /// `event.publish`: the event, valid and not of a host type, at depth 0.
    Publish(CanonicalEvent),
    /// `event.list`.
    Events(EventListRequest),
    /// `host.list`.
    Hosts,
    /// `device.list`.
    Devices,
    /// `run.list`.
    Runs,
    /// `run.get`.
    Run(RunIdRequest),
    /// `run.log`.
    RunLog(RunLogRequest),
    /// `run.start`.
    RunStart(RunRequest),
    /// `run.cancel`.
    RunCancel(RunIdRequest),
    /// `hook.add`.
    HookAdd(HookRequest),
    /// `hook.remove`.
    HookRemove(HookRequest),
    /// `hook.policy`.
    HookPolicy(HookPolicyRequest),
    /// `hook.list`.
    HookList,
    /// `hook.call`: the point and the proposed operation, a valid event.
    HookCall {
        /// The extension point.
        point: String,
        /// The proposed operation.
        proposed: CanonicalEvent,
    },
    /// `kv.get`.
    KvGet(KvKeyRequest),
    /// `kv.set`.
    KvSet(KvSetRequest),
    /// `kv.delete`.
    KvDelete(KvKeyRequest),
    /// `kv.list`.
    KvList(KvListRequest),
}

impl Request {
    /// Reads `body` as the request of the endpoint named `name` and validates it. An unknown
    /// endpoint is [`ApiErrorKind::NotFound`]; a bad body a bad request saying what is wrong.
    pub fn parse(name: &str, body: &[u8]) -> Result<Self, ApiError> {
        Ok(match name {
            endpoint::STAGE => Self::Stage(parse(body)?),
            endpoint::UPLOAD => Self::Upload(parse(body)?),
            endpoint::LIST => empty(body, Self::List)?,
            endpoint::REMOVE => Self::Remove(parse(body)?),
            endpoint::ROLLBACK => Self::Rollback(parse(body)?),
            endpoint::SUBSCRIBE => Self::Subscribe(parse(body)?),
            endpoint::UNSUBSCRIBE => Self::Unsubscribe(parse(body)?),
            endpoint::STATUS => Self::Status(parse_or_default(body)?),
            endpoint::PUBLISH => {
                let request: PublishRequest = parse(body)?;
                let mut published = event(&request.event, "the event is not valid")?;
                // An event published from outside starts a chain: its depth is the host's
                // to count, not the publisher's to claim (a deep one would silence the
                // daemon's events about it).
                published.depth = 0;
                Self::Publish(published)
            }
            endpoint::EVENTS => Self::Events(parse_or_default(body)?),
            endpoint::HOSTS => empty(body, Self::Hosts)?,
            endpoint::DEVICES => empty(body, Self::Devices)?,
            endpoint::RUNS => empty(body, Self::Runs)?,
            endpoint::RUN => Self::Run(parse(body)?),
            endpoint::RUN_LOG => Self::RunLog(parse(body)?),
            endpoint::RUN_START => Self::RunStart(parse(body)?),
            endpoint::RUN_CANCEL => Self::RunCancel(parse(body)?),
            endpoint::HOOK_ADD => Self::HookAdd(parse(body)?),
            endpoint::HOOK_REMOVE => Self::HookRemove(parse(body)?),
            endpoint::HOOK_POLICY => Self::HookPolicy(parse(body)?),
            endpoint::HOOK_LIST => empty(body, Self::HookList)?,
            endpoint::HOOK_CALL => {
                let request: HookCallRequest = parse(body)?;
                Self::HookCall {
                    proposed: event(
                        &request.event,
                        "the proposed operation is not a valid event",
                    )?,
                    point: request.point,
                }
            }
            endpoint::KV_GET => Self::KvGet(parse(body)?),
            endpoint::KV_SET => Self::KvSet(parse(body)?),
            endpoint::KV_DELETE => Self::KvDelete(parse(body)?),
            endpoint::KV_LIST => Self::KvList(parse(body)?),
            other => {
                return Err(ApiError::new(
                    ApiErrorKind::NotFound,
                    format!("no endpoint `{}`", crate::text::echo(other)),
                ));
            }
        })
    }
}

/// Reads and validates a request body: nothing is done with a request the CLI would not have
/// sent.
fn parse<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, ApiError> {
    let request: T = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid: {}",
            crate::text::clip(&e.to_string(), 512)
        ))
    })?;
    request.validate()?;
    Ok(request)
}

/// [`parse`], where an empty body means the request's defaults.
fn parse_or_default<T: DeserializeOwned + Default + Validate>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(body)
    }
}

/// A request that takes no fields: an empty body or `{}`.
fn empty(body: &[u8], request: Request) -> Result<Request, ApiError> {
    let _: Empty = parse_or_default(body)?;
    Ok(request)
}

/// The event in a request (already checked by the request's [`Validate`]).
fn event(raw: &serde_json::value::RawValue, what: &str) -> Result<CanonicalEvent, ApiError> {
    CanonicalEvent::from_json(raw.get().as_bytes())
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_a_request_and_nothing_else_does() {
        for e in endpoint::ALL {
            if let Err(error) = Request::parse(e.name, b"{}") {
                assert_eq!(error.kind, ApiErrorKind::BadRequest, "{}: {error}", e.name);
            }
        }
        let error = Request::parse("component.destroy", b"{}").unwrap_err();
        assert_eq!(error.kind, ApiErrorKind::NotFound);
    }

    #[test]
    fn a_published_event_starts_a_chain() {
        let body = r#"{"event":{"specversion":"1.0","id":"1","source":"/s","type":"vm.x","sandbusdepth":8}}"#;
        match Request::parse(endpoint::PUBLISH, body.as_bytes()) {
            Ok(Request::Publish(event)) => assert_eq!(event.depth, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bodies_are_read_strictly_and_validated() {
        assert!(matches!(
            Request::parse(endpoint::LIST, b""),
            Ok(Request::List)
        ));
        for (name, body) in [
            (endpoint::LIST, r#"{"all":true}"#),
            (endpoint::REMOVE, r#"{"name":"../etc/passwd"}"#),
            (endpoint::REMOVE, r#"{"name":"a","extra":1}"#),
            (endpoint::PUBLISH, r#"{"event":{"specversion":"1.0"}}"#),
            (
                endpoint::PUBLISH,
                r#"{"event":{"specversion":"1.0","id":"1","source":"/s","type":"sandbus.metering"}}"#,
            ),
            (endpoint::EVENTS, r#"{"wait_ms":99999999}"#),
            (endpoint::KV_GET, r#"{"namespace":"a.b","key":"k"}"#),
            (
                endpoint::PUBLISH,
                r#"{"event":{"specversion":"1.0","id":"a\nb","source":"/s","type":"vm.x"}}"#,
            ),
        ] {
            let error = Request::parse(name, body.as_bytes()).unwrap_err();
            assert_eq!(error.kind, ApiErrorKind::BadRequest, "{name} {body}");
        }
    }
}
