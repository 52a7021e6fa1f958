#!/usr/bin/env bash
# A tour. First the local dev loop, no bus needed: runs the self-check test script in the
# sandbox, then replays a billing scenario (with a duplicate and a stop before its start)
# into the billing listener and prints the per-tenant totals it kept in kv. Then the daemon:
# `sandbus up` with a throwaway data directory, the billing listener uploaded and subscribed,
# the same events published through the control API, its status and the billing.usage
# events it emitted. Last the device lab on two simulated boards (scripts/devices.toml): the
# devices, a USB smoke-test run followed live to its report, and the lease events it left.
# Everything is stopped and removed at the end.
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

echo
echo "== the daemon: sandbus up (private nats-server), upload, subscribe, publish"
source scripts/nats-server-path.sh
data="$(mktemp -d)"
"$sandbus" up --data-dir "$data" --host-id demo --log warn --simulate scripts/devices.toml &
up_pid=$!
trap 'kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  "$sandbus" hosts 2>/dev/null | grep -q '^demo ' && break
  sleep 0.2
done
"$sandbus" hosts
"$sandbus" upload target/guests/billing-listener.wasm --name demo-billing \
  --grant 'publish=events.billing.>'
"$sandbus" subscribe demo-billing --events 'vm.*' --backoff 200ms
"$sandbus" publish --file examples/billing-events.jsonl
for _ in $(seq 1 100); do
  "$sandbus" status demo-billing --json | grep -q '"pending":0,"in_flight":0' && break
  sleep 0.2
done
"$sandbus" status demo-billing
echo "-- billing.usage events the listener emitted:"
"$sandbus" events 'billing.usage'
"$sandbus" unsubscribe demo-billing
"$sandbus" rm demo-billing

echo
echo "== the device lab: simulated boards, a script run on one of them"
"$sandbus" upload target/guests/usb-smoke.wasm --name demo-smoke
for _ in $(seq 1 100); do
  "$sandbus" devices 2>/dev/null | grep -q 'loopback-2' && break
  sleep 0.2
done
"$sandbus" devices
"$sandbus" run demo-smoke --device 1209:0001 --arg vendor=1209 --arg product=0001 --follow
"$sandbus" runs
echo "-- lease events (billing can charge device time from held_ms):"
"$sandbus" events 'sandbus.lease.*'
"$sandbus" rm demo-smoke
