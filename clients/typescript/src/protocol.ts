// The wire format of `baa-runner serve`: one JSON object per line each way
// over a Unix socket (README, "serve"). This module frames and parses it;
// it knows nothing of steps.

import { connect, type Socket } from "node:net";
import { StringDecoder } from "node:string_decoder";

import type { StepExecutionResult, WorkerLifecycleLogEntry } from "./generated/contracts.js";

/** What the server sends; every message carries the client's id. */
export type ServerMessage =
  | Accepted
  | ({ id: string; type: "event"; seq: number; event: WorkerLifecycleLogEntry } & Where)
  | ({ id: string; type: "output"; seq: number; stream: "stdout" | "stderr"; text: string } & Where)
  | { id: string; type: "result"; result: StepExecutionResult }
  | { id: string | null; type: "error"; error: WireError };

/**
 * A step the server took: run here (`runDir`), or queued in a cluster by
 * `serve --nats` (`step`, its key there; `duplicate` when the same
 * taskId/stepId/runId/attempt had been submitted before and this follows it).
 */
export interface Accepted {
  id: string;
  type: "accepted";
  runDir?: string;
  step?: string;
  duplicate?: boolean;
}

/** Where a cluster step's event comes from: the host running it, and which delivery. */
export interface Where {
  host?: string;
  delivery?: number;
}

export interface WireError {
  kind: string;
  message: string;
  field?: string | null;
}

/** Handlers of one connection's traffic. */
export interface Receiver {
  message(message: ServerMessage): void;
  /** The connection is gone; `error` says why when it failed. */
  closed(error: Error | undefined): void;
}

/** One connection to a server: sends run and cancel messages, hands each received message to `receiver`. */
export class Wire {
  private readonly decoder = new StringDecoder("utf8");
  private partial: string[] = [];
  private open = true;

  private constructor(
    private readonly socket: Socket,
    private readonly receiver: Receiver,
  ) {
    socket.on("data", (chunk: Buffer) => this.read(this.decoder.write(chunk)));
    let failure: Error | undefined;
    socket.on("error", (error) => (failure = error));
    socket.on("close", () => {
      this.open = false;
      receiver.closed(failure);
    });
  }

  /** Connect to the server listening at `path`. */
  static connect(path: string, receiver: Receiver): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path });
      const failed = (error: Error) => reject(error);
      socket.once("error", failed);
      socket.once("connect", () => {
        socket.off("error", failed);
        resolve(new Wire(socket, receiver));
      });
    });
  }

  /** `{"op":"run","id":…,"request":…}`, the request already serialized (and checked). */
  sendRun(id: string, request: string): void {
    this.write(`{"op":"run","id":${JSON.stringify(id)},"request":${request}}\n`);
  }

  /** `{"op":"cancel","id":…}`. */
  sendCancel(id: string): void {
    this.write(`${JSON.stringify({ op: "cancel", id })}\n`);
  }

  /** Close the connection (the server cancels the steps it started). */
  close(): void {
    this.open = false;
    this.socket.end();
  }

  /** Nothing is written once the connection is closed or closing. */
  private write(line: string): void {
    if (this.open && !this.socket.writableEnded) this.socket.write(line);
  }

  /** Split `text` into lines without rescanning what came before (results are large). */
  private read(text: string): void {
    let start = 0;
    for (let end = text.indexOf("\n"); end !== -1; end = text.indexOf("\n", start)) {
      this.partial.push(text.slice(start, end));
      const line = this.partial.join("");
      this.partial = [];
      start = end + 1;
      if (line.trim() !== "") this.deliver(line);
    }
    if (start < text.length) this.partial.push(text.slice(start));
  }

  private deliver(line: string): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(line) as ServerMessage;
    } catch (error) {
      // Not the server we know: nothing after this can be trusted.
      this.socket.destroy(new Error(`the runner sent a line that is not JSON: ${String(error)}`));
      return;
    }
    this.receiver.message(message);
  }
}
