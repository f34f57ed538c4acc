//! Guest SDK for baa-runner worker kinds.
//!
//! A worker kind implements [`Worker`] and exports it with [`export_worker!`];
//! the generated WIT bindings stay behind this crate. Helpers wrap the host
//! interfaces: [`run`] launches a subprocess, [`emit`] logs a lifecycle event,
//! [`capture_checkpoint`] and [`declare_artifact`] record progress.
//!
//! ```ignore
//! use baa_worker_sdk::*;
//! struct Echo;
//! impl Worker for Echo {
//!     fn describe() -> WorkerInfo { WorkerInfo::new("echo", "0.1.0", "prints the prompt") }
//!     fn execute(req: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
//!         println!("{}", req.prompt_summary.unwrap_or_default());
//!         Ok(WorkerOutcome::completed("echoed the prompt"))
//!     }
//! }
//! export_worker!(Echo);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "worker",
        pub_export_macro: true,
        export_macro_name: "__export_worker_bindings",
        default_bindings_module: "baa_worker_sdk::bindings",
    });
}

pub use bindings::baa::worker::checkpoint::CheckpointError;
pub use bindings::baa::worker::events::{ArtifactError, Level};
pub use bindings::baa::worker::subprocess::{Command, ExitStatus, Output, Process, SpawnError};
pub use bindings::baa::worker::types::{ResumeCheckpoint, StepRequest, SuggestedFollowup};
pub use bindings::exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Guest as Worker, Status, WorkerInfo, WorkerOutcome,
};

/// Export a type implementing [`Worker`] as this component's worker kind.
#[macro_export]
macro_rules! export_worker {
    ($ty:ident) => {
        $crate::bindings::__export_worker_bindings!($ty);
    };
}

impl WorkerInfo {
    /// A kind that asks for no capabilities.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        WorkerInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            capabilities: Capabilities {
                programs: Vec::new(),
                env: Vec::new(),
                network: false,
            },
        }
    }

    /// Ask for permission to launch `program`.
    pub fn program(mut self, program: &str) -> Self {
        self.capabilities.programs.push(program.to_string());
        self
    }

    /// Ask for `name` to be passed to subprocesses.
    pub fn env(mut self, name: &str) -> Self {
        self.capabilities.env.push(name.to_string());
        self
    }

    /// Ask for network access for subprocesses.
    pub fn network(mut self) -> Self {
        self.capabilities.network = true;
        self
    }
}

impl WorkerOutcome {
    fn new(status: Status, summary: impl Into<String>) -> Self {
        WorkerOutcome {
            status,
            summary: summary.into(),
            needs_human: false,
            exit_code: None,
            suggested_followup: Vec::new(),
        }
    }

    /// The step did its work.
    pub fn completed(summary: impl Into<String>) -> Self {
        Self::new(Status::Completed, summary)
    }

    /// The step tried and failed.
    pub fn failed(summary: impl Into<String>) -> Self {
        Self::new(Status::Failed, summary)
    }

    /// The step cannot go on without a person.
    pub fn blocked(summary: impl Into<String>) -> Self {
        let mut outcome = Self::new(Status::Blocked, summary);
        outcome.needs_human = true;
        outcome
    }

    /// Record the exit code of the command that decided the outcome.
    pub fn with_exit_code(mut self, code: Option<i32>) -> Self {
        self.exit_code = code;
        self
    }

    /// Suggest a step to run next.
    pub fn with_followup(mut self, step_name: &str, step_kind: &str, reason: &str) -> Self {
        self.suggested_followup.push(SuggestedFollowup {
            step_name: step_name.to_string(),
            step_kind: step_kind.to_string(),
            reason: reason.to_string(),
        });
        self
    }
}

impl Command {
    /// `program` with `args`, in the worktree root, with no extra environment.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            cwd: None,
            env: Vec::new(),
            timeout_ms: None,
            stdin: None,
        }
    }

    /// Add an environment variable (the policy must allow its name).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Feed `bytes` to the child's stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }
}

/// What a finished subprocess produced.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    /// Whether the process exited with code 0.
    pub fn success(&self) -> bool {
        self.status.code == Some(0)
    }

    /// Stdout as (lossy) UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as (lossy) UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A short description of how the process ended.
    pub fn describe_exit(&self) -> String {
        describe_exit(&self.status)
    }
}

/// A short description of how a process ended.
pub fn describe_exit(status: &ExitStatus) -> String {
    if status.timed_out {
        "timed out".to_string()
    } else if status.output_limit_exceeded {
        "killed: output limit exceeded".to_string()
    } else if let Some(code) = status.code {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal {
        format!("killed by signal {signal}")
    } else {
        "ended".to_string()
    }
}

/// Start a command; read its output with [`Process::next`]. Dropping the
/// process kills it.
pub fn spawn(cmd: &Command) -> Result<Process, SpawnError> {
    bindings::baa::worker::subprocess::spawn(cmd)
}

/// Run a command to completion, calling `on_output` with every chunk as it
/// arrives (the host already writes every chunk into the run's logs).
pub fn run_streaming(
    cmd: &Command,
    mut on_output: impl FnMut(&Output),
) -> Result<ExitStatus, SpawnError> {
    let process = spawn(cmd)?;
    loop {
        let output = process.next();
        on_output(&output);
        if let Output::Exited(status) = output {
            return Ok(status);
        }
    }
}

/// Run a command to completion and collect its output.
pub fn run(cmd: &Command) -> Result<Finished, SpawnError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let status = run_streaming(cmd, |output| match output {
        Output::Stdout(bytes) => stdout.extend_from_slice(bytes),
        Output::Stderr(bytes) => stderr.extend_from_slice(bytes),
        Output::Exited(_) => {}
    })?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// A one-line description of a spawn failure.
pub fn describe_spawn_error(error: &SpawnError) -> String {
    match error {
        SpawnError::Denied(why) => format!("denied by policy: {why}"),
        SpawnError::InvalidCwd(why) => format!("invalid cwd: {why}"),
        SpawnError::Io(why) => format!("could not start: {why}"),
    }
}

/// Write a file into the step's scratch directory (outside the worktree) for
/// a subprocess to read; returns its absolute path.
pub fn scratch_file(name: &str, contents: &[u8]) -> Result<String, SpawnError> {
    bindings::baa::worker::subprocess::scratch_file(name, contents)
}

/// Append an event to the run's lifecycle log.
pub fn emit(level: Level, event: &str, message: &str, data_json: Option<&str>) {
    bindings::baa::worker::events::emit(level, event, message, data_json);
}

/// Store `contents` as an artifact of this run; returns its path in the run directory.
pub fn declare_artifact(
    name: &str,
    description: &str,
    contents: &[u8],
) -> Result<String, ArtifactError> {
    bindings::baa::worker::events::declare_artifact(name, description, contents)
}

/// Capture a checkpoint; returns its sequence number.
pub fn capture_checkpoint(
    checkpoint_type: &str,
    summary: &str,
    payload: Option<&[u8]>,
) -> Result<u32, CheckpointError> {
    bindings::baa::worker::checkpoint::capture(checkpoint_type, summary, payload)
}

/// The last `n` non-empty lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
