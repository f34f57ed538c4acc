// The README's "From TypeScript" example compiles as a conductor pastes it:
// against this package and the conductor's contracts.ts, with tsc --strict.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { repoRoot } from "./helpers.js";

test("the README's From TypeScript example type-checks with tsc --strict", () => {
  const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
  const section = readme.split("\n## From TypeScript\n")[1]?.split("\n## ")[0] ?? "";
  const example = section.split("```ts\n")[1]?.split("```")[0];
  assert.ok(example, "README.md has no ```ts block under ## From TypeScript");

  // Inside the package, so that "@baa-runner/client" resolves to it.
  const package_ = join(repoRoot, "clients/typescript");
  const dir = join(package_, "dist-test/readme");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "example.ts"), example);
  // The conductor's own module of contracts.ts types.
  writeFileSync(join(dir, "contracts.ts"), 'export type * from "contracts";\n');
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        types: ["node"],
        typeRoots: [join(package_, "node_modules/@types")],
        strict: true,
        exactOptionalPropertyTypes: true,
        noEmit: true,
        paths: { contracts: [join(repoRoot, "tests/contracts/contracts.ts")] },
      },
      files: ["example.ts", join(repoRoot, "tests/contracts/baa-conductor.d.ts")],
    }),
  );
  const tsc = join(package_, "node_modules/.bin/tsc");
  try {
    execFileSync(tsc, ["-p", join(dir, "tsconfig.json")], { encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    const { stdout, stderr } = error as { stdout: string; stderr: string };
    assert.fail(`the README's example does not type-check:\n${stdout}${stderr}`);
  }
});
