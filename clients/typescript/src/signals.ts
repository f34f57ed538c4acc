// AbortSignals shared by many steps (an executor's one signal): one
// listener per signal, cancelling every step that still watches it, so a
// signal never collects a listener per step.

export class Cancellations {
  private readonly watched = new Map<AbortSignal, { ids: Set<string>; abort: () => void }>();

  constructor(private readonly cancel: (id: string) => void) {}

  /** Cancel step `id` when `signal` aborts. */
  watch(signal: AbortSignal, id: string): void {
    let entry = this.watched.get(signal);
    if (!entry) {
      const ids = new Set<string>();
      const abort = () => {
        for (const watching of ids) this.cancel(watching);
      };
      entry = { ids, abort };
      this.watched.set(signal, entry);
      signal.addEventListener("abort", abort, { once: true });
    }
    entry.ids.add(id);
  }

  /** Step `id` ended: stop watching for it. */
  forget(signal: AbortSignal, id: string): void {
    const entry = this.watched.get(signal);
    if (!entry) return;
    entry.ids.delete(id);
    if (entry.ids.size === 0) {
      signal.removeEventListener("abort", entry.abort);
      this.watched.delete(signal);
    }
  }
}
