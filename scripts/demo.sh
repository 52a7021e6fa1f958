#!/usr/bin/env bash
# The local experience, no bus needed: runs the self-check test script in the sandbox, then
# replays a billing scenario (with a duplicate and a stop before its start) into the billing
# listener and prints the per-tenant totals it kept in kv.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scripts/setup.sh >/dev/null
cargo build --release --locked -p sandbus
sandbus="$repo/target/release/sandbus"

echo "== sandbus dev run target/guests/self-check.wasm"
"$sandbus" dev run target/guests/self-check.wasm

echo
echo "== sandbus dev replay target/guests/billing-listener.wasm examples/billing-events.jsonl"
"$sandbus" dev replay target/guests/billing-listener.wasm examples/billing-events.jsonl \
  --name billing --grant 'publish=events.billing.>'
