//! The `git` worker kind: runs git operations (status, diff, add, commit,
//! branch/checkout, …) in the worktree, one per line of `command`, refusing
//! every option that would make git run another program.

use baa_worker_sdk::*;

/// Subcommands the kind runs. Anything that talks to remotes or rewrites
/// history is left to other kinds.
const ALLOWED_SUBCOMMANDS: &[&str] = &[
    "status",
    "diff",
    "add",
    "rm",
    "mv",
    "commit",
    "branch",
    "checkout",
    "switch",
    "restore",
    "log",
    "show",
    "rev-parse",
    "tag",
];

/// Options that make git run other programs or look elsewhere for its
/// configuration; refused wherever they appear (also as `--opt=value`).
const REFUSED_OPTIONS: &[&str] = &[
    "-c",
    "--config-env",
    "--exec-path",
    "--upload-pack",
    "--receive-pack",
    "-u",
    "--exec",
    "-C",
    "--git-dir",
    "--work-tree",
    "--namespace",
    "--super-prefix",
    "--ext-diff",
    "--textconv",
    "--template",
];

struct Git;

impl Worker for Git {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("git")
            .description(
                "Runs git operations in the worktree: status, diff, add, commit, branch, checkout",
            )
            .program("git")
            .env("GIT_AUTHOR_NAME")
            .env("GIT_AUTHOR_EMAIL")
            .env("GIT_COMMITTER_NAME")
            .env("GIT_COMMITTER_EMAIL")
            .env("GIT_TERMINAL_PROMPT")
    }

    fn execute(request: Step) -> Result<WorkerOutcome, ExecuteError> {
        let script = request.command.as_deref().unwrap_or("status");
        let operations = parse_operations(script).map_err(ExecuteError::InvalidRequest)?;

        let head_before = git_quiet(&["rev-parse", "--verify", "-q", "HEAD"]);
        for args in &operations {
            let line = args.join(" ");
            emit(Level::Info, "git.operation", &format!("git {line}"), None);
            let finished = run(&git_command(args)).map_err(|e| {
                ExecuteError::Failed(format!(
                    "could not run `git {line}`: {}",
                    describe_spawn_error(&e)
                ))
            })?;
            if !finished.success() {
                let stderr = finished.stderr_text();
                let reason = last_lines(&stderr, 3).join("\n");
                return Ok(WorkerOutcome::failed(format!(
                    "`git {line}` failed ({}): {reason}",
                    finished.describe_exit()
                ))
                .with_exit_code(finished.status.code));
            }
        }

        // Branch, HEAD and changed files in one query.
        let state = Status::parse(
            &git_quiet(&["status", "--porcelain=v2", "--branch"]).unwrap_or_default(),
        );
        let branch = state
            .branch
            .clone()
            .unwrap_or_else(|| "(detached HEAD)".to_string());
        let head_after = state.head.clone();
        let commits = match (&head_before, &head_after) {
            (Some(before), Some(after)) if before != after => {
                git_quiet(&["log", "--format=%h %s", &format!("{before}..{after}")])
            }
            (None, Some(_)) => git_quiet(&["log", "--format=%h %s"]),
            _ => None,
        };
        let changed_files: Vec<&str> = state.changed.iter().map(String::as_str).collect();

        let diff_base = head_before.as_deref().or(head_after.as_deref());
        let diff = match diff_base {
            Some(base) => git_quiet(&["diff", base]),
            None => None,
        };
        if let Some(diff) = diff.as_deref().filter(|d| !d.is_empty()) {
            if let Err(e) = declare_artifact(
                "git.diff",
                "Changes in the worktree against the commit the step started from",
                diff.as_bytes(),
            ) {
                emit(
                    Level::Warn,
                    "git.artifact",
                    &format!("could not store the diff: {e:?}"),
                    None,
                );
            }
        }

        let mut summary = format!("on branch {branch}");
        match &commits {
            Some(commits) if !commits.is_empty() => summary.push_str(&format!(
                "; committed {}",
                commits.lines().collect::<Vec<_>>().join(", ")
            )),
            _ => summary.push_str("; no commit made"),
        }
        if changed_files.is_empty() {
            summary.push_str("; worktree clean");
        } else {
            summary.push_str(&format!(
                "; {} changed file(s): {}",
                changed_files.len(),
                changed_files.join(", ")
            ));
        }
        if request.checkpoints_enabled {
            let payload = diff.as_deref().map(str::as_bytes);
            let _ = capture_checkpoint("git-diff", &summary, payload);
        }
        Ok(WorkerOutcome::completed(summary).with_exit_code(Some(0)))
    }
}

/// What `git status --porcelain=v2 --branch` says of the worktree.
#[derive(Debug, Default)]
struct Status {
    /// The branch checked out (`None`: detached).
    branch: Option<String>,
    /// The commit HEAD names (`None`: no commit yet).
    head: Option<String>,
    /// Changed, added, renamed, unmerged and untracked paths.
    changed: Vec<String>,
}

impl Status {
    fn parse(text: &str) -> Status {
        let mut status = Status::default();
        for line in text.lines() {
            if let Some(oid) = line.strip_prefix("# branch.oid ") {
                status.head = (oid != "(initial)").then(|| oid.to_string());
            } else if let Some(head) = line.strip_prefix("# branch.head ") {
                status.branch = (head != "(detached)").then(|| head.to_string());
            } else if let Some(path) = Self::path(line) {
                status.changed.push(path.to_string());
            }
        }
        status
    }

    /// The path of a change entry: after the fixed fields of its kind
    /// (`1`: 8, `2`: 9, then `path<TAB>orig`; `u`: 10; `?`: 1).
    fn path(line: &str) -> Option<&str> {
        let fields = match line.split(' ').next()? {
            "1" => 8,
            "2" => 9,
            "u" => 10,
            "?" => 1,
            _ => return None,
        };
        let path = line.splitn(fields + 1, ' ').nth(fields)?;
        Some(path.split('\t').next().unwrap_or(path))
    }
}

/// Subcommands that show diffs: the host runs them only with
/// `--no-ext-diff --no-textconv` (no diff program the repository names).
const DIFF_SUBCOMMANDS: &[&str] = &["diff", "show", "log"];

fn git_command(args: &[String]) -> Command {
    // No pager, no prompts, no optional locks on `status`.
    let mut full = vec!["--no-pager".to_string()];
    let mut args = args.iter().cloned();
    if let Some(sub) = args.next() {
        let shows_diffs = DIFF_SUBCOMMANDS.contains(&sub.as_str());
        full.push(sub);
        if shows_diffs {
            full.extend(["--no-ext-diff".to_string(), "--no-textconv".to_string()]);
        }
    }
    full.extend(args);
    Command::new("git", full).env("GIT_TERMINAL_PROMPT", "0")
}

/// Run a read-only git query; `None` when it fails or prints nothing.
fn git_quiet(args: &[&str]) -> Option<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let finished = run(&git_command(&args)).ok()?;
    let text = finished.stdout_text().trim_end().to_string();
    (finished.success() && !text.is_empty()).then_some(text)
}

/// Split `command` into git operations: one per line (or `&&`-separated),
/// each shell-quoted, with or without a leading `git`.
fn parse_operations(script: &str) -> Result<Vec<Vec<String>>, String> {
    let mut operations = Vec::new();
    for line in script.lines().flat_map(|l| l.split("&&")) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut args = shlex::split(line)
            .ok_or_else(|| format!("`command`: unbalanced quotes in git operation `{line}`"))?;
        if args.first().map(String::as_str) == Some("git") {
            args.remove(0);
        }
        let Some(sub) = args.first() else { continue };
        if sub.starts_with('-') {
            return Err(format!(
                "`command`: git option `{sub}` before the subcommand is refused; write `<subcommand> [args]`"
            ));
        }
        if !ALLOWED_SUBCOMMANDS.contains(&sub.as_str()) {
            return Err(format!(
                "`command`: git subcommand `{sub}` is not supported by the git worker kind (allowed: {})",
                ALLOWED_SUBCOMMANDS.join(", ")
            ));
        }
        for arg in &args[1..] {
            let name = arg.split('=').next().unwrap_or(arg);
            if REFUSED_OPTIONS.contains(&name) {
                return Err(format!(
                    "`command`: git option `{name}` is refused because it can make git run other programs or read other configuration"
                ));
            }
        }
        operations.push(args);
    }
    if operations.is_empty() {
        return Err(
            "`command`: no git operation given (e.g. `status`, `add -A`, `commit -m \"msg\"`)"
                .into(),
        );
    }
    Ok(operations)
}

export_worker!(Git);
