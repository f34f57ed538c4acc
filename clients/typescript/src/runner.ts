// BaaRunner: steps over one connection to `baa-runner serve`, either a child
// this client spawned or a server the operator runs. Routes the server's
// messages to each step by id and turns a lost server into errors that name
// where each step's record is.

import { BaaRunnerError, HostError, InvalidRequestError, RunnerUnavailableError, StepCancelledError } from "./errors.js";
import type { StepExecutionRequest, StepExecutionResult } from "./generated/contracts.js";
import { Wire, type ServerMessage, type WireError } from "./protocol.js";
import { serializeRequest } from "./request.js";
import { ServerProcess, type ServeOptions } from "./server.js";
import { Cancellations } from "./signals.js";
import { DEFAULT_EVENT_BUFFER, StepHandle, type StepEvent } from "./step.js";

export interface StartStepOptions {
  /** Cancels the step when aborted (its result then says `interrupted`). */
  signal?: AbortSignal;
  /** Events a handle keeps for a reader that has not caught up (default 4,096; 0: keep none). */
  eventBuffer?: number;
}

export interface RunStepOptions {
  /** Cancels the step when aborted; the promise then resolves with its `interrupted` result. */
  signal?: AbortSignal;
  /**
   * Called with each live event, in order (awaited when it returns a
   * promise). If it throws or rejects, the step is cancelled and `run`
   * rejects with that error once the step's record is written.
   */
  onEvent?: (event: StepEvent) => unknown;
}

/** A step sent but not yet accepted, or accepted and running. */
type Pending =
  | {
      state: "starting";
      resolve(handle: StepHandle): void;
      reject(error: unknown): void;
      eventBuffer: number;
      started: Promise<StepHandle>;
    }
  | { state: "running"; handle: StepHandle };

/**
 * A connection to a baa-runner: `BaaRunner.start()` spawns `baa-runner serve`
 * as a child, `BaaRunner.connect(socket)` attaches to a running one. Steps
 * run concurrently; `close()` cancels those still running, waits for their
 * records and stops the child.
 */
export class BaaRunner {
  private readonly steps = new Map<string, Pending>();
  /** Runs sent and not yet answered, oldest first: the server answers them in this order. */
  private readonly unanswered: string[] = [];
  private readonly cancellations = new Cancellations((id) => this.sendCancel(id));
  private nextId = 1;
  private wire!: Wire;
  private lost: RunnerUnavailableError | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    /** The socket of the server. */
    readonly socketPath: string,
    private readonly server: ServerProcess | undefined,
  ) {}

  /** Spawn `baa-runner serve` and connect once it listens. */
  static async start(options: ServeOptions = {}): Promise<BaaRunner> {
    const server = await ServerProcess.spawn(options);
    try {
      return await BaaRunner.attach(server.socket, server);
    } catch (error) {
      await server.stop(0);
      throw error;
    }
  }

  /** Attach to a `baa-runner serve` the operator runs (its `--socket`). */
  static connect(socketPath: string): Promise<BaaRunner> {
    return BaaRunner.attach(socketPath, undefined);
  }

  private static async attach(socketPath: string, server: ServerProcess | undefined): Promise<BaaRunner> {
    const runner = new BaaRunner(socketPath, server);
    try {
      runner.wire = await Wire.connect(socketPath, {
        message: (message) => runner.receive(message),
        closed: (error) => void runner.disconnected(error),
      });
    } catch (error) {
      throw new RunnerUnavailableError(
        `cannot connect to baa-runner serve at ${socketPath}: ${(error as Error).message}`,
      );
    }
    return runner;
  }

  /** The pid of the `baa-runner serve` this client spawned (undefined after `connect`). */
  get pid(): number | undefined {
    return this.server?.pid;
  }

  /** Steps started on this connection that have not ended. */
  get running(): number {
    return this.steps.size;
  }

  /**
   * Send a step; resolves once the runner accepted it (with its run
   * directory), rejects with InvalidRequestError (naming the field) when it
   * refused it, or RunnerUnavailableError when it is gone. A signal already
   * aborted rejects with its reason and sends nothing.
   */
  start(request: StepExecutionRequest, options: StartStepOptions = {}): Promise<StepHandle> {
    try {
      options.signal?.throwIfAborted();
      const unavailable = this.unavailable();
      if (unavailable) throw unavailable;
      const eventBuffer = options.eventBuffer ?? DEFAULT_EVENT_BUFFER;
      if (!Number.isSafeInteger(eventBuffer) || eventBuffer < 0) {
        throw new RangeError(`eventBuffer must be a whole number ≥ 0, not ${eventBuffer}`);
      }
      return this.send(serializeRequest(request), eventBuffer, options.signal);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private send(body: string, eventBuffer: number, signal: AbortSignal | undefined): Promise<StepHandle> {
    const id = `s${this.nextId++}`;
    let settle!: { resolve(handle: StepHandle): void; reject(error: unknown): void };
    const started = new Promise<StepHandle>((resolve, reject) => (settle = { resolve, reject }));
    this.steps.set(id, { state: "starting", ...settle, eventBuffer, started });
    this.unanswered.push(id);
    this.wire.sendRun(id, body);
    if (signal) {
      // The server reads a connection's messages in order: a cancel sent
      // now reaches the step once it started (or is answered unknown-id).
      this.cancellations.watch(signal, id);
      const forget = () => this.cancellations.forget(signal, id);
      started.then((handle) => handle.result.then(forget, forget), forget);
    }
    return started;
  }

  /**
   * Run a step to its result. An aborted `signal` cancels it: the promise
   * resolves with the result, which says `failed`, reason `interrupted`
   * (a cluster step cancelled before any host started it has no result: it
   * rejects with StepCancelledError).
   */
  async run(request: StepExecutionRequest, options: RunStepOptions = {}): Promise<StepExecutionResult> {
    const onEvent = options.onEvent;
    const step = await this.start(request, {
      ...(options.signal ? { signal: options.signal } : {}),
      // Without a callback nobody reads the events: keep none.
      eventBuffer: onEvent ? DEFAULT_EVENT_BUFFER : 0,
    });
    if (onEvent) {
      for await (const event of step.events) {
        try {
          await onEvent(event);
        } catch (error) {
          // The callback failed: stop the step, let its record be written.
          step.cancel();
          await step.result.catch(() => {});
          throw error;
        }
      }
    }
    return step.result;
  }

  /**
   * Cancel the steps still starting or running, wait for their results
   * (their records are written), close the connection and stop the server
   * this client spawned. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    const ended: Promise<unknown>[] = [];
    for (const [id, pending] of this.steps) {
      this.sendCancel(id);
      const started = pending.state === "starting" ? pending.started : Promise.resolve(pending.handle);
      ended.push(started.then((handle) => handle.result).catch(() => {}));
    }
    await Promise.all(ended);
    this.wire.close();
    await this.server?.stop();
  }

  private sendCancel(id: string): void {
    if (this.steps.has(id)) this.wire.sendCancel(id);
  }

  private unavailable(): RunnerUnavailableError | undefined {
    if (this.lost) return this.lost;
    if (this.closing) return new RunnerUnavailableError("this BaaRunner was closed; start or connect a new one");
    return undefined;
  }

  private receive(message: ServerMessage): void {
    // An error without an id answers a line the server could not read: the
    // oldest run still unanswered (it answers each run before reading on).
    const id = message.id ?? (message.type === "error" ? this.unanswered[0] : undefined);
    const pending = id === undefined ? undefined : this.steps.get(id);
    if (id === undefined || !pending) return; // A late answer to a cancel of a step that ended.
    switch (message.type) {
      case "accepted": {
        if (pending.state !== "starting") return;
        this.answered(id);
        const cancel = () => this.sendCancel(id);
        const { runDir, step, duplicate } = message;
        const handle = new StepHandle(id, runDir, cancel, pending.eventBuffer, step, duplicate ?? false);
        this.steps.set(id, { state: "running", handle });
        pending.resolve(handle);
        return;
      }
      case "event":
        if (pending.state === "running") {
          const { seq, event: entry, host, delivery } = message;
          pending.handle.push({ type: "lifecycle", seq, entry, ...where(host, delivery) });
        }
        return;
      case "output":
        if (pending.state === "running") {
          const { seq, stream, text, host, delivery } = message;
          pending.handle.push({ type: "output", seq, stream, text, ...where(host, delivery) });
        }
        return;
      case "result":
        this.steps.delete(id);
        if (pending.state === "running") pending.handle.finish(message.result);
        return;
      case "error":
        this.failed(id, pending, message.error);
        return;
    }
  }

  private answered(id: string): void {
    const at = this.unanswered.indexOf(id);
    if (at !== -1) this.unanswered.splice(at, 1);
  }

  private failed(id: string, pending: Pending, error: WireError): void {
    // A cancel that crossed the step's end is answered unknown-id: harmless.
    if (error.kind === "unknown-id") return;
    this.steps.delete(id);
    this.answered(id);
    const failure = errorOf(error);
    if (pending.state === "starting") pending.reject(failure);
    else pending.handle.fail(failure);
  }

  /** The connection is gone: every step still waiting learns where its record is. */
  private async disconnected(error: Error | undefined): Promise<void> {
    const closedByUs = this.closing !== undefined;
    // The socket of a server that died closes just before its exit is known.
    if (this.server && !closedByUs) await this.server.exitedWithin(1_000);
    const exit = this.server?.exit;
    const why = closedByUs
      ? "this BaaRunner was closed"
      : exit
        ? `baa-runner serve (pid ${this.server?.pid}) ${exit}`
        : `the connection to baa-runner serve at ${this.socketPath} closed${error ? ` (${error.message})` : ""}`;
    this.lost = new RunnerUnavailableError(`${why}; start or connect a new BaaRunner`);
    for (const [id, pending] of this.steps) {
      if (pending.state === "starting") {
        pending.reject(new RunnerUnavailableError(`${why} before step ${id} was accepted; it may not have run`));
      } else if (pending.handle.clusterStep) {
        const step = pending.handle.clusterStep;
        const message = `${why} while step ${id} (${step}) was queued in the cluster; a serve that stopped cleanly cancelled it, otherwise it may still run there: its answer lands on the cluster's results stream (\`baa-runner submit --nats URL --watch\` with the same request follows it)`;
        pending.handle.fail(new RunnerUnavailableError(message));
      } else {
        const runDir = pending.handle.runDir;
        const message = `${why} while step ${id} was running; its record is in ${runDir} (\`baa-runner recover ${runDir}\` closes an attempt a stopped runner left open)`;
        pending.handle.fail(new RunnerUnavailableError(message, runDir));
      }
    }
    this.steps.clear();
    this.unanswered.length = 0;
  }
}

/** A cluster event's origin, when it has one. */
function where(host: string | undefined, delivery: number | undefined): { host?: string; delivery?: number } {
  return { ...(host !== undefined ? { host } : {}), ...(delivery !== undefined ? { delivery } : {}) };
}

function errorOf(error: WireError): BaaRunnerError {
  switch (error.kind) {
    case "invalid-request":
      return new InvalidRequestError(error.message, error.field ?? undefined, "invalid-request");
    case "invalid-input":
      return new InvalidRequestError(error.message, error.field ?? undefined, "invalid-input");
    case "cancelled":
      return new StepCancelledError(error.message);
    default:
      return new HostError(error.message, error.kind);
  }
}
