//! What a worker kind can reach through the host, one module per capability:
//! launching subprocesses, emitting events and artifacts, capturing checkpoints.

pub mod bounds;
pub mod checkpoint;
pub mod events;
pub mod subprocess;
