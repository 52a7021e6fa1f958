#!/usr/bin/env bash
# Builds the guest components (the Cargo workspace in guests/) for wasm32-wasip2 and copies
# them to target/guests/<crate-name>.wasm at the repository root, where the tests and the
# benchmark look for them. Works from any directory. Extra arguments go to `cargo build`
# (for example --locked).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
guests="$repo/guests"
target=wasm32-wasip2
out="$repo/target/guests"

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing the $target target"
    rustup target add "$target"
  fi
else
  echo "warning: rustup not found; assuming the $target target is installed" >&2
fi

# Pin the target directory so the components are where we copy them from.
export CARGO_TARGET_DIR="$guests/target"
(cd "$guests" && cargo build --release --target "$target" "$@")

mkdir -p "$out"
built="$CARGO_TARGET_DIR/$target/release"
shopt -s nullglob
components=("$built"/*.wasm)
if ((${#components[@]} == 0)); then
  echo "error: no components in $built" >&2
  exit 1
fi

printf '%-32s %10s\n' component bytes
for wasm in "${components[@]}"; do
  # Cargo names the file after the crate with `-` turned into `_`; the tests use the crate name.
  name="$(basename "$wasm" .wasm)"
  name="${name//_/-}"
  cp "$wasm" "$out/$name.wasm"
  printf '%-32s %10s\n' "$name.wasm" "$(wc -c <"$out/$name.wasm" | tr -d ' ')"
done
echo "copied ${#components[@]} components to $out"
