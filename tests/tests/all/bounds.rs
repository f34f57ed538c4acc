//! Every host bounds a step's processes: a root host by the step's
//! dedicated user, a host without root by a user namespace of the step's
//! own (`RLIMIT_NPROC` counts per user and namespace). The unprivileged
//! host here is the real `baa-runner` CLI run as `nobody` on a worktree of
//! its own, with a fork bomb as the step.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use baa_runner_tests::{git, read_json};

use crate::built_binary;

const NOBODY: u32 = 65534;

/// Forks sleeping children until the kernel refuses, prints how many.
const FORK_BOMB: &str = "import os, time\n\
n = 0\n\
for i in range(200):\n    \
    try:\n        \
        pid = os.fork()\n    \
    except OSError as e:\n        \
        print('refused:', e.errno)\n        \
        break\n    \
    if pid == 0:\n        \
        time.sleep(2)\n        \
        os._exit(0)\n    \
    n += 1\n\
print('forked', n)\n";

fn chown_tree(root: &Path, uid: u32) {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid)).unwrap();
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            chown_tree(&path, uid);
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).unwrap();
        }
    }
}

#[test]
fn a_fork_bomb_of_a_host_without_root_is_bounded_by_the_steps_namespace() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "SKIPPED a host without root: the test runs the CLI as `nobody` and needs root \
             to do so (CI runs the tests as root)"
        );
        return;
    }
    // Everything the unprivileged host needs, in a tree it owns: its
    // binary (the launcher travels inside it), a worktree, its runs.
    let dir = tempfile::Builder::new()
        .prefix("baa-nonroot-")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = root.join("baa-runner");
    std::fs::copy(built_binary("baa-runner"), &bin).unwrap();
    let repo = root.join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("bomb.py"), FORK_BOMB).unwrap();
    std::fs::write(root.join("baa.toml"), "[sandbox]\nprocesses = 24\n").unwrap();
    let request = serde_json::json!({
        "taskId": "t", "stepId": "bomb", "runId": "r", "attempt": 1,
        "stepName": "fork bomb", "stepKind": "shell", "workerKind": "shell",
        "timeoutSec": 60,
        "runtime": { "repoRoot": repo, "worktreePath": repo, "runsRootDir": root.join("runs") },
        "command": "python3 bomb.py",
        "checkpoint": { "mode": "disabled" },
    });
    std::fs::write(root.join("request.json"), request.to_string()).unwrap();
    chown_tree(root, NOBODY);

    let out = std::process::Command::new(&bin)
        .args(["run", "--json", "--config"])
        .arg(root.join("baa.toml"))
        .arg(root.join("request.json"))
        .env_clear()
        .env("HOME", root)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("no result: {}", String::from_utf8_lossy(&out.stderr));
    });
    let metadata = read_json(result["logPaths"]["metadataPath"].as_str().unwrap());
    let bound = &metadata["sandbox"]["processBound"];
    if bound["mode"] == "none" {
        eprintln!(
            "SKIPPED the process bound of a host without root: this kernel lets `nobody` \
             create no user namespace (processBound = {bound})"
        );
        return;
    }
    assert_eq!(bound["mode"], "rlimit-user-namespace", "{metadata}");
    assert_eq!(bound["max"], 24);
    assert_eq!(result["outcome"], "completed", "{}", result["summary"]);
    let stdout =
        std::fs::read_to_string(result["logPaths"]["stdoutLogPath"].as_str().unwrap()).unwrap();
    let forked: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("forked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    // 24 processes of the step, the supervisor, python and its children.
    assert!(stdout.contains("refused: 11"), "{stdout}");
    assert!((10..24).contains(&forked), "forked {forked}: {stdout}");
}

/// A root host puts each step in a pids cgroup of its own where it may make
/// one: the fork bomb stops at `[sandbox] processes`, the step's processes
/// are in the group, and the group is gone once the step is over.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_hosts_step_runs_in_a_pids_cgroup_of_its_own() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED the step cgroup: only a root host makes one");
        return;
    }
    let sandbox = baa_runner_tests::Sandbox::new();
    std::fs::write(sandbox.repo.join("bomb.py"), FORK_BOMB).unwrap();
    let mut config = baa_runner::RunnerConfig::default();
    config.sandbox.processes = 24;
    let runner = baa_runner::Runner::new(config).unwrap();
    let request = sandbox.request_json("shell", "cat /proc/self/cgroup; python3 bomb.py");
    let result = crate::run(&runner, serde_json::from_value(request).unwrap()).await;
    let metadata = read_json(result.log_paths.metadata_path.as_str());
    let bound = &metadata["sandbox"]["processBound"];
    if bound["mode"] != "pids-cgroup" {
        eprintln!(
            "SKIPPED the step cgroup: this machine gives the host no writable pids cgroup \
             hierarchy (processBound = {bound})"
        );
        return;
    }
    assert_eq!(bound["max"], 24);
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    let group = stdout
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, path)| path.to_string()))
        .or_else(|| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(group.contains("/baa-runner/step-"), "{stdout}");
    let forked: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("forked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(stdout.contains("refused: 11"), "{stdout}");
    assert!(forked < 24, "forked {forked}: {stdout}");
    // The group is removed once its processes are gone.
    let dir = Path::new("/sys/fs/cgroup/pids").join(group.trim().trim_start_matches('/'));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while dir.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// A second root host in a pid namespace of its own (a container) took the
/// first host's running step for one a stopped host left — its pid was not
/// in the second host's `/proc` — and killed it and removed its cgroup.
/// Groups are named by the host's pid namespace, pid and start time, and
/// only groups of this namespace whose host is gone are emptied.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_in_another_pid_namespace_leaves_a_running_steps_cgroup_alone() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED hosts in two pid namespaces: needs root");
        return;
    }
    if std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED hosts in two pid namespaces: `unshare --pid` is not available here");
        return;
    }
    let first = baa_runner_tests::Sandbox::new();
    let runner = baa_runner::Runner::new(baa_runner::RunnerConfig::default()).unwrap();
    let request = first.request_json("shell", "sleep 3; echo survived");
    let running = tokio::spawn(async move {
        let result = crate::run(&runner, serde_json::from_value(request).unwrap()).await;
        (first, result)
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // The second host: the real CLI, in a new pid namespace.
    let second = baa_runner_tests::Sandbox::new();
    let path = second.dir.path().join("request.json");
    std::fs::write(
        &path,
        second.request_json("shell", "echo second").to_string(),
    )
    .unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(crate::built_binary("baa-runner"))
        .args(["run", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (first, result) = running.await.unwrap();
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains("survived"),
        "the first host's step was killed: {} / {stdout}",
        result.summary
    );
    drop(first);
}
