//! A running child: one task pumps its stdout/stderr into the run logs and a
//! channel the worker reads, enforces its deadline and output cap, and stops
//! its tree (through the launcher's lifeline, then SIGKILL to the group)
//! when it is killed.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{kill_group, LiveGroups};
use super::{Chunk, ExitInfo};
use crate::contracts::EventLevel;
use crate::logs::{LogSession, Stream};

/// How long output is still drained after the child exited and its group
/// was killed (descendants that left the group may hold the pipes).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
const READ_CHUNK: usize = 256 * 1024;
/// Output of a step's processes read but not yet taken by the worker,
/// most: past it the host stops reading their pipes (the processes then
/// wait to write) until the worker takes some, so a worker that never
/// reads cannot make the host hold what its processes print.
pub const MAX_UNREAD_BYTES: u64 = 64 * 1024 * 1024;
/// How often a paused reader looks whether there is room again.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// The bytes of a step's output waiting for the worker.
#[derive(Debug, Default)]
pub struct Unread(std::sync::atomic::AtomicU64);

impl Unread {
    fn has_room(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) < MAX_UNREAD_BYTES
    }

    fn add(&self, n: usize) {
        self.0
            .fetch_add(n as u64, std::sync::atomic::Ordering::AcqRel);
    }

    fn taken(&self, output: &Chunk) {
        let n = match output {
            Chunk::Stdout(b) | Chunk::Stderr(b) => b.len() as u64,
            Chunk::Exited(_) => 0,
        };
        self.0.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How long past its grace a supervisor may take before its group is
/// SIGKILLed by the host.
const HARD_KILL_MARGIN: Duration = Duration::from_millis(500);

pub(super) struct Limits {
    /// When this process is killed.
    pub deadline: Instant,
    /// The step's own deadline (to tell a process timeout from a step timeout).
    pub step_deadline: Instant,
    pub output_cap: u64,
    /// Whether output goes into the run logs (worker processes) or only back
    /// to the caller (the host's own commands).
    pub log_output: bool,
    /// Counts processes killed for exceeding `output_cap`.
    pub output_limit_hits: Arc<std::sync::atomic::AtomicU64>,
    /// The supervisor's grace between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// The host's end of a supervisor's lifeline: cutting it (or dropping the
/// last copy) makes the supervisor stop the whole tree.
#[derive(Debug, Clone)]
pub struct Lifeline(Arc<Mutex<Option<OwnedFd>>>);

impl Lifeline {
    pub(super) fn new(fd: OwnedFd) -> Self {
        Lifeline(Arc::new(Mutex::new(Some(fd))))
    }

    /// Ask the supervisor to stop the tree (SIGTERM, grace, SIGKILL).
    pub fn cut(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A program the fork server started.
pub(super) struct Started {
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub stdout: tokio::net::unix::pipe::Receiver,
    pub stderr: tokio::net::unix::pipe::Receiver,
    /// The launch's report pipe, which says when the tree is gone.
    pub report: super::zygote::Reports,
    /// The program's own pid.
    pub pid: u32,
    /// The supervisor's pid: its session and process group.
    pub supervisor: u32,
    pub lifeline: Lifeline,
}

/// The host side of a worker's `process` resource.
pub struct ProcessHandle {
    pid: u32,
    lifeline: Lifeline,
    rx: mpsc::UnboundedReceiver<Chunk>,
    unread: Arc<Unread>,
    exited: Option<ExitInfo>,
}

impl ProcessHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next chunk, or the exit once all output was delivered.
    pub async fn next(&mut self) -> Chunk {
        if let Some(status) = &self.exited {
            return Chunk::Exited(*status);
        }
        let output = self.rx.recv().await.unwrap_or(Chunk::Exited(ExitInfo {
            code: None,
            signal: None,
            timed_out: false,
            output_limit_exceeded: false,
        }));
        self.unread.taken(&output);
        if let Chunk::Exited(status) = &output {
            self.exited = Some(*status);
        }
        output
    }

    /// Stop the process and everything it started (no-op once it exited).
    pub fn kill(&self) {
        if self.exited.is_none() {
            self.lifeline.cut();
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        self.kill();
        // What nobody will read no longer counts.
        self.rx.close();
        while let Ok(output) = self.rx.try_recv() {
            self.unread.taken(&output);
        }
    }
}

pub(super) fn start(
    started: Started,
    stdin: Option<Vec<u8>>,
    limits: Limits,
    logs: Arc<LogSession>,
    live: LiveGroups,
    unread: Arc<Unread>,
) -> ProcessHandle {
    let Started {
        stdin: stdin_pipe,
        stdout,
        stderr,
        mut report,
        pid,
        supervisor,
        lifeline,
    } = started;
    let handle_lifeline = lifeline.clone();
    let handle_unread = unread.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stdout = Some(stdout);
    let mut stderr = Some(stderr);
    if let (Some(mut pipe), Some(bytes)) = (stdin_pipe, stdin) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let pgid = supervisor as i32;
        // Set when the tree was asked to stop: past it, SIGKILL the group.
        let mut hard_kill: Option<Instant> = None;
        let mut out_buf = vec![0u8; READ_CHUNK];
        let mut err_buf = vec![0u8; READ_CHUNK];
        let mut total: u64 = 0;
        let mut status = None;
        let mut timed_out = false;
        let mut over_cap = false;
        let mut drain_until: Option<Instant> = None;
        let deadline = tokio::time::sleep_until(limits.deadline);
        tokio::pin!(deadline);
        loop {
            if stdout.is_none() && stderr.is_none() && status.is_some() {
                break;
            }
            let grace = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let hard = async {
                match hard_kill {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let room = unread.has_room();
            tokio::select! {
                read = async { stdout.as_mut().unwrap().read(&mut out_buf).await }, if stdout.is_some() && room => {
                    match read {
                        Ok(n) if n > 0 => {
                            total += n as u64;
                            if limits.log_output {
                                logs.output(Stream::Stdout, &out_buf[..n]);
                            }
                            if tx.send(Chunk::Stdout(out_buf[..n].to_vec())).is_ok() {
                                unread.add(n);
                            }
                        }
                        _ => stdout = None,
                    }
                }
                read = async { stderr.as_mut().unwrap().read(&mut err_buf).await }, if stderr.is_some() && room => {
                    match read {
                        Ok(n) if n > 0 => {
                            total += n as u64;
                            if limits.log_output {
                                logs.output(Stream::Stderr, &err_buf[..n]);
                            }
                            if tx.send(Chunk::Stderr(err_buf[..n].to_vec())).is_ok() {
                                unread.add(n);
                            }
                        }
                        _ => stderr = None,
                    }
                }
                _ = tokio::time::sleep(ROOM_POLL), if !room && (stdout.is_some() || stderr.is_some()) => {}
                exit = report.exited(), if status.is_none() => {
                    // The supervisor exits after the tree is gone; anything
                    // left in its group goes too.
                    status = Some(exit);
                    kill_group(pgid);
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
                _ = &mut deadline, if !timed_out && status.is_none() => {
                    timed_out = true;
                    lifeline.cut();
                    hard_kill = Some(Instant::now() + limits.kill_grace + HARD_KILL_MARGIN);
                }
                _ = hard, if status.is_none() => {
                    hard_kill = None;
                    kill_group(pgid);
                }
                _ = grace => {
                    stdout = None;
                    stderr = None;
                }
            }
            if total > limits.output_cap && !over_cap {
                over_cap = true;
                limits
                    .output_limit_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lifeline.cut();
                hard_kill = Some(Instant::now() + limits.kill_grace + HARD_KILL_MARGIN);
                // Nothing past the cap is taken in: its pipes close, so a
                // writer gets EPIPE even before the tree is stopped.
                stdout = None;
                stderr = None;
            }
        }
        live.remove(pgid);
        let (code, signal) = status.unwrap_or((None, None));
        let exit = ExitInfo {
            code,
            signal,
            timed_out,
            output_limit_exceeded: over_cap,
        };
        let step_timeout = timed_out && limits.deadline >= limits.step_deadline;
        let (level, how) = if timed_out {
            (
                EventLevel::Warn,
                if step_timeout {
                    "killed: the step timed out".to_string()
                } else {
                    "killed: its timeout ran out".to_string()
                },
            )
        } else if over_cap {
            (
                EventLevel::Warn,
                format!("killed: output exceeded {} bytes", limits.output_cap),
            )
        } else if let Some(code) = code {
            (
                // The host's own commands (snapshots) are debug detail,
                // as their start is.
                if code == 0 && !limits.log_output {
                    EventLevel::Debug
                } else if code == 0 {
                    EventLevel::Info
                } else {
                    EventLevel::Warn
                },
                format!("exited with code {code}"),
            )
        } else {
            (
                EventLevel::Warn,
                format!("killed by signal {}", signal.unwrap_or(0)),
            )
        };
        logs.host(
            level,
            format!("pid {pid} {how}"),
            crate::contracts::HostEvent::SubprocessExited {
                pid,
                exit_code: code,
                signal,
                timed_out,
                output_limit_exceeded: over_cap,
                output_bytes: total,
                duration_ms: started.elapsed().as_millis() as u64,
                for_worker: limits.log_output,
            },
        );
        let _ = tx.send(Chunk::Exited(exit));
    });
    ProcessHandle {
        pid,
        lifeline: handle_lifeline,
        rx,
        unread: handle_unread,
        exited: None,
    }
}
