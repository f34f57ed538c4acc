//! The `codex` worker kind (work in progress).
use baa_worker_sdk::*;
struct Codex;
impl Worker for Codex {
    fn describe() -> WorkerInfo {
        WorkerInfo::new("codex", env!("CARGO_PKG_VERSION"), "Drives the Codex CLI")
            .program("codex")
            .network()
    }
    fn execute(_request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        Err(ExecuteError::Failed(
            "the codex worker kind is not implemented yet".into(),
        ))
    }
}
export_worker!(Codex);
