"""changelog: a third-party worker kind in Python, built with componentize-py.

Writes CHANGELOG.md in the worktree from the repository's recent commits
(`git log`, run through the host's subprocess capability after its policy
check) and keeps a copy as an artifact of the run. `command`, if set, is how
many commits to list (default 20).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import worker_executor as we
from wit_world.imports import checkpoint, events, subprocess, types

DEFAULT_COMMITS = 20


def run(program: str, args: list[str]) -> tuple[subprocess.ExitStatus, str, str]:
    """Run `program` to completion; return its exit status, stdout and stderr."""
    command = subprocess.Command(
        program=program, args=args, cwd=None, env=[], timeout_ms=30_000, stdin=None
    )
    try:
        process = subprocess.spawn(command)
    except Err as e:
        # A refusal is a typed denial (reason, message, what the operator
        # could grant); an I/O failure is a string.
        why = getattr(e.value.value, "message", e.value.value)
        raise Err(we.ExecuteError_Failed(f"cannot run {program}: {why}"))
    out, err = bytearray(), bytearray()
    with process:
        while True:
            chunk = process.next()
            if isinstance(chunk, subprocess.Output_Stdout):
                out += chunk.value
            elif isinstance(chunk, subprocess.Output_Stderr):
                err += chunk.value
            else:
                return chunk.value, out.decode(errors="replace"), err.decode(errors="replace")


def outcome(status: we.Status, summary: str) -> we.WorkerOutcome:
    return we.WorkerOutcome(
        status=status, summary=summary, needs_human=False, exit_code=None, suggested_followup=[]
    )


class WorkerExecutor(exports.WorkerExecutor):
    def describe(self) -> we.WorkerInfo:
        return we.WorkerInfo(
            name="changelog",
            version="0.1.0",
            description="Writes CHANGELOG.md from the repository's recent commits",
            capabilities=we.Capabilities(programs=["git"], env=[], network=False),
        )

    def execute(self, request: types.StepRequest) -> we.WorkerOutcome:
        count = (request.command or "").strip() or str(DEFAULT_COMMITS)
        if not count.isdigit() or int(count) == 0:
            raise Err(we.ExecuteError_InvalidRequest(
                f"`command` is the number of commits to list (a positive integer), not {count!r}"
            ))
        status, log, stderr = run(
            "git", ["log", f"-n{count}", "--date=short", "--format=%h%x09%ad%x09%an%x09%s"]
        )
        if status.code != 0:
            tail = stderr.strip().splitlines()[-1:] or ["no output"]
            return outcome(we.Status.FAILED, f"git log failed: {tail[0]}")

        lines = ["# Changelog", ""]
        entries = [line.split("\t", 3) for line in log.splitlines() if line.count("\t") == 3]
        for short, date, author, subject in entries:
            lines.append(f"- {date} `{short}` {subject} ({author})")
        text = "\n".join(lines) + "\n"
        with open("CHANGELOG.md", "w", encoding="utf-8") as f:
            f.write(text)
        events.emit(events.Level.INFO, "changelog.written", f"{len(entries)} commit(s)", None)
        events.declare_artifact("CHANGELOG.md", "The changelog written to the worktree", text.encode())

        summary = f"CHANGELOG.md lists {len(entries)} commit(s)"
        if entries:
            summary += f", latest `{entries[0][0]}` {entries[0][3]}"
        if request.checkpoints_enabled:
            checkpoint.capture("summary", summary, None)
        return outcome(we.Status.COMPLETED, summary)
