// An audit listener in JavaScript (world `listener`): counts events per type and per actor,
// and forwards events that ask for it to a webhook.
//
// For each event: `count/<type>` and `actor/<actor>` are incremented in the component's kv
// space, and one line is logged. The actor is the event data's `actor` field; an event
// without one throws, and sandbus reports the error's message as the delivery's failure
// reason. An event whose data names a `webhook` is also POSTed there with `fetch`; sandbus
// guests have no network, so the request is denied, and the listener logs that and goes on.
//
// Build: `componentize-js listener.js --wit wit --world-name listener -o audit-listener.wasm`
// (`wit` being the repository's `wit/`; scripts/build-guests.sh does it).

import { log } from 'sandbus:host/log@0.1.0';
import { increment } from 'sandbus:host/kv@0.1.0';

async function forward(url, event) {
  try {
    await fetch(url, { method: 'POST', body: JSON.stringify({ id: event.id, type: event.type }) });
    log('info', `forwarded ${event.id} to ${url}`);
  } catch (e) {
    log('warn', `could not forward ${event.id} to ${url}: ${e.message}`);
  }
}

export const handler = {
  async handle(event) {
    const data = event.data.length ? JSON.parse(new TextDecoder().decode(event.data)) : {};
    if (!data.actor) {
      throw new Error(`event ${event.id} has no actor`);
    }
    const seen = increment(`count/${event.type}`, 1n);
    increment(`actor/${data.actor}`, 1n);
    log('info', `${event.type} by ${data.actor} (${seen} of this type)`);
    if (data.webhook) {
      await forward(data.webhook, event);
    }
    return { tag: 'ok' };
  },
};
