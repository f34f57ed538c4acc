// The conductor's WorkerExecutor (contracts.ts, type-checked with
// `tsc --strict`) backed by baa-runner: `execute(run)` as the conductor
// calls it, live events into its log session, the outcome mapped from the
// runner's result.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { PreparedStepRun, StepExecutionRequest, WorkerExecutor, WorkerExecutionOutcome } from "contracts";
import type { LocalRunLogSession } from "@baa-conductor/logging";
import {
  createWorkerExecutor,
  toWorkerOutcome,
  type StepEvent,
  type StepExecutionResult,
} from "@baa-runner/client";

import { prepare } from "../../../examples/typescript/prepared.js";
import { fileFixture } from "./helpers.js";

const fixture = fileFixture();
const { scratch } = fixture;

/** The conductor's log session, with a sink for the events forwarded into it. */
type ConductorLogSession = LocalRunLogSession & { forwarded: StepEvent[] };

/** A PreparedStepRun as the conductor hands one to its executor (examples/typescript's stand-in), its log session collecting what is forwarded. */
function prepared(request: StepExecutionRequest): PreparedStepRun & { logSession: ConductorLogSession } {
  const run = prepare(request);
  return { ...run, logSession: { ...run.logSession, forwarded: [] } };
}

/** The shell request of the seed's own types (its kinds are the built-in three). */
function request(command: string): StepExecutionRequest {
  const { stepKind: _s, workerKind: _w, ...rest } = scratch.shell(command);
  return { ...rest, stepKind: "shell", workerKind: "shell" };
}

test("the WorkerExecutor runs run.request and answers the seed's WorkerExecutionOutcome", async () => {
  const results: StepExecutionResult[] = [];
  // Exactly as the conductor declares it: a WorkerExecutor.
  const executor: WorkerExecutor = createWorkerExecutor<PreparedStepRun & { logSession: ConductorLogSession }>(
    fixture.runner,
    {
      onEvent: (event, run) => run.logSession.forwarded.push(event),
      onResult: (result) => results.push(result),
    },
  );
  const run = prepared(request("echo to stdout; echo to stderr >&2; exit 7"));
  const outcome: WorkerExecutionOutcome = await executor.execute(run);

  assert.equal(outcome.ok, false);
  assert.equal(outcome.outcome, "failed");
  assert.equal(outcome.exitCode, 7);
  assert.deepEqual(outcome.stdout, ["to stdout"]);
  assert.deepEqual(outcome.stderr, ["to stderr"]);
  assert.equal(outcome.blocked, false);
  assert.equal(outcome.needsHuman, false);
  assert.match(outcome.summary, /exit code 7/);
  assert.ok(outcome.artifacts?.some((a) => a.name === "stdout" && a.kind === "log"));
  assert.deepEqual(outcome.suggestedFollowup, []);

  // Its events went into the conductor's log session, live and in order.
  const result = results[0];
  assert.ok(result);
  assert.equal(result.logPaths.runDir, run.logPaths.runDir);
  const forwarded = run.logSession.forwarded;
  assert.deepEqual(forwarded.map((e) => e.seq), forwarded.map((_, i) => i + 1));
  assert.deepEqual(
    forwarded.flatMap((e) => (e.type === "lifecycle" ? [e.entry] : [])),
    result.lifecycleEvents,
  );
});

test("concurrent executions through one WorkerExecutor, one of them cancelled", async () => {
  const controller = new AbortController();
  const slow: WorkerExecutor = createWorkerExecutor(fixture.runner, { signal: controller.signal });
  const quick: WorkerExecutor = createWorkerExecutor(fixture.runner);
  const cancelled = slow.execute(prepared(request("echo waiting; sleep 60")));
  const done = await Promise.all([1, 2, 3].map((i) => quick.execute(prepared(request(`echo quick ${i}`)))));
  controller.abort();
  assert.deepEqual(done.map((o) => o.stdout), [["quick 1"], ["quick 2"], ["quick 3"]]);
  assert.ok(done.every((o) => o.ok && o.exitCode === 0));
  const stopped = await cancelled;
  assert.equal(stopped.ok, false);
  assert.equal(stopped.outcome, "failed");
  assert.match(stopped.summary, /interrupt|cancel/i);
});

test("a follow-up of a step kind the conductor does not schedule reaches it as a review", async () => {
  const result = await fixture.runner.run(request("true"));
  const outcome = toWorkerOutcome({
    ...result,
    suggestedFollowup: [
      { stepName: "fix lint", stepKind: "lint", reason: "3 warnings" },
      { stepName: "commit", stepKind: "git", reason: "tests pass" },
    ],
  });
  assert.deepEqual(outcome.suggestedFollowup, [
    { stepName: "fix lint", stepKind: "review", reason: "3 warnings (suggested as a `lint` step)" },
    { stepName: "commit", stepKind: "git", reason: "tests pass" },
  ]);
});
