//! What a worker kind can reach through the host, one module per capability:
//! launching subprocesses, emitting events and artifacts, capturing
//! checkpoints. Nothing here names a type generated from the WIT.

pub mod checkpoint;
pub mod events;
pub mod subprocess;

pub use crate::config::Capabilities;
