//! Starting a subprocess through the embedded `baa-launch` launcher
//! (`host/launcher`): the host forks, the launcher confines and supervises,
//! and reports on a pipe whether the program started and how it is confined.
//! The binary is carried inside the host and executed from a sealed memfd.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use baa_launch::{Applied, LaunchSpec, Probe, Report};
use tokio::io::AsyncReadExt;

static EMBEDDED: &[u8] = include_bytes!(env!("BAA_LAUNCHER_BIN"));

/// The sealed in-memory copy of the launcher and the path that executes it.
struct Binary {
    _fd: OwnedFd,
    path: PathBuf,
}

static BINARY: OnceLock<Result<Binary, String>> = OnceLock::new();

pub(super) fn binary() -> Result<&'static Path, String> {
    BINARY
        .get_or_init(|| {
            use rustix::fs::{MemfdFlags, SealFlags};
            let fd = rustix::fs::memfd_create(
                "baa-launch",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .map_err(|e| format!("memfd_create: {e}"))?;
            let mut written = 0;
            while written < EMBEDDED.len() {
                written += rustix::io::write(&fd, &EMBEDDED[written..])
                    .map_err(|e| format!("writing the launcher: {e}"))?;
            }
            rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o555))
                .map_err(|e| format!("fchmod: {e}"))?;
            rustix::fs::fcntl_add_seals(
                &fd,
                SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
            )
            .map_err(|e| format!("sealing the launcher: {e}"))?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            Ok(Binary { _fd: fd, path })
        })
        .as_ref()
        .map(|b| b.path.as_path())
        .map_err(Clone::clone)
}

/// What this machine enforces, asked once per process.
pub fn probe() -> Result<Probe, String> {
    static PROBE: OnceLock<Result<Probe, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = std::process::Command::new(binary()?)
                .arg("--probe")
                .env_clear()
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running the launcher: {e}"))?;
            serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("the launcher's probe is not valid: {e}"))
        })
        .clone()
}

/// Run the launcher's self-test under `spec`: it confines itself and tries
/// what a confined program must not do.
pub fn self_test(spec: &LaunchSpec) -> Result<Vec<baa_launch::Check>, String> {
    let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(binary()?)
        .arg("--self-test")
        .arg(json)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the launcher: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the self-test's report is not valid: {e}"))
}

/// Whether the file system of `path` takes an idmapped view (asked of the
/// launcher, which tries one without attaching it anywhere).
pub fn probe_view(path: &Path) -> Result<(), String> {
    // Any unprivileged uid does: the probe only builds the mapping.
    let out = std::process::Command::new(binary()?)
        .arg("--probe-view")
        .arg(path)
        .arg("65533")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the launcher: {e}"))?;
    serde_json::from_slice::<Result<(), String>>(&out.stdout)
        .map_err(|e| format!("the launcher's view probe is not valid: {e}"))?
}

/// Kill every process of the dedicated user `uid`.
pub fn sweep(uid: u32) -> Result<(), String> {
    let status = std::process::Command::new(binary()?)
        .arg("--sweep")
        .arg(uid.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running the launcher: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("sweeping uid {uid} failed ({status})"))
    }
}

/// Why a program was not started.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Where it failed: `spec`, `program`, `cwd`, `landlock`, `seccomp`,
    /// `user`, `rlimits`, `exec`, `launcher`, …
    pub stage: String,
    pub message: String,
}

/// A started program: the launcher (its supervisor, which the host waits
/// for) and the lifeline whose closing stops the whole tree.
pub struct Launched {
    pub child: tokio::process::Child,
    /// Pid of the supervisor, which leads the tree's session and group.
    pub supervisor: u32,
    /// Pid of the program itself.
    pub pid: i32,
    pub applied: Applied,
    pub lifeline: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Refusal> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Refusal {
        stage: "launcher".into(),
        message: format!("pipe: {e}"),
    })
}

/// The capacity asked for the pipes of a subprocess's stdout and stderr.
const OUTPUT_PIPE_BYTES: usize = 1024 * 1024;

/// The launcher's command for one spec, with the pipe it reports on and
/// the lifeline whose closing stops the tree. The launcher's ends are
/// inherited as they are (no dup2 between fork and exec), so the standard
/// library spawns it with posix_spawn: no copy of this process's page
/// tables per subprocess. They lose O_CLOEXEC only for the duration of the
/// spawn; the launcher moves them to 3 and 4 and closes whatever else it
/// inherited. Drop `report_write` and `lifeline_read` once it is spawned.
struct Spawn {
    cmd: std::process::Command,
    report_read: OwnedFd,
    report_write: OwnedFd,
    lifeline_read: OwnedFd,
    lifeline_write: OwnedFd,
}

impl Spawn {
    fn new(
        spec: &LaunchSpec,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, Refusal> {
        let refusal = |stage: &str, message: String| Refusal {
            stage: stage.into(),
            message,
        };
        let path = binary().map_err(|e| refusal("launcher", e))?;
        let json = serde_json::to_string(spec).map_err(|e| refusal("spec", e.to_string()))?;
        let (report_read, report_write) = pipe()?;
        let (lifeline_read, lifeline_write) = pipe()?;
        let mut cmd = std::process::Command::new(path);
        cmd.arg("--fds")
            .arg(format!(
                "{}:{}",
                report_write.as_raw_fd(),
                lifeline_read.as_raw_fd()
            ))
            .arg(json)
            .env_clear()
            .envs(env);
        for fd in [&report_write, &lifeline_read] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                .map_err(|e| refusal("launcher", format!("fcntl: {e}")))?;
        }
        Ok(Spawn {
            cmd,
            report_read,
            report_write,
            lifeline_read,
            lifeline_write,
        })
    }
}

/// The program's pid and confinement from the launcher's report line, or
/// why it was not started.
fn started(report: &[u8]) -> Result<(i32, Applied), Refusal> {
    match serde_json::from_slice::<Report>(report.trim_ascii_end()) {
        Ok(Report::Started { pid, applied }) => Ok((pid, applied)),
        Ok(Report::Refused { stage, message }) => Err(Refusal { stage, message }),
        Err(_) => Err(Refusal {
            stage: "launcher".into(),
            message: format!(
                "the launcher ended without a report: {}",
                String::from_utf8_lossy(report)
            ),
        }),
    }
}

/// Start `spec` with exactly `env` and the given stdin.
pub async fn launch(
    spec: &LaunchSpec,
    env: &std::collections::BTreeMap<String, String>,
    stdin: bool,
) -> Result<Launched, Refusal> {
    let refusal = |stage: &str, message: String| Refusal {
        stage: stage.into(),
        message,
    };
    let Spawn {
        cmd,
        report_read,
        report_write,
        lifeline_read,
        lifeline_write,
    } = Spawn::new(spec, env)?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(report_write);
    drop(lifeline_read);
    let child =
        spawned.map_err(|e| refusal("launcher", format!("cannot start the launcher: {e}")))?;
    let supervisor = child.id().unwrap_or(0);
    // Bigger pipes: a fast writer fills 64 KiB before the host has handed
    // the last chunk to the guest; with room for more it keeps going and
    // the host moves fewer, larger chunks.
    for fd in [
        child.stdout.as_ref().map(|p| p.as_fd()),
        child.stderr.as_ref().map(|p| p.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, OUTPUT_PIPE_BYTES);
    }
    // One line, then the launcher closes its end (a copy another spawn
    // inherited meanwhile may keep the pipe open: read to the newline).
    let mut report = Vec::new();
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(report_read)
        .map_err(|e| refusal("launcher", format!("report pipe: {e}")))?;
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    report.extend_from_slice(&buf[..n]);
                    if report.contains(&b'\n') {
                        break;
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return Err(refusal(
            "launcher",
            "the launcher did not report within 30 s".into(),
        ));
    }
    let (pid, applied) = started(&report)?;
    Ok(Launched {
        child,
        supervisor,
        pid,
        applied,
        lifeline: lifeline_write,
    })
}

/// Run `spec` to its end from code that cannot wait asynchronously (the
/// host's own short commands while a step is prepared): the program's exit
/// status and stdout, or why it did not start. Past `timeout` the tree is
/// stopped and the run is refused.
pub fn run_sync(
    spec: &LaunchSpec,
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, Vec<u8>), Refusal> {
    use std::io::Read;
    let refusal = |stage: &str, message: String| Refusal {
        stage: stage.into(),
        message,
    };
    let Spawn {
        mut cmd,
        report_read,
        report_write,
        lifeline_read,
        lifeline_write,
    } = Spawn::new(spec, env)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let spawned = cmd.spawn();
    drop(report_write);
    drop(lifeline_read);
    let mut child =
        spawned.map_err(|e| refusal("launcher", format!("cannot start the launcher: {e}")))?;
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = stdout {
            let _ = pipe.read_to_end(&mut out);
        }
        out
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            _ => break None,
        }
    };
    // Cutting the lifeline stops whatever the program left (or the program).
    drop(lifeline_write);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(refusal(
            "timeout",
            format!("did not finish within {timeout:?}"),
        ));
    };
    let stdout = reader.join().unwrap_or_default();
    // The launcher has exited: its report is in the pipe (a copy of the
    // write end another spawn inherited meanwhile may keep it open, so read
    // without waiting).
    rustix::fs::fcntl_setfl(&report_read, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| refusal("launcher", format!("fcntl: {e}")))?;
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(&report_read, &mut buf) {
        if n == 0 {
            break;
        }
        report.extend_from_slice(&buf[..n]);
    }
    started(&report)?;
    Ok((status, stdout))
}
