//! The worktree's changes as an artifact (`codex.diff`) after the turn:
//! tracked and new files against the commit the step started at, through
//! a scratch index so the repository's own index is left alone.

use baa_worker_sdk::*;

/// Largest diff declared whole; a larger one is left to the host's
/// git-diff checkpoint.
const MAX_DIFF_BYTES: usize = 8 * 1024 * 1024;

/// The commit the worktree is at, if it has one.
pub fn head() -> Option<String> {
    let done = run(&Command::new(
        "git",
        ["rev-parse", "--verify", "-q", "HEAD"],
    ))
    .ok()?;
    let head = done.stdout_text().trim().to_string();
    (done.success() && !head.is_empty()).then_some(head)
}

/// Declare the changes since `base` as the `codex.diff` artifact; returns
/// the number of bytes declared (0 when nothing changed).
pub fn declare(base: &str) -> usize {
    match changes(base) {
        Ok(diff) if diff.is_empty() => 0,
        Ok(diff) if diff.len() > MAX_DIFF_BYTES => {
            emit(
                Level::Warn,
                "codex.diff",
                &format!(
                    "the diff is {} bytes: see the git-diff checkpoint instead",
                    diff.len()
                ),
                None,
            );
            0
        }
        Ok(diff) => match declare_artifact(
            "codex.diff",
            "the worktree's changes against the commit the step started at",
            &diff,
        ) {
            Ok(_) => diff.len(),
            Err(e) => {
                emit(
                    Level::Warn,
                    "codex.diff",
                    &format!("could not store the diff: {e:?}"),
                    None,
                );
                0
            }
        },
        Err(why) => {
            emit(Level::Warn, "codex.diff", &format!("no diff: {why}"), None);
            0
        }
    }
}

fn changes(base: &str) -> Result<Vec<u8>, String> {
    let index = scratch_file("codex-diff.index", b"").map_err(|e| describe_spawn_error(&e))?;
    let git = |args: &[&str]| -> Result<Finished, String> {
        let done = run(&Command::new("git", args.iter().copied()).env("GIT_INDEX_FILE", &index))
            .map_err(|e| describe_spawn_error(&e))?;
        if done.success() {
            Ok(done)
        } else {
            Err(format!(
                "git {}: {}",
                args.join(" "),
                done.stderr_text().trim()
            ))
        }
    };
    git(&["read-tree", base])?;
    git(&["add", "-A"])?;
    let diff = git(&[
        "diff",
        "--cached",
        "--binary",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        base,
    ])?;
    Ok(diff.stdout)
}
