//! The end of a control request sent as a cast: `sandbus.request.finished`.

use serde::{Deserialize, Serialize};

use crate::{HostEvent, Record};

/// `sandbus.request.finished`: a control request sent as a cast (answered at once with its
/// request id) finished. Its subject is the request id; the data holds either the result
/// (`ok: true`, `result`) or the error (`ok: false`, `error`), never both.
///
/// The result and error types are the daemon's (the endpoint's reply, its API error); a
/// reader that is not the daemon reads them as [`serde_json::Value`]s (the defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFinished<Output = serde_json::Value, Failure = serde_json::Value> {
    /// The id the cast was answered with.
    pub request_id: String,
    /// The endpoint that was called (`component.upload`...).
    pub endpoint: String,
    /// Whether it succeeded: `result` is present if so, `error` if not.
    pub ok: bool,
    /// The endpoint's reply, when it succeeded (absent otherwise). A `null` reply reads back
    /// as `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Output>,
    /// What went wrong, when it failed (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

impl<Output, Failure> RequestFinished<Output, Failure> {
    /// The event for request `request_id` to `endpoint` that ended with `outcome`.
    pub fn new(
        request_id: impl Into<String>,
        endpoint: impl Into<String>,
        outcome: Result<Output, Failure>,
    ) -> Self {
        let (ok, result, error) = match outcome {
            Ok(output) => (true, Some(output), None),
            Err(failure) => (false, None, Some(failure)),
        };
        Self {
            request_id: request_id.into(),
            endpoint: endpoint.into(),
            ok,
            result,
            error,
        }
    }
}

impl<Output: Record, Failure: Record> HostEvent for RequestFinished<Output, Failure> {
    const TYPE: &'static str = "sandbus.request.finished";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::assert_same_json;

    #[test]
    fn a_finished_request_carries_its_result_and_no_error() {
        let (id, name) = ("h1-0a1b2c3d4e5f6a7b", "component.upload");
        let value = json!({ "manifest": { "name": "billing" }, "unchanged": false });
        let event: RequestFinished = RequestFinished::new(id, name, Ok(value.clone()));
        assert_same_json(
            &event,
            json!({ "request_id": id, "endpoint": name, "ok": true, "result": value }),
        );
    }

    #[test]
    fn a_failed_request_carries_its_error_and_no_result() {
        let (id, name) = ("h1-0a1b2c3d4e5f6a7b", "component.upload");
        let e = json!({ "kind": "bad-request", "message": "not a component" });
        let event: RequestFinished = RequestFinished::new(id, name, Err(e.clone()));
        assert_same_json(
            &event,
            json!({ "request_id": id, "endpoint": name, "ok": false, "error": e }),
        );
    }
}
