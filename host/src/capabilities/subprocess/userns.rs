//! User namespaces held for a step by `baa-launch --hold-userns` children:
//! the namespace a step of a host without root runs in, from its first
//! subprocess to its end (`RLIMIT_NPROC`, counted per user and user
//! namespace, then bounds the step's processes alone).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;

use super::{launcher, ConfinementError};

/// The step's namespace holder, started on first use.
#[derive(Debug, Default)]
pub struct StepNamespace {
    holder: Mutex<Option<Holder>>,
}

/// A `baa-launch --hold-userns` child and the path of its namespace; the
/// child is stopped when this is dropped.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    path: PathBuf,
}

impl Holder {
    /// `/proc/PID/ns/user` of the held namespace.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StepNamespace {
    /// `/proc/PID/ns/user` of the step's namespace, made now if needed.
    pub fn path(&self) -> Result<PathBuf, ConfinementError> {
        let mut slot = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = &*slot {
            return Ok(holder.path.clone());
        }
        let holder = hold()?;
        let path = holder.path.clone();
        *slot = Some(holder);
        Ok(path)
    }

    /// The step is over: every process still in its namespace is killed
    /// (what the step's commands left while they were being stopped), then
    /// the holder exits.
    pub fn release(&self) {
        if let Some(holder) = self.holder.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Ok(ns) = std::fs::read_link(&holder.path) {
                sweep(&ns, holder.child.id());
            }
        }
    }
}

impl Drop for StepNamespace {
    fn drop(&mut self) {
        self.release();
    }
}

/// Start a holder and wait for its namespace. Its pid stays its own while
/// it is an unreaped child of this process, so the path names its
/// namespace until [`StepNamespace::release`].
fn hold() -> Result<Holder, ConfinementError> {
    let mut child = std::process::Command::new(launcher::binary()?)
        .arg("--hold-userns")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ConfinementError::Launcher(format!("running the launcher: {e}")))?;
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let _ = child.kill();
        let out = child.wait_with_output();
        let why = out
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        return Err(ConfinementError::Namespace(format!(
            "the step's user namespace: {why}"
        )));
    }
    let path = PathBuf::from(format!("/proc/{}/ns/user", child.id()));
    Ok(Holder { child, path })
}

/// SIGKILL every process (but the holder) whose user namespace is `ns`
/// (`user:[inode]`), until none is left. Each is signalled through a pidfd
/// opened before its namespace is read, so a pid reused meanwhile is not
/// hit. The step's process limit bounds how many rounds this takes.
fn sweep(ns: &std::path::Path, holder: u32) {
    for _ in 0..64 {
        let mut found = false;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid as u32 == holder {
                continue;
            }
            let Some(pid) = rustix::process::Pid::from_raw(pid) else {
                continue;
            };
            let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            else {
                continue;
            };
            let same = std::fs::read_link(entry.path().join("ns/user")).is_ok_and(|l| l == ns);
            if same {
                found = true;
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
