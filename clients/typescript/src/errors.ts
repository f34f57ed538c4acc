// The errors the client rejects with: a request the runner refused (naming
// its field), a runner that is gone (naming the run directory that holds a
// step's record), and anything else the runner reported.

/** Base class of every error this package throws. */
export class BaaRunnerError extends Error {
  override name = "BaaRunnerError";
}

/**
 * The runner refused the request before running it. `field` is the path of
 * the offending field (`runtime.worktreePath`, `timeoutSec`, …) when the
 * request itself was wrong; it is undefined when the input around it was
 * (an unknown worker kind, a plugin or config the runner cannot use).
 */
export class InvalidRequestError extends BaaRunnerError {
  override name = "InvalidRequestError";
  constructor(
    message: string,
    readonly field: string | undefined,
    /** The runner's error kind: `invalid-request` or `invalid-input`. */
    readonly kind: "invalid-request" | "invalid-input" = "invalid-request",
  ) {
    super(message);
  }
}

/**
 * The runner is gone: `baa-runner serve` exited or the socket closed (or
 * this client was closed). A step that was running rejects with it; its
 * record is in `runDir` (`baa-runner recover <runDir>` closes an attempt a
 * stopped host left open).
 */
export class RunnerUnavailableError extends BaaRunnerError {
  override name = "RunnerUnavailableError";
  constructor(
    message: string,
    readonly runDir?: string,
  ) {
    super(message);
  }
}

/**
 * The step was cancelled before anything ran it: a step `serve --nats`
 * queued in a cluster and no host had started. There is no result.
 */
export class StepCancelledError extends BaaRunnerError {
  override name = "StepCancelledError";
}

/** The runner failed for a reason of its own (`host-error`, a protocol error). */
export class HostError extends BaaRunnerError {
  override name = "HostError";
  constructor(
    message: string,
    /** The runner's error kind (`host-error`, `invalid-message`, …). */
    readonly kind: string,
  ) {
    super(message);
  }
}
