#!/usr/bin/env bash
# The test command: set up (target, nats-server, guests), then formatting, lints, and every
# test of the workspace and of the guests. This is what CI runs.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts/setup.sh

echo "== format"
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)

echo "== lints"
cargo clippy --locked --workspace --all-targets -- -D warnings
(cd guests && CARGO_TARGET_DIR="$repo/guests/target" \
  cargo clippy --locked --release --target wasm32-wasip2 --workspace -- -D warnings)

echo "== guest unit tests (native)"
(cd guests && CARGO_TARGET_DIR="$repo/guests/target" \
  cargo test --locked -p billing-listener --target "$(rustc -vV | sed -n 's/^host: //p')")

echo "== host tests"
cargo test --locked --workspace
