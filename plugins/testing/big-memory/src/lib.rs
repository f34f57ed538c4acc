//! Test fixture: a worker kind whose initial linear memory (1 GiB, set by
//! its build script) is above the host's limit. The host must refuse to
//! instantiate it.

use baa_worker_sdk::*;

struct BigMemory;

impl Worker for BigMemory {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("big-memory")
            .description("asks for 1 GiB up front")
            .version("0.1.0")
    }

    fn execute(_request: Step) -> Result<WorkerOutcome, ExecuteError> {
        Ok(WorkerOutcome::completed("should never run"))
    }
}

export_worker!(BigMemory);
