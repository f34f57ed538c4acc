//! One engine per process (pooling allocator, epoch ticker for
//! deadlines) and the linker every worker is instantiated with: WASI and
//! the host interfaces of every `baa:worker` version this host runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits;
use super::store::StepState;
use crate::config::POOL_STEPS;
use crate::error::Error;

/// How often the engine's epoch advances: a running guest yields to the
/// other steps at every tick, and a deadline is noticed within one.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Instance slots beyond a runner's steps: its kinds' `describe` calls.
const DESCRIBE_SLOTS: u32 = 16;

/// The process's engine for `limits` and `max_steps` steps at once:
/// runners that need the same engine configuration share one (its pools
/// and its epoch ticker). The pooling allocator reserves a slot per step
/// (component instance, memories, stack): a one-step CLI reserves a few,
/// a server the thousand it may run.
pub fn engine(limits: &crate::config::Limits, max_steps: u32) -> Result<Engine, Error> {
    static ENGINES: Mutex<Vec<((u64, u32), Engine)>> = Mutex::new(Vec::new());
    let slots = max_steps.clamp(1, POOL_STEPS) + DESCRIBE_SLOTS;
    let key = (limits.wasm_stack_kib, slots);
    let mut engines = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, engine)) = engines.iter().find(|(k, _)| *k == key) {
        return Ok(engine.clone());
    }
    let engine = new_engine(limits, slots)?;
    engines.push((key, engine.clone()));
    Ok(engine)
}

/// The engine configured for workers: component model, epoch interruption,
/// no component-model concurrency (it triples call cost and is unused), and
/// the pooling allocator, so a step's instance, memories, tables and fiber
/// stack come from slots reserved once instead of fresh mappings.
pub fn new_engine(limits: &crate::config::Limits, slots: u32) -> Result<Engine, Error> {
    let stack = (limits.wasm_stack_kib.clamp(64, 64 * 1024) * 1024) as usize;
    let per_component = limits::MAX_INSTANCES as u32;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(4 * slots)
        .total_memories(slots)
        .total_tables(2 * slots)
        .total_stacks(slots)
        .max_core_instances_per_component(per_component)
        .max_tables_per_component(per_component)
        .max_memories_per_component(limits::MAX_MEMORIES as u32)
        .table_elements(limits::MAX_TABLE_ELEMENTS)
        // Guests are limited by the store's limiter (which names the limit
        // hit); the slot only has to be at least as large.
        .max_memory_size(1 << 32);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
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
/// step to grant only the worktree) and the host interfaces of every
/// `baa:worker` version, each under its own versioned names.
pub fn new_linker(engine: &Engine) -> Result<Arc<Linker<StepState>>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| Error::Engine(e.to_string()))?;
    super::v0_1::add_to_linker(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
    super::v0_2::add_to_linker(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
    Ok(Arc::new(linker))
}
