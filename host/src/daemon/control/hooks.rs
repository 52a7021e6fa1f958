//! The control API's hook endpoints that change extension points (`hook.add`, `hook.remove`,
//! `hook.policy`). Listing them and asking them (`hook.list`, `hook.call`) are the
//! [`crate::daemon::HookDispatcher`]'s alone.

use super::ControlApi;
use crate::api::{ApiError, HookPolicyRequest, HookRequest};
use crate::bus::{BusError, BusErrorKind, HookPoint};
use crate::sandbox::World;

impl ControlApi {
    /// `hook.add`: only an uploaded component of world `hook`.
    pub(super) async fn hook_add(&self, request: HookRequest) -> Result<HookPoint, ApiError> {
        let manifest = self.uploaded(&request.name).await?;
        if manifest.world != World::Hook {
            return Err(ApiError::bad_request(format!(
                "`{}` is a {}, not a hook; only components of world `hook` can be registered at \
                 an extension point",
                request.name, manifest.world
            )));
        }
        let name = request.name.clone();
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                point.hooks.push(name.clone());
                Ok(())
            })
            .await?)
    }

    /// `hook.remove`: not found when the hook is not registered at the point.
    pub(super) async fn hook_remove(&self, request: HookRequest) -> Result<HookPoint, ApiError> {
        let (name, at) = (request.name.clone(), request.point.clone());
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                let before = point.hooks.len();
                point.hooks.retain(|h| *h != name);
                if point.hooks.len() == before {
                    return Err(BusError::new(
                        BusErrorKind::NotFound,
                        format!(
                            "`{name}` is not registered at `{at}`; `sandbus hook ls` lists them"
                        ),
                    ));
                }
                Ok(())
            })
            .await?)
    }

    /// `hook.policy`: what the request gives changes, the rest stays.
    pub(super) async fn hook_policy(
        &self,
        request: HookPolicyRequest,
    ) -> Result<HookPoint, ApiError> {
        Ok(self
            .hooks
            .points
            .update(&request.point, |point| {
                if let Some(policy) = request.policy {
                    point.policy = policy;
                }
                if let Some(ms) = request.deadline_ms {
                    point.deadline_ms = ms;
                }
                Ok(())
            })
            .await?)
    }
}
