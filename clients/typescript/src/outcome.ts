// The conductor's WorkerExecutor, backed by a BaaRunner: `execute(run)` runs
// `run.request` and answers the WorkerExecutionOutcome the conductor's
// contracts.ts declares, mapped from the runner's StepExecutionResult.

import type {
  StepArtifact,
  StepExecutionOutcome,
  StepExecutionRequest,
  StepExecutionResult,
  SuggestedFollowup,
} from "./generated/contracts.js";
import type { BaaRunner } from "./runner.js";
import type { StepEvent } from "./step.js";

/** The conductor's worker kinds (contracts.ts `WorkerKind`); the runner also runs third-party ones. */
export type ConductorWorkerKind = "codex" | "shell" | "git";
/** The step kinds the conductor schedules (contracts.ts `StepKind`). */
export type ConductorStepKind = ConductorWorkerKind | "planner" | "review" | "finalize";

const CONDUCTOR_STEP_KINDS: readonly string[] = ["codex", "shell", "git", "planner", "review", "finalize"];

/** A follow-up step the conductor can schedule (contracts.ts `SuggestedFollowup`). */
export interface ConductorFollowup {
  stepName: string;
  stepKind: ConductorStepKind;
  reason: string;
}

/** What a worker reports to the conductor: contracts.ts `WorkerExecutionOutcome`, exactly. */
export interface WorkerExecutionOutcome {
  ok: boolean;
  outcome: StepExecutionOutcome;
  summary: string;
  needsHuman?: boolean;
  blocked?: boolean;
  stdout?: string[];
  stderr?: string[];
  artifacts?: StepArtifact[];
  suggestedFollowup?: ConductorFollowup[];
  exitCode?: number;
}

/** The part of the conductor's PreparedStepRun the executor reads. */
export interface PreparedRun {
  request: StepExecutionRequest;
}

export interface WorkerExecutorOptions<Run extends PreparedRun> {
  /**
   * Each live event of a run, in order (awaited when it returns a promise):
   * forward it into the conductor's log session. If it throws or rejects,
   * the run is cancelled and `execute` rejects with that error.
   */
  onEvent?: (event: StepEvent, run: Run) => unknown;
  /** The full StepExecutionResult of each run (its record, metrics, checkpoints). */
  onResult?: (result: StepExecutionResult, run: Run) => void;
  /**
   * Cancels runs when aborted (their outcomes say interrupted): one signal
   * for every run of this executor, or a run's own signal. A run whose
   * signal is already aborted is not sent: `execute` rejects with the
   * signal's reason. A run queued in a cluster (`serve --nats`) that no
   * host had started has no outcome: `execute` rejects with
   * StepCancelledError.
   */
  signal?: AbortSignal | ((run: Run) => AbortSignal | undefined);
}

/** An object satisfying the conductor's `WorkerExecutor` interface. */
export interface BaaWorkerExecutor<Run extends PreparedRun = PreparedRun> {
  execute(run: Run): Promise<WorkerExecutionOutcome>;
}

/**
 * The conductor's `WorkerExecutor`, backed by `runner`. Pass the conductor's
 * `PreparedStepRun` as `Run` so callbacks see it whole:
 * `const executor: WorkerExecutor = createWorkerExecutor<PreparedStepRun>(runner, { onEvent })`.
 */
export function createWorkerExecutor<Run extends PreparedRun = PreparedRun>(
  runner: BaaRunner,
  options: WorkerExecutorOptions<Run> = {},
): BaaWorkerExecutor<Run> {
  return {
    async execute(run: Run): Promise<WorkerExecutionOutcome> {
      const onEvent = options.onEvent;
      const signal = typeof options.signal === "function" ? options.signal(run) : options.signal;
      const result = await runner.run(run.request, {
        ...(signal ? { signal } : {}),
        ...(onEvent ? { onEvent: (event: StepEvent) => onEvent(event, run) } : {}),
      });
      options.onResult?.(result, run);
      return toWorkerOutcome(result);
    },
  };
}

/**
 * The WorkerExecutionOutcome of a StepExecutionResult: its verdict, output
 * tails, artifacts, follow-ups and exit code. A follow-up of a step kind the
 * conductor does not schedule (a third-party kind's suggestion) becomes a
 * `review` step whose reason names the suggested kind.
 */
export function toWorkerOutcome(result: StepExecutionResult): WorkerExecutionOutcome {
  const outcome: WorkerExecutionOutcome = {
    ok: result.ok,
    outcome: result.outcome,
    summary: result.summary,
    needsHuman: result.needsHuman,
    blocked: result.blocked,
    stdout: result.logSummary.stdoutTail,
    stderr: result.logSummary.stderrTail,
    artifacts: result.artifacts,
    suggestedFollowup: result.suggestedFollowup.map(forConductor),
  };
  if (result.state.exitCode !== undefined) outcome.exitCode = result.state.exitCode;
  return outcome;
}

function forConductor(followup: SuggestedFollowup): ConductorFollowup {
  const { stepName, stepKind, reason } = followup;
  if (isConductorStepKind(stepKind)) return { stepName, stepKind, reason };
  return { stepName, stepKind: "review", reason: `${reason} (suggested as a \`${stepKind}\` step)` };
}

function isConductorStepKind(kind: string): kind is ConductorStepKind {
  return CONDUCTOR_STEP_KINDS.includes(kind);
}
