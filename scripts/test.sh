#!/usr/bin/env bash
# The test command: set up (target, nats-server, guests), then formatting, lints, every
# test of the workspace and of the guests, and a bounded fuzzing run of the parsers a
# stranger reaches (FUZZ_SECONDS a target, default 30). This is what CI runs.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# nats-server refuses JetStream storage on a nearly full disk, and every daemon test then
# times out with no word about why: say it before spending half an hour.
free_gb="$(df -Pk "$repo" | awk 'NR == 2 { print int($4 / 1048576) }')"
if [ "$free_gb" -lt 20 ]; then
  echo "only ${free_gb} GB free on $(df -P "$repo" | awk 'NR == 2 { print $6 }'); the tests need about 20 GB" >&2
  echo "(build outputs and JetStream stores). Free space, e.g. cargo clean, and run again." >&2
  exit 1
fi

scripts/setup.sh
# The daemon tests start their own nats-server; find it even off PATH.
source scripts/nats-server-path.sh

echo "== format"
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
(cd fuzz && cargo fmt --all -- --check)

echo "== lints"
cargo clippy --locked --workspace --all-targets -- -D warnings
(cd guests && CARGO_TARGET_DIR="$repo/guests/target" \
  cargo clippy --locked --release --target wasm32-wasip2 --workspace -- -D warnings)

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "== guest unit tests (native)"
host_target="$(rustc -vV | sed -n 's/^host: //p')"
(cd guests && CARGO_TARGET_DIR="$repo/guests/target" \
  cargo test --locked --workspace --target "$host_target") 2>&1 | tee -a "$log"

echo "== release daemon and VM lab image (tests/vm_lab boots lab hosts on a real kernel USB stack)"
cargo build --release --locked -p sandbus
scripts/vm-lab.sh image >/dev/null

echo "== host tests"
cargo test --locked --workspace 2>&1 | tee -a "$log"

echo "== fuzz (the parsers a stranger reaches, ${FUZZ_SECONDS:-30}s a target)"
FUZZ_SECONDS="${FUZZ_SECONDS:-30}" scripts/fuzz.sh

# One closing line over every test binary above (the last binary alone, doc-tests, may
# have none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
