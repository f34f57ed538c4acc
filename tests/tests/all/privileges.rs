//! Privileges: hostile worker kinds, written straight against the WIT with
//! wit-bindgen (`plugins/testing/hostile`, `hostile-sh`, `huge-describe`),
//! try to make the host — root, in CI — act for them: write through links
//! they planted where the host writes, run programs the repository
//! configures, kill a process they name, claim success past their deadline,
//! blow up the records, fill the disk, and pass their own events and
//! checkpoints off as the host's. Every attack runs through the real host;
//! each test first proves its attack is real (the links were planted, git
//! does run the planted programs when asked natively, the decoy is a process
//! group the host could kill), so that it can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baa_runner::config::KindGrant;
use baa_runner::contracts::{
    CheckpointSource, FailureReason, StepExecutionOutcome, StepExecutionRequest,
    StepExecutionResult,
};
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{fixtures, git, read_json, read_lifecycle, Sandbox};

use crate::run;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Whether the host runs as root (each step's subprocesses then run as a
/// dedicated uid); the attacks below are on a root host. Says so loudly when
/// not: the test then checks nothing.
pub(crate) fn as_root(what: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!(
            "SKIPPED {what}: needs the host to run as root (the attacks aim at a root host \
             whose steps run as dedicated users); run the tests as root, as CI does"
        );
    }
    root
}

/// A plugin directory in `sandbox` with the hostile fixtures.
fn hostile_plugins(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.dir.path().join("hostile-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for (wasm, name) in [
        (fixtures::HOSTILE_WASM, "hostile.wasm"),
        (fixtures::HOSTILE_SH_WASM, "hostile-sh.wasm"),
        (fixtures::HUGE_DESCRIBE_WASM, "huge-describe.wasm"),
    ] {
        std::fs::copy(wasm, dir.join(name)).unwrap();
    }
    dir
}

/// A runner with the hostile kinds: `hostile` granted nothing (it requests
/// nothing), `hostile-sh` granted the `sh` it requests; the built-in kinds
/// with their default grants.
fn hostile_runner(sandbox: &Sandbox, adjust: impl FnOnce(&mut RunnerConfig)) -> Runner {
    let mut config = RunnerConfig::default();
    config.plugin_dirs.push(hostile_plugins(sandbox));
    config.kinds.insert(
        "hostile-sh".into(),
        KindGrant {
            programs: vec!["sh".into()],
            ..Default::default()
        },
    );
    adjust(&mut config);
    Runner::new(config).unwrap()
}

/// A request for `kind` running `command` as step `step`, with checkpoint
/// capture (and the diff stat, one more git command of the host's).
fn request_json(sandbox: &Sandbox, kind: &str, step: &str, command: &str) -> serde_json::Value {
    let mut json = sandbox.request_json(kind, command);
    json["stepId"] = step.into();
    json["checkpoint"]["includeGitDiffStat"] = true.into();
    json
}

fn request(sandbox: &Sandbox, kind: &str, step: &str, command: &str) -> StepExecutionRequest {
    serde_json::from_value(request_json(sandbox, kind, step, command)).unwrap()
}

pub(crate) fn stdout_of(result: &StepExecutionResult) -> String {
    std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap_or_default()
}

/// The line the fixture printed for operation `op` (`<op>: ok …` or
/// `<op>: error …`), panicking with the whole output when there is none.
fn op_line<'a>(stdout: &'a str, op: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{op}: ")))
        .unwrap_or_else(|| panic!("no output of `{op}`:\n{stdout}"))
}

fn assert_op_ok(stdout: &str, op: &str) {
    let line = op_line(stdout, op);
    assert!(
        line.starts_with(&format!("{op}: ok")),
        "the attack did not get going: {line}\n{stdout}"
    );
}

/// The run record is complete and readable on its own: every JSON record
/// verifies, the lifecycle log ends with the host's `step.finished`, no
/// checkpoint of the step is corrupt.
fn assert_complete_record(result: &StepExecutionResult) {
    let paths = &result.log_paths;
    for file in [&paths.metadata_path, &paths.state_path, &paths.result_path] {
        read_json(file);
    }
    let events = read_lifecycle(&paths.lifecycle_log_path);
    let last = events.last().expect("a lifecycle log");
    assert_eq!(last["event"], "step.finished", "{last}");
    assert_eq!(last["source"], "host", "{last}");
    let step_dir = Path::new(&paths.run_dir).parent().unwrap();
    let history = baa_runner::checkpoints::StepHistory::load(step_dir, 0);
    assert!(history.corrupt.is_empty(), "{:?}", history.corrupt);
}

/// Bytes of every file below `dir` (links not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Every file below `dir` (links not followed).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) if meta.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

/// The five largest files below `dir`, with their sizes.
fn largest_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => files.push((meta.len(), entry.path())),
                Err(_) => {}
            }
        }
    }
    files.sort();
    files.into_iter().rev().take(5).collect()
}

fn file_size(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path.as_ref())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// A string no file outside the run records may end up holding: the
/// attacker's content.
fn attacker_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("ATTACKER-CONTENT-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// Root canaries
// ---------------------------------------------------------------------------

/// Root-owned files outside the worktree: `secret` (mode 0600) in `base`,
/// and `kept` (0644) in `root_only`, a directory only root can write. They
/// live under /run (when root), which the step's private /tmp does not hide.
struct Canaries {
    _temp: tempfile::TempDir,
    base: PathBuf,
    secret: PathBuf,
    root_only: PathBuf,
    kept: PathBuf,
}

const SECRET: &str = "ROOT-CANARY-SECRET\n";
const KEPT: &str = "ROOT-CANARY-KEPT\n";

impl Canaries {
    fn new() -> Self {
        let temp = if rustix::process::geteuid().is_root() {
            tempfile::Builder::new()
                .prefix("baa-canary-")
                .tempdir_in("/run")
                .unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let base = temp.path().to_path_buf();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = base.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let root_only = base.join("root-only");
        std::fs::create_dir(&root_only).unwrap();
        std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kept = root_only.join("kept");
        std::fs::write(&kept, KEPT).unwrap();
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o644)).unwrap();
        Canaries {
            _temp: temp,
            base,
            secret,
            root_only,
            kept,
        }
    }

    /// Every entry below `base`: kind, mode, owner, inode, links, size and
    /// content (for files), target (for links).
    fn fingerprint(&self) -> BTreeMap<PathBuf, String> {
        fingerprint(&self.base)
    }
}

fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut map = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        map.insert(
            dir.clone(),
            format!(
                "dir {:o} {}:{} ino={}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.ino()
            ),
        );
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned()
            };
            map.insert(
                path,
                format!(
                    "{:o} {}:{} ino={} nlink={} size={} {what}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.ino(),
                    meta.nlink(),
                    meta.len(),
                ),
            );
        }
    }
    map
}

fn assert_unchanged(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
    what: &str,
) {
    if before != after {
        let mut diff = String::new();
        for (path, old) in before {
            match after.get(path) {
                Some(new) if new == old => {}
                Some(new) => {
                    diff.push_str(&format!("changed {}: {old} => {new}\n", path.display()))
                }
                None => diff.push_str(&format!("removed {}: {old}\n", path.display())),
            }
        }
        for (path, new) in after {
            if !before.contains_key(path) {
                diff.push_str(&format!("appeared {}: {new}\n", path.display()));
            }
        }
        panic!("{what}: outside the worktree, things changed:\n{diff}");
    }
}

/// Files outside the worktree and the run records that hold `token`: in
/// the canaries' tree, the sandbox's temporary directory (but its worktree
/// and runs root), the step users' homes and the shared scratch
/// directories. Links are not followed; files over 1 MiB are skipped.
fn files_holding(token: &str, sandbox: &Sandbox, canaries: &Canaries) -> Vec<PathBuf> {
    let skip = [sandbox.repo.clone(), sandbox.runs.clone()];
    let roots: Vec<(PathBuf, bool)> = vec![
        (canaries.base.clone(), true),
        (sandbox.dir.path().to_path_buf(), true),
        (PathBuf::from("/run/baa-runner"), true),
        (PathBuf::from("/run"), false),
        (PathBuf::from("/tmp"), false),
        (PathBuf::from("/var/tmp"), false),
        (PathBuf::from("/dev/shm"), false),
        (PathBuf::from("/root"), false),
        (PathBuf::from("/etc"), false),
    ];
    let mut found = Vec::new();
    for (root, recursive) in roots {
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if skip.contains(&path) {
                    continue;
                }
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    if recursive {
                        stack.push(path);
                    }
                } else if meta.is_file() && meta.len() <= 1024 * 1024 {
                    let holds = std::fs::read(&path)
                        .map(|b| b.windows(token.len()).any(|w| w == token.as_bytes()))
                        .unwrap_or(false);
                    if holds {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_canary_check_sees_a_write_through_a_link_a_replacement_and_a_new_file() {
    let sandbox = Sandbox::new();
    let canaries = Canaries::new();
    let token = attacker_token();
    let before = canaries.fingerprint();
    assert_eq!(
        canaries.fingerprint(),
        before,
        "stable when nothing happens"
    );
    assert!(files_holding(&token, &sandbox, &canaries).is_empty());

    // What the attacks below try to make the host do, done by the test.
    let link = sandbox.dir.path().join("link");
    std::os::unix::fs::symlink(&canaries.secret, &link).unwrap();
    std::fs::write(&link, SECRET.to_lowercase()).unwrap(); // same length, new content
    assert_ne!(canaries.fingerprint(), before, "a write through a link");
    std::fs::write(&canaries.secret, SECRET).unwrap();
    std::fs::set_permissions(&canaries.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ne!(canaries.fingerprint(), before, "a mode change");
    std::fs::set_permissions(&canaries.secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(canaries.fingerprint(), before, "restored");
    let fresh = canaries.root_only.join(".kept.tmp");
    std::fs::write(&fresh, KEPT).unwrap();
    std::fs::rename(&fresh, &canaries.kept).unwrap();
    assert_ne!(canaries.fingerprint(), before, "a replacement (new inode)");
    std::fs::write(canaries.root_only.join("new"), &token).unwrap();
    assert_eq!(
        files_holding(&token, &sandbox, &canaries),
        vec![canaries.root_only.join("new")]
    );
}

// ---------------------------------------------------------------------------
// 1. Links planted where the host writes
// ---------------------------------------------------------------------------

/// How many `baa-snapshot-index-<pid>-<n>` names the attacks cover: the host
/// numbers its temporary indexes per process, across all its steps.
const INDEX_NAMES: u32 = 400;

#[tokio::test(flavor = "multi_thread")]
async fn links_planted_in_the_scratch_directory_never_redirect_a_write_of_the_host() {
    if !as_root("links planted in the scratch directory") {
        return;
    }
    let sandbox = Sandbox::new();
    let canaries = Canaries::new();
    let before = canaries.fingerprint();
    let token = attacker_token();
    let runner = hostile_runner(&sandbox, |_| {});
    let pid = std::process::id();
    let fresh = canaries.root_only.join("planted-by-the-host");
    let cases = [
        // Symlinks at every predictable name, to an existing root file.
        (
            "links-to-secret",
            format!(
                "plant-links {pid} {} {INDEX_NAMES}\nscratch-file evil-scratch {token}\ncapture-git-diff",
                canaries.secret.display()
            ),
            "plant-links",
        ),
        // The same, to a file that does not exist yet in a root-only directory.
        (
            "links-to-new-file",
            format!(
                "plant-links {pid} {} {INDEX_NAMES}\nscratch-file evil-scratch {token}\ncapture-git-diff",
                fresh.display()
            ),
            "plant-links",
        ),
        // Hard links instead (refused by the kernel for a file the user does
        // not own; if they were not, the host's write would land in it).
        (
            "hardlinks",
            format!(
                "plant-hardlinks {pid} {} {INDEX_NAMES}\nscratch-file evil-scratch {token}\ncapture-git-diff",
                canaries.kept.display()
            ),
            "plant-hardlinks",
        ),
        // The scratch directory itself becomes a link to the root-only
        // directory; the scratch file is named like the canary in it.
        (
            "tmpdir-link",
            format!(
                "replace-tmpdir {}\nscratch-file kept {token}\nscratch-file evil-scratch {token}\ncapture-git-diff",
                canaries.root_only.display()
            ),
            "replace-tmpdir",
        ),
    ];
    for (name, script, planted_by) in &cases {
        let result = run(&runner, request(&sandbox, "hostile-sh", name, script)).await;
        let stdout = stdout_of(&result);
        eprintln!("{name}:\n{stdout}");
        if *planted_by == "plant-links" {
            // The attack is real: every link is there before the host writes.
            assert!(
                op_line(&stdout, planted_by)
                    .contains(&format!("planted={} failed=0", INDEX_NAMES + 2)),
                "{name}: {stdout}"
            );
        } else if *planted_by == "replace-tmpdir" {
            assert_op_ok(&stdout, planted_by);
        } else {
            // Whatever the kernel said, it ran.
            op_line(&stdout, planted_by);
        }
        assert_complete_record(&result);
        assert_unchanged(&before, &canaries.fingerprint(), name);
        let holding = files_holding(&token, &sandbox, &canaries);
        assert!(
            holding.is_empty(),
            "{name}: the attacker's content appeared at {holding:?}\n{stdout}"
        );
        assert!(!fresh.exists(), "{name}: {} appeared", fresh.display());
    }
    // The host still runs steps.
    let next = run(&runner, request(&sandbox, "hostile", "after", "sleep-ms 0")).await;
    assert!(next.ok, "{}", next.summary);
}

/// Symlinks in the worktree that point at the canaries (one of them in
/// place of the git index): the host's snapshot, its hand-back of the lent
/// worktree and git must follow none of them, neither to write nor to read.
#[tokio::test(flavor = "multi_thread")]
async fn links_in_the_worktree_to_root_files_are_never_followed_by_the_host() {
    if !as_root("links in the worktree") {
        return;
    }
    let sandbox = Sandbox::new();
    let canaries = Canaries::new();
    let before = canaries.fingerprint();
    let runner = hostile_runner(&sandbox, |_| {});
    let script = format!(
        "sh ln -s {} escape-file && ln -s {} escape-dir && ln -sf {} .git/index && echo planted\ncapture-git-diff",
        canaries.secret.display(),
        canaries.root_only.display(),
        canaries.secret.display(),
    );
    let result = run(
        &runner,
        request(&sandbox, "hostile-sh", "worktree-links", &script),
    )
    .await;
    let stdout = stdout_of(&result);
    assert!(op_line(&stdout, "sh").contains("planted"), "{stdout}");
    assert_complete_record(&result);
    assert_unchanged(&before, &canaries.fingerprint(), "links in the worktree");
    // Nothing of the root-only file was read into the step's records.
    let run_dir = Path::new(&result.log_paths.run_dir);
    let leaked = files_in(run_dir)
        .into_iter()
        .filter(|f| {
            std::fs::read(f).is_ok_and(|b| {
                b.windows(SECRET.len() - 1)
                    .any(|w| w == &SECRET.as_bytes()[..SECRET.len() - 1])
            })
        })
        .collect::<Vec<_>>();
    assert!(
        leaked.is_empty(),
        "the root-only file leaked into {leaked:?}"
    );
    // The links are still links, handed back to the worktree's owner.
    let owner = std::fs::metadata(sandbox.dir.path()).unwrap().uid();
    for link in ["escape-file", "escape-dir"] {
        let meta = std::fs::symlink_metadata(sandbox.repo.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link}");
        assert_eq!(meta.uid(), owner, "{link} was handed back");
    }
}

// ---------------------------------------------------------------------------
// 2. Programs the repository configures
// ---------------------------------------------------------------------------

/// Files named `PWNED-*` below `dir` (links not followed).
fn markers(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            if name.starts_with("PWNED-") {
                found.insert(p.strip_prefix(dir).unwrap().display().to_string());
            }
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

/// Git as this test runs it (root, no confinement, no options), in `dir`.
fn native_git(dir: &Path, home: &Path, args: &[&str], env: &[(&str, &str)]) {
    let _ = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("git runs");
}

/// The proof that the planted routes are live: on a copy of the planted
/// worktree, this test's own git (root, unconfined) runs (a) the commands
/// of the host's snapshot, with the options it passes today, and (b) what a
/// kind granted git runs. Returns the markers each produced.
fn native_markers(sandbox: &Sandbox, tag: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let copy = sandbox.dir.path().join(format!("native-{tag}"));
    let status = Command::new("cp")
        .arg("-a")
        .arg(&sandbox.repo)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let home = sandbox.dir.path().join(format!("native-home-{tag}"));
    std::fs::create_dir_all(&home).unwrap();
    let existing = markers(&copy);
    let new_markers = |copy: &Path| -> BTreeSet<String> {
        markers(copy).difference(&existing).cloned().collect()
    };

    // (a) The host's snapshot as of this writing (host/src/checkpoints/snapshot.rs).
    let index = home.join("snapshot-index");
    let _ = std::fs::copy(copy.join(".git/index"), &index);
    let index_env = [("GIT_INDEX_FILE", index.to_str().unwrap())];
    let safe = [
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.hooksPath=/dev/null",
        "--no-pager",
    ];
    for args in [
        &["rev-parse", "--git-path", "index"][..],
        &["add", "-A"],
        &[
            "diff",
            "--cached",
            "--binary",
            "--no-ext-diff",
            "--no-textconv",
            "--no-color",
            "HEAD",
            "--",
        ],
        &[
            "diff",
            "--cached",
            "--name-status",
            "--no-renames",
            "-z",
            "HEAD",
            "--",
        ],
        &["diff", "--cached", "--stat", "--no-color", "HEAD", "--"],
    ] {
        let full: Vec<&str> = safe.iter().chain(args).copied().collect();
        native_git(&copy, &home, &full, &index_env);
    }
    let by_snapshot = new_markers(&copy);

    // (b) What the `git` kind runs for `status`, `diff`, `add -A`,
    // `commit` (signed, as the planted config asks), `show`, `checkout`.
    for args in [
        &["--no-pager", "status"][..],
        &["--no-pager", "diff"],
        &["--no-pager", "add", "-A"],
        &["--no-pager", "diff", "--cached"],
        &["--no-pager", "commit", "-q", "-m", "planted"],
        &["--no-pager", "show", "HEAD"],
        &["--no-pager", "checkout", "-q", "HEAD", "--", "."],
    ] {
        native_git(&copy, &home, args, &[]);
    }
    let by_all = new_markers(&copy);
    (by_snapshot, by_all)
}

/// The `git-diff` checkpoints the host captured in `result` (its own
/// snapshot at the end of the step, and any a worker asked it to fill).
fn host_git_diffs(result: &StepExecutionResult) -> usize {
    result
        .checkpoint
        .records
        .iter()
        .filter(|r| {
            r.attempt == result.attempt
                && r.checkpoint_type.as_str() == "git-diff"
                && r.source == CheckpointSource::Host
        })
        .count()
}

/// Plant git routes with `variant` (`""`, `gitfile`, `gitlink`) through the
/// hostile kind (granted nothing), which then asks the host for a snapshot;
/// the step ends with the host's own final snapshot. Then the same worktree
/// goes to the built-in `git` kind (granted only `git`). No planted program
/// may run, yet natively git runs them.
async fn planted_git_runs_nothing(variant: &str, native_expected: &[&str]) {
    let sandbox = Sandbox::new();
    let canaries = Canaries::new();
    let before = canaries.fingerprint();
    let runner = hostile_runner(&sandbox, |_| {});
    let tag = if variant.is_empty() {
        "in-place"
    } else {
        variant
    };

    let plant = format!("plant-git {variant}\ncapture-git-diff");
    let result = run(
        &runner,
        request(&sandbox, "hostile", &format!("plant-{tag}"), &plant),
    )
    .await;
    let stdout = stdout_of(&result);
    assert_op_ok(&stdout, "plant-git");
    assert_complete_record(&result);
    let found = markers(&sandbox.repo);
    assert!(
        found.is_empty(),
        "{tag}: the host's snapshot ran programs the repository configures: {found:?}\n{stdout}"
    );
    // Not because the host gave up: its final snapshot was taken.
    assert!(
        host_git_diffs(&result) >= 1,
        "{tag}: no git-diff snapshot was captured: {:?}",
        read_lifecycle(&result.log_paths.lifecycle_log_path)
            .iter()
            .filter(|e| e["event"].as_str().unwrap_or("").starts_with("checkpoint"))
            .collect::<Vec<_>>()
    );

    // The attack is real: this git, asked natively, runs the planted programs.
    let (by_snapshot, by_all) = native_markers(&sandbox, tag);
    for marker in native_expected {
        assert!(
            by_all.contains(*marker),
            "{tag}: natively, git did not run `{marker}`: the plant is broken (snapshot: {by_snapshot:?}, all: {by_all:?})"
        );
    }
    // The options the host's snapshot passed when this test was written do
    // not stop the filters.
    assert!(
        by_snapshot.contains("PWNED-filter-clean"),
        "{tag}: {by_snapshot:?}"
    );
    eprintln!(
        "{tag}: natively, the host's snapshot commands ran {by_snapshot:?}; git ran {by_all:?}"
    );

    // A kind granted only git, on the planted worktree.
    let result = run(
        &runner,
        request(
            &sandbox,
            "git",
            &format!("git-{tag}"),
            "status\ndiff\nadd -A\ndiff --cached\ncommit -q -m planted\nshow HEAD\ncheckout HEAD -- .",
        ),
    )
    .await;
    assert_complete_record(&result);
    let found = markers(&sandbox.repo);
    assert!(
        found.is_empty(),
        "{tag}: a kind granted only git ran programs the repository configures: {found:?}\n{}\n{}",
        result.summary,
        std::fs::read_to_string(&result.log_paths.stderr_log_path).unwrap_or_default()
    );
    assert_unchanged(&before, &canaries.fingerprint(), tag);
}

/// Markers every variant's plant makes natively reachable.
const NATIVE_ALWAYS: &[&str] = &[
    "PWNED-filter-clean",
    "PWNED-filter-smudge",
    "PWNED-filter-process",
    "PWNED-include-filter",
    "PWNED-exec-.evil-evil-filter",
    "PWNED-fsmonitor",
    "PWNED-textconv",
    "PWNED-diff-external",
    "PWNED-exec-.evil-evil-gpg",
];

#[tokio::test(flavor = "multi_thread")]
async fn programs_the_repository_configures_never_run_for_the_host_or_a_kind_granted_git() {
    if !as_root("repository-configured programs") {
        return;
    }
    let mut expected = NATIVE_ALWAYS.to_vec();
    expected.push("PWNED-exec-hookspath-pre-commit");
    planted_git_runs_nothing("", &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dot_git_file_or_symlink_to_a_planted_git_dir_runs_nothing_either() {
    if !as_root("`.git` file and symlink") {
        return;
    }
    let mut expected = NATIVE_ALWAYS.to_vec();
    expected.push("PWNED-exec-hooks-pre-commit");
    planted_git_runs_nothing("gitfile", &expected).await;
    planted_git_runs_nothing("gitlink", &expected).await;
}

/// `.git` becomes a file `gitdir: <a root-owned repository elsewhere>`: the
/// host's snapshot and a kind granted git must change nothing there.
#[tokio::test(flavor = "multi_thread")]
async fn a_dot_git_file_pointing_at_a_root_owned_repository_changes_nothing_there() {
    if !as_root("`.git` pointing outside") {
        return;
    }
    let sandbox = Sandbox::new();
    let canaries = Canaries::new();
    let outside = canaries.base.join("root-repo");
    std::fs::create_dir(&outside).unwrap();
    git(&outside, &["init", "-q", "-b", "main"]);
    git(&outside, &["config", "user.name", "Root"]);
    git(&outside, &["config", "user.email", "root@example.test"]);
    std::fs::write(outside.join("README.md"), "# root's\n").unwrap();
    git(&outside, &["add", "README.md"]);
    git(&outside, &["commit", "-q", "-m", "root's commit"]);
    let before = canaries.fingerprint();
    let runner = hostile_runner(&sandbox, |_| {});

    let plant = format!(
        "plant-git outside {}\ncapture-git-diff",
        outside.join(".git").display()
    );
    let result = run(
        &runner,
        request(&sandbox, "hostile", "plant-outside", &plant),
    )
    .await;
    let stdout = stdout_of(&result);
    assert_op_ok(&stdout, "plant-git");
    assert_complete_record(&result);
    let result = run(
        &runner,
        request(
            &sandbox,
            "git",
            "git-outside",
            "status\nadd -A\ncommit -q -m planted",
        ),
    )
    .await;
    assert_complete_record(&result);
    assert_unchanged(&before, &canaries.fingerprint(), "gitdir outside");
    assert!(markers(&sandbox.repo).is_empty());
}

// ---------------------------------------------------------------------------
// 3. Recovery kills only what the host started
// ---------------------------------------------------------------------------

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_never_kills_a_process_a_worker_named_in_a_fake_event() {
    let sandbox = Sandbox::new();
    // A decoy: a root process leading its own process group, as the host's
    // supervisors do, so that a kill of its group would reach it.
    let mut decoy = Command::new("sleep")
        .arg("600.6141")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = decoy.id();
    let start = start_time(pid).expect("the decoy's start time");

    let config = sandbox.dir.path().join("baa.toml");
    std::fs::write(
        &config,
        format!(
            "plugin-dirs = [{:?}]\n",
            hostile_plugins(&sandbox).display().to_string()
        ),
    )
    .unwrap();
    let script = format!(
        "emit-fake subprocess.started {pid} {start}\nemit-fake worker.subprocess.started {pid} {start}\nsleep-ms 60000"
    );
    let mut json = request_json(&sandbox, "hostile", "step-1", &script);
    json["timeoutSec"] = 120.into();
    let request_path = sandbox.dir.path().join("request.json");
    std::fs::write(&request_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let mut host = crate::cli()
        .arg("--config")
        .arg(&config)
        .args(["run", "--quiet"])
        .arg(&request_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Once the fake events are on record, the host dies.
    let run_dir = sandbox.runs.join("task-1/run-1/step-1/attempt-1");
    let stdout_log = run_dir.join("logs/stdout.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&stdout_log)
        .unwrap_or_default()
        .contains("emit-fake: ok emitted worker.subprocess.started")
    {
        assert!(
            Instant::now() < deadline,
            "the worker never emitted its fake events"
        );
        assert!(host.try_wait().unwrap().is_none(), "the host ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.kill().unwrap();
    host.wait().unwrap();
    assert_eq!(read_json(run_dir.join("state.json"))["status"], "running");
    let events = read_lifecycle(run_dir.join("logs/lifecycle.jsonl"));
    assert!(
        events.iter().any(|e| e["data"]["pid"] == pid),
        "the fake event is on record: {events:?}"
    );

    let report = crate::runner().recover(&sandbox.runs);
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    std::thread::sleep(Duration::from_millis(100));
    let alive = decoy.try_wait().unwrap().is_none();
    let same = start_time(pid) == Some(start);
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert!(
        alive && same,
        "recovery killed the decoy (pid {pid}) a worker named"
    );
    assert_eq!(
        read_json(run_dir.join("state.json"))["status"],
        "interrupted"
    );
}

// ---------------------------------------------------------------------------
// 4. The deadline
// ---------------------------------------------------------------------------

/// How long a step of `timeoutSec: 2` may take, everything included: the
/// timeout, the grace (1 s) and 1.5 s for a machine busy with the tests
/// beside it. Unbounded, the snapshot below alone takes over a minute.
const DEADLINE_BOUND: Duration = Duration::from_millis(4500);

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_asleep_past_its_deadline_that_then_claims_success_times_out_in_time() {
    let sandbox = Sandbox::new();
    let runner = hostile_runner(&sandbox, |_| {});
    // Compiled before the clock starts.
    let warm = run(
        &runner,
        request(&sandbox, "hostile", "warm-up", "sleep-ms 0"),
    )
    .await;
    assert!(warm.ok, "{}", warm.summary);

    let mut json = request_json(&sandbox, "hostile", "asleep", "sleep-ms 2500");
    json["timeoutSec"] = 2.into();
    json["checkpoint"] = serde_json::json!({ "mode": "disabled" });
    let started = Instant::now();
    let result = run(&runner, serde_json::from_value(json).unwrap()).await;
    let took = started.elapsed();
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Failed,
        "{}",
        result.summary
    );
    let failure = result.state.failure.as_ref().expect("a failure");
    assert_eq!(
        failure.reason,
        FailureReason::Timeout,
        "{}",
        failure.message
    );
    assert!(took < DEADLINE_BOUND, "the step took {took:?}");
    assert_complete_record(&result);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worktree_slow_to_snapshot_does_not_stretch_the_deadline() {
    let sandbox = Sandbox::new();
    let runner = hostile_runner(&sandbox, |_| {});
    let warm = run(
        &runner,
        request(&sandbox, "hostile", "warm-up", "sleep-ms 0"),
    )
    .await;
    assert!(warm.ok, "{}", warm.summary);

    // A 4 GiB file (planted by an earlier step; here, for speed, by the
    // test, sparse) and more files from the worker, which then sleeps past
    // the deadline: the host's final snapshot (`checkpoint.mode: capture`)
    // would take many seconds to stage it, and must be cut short instead.
    let big = std::fs::File::create(sandbox.repo.join("big.bin")).unwrap();
    big.set_len(4 << 30).unwrap();
    drop(big);
    let mut json = request_json(&sandbox, "hostile", "slow", "fill 200 64\nsleep-ms 2500");
    json["timeoutSec"] = 2.into();
    let started = Instant::now();
    let result = run(&runner, serde_json::from_value(json).unwrap()).await;
    let took = started.elapsed();
    let stdout = stdout_of(&result);
    assert_op_ok(&stdout, "fill");
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Failed,
        "{}",
        result.summary
    );
    let failure = result.state.failure.as_ref().expect("a failure");
    assert_eq!(
        failure.reason,
        FailureReason::Timeout,
        "{}",
        failure.message
    );
    assert!(took < DEADLINE_BOUND, "the step took {took:?}");
    assert_complete_record(&result);
    let events = baa_runner_tests::read_lifecycle(&result.log_paths.lifecycle_log_path);
    assert!(
        events.iter().any(|e| e["event"] == "checkpoint.cut-short"),
        "the final snapshot was not cut short: {events:?}"
    );
    // The records the host always writes are there.
    let types: Vec<&str> = result
        .checkpoint
        .records
        .iter()
        .map(|r| r.checkpoint_type.as_str())
        .collect();
    assert!(types.contains(&"summary"), "{types:?}");
    assert!(types.contains(&"log-tail"), "{types:?}");
}

// ---------------------------------------------------------------------------
// 5. Amplification
// ---------------------------------------------------------------------------

/// Run `command` of `kind` through the real CLI (`baa-runner run --json`)
/// in a process of its own: its result, and its peak resident memory in
/// KiB (from `wait4`, so it is that host's alone).
fn cli_step_with_peak(
    sandbox: &Sandbox,
    plugins: &Path,
    kind: &str,
    name: &str,
    command: &str,
) -> (StepExecutionResult, u64) {
    let dir = sandbox.dir.path();
    let request = dir.join(format!("{name}.request.json"));
    let output = dir.join(format!("{name}.result.json"));
    std::fs::write(
        &request,
        request_json(sandbox, kind, name, command).to_string(),
    )
    .unwrap();
    // Waited for below with wait4, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = crate::cli()
        .arg("--plugins-dir")
        .arg(plugins)
        .args(["run", "--json"])
        .arg(&request)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain data filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let bytes = std::fs::read(&output).unwrap();
    let result = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{name}: the CLI printed no result ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        )
    });
    (result, usage.ru_maxrss as u64)
}

/// Bound on any one record file of an attacked step.
const RECORD_BOUND: u64 = 1024 * 1024;
/// Bound on an attacked step's whole run directory.
const RUN_DIR_BOUND: u64 = 4 * 1024 * 1024;
/// Bound on the host's peak memory growth over the attacks.
const RSS_GROWTH_BOUND_KIB: u64 = 256 * 1024;

fn assert_small_records(name: &str, result: &StepExecutionResult) {
    let paths = &result.log_paths;
    for file in [
        &paths.result_path,
        &paths.metadata_path,
        &paths.state_path,
        &paths.lifecycle_log_path,
    ] {
        let size = file_size(file);
        assert!(size < RECORD_BOUND, "{name}: {file} is {size} bytes");
    }
    let size = dir_size(Path::new(&paths.run_dir));
    assert!(
        size < RUN_DIR_BOUND,
        "{name}: the run directory holds {size} bytes: {:?}",
        largest_files(Path::new(&paths.run_dir))
    );
    let serialized = serde_json::to_vec(result).unwrap().len() as u64;
    assert!(
        serialized < RECORD_BOUND,
        "{name}: the result is {serialized} bytes"
    );
}

/// Each outsized string runs in a CLI host of its own, whose peak memory
/// is compared with that of a CLI host that ran an ordinary step.
#[test]
fn outsized_strings_from_a_worker_leave_small_records_and_a_bounded_host() {
    let sandbox = Sandbox::new();
    let plugins = hostile_plugins(&sandbox);
    // Compiled (and cached) first, so that every measured host loads alike.
    let (warm, _) = cli_step_with_peak(&sandbox, &plugins, "hostile", "warm-up", "sleep-ms 0");
    assert!(warm.ok, "{}", warm.summary);
    cli_step_with_peak(&sandbox, &plugins, "huge-describe", "warm-up-huge", "x");
    let (ordinary, baseline) =
        cli_step_with_peak(&sandbox, &plugins, "hostile", "ordinary", "sleep-ms 0");
    assert!(ordinary.ok, "{}", ordinary.summary);

    let cases = [
        ("hostile", "big-summary", "big-summary 32"),
        ("hostile", "big-failure", "big-failure 32"),
        ("hostile", "big-followups", "big-followups 1024 16384"),
        ("hostile", "big-event", "big-event 16"),
        ("huge-describe", "huge-describe", "x"),
    ];
    for (kind, name, script) in cases {
        let (result, peak) = cli_step_with_peak(&sandbox, &plugins, kind, name, script);
        assert_small_records(name, &result);
        assert_complete_record(&result);
        match name {
            "big-summary" => {
                assert!(result.summary.len() < 64 * 1024, "{}", result.summary.len());
                assert!(
                    result.summary.contains("cut"),
                    "no cut marker: {}",
                    &result.summary[..200.min(result.summary.len())]
                );
            }
            "big-failure" => {
                let failure = result.state.failure.as_ref().unwrap();
                assert_eq!(failure.reason, FailureReason::WorkerFailed);
                assert!(
                    failure.message.len() < 64 * 1024,
                    "{}",
                    failure.message.len()
                );
                assert!(failure.message.contains("cut"), "no cut marker");
            }
            "big-followups" => {
                let total: usize = result
                    .suggested_followup
                    .iter()
                    .map(|f| f.reason.len() + f.step_name.len())
                    .sum();
                assert!(total < 512 * 1024, "{total} bytes of followups kept");
            }
            "huge-describe" => {
                let failure = result.state.failure.as_ref().unwrap();
                assert_eq!(
                    failure.reason,
                    FailureReason::InvalidPlugin,
                    "{}",
                    &failure.message[..200]
                );
                assert!(failure.message.len() < 64 * 1024);
            }
            _ => {}
        }
        let grown = peak.saturating_sub(baseline);
        eprintln!("{name}: peak {peak} KiB, {grown} KiB above an ordinary step's");
        assert!(
            grown < RSS_GROWTH_BOUND_KIB,
            "{name}: the host's peak memory grew by {grown} KiB"
        );
    }
}

/// A describe of 16 MiB strings is cut in the kind listing too (`list_kinds`,
/// `baa-runner kinds`, `serve`), not passed on whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_describe_is_cut_in_the_kind_listing() {
    let sandbox = Sandbox::new();
    let runner = hostile_runner(&sandbox, |_| {});
    let info = runner.kind("huge-describe").await.expect("listed");
    let size = serde_json::to_vec(&info).unwrap().len();
    assert!(size < 1024 * 1024, "the kind's listing is {size} bytes");
}

// ---------------------------------------------------------------------------
// 6. Disk budget
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn floods_of_artifacts_checkpoints_or_events_end_at_the_step_disk_budget() {
    let sandbox = Sandbox::new();
    let runner = hostile_runner(&sandbox, |config| {
        config.limits.step_disk_mib = 8;
    });
    for (name, script) in [
        ("artifacts", "artifacts 10 4"),
        ("checkpoints", "checkpoints 10 4"),
        ("events", "events 2000 16"),
    ] {
        // The worker ignores every refusal and claims success.
        let result = run(&runner, request(&sandbox, "hostile", name, script)).await;
        assert_eq!(
            result.outcome,
            StepExecutionOutcome::Failed,
            "{name}: {}",
            result.summary
        );
        let failure = result.state.failure.as_ref().expect("a failure");
        assert_eq!(
            failure.reason,
            FailureReason::DiskLimit,
            "{name}: {}",
            failure.message
        );
        assert_eq!(
            read_json(&result.log_paths.state_path)["failure"]["reason"],
            "disk-limit"
        );
        assert_complete_record(&result);
        let size = dir_size(Path::new(&result.log_paths.run_dir));
        assert!(
            size < 12 * 1024 * 1024,
            "{name}: the run directory holds {size} bytes: {:?}",
            largest_files(Path::new(&result.log_paths.run_dir))
        );
    }
    let next = run(&runner, request(&sandbox, "hostile", "after", "sleep-ms 0")).await;
    assert!(next.ok, "{}", next.summary);
}

// ---------------------------------------------------------------------------
// 7. Provenance
// ---------------------------------------------------------------------------

/// Names of the host's own lifecycle events a worker may try to forge.
const HOST_EVENTS: &[&str] = &[
    "subprocess.started",
    "subprocess.exited",
    "step.finished",
    "checkpoint.captured",
    "run.recovered",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cannot_pass_its_events_or_checkpoints_off_as_the_hosts() {
    let sandbox = Sandbox::new();
    let runner = hostile_runner(&sandbox, |_| {});
    let mut script: Vec<String> = HOST_EVENTS
        .iter()
        .map(|name| format!("emit-fake {name} 1 1"))
        .collect();
    script.push("fake-checkpoint git-diff forged by the worker".into());
    script.push("capture-git-diff".into());
    let mut first = request(&sandbox, "hostile", "step-1", &script.join("\n"));
    first.attempt = 1;
    let result = run(&runner, first).await;
    assert!(result.ok, "{}", result.summary);
    assert_complete_record(&result);

    // Events: each forged name is recorded under `worker.`, as the worker's.
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    for name in HOST_EVENTS {
        let forged = format!("worker.{name}");
        let entry = events
            .iter()
            .find(|e| e["event"] == forged.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no `{forged}` event: {:?}",
                    baa_runner_tests::event_names(&events)
                )
            });
        assert_eq!(entry["source"], "worker", "{entry}");
    }
    for event in &events {
        let name = event["event"].as_str().unwrap();
        if HOST_EVENTS.contains(&name) {
            assert_eq!(
                event["source"], "host",
                "a host event name from the worker: {event}"
            );
        }
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "step.finished")
            .count(),
        1
    );

    // Checkpoints: the worker's git-diff says so; the host-filled one and
    // the host's final ones say they are the host's.
    let ours: Vec<_> = result
        .checkpoint
        .records
        .iter()
        .filter(|r| r.checkpoint_type.as_str() == "git-diff")
        .collect();
    assert!(
        ours.len() >= 3,
        "the worker's, the host-filled and the final: {ours:?}"
    );
    let forged = ours[0];
    assert_eq!(forged.summary, "the worker's own git-diff");
    assert_eq!(forged.source, CheckpointSource::Worker);
    assert_eq!(read_json(&forged.path)["source"], "worker");
    for record in &ours[1..] {
        assert_eq!(record.source, CheckpointSource::Host, "{record:?}");
        assert_eq!(read_json(&record.path)["source"], "host");
    }

    // Resumed, the worker's git-diff is handed back as the worker's type.
    let mut second = request(&sandbox, "hostile", "step-1", "resume");
    second.attempt = 2;
    second.checkpoint.as_mut().unwrap().resume_from_seq = Some(forged.seq);
    let resumed = run(&runner, second).await;
    let stdout = stdout_of(&resumed);
    let line = op_line(&stdout, "resume");
    assert!(line.contains("type=worker:git-diff "), "{line}");
    // A host-filled one keeps the host's type.
    let mut third = request(&sandbox, "hostile", "step-1", "resume");
    third.attempt = 3;
    third.checkpoint.as_mut().unwrap().resume_from_seq = Some(ours[1].seq);
    let resumed = run(&runner, third).await;
    let stdout = stdout_of(&resumed);
    let line = op_line(&stdout, "resume");
    assert!(line.contains("type=git-diff "), "{line}");
}
