"""An audit listener in Python (world `listener`): counts events per type and per actor.

For each event: `count/<type>` and `actor/<actor>` are incremented in the component's kv
space, and one line is logged. The actor is the event data's `actor` field; an event without
one raises `KeyError`, which sandbus reports as the delivery's failure reason
(`KeyError: 'actor'`), retries, and finally dead-letters.

Build: `componentize-py -d wit -w listener componentize app -o audit-listener.wasm` (run in
this folder, `wit` being the repository's `wit/`; scripts/build-guests.sh does it).
"""

import json

from wit_world import exports
from wit_world.exports import handler
from wit_world.imports import kv, log


class Handler(exports.Handler):
    def handle(self, event):
        data = json.loads(event.data) if event.data else {}
        actor = data["actor"]
        seen = kv.increment(f"count/{event.type}", 1)
        kv.increment(f"actor/{actor}", 1)
        log.log(log.Level.INFO, f"{event.type} by {actor} ({seen} of this type)")
        return handler.Outcome_Ok()
