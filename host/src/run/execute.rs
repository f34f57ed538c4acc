//! Execute a prepared step: load the kind's component, grant what the kind
//! requests and the operator allows, call `execute` under the step's deadline
//! and memory limit, and map whatever happens onto an outcome.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::prepare::PreparedStepRun;
use super::RunnerShared;
use crate::capabilities::bounds::{self, cut_list, cut_owned};
use crate::capabilities::subprocess::launcher;
use crate::capabilities::subprocess::policy::Network;
use crate::capabilities::subprocess::policy::CHILD_PATH;
use crate::capabilities::subprocess::user::dedicated as dedicated_user;
use crate::capabilities::subprocess::{Confinement, Denial, ExecPolicy, Setup, Subprocesses};
use crate::config::{KindGrant, MissingGrants};
use crate::contracts::{
    CheckpointMode, CheckpointSource, CheckpointType, EventLevel, EventSource, FailureReason,
    FailureRecord, PluginRecord, StepArtifact, StepExecutionOutcome, StepKind, SuggestedFollowup,
};
use crate::logs::Stream;
use crate::plugins::PluginError;
use crate::sandbox::bindings::baa::worker::types::{ResumeCheckpoint, StepRequest};
use crate::sandbox::bindings::exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Status, WorkerInfo, WorkerOutcome,
};
use crate::sandbox::bindings::WorkerPre;
use crate::sandbox::limits::StepLimits;
use crate::sandbox::state::{StepHost, StepState};
use crate::sandbox::stdio::LogOutput;

/// The subprocess capability of a step: its worktree, scratch directory,
/// scrubbed base environment, deadline and output cap; deny-all until the
/// kind's grants are known.
pub(crate) fn step_subprocesses(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    deadlines: Deadlines,
    policy: ExecPolicy,
) -> Result<Subprocesses, String> {
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

/// The checkpoints the host captures when a step ends in `capture` mode,
/// whatever the outcome: a `git-diff` of the worktree (when planned), a
/// `log-tail`, and a `summary` (prefixed by `summaryHint` when given).
pub(crate) async fn final_checkpoints(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    report: &Report,
    deadlines: Deadlines,
) {
    use crate::checkpoints::snapshot;

    if prepared.checkpoint.mode != CheckpointMode::Capture {
        return;
    }
    let logs = &prepared.logs;
    let config = prepared.request.checkpoint.clone().unwrap_or_default();
    let plan = prepared.checkpoint.git_diff_plan.clone();
    let mut captures: Vec<(CheckpointType, String, Vec<u8>, serde_json::Value)> = Vec::new();
    let mut cut_short = Vec::new();
    if let Some(plan) = plan {
        let diff = match step_subprocesses(shared, prepared, deadlines, ExecPolicy::default()) {
            Ok(mut subprocesses) => {
                snapshot::git_diff(&mut subprocesses, &plan, deadlines.host).await
            }
            Err(e) => Err(snapshot::SnapshotError::Failed(e)),
        };
        match diff {
            Ok(diff) => captures.push((
                CheckpointType::GitDiff,
                diff.summary,
                diff.patch,
                diff.details,
            )),
            Err(snapshot::SnapshotError::CutShort) => {
                cut_short.push("git-diff");
                logs.event(
                    EventSource::Host,
                    EventLevel::Warn,
                    "checkpoint.cut-short",
                    "no git-diff snapshot: the step's deadline (timeoutSec plus limits.timeout-grace-ms) came first",
                    Some(json!({ "type": "git-diff" })),
                );
            }
            Err(why) => {
                logs.event(
                    EventSource::Host,
                    EventLevel::Warn,
                    "checkpoint.failed",
                    format!("no git-diff snapshot: {why}"),
                    None,
                );
            }
        }
    }
    let lines = config
        .log_tail_lines
        .map(|n| n as usize)
        .unwrap_or(snapshot::DEFAULT_LOG_TAIL_LINES);
    let (tail, details) = snapshot::log_tail(logs, lines);
    captures.push((
        CheckpointType::LogTail,
        format!("last {lines} lines of stdout and stderr"),
        tail,
        details,
    ));
    let first_line = report.summary.lines().next().unwrap_or_default();
    let summary = match &config.summary_hint {
        Some(hint) => format!("{hint} — {}: {first_line}", report.outcome.as_str()),
        None => format!("{}: {first_line}", report.outcome.as_str()),
    };
    let payload = json!({
        "outcome": report.outcome,
        "summary": report.summary,
        "exitCode": report.exit_code,
        "failure": report.failure,
        "cutShort": cut_short,
    });
    captures.push((
        CheckpointType::Summary,
        summary
            .chars()
            .take(crate::checkpoints::MAX_SUMMARY_BYTES / 4)
            .collect(),
        serde_json::to_vec_pretty(&payload).unwrap_or_default(),
        json!({ "outcome": report.outcome }),
    ));
    let manager_budget = logs.budget();
    let mut manager = prepared
        .checkpoint_manager
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for (kind, summary, payload, details) in captures {
        manager_budget.record(payload.len() as u64);
        match manager.capture_with_details(
            kind,
            &summary,
            Some(&payload),
            Some(details),
            CheckpointSource::Host,
        ) {
            Ok(record) => logs.event(
                EventSource::Host,
                EventLevel::Info,
                "checkpoint.captured",
                format!("checkpoint {} ({}): {}", record.seq, record.checkpoint_type, record.summary),
                Some(json!({ "seq": record.seq, "type": record.checkpoint_type, "path": record.path })),
            ),
            Err(e) => logs.event(EventSource::Host, EventLevel::Error, "checkpoint.failed", e.to_string(), None),
        };
    }
}

/// How a worker run ended, before it becomes a `StepExecutionResult`.
pub(crate) struct Report {
    pub outcome: StepExecutionOutcome,
    pub summary: String,
    pub needs_human: bool,
    pub exit_code: Option<i32>,
    pub followups: Vec<SuggestedFollowup>,
    pub failure: Option<FailureRecord>,
    pub artifacts: Vec<StepArtifact>,
    pub plugin: Option<PluginRecord>,
    /// How the step's subprocesses were confined (for the metadata).
    pub sandbox: Option<serde_json::Value>,
}

impl Report {
    fn failed(reason: FailureReason, message: impl Into<String>) -> Self {
        let message = message.into();
        Report {
            outcome: StepExecutionOutcome::Failed,
            summary: message.clone(),
            needs_human: false,
            exit_code: None,
            followups: Vec::new(),
            failure: Some(FailureRecord {
                reason,
                message,
                trap_code: None,
            }),
            artifacts: Vec::new(),
            plugin: None,
            sandbox: None,
        }
    }

    /// The step was cancelled by its embedder.
    pub(crate) fn interrupted(message: impl Into<String>) -> Self {
        Report::failed(FailureReason::Interrupted, message)
    }

    /// The worker trapped (or exited) with `code`.
    fn trapped(code: String, message: impl Into<String>) -> Self {
        let mut report = Report::failed(FailureReason::Trap, message);
        if let Some(failure) = report.failure.as_mut() {
            failure.trap_code = Some(code);
        }
        report
    }
}

fn engine_error(context: &str, error: impl std::fmt::Display) -> Report {
    Report::failed(FailureReason::HostError, format!("{context}: {error}"))
}

/// Run the worker of `prepared` to an outcome. Never fails: every failure
/// becomes a failed (or blocked) report.
pub(crate) async fn run_worker(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    deadlines: Deadlines,
    cancel: &CancellationToken,
) -> Report {
    let request = &prepared.request;
    let logs = prepared.logs.clone();
    let limits = &shared.config.limits;
    let deadline = deadlines.step;

    let entry = match shared.plugins.find(&request.worker_kind) {
        Ok(entry) => entry.clone(),
        Err(e) => return Report::failed(FailureReason::InvalidPlugin, e.to_string()),
    };
    let plugin = match shared
        .cache
        .get(&shared.engine, &entry, limits.plugin_file_bytes)
    {
        Ok(plugin) => plugin,
        Err(e) => return Report::failed(FailureReason::InvalidPlugin, e.to_string()),
    };
    let mut plugin_record = PluginRecord {
        name: plugin.kind.to_string(),
        version: String::new(),
        source: plugin.source.describe(),
        sha256: plugin.sha256.clone(),
        compiled: Some(plugin.origin.describe()),
        instantiate_micros: None,
    };
    let with_plugin = |mut report: Report, record: &PluginRecord| {
        report.plugin = Some(record.clone());
        report
    };

    let pre = match worker_pre(shared, &plugin) {
        Ok(pre) => pre,
        Err(e) => {
            return with_plugin(
                Report::failed(FailureReason::InvalidPlugin, e),
                &plugin_record,
            )
        }
    };

    // WASI: the worktree as `.`, stdio into the logs, nothing else.
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(LogOutput::new(logs.clone(), Stream::Stdout))
        .stderr(LogOutput::new(logs.clone(), Stream::Stderr))
        .allow_blocking_current_thread(true);
    if let Err(e) = wasi.preopened_dir(prepared.worktree(), ".", FsPerms::ReadWrite) {
        return engine_error("cannot open the worktree for the worker", e);
    }

    let subprocesses = match step_subprocesses(shared, prepared, deadlines, ExecPolicy::default()) {
        Ok(subprocesses) => subprocesses,
        Err(e) => return engine_error("cannot confine subprocesses on this machine", e),
    };
    let live_groups = subprocesses.live_groups();
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.resource_table_entries as usize);
    let state = StepState {
        wasi: wasi.build(),
        table,
        limits: StepLimits::new((limits.memory_mib * 1024 * 1024) as usize),
        host: StepHost {
            logs: logs.clone(),
            subprocesses,
            checkpoints: prepared.checkpoint_manager.clone(),
            artifacts: Vec::new(),
            artifacts_dir: prepared.log_paths.artifacts_dir.clone().into(),
            log_tail_lines: prepared
                .request
                .checkpoint
                .as_ref()
                .and_then(|c| c.log_tail_lines)
                .map(|n| n as usize)
                .unwrap_or(crate::checkpoints::snapshot::DEFAULT_LOG_TAIL_LINES),
        },
    };
    let mut store = new_store(shared, state, deadline);

    // A panic in a host function ends this step as a host error; the
    // cleanup below still runs, and no other step is affected.
    let call = call_worker(
        &mut store,
        pre,
        prepared,
        &mut plugin_record,
        plugin.manifest.as_ref(),
        shared,
        Bounds {
            backstop: deadlines.guest,
            cancel,
            disk: prepared.logs.budget().exceeded(),
        },
    );
    let mut report = match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(report) => report,
        Err(panic) => {
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
    };

    // Measured before anything else: a guest that returns after the
    // deadline fired is late, whatever it says.
    let timed_out = Instant::now() >= deadline;
    // The step is over: nothing it started may outlive it.
    let grace = Duration::from_millis(shared.config.sandbox.kill_grace_ms);
    let killed = live_groups.stop_all(grace).await;
    if killed > 0 {
        logs.host_info(
            "subprocess.cleanup",
            format!("stopped {killed} process tree(s) left running"),
            None,
        );
    }
    let data = store.data();
    let limits_hit = LimitsHit {
        timed_out,
        memory: data.limits.memory_hit,
        output: data.host.subprocesses.output_limit_hits() > 0 || logs.truncated(),
        disk: logs.budget().is_exceeded(),
        denials: data.host.subprocesses.denials().to_vec(),
    };
    report.artifacts = data.host.artifacts.clone();
    report.plugin = Some(plugin_record);
    report.sandbox = Some(data.host.subprocesses.confinement_record());
    // Nothing the step started outlives its worker, not even what escaped
    // its supervisors: its cgroup is emptied (with its fork server) when
    // the store goes, below, and on a host without root everything in its
    // user namespace is killed now. The final snapshot then sees the
    // worktree as the worker left it, from a fork server of its own.
    prepared.sandbox_namespace.release();
    refine_failure(&mut report, request.timeout_sec, limits, &limits_hit);
    report
}

/// A trap's machine-readable code: `stack-overflow`,
/// `unreachable-code-reached`, `memory-out-of-bounds`, …
fn trap_code(trap: &Trap) -> String {
    let mut code = String::new();
    for (i, c) in format!("{trap:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                code.push('-');
            }
            code.push(c.to_ascii_lowercase());
        } else {
            code.push(c);
        }
    }
    code
}

/// Which limits a step ran into.
struct LimitsHit {
    /// The step's deadline fired before the guest returned.
    timed_out: bool,
    memory: bool,
    output: bool,
    /// The step's disk budget is used up.
    disk: bool,
    denials: Vec<Denial>,
}

/// Name the limit or policy behind a failure: timeout (whatever the guest
/// returned after the deadline), the disk budget, memory, output, or a
/// policy denial, in that order; otherwise the worker's own failure.
fn refine_failure(
    report: &mut Report,
    timeout_sec: f64,
    limits: &crate::config::Limits,
    hit: &LimitsHit,
) {
    let reason = report.failure.as_ref().map(|f| f.reason);
    let forced = (hit.timed_out && reason != Some(FailureReason::InvalidPlugin))
        || (hit.disk && reason != Some(FailureReason::Timeout));
    if forced && report.outcome != StepExecutionOutcome::Failed {
        // What the guest claimed after its time or budget ran out does not count.
        report.outcome = StepExecutionOutcome::Failed;
        report.needs_human = false;
        report.failure = None;
    }
    if report.outcome != StepExecutionOutcome::Failed {
        return;
    }
    let reason = report.failure.as_ref().map(|f| f.reason);
    let trapped_or_failed = matches!(
        reason,
        None | Some(FailureReason::WorkerFailed) | Some(FailureReason::Trap)
    );
    let denials = &hit.denials;
    let refined = if hit.timed_out && reason != Some(FailureReason::InvalidPlugin) {
        Some((
            FailureReason::Timeout,
            format!("timed out after {timeout_sec}s"),
        ))
    } else if hit.disk {
        Some((
            FailureReason::DiskLimit,
            format!(
                "exceeded the step's disk budget of {} MiB (limits.step-disk-mib)",
                limits.step_disk_mib
            ),
        ))
    } else if hit.memory && reason == Some(FailureReason::Trap) {
        Some((
            FailureReason::MemoryLimit,
            format!("exceeded the memory limit of {} MiB", limits.memory_mib),
        ))
    } else if hit.output && trapped_or_failed {
        Some((
            FailureReason::OutputLimit,
            "exceeded an output limit".to_string(),
        ))
    } else if !denials.is_empty() && matches!(reason, None | Some(FailureReason::WorkerFailed)) {
        let messages: Vec<&str> = denials.iter().map(|d| d.message.as_str()).collect();
        let grants: Vec<&str> = denials.iter().filter_map(|d| d.grant.as_deref()).collect();
        if grants.len() == denials.len() {
            // Every denial is one the operator could lift: a human decides.
            report.outcome = StepExecutionOutcome::Blocked;
            report.needs_human = true;
            report.summary = bounds::cut(
                &format!("blocked by policy: {}", messages.join("; ")),
                bounds::SUMMARY,
            );
            report.followups.push(SuggestedFollowup {
                step_name: bounds::cut(
                    &format!("grant: {}", grants.join("; ")),
                    bounds::FOLLOWUP_REASON,
                ),
                step_kind: StepKind::Review,
                reason: bounds::cut(
                    &format!(
                        "the worker was denied what the operator may allow: {}",
                        messages.join("; ")
                    ),
                    bounds::FOLLOWUP_REASON,
                ),
            });
        }
        Some((
            FailureReason::PolicyDenied,
            bounds::cut(
                &format!("denied by policy: {}", messages.join("; ")),
                bounds::FAILURE_MESSAGE,
            ),
        ))
    } else {
        None
    };
    let trap_code = report.failure.as_ref().and_then(|f| f.trap_code.clone());
    if let Some((reason, message)) = refined {
        if matches!(
            reason,
            FailureReason::Timeout
                | FailureReason::MemoryLimit
                | FailureReason::OutputLimit
                | FailureReason::DiskLimit
        ) {
            report.summary = format!("{message}: {}", report.summary);
        }
        report.failure = Some(FailureRecord {
            reason,
            message: report.summary.clone(),
            trap_code,
        });
    } else if report.failure.is_none() {
        report.failure = Some(FailureRecord {
            reason: FailureReason::WorkerFailed,
            message: report.summary.clone(),
            trap_code: None,
        });
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

async fn call_worker(
    store: &mut Store<StepState>,
    pre: &WorkerPre<StepState>,
    prepared: &PreparedStepRun,
    plugin_record: &mut PluginRecord,
    manifest: Option<&crate::plugins::manifest::Manifest>,
    shared: &RunnerShared,
    bounds: Bounds<'_>,
) -> Report {
    let logs = prepared.logs.clone();
    let request = &prepared.request;
    let trap_report = |e: wasmtime::Error, during: &str| -> Report {
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            let mut report = Report::trapped(
                format!("exit({})", exit.0),
                format!(
                    "the worker exited with code {} {during} instead of returning an outcome",
                    exit.0
                ),
            );
            report.exit_code = Some(exit.0);
            return report;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                Report::failed(FailureReason::Timeout, format!("interrupted {during}"))
            }
            Some(trap) => Report::trapped(
                trap_code(trap),
                format!("the worker trapped {during}: {trap}"),
            ),
            None => Report::trapped(
                "host call error".into(),
                format!("the worker failed {during}: {e:#}"),
            ),
        }
    };

    let instantiating = std::time::Instant::now();
    let during = "while starting";
    let worker = match bounds.run(pre.instantiate_async(&mut *store), during).await {
        Ok(Ok(worker)) => {
            plugin_record.instantiate_micros = Some(instantiating.elapsed().as_micros() as u64);
            worker
        }
        Ok(Err(e)) => return trap_report(e, during),
        Err(report) => return report,
    };
    let executor = worker.baa_worker_worker_executor();
    let during = "in describe";
    let info = match bounds
        .run(executor.call_describe(&mut *store), during)
        .await
    {
        Ok(Ok(info)) => capped_info(info),
        Ok(Err(e)) => return trap_report(e, during),
        Err(report) => return report,
    };
    plugin_record.version = info.version.clone();
    if info.name != request.worker_kind.as_str() {
        return Report::failed(
            FailureReason::InvalidPlugin,
            format!(
                "plugin {} describes itself as `{}`, not `{}`; rename the file or fix its describe()",
                plugin_record.source, info.name, request.worker_kind
            ),
        );
    }
    // A manifest must say what `describe` says.
    if let Some(manifest) = manifest {
        let described = crate::plugins::manifest::Capabilities {
            programs: info.capabilities.programs.clone(),
            env: info.capabilities.env.clone(),
            network: info.capabilities.network,
        };
        if manifest.name != info.name
            || manifest.version != info.version
            || manifest.capabilities != described
        {
            return Report::failed(
                FailureReason::InvalidPlugin,
                format!(
                    "the plugin's manifest ({} {}, requests {:?}) differs from what its describe answers ({} {}, requests {:?}); stamp it again (`baa-runner stamp`)",
                    manifest.name, manifest.version, manifest.capabilities, info.name, info.version, described
                ),
            );
        }
    }
    let requested = KindGrant {
        programs: info.capabilities.programs.clone(),
        env: info.capabilities.env.clone(),
        network: info.capabilities.network,
        ..Default::default()
    };
    let granted = shared.config.grant(request.worker_kind.as_str());
    let policy = ExecPolicy::intersect(&requested, &granted);
    let programs: Vec<String> = policy
        .programs()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect();
    let refused: Vec<&String> = requested
        .programs
        .iter()
        .filter(|p| !policy.programs().contains_key(*p))
        .collect();
    logs.event(
        EventSource::Host,
        if refused.is_empty() { EventLevel::Info } else { EventLevel::Warn },
        "plugin.loaded",
        format!(
            "{} {} ({}) granted programs [{}]{}",
            info.name,
            info.version,
            plugin_record.source,
            programs.join(", "),
            if refused.is_empty() {
                String::new()
            } else {
                format!("; not granted: {}", refused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            }
        ),
        Some(json!({
            "name": info.name,
            "version": info.version,
            "source": plugin_record.source,
            "sha256": plugin_record.sha256,
            "compiled": plugin_record.compiled,
            "requested": { "programs": requested.programs, "env": requested.env, "network": requested.network },
            "granted": { "programs": policy.programs(), "env": policy.env_names(), "network": !matches!(policy.network(), Network::None) },
        })),
    );
    // A kind that requests more than the operator granted (a new version
    // asking for more, say) does not run until the grant is widened.
    let never: Vec<&str> = requested
        .env
        .iter()
        .filter(|e| crate::capabilities::subprocess::policy::is_never_passed(e))
        .map(String::as_str)
        .collect();
    if !never.is_empty() {
        return Report::failed(
            FailureReason::InvalidPlugin,
            format!(
                "{} {} requests environment variables no subprocess ever gets: {}",
                info.name,
                info.version,
                never.join(", ")
            ),
        );
    }
    let missing = granted.missing(&requested);
    if !missing.is_empty() {
        return blocked_on(
            &missing,
            request.worker_kind.as_str(),
            &info.name,
            &info.version,
        );
    }
    store.data_mut().host.subprocesses.set_policy(policy);

    let step_request = StepRequest {
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
        resume: prepared.resume.as_ref().map(|r| ResumeCheckpoint {
            seq: r.record.seq,
            checkpoint_type: resume_type(&r.record),
            summary: r.record.summary.clone(),
            payload: r.payload.clone(),
        }),
        checkpoints_enabled: prepared.checkpoint.mode == CheckpointMode::Capture,
    };
    let during = "in execute";
    let outcome = match bounds
        .run(executor.call_execute(&mut *store, &step_request), during)
        .await
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return trap_report(e, during),
        Err(report) => return report,
    };
    match outcome {
        Ok(outcome) => from_worker_outcome(outcome),
        Err(ExecuteError::InvalidRequest(why)) => Report::failed(
            FailureReason::InvalidRequest,
            cut_owned(why, bounds::FAILURE_MESSAGE),
        ),
        Err(ExecuteError::Failed(why)) => Report::failed(
            FailureReason::WorkerFailed,
            cut_owned(why, bounds::FAILURE_MESSAGE),
        ),
    }
}

/// What a kind says of itself, each string cut to its cap before it is
/// copied anywhere (a name that long never matches a kind anyway).
fn capped_info(info: WorkerInfo) -> WorkerInfo {
    let caps = info.capabilities;
    WorkerInfo {
        name: cut_owned(info.name, bounds::KIND_NAME),
        version: cut_owned(info.version, bounds::KIND_NAME),
        description: cut_owned(info.description, bounds::DESCRIPTION),
        capabilities: Capabilities {
            programs: cut_list(
                caps.programs,
                bounds::CAPABILITY_ITEMS,
                bounds::CAPABILITY_ITEM,
            ),
            env: cut_list(caps.env, bounds::CAPABILITY_ITEMS, bounds::CAPABILITY_ITEM),
            network: caps.network,
        },
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

fn from_worker_outcome(outcome: WorkerOutcome) -> Report {
    let (step_outcome, needs_human) = match outcome.status {
        Status::Completed => (StepExecutionOutcome::Completed, outcome.needs_human),
        Status::Failed => (StepExecutionOutcome::Failed, outcome.needs_human),
        Status::Blocked => (StepExecutionOutcome::Blocked, true),
    };
    let followups = outcome
        .suggested_followup
        .into_iter()
        .take(bounds::FOLLOWUPS)
        .filter_map(|f| {
            Some(SuggestedFollowup {
                step_kind: StepKind::parse(&cut_owned(f.step_kind, bounds::FOLLOWUP_NAME)).ok()?,
                step_name: cut_owned(f.step_name, bounds::FOLLOWUP_NAME),
                reason: cut_owned(f.reason, bounds::FOLLOWUP_REASON),
            })
        })
        .collect();
    Report {
        outcome: step_outcome,
        failure: None,
        summary: cut_owned(outcome.summary, bounds::SUMMARY),
        needs_human,
        exit_code: outcome.exit_code,
        followups,
        artifacts: Vec::new(),
        plugin: None,
        sandbox: None,
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

/// Load `entry` and call its `describe` in a store with no capabilities.
/// Returns what it says and the component's digest.
pub(crate) async fn describe(
    shared: &RunnerShared,
    entry: &crate::plugins::PluginEntry,
) -> Result<(WorkerInfo, String), String> {
    let plugin = shared
        .cache
        .get(
            &shared.engine,
            entry,
            shared.config.limits.plugin_file_bytes,
        )
        .map_err(|e| e.to_string())?;
    let pre = worker_pre(shared, &plugin)?;
    let logs = crate::logs::LogSession::discard().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + DESCRIBE_TIMEOUT;
    let state = StepState {
        wasi: WasiCtxBuilder::new().build(),
        table: ResourceTable::new(),
        limits: StepLimits::new((shared.config.limits.memory_mib * 1024 * 1024) as usize),
        host: StepHost {
            logs: logs.clone(),
            // Describing runs no subprocess: the policy denies everything.
            subprocesses: Subprocesses::new(
                ExecPolicy::default(),
                Setup {
                    worktree: std::path::PathBuf::from("/nonexistent"),
                    base_env: Default::default(),
                    deadline,
                    deadline_host: deadline,
                    output_cap: 0,
                    max_processes: 0,
                    logs,
                    confinement: Confinement {
                        sandbox: shared.config.sandbox.clone(),
                        home: std::path::PathBuf::from("/nonexistent"),
                        user: None,
                        lend: Vec::new(),
                        namespace: None,
                        probe: Default::default(),
                    },
                },
            ),
            checkpoints: Arc::new(std::sync::Mutex::new(
                crate::checkpoints::CheckpointManager::disabled(),
            )),
            artifacts: Vec::new(),
            artifacts_dir: "/nonexistent".into(),
            log_tail_lines: 0,
        },
    };
    let mut store = new_store(shared, state, deadline);
    let call = async {
        let worker = pre.instantiate_async(&mut store).await?;
        worker
            .baa_worker_worker_executor()
            .call_describe(&mut store)
            .await
    };
    match tokio::time::timeout_at(deadline + Duration::from_secs(1), call).await {
        Ok(Ok(info)) => Ok((capped_info(info), plugin.sha256.clone())),
        Ok(Err(e)) => Err(format!("describe failed: {e:#}")),
        Err(_) => Err("describe did not return in time".into()),
    }
}

/// `plugin` linked against the runner's linker, made at its first use.
fn worker_pre<'a>(
    shared: &RunnerShared,
    plugin: &'a crate::plugins::LoadedPlugin,
) -> Result<&'a WorkerPre<StepState>, String> {
    let linked = plugin.pre.get_or_init(|| {
        let pre = shared
            .linker
            .instantiate_pre(&plugin.component)
            .map_err(|e| {
                PluginError::Link {
                    source_name: format!("`{}` ({})", plugin.kind, plugin.source.describe()),
                    message: format!("{e:#}"),
                }
                .to_string()
            })?;
        WorkerPre::new(pre).map_err(|e| format!("{e:#}"))
    });
    linked.as_ref().map_err(Clone::clone)
}

/// Epoch ticks a guest may still compute after its deadline.
const GRACE_TICKS: u32 = 2;

/// How long a `describe` outside a step may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A store with the runner's limits whose guest code yields at every epoch
/// tick and is interrupted once it computes past `deadline`: the first
/// [`GRACE_TICKS`] ticks after it are a last grace (a guest that just learnt
/// its subprocess was killed returns its outcome), the next one traps.
fn new_store(shared: &RunnerShared, state: StepState, deadline: Instant) -> Store<StepState> {
    let mut store = Store::new(&shared.engine, state);
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

/// The report of a kind that requests more than it is granted: blocked,
/// with the exact lines the operator would add.
fn blocked_on(missing: &MissingGrants, kind: &str, name: &str, version: &str) -> Report {
    let wanted = missing.config_lines().join(", ");
    let message = format!(
        "{name} {version} requests more than the operator granted: {wanted}; widen [kinds.{kind}] in the config to run it"
    );
    let mut report = Report::failed(FailureReason::PolicyDenied, message.clone());
    report.outcome = StepExecutionOutcome::Blocked;
    report.needs_human = true;
    report.followups.push(SuggestedFollowup {
        step_name: format!("grant [kinds.{kind}] {wanted}"),
        step_kind: StepKind::Review,
        reason: message,
    });
    report
}
