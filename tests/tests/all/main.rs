//! Integration tests of baa-runner: real worker components in a real
//! wasmtime, real temporary git repositories, real child processes. Each
//! test asserts on the files in the run directory, not only on the result.

mod checkpoints;
mod cli;
mod codex;
mod git;
mod requests;
mod sandbox;
mod shell;

use baa_runner::contracts::{StepExecutionRequest, StepExecutionResult};
use baa_runner::{Runner, RunnerConfig};

/// A runner with the default config (built-in kinds only).
pub fn runner() -> Runner {
    Runner::new(RunnerConfig::default()).expect("runner builds")
}

/// Run a step to its result.
pub async fn run(runner: &Runner, request: StepExecutionRequest) -> StepExecutionResult {
    runner
        .run(request, None)
        .await
        .expect("the step runs to a result")
}
