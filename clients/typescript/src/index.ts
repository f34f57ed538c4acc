// @baa-runner/client: drive baa-runner from TypeScript. `BaaRunner` runs
// steps over `baa-runner serve`; `createWorkerExecutor` is the conductor's
// WorkerExecutor backed by it; the contract types come from the runner's
// JSON Schema.

export { BaaRunner } from "./runner.js";
export { MAX_REQUEST_BYTES } from "./request.js";
export type { RunStepOptions, StartStepOptions } from "./runner.js";
export type { ServeOptions } from "./server.js";
export { StepHandle, DEFAULT_EVENT_BUFFER, hostEvent } from "./step.js";
export type { LifecycleEvent, OutputEvent, StepEvent } from "./step.js";
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
export { BaaRunnerError, HostError, InvalidRequestError, RunnerUnavailableError } from "./errors.js";
export type * from "./generated/contracts.js";
