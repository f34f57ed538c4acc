// Type-level proof, checked by `tsc --strict --exactOptionalPropertyTypes`
// (npm test): the types generated from the runner's JSON Schema are the
// conductor's contracts.ts types. The runner's kind names are open (a
// third-party kind is any string) where the conductor's are its own union;
// with those widened to string, each type is assignable to and from its
// contracts.ts counterpart, and the conductor's own values are accepted as
// they are.

import type * as Conductor from "contracts";
import type * as Client from "@baa-runner/client";

/** True when A and B are assignable to each other. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<T extends true> = T;

/** The conductor's types with its kind names widened to any string (as the runner accepts). */
type Open<T> = T extends Conductor.StepKind
  ? string
  : T extends string | number | boolean | null | undefined
    ? T
    : T extends readonly (infer E)[]
    ? Open<E>[]
    : T extends object
      ? { [K in keyof T]: Open<T[K]> }
      : T;

export type Checks = [
  Assert<Same<Open<Conductor.StepExecutionRequest>, Client.StepExecutionRequest>>,
  Assert<Same<Open<Conductor.StepExecutionResult>, Client.StepExecutionResult>>,
  Assert<Same<Open<Conductor.StepCheckpointConfig>, Client.StepCheckpointConfig>>,
  Assert<Same<Open<Conductor.StepExecutionRuntime>, Client.StepExecutionRuntime>>,
  Assert<Same<Open<Conductor.StepCheckpointState>, Client.StepCheckpointState>>,
  Assert<Same<Open<Conductor.StepArtifact>, Client.StepArtifact>>,
  Assert<Same<Open<Conductor.SuggestedFollowup>, Client.SuggestedFollowup>>,
  Assert<Same<Open<Conductor.StepExecutionMetrics>, Client.StepExecutionMetrics>>,
  // What the WorkerExecutor answers is the conductor's own, kinds included.
  Assert<Same<Conductor.WorkerExecutionOutcome, Client.WorkerExecutionOutcome>>,
  Assert<Same<Conductor.SuggestedFollowup, Client.ConductorFollowup>>,
  Assert<Same<Conductor.StepKind, Client.ConductorStepKind>>,
  Assert<Same<Conductor.WorkerKind, Client.ConductorWorkerKind>>,
  Assert<Same<Conductor.StepExecutionOutcome, Client.StepExecutionOutcome>>,
  Assert<Same<Conductor.CheckpointMode, Client.CheckpointMode>>,
  Assert<Same<Conductor.StepArtifactKind, Client.StepArtifactKind>>,
];

// The conductor hands its requests to the client as they are.
export function accepts(request: Conductor.StepExecutionRequest): Client.StepExecutionRequest {
  return request;
}
