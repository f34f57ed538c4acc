// BaaRunner: steps over one connection to `baa-runner serve`, either a child
// this client spawned or a server the operator runs. Routes the server's
// messages to each step by id and turns a lost server into errors that name
// where each step's record is.

import { BaaRunnerError, HostError, InvalidRequestError, RunnerUnavailableError } from "./errors.js";
import type { StepExecutionRequest, StepExecutionResult } from "./generated/contracts.js";
import { Wire, type ServerMessage, type WireError } from "./protocol.js";
import { ServerProcess, type ServeOptions } from "./server.js";
import { StepHandle, type StepEvent } from "./step.js";

/** Largest request the runner accepts, serialized (its `MAX_REQUEST_BYTES`). */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;

export interface StartStepOptions {
  /** Cancels the step when aborted (its result then says `interrupted`). */
  signal?: AbortSignal;
  /** Events a handle keeps for a reader that has not caught up (default 4,096). */
  eventBuffer?: number;
}

export interface RunStepOptions {
  /** Cancels the step when aborted; the promise then resolves with its `interrupted` result. */
  signal?: AbortSignal;
  /** Called with each live event, in order. If it throws, the step is cancelled and `run` rejects with that error. */
  onEvent?: (event: StepEvent) => void;
}

/** A step sent but not yet accepted, or accepted and running. */
type Pending =
  | { state: "starting"; resolve(handle: StepHandle): void; reject(error: unknown): void; options: StartStepOptions }
  | { state: "running"; handle: StepHandle };

/**
 * A connection to a baa-runner: `BaaRunner.start()` spawns `baa-runner serve`
 * as a child, `BaaRunner.connect(socket)` attaches to a running one. Steps
 * run concurrently; `close()` cancels those still running, waits for their
 * records and stops the child.
 */
export class BaaRunner {
  private readonly steps = new Map<string, Pending>();
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
      await server.stop();
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
   * refused it, or RunnerUnavailableError when it is gone.
   */
  start(request: StepExecutionRequest, options: StartStepOptions = {}): Promise<StepHandle> {
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    const unavailable = this.unavailable();
    if (unavailable) return Promise.reject(unavailable);
    let body: string;
    try {
      body = JSON.stringify(request);
    } catch (error) {
      return Promise.reject(new InvalidRequestError(`the request is not JSON: ${String(error)}`, "(request)"));
    }
    if (typeof request !== "object" || request === null || Array.isArray(request)) {
      return Promise.reject(new InvalidRequestError("the request must be a JSON object", "(request)"));
    }
    if (Buffer.byteLength(body) > MAX_REQUEST_BYTES) {
      const message = `the request is larger than ${MAX_REQUEST_BYTES} bytes; shorten its long fields (promptSummary, command)`;
      return Promise.reject(new InvalidRequestError(message, "(request)"));
    }
    const id = `s${this.nextId++}`;
    const started = new Promise<StepHandle>((resolve, reject) =>
      this.steps.set(id, { state: "starting", resolve, reject, options }),
    );
    this.wire.send({ op: "run", id, request });
    const signal = options.signal;
    if (signal) {
      // The server reads a connection's messages in order: a cancel sent
      // now reaches the step once it started (or is answered unknown-id).
      const abort = () => this.wire.send({ op: "cancel", id });
      signal.addEventListener("abort", abort, { once: true });
      const forget = () => signal.removeEventListener("abort", abort);
      started.then((handle) => handle.result.then(forget, forget), forget);
    }
    return started;
  }

  /**
   * Run a step to its result. An aborted `signal` cancels it: the promise
   * resolves with the result, which says `failed`, reason `interrupted`.
   */
  async run(request: StepExecutionRequest, options: RunStepOptions = {}): Promise<StepExecutionResult> {
    const startOptions: StartStepOptions = options.signal ? { signal: options.signal } : {};
    const step = await this.start(request, startOptions);
    const onEvent = options.onEvent;
    if (onEvent) {
      try {
        for await (const event of step.events) onEvent(event);
      } catch (error) {
        if (error instanceof BaaRunnerError) throw error;
        // The callback failed: stop the step, let its record be written.
        step.cancel();
        await step.result.catch(() => {});
        throw error;
      }
    }
    return step.result;
  }

  /**
   * Cancel the steps still running, wait for their results (their records
   * are written), close the connection and stop the server this client
   * spawned. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    const results: Promise<unknown>[] = [];
    for (const [id, pending] of this.steps) {
      this.wire.send({ op: "cancel", id });
      if (pending.state === "running") results.push(pending.handle.result.catch(() => {}));
    }
    await Promise.all(results);
    this.wire.close();
    await this.server?.stop();
  }

  private unavailable(): RunnerUnavailableError | undefined {
    if (this.lost) return this.lost;
    if (this.closing) return new RunnerUnavailableError("this BaaRunner was closed; start or connect a new one");
    return undefined;
  }

  private receive(message: ServerMessage): void {
    if (message.id === null) {
      // An error about no step: our own message was malformed (a client bug).
      process.emitWarning(`baa-runner serve: ${message.type === "error" ? message.error.message : "?"}`);
      return;
    }
    const pending = this.steps.get(message.id);
    if (!pending) return; // A late answer to a cancel of a step that ended.
    switch (message.type) {
      case "accepted": {
        if (pending.state !== "starting") return;
        const cancel = () => this.wire.send({ op: "cancel", id: message.id });
        const handle = new StepHandle(message.id, message.runDir, cancel, pending.options.eventBuffer);
        this.steps.set(message.id, { state: "running", handle });
        pending.resolve(handle);
        return;
      }
      case "event":
        if (pending.state === "running") {
          pending.handle.push({ type: "lifecycle", seq: message.seq, entry: message.event });
        }
        return;
      case "output":
        if (pending.state === "running") {
          const { seq, stream, text } = message;
          pending.handle.push({ type: "output", seq, stream, text });
        }
        return;
      case "result":
        this.steps.delete(message.id);
        if (pending.state === "running") pending.handle.finish(message.result);
        return;
      case "error":
        this.failed(message.id, pending, message.error);
        return;
    }
  }

  private failed(id: string, pending: Pending, error: WireError): void {
    // A cancel that crossed the step's end is answered unknown-id: harmless.
    if (error.kind === "unknown-id") return;
    this.steps.delete(id);
    const failure = errorOf(error);
    if (pending.state === "starting") pending.reject(failure);
    else pending.handle.fail(failure);
  }

  /** The connection is gone: every step still waiting learns where its record is. */
  private async disconnected(error: Error | undefined): Promise<void> {
    // The socket of a server that died closes just before its exit is known.
    if (this.server && !this.closing) await this.server.exitedWithin(1_000);
    const exit = this.server?.exit;
    const why = this.closing
      ? "this BaaRunner was closed"
      : exit
        ? `baa-runner serve (pid ${this.server?.pid}) ${exit}`
        : `the connection to baa-runner serve at ${this.socketPath} closed${error ? ` (${error.message})` : ""}`;
    this.lost = new RunnerUnavailableError(`${why}; start or connect a new BaaRunner`);
    for (const [id, pending] of this.steps) {
      if (pending.state === "starting") {
        pending.reject(new RunnerUnavailableError(`${why} before step ${id} was accepted; it may not have run`));
      } else {
        const runDir = pending.handle.runDir;
        const message = `${why} while step ${id} was running; its record is in ${runDir} (\`baa-runner recover ${runDir}\` closes an attempt a stopped runner left open)`;
        pending.handle.fail(new RunnerUnavailableError(message, runDir));
      }
    }
    this.steps.clear();
  }
}

function errorOf(error: WireError): BaaRunnerError {
  switch (error.kind) {
    case "invalid-request":
      return new InvalidRequestError(error.message, error.field ?? undefined, "invalid-request");
    case "invalid-input":
      return new InvalidRequestError(error.message, error.field ?? undefined, "invalid-input");
    default:
      return new HostError(error.message, error.kind);
  }
}
