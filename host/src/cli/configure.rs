//! `sandbus configure NAME [KEY=VALUE...] [--unset KEY...]`: changes the values a component
//! reads through `wasi:config/store` without uploading its bytes again. The change is a new
//! version of the component (same bytes, grants and limits), so `sandbus rollback` undoes
//! it; with no change given, it prints the values in force.

use clap::Args;
use sandbus::api::{ApiError, ConfigureReply, ConfigureRequest, Validate as _, endpoint};
use sandbus::component_config::{ComponentConfig, parse_setting};

use super::connect::{ClientArgs, with_client};
use super::output::{self, EXIT_OK, outln, print_json_or, printable};

/// `sandbus configure` arguments.
#[derive(Args, Debug)]
pub struct ConfigureArgs {
    /// The component.
    name: String,
    /// Values to set, KEY=VALUE (an empty value is KEY=).
    #[arg(value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A key to remove, repeatable; it must be set.
    #[arg(long = "unset", value_name = "KEY")]
    unset: Vec<String>,
    /// Return at once; the result comes as a sandbus.request.finished event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `sandbus configure`; its exit code.
pub async fn configure(args: ConfigureArgs) -> u8 {
    let request = match request(&args) {
        Ok(request) => request,
        Err(e) => return output::fail(&e, args.client.json),
    };
    with_client(&args.client, |c| async move {
        if request.cast {
            return c.cast::<endpoint::Configure>(&request).await;
        }
        let reply: ConfigureReply = c.call::<endpoint::Configure>(&request).await?;
        let read_only = request.set.is_empty() && request.unset.is_empty();
        print_json_or(c.json, &reply, |reply| print(reply, read_only));
        Ok(EXIT_OK)
    })
    .await
}

/// The request `args` make, checked as the daemon will check it.
fn request(args: &ConfigureArgs) -> Result<ConfigureRequest, ApiError> {
    let mut set = std::collections::BTreeMap::new();
    for setting in &args.set {
        let (key, value) = parse_setting(setting).map_err(|e| ApiError::bad_request(e.message))?;
        set.insert(key, value);
    }
    // The values alone must fit, whatever the component already has.
    ComponentConfig::from_map(set.clone()).map_err(|e| ApiError::bad_request(e.message))?;
    let request = ConfigureRequest {
        name: args.name.clone(),
        set,
        unset: args.unset.clone(),
        cast: args.cast,
    };
    request.validate()?;
    Ok(request)
}

fn print(reply: &ConfigureReply, read_only: bool) {
    let m = &reply.manifest;
    if !read_only {
        if reply.unchanged {
            outln!(
                "{} version {} already has these values; nothing changed",
                m.name,
                m.version
            );
        } else {
            outln!(
                "configured {} version {}: same bytes, hosts switch to it now (`sandbus ls`)",
                m.name,
                m.version
            );
        }
    }
    if m.config.is_empty() {
        outln!(
            "{} has no config values; `sandbus configure {} KEY=VALUE` sets one",
            m.name,
            m.name
        );
    }
    for (key, value) in m.config.iter() {
        outln!("{}={}", printable(key), printable(value));
    }
}
