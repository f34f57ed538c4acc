//! Guest SDK for baa-runner worker kinds.
//!
//! A worker kind implements [`Worker`] — `execute`, and optionally the
//! `describe` and `resume` hooks — and exports it with [`export_worker!`]; the
//! generated WIT bindings stay behind this crate. The step arrives as a
//! [`Step`] (serde, camelCase JSON); helpers wrap the host interfaces:
//! [`run`] launches a subprocess, [`emit`] and [`progress`] log lifecycle
//! events, [`capture_checkpoint`] and [`declare_artifact`] record progress.
//!
//! The worktree is the current directory: `std::fs` works inside it and
//! nowhere else. Build for `wasm32-wasip2`, then `baa-runner stamp` and
//! `baa-runner check` the `.wasm` file.
//!
//! A project made by `baa-runner new` carries a copy of this crate in its
//! `sdk/` directory (with the WIT in `wit/`) and depends on it by path
//! (`baa-worker-sdk = { path = "sdk" }`). The README's "Writing a worker
//! kind" takes such a kind, using [`progress`], [`declare_artifact`] and
//! [`capture_checkpoint`], through a real step.
//!
//! ```
//! use baa_worker_sdk::*;
//!
//! /// Counts the lines of the files that the step's `command` names.
//! struct LineCount;
//!
//! impl Worker for LineCount {
//!     // `describe` defaults to the crate's name, version and description,
//!     // asking for nothing; override it to rename the kind or request programs.
//!     fn describe(package: WorkerInfo) -> WorkerInfo {
//!         package.named("line-count")
//!     }
//!
//!     fn execute(step: Step) -> Result<WorkerOutcome, ExecuteError> {
//!         let names = step.required_command()?;
//!         let mut total = 0;
//!         for name in names.split_whitespace() {
//!             let text = std::fs::read_to_string(name)
//!                 .map_err(|e| ExecuteError::Failed(format!("cannot read {name}: {e}")))?;
//!             total += text.lines().count();
//!         }
//!         Ok(WorkerOutcome::completed(format!("{total} lines")))
//!     }
//! }
//!
//! export_worker!(LineCount);
//!
//! // The kind's own logic also runs natively, e.g. in its unit tests (the
//! // host interfaces exist only inside baa-runner):
//! let step: Step = serde_json::from_str(
//!     r#"{"taskId": "t", "stepId": "s", "runId": "r", "attempt": 1,
//!         "stepName": "count", "stepKind": "line-count", "workerKind": "line-count",
//!         "command": "Cargo.toml", "timeoutMs": 60000, "checkpointsEnabled": false}"#,
//! )?;
//! let outcome = LineCount::execute(step).unwrap();
//! assert!(outcome.summary.ends_with(" lines"));
//! assert_eq!(LineCount::describe(WorkerInfo::new("x", "1.0.0", "")).name, "line-count");
//! # Ok::<(), serde_json::Error>(())
//! ```

mod process;
mod record;
mod step;

pub use process::*;
pub use record::*;
pub use step::*;

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
pub use bindings::baa::worker::subprocess::{
    Command, Denial, DenialReason, ExitStatus, Output, Process, SpawnError,
};
pub use bindings::baa::worker::types::SuggestedFollowup;
pub use bindings::exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Status, WorkerInfo, WorkerOutcome,
};

/// A worker kind. Only `execute` is required.
pub trait Worker {
    /// What the kind is and what it asks the host for. `package` is the
    /// crate's own name, version and description with no capabilities
    /// (filled in by [`export_worker!`]); the default returns it unchanged.
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
    }

    /// Do the step's work in the worktree and say how it went.
    fn execute(step: Step) -> Result<WorkerOutcome, ExecuteError>;

    /// Called instead of `execute` when the attempt resumes from an earlier
    /// checkpoint (`step.resume` holds the same checkpoint). The default
    /// starts over with `execute`, which may look at `step.resume` itself.
    fn resume(step: Step, checkpoint: Resume) -> Result<WorkerOutcome, ExecuteError> {
        let _ = checkpoint;
        Self::execute(step)
    }
}

/// Export a type implementing [`Worker`] as this component's worker kind.
#[macro_export]
macro_rules! export_worker {
    ($ty:ty) => {
        #[doc(hidden)]
        struct __BaaWorkerExport;

        impl $crate::bindings::exports::baa::worker::worker_executor::Guest for __BaaWorkerExport {
            fn describe() -> $crate::WorkerInfo {
                <$ty as $crate::Worker>::describe($crate::WorkerInfo::new(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                ))
            }

            fn execute(
                request: $crate::bindings::baa::worker::types::StepRequest,
            ) -> Result<$crate::WorkerOutcome, $crate::ExecuteError> {
                $crate::__dispatch::<$ty>(request)
            }
        }

        $crate::bindings::__export_worker_bindings!(__BaaWorkerExport);
    };
}

#[doc(hidden)]
pub fn __dispatch<W: Worker>(
    request: bindings::baa::worker::types::StepRequest,
) -> Result<WorkerOutcome, ExecuteError> {
    let step = Step::from(request);
    match step.resume.clone() {
        Some(checkpoint) => W::resume(step, checkpoint),
        None => W::execute(step),
    }
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

    /// Name the kind (`workerKind` in requests), e.g. when the crate's name differs.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Set the kind's own version (semver).
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    /// Describe what the kind does.
    pub fn description(mut self, description: &str) -> Self {
        self.description = description.to_string();
        self
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

/// The last `n` non-empty lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
