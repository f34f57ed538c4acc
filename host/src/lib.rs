//! baa-runner: executes the steps of a coding-agent conductor inside a
//! WebAssembly sandbox.
//!
//! A step request ([`contracts::StepExecutionRequest`]) is prepared into a run
//! directory, executed by its worker kind (a WASI component implementing the
//! `baa:worker` world) with only the capabilities granted to it, and answered
//! with a [`contracts::StepExecutionResult`].
//!
//! Where things are:
//! - [`contracts`]: the conductor's JSON contract as Rust types;
//! - [`run`]: the lifecycle (validate → prepare → execute → finish), [`Runner`]
//!   and the [`StepHandle`] of a started step (events, cancellation, result);
//! - [`serve`]: the same over a Unix socket for conductors not written in Rust;
//! - `cluster` (feature `cluster`, on by default): many hosts pulling
//!   steps from NATS JetStream, each step answered exactly once;
//! - [`worker`]: the WIT boundary (bindings of every `baa:worker` version,
//!   host interfaces on per-capability views, engine, store, limits);
//! - [`capabilities`]: what workers reach through the host (subprocess
//!   policy and launching, events and artifacts, checkpoints);
//! - [`plugins`]: finding, loading and checking worker kinds;
//! - [`logs`], [`checkpoints`]: the run records written while a step runs.
//!
//! # Embedding
//!
//! Build one [`Runner`] (engine, plugins, policy, limits) and start steps
//! from any number of tasks. Each [`StepHandle`] streams the step's events
//! as they happen (numbered: a gap means a slow subscriber missed some),
//! cancels it (a token, or dropping the handle), and yields its result.
//! The run directory remains the record; the stream is a live view of it.
//!
//! ```
//! use baa_runner::contracts::{FailureReason, StepExecutionRequest};
//! use baa_runner::{Runner, RunnerConfig, StepEventBody};
//!
//! # fn scratch() -> (std::path::PathBuf, std::path::PathBuf) {
//! #     let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
//! #     let dir = std::env::temp_dir().join(format!("baa-doc-{}", nanos.as_nanos()));
//! #     std::fs::create_dir_all(dir.join("repo")).unwrap();
//! #     assert!(std::process::Command::new("git").args(["init", "-q"])
//! #         .current_dir(dir.join("repo")).status().unwrap().success());
//! #     let dir = dir.canonicalize().unwrap();
//! #     (dir.join("repo"), dir.join("runs"))
//! # }
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (repo, runs) = scratch(); // a git repository, and a directory beside it
//! let request = |step: &str, command: &str| -> StepExecutionRequest {
//!     serde_json::from_value(serde_json::json!({
//!         "taskId": "task", "runId": "run", "stepId": step, "attempt": 1,
//!         "stepName": step, "stepKind": "shell", "workerKind": "shell",
//!         "timeoutSec": 60, "command": command,
//!         "runtime": { "repoRoot": repo, "worktreePath": repo, "runsRootDir": runs },
//!     }))
//!     .unwrap()
//! };
//! let runner = Runner::new(RunnerConfig::default())?;
//! let one = runner.start(request("one", "echo one"))?;
//! let two = runner.start(request("two", "echo two"))?;
//! let mut slow = runner.start(request("slow", "echo working; sleep 600"))?;
//!
//! // Follow the slow step live; cancel it at its first output.
//! while let Some(event) = slow.events().next().await {
//!     match event.body {
//!         StepEventBody::Lifecycle(entry) => println!("#{} {}", event.seq, entry.event),
//!         StepEventBody::Output { .. } => slow.cancel(),
//!         StepEventBody::Finished(end) => println!("#{} finished: {:?}", event.seq, end.outcome),
//!     }
//! }
//! let cancelled = slow.result().await?;
//! assert_eq!(cancelled.state.failure.unwrap().reason, FailureReason::Interrupted);
//! assert!(one.result().await?.ok && two.result().await?.ok);
//! # Ok(())
//! # }
//! ```

pub mod bounds;
pub mod budget;
pub mod capabilities;
pub mod checkpoints;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod contracts;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod logs;
pub mod plugins;
pub mod run;
pub mod scaffold;
pub mod serve;
pub mod worker;

pub use config::RunnerConfig;
pub use error::Error;
pub use run::{EventStream, PreparedStepRun, Runner, StepEvent, StepEventBody, StepHandle};
pub use tokio_util::sync::CancellationToken;
