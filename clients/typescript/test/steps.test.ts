// Steps through the real `baa-runner serve`: each outcome, live events,
// refused requests, and many steps at once on one connection.

import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { hostEvent, InvalidRequestError, type StepEvent } from "@baa-runner/client";

import { fileFixture, readJson, startRunner } from "./helpers.js";

const fixture = fileFixture();
const { scratch } = fixture;

test("a completed step resolves with its StepExecutionResult, as recorded", async () => {
  const result = await fixture.runner.run(scratch.shell("echo hello from the step"));
  assert.equal(result.outcome, "completed");
  assert.equal(result.ok, true);
  assert.deepEqual(result.logSummary.stdoutTail, ["hello from the step"]);
  assert.equal(result.state.exitCode, 0);
  // result.json adds its checksum.
  const { checksum, ...recorded } = readJson(result.logPaths.resultPath);
  assert.match(checksum, /^sha256:/);
  assert.deepEqual(recorded, result);
});

test("a failed step resolves with outcome failed and its exit code", async () => {
  const result = await fixture.runner.run(scratch.shell("echo broken >&2; exit 3"));
  assert.equal(result.outcome, "failed");
  assert.equal(result.ok, false);
  assert.equal(result.state.exitCode, 3);
  assert.deepEqual(result.logSummary.stderrTail, ["broken"]);
  assert.equal(result.state.failure?.reason, "worker-failed");
});

test("a step of a kind asking for more than the operator granted is blocked, with what to grant", async () => {
  const config = join(scratch.dir, "narrow.toml");
  writeFileSync(config, '[kinds.shell]\nreplace = true\nprograms = ["true"]\n');
  const narrow = await startRunner({ config });
  try {
    const result = await narrow.runner.run(scratch.shell("echo never runs"));
    assert.equal(result.outcome, "blocked");
    assert.equal(result.blocked, true);
    assert.equal(result.needsHuman, true);
    assert.equal(result.state.failure?.reason, "policy-denied");
    assert.match(result.suggestedFollowup[0]?.stepName ?? "", /programs = \["sh"\]/);
    assert.equal(result.logSummary.stdoutChunkCount, 0);
  } finally {
    await narrow.runner.close();
  }
});

test("a step past its timeoutSec fails with reason timeout", async () => {
  const result = await fixture.runner.run(scratch.shell("sleep 30", { timeoutSec: 1 }));
  assert.equal(result.outcome, "failed");
  assert.equal(result.state.failure?.reason, "timeout");
  assert.ok(result.durationMs < 30_000, `${result.durationMs} ms`);
});

test("events arrive live, in order, while the step runs", async () => {
  // The step waits for a file the test writes only once it has seen the
  // step's first line: it can finish only if that line arrived live.
  const go = join(scratch.repo, "go");
  const request = scratch.shell(
    'echo first; while [ ! -e go ]; do sleep 0.05; done; echo second',
    { timeoutSec: 30 },
  );
  const step = await fixture.runner.start(request);
  const seen: StepEvent[] = [];
  for await (const event of step.events) {
    seen.push(event);
    if (event.type === "output" && event.text.includes("first")) {
      assert.equal(step.finished, false);
      writeFileSync(go, "");
    }
  }
  const result = await step.result;
  assert.equal(result.outcome, "completed", result.summary);
  assert.ok(existsSync(go));

  const seqs = seen.map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "numbered 1, 2, 3, … without gaps");
  assert.equal(step.missed, 0);
  const names = seen.flatMap((e) => (e.type === "lifecycle" ? [e.entry.event] : []));
  assert.equal(names[0], "run.prepared");
  assert.ok(names.indexOf("step.started") < names.indexOf("subprocess.started"));
  assert.equal(names.at(-1), "step.finished");
  const last = seen.at(-1);
  const finished = last?.type === "lifecycle" ? hostEvent(last.entry) : undefined;
  assert.ok(finished?.event === "step.finished");
  assert.equal(finished.data.outcome, "completed");
  assert.equal(finished.data.exitCode, 0);
  const output = seen.flatMap((e) => (e.type === "output" ? [e.text] : [])).join("");
  assert.equal(output, "first\nsecond\n");
  // The live view is the record's: the same lifecycle entries, in order.
  assert.deepEqual(
    seen.flatMap((e) => (e.type === "lifecycle" ? [e.entry] : [])),
    result.lifecycleEvents,
  );
});

test("an invalid request is refused, naming its field", async () => {
  const missing = join(scratch.dir, "no-such-worktree");
  const request = scratch.shell("true");
  request.runtime = { ...request.runtime, worktreePath: missing };
  const refused = await fixture.runner.start(request).then(
    () => assert.fail("the runner accepted a missing worktree"),
    (error: unknown) => error,
  );
  assert.ok(refused instanceof InvalidRequestError, String(refused));
  assert.equal(refused.field, "runtime.worktreePath");
  assert.match(refused.message, /no-such-worktree/);

  const { taskId: _, ...withoutTask } = scratch.shell("true");
  await assert.rejects(
    fixture.runner.run(withoutTask as never),
    (error: unknown) => error instanceof InvalidRequestError && error.field === "taskId",
  );
  // The connection is still good.
  assert.equal((await fixture.runner.run(scratch.shell("true"))).outcome, "completed");
});

test("twenty steps run concurrently on one connection, each with its own result", async () => {
  const requests = Array.from({ length: 20 }, (_, i) => scratch.shell(`echo concurrent-${i}`));
  const results = await Promise.all(requests.map((request) => fixture.runner.run(request)));
  results.forEach((result, i) => {
    assert.equal(result.outcome, "completed", result.summary);
    assert.equal(result.stepId, requests[i]?.stepId);
    assert.deepEqual(result.logSummary.stdoutTail, [`concurrent-${i}`]);
  });
  assert.equal(new Set(results.map((r) => r.logPaths.runDir)).size, 20);
  assert.equal(fixture.runner.running, 0);
});
