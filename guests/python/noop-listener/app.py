"""The trivial listener in Python (world `listener`): returns `ok` and does nothing else.

The per-event cost of a Python guest in the benchmarks (`cargo bench --bench invoke`,
`per_event_language`), next to the Rust `noop-listener`.
"""

from wit_world import exports
from wit_world.exports import handler


class Handler(exports.Handler):
    def handle(self, event):
        return handler.Outcome_Ok()
