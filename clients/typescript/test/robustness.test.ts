// What a conductor does that a runner client must survive: strings cut
// inside a character, callbacks that fail or are async, closing while steps
// are being accepted, many steps on one signal, an event reader that calls
// next() twice, output cut inside characters, a runner that never listens,
// and a conductor that exits without closing.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { BaaRunner, HostError, InvalidRequestError, RunnerUnavailableError, type StepHandle } from "@baa-runner/client";

import { alive, binary, fileFixture, readJson, repoRoot, until } from "./helpers.js";

const fixture = fileFixture();
const { scratch } = fixture;

test("a string cut inside a character is refused before it is sent, naming its field", async () => {
  const cut = "deploy 🎉".slice(0, 8); // half of the emoji's surrogate pair
  await assert.rejects(
    fixture.runner.run(scratch.shell("true", { promptSummary: cut })),
    (e: unknown) => e instanceof InvalidRequestError && e.field === "promptSummary",
  );
  const env = { GOOD: "yes", BAD: cut };
  const request = scratch.shell("true");
  request.runtime = { ...request.runtime, env };
  await assert.rejects(
    fixture.runner.run(request),
    (e: unknown) => e instanceof InvalidRequestError && e.field === "runtime.env.BAD",
  );
  assert.equal(fixture.runner.running, 0);
  assert.equal((await fixture.runner.run(scratch.shell("true"))).outcome, "completed");
});

test("an async onEvent that rejects cancels the step, and run rejects with its error", async () => {
  const failure = new Error("the log store is down");
  await assert.rejects(
    fixture.runner.run(scratch.shell("echo one; sleep 60"), {
      onEvent: async (event) => {
        if (event.type === "output") throw failure;
      },
    }),
    (e: unknown) => e === failure,
  );
  assert.equal(fixture.runner.running, 0, "the step outlived its failed callback");
});

test("an onEvent that throws one of this package's errors still cancels the step", async () => {
  await assert.rejects(
    fixture.runner.run(scratch.shell("echo one; sleep 60"), {
      onEvent: (event) => {
        if (event.type === "output") throw new HostError("mine", "callback");
      },
    }),
    (e: unknown) => e instanceof HostError && e.kind === "callback",
  );
  assert.equal(fixture.runner.running, 0);
});

test("close() while steps are still being accepted waits for their records", async () => {
  const runner = await BaaRunner.start({ binary, config: "/dev/null", onLog: () => {} });
  const starting = Array.from({ length: 5 }, () => runner.start(scratch.shell("sleep 60")));
  await runner.close();
  assert.equal(runner.running, 0);
  for (const start of starting) {
    const step: StepHandle = await start;
    const result = await step.result;
    assert.equal(result.state.failure?.reason, "interrupted");
    assert.equal(readJson(result.logPaths.resultPath).state.failure.reason, "interrupted");
  }
});

test("one AbortSignal shared by many steps cancels them all without piling up listeners", async () => {
  const warnings: string[] = [];
  const onWarning = (warning: Error) => warnings.push(warning.name);
  process.on("warning", onWarning);
  try {
    const controller = new AbortController();
    const runs = Array.from({ length: 12 }, () =>
      fixture.runner.run(scratch.shell("echo up; sleep 60"), { signal: controller.signal }),
    );
    await until(() => fixture.runner.running === 12, "12 steps to start");
    controller.abort();
    const results = await Promise.all(runs);
    assert.ok(results.every((r) => r.state.failure?.reason === "interrupted"));
    assert.deepEqual(warnings.filter((w) => w === "MaxListenersExceededWarning"), []);
  } finally {
    process.off("warning", onWarning);
  }
});

test("two next() calls at once both get events, in order", async () => {
  const step = await fixture.runner.start(scratch.shell("echo a"));
  const events = step.events[Symbol.asyncIterator]();
  const [first, second] = await Promise.all([events.next(), events.next()]);
  assert.equal(first.done, false);
  assert.equal(second.done, false);
  assert.deepEqual([first.value?.seq, second.value?.seq], [1, 2]);
  await step.result;
});

test("output cut inside multi-byte characters arrives whole", async () => {
  // Two million bytes of 2- and 4-byte characters, in chunks cut anywhere.
  const step = await fixture.runner.start(scratch.shell("yes 'é🎉' | head -c 2000000"));
  let text = "";
  for await (const event of step.events) if (event.type === "output") text += event.text;
  const result = await step.result;
  assert.ok(result.logSummary.stdoutChunkCount > 1, "the output came in one chunk; nothing was cut");
  assert.equal(step.missed, 0);
  const replaced = [...text.slice(0, -8)].filter((c) => c === "\uFFFD").length;
  assert.equal(replaced, 0, "characters cut between chunks were replaced");
  assert.ok(text.startsWith("é🎉\né🎉\n"));
});

test("startTimeoutMs bounds the wait for a runner that never listens, which is then killed", { timeout: 20_000 }, async () => {
  // A "runner" that ignores SIGTERM and never says it listens.
  const fake = join(scratch.dir, "never-listens.sh");
  const pidFile = join(scratch.dir, "never-listens.pid");
  writeFileSync(fake, `#!/bin/sh\necho $$ > ${pidFile}\ntrap '' TERM\nwhile :; do sleep 1; done\n`);
  chmodSync(fake, 0o755);
  await assert.rejects(
    BaaRunner.start({ binary: fake, startTimeoutMs: 300 }),
    (e: unknown) => e instanceof RunnerUnavailableError && /did not listen within 300 ms/.test(e.message),
  );
  assert.equal(alive(Number(readFileSync(pidFile, "utf8"))), false);
});

test("serve runs in a process group of its own: the terminal's Ctrl-C goes to the conductor", async () => {
  const pgrp = (pid: number) => readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ")[2];
  const pid = fixture.runner.pid as number;
  assert.equal(pgrp(pid), String(pid));
  assert.notEqual(pgrp(pid), pgrp(process.pid));
});

test("a conductor that exits without close(), or is killed, takes its runner with it", async () => {
  const script = join(scratch.dir, "conductor.mjs");
  const client = join(repoRoot, "clients/typescript/dist/index.js");
  writeFileSync(
    script,
    `import { BaaRunner } from ${JSON.stringify(client)};
const runner = await BaaRunner.start({ binary: ${JSON.stringify(binary)}, config: "/dev/null" });
console.log(JSON.stringify({ pid: runner.pid, socket: runner.socketPath }));
if (process.argv[2] === "exit") process.exit(0);
setInterval(() => {}, 1000);
`,
  );
  const exited = JSON.parse(execFileSync(process.execPath, [script, "exit"], { encoding: "utf8" }));
  await until(() => !alive(exited.pid), "the runner of a conductor that exited to stop");
  assert.equal(existsSync(exited.socket), false, "its socket directory was left behind");

  const killed = spawn(process.execPath, [script, "stay"], { stdio: ["ignore", "pipe", "ignore"] });
  const line = await new Promise<string>((resolve) => killed.stdout.once("data", (d: Buffer) => resolve(String(d))));
  const { pid } = JSON.parse(line);
  assert.ok(alive(pid));
  killed.kill("SIGKILL");
  await until(() => !alive(pid), "the runner of a SIGKILLed conductor to stop (its stdin lifeline)");
});
