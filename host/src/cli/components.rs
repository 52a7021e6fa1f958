//! `sandbus upload`, `ls`, `rm` and `rollback`: the components a daemon runs. An upload is
//! checked here first (the daemon's own checks), so a file that is plainly not a component,
//! or a policy the daemon would refuse, never goes on the bus.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use sandbus::api::endpoint::Call;
use sandbus::api::{
    ApiError, Empty, NameRequest, StageReply, StageRequest, UploadReply, UploadRequest, endpoint,
};
use sandbus::bus::ComponentManifest;
use sandbus::grant::{ComponentPolicy, ManifestGrants, PolicyError};
use sandbus::sandbox::{ComponentShape, Digest, World};

use super::connect::{Client, ClientArgs, with_client};
use super::output::{self, EXIT_OK, outln, print_json_or};

/// A component's role, on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldArg {
    Listener,
    Script,
    Hook,
}

impl From<WorldArg> for World {
    fn from(w: WorldArg) -> Self {
        match w {
            WorldArg::Listener => World::Listener,
            WorldArg::Script => World::Script,
            WorldArg::Hook => World::Hook,
        }
    }
}

/// `sandbus upload` arguments.
#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The component file.
    file: PathBuf,
    /// The name to record it under.
    #[arg(long)]
    name: String,
    /// The role it must have (refused otherwise); by default whatever it is.
    #[arg(long, value_enum)]
    world: Option<WorldArg>,
    /// Grant, repeatable: publish=SUBJECT (NATS wildcards allowed) to publish there,
    /// kv-read=COMPONENT to read that component's key-value space.
    #[arg(long = "grant", value_name = "publish=SUBJECT|kv-read=COMPONENT")]
    grants: Vec<String>,
    /// Limit, as NAME=VALUE (memory=64MiB, timeout=2s, ...), repeatable.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Return at once; the result comes as a sandbus.request.finished event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus rm` and `sandbus rollback` arguments.
#[derive(Args, Debug)]
pub struct ComponentNameArgs {
    /// The component.
    name: String,
    /// Return at once; the result comes as an event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus upload FILE --name NAME ...`
pub async fn upload(args: UploadArgs) -> anyhow::Result<u8> {
    let UploadArgs {
        file,
        name,
        world,
        grants,
        limits,
        cast,
        client,
    } = args;
    let world = world.map(World::from);
    let bytes =
        std::fs::read(&file).with_context(|| format!("failed to read {}", file.display()))?;
    // Refuse what is plainly not a component, or a policy the daemon would refuse, before
    // anything goes on the bus: the same checks the daemon runs.
    let shape_world = match ComponentShape::read(&bytes).and_then(|s| s.check(world)) {
        Ok(world) => world,
        Err(e) => {
            return Ok(output::fail(
                &ApiError::bad_request(format!("{}: {}", file.display(), e.message)),
                client.json,
            ));
        }
    };
    let grants = match ManifestGrants::parse(&grants)
        .map_err(PolicyError::from)
        .and_then(|g| {
            ComponentPolicy::check(&name, shape_world, &g.publish, &g.kv_read, &limits).map(|_| g)
        }) {
        Ok(grants) => grants,
        Err(e) => {
            return Ok(output::fail(
                &ApiError::bad_request(e.to_string()),
                client.json,
            ));
        }
    };
    Ok(with_client(&client, |c| async move {
        let digest = stage(&c, &bytes).await?;
        let request = UploadRequest {
            name,
            digest,
            world,
            grants: grants.publish,
            kv_read: grants.kv_read,
            limits,
            cast,
        };
        if cast {
            return c.cast::<endpoint::Upload>(&request).await;
        }
        let reply: UploadReply = c.call::<endpoint::Upload>(&request).await?;
        print_json_or(c.json, &reply, |reply| {
            if reply.unchanged {
                outln!(
                    "{} is already version {} with these bytes and settings; nothing changed",
                    reply.manifest.name,
                    reply.manifest.version
                );
            } else {
                outln!(
                    "uploaded {} version {} ({}, {} bytes, sha256:{})",
                    reply.manifest.name,
                    reply.manifest.version,
                    reply.manifest.world,
                    reply.manifest.size,
                    reply.manifest.digest
                );
            }
        });
        Ok(EXIT_OK)
    })
    .await)
}

/// Stages a component's bytes with a daemon, a part at a time (each part fits in one
/// message whatever the server's max payload); returns their digest.
async fn stage(c: &Client, bytes: &[u8]) -> Result<String, ApiError> {
    use base64::Engine as _;
    let digest = Digest::of(bytes).as_str().to_owned();
    let part_size = c.max_payload().saturating_sub(4096) / 4 * 3;
    let part_size = part_size.max(1024);
    let parts = bytes.len().div_ceil(part_size).max(1);
    let parts = u32::try_from(parts).map_err(|_| {
        ApiError::bad_request("the component is too large to send in parts; is it a component?")
    })?;
    for (part, chunk) in (0u32..).zip(bytes.chunks(part_size)) {
        let request = StageRequest {
            digest: digest.clone(),
            size: bytes.len() as u64,
            part,
            parts,
            data: base64::engine::general_purpose::STANDARD.encode(chunk),
        };
        let _: StageReply = c.call::<endpoint::Stage>(&request).await?;
    }
    Ok(digest)
}

/// `sandbus ls`
pub async fn list(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let manifests: Vec<ComponentManifest> = c.call::<endpoint::List>(&Empty {}).await?;
        print_json_or(c.json, &manifests, |manifests| {
            if manifests.is_empty() {
                outln!("no components; `sandbus upload FILE --name NAME` adds one");
            }
            for m in manifests {
                print_manifest(m);
            }
        });
        Ok(EXIT_OK)
    })
    .await
}

fn print_manifest(m: &ComponentManifest) {
    let restored = m
        .restored_from
        .map(|v| format!(" (restores v{v})"))
        .unwrap_or_default();
    outln!(
        "{:<24} v{:<4} {:<9} {:>9} B  sha256:{}…  {}{}",
        m.name,
        m.version,
        m.world.as_str(),
        m.size,
        &m.digest[..m.digest.len().min(12)],
        m.recorded_at,
        restored
    );
    if !m.grants.is_empty() || !m.kv_read.is_empty() {
        let grants: Vec<String> = m
            .grants
            .iter()
            .map(|g| format!("publish={g}"))
            .chain(m.kv_read.iter().map(|n| format!("kv-read={n}")))
            .collect();
        outln!("{:<24} grants: {}", "", grants.join(", "));
    }
    if !m.limits.is_empty() {
        outln!("{:<24} limits: {}", "", m.limits.join(", "));
    }
}

/// `sandbus rm NAME`
pub async fn remove(args: ComponentNameArgs) -> u8 {
    name_command::<endpoint::Remove>(&args.client, args.request(), |request, _| {
        outln!("removed {}", request.name);
        Ok(())
    })
    .await
}

/// `sandbus rollback NAME`
pub async fn rollback(args: ComponentNameArgs) -> u8 {
    name_command::<endpoint::Rollback>(&args.client, args.request(), |_, m| {
        outln!(
            "{} is now version {}, restoring version {}",
            m.name,
            m.version,
            m.restored_from.unwrap_or(m.version)
        );
        Ok(())
    })
    .await
}

impl ComponentNameArgs {
    fn request(&self) -> NameRequest {
        NameRequest {
            name: self.name.clone(),
            cast: self.cast,
        }
    }
}

/// Sends a request that names a component (`rm`, `rollback`, `unsubscribe`) and prints the
/// reply: as it came with `--json`, else as `text` shows it. A cast prints its acceptance.
pub(super) async fn name_command<E: Call<Request = NameRequest>>(
    args: &ClientArgs,
    request: NameRequest,
    text: impl FnOnce(&NameRequest, E::Reply) -> Result<(), ApiError>,
) -> u8 {
    with_client(args, |c| async move {
        if request.cast {
            return c.cast::<E>(&request).await;
        }
        let reply = c.call::<E>(&request).await?;
        if c.json {
            output::print_json(&reply);
        } else {
            text(&request, reply)?;
        }
        Ok(EXIT_OK)
    })
    .await
}
