//! The control API's component endpoints (`component.*`): staging bytes, uploading (checked
//! with the one policy check and everything else that needs no compile, then recorded;
//! every host compiles it in the background), removing, rolling back and configuring.

use super::ControlApi;
use crate::api::{
    ApiError, ApiErrorKind, ConfigureReply, ConfigureRequest, NameRequest, StageReply,
    StageRequest, UploadReply, UploadRequest,
};
use crate::bus::ack_wait_for;
use crate::bus::{ComponentManifest, ManifestDraft};
use crate::component_config::ComponentConfig;
use crate::daemon::components::spec_of;
use crate::daemon::host_events::{ComponentAdded, ComponentRemoved, HostEvent};
use crate::sandbox::{ComponentShape, Digest, World};

impl ControlApi {
    /// The current manifest of `name`, or a not-found error saying to upload it.
    pub(super) async fn uploaded(&self, name: &str) -> Result<ComponentManifest, ApiError> {
        self.store.manifest(name).await?.ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::NotFound,
                format!("no component named `{name}`; upload it first with `sandbus upload`"),
            )
        })
    }

    /// `component.stage`: keeps one part of a component's bytes for its upload.
    pub(super) async fn stage(&self, request: StageRequest) -> Result<StageReply, ApiError> {
        use base64::Engine as _;
        let max_size = self.sandbox.config().max_component_size;
        if request.size > max_size {
            return Err(ApiError::bad_request(format!(
                "the component is {} bytes, over this host's limit of {max_size} bytes",
                request.size
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(request.data.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("the part's data is not base64: {e}")))?;
        let max_part = self.uploads.max_part();
        if bytes.len() > max_part {
            return Err(ApiError::bad_request(format!(
                "the part is {} bytes; a part is at most {max_part} bytes on this server",
                bytes.len()
            )));
        }
        let digest = Digest::from_hex(&request.digest);
        self.uploads
            .stage(&digest, request.parts, request.part, bytes)
            .await?;
        Ok(StageReply {
            digest: digest.as_str().to_owned(),
            part: request.part,
        })
    }

    /// `component.upload`: the bytes come from the component store or, staged part by part,
    /// are checked against the digest and stored; then the upload is checked and recorded.
    /// A refused upload changes nothing: bytes it stored are deleted again.
    pub(super) async fn upload(&self, request: UploadRequest) -> Result<UploadReply, ApiError> {
        let digest = Digest::from_hex(&request.digest);
        let fetched = self.upload_bytes(&digest).await;
        // Staged parts have served their purpose either way (or are unusable).
        if let Err(e) = self.uploads.drop_staged(&digest).await {
            tracing::warn!(%digest, error = %e, "could not drop the staged parts");
        }
        let (bytes, added) = fetched?;
        let result = self.upload_checked(&request, bytes).await;
        if result.is_err() {
            // Forget the bytes if this upload is what put them in the store (and nothing
            // uses them).
            self.forget(&request.digest, added).await;
        }
        result
    }

    /// The bytes of `digest`, and whether this call put them in the component store.
    async fn upload_bytes(&self, digest: &Digest) -> Result<(Vec<u8>, bool), ApiError> {
        use crate::bus::BusErrorKind;
        let max = self.sandbox.config().max_component_size;
        match self.store.bytes(digest.as_str(), max).await {
            Ok(bytes) => Ok((bytes, false)),
            Err(e) if e.kind == BusErrorKind::NotFound => {
                let staged = self
                    .uploads
                    .assemble(digest, max)
                    .await
                    .map_err(|e| match e.kind {
                        BusErrorKind::NotFound | BusErrorKind::Corrupt => {
                            ApiError::bad_request(e.message)
                        }
                        _ => e.into(),
                    })?
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "no component bytes with digest {digest} are stored or staged; \
                             stage them with `component.stage` first (`sandbus upload` does)"
                        ))
                    })?;
                let (_, added) = self.store.put_bytes(&staged).await?;
                Ok((staged, added))
            }
            Err(e) if e.kind == BusErrorKind::Corrupt => Err(ApiError::bad_request(e.message)),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks an upload without compiling it and records it. What is bad input is refused
    /// here, before anything is recorded: not a component, the wrong world, imports this
    /// host does not provide, invalid code, grants or limits the policy or this host's
    /// ceilings refuse. Compiling (seconds for a large component) is left to every host's
    /// manifest watch, so the reply comes at once; each host reports the compile as
    /// compiling, ready or failed in its presence entry (`sandbus ls`, `upload --wait`).
    async fn upload_checked(
        &self,
        request: &UploadRequest,
        bytes: Vec<u8>,
    ) -> Result<UploadReply, ApiError> {
        let world = ComponentShape::read(&bytes)
            .and_then(|shape| shape.check(request.world))
            .map_err(|e| ApiError::bad_request(e.message))?;
        let current = self.store.manifest(&request.name).await?;
        // Values not given are the current version's: a new build keeps its configuration.
        let config = match &request.config {
            Some(values) => ComponentConfig::from_map(values.clone())
                .map_err(|e| ApiError::bad_request(e.message))?,
            None => current
                .as_ref()
                .map(|c| c.config.clone())
                .unwrap_or_default(),
        };
        let candidate = ComponentManifest {
            name: request.name.clone(),
            version: 0,
            digest: Digest::of(&bytes).as_str().to_owned(),
            size: bytes.len() as u64,
            world,
            grants: request.grants.clone(),
            kv_read: request.kv_read.clone(),
            limits: request.limits.clone(),
            config,
            recorded_at: String::new(),
            restored_from: None,
            configured_from: None,
        };
        let spec = spec_of(&candidate).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let timeout = spec.limits.timeout;
        let sandbox = self.sandbox.clone();
        // Validating the code reads every function body: off the async threads.
        tokio::task::spawn_blocking(move || {
            sandbox.check(&spec, &bytes)?;
            ComponentShape::validate(&bytes)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                ApiErrorKind::Internal,
                format!("the upload's check failed: {e}"),
            )
        })?
        .map_err(|e| ApiError::bad_request(e.message))?;
        let subscription = self.subscriptions.get(&request.name).await?;
        if subscription.is_some() && world != World::Listener {
            return Err(ApiError::bad_request(format!(
                "`{0}` is subscribed as a listener and this component is a {world}; \
                 `sandbus unsubscribe {0}` first or upload it under another name",
                request.name
            )));
        }
        if world != World::Hook {
            let points = self.hooks.points.points_of(&request.name).await?;
            if !points.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "`{0}` is registered as a hook at {1} and this component is a {world}; \
                     `sandbus hook rm {0} --point POINT` first or upload it under another name",
                    request.name,
                    points.join(", ")
                )));
            }
        }
        // The consumer must wait for acks at least as long as the new deadline before any
        // host runs the new version (and again on a repeat, in case that step failed).
        if let Some(subscription) = &subscription {
            self.subscriptions
                .put(subscription, ack_wait_for(timeout))
                .await?;
        }
        if let Some(current) = current
            && current.digest == candidate.digest
            && current.grants == candidate.grants
            && current.kv_read == candidate.kv_read
            && current.limits == candidate.limits
            && current.config == candidate.config
            && current.world == world
        {
            return Ok(UploadReply {
                manifest: current,
                unchanged: true,
            });
        }
        let manifest = self
            .store
            .record(ManifestDraft {
                name: candidate.name,
                digest: Digest::from_hex(&candidate.digest),
                size: candidate.size,
                world,
                grants: candidate.grants,
                kv_read: candidate.kv_read,
                limits: candidate.limits,
                config: candidate.config,
            })
            .await?;
        self.component_added(&manifest).await;
        Ok(UploadReply {
            manifest,
            unchanged: false,
        })
    }

    /// `component.remove`: refused while the component is subscribed or registered as a hook.
    pub(super) async fn remove(&self, request: NameRequest) -> Result<ComponentManifest, ApiError> {
        if self.subscriptions.get(&request.name).await?.is_some() {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "`{0}` is subscribed; `sandbus unsubscribe {0}` first (its pending events are then dropped)",
                    request.name
                ),
            ));
        }
        let points = self.hooks.points.points_of(&request.name).await?;
        if !points.is_empty() {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "`{0}` is registered as a hook at {1}; `sandbus hook rm {0} --point POINT` \
                     first",
                    request.name,
                    points.join(", ")
                ),
            ));
        }
        let manifest = self.store.remove(&request.name).await?;
        self.component_event(
            ComponentRemoved {
                manifest: manifest.clone(),
            },
            &manifest,
        )
        .await;
        Ok(manifest)
    }

    /// `component.rollback`: back to the previous content, unless that no longer fits how the
    /// component is used (subscribed, registered as a hook) or today's rules.
    pub(super) async fn rollback(
        &self,
        request: NameRequest,
    ) -> Result<ComponentManifest, ApiError> {
        let subscription = self.subscriptions.get(&request.name).await?;
        let points = self.hooks.points.points_of(&request.name).await?;
        let history = self.store.history(&request.name).await?;
        let current = self.store.manifest(&request.name).await?;
        let target = current.and_then(|c| c.rollback_target(&history).cloned());
        // A version recorded before today's rules (a grant now reserved) is not brought back:
        // every daemon would refuse to load it.
        if let Some(target) = &target {
            spec_of(target).map_err(|e| {
                ApiError::bad_request(format!(
                    "version {} of `{}` cannot be restored: {e}; upload a new version instead",
                    target.version, request.name
                ))
            })?;
        }
        if (subscription.is_some() || !points.is_empty())
            && let Some(target) = &target
        {
            if subscription.is_some() && target.world != World::Listener {
                return Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    format!(
                        "the previous version of `{}` is a {}, and it is subscribed as a listener",
                        request.name, target.world
                    ),
                ));
            }
            if !points.is_empty() && target.world != World::Hook {
                return Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    format!(
                        "the previous version of `{}` is a {}, and it is registered as a hook \
                         at {}",
                        request.name,
                        target.world,
                        points.join(", ")
                    ),
                ));
            }
            if let Some(subscription) = &subscription {
                let limits = target.resolved_limits().map_err(ApiError::bad_request)?;
                self.subscriptions
                    .put(subscription, ack_wait_for(limits.timeout))
                    .await?;
            }
        }
        let manifest = self.store.rollback(&request.name).await?;
        self.component_added(&manifest).await;
        Ok(manifest)
    }

    /// `component.configure`: the component's `wasi:config/store` values with `set` and
    /// `unset` applied, recorded as a new version of the same bytes and policy (every host
    /// reloads it without compiling; calls already running keep the values they started
    /// with). A change that leaves the values as they are records nothing, so an empty
    /// request reads them.
    pub(super) async fn configure(
        &self,
        request: ConfigureRequest,
    ) -> Result<ConfigureReply, ApiError> {
        let current = self.uploaded(&request.name).await?;
        let config = current
            .config
            .changed(&request.set, &request.unset)
            .map_err(|e| ApiError::bad_request(e.message))?;
        if config == current.config {
            return Ok(ConfigureReply {
                manifest: current,
                unchanged: true,
            });
        }
        let manifest = self
            .store
            .configure(&request.name, current.version, config)
            .await?;
        self.component_added(&manifest).await;
        Ok(ConfigureReply {
            manifest,
            unchanged: false,
        })
    }

    /// Emits `sandbus.component.added` for `manifest`, a version just recorded (an upload,
    /// a rollback or a configure).
    async fn component_added(&self, manifest: &ComponentManifest) {
        self.component_event(
            ComponentAdded {
                manifest: manifest.clone(),
            },
            manifest,
        )
        .await;
    }

    /// Emits `event` (a version of `manifest` added or removed) with an id made of the
    /// component and its version, so every daemon reporting it reports one fact.
    async fn component_event<E: HostEvent>(&self, event: E, manifest: &ComponentManifest) {
        let verb = if E::TYPE == <ComponentAdded>::TYPE {
            "added"
        } else {
            "removed"
        };
        self.host_events
            .emit_or_log(
                &event,
                format!("component-{verb}/{}/{}", manifest.name, manifest.version),
                Some(manifest.name.clone()),
            )
            .await;
    }

    /// Forgets the bytes of a refused upload when `bytes_added` (the client put them in the
    /// store for this upload), unless something uses them. (An upload compiles nothing, so
    /// there is no compiled code to forget.)
    async fn forget(&self, digest: &str, bytes_added: bool) {
        let loaded = self
            .components
            .names()
            .iter()
            .filter_map(|n| self.components.get(n))
            .any(|c| c.manifest.digest == digest);
        if loaded {
            return;
        }
        if bytes_added && let Err(e) = self.store.forget_bytes_if_unused(digest).await {
            tracing::warn!(%digest, error = %e, "could not delete the refused component's bytes");
        }
    }
}
