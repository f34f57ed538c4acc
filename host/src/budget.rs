//! The disk budget of one step (`limits.step-disk-mib`): what its logs,
//! events, artifacts and checkpoints may take together. What a worker
//! causes is charged before it is written and refused once it does not fit;
//! the budget is then exceeded and the step is ended. The host's own
//! records (lifecycle events, final checkpoints, state, result) are always
//! written, so a step that ran out still leaves a complete record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A step's disk budget; clones share it.
#[derive(Debug, Clone)]
pub struct DiskBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: u64,
    used: AtomicU64,
    exceeded: CancellationToken,
}

/// A write that did not fit the budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the step's disk budget of {limit} bytes is used up (limits.step-disk-mib)")]
pub struct Exceeded {
    pub limit: u64,
}

impl DiskBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        DiskBudget(Arc::new(Inner {
            limit,
            used: AtomicU64::new(0),
            exceeded: CancellationToken::new(),
        }))
    }

    /// A budget that never runs out (calls outside any step).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// Take `bytes` for a write a worker caused. When they do not fit,
    /// nothing is taken, the budget is marked exceeded and the write must
    /// not happen.
    pub fn charge(&self, bytes: u64) -> Result<(), Exceeded> {
        let inner = &self.0;
        let taken = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= inner.limit)
            });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => {
                inner.exceeded.cancel();
                Err(Exceeded { limit: inner.limit })
            }
        }
    }

    /// Count `bytes` the host writes whatever the budget says (its own
    /// records, which a worker may cause too: one per denied spawn, say).
    /// They are written, but past the limit the step is ended all the same.
    pub fn record(&self, bytes: u64) {
        let used = self.0.used.fetch_add(bytes, Ordering::AcqRel);
        if used.saturating_add(bytes) > self.0.limit {
            self.0.exceeded.cancel();
        }
    }

    /// Bytes charged or recorded so far.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Whether a charge was refused.
    pub fn is_exceeded(&self) -> bool {
        self.0.exceeded.is_cancelled()
    }

    /// Fires when a charge is refused.
    pub fn exceeded(&self) -> CancellationToken {
        self.0.exceeded.clone()
    }
}
