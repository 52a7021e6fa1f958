#!/usr/bin/env bash
# Builds the guest components (the Cargo workspace in guests/) for wasm32-wasip2 and copies
# them to target/guests/<crate-name>.wasm at the repository root, where the tests and the
# benchmark look for them. Works from any directory. Extra arguments go to `cargo build`
# (for example --locked).
#
# `tag-listener` is also built a second time with the cargo feature `v2`, for the hot-swap
# test: the plain build is published as both tag-listener.wasm and tag-listener-v1.wasm, the
# feature build as tag-listener-v2.wasm. The v2 build has its own target directory so the two
# never overwrite each other's tag_listener.wasm and both stay cached between runs.
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

# Pin the target directories so the components are where we copy them from.
main_target="$guests/target"
v2_target="$guests/target/tag-listener-v2"
(cd "$guests" && CARGO_TARGET_DIR="$main_target" cargo build --release --target "$target" "$@")
(cd "$guests" && CARGO_TARGET_DIR="$v2_target" \
  cargo build --release --target "$target" -p tag-listener --features v2 "$@")

mkdir -p "$out"
built="$main_target/$target/release"
shopt -s nullglob
components=("$built"/*.wasm)
if ((${#components[@]} == 0)); then
  echo "error: no components in $built" >&2
  exit 1
fi
v2_wasm="$v2_target/$target/release/tag_listener.wasm"
if [[ ! -f "$v2_wasm" ]]; then
  echo "error: the v2 build of tag-listener is missing ($v2_wasm)" >&2
  exit 1
fi

copied=0
# Copies a built component to $out/<name> and prints its table row.
publish() {
  cp "$1" "$out/$2"
  printf '%-32s %10s\n' "$2" "$(wc -c <"$out/$2" | tr -d ' ')"
  copied=$((copied + 1))
}

printf '%-32s %10s\n' component bytes
for wasm in "${components[@]}"; do
  # Cargo names the file after the crate with `-` turned into `_`; the tests use the crate name.
  name="$(basename "$wasm" .wasm)"
  name="${name//_/-}"
  publish "$wasm" "$name.wasm"
  if [[ "$name" == tag-listener ]]; then
    publish "$wasm" tag-listener-v1.wasm
  fi
done
publish "$v2_wasm" tag-listener-v2.wasm

# The Python and JavaScript example guests, built the way their users build them:
# componentize-py (PyPI) for guests/python/<name>/app.py, componentize-js (npm, pinned in
# guests/js/package.json) for guests/js/<name>/listener.js; scripts/setup.sh installs both.
# Each is published as <language>-<name>.wasm. A component newer than its source is kept.
fresh() { [[ -f "$1" && "$1" -nt "$2" && "$1" -nt "$repo/wit/world.wit" ]]; }
if command -v componentize-py >/dev/null 2>&1; then
  for app in "$guests"/python/*/app.py; do
    dir="$(dirname "$app")"
    name="python-$(basename "$dir").wasm"
    world=listener
    if grep -q "exports.Runner" "$app"; then world=script; fi
    if ! fresh "$out/$name" "$app"; then
      (cd "$dir" && componentize-py -d "$repo/wit" -w "$world" componentize app -o "$out/$name" >/dev/null)
    fi
    printf '%-32s %10s\n' "$name" "$(wc -c <"$out/$name" | tr -d ' ')"
    copied=$((copied + 1))
  done
else
  echo "warning: componentize-py not found (scripts/setup.sh installs it); Python guests not built" >&2
fi
componentize_js="$guests/js/node_modules/.bin/componentize-js"
if [[ -x "$componentize_js" ]]; then
  for source in "$guests"/js/*/listener.js; do
    name="js-$(basename "$(dirname "$source")").wasm"
    if ! fresh "$out/$name" "$source"; then
      "$componentize_js" "$source" --wit "$repo/wit" --world-name listener -o "$out/$name" >/dev/null
    fi
    printf '%-32s %10s\n' "$name" "$(wc -c <"$out/$name" | tr -d ' ')"
    copied=$((copied + 1))
  done
else
  echo "warning: componentize-js not installed (scripts/setup.sh runs npm ci in guests/js); JavaScript guests not built" >&2
fi
echo "copied $copied components to $out"
