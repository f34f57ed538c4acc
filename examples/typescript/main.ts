// Three steps at once through the conductor's own WorkerExecutor interface,
// backed by baa-runner: each step's events stream live, and the slow one is
// cancelled at its first line of output.
//
//   BAA_RUNNER_BIN=../../target/debug/baa-runner npm start

import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { BaaRunner, createWorkerExecutor, type StepEvent } from "@baa-runner/client";
import type { PreparedStepRun, StepExecutionRequest, WorkerExecutor } from "contracts";

import { prepare } from "./prepared.js";

// A demo repository with an uncommitted change.
const dir = mkdtempSync(join(tmpdir(), "baa-ts-example-"));
const repo = join(dir, "repo");
execFileSync("git", ["init", "-q", "-b", "main", repo]);
execFileSync("git", ["-C", repo, "-c", "user.name=demo", "-c", "user.email=demo@example.com", "commit", "-q", "--allow-empty", "-m", "init"]);
writeFileSync(join(repo, "notes.txt"), "work in progress\n");

function step(stepId: string, workerKind: "shell" | "git", command: string): StepExecutionRequest {
  return {
    taskId: "demo",
    stepId,
    runId: "run-1",
    attempt: 1,
    stepName: stepId,
    stepKind: workerKind,
    workerKind,
    timeoutSec: 60,
    runtime: { repoRoot: repo, worktreePath: repo, runsRootDir: join(dir, "runs") },
    command,
  };
}

const runner = await BaaRunner.start(); // spawns `baa-runner serve` ($BAA_RUNNER_BIN, else the PATH's)
const cancels = new Map<string, AbortController>();

function show(event: StepEvent, run: PreparedStepRun): void {
  const id = run.request.stepId.padEnd(6);
  if (event.type === "output") {
    for (const line of event.text.trimEnd().split("\n")) console.log(`${id} #${event.seq} ${event.stream}: ${line}`);
    // Cancel the slow step as soon as it says anything.
    cancels.get(run.request.stepId)?.abort();
  } else {
    console.log(`${id} #${event.seq} ${event.entry.event}: ${event.entry.message}`);
  }
}

const executor: WorkerExecutor = createWorkerExecutor<PreparedStepRun>(runner, {
  onEvent: show, // a conductor appends these to run.logSession
  signal: (run) => cancels.get(run.request.stepId)?.signal,
});

cancels.set("slow", new AbortController());
const runs = [
  prepare(step("test", "shell", "ls && echo all good")),
  prepare(step("status", "git", "status")),
  prepare(step("slow", "shell", "echo working on it; sleep 60")),
];
try {
  const outcomes = await Promise.all(runs.map((run) => executor.execute(run)));
  console.log("");
  runs.forEach((run, i) => {
    const outcome = outcomes[i]!;
    console.log(`${run.request.stepId}: ${outcome.outcome} (ok ${outcome.ok}) — ${outcome.summary.split("\n")[0]}`);
  });
} finally {
  await runner.close();
}
