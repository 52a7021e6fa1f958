//! The control API's router, bus-neutral: a request as the bus hands it over (the role whose
//! subject it came on, the endpoint's name, the body) is checked against the endpoint table
//! ([`endpoint::ALL`]), read into a [`Request`] and answered as a *call* (the reply carries
//! the result) or a *cast* (`"cast": true`: the reply says it was accepted, with a request
//! id; the result follows as a `sandbus.request.finished` event).

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::api::{ApiError, ApiErrorKind, CastAccepted, Endpoint, Request, Role, endpoint};
use crate::daemon::host_events::RequestFinished;

/// What answers the requests the router lets through: the daemon's
/// [`super::ControlApi`] (or, in tests, a fake that records them).
pub(super) trait Handler: Send + Sync + 'static {
    /// This host's id: a cast's request id starts with it.
    fn host_id(&self) -> &str;

    /// Answers one read and validated request with its endpoint's reply, as JSON.
    fn handle(&self, request: Request) -> impl Future<Output = Result<Value, ApiError>> + Send;

    /// Reports how a cast ended.
    fn cast_finished(
        &self,
        finished: RequestFinished<Value, ApiError>,
    ) -> impl Future<Output = ()> + Send;
}

/// Answers the request `body` to the endpoint `name` that came on `role`'s subjects. `slot`
/// (the request's place among its role's concurrent requests) is held until the request is
/// done: a call's until its result is ready, a cast's until its outcome is reported.
pub(super) async fn route<H: Handler>(
    handler: Arc<H>,
    role: Role,
    name: &str,
    body: bytes::Bytes,
    slot: impl Send + 'static,
) -> Result<Value, ApiError> {
    let endpoint = find(role, name)?;
    let name = endpoint.name;
    let cast = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("cast").and_then(Value::as_bool))
        .unwrap_or(false);
    if !cast {
        let result = read_and_handle(&*handler, name, &body).await;
        drop(slot);
        return result;
    }
    if !endpoint.castable {
        return Err(ApiError::bad_request(format!(
            "`{name}` is a query; it can't be sent as a cast"
        )));
    }
    let request_id = format!(
        "{}-{}",
        handler.host_id(),
        hex::encode(rand::random::<[u8; 8]>())
    );
    let id = request_id.clone();
    // The cast keeps its place among the concurrent requests until it is done, and shutdown
    // waits for it.
    tokio::spawn(async move {
        let result = read_and_handle(&*handler, name, &body).await;
        handler
            .cast_finished(RequestFinished::new(id, name, result))
            .await;
        drop(slot);
    });
    serde_json::to_value(CastAccepted {
        accepted: true,
        request_id,
    })
    .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))
}

/// Reads `body` as a request to the endpoint `name` and has `handler` answer it.
async fn read_and_handle<H: Handler>(
    handler: &H,
    name: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    handler.handle(Request::parse(name, body)?).await
}

/// The endpoint `name`, if it is one of `role`'s: the endpoints of another role are not
/// served on this role's subjects, whatever the bus hands over.
fn find(role: Role, name: &str) -> Result<&'static Endpoint, ApiError> {
    let endpoint = Endpoint::find(name).ok_or_else(|| {
        ApiError::new(
            ApiErrorKind::NotFound,
            format!("no endpoint `{}`", crate::text::echo(name)),
        )
    })?;
    if endpoint.role != role {
        return Err(ApiError::new(
            ApiErrorKind::PermissionDenied,
            format!(
                "`{name}` is an endpoint of the {} role, not served to the {role} role",
                endpoint.role
            ),
        ));
    }
    Ok(endpoint)
}

/// The JSON of a reply to `E`: a handler's reply must be of the type the endpoint table
/// gives it, or this does not compile.
pub(super) fn reply<E: endpoint::Call>(value: E::Reply) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::{mpsc, oneshot};

    use serde_json::json;

    use super::*;

    /// A handler that records what reaches it and answers with the endpoint it saw.
    struct Recorder {
        handled: Mutex<Vec<String>>,
        finished: mpsc::UnboundedSender<(String, Value)>,
    }

    impl Recorder {
        fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<(String, Value)>) {
            let (finished, outcomes) = mpsc::unbounded_channel();
            let recorder = Self {
                handled: Mutex::new(Vec::new()),
                finished,
            };
            (Arc::new(recorder), outcomes)
        }

        fn handled(&self) -> Vec<String> {
            self.handled.lock().map(|h| h.clone()).unwrap_or_default()
        }
    }

    impl Handler for Recorder {
        fn host_id(&self) -> &str {
            "h1"
        }

        async fn handle(&self, request: Request) -> Result<Value, ApiError> {
            let seen = match &request {
                Request::List => "component.list".to_owned(),
                Request::Publish(event) => format!("event.publish {}", event.ty),
                Request::Remove(request) => format!("component.remove {}", request.name),
                Request::RunStart(request) => format!("run.start {}", request.script),
                other => format!("{other:?}"),
            };
            if let Ok(mut handled) = self.handled.lock() {
                handled.push(seen.clone());
            }
            Ok(json!({ "handled": seen }))
        }

        async fn cast_finished(&self, finished: RequestFinished<Value, ApiError>) {
            let outcome = serde_json::to_value(&finished).unwrap();
            let _ = self.finished.send((finished.request_id, outcome));
        }
    }

    async fn call(
        handler: &Arc<Recorder>,
        role: Role,
        name: &str,
        body: &str,
    ) -> Result<Value, ApiError> {
        let body = bytes::Bytes::from(body.to_owned());
        route(handler.clone(), role, name, body, ()).await
    }

    #[tokio::test]
    async fn a_request_of_each_role_reaches_its_handler_and_its_reply_comes_back() {
        let (handler, _) = Recorder::new();
        let event = r#"{"event":{"specversion":"1.0","id":"1","source":"/s","type":"vm.x"}}"#;
        let run = r#"{"script":"flash","selector":"d1","device":"d1","args":[],
            "timeout_ms":1000,"queue_timeout_ms":1000}"#;
        let listed = call(&handler, Role::Viewer, endpoint::LIST, "{}").await;
        let published = call(&handler, Role::Publisher, endpoint::PUBLISH, event).await;
        let removed = call(
            &handler,
            Role::Operator,
            endpoint::REMOVE,
            r#"{"name":"a"}"#,
        )
        .await;
        let started = call(&handler, Role::Operator, endpoint::RUN_START, run).await;
        assert_eq!(listed, Ok(json!({ "handled": "component.list" })));
        assert_eq!(published, Ok(json!({ "handled": "event.publish vm.x" })));
        assert_eq!(removed, Ok(json!({ "handled": "component.remove a" })));
        assert_eq!(started, Ok(json!({ "handled": "run.start flash" })));
        assert_eq!(handler.handled().len(), 4);
    }

    #[tokio::test]
    async fn an_endpoint_of_another_role_is_refused_before_any_handler() {
        let (handler, _) = Recorder::new();
        for (role, name) in [
            (Role::Viewer, endpoint::REMOVE),
            (Role::Publisher, endpoint::LIST),
            (Role::Operator, endpoint::PUBLISH),
            (Role::Operator, endpoint::LIST),
        ] {
            let error = call(&handler, role, name, r#"{"name":"a"}"#)
                .await
                .unwrap_err();
            assert_eq!(error.kind, ApiErrorKind::PermissionDenied, "{role} {name}");
            assert!(error.message.contains(name), "{}", error.message);
        }
        let error = call(&handler, Role::Operator, "component.destroy", "{}")
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ApiErrorKind::NotFound, "no endpoint `component.destroy`")
        );
        assert!(handler.handled().is_empty());
    }

    #[tokio::test]
    async fn a_bad_body_is_refused_before_any_handler() {
        let (handler, _) = Recorder::new();
        let error = call(
            &handler,
            Role::Operator,
            endpoint::REMOVE,
            r#"{"name":"../x"}"#,
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind, ApiErrorKind::BadRequest);
        assert!(handler.handled().is_empty());
    }

    #[tokio::test]
    async fn a_query_cannot_be_cast() {
        let (handler, _) = Recorder::new();
        let error = call(&handler, Role::Viewer, endpoint::LIST, r#"{"cast":true}"#)
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.message.as_str()),
            (
                ApiErrorKind::BadRequest,
                "`component.list` is a query; it can't be sent as a cast"
            )
        );
        assert!(handler.handled().is_empty());
    }

    #[tokio::test]
    async fn a_call_frees_its_slot_when_its_result_is_ready() {
        let (handler, _) = Recorder::new();
        let (slot, mut freed) = oneshot::channel::<()>();
        let body = bytes::Bytes::from_static(b"{}");
        route(handler.clone(), Role::Viewer, endpoint::LIST, body, slot)
            .await
            .unwrap();
        assert_eq!(freed.try_recv(), Err(oneshot::error::TryRecvError::Closed));
    }

    #[tokio::test]
    async fn a_cast_is_accepted_at_once_and_reports_its_outcome_before_freeing_its_slot() {
        let (handler, mut outcomes) = Recorder::new();
        let (slot, freed) = oneshot::channel::<()>();
        let body = bytes::Bytes::from_static(br#"{"name":"a","cast":true}"#);
        let accepted = route(
            handler.clone(),
            Role::Operator,
            endpoint::REMOVE,
            body,
            slot,
        )
        .await
        .unwrap();
        assert_eq!(accepted["accepted"], true);
        let request_id = accepted["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(request_id.starts_with("h1-"), "{request_id}");

        let freed = tokio::time::timeout(std::time::Duration::from_secs(10), freed).await;
        assert!(
            matches!(freed, Ok(Err(_))),
            "the slot is dropped, never used"
        );
        let (id, outcome) = outcomes
            .try_recv()
            .expect("the outcome came before the slot was freed");
        assert_eq!(id, request_id);
        assert_eq!(
            outcome,
            json!({
                "request_id": request_id,
                "endpoint": "component.remove",
                "ok": true,
                "result": { "handled": "component.remove a" },
            })
        );
    }

    #[tokio::test]
    async fn a_cast_that_fails_reports_its_error_in_its_outcome() {
        let (handler, mut outcomes) = Recorder::new();
        let body = r#"{"name":"../x","cast":true}"#;
        let accepted = call(&handler, Role::Operator, endpoint::REMOVE, body).await;
        assert!(accepted.is_ok(), "{accepted:?}");
        let (_, outcome) = outcomes.recv().await.unwrap();
        assert_eq!(outcome["ok"], false);
        assert_eq!(outcome["error"]["kind"], "bad-request");
        assert!(handler.handled().is_empty());
    }
}
