#!/usr/bin/env bash
# Runs the daemon, the one-command way: installs what is missing (Rust target, nats-server,
# guests), builds sandbus in release mode, then `sandbus up`: the daemon in the foreground,
# with a private nats-server (JetStream, data in the data directory) when none is configured
# and nothing answers on 127.0.0.1:4222. Ctrl-C stops both. Arguments go to `sandbus up`
# (for example --data-dir DIR, --server URL, --config sandbus.toml).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts/setup.sh >/dev/null
cargo build --release --locked -p sandbus
source scripts/nats-server-path.sh
exec "$repo/target/release/sandbus" up "$@"
