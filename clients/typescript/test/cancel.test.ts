// Cancelling a step: by AbortSignal (run and start) and by the handle. The
// step's processes are gone and its record says interrupted.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { StepHandle } from "@baa-runner/client";

import { fileFixture, marker, processesWith, readJson, until } from "./helpers.js";

const fixture = fileFixture();
const { scratch } = fixture;

test("an AbortSignal cancels a running step: its process is gone, its record says interrupted", async () => {
  const tag = marker();
  const controller = new AbortController();
  const running = fixture.runner.run(scratch.shell(`exec sleep ${tag}`), {
    signal: controller.signal,
    onEvent: (event) => {
      if (event.type === "lifecycle" && event.entry.event === "subprocess.started") {
        void until(() => processesWith(tag).length > 0, "the step's sleep").then(() => controller.abort());
      }
    },
  });
  const result = await running;
  assert.equal(result.outcome, "failed");
  assert.equal(result.state.failure?.reason, "interrupted");
  assert.equal(readJson(result.logPaths.statePath).failure.reason, "interrupted");
  assert.equal(readJson(result.logPaths.resultPath).state.failure.reason, "interrupted");
  assert.deepEqual(processesWith(tag), [], "the step's process outlived its cancellation");
});

test("a signal aborted before the step is sent runs nothing", async () => {
  const controller = new AbortController();
  controller.abort(new Error("not today"));
  await assert.rejects(fixture.runner.run(scratch.shell("echo never"), { signal: controller.signal }), /not today/);
  assert.equal(fixture.runner.running, 0);
});

test("a signal aborted while the step is being accepted still cancels it", async () => {
  const tag = marker();
  const controller = new AbortController();
  const starting = fixture.runner.start(scratch.shell(`exec sleep ${tag}`), { signal: controller.signal });
  controller.abort();
  const step: StepHandle = await starting;
  const result = await step.result;
  assert.equal(result.state.failure?.reason, "interrupted");
  assert.deepEqual(processesWith(tag), []);
});

test("handle.cancel() stops the step; its events end and its result says interrupted", async () => {
  const tag = marker();
  const step = await fixture.runner.start(scratch.shell(`echo started; exec sleep ${tag}`));
  for await (const event of step.events) {
    if (event.type === "output" && event.text.includes("started")) {
      await until(() => processesWith(tag).length > 0, "the step's sleep");
      step.cancel();
      step.cancel(); // idempotent
    }
  }
  const result = await step.result;
  assert.equal(result.state.failure?.reason, "interrupted");
  assert.deepEqual(processesWith(tag), []);
});
