//! `baa-runner worker`: a host that pulls steps of the kinds it can run
//! from the cluster's queue, claims each through its record (the fence),
//! runs it with the same runner as every other path, streams its events,
//! and publishes its one answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::topology::{check_token, kind_of_subject, StepIdentity};
use super::transport::{Delivery, Transport};
use super::turn::{claim, retrying, Turn};
use super::ClusterError;
use crate::config::ClusterSettings;
use crate::contracts::StepExecutionRequest;
use crate::fsutil::now_rfc3339;
use crate::run::validate::check_id;
use crate::Runner;

/// How long one pull waits for a step before asking again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// How often a host says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A worker host: one runner, one transport, a name.
pub struct Worker {
    pub(super) runner: Runner,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) host: String,
    pub(super) settings: ClusterSettings,
    /// Steps running here, by key and delivery: their cancellation.
    running: Mutex<HashMap<(String, u64), CancellationToken>>,
}

impl Worker {
    pub fn new(
        runner: Runner,
        transport: Arc<dyn Transport>,
        host: String,
        settings: ClusterSettings,
    ) -> Arc<Self> {
        Arc::new(Worker {
            runner,
            transport,
            host,
            settings,
            running: Mutex::default(),
        })
    }

    /// The kinds this host serves: every kind it can load and grants
    /// what it requests, or those of `[cluster] kinds` (each must be one).
    pub async fn kinds(&self) -> Result<Vec<String>, ClusterError> {
        let mut runnable = Vec::new();
        for kind in self.runner.list_kinds().await {
            if kind.shadowed {
                continue;
            }
            let why_not = match (&kind.error, check_token(&kind.name)) {
                (Some(error), _) => Some(error.clone()),
                (None, Err(e)) => Some(e),
                _ if !kind.missing.is_empty() => {
                    Some("it requests capabilities this host does not grant".to_owned())
                }
                _ => None,
            };
            match why_not {
                None => runnable.push(kind.name),
                Some(why) => tracing::info!(kind = %kind.name, "not served: {why}"),
            }
        }
        let Some(wanted) = &self.settings.kinds else {
            return Ok(runnable);
        };
        for kind in wanted {
            if !runnable.contains(kind) {
                return Err(ClusterError::Settings(format!(
                    "`cluster.kinds` names `{kind}`, which this host cannot run (runnable here: {}); see `baa-runner kinds`",
                    runnable.join(", ")
                )));
            }
        }
        Ok(wanted.clone())
    }

    /// What must hold before this host takes steps: repository roots set,
    /// a runs directory apart from them, kinds to serve. The kinds.
    pub async fn preflight(&self) -> Result<Vec<String>, ClusterError> {
        if self.runner.config().repo_roots.is_empty() {
            return Err(ClusterError::Settings(
                "no repository may be used: set `repo-roots` in the config (or pass --repo-root DIR): the directories whose repositories steps from the queue may use (whoever can publish to the queue names a step's paths)".into(),
            ));
        }
        check_runs_dir(&self.settings, &self.runner.config().repo_roots)?;
        let kinds = self.kinds().await?;
        if kinds.is_empty() {
            return Err(ClusterError::Settings(
                "this host can run no kind: see `baa-runner kinds`".into(),
            ));
        }
        Ok(kinds)
    }

    /// Serve until `shutdown` fires; then stop taking steps and let the
    /// running ones finish (a second stop is the caller's to enforce:
    /// their deliveries then go to other hosts).
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ClusterError> {
        let kinds = self.preflight().await?;
        let slots = self.runner.config().concurrency.max_steps.max(1) as usize;
        let slots = Arc::new(Semaphore::new(slots));
        let steps = TaskTracker::new();
        let mut cancels = self.transport.cancellations().await?;
        let listener = {
            let worker = self.clone();
            tokio::spawn(async move {
                while let Some(key) = cancels.next().await {
                    let running = worker.lock_running();
                    for ((running_key, _), token) in running.iter() {
                        if *running_key == key {
                            token.cancel();
                        }
                    }
                }
            })
        };
        let heartbeat = tokio::spawn(self.clone().heartbeats(kinds.clone()));
        let expiries = tokio::spawn(super::expiry::listen(self.clone()));
        let sweeps = tokio::spawn(super::expiry::sweep(self.clone(), kinds.clone()));
        tracing::info!(host = %self.host, ?kinds, "serving");
        let pullers = TaskTracker::new();
        for kind in kinds {
            let (worker, slots, steps) = (self.clone(), slots.clone(), steps.clone());
            pullers.spawn(worker.pull(kind, slots, steps, shutdown.clone()));
        }
        pullers.close();
        pullers.wait().await;
        steps.close();
        steps.wait().await;
        listener.abort();
        heartbeat.abort();
        expiries.abort();
        sweeps.abort();
        Ok(())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), CancellationToken>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a running turn's cancellation (a cancel message reaches
    /// it); the slot to remove it with.
    pub(super) fn running_insert(
        &self,
        id: &StepIdentity,
        delivery: u64,
        token: &CancellationToken,
    ) -> (String, u64) {
        let slot = (id.key(), delivery);
        self.lock_running().insert(slot.clone(), token.clone());
        slot
    }

    /// The keys of the steps running here.
    fn running_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock_running().keys().map(|(k, _)| k.clone()).collect();
        keys.dedup();
        keys
    }

    /// Whether this process runs `id`'s delivery `delivery` now.
    pub(super) fn is_running(&self, id: &StepIdentity, delivery: u64) -> bool {
        self.lock_running().contains_key(&(id.key(), delivery))
    }

    pub(super) fn running_remove(&self, slot: &(String, u64)) {
        self.lock_running().remove(slot);
    }

    /// Take steps of `kind` while a slot is free.
    async fn pull(
        self: Arc<Self>,
        kind: String,
        slots: Arc<Semaphore>,
        steps: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = self.transport.next_step(&kind, PULL_WAIT) => next,
            };
            match next {
                Ok(Some(delivery)) => {
                    steps.spawn(self.clone().take(Arc::from(delivery), permit));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%kind, "{e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn heartbeats(self: Arc<Self>, kinds: Vec<String>) {
        let capacity = self.runner.config().concurrency.max_steps;
        let since = now_rfc3339();
        loop {
            let status = json!({
                "host": self.host,
                "pid": std::process::id(),
                "kinds": kinds,
                "capacity": capacity,
                "running": self.lock_running().len(),
                "steps": self.running_keys(),
                "since": since,
                "seenAt": now_rfc3339(),
            });
            self.transport.heartbeat(&self.host, &status).await;
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    /// One delivery: claim it, run it, answer it.
    async fn take(self: Arc<Self>, delivery: Arc<dyn Delivery>, _slot: OwnedSemaphorePermit) {
        let Some(request) = self.parse(delivery.as_ref()) else {
            let _ = delivery.reject().await;
            return;
        };
        let id = StepIdentity::of(&request);
        let kind = request.worker_kind.to_string();
        // Signs of life from claim to acknowledgement: a slow server must
        // not make the queue hand a finishing step to another host.
        let keepalive = tokio::spawn(super::turn::keep_alive(delivery.clone()));
        let claimed = retrying(&id, || claim(&self, &id, delivery.as_ref(), &kind)).await;
        match claimed {
            Ok(Some((record, revision))) => {
                let mut turn = Turn {
                    worker: &self,
                    id: &id,
                    delivery,
                    record,
                    revision,
                };
                if let Some(reply) = turn.run(request).await {
                    turn.finish(reply).await;
                }
            }
            Ok(None) => {}
            // Its record cannot be read or written: no delivery will do.
            Err(e) if !e.is_transient() => {
                super::expiry::unclaimable(&self, delivery.as_ref(), &id, &e).await;
            }
            Err(_) => {} // the server is away: the next delivery tries again
        }
        keepalive.abort();
    }

    /// The request a delivery carries, when it is one for this queue. A
    /// message that is not (unreadable, invalid ids, or queued under
    /// another kind than it names) is rejected without touching the step
    /// it names: a forged copy never answers for the real one.
    fn parse(&self, delivery: &dyn Delivery) -> Option<StepExecutionRequest> {
        let request = match crate::contracts::parse_request(delivery.payload()) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!("rejected a message of the steps queue: not a step request: {e}");
                return None;
            }
        };
        if identity_of(delivery.payload()).is_none() {
            tracing::warn!("rejected a message of the steps queue whose ids are not valid");
            return None;
        }
        // The queue it came by is the kind it runs as: a host serves only
        // the kinds it chose, whatever a message says.
        let queued_as = kind_of_subject(delivery.subject()).unwrap_or_default();
        if queued_as != request.worker_kind.as_str() {
            tracing::warn!(
                "rejected a message queued for kind `{queued_as}` that names `{}`",
                request.worker_kind
            );
            return None;
        }
        Some(request)
    }
}

/// The identity fields of a message, when they are there and valid ids.
pub(super) fn identity_of(payload: &[u8]) -> Option<StepIdentity> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let id = |field: &str| {
        let text = value.get(field)?.as_str()?;
        check_id(field, text).ok()?;
        Some(text.to_owned())
    };
    Some(StepIdentity {
        task_id: id("taskId")?,
        step_id: id("stepId")?,
        run_id: id("runId")?,
        attempt: u32::try_from(value.get("attempt")?.as_u64()?)
            .ok()
            .filter(|a| *a > 0)?,
    })
}

/// The host's runs directory and the repositories steps may use must not
/// overlap (either way): a step's worktree inside the runs directory would
/// be lent other turns' records; a runs directory inside a repository would
/// be the step's to change.
fn check_runs_dir(
    settings: &ClusterSettings,
    roots: &[std::path::PathBuf],
) -> Result<(), ClusterError> {
    let runs = runs_base(settings);
    std::fs::create_dir_all(&runs)
        .map_err(|e| ClusterError::Settings(format!("runs-dir {}: {e}", runs.display())))?;
    let runs = runs
        .canonicalize()
        .map_err(|e| ClusterError::Settings(format!("runs-dir {}: {e}", runs.display())))?;
    for root in roots {
        let root = root
            .canonicalize()
            .map_err(|e| ClusterError::Settings(format!("repo-roots: {}: {e}", root.display())))?;
        if runs.starts_with(&root) || root.starts_with(&runs) {
            return Err(ClusterError::Settings(format!(
                "the runs directory {} and the repository root {} overlap: a step could reach the records of others; keep them apart (`[cluster] runs-dir` or --runs-dir)",
                runs.display(),
                root.display()
            )));
        }
    }
    Ok(())
}

fn runs_base(settings: &ClusterSettings) -> std::path::PathBuf {
    settings
        .runs_dir
        .clone()
        .unwrap_or_else(|| crate::run::validate::default_runs_root().join("cluster"))
}

/// Where a turn runs on this host: below the host's own runs directory
/// (the request's `runsRootDir` is a place on the conductor's machine), one
/// root per turn (`turn`: the delivery and the claim's revision), so two
/// turns at one step (a takeover, a restarted host, a repeated delivery)
/// never share a run directory.
pub(super) fn local_request(
    mut request: StepExecutionRequest,
    settings: &ClusterSettings,
    host: &str,
    turn: &str,
) -> StepExecutionRequest {
    let root = runs_base(settings)
        .join(super::topology::token(host))
        .join(turn);
    request.runtime.runs_root_dir = Some(crate::fsutil::display(&root));
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_ids_name_a_step() {
        let id = identity_of(
            br#"{"taskId":"t.1","stepId":"s","runId":"r","attempt":2,"timeoutSec":-1}"#,
        );
        assert_eq!(id.map(|i| i.key()).as_deref(), Some("t=1.s.r.2"));
        assert!(identity_of(br#"{"taskId":"t","stepId":"s","runId":"r","attempt":0}"#).is_none());
        assert!(identity_of(br#"{"taskId":"a b","stepId":"s","runId":"r","attempt":1}"#).is_none());
        assert!(identity_of(b"not json").is_none());
    }
}
