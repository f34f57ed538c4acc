//! Execute a prepared step, phase by phase: load the kind and link it,
//! build the step's store, instantiate, `describe`, negotiate its grant,
//! `execute` under the step's deadline and memory limit, stop what is
//! left, and classify the end ([`super::outcome`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::Store;

use super::outcome::{classify, Report, StepEnd};
use super::prepare::PreparedStepRun;
use super::RunnerShared;
use crate::capabilities::checkpoint::Checkpoints;
use crate::capabilities::events::Events;
use crate::capabilities::subprocess::launcher;
use crate::capabilities::subprocess::policy::{Network, CHILD_PATH};
use crate::capabilities::subprocess::user::dedicated as dedicated_user;
use crate::capabilities::subprocess::{Confinement, ExecPolicy, Setup, Subprocesses};
use crate::config::Capabilities;
use crate::contracts::events::Granted;
use crate::contracts::{
    CheckpointMode, CheckpointSource, CheckpointType, EventLevel, FailureReason, HostEvent,
    PluginRecord, StepArtifact,
};
use crate::plugins::LoadedPlugin;
use crate::worker::store::StepCapabilities;
use crate::worker::{Instance, KindInfo, Linked, ResumeInput, StepInput, StepState};

/// The subprocess capability of a step: its worktree, scratch directory,
/// scrubbed base environment, deadline and output cap; deny-all until the
/// kind's grants are known.
pub(crate) fn step_subprocesses(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    deadlines: Deadlines,
    policy: ExecPolicy,
) -> Result<Subprocesses, crate::capabilities::subprocess::ConfinementError> {
    let config = &shared.config;
    let mut base_env = std::collections::BTreeMap::new();
    base_env.insert("PATH".to_string(), CHILD_PATH.to_string());
    base_env.insert("LANG".to_string(), "C.UTF-8".to_string());
    base_env.insert("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string());
    if let Some(env) = &prepared.request.runtime.env {
        base_env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let user = dedicated_user(&config.sandbox)?.then(|| prepared.sandbox_user.clone());
    let lend = vec![prepared.worktree().to_path_buf()];
    let probe = launcher::probe()?;
    let namespace =
        (user.is_none() && probe.user_namespaces).then(|| prepared.sandbox_namespace.clone());
    let confinement = Confinement {
        sandbox: config.sandbox.clone(),
        home: prepared.log_paths.home_dir.clone().into(),
        user,
        lend,
        namespace,
        probe,
    };
    Ok(Subprocesses::new(
        policy,
        Setup {
            worktree: prepared.worktree().to_path_buf(),
            base_env,
            deadline: deadlines.step,
            deadline_host: deadlines.host,
            output_cap: config.limits.subprocess_output_bytes,
            max_processes: config.limits.max_processes as usize,
            logs: prepared.logs.clone(),
            confinement,
        },
    ))
}

/// The one deadline of a step and its grace (`limits.timeout-grace-ms`),
/// shared out: the first half for a guest blocked in a host call to report,
/// the next quarter for the host's snapshots, the last for stopping what is
/// left and writing the records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// `timeoutSec` after the step started: when the worker's time is up,
    /// its subprocesses are stopped and computing guest code is interrupted.
    pub step: Instant,
    /// When a guest still blocked in a host call is dropped.
    pub guest: Instant,
    /// The last moment any host work for the step (its snapshots, the final
    /// git-diff) may run.
    pub host: Instant,
}

impl Deadlines {
    pub fn new(started: Instant, timeout_sec: f64, grace_ms: u64) -> Self {
        let step = started + Duration::from_secs_f64(timeout_sec);
        Deadlines {
            step,
            guest: step + Duration::from_millis(grace_ms / 2),
            host: step + Duration::from_millis(grace_ms * 3 / 4),
        }
    }
}

/// Run the worker of `prepared` to an outcome. Never fails: every failure
/// becomes a failed (or blocked) report.
pub(crate) async fn run_worker(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    deadlines: Deadlines,
    cancel: &CancellationToken,
) -> Report {
    let (plugin, linked, mut record) = match load(shared, prepared) {
        Ok(loaded) => loaded,
        Err(report) => return *report,
    };
    let mut store = match step_store(shared, prepared, deadlines) {
        Ok(store) => store,
        Err(report) => return with_plugin(*report, &record),
    };
    let live_groups = store.data().subprocesses().live_groups();
    let bounds = Bounds {
        backstop: deadlines.guest,
        cancel,
        disk: prepared.logs.budget().exceeded(),
    };
    // A panic in a host function ends this step as a host error; the
    // cleanup below still runs, and no other step is affected.
    let call = call_worker(
        &mut store,
        &linked,
        &plugin,
        prepared,
        &mut record,
        shared,
        bounds,
    );
    let report = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(report) => report,
        Err(panic) => host_panicked(prepared, panic),
    };
    // Measured before anything else: a guest that returns after the
    // deadline fired is late, whatever it says.
    let timed_out = Instant::now() >= deadlines.step;
    // The step is over: nothing it started may outlive it.
    let grace = Duration::from_millis(shared.config.sandbox.kill_grace_ms);
    let killed = live_groups.stop_all(grace).await;
    if killed > 0 {
        prepared.logs.host_info(
            format!("stopped {killed} process tree(s) left running"),
            HostEvent::SubprocessCleanup { stopped: killed },
        );
    }
    let end = step_end(shared, prepared, store.data(), timed_out);
    let mut report = with_plugin(report, &record);
    report.artifacts = store.data().events().artifacts().to_vec();
    report.sandbox = Some(store.data().subprocesses().confinement_record());
    // Nothing the step started outlives its worker, not even what escaped
    // its supervisors: its cgroup is emptied (with its fork server) when
    // the store goes, below, and on a host without root everything in its
    // user namespace is killed now. The final snapshot then sees the
    // worktree as the worker left it, from a fork server of its own.
    prepared.sandbox_namespace.release();
    classify(report, &end)
}

fn with_plugin(mut report: Report, record: &PluginRecord) -> Report {
    report.plugin = Some(record.clone());
    report
}

/// The facts of the step's end besides the worker's answer.
fn step_end(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    state: &StepState,
    timed_out: bool,
) -> StepEnd {
    let limits = &shared.config.limits;
    let logs = &prepared.logs;
    StepEnd {
        timed_out,
        memory: state.memory_hit(),
        output: state.subprocesses().output_limit_hits() > 0 || logs.truncated(),
        disk: logs.budget().is_exceeded(),
        denials: state.subprocesses().denials().to_vec(),
        timeout_sec: prepared.request.timeout_sec,
        disk_mib: limits.step_disk_mib,
        memory_mib: limits.memory_mib,
    }
}

fn host_panicked(prepared: &PreparedStepRun, panic: Box<dyn std::any::Any + Send>) -> Report {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    tracing::error!(step = %prepared.log_paths.run_dir, "a host function panicked: {what}");
    Report::failed(
        FailureReason::HostError,
        format!("the host failed while serving the worker (a bug in baa-runner): {what}"),
    )
}

/// The step's kind: compiled (or from the cache), linked for its world
/// version, and the record of which code it is.
fn load(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
) -> Result<(Arc<LoadedPlugin>, Arc<Linked>, PluginRecord), Box<Report>> {
    let invalid = |e: &dyn std::fmt::Display| {
        Box::new(Report::failed(FailureReason::InvalidPlugin, e.to_string()))
    };
    let entry = shared
        .plugins
        .find(&prepared.request.worker_kind)
        .map_err(|e| invalid(&e))?;
    let plugin = shared
        .cache
        .get(
            shared.workers.engine(),
            entry,
            shared.config.limits.plugin_file_bytes,
        )
        .map_err(|e| invalid(&e))?;
    let record = PluginRecord {
        name: plugin.kind.to_string(),
        version: String::new(),
        source: plugin.source.describe(),
        sha256: plugin.sha256.clone(),
        compiled: Some(plugin.origin.describe()),
        instantiate_micros: None,
    };
    match shared.workers.linked(&plugin) {
        Ok(linked) => Ok((plugin, linked, record)),
        Err(e) => Err(Box::new(with_plugin(*invalid(&e), &record))),
    }
}

/// The step's store: WASI with the worktree as `.`, stdio into the logs,
/// and the step's capabilities (subprocesses deny-all until the kind's
/// grant is known).
fn step_store(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    deadlines: Deadlines,
) -> Result<Store<StepState>, Box<Report>> {
    let host_error = |message: String| Box::new(Report::failed(FailureReason::HostError, message));
    let logs = &prepared.logs;
    let subprocesses = step_subprocesses(shared, prepared, deadlines, ExecPolicy::default())
        .map_err(|e| host_error(format!("cannot confine subprocesses on this machine: {e}")))?;
    let capabilities = StepCapabilities {
        subprocesses,
        events: Events::new(
            logs.clone(),
            Some(prepared.log_paths.artifacts_dir.clone().into()),
        ),
        checkpoints: step_checkpoints(prepared),
    };
    let state = StepState::new(
        Some(prepared.worktree()),
        logs,
        capabilities,
        &shared.config.limits,
    )
    .map_err(|e| host_error(e.to_string()))?;
    Ok(state.into_store(shared.workers.engine(), deadlines.step))
}

/// The checkpoint capability of a step.
pub(crate) fn step_checkpoints(prepared: &PreparedStepRun) -> Checkpoints {
    let lines = prepared
        .request
        .checkpoint
        .as_ref()
        .and_then(|c| c.log_tail_lines)
        .map(|n| n as usize)
        .unwrap_or(crate::capabilities::checkpoint::snapshot::DEFAULT_LOG_TAIL_LINES);
    Checkpoints::new(
        prepared.logs.clone(),
        prepared.checkpoint_manager.clone(),
        lines,
    )
}

/// Instantiate, describe, negotiate and execute: the worker's part of the
/// step, each guest call bounded by `bounds`.
async fn call_worker(
    store: &mut Store<StepState>,
    linked: &Linked,
    plugin: &LoadedPlugin,
    prepared: &PreparedStepRun,
    record: &mut PluginRecord,
    shared: &RunnerShared,
    bounds: Bounds<'_>,
) -> Report {
    let instantiating = std::time::Instant::now();
    let during = "while starting";
    let worker = match bounds.run(linked.instantiate(store), during).await {
        Ok(Ok(worker)) => worker,
        Ok(Err(e)) => return Report::guest_error(&e, during),
        Err(report) => return report,
    };
    record.instantiate_micros = Some(instantiating.elapsed().as_micros() as u64);
    let during = "in describe";
    let info = match bounds.run(worker.describe(store), during).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return Report::guest_error(&e, during),
        Err(report) => return report,
    };
    record.version = info.version.clone();
    if let Err(report) = check_identity(&info, plugin, prepared, record) {
        return *report;
    }
    let policy = match grant(shared, prepared, &info, record) {
        Ok(policy) => policy,
        Err(report) => return *report,
    };
    store.data_mut().subprocesses_mut().set_policy(policy);
    execute(store, &worker, prepared, &bounds).await
}

/// The worker's `execute` of the step.
async fn execute(
    store: &mut Store<StepState>,
    worker: &Instance,
    prepared: &PreparedStepRun,
    bounds: &Bounds<'_>,
) -> Report {
    let during = "in execute";
    match bounds
        .run(worker.execute(store, step_input(prepared)), during)
        .await
    {
        Ok(Ok(answer)) => Report::answered(answer),
        Ok(Err(e)) => Report::guest_error(&e, during),
        Err(report) => report,
    }
}

/// What the kind says of itself must match the step's `workerKind` and, if
/// it carries one, its manifest.
fn check_identity(
    info: &KindInfo,
    plugin: &LoadedPlugin,
    prepared: &PreparedStepRun,
    record: &PluginRecord,
) -> Result<(), Box<Report>> {
    let kind = &prepared.request.worker_kind;
    if info.name != kind.as_str() {
        return Err(Box::new(Report::failed(
            FailureReason::InvalidPlugin,
            format!(
                "plugin {} describes itself as `{}`, not `{kind}`; rename the file or fix its describe()",
                record.source, info.name
            ),
        )));
    }
    let Some(manifest) = &plugin.manifest else {
        return Ok(());
    };
    if !info.agrees_with(manifest) {
        return Err(Box::new(Report::failed(
            FailureReason::InvalidPlugin,
            format!(
                "the plugin's manifest ({} {}, requests {:?}) differs from what its describe answers ({} {}, requests {:?}); stamp it again (`baa-runner stamp`)",
                manifest.name, manifest.version, manifest.capabilities, info.name, info.version, info.capabilities
            ),
        )));
    }
    Ok(())
}

/// The kind's policy: what it requests and the operator grants, announced
/// in a `plugin.loaded` event; a kind asking for more is blocked.
fn grant(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    info: &KindInfo,
    record: &PluginRecord,
) -> Result<ExecPolicy, Box<Report>> {
    let kind = prepared.request.worker_kind.as_str();
    let requested = &info.capabilities;
    let granted = shared.config.grant(kind);
    let policy = ExecPolicy::intersect(requested, &granted);
    loaded_event(prepared, info, record, requested, &policy);
    let refused = match super::grant::negotiate(requested, &granted) {
        super::grant::Negotiated::Run => return Ok(policy),
        super::grant::Negotiated::NeverPassed(names) => Report::failed(
            FailureReason::InvalidPlugin,
            format!(
                "{} {} requests environment variables no subprocess ever gets: {}",
                info.name,
                info.version,
                names.join(", ")
            ),
        ),
        super::grant::Negotiated::Blocked(missing) => {
            Report::blocked_on(&missing, kind, &info.name, &info.version)
        }
    };
    Err(Box::new(refused))
}

/// The `plugin.loaded` event: which code runs, what it requested and
/// what it was granted.
fn loaded_event(
    prepared: &PreparedStepRun,
    info: &KindInfo,
    record: &PluginRecord,
    requested: &Capabilities,
    policy: &ExecPolicy,
) {
    let programs: Vec<String> = policy
        .programs()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect();
    let refused: Vec<&str> = requested
        .programs
        .iter()
        .filter(|p| !policy.programs().contains_key(*p))
        .map(String::as_str)
        .collect();
    let not_granted = if refused.is_empty() {
        String::new()
    } else {
        format!("; not granted: {}", refused.join(", "))
    };
    let granted = Granted {
        programs: (policy.programs().iter())
            .map(|(name, path)| (name.clone(), path.display().to_string()))
            .collect(),
        env: policy.env_names().to_vec(),
        network: !matches!(policy.network(), Network::None),
    };
    prepared.logs.host(
        if refused.is_empty() {
            EventLevel::Info
        } else {
            EventLevel::Warn
        },
        format!(
            "{} {} ({}) granted programs [{}]{not_granted}",
            info.name,
            info.version,
            record.source,
            programs.join(", "),
        ),
        HostEvent::PluginLoaded {
            name: info.name.clone(),
            version: info.version.clone(),
            source: record.source.clone(),
            sha256: record.sha256.clone(),
            compiled: record.compiled.clone(),
            requested: requested.clone(),
            granted,
        },
    );
}

/// What the worker is told of its step.
fn step_input(prepared: &PreparedStepRun) -> StepInput {
    let request = &prepared.request;
    StepInput {
        task_id: request.task_id.clone(),
        step_id: request.step_id.clone(),
        run_id: request.run_id.clone(),
        attempt: request.attempt,
        step_name: request.step_name.clone(),
        step_kind: request.step_kind.to_string(),
        worker_kind: request.worker_kind.to_string(),
        prompt_summary: request.prompt_summary.clone(),
        command: request.command.clone(),
        timeout_ms: (request.timeout_sec * 1000.0) as u64,
        resume: prepared.resume.as_ref().map(|r| ResumeInput {
            seq: r.record.seq,
            checkpoint_type: resume_type(&r.record),
            summary: r.record.summary.clone(),
            payload: r.payload.clone(),
        }),
        checkpoints_enabled: prepared.checkpoint.mode == CheckpointMode::Capture,
    }
}

/// The type a resumed worker is told its checkpoint has: a built-in type
/// captured by a worker is `worker:<type>`, so it never passes for one of
/// the host's snapshots.
fn resume_type(record: &crate::contracts::CheckpointRecord) -> String {
    let name = record.checkpoint_type.to_string();
    let builtin = CheckpointType::BUILTIN.contains(&record.checkpoint_type);
    if builtin && record.source != CheckpointSource::Host {
        format!("worker:{name}")
    } else {
        name
    }
}

/// How long a `describe` outside a step may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a kind could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("{0}")]
    Plugin(#[from] crate::plugins::PluginError),
    #[error("{0}")]
    Host(String),
    #[error("describe failed: {0}")]
    Failed(String),
    #[error("describe did not return in time")]
    TimedOut,
}

/// Load `entry` and call its `describe` in a store with no capabilities.
/// Returns what it says and the component's digest.
pub(crate) async fn describe(
    shared: &RunnerShared,
    entry: &crate::plugins::PluginEntry,
) -> Result<(KindInfo, String), DescribeError> {
    let limits = &shared.config.limits;
    let plugin = shared
        .cache
        .get(shared.workers.engine(), entry, limits.plugin_file_bytes)?;
    let linked = shared.workers.linked(&plugin)?;
    let logs =
        crate::logs::LogSession::discard().map_err(|e| DescribeError::Host(e.to_string()))?;
    let capabilities = StepCapabilities::none(&logs, shared.config.sandbox.clone());
    let state = StepState::new(None, &logs, capabilities, limits)
        .map_err(|e| DescribeError::Host(e.to_string()))?;
    let deadline = Instant::now() + DESCRIBE_TIMEOUT;
    let mut store = state.into_store(shared.workers.engine(), deadline);
    let call = async {
        let worker = linked.instantiate(&mut store).await?;
        worker.describe(&mut store).await
    };
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), call).await {
        Ok(Ok(info)) => Ok((info, plugin.sha256.clone())),
        Ok(Err(e)) => Err(DescribeError::Failed(format!("{e:#}"))),
        Err(_) => Err(DescribeError::TimedOut),
    }
}

/// What ends a guest call early: the backstop for a host call that does
/// not return (half the step's grace after its deadline), cancellation, or the step's disk
/// budget running out.
struct Bounds<'a> {
    backstop: Instant,
    cancel: &'a CancellationToken,
    disk: CancellationToken,
}

impl Bounds<'_> {
    /// `call` to its end, or the report of what stopped it `during` what.
    /// Dropping the call unwinds the guest's fiber; the caller then stops
    /// its subprocesses.
    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = T>,
        during: &str,
    ) -> Result<T, Report> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Report::interrupted(format!("interrupted (Ctrl-C, SIGTERM or its caller cancelled it) {during}"))),
            () = self.disk.cancelled() => Err(Report::failed(FailureReason::DiskLimit, format!("stopped {during}"))),
            out = tokio::time::timeout_at(self.backstop, call) => {
                out.map_err(|_| Report::failed(FailureReason::Timeout, format!("interrupted {during}")))
            }
        }
    }
}

/// The run directory's own files, listed as artifacts of every result.
pub(crate) fn record_artifacts(prepared: &PreparedStepRun) -> Vec<StepArtifact> {
    use crate::contracts::StepArtifactKind as K;
    let p = &prepared.log_paths;
    let item = |name: &str, kind, path: &str, description: &str| StepArtifact {
        name: name.into(),
        kind,
        path: path.into(),
        description: description.into(),
    };
    vec![
        item(
            "run",
            K::Directory,
            &p.run_dir,
            "The run directory of this attempt",
        ),
        item("metadata", K::Metadata, &p.metadata_path, "Run metadata"),
        item(
            "state",
            K::State,
            &p.state_path,
            "Latest run state snapshot",
        ),
        item(
            "lifecycle",
            K::Log,
            &p.lifecycle_log_path,
            "Lifecycle events, one JSON object per line",
        ),
        item(
            "stdout",
            K::Log,
            &p.stdout_log_path,
            "Every stdout chunk of the worker and its subprocesses",
        ),
        item(
            "stderr",
            K::Log,
            &p.stderr_log_path,
            "Every stderr chunk of the worker and its subprocesses",
        ),
        item(
            "checkpoints",
            K::Directory,
            &p.checkpoints_dir,
            "Numbered checkpoint records and payloads",
        ),
    ]
}
