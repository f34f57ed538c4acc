//! The checkpoints the host captures itself: a `git-diff` snapshot of the
//! worktree against the plan's base ref (staged, unstaged, new, deleted and
//! binary files alike), a `log-tail` of stdout/stderr, and a `summary`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::bounds::cut;
use crate::capabilities::subprocess::hostgit::{SAFE_GIT, SAFE_GIT_ENV};
use crate::capabilities::subprocess::policy::resolve_program;
use crate::capabilities::subprocess::{Builtin, HostCommand, Subprocesses};
use crate::contracts::GitDiffSnapshotPlan;
use crate::fsutil::random_name;
use crate::logs::LogSession;

/// Lines of each stream in a `log-tail` checkpoint when `logTailLines` is not set.
pub const DEFAULT_LOG_TAIL_LINES: usize = 50;

/// Bytes of changed paths listed in a `git-diff` record's details (the
/// record is copied into the step's result).
const MAX_LISTED_BYTES: usize = 64 * 1024;
/// Longest path listed whole.
const MAX_LISTED_PATH: usize = 1024;
/// Largest diff stat kept in a record.
const MAX_STAT_BYTES: usize = 16 * 1024;

/// A captured git diff: the patch (payload) and what it touches (details).
pub struct GitDiff {
    pub patch: Vec<u8>,
    pub details: Value,
    pub summary: String,
}

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The step's deadline (plus its grace) came first.
    #[error("cut short by the step's deadline")]
    CutShort,
    #[error("{0}")]
    Failed(String),
}

/// One snapshot's git commands, run as the step's user inside its
/// confinement until `deadline`.
struct Git<'a> {
    subprocesses: &'a mut Subprocesses,
    program: PathBuf,
    index: Option<String>,
    deadline: Instant,
}

impl Git<'_> {
    async fn run(&mut self, args: &[&str]) -> Result<Vec<u8>, SnapshotError> {
        let mut full: Vec<&str> = SAFE_GIT.to_vec();
        full.extend_from_slice(args);
        let mut env: Vec<(&str, &str)> = SAFE_GIT_ENV.to_vec();
        if let Some(index) = &self.index {
            env.push(("GIT_INDEX_FILE", index));
        }
        let out = self
            .subprocesses
            .run_host(HostCommand {
                program: &self.program,
                builtin: None,
                args: &full,
                env: &env,
                stdin: None,
                deadline: self.deadline,
            })
            .await
            .map_err(|e| match e {
                _ if Instant::now() >= self.deadline => SnapshotError::CutShort,
                e => SnapshotError::Failed(format!("`git {}`: {e}", args.join(" "))),
            })?;
        if out.status.timed_out {
            return Err(SnapshotError::CutShort);
        }
        if out.status.code != Some(0) {
            return Err(SnapshotError::Failed(format!(
                "`git {}` failed: {}",
                args.join(" "),
                cut(String::from_utf8_lossy(&out.stderr).trim(), 4096)
            )));
        }
        Ok(out.stdout)
    }

    /// A builtin file operation, as the step's user.
    async fn builtin(&mut self, op: Builtin) -> Result<(), SnapshotError> {
        let out = self
            .subprocesses
            .run_host(HostCommand::builtin(op, None, self.deadline))
            .await
            .map_err(|e| SnapshotError::Failed(e.to_string()))?;
        match out.status.code {
            Some(0) => Ok(()),
            _ if out.status.timed_out => Err(SnapshotError::CutShort),
            _ => Err(SnapshotError::Failed(cut(
                String::from_utf8_lossy(&out.stderr).trim(),
                4096,
            ))),
        }
    }
}

/// Snapshot the worktree against `plan.base_ref`: the changes are staged
/// into a temporary index (never the repository's own), so new files count
/// and the worktree's index is left as it was. Every command (git, and the
/// copy and removal of the temporary index) runs as the step's user inside
/// its confinement, by `deadline`.
pub async fn git_diff(
    subprocesses: &mut Subprocesses,
    plan: &GitDiffSnapshotPlan,
    deadline: Instant,
) -> Result<GitDiff, SnapshotError> {
    let program = resolve_program("git").map_err(|e| SnapshotError::Failed(e.to_string()))?;
    let scratch = subprocesses.scratch_dir().map_err(|e| {
        if Instant::now() >= deadline {
            SnapshotError::CutShort
        } else {
            SnapshotError::Failed(e.to_string())
        }
    })?;
    let mut git = Git {
        subprocesses,
        program,
        index: None,
        deadline,
    };
    let index_path =
        String::from_utf8_lossy(&git.run(&["rev-parse", "--git-path", "index"]).await?)
            .trim()
            .to_string();
    let real_index = Path::new(&plan.worktree_path).join(index_path);
    let temp_index = scratch.join(format!("baa-snapshot-index-{}", random_name()));
    // Starting from a copy of the real index only saves git re-reading
    // files. The copy is made as the step's user: a link planted at either
    // end can only reach what the step may touch anyway.
    git.builtin(Builtin::CopyFile {
        from: real_index,
        to: temp_index.clone(),
    })
    .await?;
    git.index = Some(temp_index.display().to_string());
    let result = staged_diff(&mut git, plan).await;
    let _ = git.builtin(Builtin::Remove { path: temp_index }).await;
    let (patch, names, stat) = result?;

    // `-z --name-status`: STATUS NUL PATH NUL …
    let fields: Vec<String> = names
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let changed: Vec<&[String]> = fields
        .chunks(2)
        .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
        .collect();
    // The record lists the first files, up to a size; the patch has them all.
    let mut listed_bytes = 0;
    let files: Vec<Value> = changed
        .iter()
        .take_while(|pair| {
            listed_bytes += pair[1].len().min(MAX_LISTED_PATH) + 16;
            listed_bytes <= MAX_LISTED_BYTES
        })
        .map(|pair| json!({ "status": cut(&pair[0], 16), "path": cut(&pair[1], MAX_LISTED_PATH) }))
        .collect();
    let summary = if changed.is_empty() {
        format!("no changes against {}", short(&plan.base_ref))
    } else {
        format!(
            "{} file(s) changed against {}",
            changed.len(),
            short(&plan.base_ref)
        )
    };
    let mut details = json!({ "baseRef": plan.base_ref, "files": files });
    if changed.len() > files.len() {
        details["filesNotListed"] = json!(changed.len() - files.len());
    }
    if let Some(stat) = stat {
        details["stat"] = Value::String(cut(&stat, MAX_STAT_BYTES));
    }
    Ok(GitDiff {
        patch,
        details,
        summary,
    })
}

/// The patch, the `--name-status -z` list and (when planned) the stat of
/// the worktree staged into `git`'s temporary index, against the base ref.
async fn staged_diff(
    git: &mut Git<'_>,
    plan: &GitDiffSnapshotPlan,
) -> Result<(Vec<u8>, Vec<u8>, Option<String>), SnapshotError> {
    git.run(&["add", "-A"]).await?;
    let base = plan.base_ref.as_str();
    let patch = git
        .run(&[
            "diff",
            "--cached",
            "--binary",
            "--no-ext-diff",
            "--no-textconv",
            "--no-color",
            base,
            "--",
        ])
        .await?;
    let names = git
        .run(&[
            "diff",
            "--cached",
            "--name-status",
            "--no-renames",
            "-z",
            base,
            "--",
        ])
        .await?;
    let stat = if plan.include_stat {
        let stat = git
            .run(&["diff", "--cached", "--stat", "--no-color", base, "--"])
            .await?;
        Some(String::from_utf8_lossy(&stat).into_owned())
    } else {
        None
    };
    Ok((patch, names, stat))
}

fn short(rev: &str) -> &str {
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        &rev[..12]
    } else {
        rev
    }
}

/// The `log-tail` payload: the last `lines` lines of stdout and stderr.
pub fn log_tail(logs: &LogSession, lines: usize) -> (Vec<u8>, Value) {
    let (stdout, stderr) = logs.tail_lines(lines);
    let details =
        json!({ "lines": lines, "stdoutLines": stdout.len(), "stderrLines": stderr.len() });
    let payload = serde_json::to_vec_pretty(&json!({ "stdout": stdout, "stderr": stderr }))
        .unwrap_or_default();
    (payload, details)
}
