// @baa-runner/client: drive baa-runner from TypeScript. `BaaRunner` runs
// steps over `baa-runner serve`; `createWorkerExecutor` is the conductor's
// WorkerExecutor backed by it; the contract types come from the runner's
// JSON Schema.

export { BaaRunner } from "./runner.js";
export { MAX_REQUEST_BYTES } from "./request.js";
export type { RunStepOptions, StartStepOptions } from "./runner.js";
export type { ServeOptions } from "./server.js";
export { DEFAULT_EVENT_BUFFER, hostEvent } from "./step.js";
// A type only: handles are made by BaaRunner.start.
export type { LifecycleEvent, OutputEvent, StepEvent, StepHandle } from "./step.js";
export { createWorkerExecutor, toWorkerOutcome } from "./outcome.js";
export type {
  BaaWorkerExecutor,
  ConductorFollowup,
  ConductorStepKind,
  ConductorWorkerKind,
  PreparedRun,
  WorkerExecutionOutcome,
  WorkerExecutorOptions,
} from "./outcome.js";
export {
  BaaRunnerError,
  HostError,
  InvalidRequestError,
  RunnerUnavailableError,
  StepCancelledError,
} from "./errors.js";
export type * from "./generated/contracts.js";
