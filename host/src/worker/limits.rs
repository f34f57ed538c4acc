//! Resource limits of one store, recording which limit a guest ran into so
//! that the step result can name it.

use wasmtime::ResourceLimiter;

/// Core instances (and tables) one worker component may create.
pub const MAX_INSTANCES: usize = 100;
/// Linear memories one worker component may create (their total size is
/// bounded by `limits.memory-mib` each).
pub const MAX_MEMORIES: usize = 20;

/// Elements one table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Memory and table limits that remember being hit.
#[derive(Debug)]
pub struct StepLimits {
    memory_bytes: usize,
    table_elements: usize,
    /// Set when the guest asked for more memory than allowed.
    pub memory_hit: bool,
}

impl StepLimits {
    pub fn new(memory_bytes: usize) -> Self {
        StepLimits {
            memory_bytes,
            table_elements: MAX_TABLE_ELEMENTS,
            memory_hit: false,
        }
    }
}

impl ResourceLimiter for StepLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    // Components built by componentize-py or jco link tens of core
    // instances (an interpreter, libc, adapters); wasmtime's own default is
    // 10,000 of each.
    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
