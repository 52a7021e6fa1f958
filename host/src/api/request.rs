//! [`Request`]: a control API request read and validated, one variant per endpoint.
//!
//! The one place that maps an endpoint's name to its variant; the body each takes is the
//! endpoint table's ([`endpoint::Call::Request`]), so the two cannot disagree. The daemon's
//! router matches on it, and the fuzz targets feed it arbitrary bodies: whatever reaches the
//! API is read here, strictly (unknown fields refused), and checked with
//! [`super::Validate`] before anything acts on it.

use super::endpoint::{self, Call};
use super::{
    ApiError, ApiErrorKind, ConfigureRequest, Empty, EventListRequest, HookPolicyRequest,
    HookRequest, KvKeyRequest, KvListRequest, KvSetRequest, NameRequest, RunIdRequest,
    RunLogRequest, StageRequest, StatusRequest, SubscribeRequest, UploadRequest, Validate as _,
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
    /// `component.configure`.
    Configure(ConfigureRequest),
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
        use endpoint as e;
        Ok(match name {
            e::STAGE => Self::Stage(read::<e::Stage>(body)?),
            e::UPLOAD => Self::Upload(read::<e::Upload>(body)?),
            e::LIST => empty::<e::List>(body, Self::List)?,
            e::REMOVE => Self::Remove(read::<e::Remove>(body)?),
            e::ROLLBACK => Self::Rollback(read::<e::Rollback>(body)?),
            e::CONFIGURE => Self::Configure(read::<e::Configure>(body)?),
            e::SUBSCRIBE => Self::Subscribe(read::<e::Subscribe>(body)?),
            e::UNSUBSCRIBE => Self::Unsubscribe(read::<e::Unsubscribe>(body)?),
            e::STATUS => Self::Status(read_or_default::<e::Status>(body)?),
            e::PUBLISH => {
                let request = read::<e::Publish>(body)?;
                Self::Publish(super::validate::outside_event(
                    request.event.get().as_bytes(),
                )?)
            }
            e::EVENTS => Self::Events(read_or_default::<e::Events>(body)?),
            e::HOSTS => empty::<e::Hosts>(body, Self::Hosts)?,
            e::DEVICES => empty::<e::Devices>(body, Self::Devices)?,
            e::RUNS => empty::<e::Runs>(body, Self::Runs)?,
            e::RUN => Self::Run(read::<e::Run>(body)?),
            e::RUN_LOG => Self::RunLog(read::<e::RunLog>(body)?),
            e::RUN_START => Self::RunStart(read::<e::RunStart>(body)?),
            e::RUN_CANCEL => Self::RunCancel(read::<e::RunCancel>(body)?),
            e::HOOK_ADD => Self::HookAdd(read::<e::HookAdd>(body)?),
            e::HOOK_REMOVE => Self::HookRemove(read::<e::HookRemove>(body)?),
            e::HOOK_POLICY => Self::HookPolicy(read::<e::HookPolicy>(body)?),
            e::HOOK_LIST => empty::<e::HookList>(body, Self::HookList)?,
            e::HOOK_CALL => {
                let request = read::<e::HookCall>(body)?;
                Self::HookCall {
                    proposed: event(
                        &request.event,
                        "the proposed operation is not a valid event",
                    )?,
                    point: request.point,
                }
            }
            e::KV_GET => Self::KvGet(read::<e::KvGet>(body)?),
            e::KV_SET => Self::KvSet(read::<e::KvSet>(body)?),
            e::KV_DELETE => Self::KvDelete(read::<e::KvDelete>(body)?),
            e::KV_LIST => Self::KvList(read::<e::KvList>(body)?),
            other => {
                return Err(ApiError::new(
                    ApiErrorKind::NotFound,
                    format!("no endpoint `{}`", crate::text::echo(other)),
                ));
            }
        })
    }
}

/// Reads and validates the body of a request to `E`, as the endpoint table types it:
/// nothing is done with a request the CLI would not have sent.
fn read<E: Call>(body: &[u8]) -> Result<E::Request, ApiError> {
    let request: E::Request = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid: {}",
            crate::text::clip(&e.to_string(), 512)
        ))
        .caused_by(e)
    })?;
    request.validate()?;
    Ok(request)
}

/// [`read`], where an empty body means the request's defaults.
fn read_or_default<E: Call>(body: &[u8]) -> Result<E::Request, ApiError>
where
    E::Request: Default,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(E::Request::default())
    } else {
        read::<E>(body)
    }
}

/// A request to `E`, which takes no fields: an empty body or `{}`.
fn empty<E: Call<Request = Empty>>(body: &[u8], request: Request) -> Result<Request, ApiError> {
    let _: Empty = read_or_default::<E>(body)?;
    Ok(request)
}

/// The event in a request (already checked by the request's [`super::Validate`]).
fn event(raw: &serde_json::value::RawValue, what: &str) -> Result<CanonicalEvent, ApiError> {
    CanonicalEvent::from_json(raw.get().as_bytes())
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")).caused_by(e))
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
