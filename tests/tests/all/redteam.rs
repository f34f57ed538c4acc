//! Red team: attacks on the rules of README "A hostile kind borrows none of
//! the host's privileges" that `privileges.rs` does not cover, through the
//! real host (root in CI) with the `redteam*` fixtures
//! (`plugins/testing/redteam`, raw wit-bindgen, no SDK). Each test asserts
//! what the rules promise, and first proves its attack is live where it
//! can. Each doc comment says how the attack broke an earlier host; the
//! tests hold on this one. Scripts driving the CLI with the same fixtures:
//! `tests/redteam/`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baa_runner::config::KindGrant;
use baa_runner::contracts::StepExecutionRequest;
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{fixtures, read_lifecycle, Sandbox};

use crate::privileges::{as_root, stdout_of};
use crate::run;

fn plugins(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.dir.path().join("redteam-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for (wasm, name) in [
        (fixtures::REDTEAM_WASM, "redteam.wasm"),
        (fixtures::REDTEAM_GIT_WASM, "redteam-git.wasm"),
        (fixtures::REDTEAM_SH_WASM, "redteam-sh.wasm"),
    ] {
        std::fs::copy(wasm, dir.join(name)).unwrap();
    }
    dir
}

fn config(sandbox: &Sandbox) -> RunnerConfig {
    let mut config = RunnerConfig::default();
    config.plugin_dirs.push(plugins(sandbox));
    for (kind, program) in [("redteam-git", "git"), ("redteam-sh", "sh")] {
        config.kinds.insert(
            kind.into(),
            KindGrant {
                programs: vec![program.into()],
                ..Default::default()
            },
        );
    }
    config
}

fn runner(sandbox: &Sandbox) -> Runner {
    Runner::new(config(sandbox)).unwrap()
}

fn request_json(sandbox: &Sandbox, kind: &str, step: &str, command: &str) -> serde_json::Value {
    let mut json = sandbox.request_json(kind, command);
    json["stepId"] = step.into();
    json
}

fn request(sandbox: &Sandbox, kind: &str, step: &str, command: &str) -> StepExecutionRequest {
    serde_json::from_value(request_json(sandbox, kind, step, command)).unwrap()
}

fn assert_op_ok(stdout: &str, op: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{op}: ")))
        .unwrap_or_else(|| panic!("no output of `{op}`:\n{stdout}"));
    assert!(
        line.starts_with(&format!("{op}: ok")),
        "the attack did not get going: {line}"
    );
}

/// Rule 2 (a kind granted only git executes only git and its helpers): the
/// ELF interpreter is on every execute list (git needs it), and git runs a
/// repository's `diff.external` without a shell when it has no shell
/// metacharacters. `ld.so sub/x …` with `sub/x -> /usr/bin/touch` runs
/// touch, which leaves files named after the external diff's arguments.
#[tokio::test(flavor = "multi_thread")]
async fn a_kind_granted_git_runs_no_program_through_the_elf_interpreter() {
    if !as_root("ld.so as diff.external") {
        return;
    }
    let sandbox = Sandbox::new();
    let runner = runner(&sandbox);
    let plant = run(
        &runner,
        request(&sandbox, "redteam", "plant", "ext-diff /usr/bin/touch"),
    )
    .await;
    assert_op_ok(&stdout_of(&plant), "ext-diff");
    let result = run(
        &runner,
        request(
            &sandbox,
            "git",
            "git",
            "status\nadd -A\ndiff --cached\ncommit -q -m planted",
        ),
    )
    .await;
    let touched: Vec<String> = std::fs::read_dir(&sandbox.repo)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "120000" || (n.len() == 40 && n.bytes().all(|b| b.is_ascii_hexdigit())))
        .collect();
    assert!(
        touched.is_empty(),
        "git (granted) ran /usr/bin/touch (not granted) through {}: files {touched:?}; summary: {}",
        "/lib64/ld-linux-x86-64.so.2",
        result.summary
    );
}

/// Rule 2 (host-run git executes nothing the repository configures), for a
/// kind granted nothing: a partial-clone promisor remote `ext::ld.so touch
/// MARKER` and a missing blob make the host's own snapshot git lazily fetch:
/// `git remote-ext` (a git helper) executes the interpreter, which runs touch.
#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_snapshot_runs_no_promisor_remote_command() {
    if !as_root("lazy fetch in the host's snapshot") {
        return;
    }
    let sandbox = Sandbox::new();
    let runner = runner(&sandbox);
    let result = run(
        &runner,
        request(
            &sandbox,
            "redteam",
            "lazy",
            "lazy-fetch /lib64/ld-linux-x86-64.so.2 /usr/bin/touch PWNED-lazy-fetch\ncapture-git-diff",
        ),
    )
    .await;
    let stdout = stdout_of(&result);
    assert_op_ok(&stdout, "lazy-fetch");
    assert!(
        !sandbox.repo.join("PWNED-lazy-fetch").exists(),
        "the host's snapshot git executed a program the repository configured (a kind granted nothing):\n{stdout}"
    );
}

/// Rule 5 (bounded amplification): the host's git-diff record lists up to
/// 10,000 changed paths of up to 4 KiB each in `details`, which the disk
/// budget does not charge, and every record is copied into state and
/// result. 1,000 files at 4 KiB paths and a few captures.
#[tokio::test(flavor = "multi_thread")]
async fn git_diff_details_are_capped_and_charged() {
    let sandbox = Sandbox::new();
    let runner = runner(&sandbox);
    let result = run(
        &runner,
        request(
            &sandbox,
            "redteam",
            "details",
            "long-paths 1000\ncaptures 4",
        ),
    )
    .await;
    let size = std::fs::metadata(&result.log_paths.result_path)
        .unwrap()
        .len();
    let record =
        std::fs::metadata(Path::new(&result.log_paths.run_dir).join("checkpoints/000001.json"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(
        size < 1024 * 1024 && record < 1024 * 1024,
        "result.json is {size} bytes, checkpoint record 1 is {record} bytes (the worker's paths)"
    );
}

/// Rule 5: a subprocess's output waits in an unbounded channel until the
/// guest reads it; a guest that never reads keeps up to the output cap per
/// process (64 MiB) in host memory, for as many processes as its resource
/// table holds. Measured in a CLI host of its own (peak RSS from wait4).
#[test]
fn unread_subprocess_output_does_not_pile_up_in_host_memory() {
    if !as_root("output flood (dedicated users)") {
        return;
    }
    let sandbox = Sandbox::new();
    let cfg = sandbox.dir.path().join("baa.toml");
    std::fs::write(
        &cfg,
        format!(
            "plugin-dirs = [{:?}]\n[kinds.redteam-sh]\nprograms = [\"sh\"]\n",
            plugins(&sandbox).display().to_string()
        ),
    )
    .unwrap();
    let mut flood = String::new();
    for _ in 0..12 {
        flood.push_str("sh-bg yes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA | head -c 60000000 >&2\nsleep-ms 2000\n");
    }
    let peak = |name: &str, command: &str| -> u64 {
        let mut json = request_json(&sandbox, "redteam-sh", name, command);
        json["timeoutSec"] = 120.into();
        json["checkpoint"]["mode"] = "disabled".into();
        let req = sandbox.dir.path().join(format!("{name}.json"));
        std::fs::write(&req, json.to_string()).unwrap();
        #[allow(clippy::zombie_processes)]
        let child = crate::cli()
            .arg("--config")
            .arg(&cfg)
            .args(["run", "--json"])
            .arg(&req)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: plain data filled in by wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child.
        unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        usage.ru_maxrss as u64
    };
    // The first run compiles the kind (and fills the compiled cache).
    peak("warm", "sh head -c 1000 /dev/zero");
    let base = peak("base", "sh head -c 1000 /dev/zero");
    let attacked = peak("flood", &flood);
    eprintln!("peak RSS: ordinary step {base} KiB, unread output {attacked} KiB");
    assert!(
        attacked < base + 256 * 1024,
        "a guest that does not read its subprocesses' output grew the host by {} KiB",
        attacked - base
    );
}

/// Rule 4 (one deadline binds all host work): before a host snapshot (or
/// scratch file, or spawn) the host lends the worktree to the step's user
/// with a synchronous walk over every entry, bounded by nothing. A kind
/// granted nothing creates many files through WASI and returns just before
/// its deadline; the final snapshot's lend then runs long past it.
#[tokio::test(flavor = "multi_thread")]
async fn the_lend_walk_is_bound_by_the_deadline() {
    if !as_root("lend walk (dedicated users)") {
        return;
    }
    let sandbox = Sandbox::new();
    let runner = runner(&sandbox);
    let mut json = request_json(
        &sandbox,
        "redteam",
        "lend",
        "many-files many 150000\nuntil-ms 19800",
    );
    json["timeoutSec"] = 20.into();
    let started = Instant::now();
    let result = run(&runner, serde_json::from_value(json).unwrap()).await;
    let wall = started.elapsed();
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let time = |e: &serde_json::Value| chrono_millis(e["timestamp"].as_str().unwrap_or_default());
    let start = events
        .iter()
        .find(|e| e["event"] == "step.started")
        .map(time)
        .unwrap();
    let last_snapshot = events
        .iter()
        .filter(|e| e["event"].as_str().unwrap_or("").starts_with("checkpoint."))
        .map(time)
        .next()
        .unwrap();
    eprintln!(
        "wall {wall:?}; first checkpoint event {} ms after step.started",
        last_snapshot - start
    );
    // timeoutSec 20 + 3/4 of the 1,000 ms grace, plus a margin.
    assert!(
        last_snapshot - start < 21_000,
        "the host's final snapshot ended {} ms after the step started (deadline 20,750 ms); wall {wall:?}",
        last_snapshot - start
    );
}

/// `2026-12-03T15:54:45.283Z` → milliseconds since the day began.
fn chrono_millis(ts: &str) -> i64 {
    let time = ts
        .split('T')
        .nth(1)
        .unwrap_or("0:0:0Z")
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: i64 = parts.next().unwrap_or("0").parse().unwrap_or(0);
    let m: i64 = parts.next().unwrap_or("0").parse().unwrap_or(0);
    let s: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    (h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64
}

/// Isolation of dedicated users: a SysV message queue (mode 0600) made by a
/// step outlives it (the sweep kills processes only, there is no IPC
/// namespace), and the next step to lease the same uid, of another task
/// on another worktree, reads what it holds.
#[tokio::test(flavor = "multi_thread")]
async fn sysv_ipc_of_a_step_dies_with_it() {
    if !as_root("SysV IPC across steps") {
        return;
    }
    let a = Sandbox::new();
    let runner = runner(&a);
    let send = "sh perl -e 'use IPC::SysV qw(IPC_CREAT); defined($id=msgget(0x5ec7e7, IPC_CREAT|0600)) or die; msgsnd($id, pack(q(l! a*), 1, q(SECRET-of-task-A)), 0) or die; print qq(sent).chr(10)'";
    let result = run(&runner, request(&a, "redteam-sh", "ipc-a", send)).await;
    assert_op_ok(&stdout_of(&result), "sh");
    let b = Sandbox::new();
    let mut json = request_json(
        &b,
        "shell",
        "ipc-b",
        "perl -e 'use IPC::SysV; $id=msgget(0x5ec7e7, 0) or exit 0; msgrcv($id, $buf, 100, 0, 0) and print substr($buf, 8)'",
    );
    json["taskId"] = "task-b".into();
    let result = run(&runner, serde_json::from_value(json).unwrap()).await;
    let leaked = stdout_of(&result);
    // Clean up whatever is left, whatever the verdict.
    let _ = std::process::Command::new("ipcrm")
        .args(["-Q", "0x5ec7e7"])
        .status();
    assert!(
        !leaked.contains("SECRET-of-task-A"),
        "task B's step read task A's message queue: {leaked}"
    );
}

/// Rule 1 (the root host never follows a path a step can write): a spawn's
/// cwd is canonicalized by the root host through links the step planted,
/// and the error tells a path inside a root-only (0700) directory that
/// exists from one that does not.
#[tokio::test(flavor = "multi_thread")]
async fn the_cwd_check_follows_no_link_as_root() {
    if !as_root("cwd oracle") {
        return;
    }
    let sandbox = Sandbox::new();
    let private = Path::new("/run").join(format!("redteam-private-{}", std::process::id()));
    std::fs::create_dir_all(private.join("exists")).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&private).unwrap().uid(), 0);
    let runner = runner(&sandbox);
    let command = format!(
        "symlink {p}/exists p1\nsymlink {p}/missing p2\nspawn-cwd p1 git --version\nspawn-cwd p2 git --version",
        p = private.display()
    );
    let result = run(&runner, request(&sandbox, "redteam-git", "cwd", &command)).await;
    let stdout = stdout_of(&result);
    let _ = std::fs::remove_dir_all(&private);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("spawn-cwd"))
        .map(|l| l.split("] ").nth(1).unwrap_or(l))
        .map(|l| {
            if l.contains("p1") {
                l.split("p1").nth(1).unwrap_or(l)
            } else {
                l.split("p2").nth(1).unwrap_or(l)
            }
        })
        .collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    assert_eq!(
        errors[0], errors[1],
        "the answers differ for a path that exists in a root-only directory and one that does not:\n{stdout}"
    );
    let _ = Duration::ZERO;
}

/// Lending and handing back: a walk used to stop 512 levels down, so what
/// a step made deeper stayed its uid's after the step, for the next step to
/// lease that uid. Now every level comes back to the worktree's owner.
#[tokio::test(flavor = "multi_thread")]
async fn entries_nested_deeper_than_a_walk_holds_open_are_handed_back() {
    if !as_root("deep nesting handed back") {
        return;
    }
    let sandbox = Sandbox::new();
    // The chown fallback (file systems without idmapped mounts).
    let mut config = config(&sandbox);
    config.sandbox.worktree_view = baa_runner::config::WorktreeView::Chown;
    let runner = Runner::new(config).unwrap();
    let script = "sh i=0; while [ $i -lt 600 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo deep > f; chmod 777 f; echo made";
    let result = run(&runner, request(&sandbox, "redteam-sh", "deep", script)).await;
    assert_op_ok(&stdout_of(&result), "sh");
    let owner = std::fs::metadata(&sandbox.repo).unwrap().uid();
    let (mut deepest, mut dir) = (0, sandbox.repo.join("d"));
    while dir.is_dir() {
        assert_eq!(
            std::fs::symlink_metadata(&dir).unwrap().uid(),
            owner,
            "{} still belongs to the sandbox user",
            dir.display()
        );
        deepest += 1;
        dir = dir.join("d");
    }
    assert_eq!(deepest, 600);
    let file = dir.parent().unwrap().join("f");
    assert_eq!(std::fs::symlink_metadata(&file).unwrap().uid(), owner);
}

/// Rule 2, second round: a git alias (`alias.x = !ld.so`) is run by git
/// without a shell with the step's arguments, and `gpg.ssh.defaultKeyCommand`
/// is split into words and run for `commit-tree -S`; both handed the ELF
/// interpreter a program to load. Aliases (any subcommand that is not one
/// of git's own) are refused now, and every signing program is pinned to
/// one that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn git_aliases_and_signing_commands_run_no_program() {
    if !as_root("git alias and signing command") {
        return;
    }
    let sandbox = Sandbox::new();
    let runner = runner(&sandbox);
    let ld_so = "/lib64/ld-linux-x86-64.so.2";
    let script = format!(
        "append .git/config [alias]\n\
         append .git/config evil = !{ld_so}\n\
         append .git/config [gpg]\n\
         append .git/config format = ssh\n\
         append .git/config [gpg \"ssh\"]\n\
         append .git/config defaultKeyCommand = {ld_so} /usr/bin/touch PWNED-signing\n\
         git evil /usr/bin/touch PWNED-alias\n\
         git commit-tree -S HEAD^{{tree}} -m x"
    );
    let result = run(&runner, request(&sandbox, "redteam-git", "alias", &script)).await;
    let stdout = stdout_of(&result);
    assert!(
        stdout.contains("is refused"),
        "the alias was not refused: {stdout}"
    );
    for marker in ["PWNED-alias", "PWNED-signing"] {
        assert!(
            !sandbox.repo.join(marker).exists(),
            "{marker} appeared: a program the kind was not granted ran\n{stdout}"
        );
    }
}

/// A step lowers the limits of the processes that serve it: its supervisor
/// (which becomes the step's user) and, on a host without root, the step's
/// fork server and the host itself (same user): `RLIMIT_NOFILE` of 1 made
/// the server's `poll` fail at once and spin on a core until killed;
/// `RLIMIT_FSIZE` of 0 killed the host with SIGXFSZ before it wrote the
/// result. No process of a step may change another process's limits,
/// affinity, priority or scheduling class.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_cannot_change_the_limits_or_scheduling_of_other_processes() {
    let a = Sandbox::new();
    let runner = runner(&a);
    let script = r#"python3 -c 'import os, resource
lowered = []
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    for name, change in [
        ("nofile", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (1, 1))),
        ("affinity", lambda: os.sched_setaffinity(pid, {0})),
        ("nice", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19)),
        ("scheduler", lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))),
    ]:
        try:
            change()
            lowered.append((name, pid))
        except OSError:
            pass
for name, which in [("user", os.PRIO_USER), ("group", os.PRIO_PGRP)]:
    try:
        os.setpriority(which, 0, 19)
        lowered.append((name, 0))
    except OSError:
        pass
print("lowered", lowered)'
echo still-running"#;
    let result = run(&runner, request(&a, "shell", "prlimit", script)).await;
    let out = stdout_of(&result);
    assert!(out.contains("still-running"), "{}: {out}", result.summary);
    assert!(
        out.contains("lowered []"),
        "the step changed the limits of other processes: {out}"
    );
    // The step's next launches are served as before.
    let result = run(
        &runner,
        request(&a, "shell", "after-prlimit", "echo served"),
    )
    .await;
    assert!(stdout_of(&result).contains("served"), "{}", result.summary);
}

/// Rule 3 (nothing a step starts outlives it): a chain of processes that
/// ignore SIGTERM and each leave their process group as they fork outran a
/// supervisor that killed one generation per pass; once orphaned, one of
/// them waited for the host's final git-diff snapshot to finish and then
/// changed the worktree behind it (the snapshot had run while the step's
/// cgroup was still alive). Everything the step started is gone before
/// the snapshot: the worktree it records is the one the worker left. (The
/// attack is a race: four chains made the earlier host lose it about every
/// second run.)
#[tokio::test(flavor = "multi_thread")]
async fn nothing_the_step_started_runs_during_or_after_the_final_snapshot() {
    let a = Sandbox::new();
    let runner = runner(&a);
    let chain = r#"import os, signal, time, glob
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)
wt = os.getcwd()
def watch():
    seen = None
    end = time.time() + 20
    while time.time() < end:
        found = glob.glob(os.environ.get("TMPDIR", "/tmp") + "/baa-snapshot-index-*")
        if found and not seen:
            seen = found[0]
        if seen and not os.path.exists(seen):
            open(os.path.join(wt, "HIDDEN.txt"), "w").write("after the snapshot\n")
            return
        time.sleep(0.0005)
def elected():
    if os.getppid() == 1:
        try:
            os.close(os.open(os.path.join(wt, ".elected"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except OSError:
            os._exit(0)
        watch()
        os._exit(0)
while True:
    try:
        pid = os.fork()
    except OSError:
        elected()
        continue
    if pid == 0:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        continue
    break
while True:
    time.sleep(0.002)
    elected()
"#;
    std::fs::write(a.repo.join("chain.py"), chain).unwrap();
    let mut json = request_json(
        &a,
        "shell",
        "chain",
        "for i in 1 2 3 4; do python3 chain.py </dev/null >/dev/null 2>&1 & done; sleep 1",
    );
    json["checkpoint"] = serde_json::json!({ "mode": "capture" });
    let result = run(&runner, serde_json::from_value(json).unwrap()).await;
    assert!(result.ok, "{}", result.summary);
    // Anything left would write within the next moments.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !a.repo.join("HIDDEN.txt").exists(),
        "a process of the step changed the worktree after the final snapshot"
    );
}
