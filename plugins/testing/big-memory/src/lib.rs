//! Test fixture: a worker kind whose initial linear memory (1 GiB, set by
//! its build script) is above the host's limit. The host must refuse to
//! instantiate it.

use baa_worker_sdk::*;

struct BigMemory;

impl Worker for BigMemory {
    fn describe() -> WorkerInfo {
        WorkerInfo::new("big-memory", "0.1.0", "asks for 1 GiB up front")
    }

    fn execute(_request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        Ok(WorkerOutcome::completed("should never run"))
    }
}

export_worker!(BigMemory);
