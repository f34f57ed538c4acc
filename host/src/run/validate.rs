//! Checks a step request before anything is written, naming the field at
//! fault and what to do about it.

use std::path::{Path, PathBuf};

use crate::capabilities::subprocess::policy::{is_env_name, is_never_passed};
use crate::contracts::StepExecutionRequest;
use crate::error::Error;

/// Longest `command` or `promptSummary` accepted.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Longest step timeout accepted: 7 days.
pub const MAX_TIMEOUT_SEC: f64 = 7.0 * 24.0 * 3600.0;

/// Where a valid request's run records go, resolved.
#[derive(Debug, Clone)]
pub struct ValidPaths {
    pub repo_root: PathBuf,
    pub worktree: PathBuf,
    pub runs_root: PathBuf,
}

/// An id that becomes a directory name: letters, digits, `.`, `_`, `-`;
/// not starting with `.`; at most 128 characters.
/// An id that names a directory: letters, digits, `.`, `_`, `-`, not
/// starting with `.`, 1 to 128 characters.
pub fn check_id(field: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(Error::invalid(field, "must be at most 128 characters"));
    }
    if value.starts_with('.')
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid(
            field,
            format!("`{value}` would not stay inside the runs directory: use letters, digits, `.`, `_` and `-`, not starting with `.`"),
        ));
    }
    Ok(())
}

fn existing_dir(field: &str, value: &str) -> Result<PathBuf, Error> {
    let path = Path::new(value);
    if value.is_empty() || !path.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("`{value}` must be an absolute path"),
        ));
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| Error::invalid(field, format!("`{value}`: {e}")))?;
    if !canonical.is_dir() {
        return Err(Error::invalid(
            field,
            format!("`{value}` is not a directory"),
        ));
    }
    Ok(canonical)
}

/// With `roots` (the operator's `repo-roots`), the step's repository and
/// worktree must lie inside one of them (a root may be one repository, or
/// hold several); `paths` are canonical, so a symlink cannot lead outside.
pub fn within_roots(paths: &ValidPaths, roots: &[PathBuf]) -> Result<(), Error> {
    if roots.is_empty() {
        return Ok(());
    }
    let roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    for (field, path) in [
        ("runtime.repoRoot", &paths.repo_root),
        ("runtime.worktreePath", &paths.worktree),
    ] {
        if !roots.iter().any(|root| path.starts_with(root)) {
            let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            return Err(Error::invalid(
                field,
                format!(
                    "`{}` is outside the directories this host lets steps use (`repo-roots`: {}); use a repository inside one, or ask its operator",
                    path.display(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The default runs root: `$XDG_STATE_HOME/baa-runner/runs`, else
/// `$HOME/.local/state/baa-runner/runs`, else (no home, as a service may
/// run) `/var/lib/baa-runner/runs` for root and the temporary directory's
/// `baa-runner-<uid>/runs` for others. It is outside every worktree, so a
/// worker cannot reach its own records.
pub fn default_runs_root() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("baa-runner/runs");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home).join(".local/state/baa-runner/runs");
    }
    match rustix::process::geteuid().as_raw() {
        0 => PathBuf::from("/var/lib/baa-runner/runs"),
        uid => std::env::temp_dir().join(format!("baa-runner-{uid}/runs")),
    }
}

/// Validate every field of `request`; nothing is written.
pub fn validate(request: &StepExecutionRequest) -> Result<ValidPaths, Error> {
    check_id("taskId", &request.task_id)?;
    check_id("stepId", &request.step_id)?;
    check_id("runId", &request.run_id)?;
    if request.attempt == 0 {
        return Err(Error::invalid("attempt", "attempts are numbered from 1"));
    }
    if request.step_name.trim().is_empty() || request.step_name.len() > 512 {
        return Err(Error::invalid("stepName", "must be 1 to 512 characters"));
    }
    if !(request.timeout_sec.is_finite()
        && request.timeout_sec > 0.0
        && request.timeout_sec <= MAX_TIMEOUT_SEC)
    {
        return Err(Error::invalid(
            "timeoutSec",
            format!(
                "must be a number of seconds above 0 and at most {MAX_TIMEOUT_SEC} (got {})",
                request.timeout_sec
            ),
        ));
    }
    check_texts(request)?;
    if let Some(checkpoint) = &request.checkpoint {
        check_checkpoint(checkpoint)?;
    }
    let runtime = &request.runtime;
    let repo_root = existing_dir("runtime.repoRoot", &runtime.repo_root)?;
    let worktree = existing_dir("runtime.worktreePath", &runtime.worktree_path)?;
    if let Some(env) = &runtime.env {
        check_env(env)?;
    }
    let runs_root = runs_root(runtime.runs_root_dir.as_deref(), &repo_root, &worktree)?;
    Ok(ValidPaths {
        repo_root,
        worktree,
        runs_root,
    })
}

/// `command` and `promptSummary`: bounded, without NUL bytes.
fn check_texts(request: &StepExecutionRequest) -> Result<(), Error> {
    for (field, text) in [
        ("command", &request.command),
        ("promptSummary", &request.prompt_summary),
    ] {
        if let Some(text) = text {
            if text.len() > MAX_TEXT_BYTES {
                return Err(Error::invalid(
                    field,
                    format!("is {} bytes; the limit is {MAX_TEXT_BYTES}", text.len()),
                ));
            }
            if text.contains('\0') {
                return Err(Error::invalid(field, "contains a NUL byte"));
            }
        }
    }
    Ok(())
}

fn check_checkpoint(checkpoint: &crate::contracts::StepCheckpointConfig) -> Result<(), Error> {
    if checkpoint.resume_from_seq == Some(0) {
        return Err(Error::invalid(
            "checkpoint.resumeFromSeq",
            "checkpoints are numbered from 1",
        ));
    }
    if checkpoint.log_tail_lines.is_some_and(|n| n > 10_000) {
        return Err(Error::invalid(
            "checkpoint.logTailLines",
            "must be at most 10000",
        ));
    }
    if let Some(base) = &checkpoint.git_diff_base_ref {
        if base.is_empty()
            || base.starts_with('-')
            || base.contains(char::is_whitespace)
            || base.contains("..")
        {
            return Err(Error::invalid(
                "checkpoint.gitDiffBaseRef",
                format!("`{base}` is not a single git revision"),
            ));
        }
    }
    Ok(())
}

/// `runtime.env`: well-formed names, none that is never passed, no NUL.
fn check_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), Error> {
    for (name, value) in env {
        let field = format!("runtime.env.{name}");
        if !is_env_name(name) {
            return Err(Error::invalid(
                &field,
                "is not a valid environment variable name",
            ));
        }
        if is_never_passed(name) {
            return Err(Error::invalid(&field, "changes how programs load or find their configuration and is never passed to subprocesses; remove it"));
        }
        if value.contains('\0') {
            return Err(Error::invalid(&field, "contains a NUL byte"));
        }
    }
    Ok(())
}

/// Where the step's run directories go (`runtime.runsRootDir`, relative to
/// the repository, or the default), resolved through its longest existing
/// ancestor: never inside the worktree, where the worker could change its
/// own records.
fn runs_root(dir: Option<&str>, repo_root: &Path, worktree: &Path) -> Result<PathBuf, Error> {
    let runs_root = match dir {
        Some("") => {
            return Err(Error::invalid(
                "runtime.runsRootDir",
                "must not be empty; omit it for the default",
            ))
        }
        Some(dir) if Path::new(dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => repo_root.join(dir),
        None => default_runs_root(),
    };
    // Resolve the longest existing ancestor to see where the root really is.
    let real_root = runs_root
        .ancestors()
        .find_map(|a| {
            a.canonicalize()
                .ok()
                .map(|c| c.join(runs_root.strip_prefix(a).unwrap_or(Path::new(""))))
        })
        .unwrap_or_else(|| runs_root.clone());
    if real_root.starts_with(worktree) {
        return Err(Error::invalid(
            "runtime.runsRootDir",
            format!("`{}` is inside the worktree, where the worker could change its own records; choose a directory outside `{}`", runs_root.display(), worktree.display()),
        ));
    }
    Ok(real_root)
}
