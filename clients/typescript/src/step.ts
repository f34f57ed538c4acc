// One step in flight: its live events (numbered, bounded, gaps counted),
// its result, and its cancellation.

import type { HostEvent, StepExecutionResult, WorkerLifecycleLogEntry } from "./generated/contracts.js";

/** A lifecycle entry, as appended to the run's `logs/lifecycle.jsonl`. */
export interface LifecycleEvent {
  type: "lifecycle";
  /** The step's event number, from 1; a gap means events were missed (the logs have them). */
  seq: number;
  entry: WorkerLifecycleLogEntry;
  /** The host running the step, when a cluster runs it (`serve --nats`). */
  host?: string;
  /** Which delivery of the queued step that host runs (a takeover is a new one). */
  delivery?: number;
}

/** A chunk of output, as appended to `logs/stdout.log` or `logs/stderr.log`. */
export interface OutputEvent {
  type: "output";
  seq: number;
  stream: "stdout" | "stderr";
  /** The chunk as UTF-8 (invalid bytes replaced; the logs keep the exact bytes). */
  text: string;
  /** The host running the step, when a cluster runs it (`serve --nats`). */
  host?: string;
  /** Which delivery of the queued step that host runs (a takeover is a new one). */
  delivery?: number;
}

export type StepEvent = LifecycleEvent | OutputEvent;

/**
 * A host lifecycle entry's name and data, typed by the runner's host-event
 * schema (`step.finished` has its outcome, `subprocess.denied` its denial,
 * …); undefined for a worker's own events.
 */
export function hostEvent(entry: WorkerLifecycleLogEntry): HostEvent | undefined {
  return entry.source === "host" ? ({ event: entry.event, data: entry.data } as HostEvent) : undefined;
}

/** Events a handle keeps for a reader that has not caught up; older ones are dropped and counted. */
export const DEFAULT_EVENT_BUFFER = 4096;
/** Characters of output text a handle keeps for a reader that has not caught up. */
const BUFFERED_TEXT = 8 * 1024 * 1024;

type Waiter = { resolve(next: IteratorResult<StepEvent>): void; reject(error: unknown): void };

/**
 * A running step. `events` is a live view that ends when the step does;
 * `result` is its StepExecutionResult; `cancel()` stops it (the result then
 * says `failed`, reason `interrupted`, and the record is written).
 */
export class StepHandle {
  /** The step's result; rejects with RunnerUnavailableError if the runner goes away first. */
  readonly result: Promise<StepExecutionResult>;
  private readonly buffered: StepEvent[] = [];
  private bufferedText = 0;
  private readonly waiters: Waiter[] = [];
  private ended = false;
  private failure: unknown;
  private iterated = false;
  private listening: boolean;
  private lastSeq = 0;
  private missedCount = 0;
  private settle!: { resolve(result: StepExecutionResult): void; reject(error: unknown): void };

  /** @internal Made by BaaRunner.start. */
  constructor(
    /** This client's id of the step. */
    readonly id: string,
    /**
     * The attempt's run directory: its logs, checkpoints, metadata, state
     * and result; undefined for a step queued in a cluster (its result's
     * `logPaths` name the directory on the host that ran it).
     */
    readonly runDir: string | undefined,
    private readonly sendCancel: () => void,
    private readonly capacity = DEFAULT_EVENT_BUFFER,
    /** The step's key in the cluster (`serve --nats`): `taskId.stepId.runId.attempt`. */
    readonly clusterStep?: string,
    /**
     * The same step (identity and request) had been queued before: this
     * handle follows that submission, and closing this connection leaves it
     * running (cancel() still cancels it).
     */
    readonly duplicate = false,
  ) {
    this.listening = capacity > 0;
    this.result = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    // A caller that reads only the events must not crash the process with
    // an unhandled rejection; awaiting `result` still sees the error.
    this.result.catch(() => {});
  }

  /** Events this handle knows were not delivered: gaps in `seq` and events dropped from a full buffer. */
  get missed(): number {
    return this.missedCount;
  }

  /** Whether the step has ended (its result or error is known). */
  get finished(): boolean {
    return this.ended;
  }

  /** Stop the step. Its result still arrives, saying `interrupted`. Idempotent. */
  cancel(): void {
    if (!this.ended) this.sendCancel();
  }

  /** The step's events, live, in order; ends with the step. Iterable once. */
  get events(): AsyncIterable<StepEvent> {
    return { [Symbol.asyncIterator]: () => this.iterator() };
  }

  /** @internal */
  push(event: StepEvent): void {
    if (this.ended) return;
    if (event.seq > this.lastSeq + 1) this.missedCount += event.seq - this.lastSeq - 1;
    this.lastSeq = Math.max(this.lastSeq, event.seq);
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: event, done: false });
      return;
    }
    if (!this.listening) return;
    this.buffered.push(event);
    this.bufferedText += textOf(event);
    while (this.buffered.length > this.capacity || this.bufferedText > BUFFERED_TEXT) {
      const dropped = this.buffered.shift();
      if (!dropped) break;
      this.bufferedText -= textOf(dropped);
      this.missedCount += 1;
    }
  }

  /** @internal The step ended with `result`. */
  finish(result: StepExecutionResult): void {
    if (this.ended) return;
    this.ended = true;
    this.settle.resolve(result);
    for (const waiter of this.waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
  }

  /** @internal The step's result will never come. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = error;
    this.settle.reject(error);
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  private iterator(): AsyncIterator<StepEvent> {
    if (this.iterated) throw new TypeError(`the events of step ${this.id} can be iterated once`);
    this.iterated = true;
    return {
      next: () => {
        const event = this.buffered.shift();
        if (event) {
          this.bufferedText -= textOf(event);
          return Promise.resolve({ value: event, done: false });
        }
        if (this.ended) {
          return this.failure === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.failure);
        }
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
      // A reader that stops early (break, throw) stops listening, not the step.
      return: () => {
        this.listening = false;
        this.buffered.length = 0;
        this.bufferedText = 0;
        for (const waiter of this.waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

function textOf(event: StepEvent): number {
  return event.type === "output" ? event.text.length : 0;
}
