//! The live view of a running step: events and whole lines of output as
//! they happen, and on a terminal a status line (spinner, step, elapsed
//! time, latest event) that shows the step is alive while it is quiet.
//! A writer thread does the terminal writes: a terminal that stops reading
//! (a paused pager, Ctrl-S) loses lines of the view, never stalls the step.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use baa_runner::contracts::{EventLevel, EventSource, WorkerLifecycleLogEntry};
use baa_runner::logs::{LiveUpdate, Observer, Stream};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::render::{sanitize, Paint};

/// How much the live view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Nothing live; the summary only.
    Quiet,
    /// The step's events and output; the host's own work as one line each.
    Normal,
    /// Every event, debug detail included, whole messages.
    Verbose,
}

/// A longer partial line than this is shown without waiting for its end.
const MAX_PARTIAL_LINE: usize = 8 * 1024;
/// Pieces of the view waiting for the terminal; past this they are dropped.
const QUEUED: usize = 4096;

/// The live view of one step.
pub struct LiveView {
    state: Mutex<State>,
    verbosity: Verbosity,
    paint: Paint,
    /// Pieces the terminal was too slow for.
    dropped: Arc<AtomicU64>,
}

struct State {
    /// Unfinished last lines of stdout and stderr.
    partial: [Vec<u8>; 2],
    /// To the writer thread; `None` once finished.
    queue: Option<SyncSender<Piece>>,
    writer: Option<JoinHandle<()>>,
}

/// What the writer thread shows.
enum Piece {
    /// Lines, above the status line.
    Text(String),
    /// The status line's message.
    Status(String),
}

impl LiveView {
    /// A view writing to stdout, or to stderr when stdout carries JSON.
    pub fn new(title: &str, to_stderr: bool, verbosity: Verbosity, paint: Paint) -> Arc<Self> {
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bar = (terminal && verbosity > Verbosity::Quiet).then(|| {
            let target = if to_stderr {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::stdout()
            };
            let template = if paint.enabled() {
                "{spinner:.cyan} {prefix:.bold} · {elapsed} · {wide_msg:.dim}"
            } else {
                "{spinner} {prefix} · {elapsed} · {wide_msg}"
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            let bar = ProgressBar::with_draw_target(None, target)
                .with_style(style)
                .with_prefix(sanitize(title).replace('\n', " "))
                .with_message("preparing");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let (queue, pieces) = sync_channel(QUEUED);
        let writer = std::thread::Builder::new()
            .name("baa-live-view".into())
            .spawn(move || write_pieces(pieces, bar, to_stderr))
            .ok();
        Arc::new(LiveView {
            state: Mutex::new(State {
                partial: [Vec::new(), Vec::new()],
                queue: writer.is_some().then_some(queue),
                writer,
            }),
            verbosity,
            paint,
            dropped: Arc::default(),
        })
    }

    /// The observer feeding this view.
    pub fn observer(self: &Arc<Self>) -> Observer {
        let view = self.clone();
        Arc::new(move |update: LiveUpdate<'_>| view.update(update))
    }

    /// Show what is left of unfinished lines, wait until everything is
    /// shown and remove the status line.
    pub fn finish(&self) {
        let mut state = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut state.partial[index(stream)]);
            if !rest.is_empty() {
                let text = self.output_line(stream, &rest);
                self.send(&state, Piece::Text(text));
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "{} {dropped} piece(s) of the live view were not shown (the terminal was not reading); the run's logs have everything\n",
                self.paint.yellow("!")
            );
            // Waits for room: the step is over.
            if let Some(queue) = &state.queue {
                let _ = queue.send(Piece::Text(note));
            }
        }
        state.queue = None;
        if let Some(writer) = state.writer.take() {
            let _ = writer.join();
        }
    }

    /// Hand `piece` to the writer thread, or drop it when the terminal is
    /// behind.
    fn send(&self, state: &State, piece: Piece) {
        let Some(queue) = &state.queue else {
            return;
        };
        match queue.try_send(piece) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, update: LiveUpdate<'_>) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let mut state = self.lock();
        match update {
            LiveUpdate::Event(entry) => {
                self.send(
                    &state,
                    Piece::Status(format!(
                        "{}: {}",
                        sanitize(&entry.event),
                        sanitize(first_line(&entry.message)).replace('\t', " ")
                    )),
                );
                if let Some(line) = self.event_line(entry) {
                    self.send(&state, Piece::Text(line));
                }
            }
            LiveUpdate::Output(stream, bytes) => {
                let i = index(stream);
                state.partial[i].extend_from_slice(bytes);
                let mut text = String::new();
                let buffer = std::mem::take(&mut state.partial[i]);
                let mut rest: &[u8] = &buffer;
                while let Some(end) = rest.iter().position(|b| *b == b'\n') {
                    text.push_str(&self.output_line(stream, &rest[..end]));
                    rest = &rest[end + 1..];
                }
                if rest.len() > MAX_PARTIAL_LINE {
                    text.push_str(&self.output_line(stream, rest));
                    rest = &[];
                }
                state.partial[i] = rest.to_vec();
                if !text.is_empty() {
                    self.send(&state, Piece::Text(text));
                }
            }
        }
    }

    /// One line of output, newline included.
    fn output_line(&self, stream: Stream, line: &[u8]) -> String {
        let text = sanitize(&String::from_utf8_lossy(line));
        match stream {
            Stream::Stdout => format!("{text}\n"),
            Stream::Stderr => format!("{} {text}\n", self.paint.dim("  stderr|")),
        }
    }

    /// How an event is shown, if it is at this verbosity.
    fn event_line(&self, entry: &WorkerLifecycleLogEntry) -> Option<String> {
        let verbose = self.verbosity == Verbosity::Verbose;
        if entry.level == EventLevel::Debug && !verbose {
            return None;
        }
        let message = if verbose {
            sanitize(&entry.message).replace('\n', "\n    ")
        } else {
            sanitize(first_line(&entry.message))
        };
        // The host's own work around the step (snapshots) is one indented
        // line, not an event of the step's.
        if entry.source == EventSource::Host && entry.event.starts_with("checkpoint.") && !verbose {
            return Some(format!(
                "  {} {}\n",
                self.paint.dim("⤷"),
                self.paint.dim(&message)
            ));
        }
        let marker = match entry.level {
            EventLevel::Error => self.paint.red("✗"),
            EventLevel::Warn => self.paint.yellow("!"),
            EventLevel::Debug => self.paint.dim("·"),
            EventLevel::Info => self.paint.cyan("▸"),
        };
        let time = entry.timestamp.get(11..23).unwrap_or(&entry.timestamp);
        Some(format!(
            "{marker} {} {:<20} {message}\n",
            self.paint.dim(time),
            sanitize(&entry.event)
        ))
    }
}

/// The writer thread: show pieces until the view is finished. A closed
/// stream (`| head`) is left alone; the step goes on and its records are
/// written.
fn write_pieces(pieces: Receiver<Piece>, bar: Option<ProgressBar>, to_stderr: bool) {
    let mut closed = false;
    let write = |text: &str| -> std::io::Result<()> {
        if to_stderr {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    };
    for piece in pieces {
        match piece {
            Piece::Status(message) => {
                if let Some(bar) = &bar {
                    bar.set_message(message);
                }
            }
            Piece::Text(_) if closed => {}
            Piece::Text(text) => {
                let written = match &bar {
                    Some(bar) => bar.suspend(|| write(&text)),
                    None => write(&text),
                };
                closed = written.is_err();
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
