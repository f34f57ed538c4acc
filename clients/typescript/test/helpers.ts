// What the tests share: the real baa-runner binary, a scratch git
// repository per test, requests for it, and a look at the machine's
// processes.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { after, before } from "node:test";

import { BaaRunner, type ServeOptions, type StepExecutionRequest } from "@baa-runner/client";

/** The checkout: the first directory above this file holding clients/typescript. */
function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "clients/typescript/package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the checkout above the tests");
    dir = parent;
  }
  return dir;
}

export const repoRoot = findRepoRoot();

/** The runner under test: $BAA_RUNNER_BIN, else the workspace's debug build. */
export const binary = process.env["BAA_RUNNER_BIN"] ?? join(repoRoot, "target/debug/baa-runner");
if (!existsSync(binary)) {
  throw new Error(`${binary} is missing: build it first (cargo build --bins) or set BAA_RUNNER_BIN`);
}

/** A runner serving with an empty config (no operator config of this machine), its log kept. */
export async function startRunner(options: ServeOptions = {}): Promise<{ runner: BaaRunner; log: string[] }> {
  const log: string[] = [];
  const runner = await BaaRunner.start({
    binary,
    config: "/dev/null",
    onLog: (line) => log.push(line),
    ...options,
  });
  return { runner, log };
}

/** A test file's runner and scratch repository: started before its tests, closed and removed after. */
export function fileFixture(): { readonly runner: BaaRunner; readonly scratch: Scratch } {
  const scratch = new Scratch();
  let runner: BaaRunner | undefined;
  before(async () => {
    ({ runner } = await startRunner());
  });
  after(async () => {
    await runner?.close();
    scratch.remove();
  });
  return {
    scratch,
    get runner(): BaaRunner {
      if (!runner) throw new Error("the file's runner starts before its tests");
      return runner;
    },
  };
}

/** A scratch directory holding a git repository with one commit, and a runs root. */
export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), "baa-client-test-"));
  readonly repo = join(this.dir, "repo");
  readonly runs = join(this.dir, "runs");
  private steps = 0;

  constructor() {
    const git = (...args: string[]) => execFileSync("git", args, { cwd: this.dir, stdio: "pipe" });
    git("init", "-q", "-b", "main", this.repo);
    writeFileSync(join(this.repo, "README.md"), "scratch\n");
    git("-C", this.repo, "add", "README.md");
    git("-C", this.repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init");
  }

  /** A shell step running `command`, with a fresh step id. */
  shell(command: string, overrides: Partial<StepExecutionRequest> = {}): StepExecutionRequest {
    this.steps += 1;
    return {
      taskId: "task",
      stepId: `step-${this.steps}`,
      runId: "run",
      attempt: 1,
      stepName: `shell step ${this.steps}`,
      stepKind: "shell",
      workerKind: "shell",
      timeoutSec: 60,
      runtime: { repoRoot: this.repo, worktreePath: this.repo, runsRootDir: this.runs },
      command,
      ...overrides,
    };
  }

  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Read a JSON file of a run directory. */
export function readJson(path: string): any {
  return JSON.parse(readFileSync(path, "utf8"));
}

/** Pids of the processes whose command line contains `marker` (any user, any namespace). */
export function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmdline.includes(marker) && !cmdline.includes("sh -c")) found.push(Number(entry));
    } catch {
      // It exited meanwhile.
    }
  }
  return found;
}

/** Wait until `condition` holds, polling; fail after `ms`. */
export async function until(condition: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A marker unique to this test run, for a process's command line. */
export function marker(): string {
  return `${Math.floor(Math.random() * 1e6) + 100}.${process.pid}`;
}

/** Whether process `pid` still exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
