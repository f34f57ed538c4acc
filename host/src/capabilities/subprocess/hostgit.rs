//! The one place the host's own git is defined: the options and the
//! environment every git of the host runs with (no configuration, hooks,
//! pagers or prompts of anyone's), `HEAD` of a worktree read confined while
//! a step is prepared, and the scratch repository `check` runs a kind in.
//! A step's snapshots run the same git through `Subprocesses::run_host`
//! (`capabilities/checkpoint/snapshot.rs`).

use std::path::Path;

use super::{confinement, launcher, policy};

/// Options that keep git from reading configuration or running hooks the
/// host does not control; every git of a step also gets
/// [`policy::GIT_OVERRIDES`]
/// (no transport, so no lazy fetch), and the diffs are taken with
/// `--no-ext-diff --no-textconv`. The confinement lets it execute git and
/// its interpreter only, so a filter or hook a repository configures
/// through a shell is refused by the kernel.
pub const SAFE_GIT: &[&str] = &[
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.untrackedCache=false",
    "--no-pager",
];

/// Environment of the host's git: no global or system configuration or
/// attributes, no prompts.
pub const SAFE_GIT_ENV: &[(&str, &str)] = &[
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_ATTR_NOSYSTEM", "1"),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_OPTIONAL_LOCKS", "0"),
];

/// [`SAFE_GIT_ENV`] with a `PATH`, as the complete environment of a git
/// the host runs outside a step.
pub fn safe_git_env() -> std::collections::BTreeMap<String, String> {
    let mut env: std::collections::BTreeMap<String, String> = SAFE_GIT_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert(
        "PATH".into(),
        crate::capabilities::subprocess::policy::CHILD_PATH.into(),
    );
    env.insert("HOME".into(), "/nonexistent".into());
    env
}

/// `git rev-parse --verify HEAD` in `worktree`, confined.
pub fn head_commit(worktree: &Path, sandbox: &crate::config::SandboxConfig) -> Option<String> {
    let git = policy::resolve_program("git").ok()?;
    let mut args: Vec<String> = SAFE_GIT.iter().map(|a| a.to_string()).collect();
    // The tree may be lent to another step's sandbox user right now: its
    // owner is not ours, and that is expected.
    args.extend([
        "-c".to_string(),
        format!("safe.directory={}", worktree.display()),
    ]);
    args.extend(["rev-parse", "--verify", "-q", "HEAD"].map(String::from));
    let spec = confinement::read_only_spec(sandbox, &git, args, worktree);
    let env = safe_git_env();
    match launcher::run_sync(&spec, &env, HEAD_TIMEOUT) {
        Ok((status, stdout)) if status.success() => {
            let head = String::from_utf8_lossy(&stdout).trim().to_string();
            let valid =
                matches!(head.len(), 40 | 64) && head.bytes().all(|b| b.is_ascii_hexdigit());
            valid.then_some(head)
        }
        Ok(_) => None,
        Err(refusal) => {
            tracing::warn!(
                "no git-diff base: git could not run confined ({}: {})",
                refusal.stage,
                refusal.message
            );
            None
        }
    }
}

/// How long `git rev-parse HEAD` may take while a step is prepared.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `git init` + one commit, with the host's git and no user configuration.
pub fn init_scratch(repo: &Path) -> Result<(), String> {
    let git = policy::resolve_program("git").map_err(|e| e.to_string())?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=baa-runner check",
            "-c",
            "user.email=check@baa-runner.invalid",
            "commit",
            "-q",
            "-m",
            "chore: baa-runner conformance check",
        ],
    ] {
        let status = std::process::Command::new(&git)
            .args(SAFE_GIT)
            .args(args)
            .current_dir(repo)
            .env_clear()
            .envs(safe_git_env())
            .status()
            .map_err(|e| format!("git: {e}"))?;
        if !status.success() {
            return Err(format!("git {} failed", args.join(" ")));
        }
    }
    Ok(())
}
