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
        report,
        pid,
        supervisor,
        lifeline,
    } = started;
    let (tx, rx) = mpsc::unbounded_channel();
    if let (Some(mut pipe), Some(bytes)) = (stdin_pipe, stdin) {
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let handle = ProcessHandle {
        pid,
        lifeline: lifeline.clone(),
        rx,
        unread: unread.clone(),
        exited: None,
    };
    tokio::spawn(async move {
        let began = std::time::Instant::now();
        let sink = Sink {
            logs: &logs,
            tx: &tx,
            unread: &unread,
        };
        let pumped = pump(
            stdout, stderr, report, supervisor, &lifeline, &limits, &sink,
        )
        .await;
        live.remove(supervisor as i32);
        let (code, signal) = pumped.status.unwrap_or((None, None));
        let exit = ExitInfo {
            code,
            signal,
            timed_out: pumped.timed_out,
            output_limit_exceeded: pumped.over_cap,
        };
        let (level, how) = exit_summary(&exit, &limits);
        logs.host(
            level,
            format!("pid {pid} {how}"),
            crate::contracts::HostEvent::SubprocessExited {
                pid,
                exit_code: code,
                signal,
                timed_out: exit.timed_out,
                output_limit_exceeded: exit.output_limit_exceeded,
                output_bytes: pumped.total,
                duration_ms: began.elapsed().as_millis() as u64,
                for_worker: limits.log_output,
            },
        );
        let _ = tx.send(Chunk::Exited(exit));
    });
    handle
}

/// Where a process's output goes: the run logs (for a worker's process)
/// and the channel its reader takes chunks from.
struct Sink<'a> {
    logs: &'a LogSession,
    tx: &'a mpsc::UnboundedSender<Chunk>,
    unread: &'a Unread,
}

impl Sink<'_> {
    fn chunk(&self, stream: Stream, bytes: &[u8], log: bool) {
        if log {
            self.logs.output(stream, bytes);
        }
        let chunk = match stream {
            Stream::Stdout => Chunk::Stdout(bytes.to_vec()),
            Stream::Stderr => Chunk::Stderr(bytes.to_vec()),
        };
        if self.tx.send(chunk).is_ok() {
            self.unread.add(bytes.len());
        }
    }
}

/// How a process's pumping ended.
struct Pumped {
    /// Its exit code and signal, once its supervisor reported.
    status: Option<(Option<i32>, Option<i32>)>,
    timed_out: bool,
    over_cap: bool,
    /// Bytes of output read.
    total: u64,
}

/// Read the process's output until both pipes are closed and it exited;
/// past its deadline or its output cap, stop its tree (the lifeline, then
/// SIGKILL to the group if the supervisor does not finish in time).
async fn pump(
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
    mut report: super::zygote::Reports,
    supervisor: u32,
    lifeline: &Lifeline,
    limits: &Limits,
    sink: &Sink<'_>,
) -> Pumped {
    let pgid = supervisor as i32;
    let (mut stdout, mut stderr) = (Some(stdout), Some(stderr));
    let mut out = Pumped {
        status: None,
        timed_out: false,
        over_cap: false,
        total: 0,
    };
    // Set when the tree was asked to stop: past it, SIGKILL the group.
    let mut hard_kill: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let (mut out_buf, mut err_buf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
    let deadline = tokio::time::sleep_until(limits.deadline);
    tokio::pin!(deadline);
    while stdout.is_some() || stderr.is_some() || out.status.is_none() {
        let grace = sleep_until_or_never(drain_until);
        let hard = sleep_until_or_never(hard_kill);
        let room = sink.unread.has_room();
        tokio::select! {
            read = async { stdout.as_mut().unwrap().read(&mut out_buf).await }, if stdout.is_some() && room => {
                match read {
                    Ok(n) if n > 0 => {
                        out.total += n as u64;
                        sink.chunk(Stream::Stdout, &out_buf[..n], limits.log_output);
                    }
                    _ => stdout = None,
                }
            }
            read = async { stderr.as_mut().unwrap().read(&mut err_buf).await }, if stderr.is_some() && room => {
                match read {
                    Ok(n) if n > 0 => {
                        out.total += n as u64;
                        sink.chunk(Stream::Stderr, &err_buf[..n], limits.log_output);
                    }
                    _ => stderr = None,
                }
            }
            _ = tokio::time::sleep(ROOM_POLL), if !room && (stdout.is_some() || stderr.is_some()) => {}
            exit = report.exited(), if out.status.is_none() => {
                // The supervisor exits after the tree is gone; anything
                // left in its group goes too.
                out.status = Some(exit);
                kill_group(pgid);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            _ = &mut deadline, if !out.timed_out && out.status.is_none() => {
                out.timed_out = true;
                lifeline.cut();
                hard_kill = Some(Instant::now() + limits.kill_grace + HARD_KILL_MARGIN);
            }
            _ = hard, if out.status.is_none() => {
                hard_kill = None;
                kill_group(pgid);
            }
            _ = grace => {
                stdout = None;
                stderr = None;
            }
        }
        if out.total > limits.output_cap && !out.over_cap {
            out.over_cap = true;
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
    out
}

/// Sleep until `at`, or forever when there is no `at`.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The level and words of a `subprocess.exited` event.
fn exit_summary(exit: &ExitInfo, limits: &Limits) -> (EventLevel, String) {
    if exit.timed_out {
        let how = if limits.deadline >= limits.step_deadline {
            "killed: the step timed out"
        } else {
            "killed: its timeout ran out"
        };
        (EventLevel::Warn, how.to_string())
    } else if exit.output_limit_exceeded {
        let how = format!("killed: output exceeded {} bytes", limits.output_cap);
        (EventLevel::Warn, how)
    } else if let Some(code) = exit.code {
        // The host's own commands (snapshots) are debug detail, as their
        // start is.
        let level = match (code, limits.log_output) {
            (0, false) => EventLevel::Debug,
            (0, true) => EventLevel::Info,
            _ => EventLevel::Warn,
        };
        (level, format!("exited with code {code}"))
    } else {
        let how = format!("killed by signal {}", exit.signal.unwrap_or(0));
        (EventLevel::Warn, how)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(deadline: Instant, step_deadline: Instant, log_output: bool) -> Limits {
        Limits {
            deadline,
            step_deadline,
            output_cap: 10,
            log_output,
            output_limit_hits: Arc::default(),
            kill_grace: Duration::ZERO,
        }
    }

    #[test]
    fn an_exit_is_summed_up_by_what_ended_it() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let exit = |code, signal, timed_out, over| ExitInfo {
            code,
            signal,
            timed_out,
            output_limit_exceeded: over,
        };
        let worker = limits(now, later, true);
        let (level, how) = exit_summary(&exit(None, Some(9), true, false), &worker);
        assert_eq!(
            (level, how.as_str()),
            (EventLevel::Warn, "killed: its timeout ran out")
        );
        let at_step_end = limits(later, later, true);
        let (_, how) = exit_summary(&exit(None, Some(9), true, false), &at_step_end);
        assert_eq!(how, "killed: the step timed out");
        let (_, how) = exit_summary(&exit(None, Some(9), false, true), &worker);
        assert_eq!(how, "killed: output exceeded 10 bytes");
        let (level, _) = exit_summary(&exit(Some(0), None, false, false), &worker);
        assert_eq!(level, EventLevel::Info);
        let host = limits(now, later, false);
        let (level, _) = exit_summary(&exit(Some(0), None, false, false), &host);
        assert_eq!(level, EventLevel::Debug);
        let (level, how) = exit_summary(&exit(Some(2), None, false, false), &host);
        assert_eq!(
            (level, how.as_str()),
            (EventLevel::Warn, "exited with code 2")
        );
        let (_, how) = exit_summary(&exit(None, Some(15), false, false), &worker);
        assert_eq!(how, "killed by signal 15");
    }
}
