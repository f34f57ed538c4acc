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
//! - [`run`]: the lifecycle (validate → prepare → execute → finish) and [`Runner`];
//! - [`sandbox`]: engine, linker, store state and limits of the wasm side;
//! - [`capabilities`]: what workers reach through the host (subprocess
//!   policy and launching, events and artifacts, checkpoints);
//! - [`plugins`]: finding, loading and checking worker kinds;
//! - [`logs`], [`checkpoints`]: the run records written while a step runs.

pub mod capabilities;
pub mod checkpoints;
pub mod config;
pub mod contracts;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod logs;
pub mod plugins;
pub mod run;
pub mod sandbox;
pub mod scaffold;

pub use config::RunnerConfig;
pub use error::Error;
pub use run::{PreparedStepRun, Runner};
