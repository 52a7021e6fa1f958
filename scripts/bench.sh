#!/usr/bin/env bash
# Runs the sandbox benchmark (criterion, release build) and prints a table of medians, with
# each per-event figure as a ratio of bare wasmtime's instantiate+call measured in the same
# run. Extra arguments go to criterion (for example a filter such as `per_event`).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/setup.sh >/dev/null
cargo bench --locked -p sandbus --bench invoke -- "$@"

python3 - "$repo/target/criterion" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
def median(group, bench):
    f = root / group / bench / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["median"]["point_estimate"] / 1000.0
floor = median("wasmtime_floor", "instantiate_call")
rows = [("wasmtime_floor", "instantiate_call")]
for mode in ("pooling", "on_demand"):
    rows += [("per_event/" + mode, str(n)) for n in (0, 1024, 65536)]
rows += [("live_instance", str(n)) for n in (0, 1024, 65536)]
print()
print(f"{'benchmark':<28} {'payload':>8} {'median µs':>10} {'× floor':>8}")
for group, bench in rows:
    m = median(group, bench)
    if m is None:
        continue
    ratio = f"{m / floor:.2f}" if floor else "-"
    label = bench if bench.isdigit() else "0"
    print(f"{group:<28} {label:>8} {m:>10.2f} {ratio:>8}")
PY
