//! `sandbus kv ...`: an operator's view into components' key-value spaces: read a billing
//! listener's totals, set a quota hook's limits. Keys and values follow the guests' rules
//! (the same checks as the `kv` interface), so what is written here reads back in a guest.

use clap::Subcommand;
use sandbus::api::{ApiError, ApiErrorKind};
use sandbus::bus::NatsKv;
use sandbus::imports::kv::{KvStore, validate_key, validate_prefix};
use sandbus::sandbox::validate_component_name;

use super::client::{ClientArgs, client, print_json, printable};
use super::{EXIT_FAIL, EXIT_OK};

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
        .and_then(|()| match &command {
            KvCommand::Get { key, .. } | KvCommand::Set { key, .. } | KvCommand::Rm { key, .. } => {
                validate_key(key)
            }
            KvCommand::Ls { prefix, .. } => validate_prefix(prefix),
        });
    if let Err(why) = checked {
        return super::client::fail(&ApiError::bad_request(why), client_args.json);
    }
    client(&client_args, |c| async move {
        let js = async_nats::jetstream::new(c.nats.clone());
        let kv = NatsKv::open(&js).await?;
        let unavailable = |e: sandbus::imports::kv::KvStoreError| {
            ApiError::new(ApiErrorKind::Unavailable, e.to_string())
        };
        match command {
            KvCommand::Get { key, .. } => {
                let value = kv.get(&namespace, &key).await.map_err(unavailable)?;
                let text = value.as_deref().map(String::from_utf8_lossy);
                if c.json {
                    print_json(&serde_json::json!({ "key": key, "value": text }));
                } else if let Some(text) = &text {
                    super::outln!("{}", printable(text));
                }
                Ok(if value.is_some() { EXIT_OK } else { EXIT_FAIL })
            }
            KvCommand::Set { key, value, .. } => {
                kv.set(&namespace, &key, value.into_bytes())
                    .await
                    .map_err(unavailable)?;
                if c.json {
                    print_json(&serde_json::json!({ "key": key, "stored": true }));
                } else {
                    super::outln!("stored {namespace} {key}");
                }
                Ok(EXIT_OK)
            }
            KvCommand::Rm { key, .. } => {
                let existed = kv.delete(&namespace, &key).await.map_err(unavailable)?;
                if c.json {
                    print_json(&serde_json::json!({ "key": key, "removed": existed }));
                } else if !existed {
                    super::outln!("{namespace} has no key {key}");
                }
                Ok(if existed { EXIT_OK } else { EXIT_FAIL })
            }
            KvCommand::Ls { prefix, .. } => {
                let keys = kv
                    .list_keys(&namespace, &prefix)
                    .await
                    .map_err(unavailable)?;
                for key in keys {
                    let value = kv.get(&namespace, &key).await.map_err(unavailable)?;
                    let text = value
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    if c.json {
                        print_json(&serde_json::json!({ "key": key, "value": text }));
                    } else {
                        super::outln!("{}  {}", printable(&key), printable(&text));
                    }
                }
                Ok(EXIT_OK)
            }
        }
    })
    .await
}
