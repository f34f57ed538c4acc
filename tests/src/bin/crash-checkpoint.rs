//! `crash-checkpoint DIR`: writes checkpoint 1 into DIR, then checkpoint 2,
//! for the crash tests, which set `BAA_FAULT_POINT` so that the process is
//! killed somewhere inside the second write.

use baa_runner::checkpoints::{CheckpointManager, CheckpointOwner, StepHistory};
use baa_runner::contracts::{CheckpointMode, CheckpointType};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: crash-checkpoint DIR");
    let owner = CheckpointOwner {
        task_id: "task".into(),
        step_id: "step".into(),
        run_id: "run".into(),
        attempt: 1,
    };
    let mut manager = CheckpointManager::new(
        dir.into(),
        CheckpointMode::Capture,
        owner,
        None,
        StepHistory::default(),
        None,
    );
    // The first write must complete: arm the fault point only for the second.
    let point = std::env::var("BAA_FAULT_POINT").ok();
    std::env::remove_var("BAA_FAULT_POINT");
    manager
        .capture(CheckpointType::Summary, "old", Some(b"old payload"))
        .expect("first checkpoint");
    if let Some(point) = point {
        baa_runner::fault::arm(&point);
    }
    manager
        .capture(CheckpointType::Summary, "new", Some(b"new payload"))
        .expect("second checkpoint");
}
