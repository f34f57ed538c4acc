//! The host's end of a step's fork server (`baa-launch --zygote`): started
//! once per step environment, it enters the step's namespaces and mounts
//! once; each launch is a memfd with the spec and environment sent
//! over a `SOCK_SEQPACKET` socket with the process's pipes. The launch's
//! report pipe carries `started`/`refused`, then `exited`.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use baa_launch::{Applied, Environment, LaunchSpec, Report, Stage, ZygoteRequest};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::launcher::{binary, Refusal};

/// The capacity asked for the pipes of a subprocess's stdout and stderr: a
/// fast writer fills 64 KiB before the host has handed the last chunk to
/// the guest; with room for more it keeps going and the host moves fewer,
/// larger chunks.
const OUTPUT_PIPE_BYTES: usize = 1024 * 1024;
/// How long a launch may take to report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

fn refusal(stage: Stage, message: String) -> Refusal {
    Refusal { stage, message }
}

/// A running fork server of one step environment.
pub struct Zygote {
    environment: Environment,
    control: OwnedFd,
    /// The server process, reaped by the runtime once dropped.
    child: tokio::process::Child,
}

/// A program the fork server started.
pub struct Launched {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    /// The rest of the report pipe: the program's exit.
    pub report: Reports,
    /// Pid of the supervisor, which leads the tree's session and group.
    pub supervisor: u32,
    /// Pid of the program itself.
    pub pid: i32,
    pub applied: Applied,
    /// The lifeline whose closing stops the whole tree.
    pub lifeline: OwnedFd,
}

impl Zygote {
    /// Start a fork server for `environment` (it enters the environment on
    /// its own; a failure there is the refusal of every launch).
    pub fn start(environment: Environment) -> Result<Zygote, Refusal> {
        let path = binary().map_err(|e| refusal(Stage::Launcher, e.to_string()))?;
        let json =
            serde_json::to_string(&environment).map_err(|e| refusal(Stage::Spec, e.to_string()))?;
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| refusal(Stage::Launcher, format!("socketpair: {e}")))?;
        // Inherited as it is (posix_spawn: no dup2 between fork and exec);
        // the server moves it to its place and closes whatever else it got.
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
            .map_err(|e| refusal(Stage::Launcher, format!("fcntl: {e}")))?;
        let mut cmd = tokio::process::Command::new(path);
        cmd.arg("--zygote")
            .arg("--fds")
            .arg(theirs.as_raw_fd().to_string())
            .arg(json)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn();
        drop(theirs);
        let child = child
            .map_err(|e| refusal(Stage::Launcher, format!("cannot start the launcher: {e}")))?;
        Ok(Zygote {
            environment,
            control: ours,
            child,
        })
    }

    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the server is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Start `spec` with exactly `env`, and a stdin pipe if `stdin`.
    pub async fn launch(
        &self,
        spec: &LaunchSpec,
        env: &BTreeMap<String, String>,
        stdin: bool,
    ) -> Result<Launched, Refusal> {
        let request = ZygoteRequest {
            spec: spec.clone(),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let request = request_file(
            &serde_json::to_vec(&request).map_err(|e| refusal(Stage::Spec, e.to_string()))?,
        )?;
        let (out_read, out_write) = pipe_pair()?;
        let (err_read, err_write) = pipe_pair()?;
        let (report_read, report_write) = pipe_pair()?;
        let (lifeline_read, lifeline_write) = pipe_pair()?;
        let stdin_pipe = if stdin { Some(pipe_pair()?) } else { None };
        for fd in [&out_read, &err_read] {
            let _ = rustix::pipe::fcntl_setpipe_size(fd, OUTPUT_PIPE_BYTES);
        }
        let mut fds = vec![
            request.as_fd(),
            out_write.as_fd(),
            err_write.as_fd(),
            report_write.as_fd(),
            lifeline_read.as_fd(),
        ];
        if let Some((read, _)) = &stdin_pipe {
            fds.push(read.as_fd());
        }
        self.send(&fds)?;
        drop(fds);
        drop((request, out_write, err_write, report_write, lifeline_read));
        let stdin = match stdin_pipe {
            Some((read, write)) => {
                drop(read);
                Some(
                    pipe::Sender::from_owned_fd(write)
                        .map_err(|e| refusal(Stage::Launcher, e.to_string()))?,
                )
            }
            None => None,
        };
        let receiver = |fd| {
            pipe::Receiver::from_owned_fd(fd).map_err(|e| refusal(Stage::Launcher, e.to_string()))
        };
        let mut report = Reports::new(receiver(report_read)?);
        let (pid, supervisor, applied) = started(&mut report).await?;
        Ok(Launched {
            stdin,
            stdout: receiver(out_read)?,
            stderr: receiver(err_read)?,
            report,
            supervisor: supervisor.max(0) as u32,
            pid,
            applied,
            lifeline: lifeline_write,
        })
    }

    /// Hand the fork server a launch request and its descriptors.
    fn send(&self, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), Refusal> {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(6))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(fds));
        rustix::net::sendmsg(
            &self.control,
            &[IoSlice::new(b"L")],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map(|_| ())
        .map_err(|e| {
            refusal(
                Stage::Launcher,
                format!("the step's fork server is gone: {e}"),
            )
        })
    }
}

/// The launch's first report: the program started (its pid, its
/// supervisor's and the confinement applied), or why it did not.
async fn started(report: &mut Reports) -> Result<(i32, i32, Applied), Refusal> {
    let first = tokio::time::timeout(REPORT_TIMEOUT, report.next())
        .await
        .map_err(|_| {
            refusal(
                Stage::Launcher,
                "the launcher did not report within 30 s".into(),
            )
        })?;
    match first {
        Some(Ok(Report::Started {
            pid,
            supervisor,
            applied,
        })) => Ok((pid, supervisor, applied)),
        Some(Ok(Report::Refused { stage, message })) => Err(Refusal { stage, message }),
        Some(Ok(Report::Exited { .. })) | None => Err(refusal(
            Stage::Launcher,
            "the launcher ended without a report".into(),
        )),
        Some(Err(line)) => Err(refusal(
            Stage::Launcher,
            format!("the launcher's report is not valid: {line}"),
        )),
    }
}

/// The lines of a launch's report pipe.
pub struct Reports {
    pipe: pipe::Receiver,
    buf: Vec<u8>,
}

impl Reports {
    fn new(pipe: pipe::Receiver) -> Self {
        Reports {
            pipe,
            buf: Vec::new(),
        }
    }

    /// The next report (or the line that is not one); `None` once the
    /// pipe closed. Cancel-safe: what was read stays buffered.
    pub async fn next(&mut self) -> Option<Result<Report, String>> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(
                    serde_json::from_slice(&line)
                        .map_err(|_| String::from_utf8_lossy(&line).trim().to_string()),
                );
            }
            let mut chunk = [0u8; 1024];
            match self.pipe.read(&mut chunk).await {
                Ok(n) if n > 0 => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > 64 * 1024 {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }

    /// How the program ended: (code, signal). A supervisor that died
    /// without saying (SIGKILLed) counts as killed by SIGKILL.
    pub async fn exited(&mut self) -> (Option<i32>, Option<i32>) {
        while let Some(report) = self.next().await {
            if let Ok(Report::Exited { code, signal }) = report {
                return (code, signal);
            }
        }
        (None, Some(libc_sigkill()))
    }
}

fn libc_sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), Refusal> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| refusal(Stage::Launcher, format!("pipe: {e}")))
}

/// A memfd holding `bytes` (only the fork server ever sees it).
fn request_file(bytes: &[u8]) -> Result<OwnedFd, Refusal> {
    let e = |e: rustix::io::Errno| refusal(Stage::Launcher, format!("the launch request: {e}"));
    let fd = rustix::fs::memfd_create("baa-launch-request", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(e)?;
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(&fd, &bytes[written..]).map_err(e)?;
    }
    Ok(fd)
}
