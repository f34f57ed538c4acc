// A stand-in for the conductor's own preparation of a step (its log paths,
// log session, metadata, state and checkpoint manager): what it hands its
// WorkerExecutor. baa-runner's executor reads `request` from it and gives
// the whole run to the callbacks.

import { join, resolve } from "node:path";

import type { PreparedStepRun, StepExecutionRequest } from "contracts";

export function prepare(request: StepExecutionRequest): PreparedStepRun {
  if (!request.runtime.runsRootDir) throw new Error("this stand-in needs runtime.runsRootDir");
  const runsRoot = resolve(request.runtime.repoRoot, request.runtime.runsRootDir);
  const runDir = join(runsRoot, request.taskId, request.runId, request.stepId, `attempt-${request.attempt}`);
  const logs = join(runDir, "logs");
  const checkpointsDir = join(runDir, "checkpoints");
  const now = new Date().toISOString();
  return {
    request,
    logPaths: {
      runsRootDir: runsRoot,
      runDir,
      metadataPath: join(runDir, "metadata.json"),
      statePath: join(runDir, "state.json"),
      resultPath: join(runDir, "result.json"),
      logsDir: logs,
      lifecycleLogPath: join(logs, "lifecycle.jsonl"),
      stdoutLogPath: join(logs, "stdout.log"),
      stderrLogPath: join(logs, "stderr.log"),
      checkpointsDir,
      artifactsDir: join(runDir, "artifacts"),
      homeDir: join(runDir, "home"),
    },
    logSession: {
      sessionId: `${request.taskId}/${request.stepId}`,
      runDir,
      startedAt: now,
      status: "open",
      lifecycleLogPath: join(logs, "lifecycle.jsonl"),
      stdoutLogPath: join(logs, "stdout.log"),
      stderrLogPath: join(logs, "stderr.log"),
    },
    metadata: {
      schemaVersion: 1,
      taskId: request.taskId,
      stepId: request.stepId,
      runId: request.runId,
      attempt: request.attempt,
      stepName: request.stepName,
      stepKind: request.stepKind,
      workerKind: request.workerKind,
      timeoutSec: request.timeoutSec,
      repoRoot: request.runtime.repoRoot,
      worktreePath: request.runtime.worktreePath,
      runDir,
      preparedAt: now,
      checkpointMode: request.checkpoint?.mode ?? "disabled",
      host: "conductor",
    },
    state: { status: "prepared", updatedAt: now, lastCheckpointSeq: 0, lifecycleEventCount: 0 },
    checkpoint: {
      checkpointsDir,
      mode: request.checkpoint?.mode ?? "disabled",
      lastCheckpointSeq: 0,
      nextCheckpointSeq: 1,
      supportedTypes: ["summary", "git-diff", "log-tail"],
      records: [],
    },
    checkpointManager: { state: { checkpointsDir } },
  };
}
