//! The control API's reads of stored data for people who may not read JetStream themselves:
//! pages of events (`event.list`) and of a run's log (`run.log`), and an operator's access to
//! components' key-value spaces (`kv.*`). The daemon reads with its own rights and answers
//! with what the request's role may see.

use std::time::Duration;

use super::ControlApi;
use super::lab::no_run;
use crate::api::{
    ApiError, ApiErrorKind, EventListRequest, KvDeleteReply, KvEntry, KvKeyRequest, KvListReply,
    KvListRequest, KvSetRequest, MAX_PAGE, MessagePage, RunLogRequest,
};
use crate::bus::{names, read_page, validate_event_pattern};
use crate::imports::kv::{KvQuota, KvState, KvStoreError};

/// Entries of a `kv.list` page (each also costs a read of its value).
const KV_PAGE: usize = 200;

/// Bytes of values one `kv.list` page carries at most, below the server's max payload.
const KV_PAGE_BYTES: usize = 256 << 10;

fn unavailable(e: KvStoreError) -> ApiError {
    ApiError::new(ApiErrorKind::Unavailable, e.to_string())
}

impl ControlApi {
    /// `event.list`: stored events matching the pattern, after a sequence.
    pub(super) async fn event_page(
        &self,
        request: EventListRequest,
    ) -> Result<MessagePage, ApiError> {
        let filter = validate_event_pattern(request.pattern.as_deref().unwrap_or(">"))
            .map_err(ApiError::bad_request)?;
        Ok(read_page(
            self.events.context(),
            self.events.name(),
            filter,
            request.after,
            request.max.unwrap_or(MAX_PAGE),
            Duration::from_millis(request.wait_ms),
        )
        .await?)
    }

    /// `run.log`: a run's log lines and report, after a sequence.
    pub(super) async fn run_log_page(
        &self,
        request: RunLogRequest,
    ) -> Result<MessagePage, ApiError> {
        if self.runs.get(&request.run).await?.is_none() {
            return Err(no_run(&request.run));
        }
        Ok(read_page(
            self.events.context(),
            names::RUNS_STREAM,
            names::run_subjects(&request.run),
            request.after,
            MAX_PAGE,
            Duration::from_millis(request.wait_ms),
        )
        .await?)
    }

    /// `kv.get`.
    pub(super) async fn kv_get(&self, request: KvKeyRequest) -> Result<KvEntry, ApiError> {
        let value = self
            .kv
            .get(&request.namespace, &request.key)
            .await
            .map_err(unavailable)?;
        Ok(KvEntry::new(request.key, value))
    }

    /// `kv.set`: an operator's write, through the same checks as the component's own writes
    /// (its value size and its quota; a component not uploaded gets the default limits).
    pub(super) async fn kv_set(&self, request: KvSetRequest) -> Result<KvEntry, ApiError> {
        use crate::bindings::kv::{Host as _, KvError};
        let limits = match self.store.manifest(&request.namespace).await? {
            Some(manifest) => manifest.resolved_limits().map_err(ApiError::bad_request)?,
            None => crate::sandbox::Limits::default(),
        };
        let mut space = KvState {
            store: self.kv.clone(),
            namespace: request.namespace.as_str().into(),
            max_value: limits.max_payload,
            quota: KvQuota {
                bytes: limits.kv_bytes,
                keys: limits.kv_keys,
            },
        };
        let value = request.value.into_bytes();
        let written = space
            .set(request.key.clone(), value.clone())
            .await
            .map_err(|e| ApiError::new(ApiErrorKind::Internal, format!("{e:#}")))?;
        match written {
            Ok(()) => Ok(KvEntry::new(request.key, Some(value))),
            Err(KvError::Unavailable(why)) if why.starts_with("quota exceeded") => {
                Err(ApiError::new(ApiErrorKind::Conflict, why))
            }
            Err(KvError::Unavailable(why)) => Err(ApiError::new(ApiErrorKind::Unavailable, why)),
            Err(e) => Err(ApiError::bad_request(format!(
                "`{}` of `{}` cannot take this value: {e:?}",
                request.key, request.namespace
            ))),
        }
    }

    /// `kv.delete`.
    pub(super) async fn kv_delete(&self, request: KvKeyRequest) -> Result<KvDeleteReply, ApiError> {
        let removed = self
            .kv
            .delete(&request.namespace, &request.key)
            .await
            .map_err(unavailable)?;
        Ok(KvDeleteReply {
            key: request.key,
            removed,
        })
    }

    /// `kv.list`: a page of keys and values, in key order.
    pub(super) async fn kv_list(&self, request: KvListRequest) -> Result<KvListReply, ApiError> {
        let keys = self
            .kv
            .list_keys(&request.namespace, &request.prefix)
            .await
            .map_err(unavailable)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for key in keys
            .into_iter()
            .filter(|k| request.after.as_ref().is_none_or(|after| k > after))
        {
            if entries.len() >= KV_PAGE {
                more = true;
                break;
            }
            let value = self
                .kv
                .get(&request.namespace, &key)
                .await
                .map_err(unavailable)?;
            let size = key.len() + value.as_ref().map_or(0, Vec::len);
            if !entries.is_empty() && bytes + size > KV_PAGE_BYTES {
                // This key starts the next page.
                more = true;
                break;
            }
            bytes += size;
            entries.push(KvEntry::new(key, value));
        }
        Ok(KvListReply { entries, more })
    }
}
