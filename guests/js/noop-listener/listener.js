// The trivial listener in JavaScript (world `listener`): returns `ok` and does nothing else.
// The per-event cost of a JavaScript guest in the benchmarks (`cargo bench --bench invoke`,
// `per_event_language`), next to the Rust `noop-listener`.

export const handler = {
  handle(_event) {
    return { tag: 'ok' };
  },
};
