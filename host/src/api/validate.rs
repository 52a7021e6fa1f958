//! [`Validate`]: the checks every request body passes before the daemon acts on it, the same
//! ones the CLI runs before it sends (one implementation, used on both sides).

use std::time::Duration;

use super::ApiError;
use super::wire::*;
use crate::component_config::ComponentConfig;
use crate::event::CanonicalEvent;

/// A request body the daemon checks before acting on it, with the same rules the CLI
/// applies before sending it: the API trusts nothing a client sends, whether or not the
/// client is our CLI. A failure is a [`super::ApiErrorKind::BadRequest`] that says what to fix,
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
        digest(&self.digest)?;
        if let Some(config) = &self.config {
            ComponentConfig::from_map(config.clone())
                .map_err(|e| ApiError::bad_request(e.message))?;
        }
        // The grants and limits are checked with the component's world, once the daemon has
        // read the bytes (`ComponentPolicy::check`).
        Ok(())
    }
}

impl Validate for ConfigureRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.name)?;
        // Each key and value on its own; the bounds of the whole are checked against the
        // values it changes, by the daemon.
        ComponentConfig::from_map(self.set.clone())
            .map_err(|e| ApiError::bad_request(e.message))?;
        for key in &self.unset {
            crate::component_config::check_key(key)
                .map_err(|e| ApiError::bad_request(e.message))?;
        }
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
        outside_event(self.event.get().as_bytes()).map(drop)
    }
}

/// The one check of an event published from outside the daemons, run by the daemon's
/// `event.publish` endpoint and by `sandbus publish` (which publishes straight onto the
/// events stream) alike: a valid canonical event ([`CanonicalEvent::from_json`]) that claims
/// neither a host event's type nor a daemon's source ([`crate::subject::host_claim`]).
///
/// The event comes back at depth 0: an event published from outside starts a chain, and its
/// depth is the host's to count, not the publisher's to claim (a deep one would silence the
/// daemon's events about it).
pub fn outside_event(json: &[u8]) -> Result<CanonicalEvent, ApiError> {
    let mut event = CanonicalEvent::from_json(json)
        .map_err(|e| ApiError::bad_request(format!("the event is not valid: {e}")).caused_by(e))?;
    if let Some(why) = crate::subject::host_claim(&event.ty, &event.source) {
        return Err(ApiError::bad_request(why));
    }
    event.depth = 0;
    Ok(event)
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
                    .caused_by(e)
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

fn digest(digest: &str) -> Result<(), ApiError> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a sha256 digest (64 hex digits)",
            crate::text::echo(digest)
        )));
    }
    Ok(())
}

impl Validate for StageRequest {
    fn validate(&self) -> Result<(), ApiError> {
        digest(&self.digest)?;
        if self.size == 0 || self.parts == 0 || self.parts > MAX_STAGE_PARTS {
            return Err(ApiError::bad_request(format!(
                "a component is 1 byte or more, in 1 to {MAX_STAGE_PARTS} parts"
            )));
        }
        if self.part >= self.parts {
            return Err(ApiError::bad_request(format!(
                "part {} of {} parts (parts count from 0)",
                self.part, self.parts
            )));
        }
        Ok(())
    }
}

fn page_wait(wait_ms: u64) -> Result<(), ApiError> {
    if wait_ms > MAX_PAGE_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms is at most {MAX_PAGE_WAIT_MS}"
        )));
    }
    Ok(())
}

impl Validate for EventListRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(pattern) = &self.pattern {
            crate::bus::validate_event_pattern(pattern).map_err(ApiError::bad_request)?;
        }
        if self.max.is_some_and(|max| max > MAX_PAGE) {
            return Err(ApiError::bad_request(format!("max is at most {MAX_PAGE}")));
        }
        page_wait(self.wait_ms)
    }
}

impl Validate for RunLogRequest {
    fn validate(&self) -> Result<(), ApiError> {
        crate::bus::validate_run_id(&self.run).map_err(ApiError::bad_request)?;
        page_wait(self.wait_ms)
    }
}

fn kv_key(namespace: &str, key: &str) -> Result<(), ApiError> {
    component_name(namespace)?;
    crate::imports::kv::validate_key(key).map_err(ApiError::bad_request)
}

impl Validate for KvKeyRequest {
    fn validate(&self) -> Result<(), ApiError> {
        kv_key(&self.namespace, &self.key)
    }
}

impl Validate for KvSetRequest {
    fn validate(&self) -> Result<(), ApiError> {
        kv_key(&self.namespace, &self.key)
    }
}

impl Validate for KvListRequest {
    fn validate(&self) -> Result<(), ApiError> {
        component_name(&self.namespace)?;
        crate::imports::kv::validate_prefix(&self.prefix).map_err(ApiError::bad_request)?;
        if let Some(after) = &self.after {
            crate::imports::kv::validate_key(after).map_err(ApiError::bad_request)?;
        }
        Ok(())
    }
}

impl Validate for Empty {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}
