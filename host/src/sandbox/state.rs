//! The data of one step's store: the WASI context (one preopen, captured
//! stdio, nothing else), the resource table, memory limits and the step's
//! host capabilities.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::limits::StepLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::subprocess::Subprocesses;
use crate::checkpoints::CheckpointManager;
use crate::contracts::StepArtifact;
use crate::logs::LogSession;

/// What the worker's host calls act on.
pub struct StepHost {
    pub logs: Arc<LogSession>,
    pub subprocesses: Subprocesses,
    pub checkpoints: Arc<Mutex<CheckpointManager>>,
    pub artifacts: Vec<StepArtifact>,
    pub artifacts_dir: PathBuf,
    /// Lines of each stream in a `log-tail` checkpoint.
    pub log_tail_lines: usize,
}

/// The `T` of `Store<T>` for a step.
pub struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StepLimits,
    pub host: StepHost,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `baa:worker/types` only defines types.
impl super::bindings::baa::worker::types::Host for StepState {}
