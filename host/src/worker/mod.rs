//! The WIT boundary: the only module that names a type generated from
//! `wit/`. It holds the bindings of every `baa:worker` version this host
//! runs (`v0_1`, `v0_2`), their host interfaces on per-capability views of
//! the store (`store`), the engine and linker (`engine`), and the calls
//! into a kind (`describe`, `execute`) in the host's own types.

pub mod engine;
mod interfaces;
pub mod limits;
mod stdio;
pub mod store;
mod v0_1;
mod v0_2;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use crate::capabilities::Capabilities;
use crate::plugins::{LoadedPlugin, PluginError, World};
pub use engine::EPOCH_TICK;
pub use store::StepState;

/// What a kind says of itself, each string cut to its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub capabilities: Capabilities,
}

impl KindInfo {
    /// Whether `manifest` says what this `describe` answered.
    pub fn agrees_with(&self, manifest: &crate::plugins::manifest::Manifest) -> bool {
        manifest.name == self.name
            && manifest.version == self.version
            && manifest.capabilities == self.capabilities
    }
}

/// A resumed attempt's checkpoint, as the worker is handed it.
#[derive(Debug, Clone)]
pub struct ResumeInput {
    pub seq: u32,
    pub checkpoint_type: String,
    pub summary: String,
    pub payload: Option<Vec<u8>>,
}

/// What the worker is told of its step.
#[derive(Debug, Clone)]
pub struct StepInput {
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub step_name: String,
    pub step_kind: String,
    pub worker_kind: String,
    pub prompt_summary: Option<String>,
    pub command: Option<String>,
    pub timeout_ms: u64,
    pub resume: Option<ResumeInput>,
    pub checkpoints_enabled: bool,
}

/// How the worker says its step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    Completed,
    Failed,
    Blocked,
}

/// A step the worker suggests running next (strings cut to their caps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followup {
    pub step_name: String,
    pub step_kind: String,
    pub reason: String,
}

/// The worker's answer to `execute`, cut to its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOutcome {
    pub status: WorkerStatus,
    pub summary: String,
    pub needs_human: bool,
    pub exit_code: Option<i32>,
    pub followups: Vec<Followup>,
}

/// A failure the worker detected before or instead of doing the work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecuteError {
    /// The request lacks something this kind needs.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Failed(String),
}

/// A kind's component linked against the runner's linker (imports
/// resolved, types checked) for the world version it implements.
pub enum Linked {
    V0_1(v0_1::WorkerPre<StepState>),
    V0_2(v0_2::WorkerPre<StepState>),
}

/// A running instance of a kind.
pub enum Instance {
    V0_1(v0_1::Worker),
    V0_2(v0_2::Worker),
}

impl Linked {
    fn new(
        linker: &Linker<StepState>,
        component: &Component,
        world: World,
    ) -> Result<Self, String> {
        let link = |e: wasmtime::Error| format!("{e:#}");
        let pre = linker.instantiate_pre(component).map_err(link)?;
        Ok(match world {
            World::V0_1 => Linked::V0_1(v0_1::WorkerPre::new(pre).map_err(link)?),
            World::V0_2 => Linked::V0_2(v0_2::WorkerPre::new(pre).map_err(link)?),
        })
    }

    /// A fresh instance in `store`.
    pub async fn instantiate(&self, store: &mut Store<StepState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Linked::V0_1(pre) => Instance::V0_1(pre.instantiate_async(store).await?),
            Linked::V0_2(pre) => Instance::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

impl Instance {
    /// The kind's `describe`.
    pub async fn describe(&self, store: &mut Store<StepState>) -> wasmtime::Result<KindInfo> {
        Ok(match self {
            Instance::V0_1(w) => {
                v0_1::kind_info(w.baa_worker_worker_executor().call_describe(store).await?)
            }
            Instance::V0_2(w) => {
                v0_2::kind_info(w.baa_worker_worker_executor().call_describe(store).await?)
            }
        })
    }

    /// The kind's `execute` of `input`.
    pub async fn execute(
        &self,
        store: &mut Store<StepState>,
        input: StepInput,
    ) -> wasmtime::Result<Result<WorkerOutcome, ExecuteError>> {
        Ok(match self {
            Instance::V0_1(w) => {
                let request = v0_1::step_request(input);
                let executor = w.baa_worker_worker_executor();
                v0_1::answer(executor.call_execute(store, &request).await?)
            }
            Instance::V0_2(w) => {
                let request = v0_2::step_request(input);
                let executor = w.baa_worker_worker_executor();
                v0_2::answer(executor.call_execute(store, &request).await?)
            }
        })
    }
}

/// The runner's engine and linker, and every kind linked against them
/// (once per kind and content).
pub struct Workers {
    engine: Engine,
    linker: Arc<Linker<StepState>>,
    /// Each kind (by name and digest) linked, once.
    linked: Mutex<HashMap<(String, String), Arc<LinkSlot>>>,
}

/// A kind linked, or why it cannot be (it is not tried again).
type LinkSlot = OnceLock<Result<Arc<Linked>, String>>;

impl Workers {
    pub fn new(engine: Engine) -> Result<Self, crate::error::Error> {
        let linker = engine::new_linker(&engine)?;
        Ok(Workers {
            engine,
            linker,
            linked: Mutex::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `plugin` linked for its world version, made at its first use (other
    /// kinds are not held up meanwhile).
    pub fn linked(&self, plugin: &LoadedPlugin) -> Result<Arc<Linked>, PluginError> {
        let key = (plugin.kind.to_string(), plugin.sha256.clone());
        let slot = self
            .linked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let linked = slot.get_or_init(|| {
            Linked::new(&self.linker, &plugin.component, plugin.world).map(Arc::new)
        });
        linked.clone().map_err(|message| PluginError::Link {
            source_name: format!("`{}` ({})", plugin.kind, plugin.source.describe()),
            message,
        })
    }
}
