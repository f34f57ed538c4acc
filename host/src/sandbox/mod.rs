//! The WebAssembly side of a step: one engine per runner (with an epoch
//! ticker for deadlines), the linker with WASI and the `baa:worker` host
//! interfaces, and the per-step store with its limits.

pub mod bindings;
pub mod limits;
pub mod state;
pub mod stdio;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::error::Error;
use state::StepState;

/// How often the engine's epoch advances; the granularity of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine configured for workers: component model, epoch interruption,
/// no component-model concurrency (it triples call cost and is unused).
pub fn new_engine(limits: &crate::config::Limits) -> Result<Engine, Error> {
    let stack = (limits.wasm_stack_kib.clamp(64, 64 * 1024) * 1024) as usize;
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .max_wasm_stack(stack)
        // The fiber the guest runs on must hold the wasm stack plus host frames.
        .async_stack_size(stack + 2 * 1024 * 1024);
    let engine = Engine::new(&config).map_err(|e| Error::Engine(e.to_string()))?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advance the engine's epoch every [`EPOCH_TICK`] for as long as it lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("baa-epoch-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            "cannot start the epoch ticker thread: {e}; deadlines rely on host timeouts only"
        );
    }
}

/// The linker every worker is instantiated with: WASI 0.2 (configured per
/// step to grant only the worktree) and the `baa:worker` host interfaces.
pub fn new_linker(engine: &Engine) -> Result<Arc<Linker<StepState>>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| Error::Engine(e.to_string()))?;
    bindings::Worker::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(|e| Error::Engine(e.to_string()))?;
    Ok(Arc::new(linker))
}
