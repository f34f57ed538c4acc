//! Attacks by a worker's subprocesses against the host, through the real
//! probe plugin, the real launcher and real programs (sh, python3). Each
//! test checks that the attack was refused, that nothing outside the
//! worktree changed and that no process of the step is left.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use baa_runner::capabilities::subprocess::launcher;
use baa_runner::contracts::{StepExecutionOutcome, StepExecutionResult};
use baa_runner::RunnerConfig;
use baa_runner_tests::{read_json, Sandbox};

use crate::{grant_all, probe_runner_with, run};

/// Attacks in Python, one per name, each printing `<name>: ok …` or
/// `<name>: denied …` per attempt.
const ATTACKS: &str = r#"
import ctypes, errno, fcntl, os, socket, sys

def attempt(name, fn):
    try:
        out = fn()
        print(f"{name}: ok {out if out is not None else ''}")
    except OSError as e:
        print(f"{name}: denied {e}")

op, args = sys.argv[1], sys.argv[2:]
if op == "outside":
    outside = args[0]
    def write_canary():
        with open(f"{outside}/canary.txt", "a") as f:
            f.write("pwned")
    def create():
        open(f"{outside}/new.txt", "w").write("pwned")
    def through_link():
        open("link-out/through.txt", "w").write("pwned")
    attempt("write", write_canary)
    attempt("create", create)
    attempt("chmod", lambda: os.chmod(f"{outside}/canary.txt", 0o777))
    attempt("chown", lambda: os.chown(f"{outside}/canary.txt", os.getuid(), os.getgid()))
    attempt("chmod-system", lambda: os.chmod("/etc/hostname", 0o777))
    attempt("hardlink", lambda: os.link(f"{outside}/canary.txt", "hard-link"))
    attempt("rename-out", lambda: os.rename("README.md", f"{outside}/stolen.md"))
    attempt("symlink-follow", through_link)
    attempt("utime", lambda: os.utime(f"{outside}/canary.txt", (0, 0)))
    # Private per step: writable, but never the host's.
    for d in ["/tmp", "/var/tmp", "/dev/shm"]:
        attempt(f"private{d}", lambda d=d: open(f"{d}/baa-private-probe", "w").write("x"))
elif op == "host":
    host = int(args[0])
    attempt("environ", lambda: open(f"/proc/{host}/environ", "rb").read()[:20])
    attempt("mem", lambda: open(f"/proc/{host}/mem", "rb").read(1))
    attempt("signal", lambda: os.kill(host, 0))
    attempt("signal-parent-tree", lambda: os.kill(os.getppid(), 0))
    libc = ctypes.CDLL(None, use_errno=True)
    def ptrace():
        if libc.ptrace(16, host, None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    attempt("ptrace", ptrace)
    def unshare():
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    attempt("unshare", unshare)
    def mknod():
        os.mknod("fifo-or-device", 0o600 | 0o020000, os.makedev(1, 3))
    attempt("mknod", mknod)
elif op == "net":
    port = int(args[0])
    def tcp():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
    def udp():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"exfiltrated", ("127.0.0.1", port))
    def tcp6():
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(("::1", port))
    def raw():
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    attempt("tcp", tcp)
    attempt("udp", udp)
    attempt("tcp6", tcp6)
    attempt("packet", raw)
elif op == "fds":
    def open_fds():
        found = []
        for fd in range(3, 4096):
            try:
                fcntl.fcntl(fd, fcntl.F_GETFD)
                found.append(fd)
            except OSError:
                pass
        return found
    attempt("fds", open_fds)
"#;

/// Whether this kernel enforces what the tests below rely on; if not, say
/// so loudly (the test then checks nothing and must not pass silently).
fn enforced(what: &str) -> bool {
    let probe = launcher::probe().expect("the launcher's probe runs");
    if probe.landlock_abi == 0 || !probe.seccomp {
        eprintln!("SKIPPED {what}: this kernel lacks Landlock or seccomp ({probe:?})");
        return false;
    }
    true
}

/// Whether the host runs as root, so steps get dedicated users.
fn dedicated_users(what: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {what}: needs the host to run as root (dedicated sandbox users)");
    }
    root
}

/// A tree outside the worktree the attacks aim at, and its fingerprint.
/// It lives where the step's private /tmp does not hide it (under /run
/// when the host is root), so only the confinement can protect it.
struct Outside {
    _temp: tempfile::TempDir,
    dir: PathBuf,
}

impl Outside {
    fn new(sandbox: &Sandbox) -> Self {
        let base = if rustix::process::geteuid().is_root() {
            PathBuf::from("/run")
        } else {
            sandbox.dir.path().to_path_buf()
        };
        let temp = tempfile::Builder::new()
            .prefix("baa-outside-")
            .tempdir_in(base)
            .unwrap();
        let dir = temp.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.join("canary.txt"), "canary\n").unwrap();
        // Writable by everyone: only the confinement stands in the way.
        std::fs::set_permissions(
            dir.join("canary.txt"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        Outside { _temp: temp, dir }
    }

    /// Every entry's path, mode, owner, times and contents.
    fn fingerprint(&self) -> BTreeMap<PathBuf, String> {
        let mut map = BTreeMap::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let contents = if meta.is_file() {
                    std::fs::read_to_string(&path).unwrap_or_default()
                } else {
                    String::new()
                };
                map.insert(
                    path.clone(),
                    format!(
                        "{:o} {}:{} {} {contents}",
                        meta.mode(),
                        meta.uid(),
                        meta.gid(),
                        meta.mtime()
                    ),
                );
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
        map
    }
}

/// Nothing of the step may be left running: no process whose command
/// line carries one of `markers` (unique to the test).
fn assert_no_process_left(markers: &[&str]) {
    for marker in markers {
        let left = baa_runner_tests::processes_with(marker);
        assert!(left.is_empty(), "left running: {left:?}");
    }
}

fn stdout_of(result: &StepExecutionResult) -> String {
    std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap()
}

/// The lines of `op` the attack script printed, by attempt name.
fn verdicts(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, rest)| {
            !name.contains(' ') && (rest.starts_with("ok") || rest.starts_with("denied"))
        })
        .map(|(name, rest)| (name.to_string(), rest.to_string()))
        .collect()
}

/// Run the attack `op` with `args` through the probe's `sh` in `sandbox`.
async fn attack(
    sandbox: &Sandbox,
    adjust: impl FnOnce(&mut RunnerConfig),
    op: &str,
    args: &[&str],
) -> StepExecutionResult {
    std::fs::write(sandbox.repo.join("attack.py"), ATTACKS).unwrap();
    let (runner, _) = probe_runner_with(sandbox, grant_all(), adjust);
    let script = format!("sh python3 attack.py {op} {}", args.join(" "));
    run(&runner, sandbox.request("probe", &script)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_chmod_and_links_outside_the_worktree_are_refused() {
    if !enforced("outside-the-worktree attacks") {
        return;
    }
    let sandbox = Sandbox::new();
    let outside = Outside::new(&sandbox);
    // A symlink in the worktree pointing out, planted before the step.
    std::os::unix::fs::symlink(&outside.dir, sandbox.repo.join("link-out")).unwrap();
    let before = outside.fingerprint();
    let host_tmp_before = std::fs::read_dir("/var/tmp").unwrap().count();

    let result = attack(
        &sandbox,
        |_| {},
        "outside",
        &[outside.dir.to_str().unwrap()],
    )
    .await;
    let stdout = stdout_of(&result);
    let verdicts = verdicts(&stdout);
    for name in [
        "write",
        "create",
        "hardlink",
        "rename-out",
        "symlink-follow",
    ] {
        assert!(
            verdicts.get(name).is_some_and(|v| v.starts_with("denied")),
            "`{name}` was not refused: {stdout}"
        );
    }
    if dedicated_users("chmod/chown/utime outside the worktree") {
        for name in ["chmod", "chown", "chmod-system", "utime"] {
            assert!(
                verdicts.get(name).is_some_and(|v| v.starts_with("denied")),
                "`{name}` was not refused: {stdout}"
            );
        }
    }
    // With a dedicated user, or a user namespace of the step's own (a host
    // without root), shared scratch directories are the step's own.
    let metadata = read_json(&result.log_paths.metadata_path);
    let own_namespace = metadata["sandbox"]["processBound"]["mode"] != "none";
    if own_namespace {
        for name in ["private/tmp", "private/var/tmp", "private/dev/shm"] {
            assert!(
                verdicts.get(name).is_some_and(|v| v.starts_with("ok")),
                "`{name}`: {stdout}"
            );
        }
        assert!(!Path::new("/var/tmp/baa-private-probe").exists());
        assert!(!Path::new("/dev/shm/baa-private-probe").exists());
        assert!(!Path::new("/tmp/baa-private-probe").exists());
    }
    if rustix::process::geteuid().is_root() {
        assert_eq!(outside.fingerprint(), before, "{stdout}");
    } else {
        // Without root the step runs as the host's own user, which owns
        // the outside tree: its chmod is not refused (Landlock does not
        // cover modes); nothing else may have changed.
        let unmoded = |print: &BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
            print
                .iter()
                .map(|(path, line)| {
                    // Owner and contents stay (utime is the owner's too).
                    let fields: Vec<&str> = line.splitn(4, ' ').collect();
                    let kept = format!("{} {}", fields[1], fields.get(3).unwrap_or(&""));
                    (path.clone(), kept)
                })
                .collect()
        };
        assert_eq!(
            unmoded(&outside.fingerprint()),
            unmoded(&before),
            "{stdout}"
        );
    }
    assert_eq!(
        std::fs::read_dir("/var/tmp").unwrap().count(),
        host_tmp_before
    );
    assert!(sandbox.repo.join("README.md").exists());
    // The worktree is its owner's again.
    let owner = std::fs::metadata(sandbox.dir.path()).unwrap().uid();
    assert_eq!(std::fs::metadata(&sandbox.repo).unwrap().uid(), owner);
    assert_eq!(
        std::fs::metadata(sandbox.repo.join("README.md"))
            .unwrap()
            .uid(),
        owner
    );
    assert_no_process_left(&["attack.py outside"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_process_its_environment_and_the_kernel_are_out_of_reach() {
    if !enforced("attacks on the host process") {
        return;
    }
    let sandbox = Sandbox::new();
    std::env::set_var("BAA_CONFINEMENT_SECRET", "host-secret-4711");
    let host = std::process::id().to_string();
    let result = attack(&sandbox, |_| {}, "host", &[&host]).await;
    let stdout = stdout_of(&result);
    assert!(!stdout.contains("host-secret-4711"), "{stdout}");
    let verdicts = verdicts(&stdout);
    for name in ["environ", "mem", "signal", "ptrace", "unshare", "mknod"] {
        assert!(
            verdicts.get(name).is_some_and(|v| v.starts_with("denied")),
            "`{name}` was not refused: {stdout}"
        );
    }
    // Its own process tree is its to signal.
    assert!(verdicts["signal-parent-tree"].starts_with("ok"), "{stdout}");
    assert_no_process_left(&["attack.py host"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_udp_egress_are_refused() {
    if !enforced("network attacks") {
        return;
    }
    let sandbox = Sandbox::new();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    udp.set_nonblocking(true).unwrap();
    tcp.set_nonblocking(true).unwrap();

    let result = attack(&sandbox, |_| {}, "net", &[&port.to_string()]).await;
    let stdout = stdout_of(&result);
    let verdicts = verdicts(&stdout);
    for name in ["tcp", "udp", "tcp6", "packet"] {
        assert!(
            verdicts.get(name).is_some_and(|v| v.starts_with("denied")),
            "`{name}` was not refused: {stdout}"
        );
    }
    assert!(tcp.accept().is_err(), "a connection arrived");
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "a datagram arrived");
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["sandbox"]["network"], "none");
    assert_no_process_left(&["attack.py net"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_descriptor_of_the_host_is_inherited() {
    let sandbox = Sandbox::new();
    // Descriptors the host holds open while the step runs.
    let _held = std::fs::File::open("/etc/hostname").unwrap();
    let result = attack(&sandbox, |_| {}, "fds", &[]).await;
    let stdout = stdout_of(&result);
    assert!(stdout.contains("fds: ok []"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_metacharacters_reach_the_program_literally() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let script = "spawn touch a;touch_pwned $(id) `id` |pwned >redirected";
    let result = run(&runner, sandbox.request("probe", script)).await;
    assert!(result.ok, "{}", result.summary);
    for name in ["a;touch_pwned", "$(id)", "`id`", "|pwned", ">redirected"] {
        assert!(sandbox.repo.join(name).exists(), "`{name}` was not created");
    }
    for name in ["touch_pwned", "pwned", "redirected"] {
        assert!(
            !sandbox.repo.join(name).exists(),
            "`{name}` was interpreted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ld_preload_never_reaches_a_subprocess() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let mut json = sandbox.request_json("probe", "sh env");
    json["runtime"]["env"] = serde_json::json!({ "LD_PRELOAD": "/tmp/evil.so" });
    let request = serde_json::from_value(json).unwrap();
    match runner.run(request, None).await {
        Err(baa_runner::Error::InvalidRequest { field, message }) => {
            assert_eq!(field, "runtime.env.LD_PRELOAD");
            assert!(message.contains("never passed"), "{message}");
        }
        other => panic!("LD_PRELOAD was not refused: {other:?}"),
    }
    // Nothing was prepared, let alone started.
    assert!(!sandbox.runs.join("task-1/run-1/step-1/attempt-1").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_is_contained_and_cleaned_up() {
    if !enforced("fork bomb") || !dedicated_users("fork bomb (RLIMIT_NPROC)") {
        return;
    }
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.sandbox.processes = 40;
    });
    let mut json = sandbox.request_json("probe", "sh bomb() { bomb | bomb & }; bomb; sleep 2.4711");
    json["timeoutSec"] = 4.into();
    let request = serde_json::from_value(json).unwrap();
    let result = run(&runner, request).await;
    // The bomb hit the process limit instead of the machine's.
    let stderr = std::fs::read_to_string(&result.log_paths.stderr_log_path).unwrap();
    assert!(
        stderr.contains("fork") || stderr.contains("Resource temporarily unavailable"),
        "{stderr}"
    );
    assert_no_process_left(&["bomb()", "2.4711"]);
    // The host still runs steps.
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let mut next = sandbox.request("probe", "spawn true");
    next.step_id = "after-the-bomb".into();
    let next = run(&runner, next).await;
    assert!(next.ok, "{}", next.summary);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_die_with_their_command_with_or_without_setsid() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let script = "sh sleep 300.111 & setsid sleep 300.222 & (setsid sh -c 'sleep 300.333 & sleep 300.444' &); sleep 0.3; echo started";
    let mut json = sandbox.request_json("probe", script);
    json["timeoutSec"] = 60.into();
    let request = serde_json::from_value(json).unwrap();
    let result = run(&runner, request).await;
    // It finished when its command did, not at its timeout.
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Completed,
        "{}",
        result.summary
    );
    assert!(stdout_of(&result).contains("started"));
    assert_no_process_left(&["300.111", "300.222", "300.333", "300.444"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_the_limit_is_cut_off() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.sandbox.file_size_mib = 1;
    });
    let script = "sh head -c 3000000 /dev/zero > big.bin; echo exit=$?";
    let result = run(&runner, sandbox.request("probe", script)).await;
    let size = std::fs::metadata(sandbox.repo.join("big.bin"))
        .unwrap()
        .len();
    assert_eq!(size, 1024 * 1024, "the file stopped at the limit");
    // head died of SIGXFSZ (25): the shell reports 128 + 25.
    assert!(
        stdout_of(&result).contains("exit=153"),
        "{}",
        stdout_of(&result)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metadata_states_the_confinement_that_applied() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let result = run(&runner, sandbox.request("probe", "spawn true")).await;
    assert!(result.ok, "{}", result.summary);
    let metadata = read_json(&result.log_paths.metadata_path);
    let sandbox_record = &metadata["sandbox"];
    let probe = launcher::probe().unwrap();
    assert_eq!(sandbox_record["landlockAbi"], probe.landlock_abi);
    assert_eq!(sandbox_record["seccomp"], probe.seccomp);
    assert_eq!(sandbox_record["noNewPrivs"], true);
    assert_eq!(sandbox_record["network"], "none");
    assert_eq!(sandbox_record["rlimits"]["core"], 0);
    if rustix::process::geteuid().is_root() {
        assert_eq!(sandbox_record["user"]["mode"], "dedicated");
        let uid = sandbox_record["user"]["uid"].as_u64().unwrap();
        assert!((61000..62000).contains(&uid), "{sandbox_record}");
    } else {
        assert_eq!(sandbox_record["user"]["mode"], "current");
    }
    // Each start event says how that process was confined.
    let events = baa_runner_tests::read_lifecycle(&result.log_paths.lifecycle_log_path);
    let started = events
        .iter()
        .find(|e| e["event"] == "subprocess.started")
        .unwrap();
    assert_eq!(started["data"]["confinement"]["seccomp"], true);
    assert!(events.iter().any(|e| e["event"] == "subprocess.allowed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_inside_the_worktree_never_runs_even_when_granted() {
    let sandbox = Sandbox::new();
    let planted = sandbox.repo.join("touch");
    std::fs::copy("/usr/bin/touch", &planted).unwrap();
    // The operator's grant names `touch` by a path inside the worktree.
    let mut granted = grant_all();
    granted.programs = vec![
        "true".into(),
        planted.display().to_string(),
        "sh".into(),
        "python3".into(),
    ];
    let (runner, _) = probe_runner_with(&sandbox, granted, |_| {});
    let script = format!("spawn {} pwned-by-planted", planted.display());
    let result = run(&runner, sandbox.request("probe", &script)).await;
    assert!(!sandbox.repo.join("pwned-by-planted").exists());
    let stdout = stdout_of(&result);
    assert!(stdout.contains("inside the worktree"), "{stdout}");
    // Not something the operator can grant: the step fails, not blocked.
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_the_worker_writes_between_commands_are_the_step_users_and_handed_back() {
    if !dedicated_users("resync of the lent worktree") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.repo.join("deep/a/b")).unwrap();
    std::fs::write(sandbox.repo.join("deep/a/b/old.txt"), "old\n").unwrap();
    // The chown fallback (file systems without idmapped mounts).
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.sandbox.worktree_view = baa_runner::config::WorktreeView::Chown;
    });
    // The first command lends the tree; then the worker (the host's uid,
    // through WASI) creates files deep in it and at the top, and each next
    // command must be able to append to them: the resync between commands
    // looks only into directories changed since the last walk.
    let script = "sh true\n\
                  write deep/a/b/new.txt from-the-worker\n\
                  sh echo appended >> deep/a/b/new.txt && echo deep=ok\n\
                  write top.txt from-the-worker\n\
                  sh echo appended >> top.txt && echo top=ok";
    let result = run(&runner, sandbox.request("probe", script)).await;
    let out = stdout_of(&result);
    assert!(out.contains("deep=ok") && out.contains("top=ok"), "{out}");
    assert_eq!(
        std::fs::read_to_string(sandbox.repo.join("deep/a/b/new.txt")).unwrap(),
        "from-the-workerappended\n"
    );
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["sandbox"]["worktreeView"], "chown");
    // Everything is the host's again after the step.
    let me = rustix::process::geteuid().as_raw();
    for path in ["deep/a/b/new.txt", "deep/a/b/old.txt", "top.txt", "deep/a"] {
        let meta = std::fs::metadata(sandbox.repo.join(path)).unwrap();
        assert_eq!(meta.uid(), me, "{path}");
    }
}
