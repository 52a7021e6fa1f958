"""A loopback board check in Python (world `script`), the Python twin of `usb-smoke`.

Checks that the leased device is the board the run expects and that its bulk loopback
works, one timed step each, in order:

1. `device-descriptor`: the device descriptor's vendor and product ids match the `vendor`
   and `product` arguments;
2. `claim-interface`: interface 0 is claimed;
3. `bulk-loopback`: `size` bytes (default 64) written to OUT endpoint 0x01 come back
   unchanged from IN endpoint 0x81.

Arguments (`--arg name=value`): `vendor` and `product` (hex; required), `size`. A missing or
malformed argument ends the run with verdict `error`; a failed step skips the ones after it.

Build: `componentize-py -d wit -w script componentize app -o loopback-check.wasm` (run in
this folder, `wit` being the repository's `wit/`; scripts/build-guests.sh does it).
"""

import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import runner
from wit_world.imports import log, usb

OUT_ENDPOINT = 0x01
IN_ENDPOINT = 0x81
TIMEOUT_MS = 1000


def parse_args(args):
    """The arguments as a dict of ints; raises ValueError naming what is wrong."""
    given = dict(args)
    unknown = sorted(set(given) - {"vendor", "product", "size"})
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; use vendor, product, size")
    parsed = {"size": 64}
    for name in ("vendor", "product"):
        if name not in given:
            raise ValueError(f"argument {name!r} is required (hex, e.g. --arg {name}=1209)")
    for name, value in given.items():
        base = 10 if name == "size" else 16
        try:
            parsed[name] = int(value, base)
        except ValueError:
            raise ValueError(f"argument {name}={value!r} is not a number") from None
    return parsed


def describe(error):
    """A usb-error variant, in words."""
    if isinstance(error, Err):
        error = error.value
    value = getattr(error, "value", None)
    name = type(error).__name__.removeprefix("UsbError_").lower()
    return f"{name}: {value}" if value is not None else name


class Runner(exports.Runner):
    def run(self, args):
        try:
            params = parse_args(args)
        except ValueError as e:
            log.log(log.Level.ERROR, str(e))
            return runner.Report(verdict=runner.Verdict.ERROR, steps=[], summary=str(e))

        steps = []
        state = {}

        def step(name, body):
            """Runs one step unless an earlier one failed; records it."""
            if steps and steps[-1].outcome != runner.StepOutcome.PASSED:
                steps.append(runner.Step(name, runner.StepOutcome.SKIPPED, 0, "an earlier step failed"))
                return
            started = time.monotonic()
            try:
                detail, outcome = body(), runner.StepOutcome.PASSED
            except Err as e:
                detail, outcome = describe(e), runner.StepOutcome.FAILED
            except AssertionError as e:
                detail, outcome = str(e), runner.StepOutcome.FAILED
            took = int((time.monotonic() - started) * 1000)
            log.log(log.Level.INFO, f"{name}: {detail}")
            steps.append(runner.Step(name, outcome, took, detail))

        def device_descriptor():
            device = usb.leased_device()
            state["device"] = device
            d = device.device_descriptor()
            assert len(d) >= 18, f"the descriptor is {len(d)} bytes, not 18"
            vendor = d[8] | d[9] << 8
            product = d[10] | d[11] << 8
            found = f"{vendor:04x}:{product:04x}"
            want = f"{params['vendor']:04x}:{params['product']:04x}"
            assert found == want, f"vendor:product {found}, expected {want}"
            return f"vendor:product {found}"

        def claim_interface():
            handle = state["device"].open()
            handle.claim_interface(0)
            state["handle"] = handle
            return "interface 0"

        def bulk_loopback():
            size = params["size"]
            sent = bytes((i * 7 + 3) % 256 for i in range(size))
            handle = state["handle"]
            handle.bulk_out(OUT_ENDPOINT, sent, TIMEOUT_MS)
            back = handle.bulk_in(IN_ENDPOINT, size, TIMEOUT_MS)
            assert back == sent, f"{len(back)} bytes came back, not the {size} sent"
            return f"{size} bytes"

        step("device-descriptor", device_descriptor)
        step("claim-interface", claim_interface)
        step("bulk-loopback", bulk_loopback)
        passed = all(s.outcome == runner.StepOutcome.PASSED for s in steps)
        verdict = runner.Verdict.PASS if passed else runner.Verdict.FAIL
        summary = "the board answers and loops bytes back" if passed else "the board check failed"
        return runner.Report(verdict=verdict, steps=steps, summary=summary)
