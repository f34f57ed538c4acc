//! Test fixture: a worker kind whose initialization never returns, so it
//! spins while the component is instantiated. The host must interrupt it.

use baa_worker_sdk::*;

/// The component model calls `_initialize` while the component is
/// instantiated, before any export can be called.
#[no_mangle]
pub extern "C" fn _initialize() {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

struct StartLoop;

impl Worker for StartLoop {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("start-loop")
            .description("never finishes starting")
            .version("0.1.0")
    }

    fn execute(_request: Step) -> Result<WorkerOutcome, ExecuteError> {
        Ok(WorkerOutcome::completed(
            "unreachable: the constructor spins",
        ))
    }
}

export_worker!(StartLoop);
