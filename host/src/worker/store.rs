//! The data of one step's store and the narrow views its host interfaces
//! are implemented on: each capability sees its own state (and the resource
//! table where it hands out resources), never the whole store.

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::StepLimits;
use super::stdio::LogOutput;
use crate::capabilities::checkpoint::Checkpoints;
use crate::capabilities::events::Events;
use crate::capabilities::subprocess::Subprocesses;
use crate::logs::{LogSession, Stream};

/// The `T` of `Store<T>` for a step.
pub struct StepState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StepLimits,
    subprocesses: Subprocesses,
    events: Events,
    checkpoints: Checkpoints,
}

/// The capabilities a step's worker reaches through the host.
pub struct StepCapabilities {
    pub subprocesses: Subprocesses,
    pub events: Events,
    pub checkpoints: Checkpoints,
}

impl StepCapabilities {
    /// Capabilities that do nothing: every command refused, no artifacts,
    /// checkpoints disabled (for a kind's `describe` outside a step).
    pub fn none(logs: &Arc<LogSession>, sandbox: crate::config::SandboxConfig) -> Self {
        let disabled = Arc::new(std::sync::Mutex::new(
            crate::checkpoints::CheckpointManager::disabled(),
        ));
        StepCapabilities {
            subprocesses: Subprocesses::deny_all(logs.clone(), sandbox),
            events: Events::new(logs.clone(), None),
            checkpoints: Checkpoints::new(logs.clone(), disabled, 0),
        }
    }
}

/// A store's failure to start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the worktree {path} for the worker: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

/// Epoch ticks a guest may still compute after its deadline.
const GRACE_TICKS: u32 = 2;

impl StepState {
    /// The step's state: WASI with only `worktree` preopened (read-write, as
    /// `.`; nothing for a describing store), stdio into `logs`, no
    /// environment, arguments or network.
    pub fn new(
        worktree: Option<&Path>,
        logs: &Arc<LogSession>,
        capabilities: StepCapabilities,
        limits: &crate::config::Limits,
    ) -> Result<Self, StoreError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_blocking_current_thread(true);
        if let Some(worktree) = worktree {
            wasi.stdout(LogOutput::new(logs.clone(), Stream::Stdout))
                .stderr(LogOutput::new(logs.clone(), Stream::Stderr));
            wasi.preopened_dir(worktree, ".", FsPerms::ReadWrite)
                .map_err(|e| StoreError {
                    path: worktree.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resource_table_entries as usize);
        Ok(StepState {
            wasi: wasi.build(),
            table,
            limits: StepLimits::new((limits.memory_mib * 1024 * 1024) as usize),
            subprocesses: capabilities.subprocesses,
            events: capabilities.events,
            checkpoints: capabilities.checkpoints,
        })
    }

    /// A store for this state whose guest code yields at every epoch tick
    /// and is interrupted once it computes past `deadline`: the first
    /// `GRACE_TICKS` ticks after it are a last grace (a guest that just
    /// learnt its subprocess was killed returns its outcome), the next one
    /// traps.
    pub fn into_store(self, engine: &Engine, deadline: Instant) -> Store<StepState> {
        let mut store = Store::new(engine, self);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        let deadline = deadline.into_std();
        let mut overdue = 0;
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() < deadline {
                Ok(UpdateDeadline::Yield(1))
            } else if overdue >= GRACE_TICKS {
                Err(Trap::Interrupt.into())
            } else {
                overdue += 1;
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    pub fn subprocesses(&self) -> &Subprocesses {
        &self.subprocesses
    }

    pub fn subprocesses_mut(&mut self) -> &mut Subprocesses {
        &mut self.subprocesses
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Whether the guest asked for more memory than its limit.
    pub fn memory_hit(&self) -> bool {
        self.limits.memory_hit
    }

    pub(super) fn subprocess_view(&mut self) -> SubprocessView<'_> {
        SubprocessView {
            subprocesses: &mut self.subprocesses,
            table: &mut self.table,
        }
    }

    pub(super) fn events_view(&mut self) -> EventsView<'_> {
        EventsView {
            events: &mut self.events,
        }
    }

    pub(super) fn checkpoint_view(&mut self) -> CheckpointView<'_> {
        CheckpointView {
            checkpoints: &self.checkpoints,
            subprocesses: &mut self.subprocesses,
        }
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the `subprocess` interface reaches: the step's subprocess
/// capability and the table holding its `process` resources.
pub struct SubprocessView<'a> {
    pub subprocesses: &'a mut Subprocesses,
    pub table: &'a mut ResourceTable,
}

/// What the `events` interface reaches.
pub struct EventsView<'a> {
    pub events: &'a mut Events,
}

/// What the `checkpoint` interface reaches: the records, and the
/// subprocesses its `git-diff` snapshots run through.
pub struct CheckpointView<'a> {
    pub checkpoints: &'a Checkpoints,
    pub subprocesses: &'a mut Subprocesses,
}

/// [`HasData`] markers projecting the store onto each view.
pub struct SubprocessCap;
pub struct EventsCap;
pub struct CheckpointCap;

impl HasData for SubprocessCap {
    type Data<'a> = SubprocessView<'a>;
}
impl HasData for EventsCap {
    type Data<'a> = EventsView<'a>;
}
impl HasData for CheckpointCap {
    type Data<'a> = CheckpointView<'a>;
}
