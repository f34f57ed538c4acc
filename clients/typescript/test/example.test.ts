// examples/typescript as a reader runs it: installed from its lockfile,
// built, and run against the real runner.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

import { binary, repoRoot } from "./helpers.js";

test("examples/typescript drives three steps through the WorkerExecutor, streams events, cancels one", () => {
  const example = join(repoRoot, "examples/typescript");
  const npm = (...args: string[]) =>
    execFileSync("npm", args, {
      cwd: example,
      env: { ...process.env, BAA_RUNNER_BIN: binary, BAA_CONFIG: "/dev/null" },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 120_000,
    });
  npm("ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error");
  const out = npm("start", "--silent");

  const finished = out.split("\n").filter((line) => /^\w+: (completed|failed|blocked)/.test(line));
  assert.deepEqual(
    finished.map((line) => line.split(" — ")[0]),
    ["test: completed (ok true)", "status: completed (ok true)", "slow: failed (ok false)"],
    out,
  );
  assert.match(out, /^slow: .*interrupted/m);
  for (const id of ["test", "status", "slow"]) {
    assert.match(out, new RegExp(`^${id} +#1 run\\.prepared`, "m"), `${id}'s events were not streamed:\n${out}`);
  }
  assert.match(out, /^slow +#\d+ stdout: working on it/m);
});
