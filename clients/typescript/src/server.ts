// `baa-runner serve` as a child process: spawned with a private socket,
// ready once it says it listens, stopped on close() or when this process
// exits (its standard input is a lifeline: `--stop-on-stdin-close`).

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { RunnerUnavailableError } from "./errors.js";

/** How to start `baa-runner serve`. */
export interface ServeOptions {
  /** The `baa-runner` binary: this, else `$BAA_RUNNER_BIN`, else `baa-runner` on the PATH. */
  binary?: string;
  /** The operator config file (`--config`); else the runner's own lookup (`$BAA_CONFIG`, …). */
  config?: string;
  /** Directories of third-party `<kind>.wasm` worker kinds (`--plugins-dir`). */
  pluginsDirs?: string[];
  /**
   * Queue the steps in the cluster at this NATS server (`serve --nats URL`)
   * instead of running them on this machine: the same calls, events and
   * results, from whichever `baa-runner worker` host runs each step.
   */
  nats?: string;
  /** The socket to listen on; else one in a private temporary directory, removed on close. */
  socket?: string;
  /** The server's environment; else this process's. */
  env?: NodeJS.ProcessEnv;
  /** Each line the server writes to stderr; else they go to this process's stderr. */
  onLog?: (line: string) => void;
  /** How long to wait for the server to listen, in milliseconds (default 30,000). */
  startTimeoutMs?: number;
}

const READY = "baa-runner: serving on ";
/** Lines of the server's stderr kept to explain its exit. */
const TAIL_LINES = 20;

/** Servers this process spawned and has not stopped: killed (and their directories removed) when it exits. */
const live = new Set<ServerProcess>();
process.on("exit", () => {
  for (const server of live) server.killNow();
});

/** A running `baa-runner serve` child. */
export class ServerProcess {
  private readonly tail: string[] = [];
  private exitInfo: string | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    readonly socket: string,
    private readonly ownDir: string | undefined,
  ) {
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        this.exitInfo = signal ? `killed by ${signal}` : `exited with code ${code}`;
        resolve();
      }),
    );
    // Failures after start-up (a kill that fails) are not the caller's to catch.
    child.on("error", (error) => this.tail.push(`(${error.message})`));
    live.add(this);
  }

  /** Spawn the server and wait until it listens. */
  static async spawn(options: ServeOptions): Promise<ServerProcess> {
    const ownDir = options.socket ? undefined : mkdtempSync(join(tmpdir(), "baa-runner-"));
    const socket = options.socket ?? join(ownDir as string, "serve.sock");
    const binary = options.binary ?? process.env["BAA_RUNNER_BIN"] ?? "baa-runner";
    const args = [
      ...(options.config ? ["--config", options.config] : []),
      ...(options.pluginsDirs ?? []).flatMap((dir) => ["--plugins-dir", dir]),
      "serve",
      "--socket",
      socket,
      "--stop-on-stdin-close",
      ...(options.nats ? ["--nats", options.nats] : []),
    ];
    const child = spawn(binary, args, {
      env: options.env ?? process.env,
      stdio: ["pipe", "ignore", "pipe"],
      // A process group of its own: a terminal's Ctrl-C reaches the conductor,
      // which decides; its exit still stops the server (stdin is the lifeline).
      detached: true,
    });
    const server = new ServerProcess(child, socket, ownDir);
    try {
      await server.ready(binary, options);
    } catch (error) {
      await server.stop(0);
      throw error;
    }
    return server;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Why the server is gone ("exited with code 1", "killed by SIGKILL"), once it is. */
  get exit(): string | undefined {
    return this.exitInfo;
  }

  /** Resolves once the server exited, or after `ms` if it is still running. */
  async exitedWithin(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
    await Promise.race([this.exited, late]);
    clearTimeout(timer);
  }

  /** The server's last stderr lines. */
  get stderrTail(): string {
    return this.tail.join("\n");
  }

  /** Stop the server (SIGTERM: running steps are cancelled and their records written) and wait. */
  async stop(graceMs = 30_000): Promise<void> {
    live.delete(this);
    if (this.exitInfo === undefined && this.child.exitCode === null) {
      this.child.stdin?.end();
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.ownDir) rmSync(this.ownDir, { recursive: true, force: true });
  }

  /** @internal This process exits: no waiting is possible any more. */
  killNow(): void {
    this.child.kill("SIGTERM");
    if (this.ownDir) rmSync(this.ownDir, { recursive: true, force: true });
  }

  /** Resolve once the server prints that it listens; reject if it exits or takes too long. */
  private ready(binary: string, options: ServeOptions): Promise<void> {
    const log = options.onLog ?? ((line: string) => process.stderr.write(`${line}\n`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => fail(`did not listen within ${options.startTimeoutMs ?? 30_000} ms`),
        options.startTimeoutMs ?? 30_000,
      );
      const fail = (why: string) => {
        clearTimeout(timer);
        const tail = this.stderrTail ? `:\n${this.stderrTail}` : "";
        reject(new RunnerUnavailableError(`${binary} serve ${why}${tail}`));
      };
      this.child.once("error", (error) =>
        fail(`could not be started (${error.message}); set \`binary\` or $BAA_RUNNER_BIN`),
      );
      const lines = createInterface({ input: this.child.stderr!, crlfDelay: Infinity });
      // Its last words may still be in the pipe when its exit is known.
      const drained = new Promise<void>((resolve) => {
        lines.once("close", resolve);
        this.exited.then(() => setTimeout(resolve, 500));
      });
      this.exited.then(() => drained).then(() => fail(this.exitInfo ?? "exited"));
      lines.on("line", (line) => {
        this.tail.push(line);
        if (this.tail.length > TAIL_LINES) this.tail.shift();
        if (line.startsWith(READY)) {
          clearTimeout(timer);
          resolve();
        } else {
          try {
            log(line);
          } catch (error) {
            process.emitWarning(`baa-runner: onLog threw: ${String(error)}`);
          }
        }
      });
    });
  }
}
