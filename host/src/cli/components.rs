//! `sandbus upload`, `ls`, `rm` and `rollback` (`configure` is in its own file): the components a daemon runs. An upload is
//! checked here first (the daemon's own checks), so a file that is plainly not a component,
//! or a policy the daemon would refuse, never goes on the bus. The daemon records it without
//! compiling it; every host compiles it in the background, and `ls` (and `upload --wait`)
//! read where it stands on each live host from the hosts' presence ([`Readiness`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use sandbus::api::endpoint::Call;
use sandbus::api::{
    ApiError, ApiErrorKind, Empty, ListedComponent, NameRequest, Readiness, StageReply,
    StageRequest, UploadReply, UploadRequest, endpoint,
};
use sandbus::bus::{ComponentManifest, HostInfo};
use sandbus::component_config::ComponentConfig;
use sandbus::grant::{ComponentPolicy, ManifestGrants, PolicyError};
use sandbus::sandbox::{ComponentShape, Digest, World};

use super::connect::{Client, ClientArgs, with_client};
use super::output::{self, EXIT_OK, outln, print_json_or, printable};

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
    /// A value the component reads through wasi:config/store, as KEY=VALUE, repeatable:
    /// these replace the current version's values (without any, they are kept). Change them
    /// later without uploading again with `sandbus configure`. Not for secrets: operators
    /// and event readers see them.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Return at once; the result comes as a sandbus.request.finished event.
    #[arg(long, conflicts_with = "wait")]
    cast: bool,
    /// Wait until every live host has compiled the new version and runs it; exit 1 naming
    /// the host and the reason if one cannot load it. Without it, upload returns once the
    /// component is recorded and hosts compile it in the background (`sandbus ls`).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration, requires = "wait")]
    wait_timeout: Duration,
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
        config,
        cast,
        wait,
        wait_timeout,
        client,
    } = args;
    let config_settings_empty = config.is_empty();
    let config = match ComponentConfig::from_settings(&config) {
        Ok(config) => config,
        Err(e) => {
            return Ok(output::fail(
                &ApiError::bad_request(format!("--config: {e}")),
                client.json,
            ));
        }
    };
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
            config: (!config_settings_empty).then(|| config.as_map().clone()),
            cast,
        };
        if cast {
            return c.cast::<endpoint::Upload>(&request).await;
        }
        let reply: UploadReply = c.call::<endpoint::Upload>(&request).await?;
        if wait {
            let readiness = wait_until_ready(&c, &reply.manifest, wait_timeout).await?;
            let waited = WaitedUpload {
                reply: &reply,
                hosts: &readiness,
            };
            print_json_or(c.json, &waited, |waited| {
                print_upload(waited.reply);
                outln!(
                    "ready on every live host: {}",
                    waited.hosts.ready.join(", ")
                );
            });
            return Ok(EXIT_OK);
        }
        print_json_or(c.json, &reply, print_upload);
        Ok(EXIT_OK)
    })
    .await)
}

/// What `upload --wait --json` prints: the upload's reply and where it stands on each host.
#[derive(serde::Serialize)]
struct WaitedUpload<'a> {
    #[serde(flatten)]
    reply: &'a UploadReply,
    hosts: &'a Readiness,
}

fn print_upload(reply: &UploadReply) {
    if reply.unchanged {
        outln!(
            "{} is already version {} with these bytes and settings; nothing changed",
            reply.manifest.name,
            reply.manifest.version
        );
    } else {
        outln!(
            "uploaded {} version {} ({}, {} bytes, sha256:{}); hosts compile it now \
             (`sandbus ls`)",
            reply.manifest.name,
            reply.manifest.version,
            reply.manifest.world,
            reply.manifest.size,
            reply.manifest.digest
        );
    }
}

/// How often `upload --wait` asks where the new version stands.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// Waits until every live host runs `manifest`'s version (hosts report a finished compile
/// at once). A host that cannot load it ends the wait with its reason; so does `timeout`.
async fn wait_until_ready(
    c: &Client,
    manifest: &ComponentManifest,
    timeout: Duration,
) -> Result<Readiness, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let readiness = match c.call::<endpoint::Hosts>(&Empty {}).await {
            Ok(hosts) => Readiness::of(&manifest.name, manifest.version, &hosts),
            // A busy daemon is asked again.
            Err(e) if e.kind == ApiErrorKind::Unavailable => Readiness::default(),
            Err(e) => return Err(e),
        };
        if readiness.all_ready() {
            return Ok(readiness);
        }
        if !readiness.failed.is_empty() {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "{} version {} is recorded, but not every host can run it: {}; fix it and \
                     upload again, or `sandbus rollback {}`",
                    manifest.name,
                    manifest.version,
                    readiness.failures_text().join("; "),
                    manifest.name
                ),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "{} version {} is recorded, but after {} it is {} (`sandbus ls` follows it)",
                    manifest.name,
                    manifest.version,
                    humantime::format_duration(timeout),
                    readiness.summary()
                ),
            ));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
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

/// `sandbus ls`: the current versions, and where each stands on the live hosts.
pub async fn list(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let manifests: Vec<ComponentManifest> = c.call::<endpoint::List>(&Empty {}).await?;
        let hosts: Vec<HostInfo> = c.call::<endpoint::Hosts>(&Empty {}).await?;
        let listed: Vec<ListedComponent> = manifests
            .into_iter()
            .map(|manifest| ListedComponent {
                hosts: Readiness::of(&manifest.name, manifest.version, &hosts),
                manifest,
            })
            .collect();
        print_json_or(c.json, &listed, |listed| {
            if listed.is_empty() {
                outln!("no components; `sandbus upload FILE --name NAME` adds one");
            }
            for l in listed {
                print_manifest(&l.manifest, &l.hosts);
            }
        });
        Ok(EXIT_OK)
    })
    .await
}

fn print_manifest(m: &ComponentManifest, hosts: &Readiness) {
    let restored = match (m.restored_from, m.configured_from) {
        (Some(v), _) => format!(" (restores v{v})"),
        (None, Some(v)) => format!(" (v{v} configured)"),
        (None, None) => String::new(),
    };
    outln!(
        "{:<24} v{:<4} {:<9} {:>9} B  sha256:{}…  {}{}  hosts: {}",
        m.name,
        m.version,
        m.world.as_str(),
        m.size,
        &m.digest[..m.digest.len().min(12)],
        m.recorded_at,
        restored,
        hosts.summary()
    );
    for failure in hosts.failures_text() {
        outln!("{:<24} {}", "", printable(&failure));
    }
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
    if !m.config.is_empty() {
        let values: Vec<String> = m.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!("{:<24} config: {}", "", printable(&values.join(", ")));
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
