// The types `shared/reference/contracts.ts` imports from the conductor's
// `@baa-conductor/logging` and `@baa-conductor/checkpointing` packages, as
// baa-runner writes them (host/src/contracts/{logging,checkpointing}.rs).
// Used by the TypeScript check (tests/tests/all/contracts_ts.rs): the JSON
// the host emits must satisfy contracts.ts with these declarations.

declare module "@baa-conductor/logging" {
  // "contracts" is mapped to shared/reference/contracts.ts by the check's tsconfig.
  import type { CheckpointMode, StepExecutionOutcome, StepKind, WorkerKind } from "contracts";

  export interface LocalRunPaths {
    runsRootDir: string;
    runDir: string;
    metadataPath: string;
    statePath: string;
    resultPath: string;
    logsDir: string;
    lifecycleLogPath: string;
    stdoutLogPath: string;
    stderrLogPath: string;
    checkpointsDir: string;
    artifactsDir: string;
    homeDir: string;
  }

  export interface LocalRunLogSession {
    sessionId: string;
    runDir: string;
    startedAt: string;
    closedAt?: string;
    status: "open" | "closed";
    lifecycleLogPath: string;
    stdoutLogPath: string;
    stderrLogPath: string;
  }

  export interface LocalRunLogSummary {
    lifecycleEventCount: number;
    stdoutChunkCount: number;
    stderrChunkCount: number;
    stdoutBytes: number;
    stderrBytes: number;
    stdoutTail: string[];
    stderrTail: string[];
    stdoutTruncated: boolean;
    stderrTruncated: boolean;
  }

  export interface WorkerLifecycleLogEntry {
    seq: number;
    timestamp: string;
    event: string;
    level: "debug" | "info" | "warn" | "error";
    source: "host" | "worker";
    message: string;
    data?: unknown;
  }

  export type FailureReason =
    | "worker-failed"
    | "timeout"
    | "memory-limit"
    | "output-limit"
    | "disk-limit"
    | "trap"
    | "policy-denied"
    | "invalid-plugin"
    | "invalid-request"
    | "host-error"
    | "interrupted";

  export interface FailureRecord {
    reason: FailureReason;
    message: string;
    trapCode?: string;
  }

  export interface PluginRecord {
    name: string;
    version: string;
    source: string;
    sha256: string;
    compiled?: string;
    instantiateMicros?: number;
  }

  export interface RunMetadata {
    schemaVersion: number;
    taskId: string;
    stepId: string;
    runId: string;
    attempt: number;
    stepName: string;
    stepKind: StepKind;
    workerKind: WorkerKind;
    timeoutSec: number;
    repoRoot: string;
    worktreePath: string;
    runDir: string;
    createdAt?: string;
    preparedAt: string;
    checkpointMode: CheckpointMode;
    host: string;
    promptSummary?: string;
    command?: string;
    plugin?: PluginRecord;
    sandbox?: ConfinementRecord;
    resumedFromSeq?: number;
    outcome?: StepExecutionOutcome;
    failure?: FailureRecord;
    finishedAt?: string;
  }

  /** How a step's subprocesses were confined (`metadata.sandbox`). */
  export interface ConfinementRecord {
    execute: string | string[];
    killGraceMs: number;
    landlock: "enforced" | "required-unavailable" | "unavailable-opted-out";
    landlockAbi: number;
    landlockScopes: boolean;
    landlockTcp: boolean;
    mode: "confined" | "degraded";
    nestedSandbox: boolean;
    network: string | { tcpConnect: number[]; udp: string };
    noNewPrivs: boolean;
    processBound: { max?: number; mode: string };
    readPaths: string[];
    rlimits: {
      addressSpaceMib: number | null;
      core: number;
      cpuSeconds: number | null;
      fileSizeMib: number;
      openFiles: number;
      processes: number | null;
    };
    seccomp: boolean;
    user:
      | { mode: "dedicated"; uidBase: number; uid?: number; gid?: number }
      | { mode: "current"; uid: number };
    worktreeView: "idmapped" | "chown" | "direct";
    writePaths: string[];
  }

  export interface RunStateSnapshot {
    status: "prepared" | "running" | "completed" | "failed" | "blocked" | "interrupted";
    updatedAt: string;
    startedAt?: string;
    finishedAt?: string;
    summary?: string;
    exitCode?: number;
    failure?: FailureRecord;
    lastCheckpointSeq: number;
    lifecycleEventCount: number;
  }
}

declare module "@baa-conductor/checkpointing" {
  export type CheckpointType = "summary" | "git-diff" | "log-tail" | (string & {});

  export interface CheckpointRecord {
    seq: number;
    type: CheckpointType;
    createdAt: string;
    taskId: string;
    stepId: string;
    runId: string;
    attempt: number;
    summary: string;
    path: string;
    payloadPath?: string;
    payloadBytes?: number;
    payloadSha256?: string;
    details?: unknown;
    /** Who captured it: the host (its snapshots) or the worker. */
    source: "host" | "worker";
  }

  export interface CheckpointManagerState {
    checkpointsDir: string;
    resumedFromSeq?: number;
  }

  export interface GitDiffSnapshotPlan {
    baseRef: string;
    includeStat: boolean;
    worktreePath: string;
  }

  /** The conductor's live manager object; baa-runner never emits one. */
  export interface CheckpointManager {
    readonly state: CheckpointManagerState;
  }
}
