// commit-lint: a third-party worker kind in JavaScript, built with componentize-js.
//
// Checks the subjects of the branch's recent commits (`git log`, run through
// the host's subprocess capability after its policy check) against the
// Conventional Commits form `type(scope)!: subject`, at most 72 characters.
// `command`, if set, is how many commits to check (default 20). Offending
// commits fail the step, are listed in an artifact, and a follow-up step to
// reword them is suggested.

import { spawn } from 'baa:worker/subprocess@0.2.0';
import { emit, declareArtifact } from 'baa:worker/events@0.2.0';
import { capture } from 'baa:worker/checkpoint@0.2.0';

const DEFAULT_COMMITS = 20;
const MAX_SUBJECT = 72;
const FORM = /^(feat|fix|docs|style|refactor|perf|test|build|ci|chore|revert)(\([\w./-]+\))?!?: \S/;

// Run `program` to completion: its exit status, stdout and stderr.
function run(program, args) {
  let child;
  try {
    child = spawn({ program, args, cwd: undefined, env: [], timeoutMs: 30000n, stdin: undefined });
  } catch (e) {
    const why = e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    throw { tag: 'failed', val: `cannot run ${program}: ${why}` };
  }
  const decoder = new TextDecoder();
  let stdout = '';
  let stderr = '';
  for (;;) {
    const chunk = child.next();
    if (chunk.tag === 'stdout') stdout += decoder.decode(chunk.val, { stream: true });
    else if (chunk.tag === 'stderr') stderr += decoder.decode(chunk.val);
    else return { status: chunk.val, stdout, stderr };
  }
}

function problems(subject) {
  const found = [];
  if (!FORM.test(subject)) found.push('not `type(scope): subject`');
  if (subject.length > MAX_SUBJECT) found.push(`${subject.length} characters (at most ${MAX_SUBJECT})`);
  return found;
}

function outcome(status, summary, followups = []) {
  return { status, summary, needsHuman: false, exitCode: undefined, suggestedFollowup: followups };
}

export const workerExecutor = {
  describe() {
    return {
      name: 'commit-lint',
      version: '0.1.0',
      description: 'Checks recent commit subjects against Conventional Commits',
      capabilities: { programs: ['git'], env: [], network: false },
    };
  },

  execute(request) {
    const count = (request.command ?? '').trim() || String(DEFAULT_COMMITS);
    if (!/^[1-9][0-9]*$/.test(count)) {
      throw {
        tag: 'invalid-request',
        val: `\`command\` is the number of commits to check (a positive integer), not "${count}"`,
      };
    }
    const { status, stdout, stderr } = run('git', ['log', `-n${count}`, '--format=%h%x09%s']);
    if (status.code !== 0) {
      const last = stderr.trim().split('\n').pop() || 'no output';
      return outcome('failed', `git log failed: ${last}`);
    }
    const commits = stdout
      .split('\n')
      .filter((line) => line.includes('\t'))
      .map((line) => {
        const [hash, subject] = line.split('\t', 2);
        return { hash, subject, problems: problems(subject) };
      });
    const bad = commits.filter((c) => c.problems.length > 0);
    emit('info', 'commit-lint.checked', `${commits.length} commit(s), ${bad.length} to reword`, JSON.stringify({ checked: commits.length, bad: bad.length }));

    const report = ['# Commit subjects', ''];
    for (const c of commits) {
      report.push(`- \`${c.hash}\` ${c.problems.length ? 'REWORD' : 'ok'}: ${c.subject}${c.problems.length ? ` (${c.problems.join('; ')})` : ''}`);
    }
    declareArtifact('commit-lint.md', 'Every checked commit subject and its verdict', new TextEncoder().encode(report.join('\n') + '\n'));

    const summary = bad.length === 0
      ? `all ${commits.length} commit subject(s) follow Conventional Commits`
      : `${bad.length} of ${commits.length} commit subject(s) to reword: ${bad.map((c) => c.hash).join(', ')}`;
    if (request.checkpointsEnabled) capture('summary', summary, undefined);
    if (bad.length === 0) return outcome('completed', summary);
    return outcome('failed', summary, [
      { stepName: 'reword-commits', stepKind: 'codex', reason: `reword ${bad.map((c) => c.hash).join(', ')} as listed in commit-lint.md` },
    ]);
  },
};
