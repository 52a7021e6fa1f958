//! `sandbus kv ...`: an operator's view into components' key-value spaces: read a billing
//! listener's totals, set a quota hook's limits, through the control API (`kv.*`, operator
//! role). Keys and values follow the guests' rules (the same checks as the `kv` interface),
//! so what is written here reads back in a guest.

use clap::Subcommand;
use sandbus::api::{
    ApiError, KvDeleteReply, KvEntry, KvKeyRequest, KvListReply, KvListRequest, KvSetRequest,
    endpoint,
};
use sandbus::imports::kv::{validate_key, validate_prefix};
use sandbus::sandbox::validate_component_name;

use super::connect::{ClientArgs, with_client};
use super::output::{self, EXIT_FAIL, EXIT_OK, outln, print_json, printable};

/// The `kv` subcommands. NAMESPACE is a component's name.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print the value under KEY in a component's space (exit 1 if absent).
    Get {
        /// The component whose space it is.
        namespace: String,
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Store VALUE (text) under KEY in a component's space.
    Set {
        /// The component whose space it is.
        namespace: String,
        /// The key.
        key: String,
        /// The value, stored as the text given.
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove KEY from a component's space (exit 1 if it was absent).
    Rm {
        /// The component whose space it is.
        namespace: String,
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the keys (and values) of a component's space that start with PREFIX.
    Ls {
        /// The component whose space it is.
        namespace: String,
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `kv` subcommand; its exit code.
pub async fn run(command: KvCommand) -> u8 {
    let (namespace, client_args) = match &command {
        KvCommand::Get {
            namespace, client, ..
        }
        | KvCommand::Set {
            namespace, client, ..
        }
        | KvCommand::Rm {
            namespace, client, ..
        }
        | KvCommand::Ls {
            namespace, client, ..
        } => (namespace.clone(), client.clone()),
    };
    let checked = validate_component_name(&namespace)
        .map_err(|e| e.message)
        .and_then(|()| {
            match &command {
                KvCommand::Get { key, .. }
                | KvCommand::Set { key, .. }
                | KvCommand::Rm { key, .. } => validate_key(key),
                KvCommand::Ls { prefix, .. } => validate_prefix(prefix),
            }
            .map_err(|e| e.message)
        });
    if let Err(why) = checked {
        return output::fail(&ApiError::bad_request(why), client_args.json);
    }
    with_client(&client_args, |c| async move {
        match command {
            KvCommand::Get { key, .. } => {
                let entry: KvEntry = c
                    .call::<endpoint::KvGet>(&KvKeyRequest { namespace, key })
                    .await?;
                if c.json {
                    print_json(&entry);
                } else if let Some(text) = &entry.value {
                    outln!("{}", printable(text));
                } else if let Some(b64) = &entry.value_base64 {
                    outln!("(not text; base64) {b64}");
                }
                Ok(if entry.exists() { EXIT_OK } else { EXIT_FAIL })
            }
            KvCommand::Set { key, value, .. } => {
                let entry: KvEntry = c
                    .call::<endpoint::KvSet>(&KvSetRequest {
                        namespace: namespace.clone(),
                        key,
                        value,
                    })
                    .await?;
                if c.json {
                    print_json(&serde_json::json!({ "key": entry.key, "stored": true }));
                } else {
                    outln!("stored {namespace} {}", entry.key);
                }
                Ok(EXIT_OK)
            }
            KvCommand::Rm { key, .. } => {
                let reply: KvDeleteReply = c
                    .call::<endpoint::KvDelete>(&KvKeyRequest {
                        namespace: namespace.clone(),
                        key,
                    })
                    .await?;
                if c.json {
                    print_json(&reply);
                } else if !reply.removed {
                    outln!("{namespace} has no key {}", reply.key);
                }
                Ok(if reply.removed { EXIT_OK } else { EXIT_FAIL })
            }
            KvCommand::Ls { prefix, .. } => {
                let mut after = None;
                loop {
                    let page: KvListReply = c
                        .call::<endpoint::KvList>(&KvListRequest {
                            namespace: namespace.clone(),
                            prefix: prefix.clone(),
                            after: after.clone(),
                        })
                        .await?;
                    for entry in &page.entries {
                        let text = entry.value.clone().unwrap_or_default();
                        if c.json {
                            print_json(&serde_json::json!({ "key": entry.key, "value": text }));
                        } else {
                            outln!("{}  {}", printable(&entry.key), printable(&text));
                        }
                    }
                    match page.entries.last() {
                        Some(last) if page.more => after = Some(last.key.clone()),
                        _ => return Ok(EXIT_OK),
                    }
                }
            }
        }
    })
    .await
}
