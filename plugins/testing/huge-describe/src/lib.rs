//! Test fixture `huge-describe`: a worker kind whose `describe` answers a
//! 16 MiB name (its kind name followed by 16 MiB), version and description,
//! and a 16 MiB program name. The host must keep every record it writes
//! small.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "worker",
});

use baa::worker::types::StepRequest;
use exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Guest, Status, WorkerInfo, WorkerOutcome,
};

const SIXTEEN_MIB: usize = 16 * 1024 * 1024;

struct Huge;

impl Guest for Huge {
    fn describe() -> WorkerInfo {
        WorkerInfo {
            name: format!("huge-describe{}", "n".repeat(SIXTEEN_MIB)),
            version: format!("0.1.0-{}", "v".repeat(SIXTEEN_MIB)),
            description: "d".repeat(SIXTEEN_MIB),
            capabilities: Capabilities {
                programs: vec!["p".repeat(SIXTEEN_MIB)],
                env: Vec::new(),
                network: false,
            },
        }
    }

    fn execute(_request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        Ok(WorkerOutcome {
            status: Status::Completed,
            summary: "should never run: describe names another kind".into(),
            needs_human: false,
            exit_code: None,
            suggested_followup: Vec::new(),
        })
    }
}

export!(Huge);
