//! The checkpoints the host captures itself: a `git-diff` snapshot of the
//! worktree against the plan's base ref (staged, unstaged, new, deleted and
//! binary files alike), a `log-tail` of stdout/stderr, and a `summary`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::capabilities::subprocess::policy::resolve_program;
use crate::capabilities::subprocess::Subprocesses;
use crate::contracts::GitDiffSnapshotPlan;
use crate::logs::LogSession;

/// How long the host's own git commands of a snapshot may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of each stream in a `log-tail` checkpoint when `logTailLines` is not set.
pub const DEFAULT_LOG_TAIL_LINES: usize = 50;

/// A captured git diff: the patch (payload) and what it touches (details).
pub struct GitDiff {
    pub patch: Vec<u8>,
    pub details: Value,
    pub summary: String,
}

/// Options that keep git from running programs or hooks configured in the
/// (worker-writable) repository while the host snapshots it.
pub const SAFE_GIT: &[&str] = &[
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "--no-pager",
];

async fn git(
    subprocesses: &mut Subprocesses,
    git: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let mut full: Vec<&str> = SAFE_GIT.to_vec();
    full.extend_from_slice(args);
    let (status, stdout, stderr) = subprocesses
        .run_host(git, &full, env, GIT_TIMEOUT)
        .await
        .map_err(|e| format!("{e:?}"))?;
    if status.code != Some(0) {
        return Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&stderr).trim()
        ));
    }
    Ok(stdout)
}

/// Snapshot the worktree against `plan.base_ref`: the changes are staged
/// into a temporary index (never the repository's own), so new files count
/// and the worktree's index is left as it was.
pub async fn git_diff(
    subprocesses: &mut Subprocesses,
    plan: &GitDiffSnapshotPlan,
    scratch: &Path,
) -> Result<GitDiff, String> {
    let git_path = resolve_program("git")?;
    let index_path = String::from_utf8_lossy(
        &git(
            subprocesses,
            &git_path,
            &["rev-parse", "--git-path", "index"],
            &[],
        )
        .await?,
    )
    .trim()
    .to_string();
    let real_index = Path::new(&plan.worktree_path).join(&index_path);
    // Steps on one worktree may share a scratch directory: one name each.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp_index = scratch.join(format!("baa-snapshot-index-{}-{n}", std::process::id()));
    // Starting from a copy of the real index only saves git re-reading
    // files; copy it only when it really lies inside the worktree (a worker
    // may have pointed `.git` anywhere).
    let worktree = Path::new(&plan.worktree_path).canonicalize().ok();
    let inside = match (real_index.canonicalize(), worktree) {
        (Ok(index), Some(worktree)) => index.starts_with(&worktree) && index.is_file(),
        _ => false,
    };
    if inside {
        std::fs::copy(&real_index, &temp_index)
            .map_err(|e| format!("cannot copy the git index: {e}"))?;
    }
    let temp = temp_index.display().to_string();
    let env = [("GIT_INDEX_FILE", temp.as_str())];
    let result = async {
        git(subprocesses, &git_path, &["add", "-A"], &env).await?;
        let base = plan.base_ref.as_str();
        let patch = git(
            subprocesses,
            &git_path,
            &[
                "diff",
                "--cached",
                "--binary",
                "--no-ext-diff",
                "--no-textconv",
                "--no-color",
                base,
                "--",
            ],
            &env,
        )
        .await?;
        let names = git(
            subprocesses,
            &git_path,
            &[
                "diff",
                "--cached",
                "--name-status",
                "--no-renames",
                "-z",
                base,
                "--",
            ],
            &env,
        )
        .await?;
        let stat = if plan.include_stat {
            let stat = git(
                subprocesses,
                &git_path,
                &["diff", "--cached", "--stat", "--no-color", base, "--"],
                &env,
            )
            .await?;
            Some(String::from_utf8_lossy(&stat).into_owned())
        } else {
            None
        };
        Ok::<_, String>((patch, names, stat))
    }
    .await;
    let _ = std::fs::remove_file(&temp_index);
    let (patch, names, stat) = result?;

    // `-z --name-status`: STATUS NUL PATH NUL …
    let fields: Vec<String> = names
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let files: Vec<Value> = fields
        .chunks(2)
        .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
        .map(|pair| json!({ "status": pair[0], "path": pair[1] }))
        .collect();
    let summary = if files.is_empty() {
        format!("no changes against {}", short(&plan.base_ref))
    } else {
        format!(
            "{} file(s) changed against {}",
            files.len(),
            short(&plan.base_ref)
        )
    };
    let mut details = json!({ "baseRef": plan.base_ref, "files": files });
    if let Some(stat) = stat {
        details["stat"] = Value::String(stat);
    }
    Ok(GitDiff {
        patch,
        details,
        summary,
    })
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
