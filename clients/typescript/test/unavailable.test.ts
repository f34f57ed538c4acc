// The runner's process: started and stopped with the client, attached to
// when the operator runs it, and lost mid-step without taking the
// conductor down.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, test } from "node:test";

import { BaaRunner, RunnerUnavailableError } from "@baa-runner/client";

import { alive, binary, marker, processesWith, readJson, Scratch, startRunner, until } from "./helpers.js";

const scratch = new Scratch();

after(() => scratch.remove());

test("serve killed mid-step: the step rejects with RunnerUnavailableError naming its run directory", async () => {
  const { runner } = await startRunner();
  const pid = runner.pid;
  assert.ok(pid !== undefined);
  const tag = marker();
  const step = await runner.start(scratch.shell(`echo started; exec sleep ${tag}`));
  for await (const event of step.events) {
    if (event.type === "output" && event.text.includes("started")) break;
  }
  await until(() => processesWith(tag).length > 0, "the step's sleep");
  process.kill(pid, "SIGKILL");

  const error = await step.result.then(
    () => assert.fail("the result arrived from a killed runner"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof RunnerUnavailableError, String(error));
  const runDir = step.runDir;
  assert.ok(runDir, "a step run here has a run directory");
  assert.equal(error.runDir, runDir);
  assert.match(error.message, /killed by SIGKILL/);
  assert.ok(error.message.includes(runDir));
  // What the runner wrote before it died is still there: the record of a step in flight.
  assert.equal(readJson(join(runDir, "state.json")).status, "running");
  // The killed runner's step does not outlive it.
  await until(() => processesWith(tag).length === 0, "the killed runner's step processes to end");

  // This runner is gone for good; a new one works.
  await assert.rejects(runner.run(scratch.shell("true")), RunnerUnavailableError);
  await runner.close();
  const { runner: next } = await startRunner();
  try {
    assert.equal((await next.run(scratch.shell("echo again"))).outcome, "completed");
  } finally {
    await next.close();
  }
});

test("close() cancels running steps, waits for their records, stops serve and removes its socket", async () => {
  const { runner } = await startRunner();
  const pid = runner.pid as number;
  const socketDir = dirname(runner.socketPath);
  const step = await runner.start(scratch.shell(`exec sleep ${marker()}`));
  await runner.close();
  const result = await step.result;
  assert.equal(result.state.failure?.reason, "interrupted");
  assert.equal(readJson(result.logPaths.resultPath).state.failure.reason, "interrupted");
  assert.equal(alive(pid), false, "serve still runs after close()");
  assert.equal(existsSync(socketDir), false);
  await assert.rejects(runner.run(scratch.shell("true")), RunnerUnavailableError);
  await runner.close(); // idempotent
});

test("BaaRunner.connect attaches to a serve the operator runs; closing the client leaves it serving", async () => {
  const socket = join(scratch.dir, "operator.sock");
  const server = spawn(binary, ["--config", "/dev/null", "serve", "--socket", socket], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  try {
    await until(() => existsSync(socket), "the operator's serve to listen");
    const first = await BaaRunner.connect(socket);
    assert.equal(first.pid, undefined);
    assert.equal((await first.run(scratch.shell("echo attached"))).logSummary.stdoutTail[0], "attached");
    await first.close();
    const second = await BaaRunner.connect(socket);
    assert.equal((await second.run(scratch.shell("true"))).outcome, "completed");
    await second.close();
    assert.equal(server.exitCode, null, "the operator's serve stopped with a client");
  } finally {
    server.kill("SIGTERM");
  }
});

test("connect to a socket nobody serves is RunnerUnavailableError", async () => {
  await assert.rejects(
    BaaRunner.connect(join(scratch.dir, "nobody.sock")),
    (e: unknown) => e instanceof RunnerUnavailableError && /nobody\.sock/.test(e.message),
  );
});

test("a binary that is not there is RunnerUnavailableError saying how to point at one", async () => {
  await assert.rejects(
    BaaRunner.start({ binary: join(scratch.dir, "no-such-baa-runner") }),
    (e: unknown) => e instanceof RunnerUnavailableError && /BAA_RUNNER_BIN/.test(e.message),
  );
});

test("serve that cannot start is RunnerUnavailableError with its own words", async () => {
  await assert.rejects(
    BaaRunner.start({ binary, config: join(scratch.dir, "missing.toml") }),
    (e: unknown) => e instanceof RunnerUnavailableError && /missing\.toml/.test(e.message),
  );
});
