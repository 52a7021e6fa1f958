#!/usr/bin/env bash
# Fuzzes the parsers a stranger reaches (fuzz/: CloudEvents JSON, control API bodies,
# manifests and grants, component bytes) with cargo-fuzz (libFuzzer), each target for a
# bounded time, starting from the seed corpus in fuzz/corpus/<target>. New inputs go to a
# scratch directory, not into the repository. Installs cargo-fuzz when missing. Stable Rust:
# no sanitizer (the code under test is safe Rust; libFuzzer finds panics, aborts, hangs and
# runaway memory).
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 30) each
#   scripts/fuzz.sh policy 600      one target, ten minutes
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"
seconds="${2:-${FUZZ_SECONDS:-30}}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

targets=("$@")
if ((${#targets[@]} == 0)) || [[ "${targets[0]}" =~ ^[0-9]+$ ]]; then
  targets=(cloudevent_json api_request policy component_bytes)
else
  targets=("$1")
fi

# One build for every target (release, with debug assertions, coverage instrumented).
cargo fuzz build --sanitizer none

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "== fuzz $target (${seconds}s)"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  # -timeout: one input may take at most 10 s; -rss_limit_mb: 2 GiB.
  status=0
  cargo fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E "^(Done |stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  if [[ "$status" != 0 ]]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target found a failure (exit $status); the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
