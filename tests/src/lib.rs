//! Shared by the integration tests: the fixture plugins' paths and helpers
//! that make real temporary git repositories and step requests.

use std::path::{Path, PathBuf};
use std::process::Command;

use baa_runner::contracts::StepExecutionRequest;
use serde_json::{json, Value};

pub mod mock_model;
pub mod nats;

/// Paths of the fixture worker kinds built by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// A temporary git repository (the worktree) with a runs directory beside it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub runs: PathBuf,
}

/// Run git in `dir`, panicking with its stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sandbox {
    /// A repository with one commit holding `README.md`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = dir.path().join("repo");
        let runs = dir.path().join("runs");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["config", "user.name", "Test Author"]);
        git(&repo, &["config", "user.email", "author@example.test"]);
        std::fs::write(repo.join("README.md"), "# demo\n").unwrap();
        git(&repo, &["add", "README.md"]);
        git(&repo, &["commit", "-q", "-m", "initial commit"]);
        Sandbox { dir, repo, runs }
    }

    /// A request as JSON, for tests that tweak fields before parsing.
    pub fn request_json(&self, worker_kind: &str, command: &str) -> Value {
        json!({
            "taskId": "task-1",
            "stepId": "step-1",
            "runId": "run-1",
            "attempt": 1,
            "stepName": format!("{worker_kind} step"),
            "stepKind": worker_kind,
            "workerKind": worker_kind,
            "timeoutSec": 30,
            "runtime": {
                "repoRoot": self.repo,
                "worktreePath": self.repo,
                "runsRootDir": self.runs,
            },
            "command": command,
            "checkpoint": { "mode": "capture" },
        })
    }

    /// A request for `worker_kind` running `command`.
    pub fn request(&self, worker_kind: &str, command: &str) -> StepExecutionRequest {
        serde_json::from_value(self.request_json(worker_kind, command)).expect("valid request")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Read a JSON record of a run directory, verify its checksum, and return
/// it without the checksum.
pub fn read_json(path: impl AsRef<Path>) -> Value {
    baa_runner::fsutil::read_record_value(path.as_ref()).unwrap_or_else(|e| panic!("{e}"))
}

/// The lifecycle log of a run, one parsed event per line.
pub fn read_lifecycle(path: impl AsRef<Path>) -> Vec<Value> {
    let text = std::fs::read_to_string(path.as_ref()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// The processes whose command line contains `marker`, as `pid: cmdline`
/// (a test gives its children a unique argument, then checks they are gone).
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && !cmdline.contains("cargo") {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

/// The event names of a lifecycle log.
pub fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Where `scripts/tools.sh` installs tools: `$BAA_TOOLS_DIR`, else
/// `/var/cache/baa-runner` as root, else `~/.cache/baa-runner`.
pub fn tools_dir() -> PathBuf {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    std::env::var_os("BAA_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| root.then(|| PathBuf::from("/var/cache/baa-runner")))
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("baa-runner")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/baa-runner")))
        .unwrap_or_default()
}

/// componentize-py as `scripts/tools.sh` installed it.
pub fn componentize_py() -> PathBuf {
    let bin = tools_dir().join(format!(
        "componentize-py-{}/bin/componentize-py",
        baa_runner::scaffold::COMPONENTIZE_PY
    ));
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/test.sh (it installs componentize-py from PyPI)",
        bin.display()
    );
    bin
}

/// componentize-js as `scripts/tools.sh` installed it.
pub fn componentize_js() -> PathBuf {
    let bin = tools_dir().join(format!(
        "componentize-js-{}/node_modules/.bin/componentize-js",
        baa_runner::scaffold::COMPONENTIZE_JS
    ));
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/test.sh (it installs componentize-js from npm)",
        bin.display()
    );
    bin
}

/// A child process killed and reaped when dropped: a test that fails
/// midway leaves no server behind (holding the test's output pipe).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes working in `dir` or below it (their current directory),
/// as `pid: cmdline`: a step's processes work in its worktree or home, so
/// none is left when this is empty.
pub fn processes_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if cwd.starts_with(dir) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}
