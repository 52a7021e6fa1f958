#!/usr/bin/env bash
# The soak (issue 15): the billing listener through 3 daemons on a 3-node NATS cluster, one
# daemon SIGKILLed and restarted and one node restarted mid-run; checks exact totals and no
# dead letters, prints events/s per phase and CPU per process (host/benches/soak.rs).
#
#   scripts/soak.sh                      # 1,000,000 events, 1,000 tenants (most of an hour)
#   scripts/soak.sh --events 20000       # a short run
#   scripts/soak.sh --tenants 100 --keep # keep the daemons' logs and data
#
# Builds sandbus in release (cargo bench). With SANDBUS_BINARY=/path/to/release/sandbus it
# runs that binary instead and builds only the soak's driver, in debug (cargo test): the
# driver only writes and publishes chunks and polls the consumer.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/nats-server-path.sh
if [ ! -f target/guests/billing-listener.wasm ]; then
  echo "error: the guests are not built: run scripts/setup.sh (or scripts/build-guests.sh)" >&2
  exit 1
fi
if [ -n "${SANDBUS_BINARY:-}" ]; then
  exec cargo test --locked -p sandbus --bench soak -- soak "$@"
fi
exec cargo bench --locked -p sandbus --bench soak -- soak "$@"
