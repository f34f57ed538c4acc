//! The embedded `baa-launch` launcher (`host/launcher`), carried inside the
//! host and executed from a sealed memfd: its probes, the self-test, the
//! sweep, and one-shot launches of the host's own commands outside a step
//! (a step's processes come from its fork server, `zygote.rs`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use baa_launch::{Applied, LaunchSpec, Probe, Report, Stage};

use super::ConfinementError;

static EMBEDDED: &[u8] = include_bytes!(env!("BAA_LAUNCHER_BIN"));

/// The sealed in-memory copy of the launcher and the path that executes it.
struct Binary {
    _fd: OwnedFd,
    path: PathBuf,
}

static BINARY: OnceLock<Result<Binary, ConfinementError>> = OnceLock::new();

pub(super) fn binary() -> Result<&'static Path, ConfinementError> {
    BINARY
        .get_or_init(|| {
            use rustix::fs::{MemfdFlags, SealFlags};
            let failed = |what: &str, e: rustix::io::Errno| {
                ConfinementError::Launcher(format!("{what}: {e}"))
            };
            let fd = rustix::fs::memfd_create(
                "baa-launch",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )
            .map_err(|e| failed("memfd_create", e))?;
            let mut written = 0;
            while written < EMBEDDED.len() {
                written += rustix::io::write(&fd, &EMBEDDED[written..])
                    .map_err(|e| failed("writing the launcher", e))?;
            }
            rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o555))
                .map_err(|e| failed("fchmod", e))?;
            // EBUSY while pages just written are still referenced from
            // another CPU's page lists (the kernel's pin check): a moment
            // later they are not.
            let seals = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
            let mut sealed = rustix::fs::fcntl_add_seals(&fd, seals);
            for _ in 0..100 {
                if sealed != Err(rustix::io::Errno::BUSY) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                sealed = rustix::fs::fcntl_add_seals(&fd, seals);
            }
            sealed.map_err(|e| failed("sealing the launcher", e))?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            Ok(Binary { _fd: fd, path })
        })
        .as_ref()
        .map(|b| b.path.as_path())
        .map_err(Clone::clone)
}

/// The launcher could not be run.
fn not_run(e: std::io::Error) -> ConfinementError {
    ConfinementError::Launcher(format!("running the launcher: {e}"))
}

/// What this machine enforces, asked once per process.
pub fn probe() -> Result<Probe, ConfinementError> {
    static PROBE: OnceLock<Result<Probe, ConfinementError>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = std::process::Command::new(binary()?)
                .arg("--probe")
                .env_clear()
                .stdin(Stdio::null())
                .output()
                .map_err(not_run)?;
            serde_json::from_slice(&out.stdout).map_err(|e| {
                ConfinementError::Probe(format!("the launcher's probe is not valid: {e}"))
            })
        })
        .clone()
}

/// Run the launcher's self-test under `spec`: it confines itself and tries
/// what a confined program must not do.
pub fn self_test(spec: &LaunchSpec) -> Result<Vec<baa_launch::Check>, ConfinementError> {
    let json =
        serde_json::to_string(spec).map_err(|e| ConfinementError::SelfTest(e.to_string()))?;
    let out = std::process::Command::new(binary()?)
        .arg("--self-test")
        .arg(json)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(not_run)?;
    if !out.status.success() {
        return Err(ConfinementError::SelfTest(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        ConfinementError::SelfTest(format!("the self-test's report is not valid: {e}"))
    })
}

/// Whether the file system of `path` takes an idmapped view (asked of the
/// launcher, which tries one without attaching it anywhere).
pub fn probe_view(path: &Path) -> Result<(), ConfinementError> {
    // Any unprivileged uid does: the probe only builds the mapping.
    let out = std::process::Command::new(binary()?)
        .arg("--probe-view")
        .arg(path)
        .arg("65533")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(not_run)?;
    let view = |message: String| ConfinementError::View {
        path: path.to_path_buf(),
        message,
    };
    serde_json::from_slice::<Result<(), String>>(&out.stdout)
        .map_err(|e| view(format!("the launcher's view probe is not valid: {e}")))?
        .map_err(view)
}

/// Kill every process of the dedicated user `uid`.
pub fn sweep(uid: u32) -> Result<(), ConfinementError> {
    let status = std::process::Command::new(binary()?)
        .arg("--sweep")
        .arg(uid.to_string())
        .env_clear()
        .stdin(Stdio::null())
        .status()
        .map_err(not_run)?;
    if status.success() {
        Ok(())
    } else {
        Err(ConfinementError::Sweep {
            uid,
            message: format!("sweeping uid {uid} failed ({status})"),
        })
    }
}

/// Why a program was not started.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Where it failed.
    pub stage: Stage,
    pub message: String,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Refusal> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| Refusal {
        stage: Stage::Launcher,
        message: format!("pipe: {e}"),
    })
}

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
        let refusal = |stage: Stage, message: String| Refusal { stage, message };
        let path = binary().map_err(|e| refusal(Stage::Launcher, e.to_string()))?;
        let json = serde_json::to_string(spec).map_err(|e| refusal(Stage::Spec, e.to_string()))?;
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
                .map_err(|e| refusal(Stage::Launcher, format!("fcntl: {e}")))?;
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

/// The program's pid and confinement from the launcher's first report
/// line, or why it was not started.
fn started(report: &[u8]) -> Result<(i32, Applied), Refusal> {
    let first = report.split(|b| *b == b'\n').next().unwrap_or_default();
    match serde_json::from_slice::<Report>(first) {
        Ok(Report::Started { pid, applied, .. }) => Ok((pid, applied)),
        Ok(Report::Refused { stage, message }) => Err(Refusal { stage, message }),
        Ok(Report::Exited { .. }) | Err(_) => Err(Refusal {
            stage: Stage::Launcher,
            message: format!(
                "the launcher ended without a report: {}",
                String::from_utf8_lossy(report)
            ),
        }),
    }
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
    let refusal = |stage: Stage, message: String| Refusal { stage, message };
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
        spawned.map_err(|e| refusal(Stage::Launcher, format!("cannot start the launcher: {e}")))?;
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
            Stage::Timeout,
            format!("did not finish within {timeout:?}"),
        ));
    };
    let stdout = reader.join().unwrap_or_default();
    // The launcher has exited: its report is in the pipe (a copy of the
    // write end another spawn inherited meanwhile may keep it open, so read
    // without waiting).
    rustix::fs::fcntl_setfl(&report_read, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| refusal(Stage::Launcher, format!("fcntl: {e}")))?;
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
