// The conductor's calls over a cluster: `BaaRunner.start({ nats })` runs
// `serve --nats`, which queues each step in NATS JetStream for a real
// `baa-runner worker` host; the WorkerExecutor, events, invalid requests
// and cancellation behave as they do locally. Needs the nats-server that
// scripts/test.sh installs ($BAA_NATS_SERVER); says so and skips without it.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";

import type { PreparedStepRun, StepExecutionRequest, WorkerExecutor } from "contracts";
import {
  BaaRunner,
  createWorkerExecutor,
  InvalidRequestError,
  StepCancelledError,
  type StepEvent,
} from "@baa-runner/client";

import { prepare } from "../../../examples/typescript/prepared.js";
import { binary, marker, processesWith, Scratch, until } from "./helpers.js";

const natsServer = process.env["BAA_NATS_SERVER"];
const skip =
  natsServer && existsSync(natsServer)
    ? false
    : "BAA_NATS_SERVER does not name a nats-server binary: run the tests with scripts/test.sh, which installs one";

const scratch = new Scratch();
const children: ChildProcess[] = [];
let runner: BaaRunner | undefined;

/** Spawn `command` and resolve with the first capture of `ready` in its stderr. */
function spawnUntil(command: string, args: string[], ready: RegExp): Promise<string> {
  const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
  children.push(child);
  const seen: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command} did not start: ${seen.join("\n")}`)), 30_000);
    child.once("exit", (code) => reject(new Error(`${command} exited (${code}): ${seen.join("\n")}`)));
    createInterface({ input: child.stderr! }).on("line", (line) => {
      seen.push(line);
      const match = ready.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1] ?? line);
      }
    });
  });
}

before(async () => {
  if (skip) return;
  const store = join(scratch.dir, "jetstream");
  const port = await spawnUntil(
    natsServer!,
    ["-js", "-a", "127.0.0.1", "-p", "-1", "-sd", store],
    /Listening for client connections on [^:]+:(\d+)/,
  );
  const url = `nats://127.0.0.1:${port}`;
  const runsDir = join(scratch.dir, "host-runs");
  mkdirSync(runsDir);
  const config = join(scratch.dir, "worker.toml");
  writeFileSync(
    config,
    `repo-roots = [${JSON.stringify(scratch.repo)}]\n[cluster]\nruns-dir = ${JSON.stringify(runsDir)}\n`,
  );
  await spawnUntil(binary, ["--config", config, "worker", "--nats", url, "--host-name", "ts-host"], / (serving) /);
  runner = await BaaRunner.start({ binary, config: "/dev/null", nats: url });
});

after(async () => {
  await runner?.close();
  for (const child of children) child.kill("SIGTERM");
  await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : undefined)));
  scratch.remove();
});

function cluster(): BaaRunner {
  if (!runner) throw new Error("the cluster starts before the tests");
  return runner;
}

/** The shell request of the seed's own types. */
function request(command: string): StepExecutionRequest {
  const { stepKind: _s, workerKind: _w, ...rest } = scratch.shell(command);
  return { ...rest, stepKind: "shell", workerKind: "shell" };
}

test("the conductor's WorkerExecutor runs a step on a cluster host as it does locally", { skip }, async () => {
  const events: StepEvent[] = [];
  const executor: WorkerExecutor = createWorkerExecutor<PreparedStepRun>(cluster(), {
    onEvent: (event) => events.push(event),
  });
  const outcome = await executor.execute(prepare(request("echo to stdout; echo to stderr >&2; exit 7")));
  assert.equal(outcome.ok, false);
  assert.equal(outcome.outcome, "failed");
  assert.equal(outcome.exitCode, 7);
  assert.deepEqual(outcome.stdout, ["to stdout"]);
  assert.deepEqual(outcome.stderr, ["to stderr"]);
  assert.match(outcome.summary, /exit code 7/);
  // Live events came from the host that ran it, numbered without gaps.
  assert.ok(events.length >= 3, `${events.length} events`);
  assert.ok(events.every((e) => e.host === "ts-host"));
  assert.deepEqual(
    events.map((e) => e.seq),
    events.map((_, i) => i + 1),
  );
});

test("a bad request is refused naming its field, as locally", { skip }, async () => {
  const refused = await cluster().run({ ...request("true"), timeoutSec: -1 }).then(
    () => assert.fail("the cluster accepted timeoutSec -1"),
    (error: unknown) => error,
  );
  assert.ok(refused instanceof InvalidRequestError, String(refused));
  assert.equal(refused.field, "timeoutSec");
});

test("an AbortSignal cancels the step on the host running it", { skip }, async () => {
  const tag = marker();
  const controller = new AbortController();
  const result = await cluster().run(request(`echo working; exec sleep ${tag}`), {
    signal: controller.signal,
    onEvent: (event) => {
      if (event.type === "output" && event.text.includes("working")) {
        void until(() => processesWith(tag).length > 0, "the step's sleep").then(() => controller.abort());
      }
    },
  });
  assert.equal(result.outcome, "failed");
  assert.equal(result.state.failure?.reason, "interrupted");
  assert.deepEqual(processesWith(tag), [], "the step's process outlived its cancellation");
});

test("a step no host serves waits in the queue, and cancelling it there rejects", { skip }, async () => {
  const controller = new AbortController();
  const step = await cluster().start({ ...scratch.shell("true"), workerKind: "kind-no-host-serves" }, {
    signal: controller.signal,
  });
  assert.equal(step.runDir, undefined);
  assert.match(step.clusterStep ?? "", /^task\./);
  controller.abort();
  await assert.rejects(step.result, StepCancelledError);
});
