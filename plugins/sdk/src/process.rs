//! Subprocesses through the host's `subprocess` interface: the host checks
//! each command against the operator's policy, confines it, streams its
//! output into the run's logs and kills what it left behind.

use crate::bindings::baa::worker::subprocess;
use crate::{Command, DenialReason, ExecuteError, ExitStatus, Output, Process, SpawnError};

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

    /// Run in `dir`, relative to the worktree root.
    pub fn cwd(mut self, dir: &str) -> Self {
        self.cwd = Some(dir.to_string());
        self
    }

    /// Add an environment variable (the policy must allow its name).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Kill the process after `ms` milliseconds (the step's deadline still applies).
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
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
    subprocess::spawn(cmd)
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
        SpawnError::Denied(denial) if denial.reason == DenialReason::Cwd => {
            format!("invalid cwd: {}", denial.message)
        }
        SpawnError::Denied(denial) => format!("denied by policy: {}", denial.message),
        SpawnError::Io(why) => format!("could not start: {why}"),
    }
}

impl From<SpawnError> for ExecuteError {
    /// A subprocess that could not start fails the step, saying why.
    fn from(error: SpawnError) -> Self {
        ExecuteError::Failed(describe_spawn_error(&error))
    }
}

/// Write a file into the step's scratch directory (outside the worktree) for
/// a subprocess to read; returns its absolute path.
pub fn scratch_file(name: &str, contents: &[u8]) -> Result<String, SpawnError> {
    subprocess::scratch_file(name, contents)
}
