//! Concurrency limits and back-pressure: how many steps of a runner, and of
//! each worker kind, execute at once. A step over a limit waits (its
//! `step.queued` and `step.admitted` events say so) instead of failing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Concurrency, ConfigError};
use crate::contracts::HostEvent;
use crate::logs::LogSession;

/// The semaphores of one runner.
pub(crate) struct Admission {
    steps: Arc<Semaphore>,
    max_steps: u32,
    kinds: BTreeMap<String, (Arc<Semaphore>, u32)>,
}

/// Held while a step executes; dropping it lets the next one in.
pub(crate) struct Permits {
    _kind: Option<OwnedSemaphorePermit>,
    _step: OwnedSemaphorePermit,
}

impl Admission {
    /// The limits of `config`, checked: each must be at least 1, and the
    /// runner's at most the engine's pool of instance slots.
    pub fn new(config: &Concurrency) -> Result<Self, ConfigError> {
        let setting = |setting: String, message: String| ConfigError::Setting { setting, message };
        let pool = crate::config::POOL_STEPS;
        if config.max_steps == 0 || config.max_steps > pool {
            return Err(setting(
                "concurrency.max-steps".into(),
                format!(
                    "{} is out of range: use 1 to {pool} (the engine's instance slots)",
                    config.max_steps
                ),
            ));
        }
        let mut kinds = BTreeMap::new();
        for (kind, &max) in &config.kinds {
            if max == 0 {
                return Err(setting(
                    format!("concurrency.kinds.{kind}"),
                    "0 would never let a step run: use at least 1, or remove the entry".into(),
                ));
            }
            kinds.insert(kind.clone(), (Arc::new(Semaphore::new(max as usize)), max));
        }
        Ok(Admission {
            steps: Arc::new(Semaphore::new(config.max_steps as usize)),
            max_steps: config.max_steps,
            kinds,
        })
    }

    /// Wait until a step of `kind` may execute. Returns `None` when `cancel`
    /// fires first. The kind's limit is taken before the runner's, so a step
    /// waiting for its kind does not hold a slot other kinds could use.
    pub async fn admit(
        &self,
        kind: &str,
        logs: &LogSession,
        cancel: &CancellationToken,
    ) -> Option<Permits> {
        let started = std::time::Instant::now();
        let queue = Queue { logs, cancel };
        let (kind_permit, kind_waited) = match self.kinds.get(kind) {
            Some((semaphore, max)) => {
                let (permit, waited) = queue
                    .take(semaphore, || {
                        (
                            format!("{max} `{kind}` step(s) are running, the most [concurrency.kinds] allows"),
                            HostEvent::StepQueued {
                                limit: "kind".into(),
                                kind: Some(kind.to_string()),
                                max: *max,
                            },
                        )
                    })
                    .await?;
                (Some(permit), waited)
            }
            None => (None, false),
        };
        let max = self.max_steps;
        let (step_permit, step_waited) = queue
            .take(&self.steps, || {
                (
                    format!("{max} step(s) are running, the most [concurrency] max-steps allows"),
                    HostEvent::StepQueued {
                        limit: "runner".into(),
                        kind: None,
                        max,
                    },
                )
            })
            .await?;
        if kind_waited || step_waited {
            let waited_ms = started.elapsed().as_millis() as u64;
            logs.host_info(
                format!("admitted after waiting {waited_ms} ms"),
                HostEvent::StepAdmitted { waited_ms },
            );
        }
        Some(Permits {
            _kind: kind_permit,
            _step: step_permit,
        })
    }
}

/// Where a waiting step says so, and what ends its wait early.
struct Queue<'a> {
    logs: &'a LogSession,
    cancel: &'a CancellationToken,
}

impl Queue<'_> {
    /// A permit of `semaphore` and whether the step had to wait for it
    /// (saying why, from `why`, in a `step.queued` event); `None` if the
    /// step is cancelled first.
    async fn take(
        &self,
        semaphore: &Arc<Semaphore>,
        why: impl FnOnce() -> (String, HostEvent),
    ) -> Option<(OwnedSemaphorePermit, bool)> {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some((permit, false));
        }
        let (message, event) = why();
        self.logs.host_info(format!("waiting: {message}"), event);
        tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.ok().map(|p| (p, true)),
            () = self.cancel.cancelled() => None,
        }
    }
}
