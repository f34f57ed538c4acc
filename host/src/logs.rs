//! The log session of one attempt: lifecycle events as JSON lines, and every
//! stdout/stderr chunk of the worker and its subprocesses, counted, offered
//! live to an observer as it arrives, and appended to its file in batches:
//! at 64 KiB, before each lifecycle event (so before every checkpoint), at
//! most [`FLUSH_INTERVAL`] later, and at close.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use crate::budget::DiskBudget;
use crate::contracts::{
    EventLevel, EventSource, LocalRunLogSession, LocalRunLogSummary, LogSessionStatus,
    WorkerLifecycleLogEntry,
};
use crate::fsutil::{now_rfc3339, Durability};

/// How many trailing lines of each stream the summary keeps.
pub const SUMMARY_TAIL_LINES: usize = 20;
/// How many trailing bytes of each stream are kept in memory for tails.
const TAIL_BYTES: usize = 64 * 1024;
/// Output kept in memory before it is written: one write per this much
/// instead of one per chunk.
const FLUSH_BYTES: usize = 64 * 1024;
/// The longest output waits in memory before it is written to its file.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Something the log session just recorded, for live observers.
#[derive(Debug)]
pub enum LiveUpdate<'a> {
    Event(&'a WorkerLifecycleLogEntry),
    Output(Stream, &'a [u8]),
}

/// Receives every record as it is written (e.g. the CLI's live view).
pub type Observer = Arc<dyn Fn(LiveUpdate<'_>) + Send + Sync>;

struct StreamLog {
    file: File,
    /// Bytes accepted for the file but not written yet.
    pending: Vec<u8>,
    chunks: u64,
    bytes: u64,
    tail: Vec<u8>,
    /// Bytes the file may hold before the log is truncated.
    cap: u64,
    /// Bytes not written to the file (kept only in the tail).
    dropped: u64,
}

impl StreamLog {
    fn new(file: File, cap: u64) -> Self {
        StreamLog {
            file,
            pending: Vec::new(),
            chunks: 0,
            bytes: 0,
            tail: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    /// Append a chunk; past the cap only the in-memory tail keeps it.
    /// Returns whether all of it is bound for the file.
    fn append(&mut self, bytes: &[u8], budget: &DiskBudget) -> std::io::Result<bool> {
        let written = self.bytes - self.dropped;
        let room = self.cap.saturating_sub(written) as usize;
        let mut keep = room.min(bytes.len());
        if keep > 0 && budget.charge(keep as u64).is_err() {
            keep = 0;
        }
        self.dropped += (bytes.len() - keep) as u64;
        self.chunks += 1;
        self.bytes += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..cut);
        }
        let kept = &bytes[..keep];
        if self.pending.len() + kept.len() < FLUSH_BYTES {
            self.pending.extend_from_slice(kept);
        } else {
            // A large chunk goes to the file as it is, after what waits.
            self.flush()?;
            self.file.write_all(kept)?;
        }
        Ok(keep == bytes.len())
    }

    /// Write what waits in memory.
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let written = self.file.write_all(&self.pending);
            self.pending.clear();
            written?;
        }
        Ok(())
    }

    /// At close: after a truncation, a marker and the stream's last bytes;
    /// fsynced when `sync`.
    fn finish(&mut self, sync: bool) -> std::io::Result<()> {
        self.flush()?;
        if self.dropped > 0 {
            let tail = &self.tail[self.tail.len().saturating_sub(TAIL_BYTES)..];
            let marker = format!(
                "\n[baa-runner: log truncated at {} bytes; {} bytes dropped; the last {} bytes follow]\n",
                self.cap,
                self.dropped,
                tail.len()
            );
            self.file.write_all(marker.as_bytes())?;
            self.file.write_all(tail)?;
        }
        if sync {
            self.file.sync_all()?;
        }
        Ok(())
    }

    fn tail_lines(&self, n: usize) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.tail);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

/// Events kept in memory for the result: the first and the last
/// [`KEPT_EVENTS`] of them (a worker emitting events in a loop must not grow
/// the host's memory); `lifecycle.jsonl` has every one, and the gap in `seq`
/// shows where some were left out.
#[derive(Default)]
struct KeptEvents {
    head: Vec<WorkerLifecycleLogEntry>,
    tail: std::collections::VecDeque<WorkerLifecycleLogEntry>,
    count: u64,
}

/// How many events the result keeps from the start, and from the end.
pub const KEPT_EVENTS: usize = 500;
/// Largest message or data (as JSON) of an event the result keeps whole;
/// a larger one is cut there (`lifecycle.jsonl` has it whole), so the
/// kept events take a bounded amount of memory whatever a worker emits.
const KEPT_EVENT_BYTES: usize = 2048;

/// `entry` as the result keeps it.
fn kept_copy(entry: &WorkerLifecycleLogEntry) -> WorkerLifecycleLogEntry {
    let data_bytes = entry
        .data
        .as_ref()
        .map_or(0, |d| serde_json::to_vec(d).map_or(0, |v| v.len()));
    let data = if data_bytes > KEPT_EVENT_BYTES {
        Some(serde_json::json!({
            "omitted": format!("{data_bytes} bytes of data; event {} of lifecycle.jsonl has them", entry.seq)
        }))
    } else {
        entry.data.clone()
    };
    WorkerLifecycleLogEntry {
        message: crate::bounds::cut(&entry.message, KEPT_EVENT_BYTES),
        data,
        ..entry.clone()
    }
}

impl KeptEvents {
    fn keep(&mut self, entry: WorkerLifecycleLogEntry) {
        self.count += 1;
        if self.head.len() < KEPT_EVENTS {
            self.head.push(entry);
            return;
        }
        if self.tail.len() == KEPT_EVENTS {
            self.tail.pop_front();
        }
        self.tail.push_back(entry);
    }

    fn all(&self) -> Vec<WorkerLifecycleLogEntry> {
        self.head.iter().chain(self.tail.iter()).cloned().collect()
    }
}

struct Inner {
    lifecycle: File,
    stdout: StreamLog,
    stderr: StreamLog,
    events: KeptEvents,
    session: LocalRunLogSession,
    write_error: Option<String>,
    /// The flusher will write this session's pending output.
    flush_scheduled: bool,
}

impl Inner {
    /// Write both streams' pending output, noting the first failure.
    fn flush(&mut self) {
        for (log, path) in [
            (&mut self.stdout, &self.session.stdout_log_path),
            (&mut self.stderr, &self.session.stderr_log_path),
        ] {
            if let Err(e) = log.flush() {
                self.write_error.get_or_insert(format!("{path}: {e}"));
            }
        }
    }
}

/// The open log files of one attempt. Cheap to share: clone the `Arc`.
pub struct LogSession {
    inner: Mutex<Inner>,
    observer: Option<Observer>,
    durability: Durability,
    /// The step's disk budget: output and worker events are charged to it.
    budget: DiskBudget,
    /// This session, for the flusher.
    me: Weak<LogSession>,
}

/// The thread that writes output left waiting in memory after
/// [`FLUSH_INTERVAL`]; it sleeps while no session has any.
struct Flusher {
    due: Mutex<Vec<Weak<LogSession>>>,
    wake: Condvar,
}

impl Flusher {
    /// The process's flusher, started at first use; `None` if its thread
    /// cannot start (output is then written at once).
    fn get() -> Option<&'static Flusher> {
        static FLUSHER: OnceLock<Option<&'static Flusher>> = OnceLock::new();
        *FLUSHER.get_or_init(|| {
            let flusher: &'static Flusher = Box::leak(Box::new(Flusher {
                due: Mutex::new(Vec::new()),
                wake: Condvar::new(),
            }));
            let started = std::thread::Builder::new()
                .name("baa-log-flusher".into())
                .spawn(move || flusher.run());
            match started {
                Ok(_) => Some(flusher),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the log flusher thread: {e}; output is written per chunk"
                    );
                    None
                }
            }
        })
    }

    fn run(&self) {
        loop {
            {
                let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
                while due.is_empty() {
                    due = self.wake.wait(due).unwrap_or_else(|p| p.into_inner());
                }
            }
            std::thread::sleep(FLUSH_INTERVAL);
            let due = std::mem::take(&mut *self.due.lock().unwrap_or_else(|p| p.into_inner()));
            for session in due.iter().filter_map(Weak::upgrade) {
                let mut inner = session.lock();
                inner.flush_scheduled = false;
                inner.flush();
            }
        }
    }

    fn schedule(&self, session: Weak<LogSession>) {
        self.due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
        self.wake.notify_one();
    }
}

fn open_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create_new(true).open(path)
}

impl LogSession {
    /// Create the three log files of `session` (they must not exist yet).
    pub fn create(
        session: LocalRunLogSession,
        observer: Option<Observer>,
        max_stream_bytes: u64,
        durability: Durability,
        budget: DiskBudget,
    ) -> std::io::Result<Arc<Self>> {
        let stream = |path: &str| -> std::io::Result<StreamLog> {
            Ok(StreamLog::new(open_new(Path::new(path))?, max_stream_bytes))
        };
        let lifecycle = open_new(Path::new(&session.lifecycle_log_path))?;
        let stdout = stream(&session.stdout_log_path)?;
        let stderr = stream(&session.stderr_log_path)?;
        Ok(Self::assemble(
            session, lifecycle, stdout, stderr, observer, durability, budget,
        ))
    }

    /// Reopen the log files of an attempt that was only prepared, to append
    /// to them: its events so far are kept and numbering continues after
    /// them; the sizes already written count against `budget`.
    pub fn reopen(
        session: LocalRunLogSession,
        observer: Option<Observer>,
        max_stream_bytes: u64,
        durability: Durability,
        budget: DiskBudget,
    ) -> Result<Arc<Self>, crate::fsutil::RecordError> {
        fn io(path: &str) -> impl FnOnce(std::io::Error) -> crate::fsutil::RecordError {
            let path = path.to_string();
            move |source| crate::fsutil::RecordError::Io { path, source }
        }
        let append = |path: &str| {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(io(path))
        };
        let (earlier, _torn) = crate::fsutil::read_json_lines::<WorkerLifecycleLogEntry>(
            Path::new(&session.lifecycle_log_path),
        )?;
        let lifecycle = append(&session.lifecycle_log_path)?;
        let stream = |path: &str| -> Result<StreamLog, crate::fsutil::RecordError> {
            let file = append(path)?;
            let len = file.metadata().map_err(io(path))?.len();
            let _ = budget.charge(len);
            let mut log = StreamLog::new(file, max_stream_bytes);
            log.bytes = len;
            Ok(log)
        };
        let stdout = stream(&session.stdout_log_path)?;
        let stderr = stream(&session.stderr_log_path)?;
        let this = Self::assemble(
            session, lifecycle, stdout, stderr, observer, durability, budget,
        );
        {
            let mut inner = this.lock();
            for entry in earlier {
                inner.events.count = inner.events.count.max(entry.seq.saturating_sub(1));
                inner.events.keep(entry);
            }
        }
        Ok(this)
    }

    /// A session that records counts but writes to `/dev/null` (for calls
    /// into a worker outside any step, such as `describe`).
    pub fn discard() -> std::io::Result<Arc<Self>> {
        let null = || OpenOptions::new().append(true).open("/dev/null");
        let stream = || -> std::io::Result<StreamLog> { Ok(StreamLog::new(null()?, u64::MAX)) };
        let session = LocalRunLogSession {
            session_id: "discard".into(),
            run_dir: "/dev/null".into(),
            started_at: now_rfc3339(),
            closed_at: None,
            status: LogSessionStatus::Open,
            lifecycle_log_path: "/dev/null".into(),
            stdout_log_path: "/dev/null".into(),
            stderr_log_path: "/dev/null".into(),
        };
        let (lifecycle, stdout, stderr) = (null()?, stream()?, stream()?);
        Ok(Self::assemble(
            session,
            lifecycle,
            stdout,
            stderr,
            None,
            Durability::ProcessCrash,
            DiskBudget::unlimited(),
        ))
    }

    /// The session over its open files.
    fn assemble(
        session: LocalRunLogSession,
        lifecycle: File,
        stdout: StreamLog,
        stderr: StreamLog,
        observer: Option<Observer>,
        durability: Durability,
        budget: DiskBudget,
    ) -> Arc<Self> {
        let inner = Inner {
            lifecycle,
            stdout,
            stderr,
            events: KeptEvents::default(),
            session,
            write_error: None,
            flush_scheduled: false,
        };
        Arc::new_cyclic(|me| LogSession {
            inner: Mutex::new(inner),
            observer,
            durability,
            budget,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the files torn beyond one
        // record; keep logging.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a lifecycle event and return it.
    pub fn event(
        &self,
        source: EventSource,
        level: EventLevel,
        event: &str,
        message: impl Into<String>,
        data: Option<serde_json::Value>,
    ) -> WorkerLifecycleLogEntry {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // The output before an event is in its file before the event is.
        inner.flush();
        let entry = WorkerLifecycleLogEntry {
            seq: inner.events.count + 1,
            timestamp: now_rfc3339(),
            event: event.to_string(),
            level,
            source,
            message: message.into(),
            data,
        };
        match serde_json::to_vec(&entry) {
            Ok(mut line) => {
                line.push(b'\n');
                // A worker's events count against the step's disk budget;
                // past it they are dropped. The host's are always written.
                if source == EventSource::Worker {
                    if self.budget.charge(line.len() as u64).is_err() {
                        drop(guard);
                        return entry;
                    }
                } else {
                    self.budget.record(line.len() as u64);
                }
                // One write per record: appends of a whole line are not
                // interleaved with other writers of this file.
                if let Err(e) = inner.lifecycle.write_all(&line) {
                    inner
                        .write_error
                        .get_or_insert(format!("{}: {e}", inner.session.lifecycle_log_path));
                }
            }
            Err(e) => tracing::error!("cannot serialize lifecycle event: {e}"),
        }
        inner.events.keep(kept_copy(&entry));
        drop(guard);
        if let Some(observer) = &self.observer {
            observer(LiveUpdate::Event(&entry));
        }
        entry
    }

    /// A host event at `info` level.
    pub fn host_info(&self, message: impl Into<String>, event: crate::contracts::HostEvent) {
        self.host(EventLevel::Info, message, event);
    }

    /// Record one of the host's own events: its name and typed data.
    pub fn host(
        &self,
        level: EventLevel,
        message: impl Into<String>,
        event: crate::contracts::HostEvent,
    ) -> WorkerLifecycleLogEntry {
        let (name, data) = event.into_parts();
        self.event(EventSource::Host, level, &name, message, data)
    }

    /// Append a chunk of output. Returns `false` once the stream's log is
    /// full (the chunk then lives on only in the tail).
    pub fn output(&self, stream: Stream, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (log, path) = match stream {
            Stream::Stdout => (&mut inner.stdout, &inner.session.stdout_log_path),
            Stream::Stderr => (&mut inner.stderr, &inner.session.stderr_log_path),
        };
        let complete = match log.append(bytes, &self.budget) {
            Ok(complete) => complete,
            Err(e) => {
                inner.write_error.get_or_insert(format!("{path}: {e}"));
                true
            }
        };
        let waiting = !inner.stdout.pending.is_empty() || !inner.stderr.pending.is_empty();
        let schedule = waiting && !inner.flush_scheduled;
        inner.flush_scheduled |= schedule;
        drop(guard);
        if schedule {
            match Flusher::get() {
                Some(flusher) => flusher.schedule(self.me.clone()),
                None => self.lock().flush(),
            }
        }
        if let Some(observer) = &self.observer {
            observer(LiveUpdate::Output(stream, bytes));
        }
        complete
    }

    /// The step's disk budget.
    pub fn budget(&self) -> &DiskBudget {
        &self.budget
    }

    /// Whether stdout or stderr went past its limit.
    pub fn truncated(&self) -> bool {
        let inner = self.lock();
        inner.stdout.dropped > 0 || inner.stderr.dropped > 0
    }

    /// The lifecycle events written so far: all of them, or the first and
    /// last [`KEPT_EVENTS`] when there were more (`lifecycle.jsonl` has all).
    pub fn events(&self) -> Vec<WorkerLifecycleLogEntry> {
        self.lock().events.all()
    }

    pub fn event_count(&self) -> u64 {
        self.lock().events.count
    }

    /// The last `n` lines of both streams, stdout first.
    pub fn tail_lines(&self, n: usize) -> (Vec<String>, Vec<String>) {
        let inner = self.lock();
        (inner.stdout.tail_lines(n), inner.stderr.tail_lines(n))
    }

    /// Counts and tails of what was written.
    pub fn summary(&self) -> LocalRunLogSummary {
        let inner = self.lock();
        LocalRunLogSummary {
            lifecycle_event_count: inner.events.count,
            stdout_chunk_count: inner.stdout.chunks,
            stderr_chunk_count: inner.stderr.chunks,
            stdout_bytes: inner.stdout.bytes,
            stderr_bytes: inner.stderr.bytes,
            stdout_tail: inner.stdout.tail_lines(SUMMARY_TAIL_LINES),
            stderr_tail: inner.stderr.tail_lines(SUMMARY_TAIL_LINES),
            stdout_truncated: inner.stdout.dropped > 0,
            stderr_truncated: inner.stderr.dropped > 0,
        }
    }

    /// The first write error, if any write failed.
    pub fn write_error(&self) -> Option<String> {
        self.lock().write_error.clone()
    }

    /// Flush the files to disk (unless the runner's durability is
    /// `process-crash`) and mark the session closed.
    pub fn close(&self) -> LocalRunLogSession {
        let sync = self.durability == Durability::PowerLoss;
        let mut inner = self.lock();
        if sync {
            if let Err(e) = inner.lifecycle.sync_all() {
                tracing::warn!("cannot fsync the lifecycle log: {e}");
            }
        }
        let inner = &mut *inner;
        for stream in [&mut inner.stdout, &mut inner.stderr] {
            if let Err(e) = stream.finish(sync) {
                tracing::warn!("cannot finish an output log: {e}");
            }
        }
        inner.session.status = LogSessionStatus::Closed;
        inner.session.closed_at = Some(now_rfc3339());
        inner.session.clone()
    }

    /// The session as it stands.
    pub fn session(&self) -> LocalRunLogSession {
        self.lock().session.clone()
    }
}
