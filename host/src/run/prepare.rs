//! Prepare a step: create its run directory, write metadata and the initial
//! state, open the log session and the checkpoint manager. Either all of it
//! exists afterwards, or (on failure) none of this attempt's directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::lock::RunLock;
use super::validate::{validate, ValidPaths};
use crate::budget::DiskBudget;
use crate::checkpoints::{CheckpointManager, CheckpointOwner, Resume, StepHistory};
use crate::contracts::{
    CheckpointMode, GitDiffSnapshotPlan, HostEvent, LocalRunLogSession, LocalRunPaths,
    LogSessionStatus, RunMetadata, RunStateSnapshot, RunStatus, StepCheckpointState,
    StepExecutionRequest,
};
use crate::error::Error;
use crate::fsutil::{display, now_rfc3339, Durability};
use crate::logs::{LogSession, Observer};

/// Version of the run directory layout written into `metadata.json`.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// A prepared step, ready to execute (the contract's `PreparedStepRun`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedStepRun {
    pub request: StepExecutionRequest,
    pub log_paths: LocalRunPaths,
    pub log_session: LocalRunLogSession,
    pub metadata: RunMetadata,
    pub state: RunStateSnapshot,
    pub checkpoint: StepCheckpointState,
    #[serde(skip)]
    pub checkpoint_manager: Arc<Mutex<CheckpointManager>>,
    #[serde(skip)]
    pub(crate) logs: Arc<LogSession>,
    #[serde(skip)]
    pub(crate) paths: ValidPaths,
    /// The checkpoint this attempt resumes from, validated.
    #[serde(skip)]
    pub(crate) resume: Option<Resume>,
    /// The dedicated sandbox user of this attempt, once leased.
    #[serde(skip)]
    pub(crate) sandbox_user: Arc<crate::capabilities::subprocess::user::StepUser>,
    /// The step's user namespace on a host without root.
    #[serde(skip)]
    pub(crate) sandbox_namespace: Arc<crate::capabilities::subprocess::userns::StepNamespace>,
    /// How far its records survive a failure.
    #[serde(skip)]
    pub(crate) durability: Durability,
    /// Held until the run is finished.
    #[serde(skip)]
    pub(crate) _lock: RunLock,
}

impl PreparedStepRun {
    /// The live log session (events and output as they are written).
    pub fn logs(&self) -> &Arc<LogSession> {
        &self.logs
    }

    /// The canonical worktree the step runs in.
    pub fn worktree(&self) -> &Path {
        &self.paths.worktree
    }
}

fn run_paths(runs_root: &Path, request: &StepExecutionRequest) -> (LocalRunPaths, PathBuf) {
    let run_dir = runs_root
        .join(&request.task_id)
        .join(&request.run_id)
        .join(&request.step_id)
        .join(format!("attempt-{}", request.attempt));
    let p = |rel: &str| display(&run_dir.join(rel));
    (
        LocalRunPaths {
            runs_root_dir: display(runs_root),
            run_dir: display(&run_dir),
            metadata_path: p("metadata.json"),
            state_path: p("state.json"),
            result_path: p("result.json"),
            logs_dir: p("logs"),
            lifecycle_log_path: p("logs/lifecycle.jsonl"),
            stdout_log_path: p("logs/stdout.log"),
            stderr_log_path: p("logs/stderr.log"),
            checkpoints_dir: p("checkpoints"),
            artifacts_dir: p("artifacts"),
            home_dir: p("home"),
        },
        run_dir,
    )
}

/// What a `git-diff` checkpoint of this step will compare against: the
/// configured base ref, else the commit the worktree is at now. That is
/// asked of git confined as the host's snapshots are (executing only git,
/// writing nothing, no network), since a previous step may have configured
/// the repository.
fn git_diff_plan(
    request: &StepExecutionRequest,
    worktree: &Path,
    sandbox: &crate::config::SandboxConfig,
) -> Option<GitDiffSnapshotPlan> {
    let config = request.checkpoint.as_ref()?;
    if config.mode != CheckpointMode::Capture {
        return None;
    }
    let base_ref = match &config.git_diff_base_ref {
        Some(base) => base.clone(),
        None => crate::capabilities::subprocess::hostgit::head_commit(worktree, sandbox)?,
    };
    Some(GitDiffSnapshotPlan {
        base_ref,
        include_stat: config.include_git_diff_stat.unwrap_or(false),
        worktree_path: display(worktree),
    })
}

/// Whether an attempt that `prepare` made and nothing ran may be taken up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Run it in place (executing a prepared attempt).
    Reopen,
    /// Refuse it (preparing twice).
    Refuse,
}

/// Make the attempt's run directory and the step's directories above it,
/// resolved beneath the runs root with cap-std: a link planted in the runs
/// root (by anyone who can write it) cannot turn them into directories
/// elsewhere. The runs root itself is made as named.
fn make_run_dir(runs_root: &Path, run_dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(runs_root)?;
    let root = cap_std::fs::Dir::open_ambient_dir(runs_root, cap_std::ambient_authority())?;
    let rel = run_dir
        .strip_prefix(runs_root)
        .map_err(std::io::Error::other)?;
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        root.create_dir_all(parent)?;
    }
    root.create_dir(rel)
}

/// Validate `request` and create its run records.
pub fn prepare(
    request: StepExecutionRequest,
    observer: Option<Observer>,
    config: &crate::config::RunnerConfig,
    existing: Existing,
) -> Result<PreparedStepRun, Error> {
    let (limits, durability) = (&config.limits, config.durability);
    let paths = validate(&request)?;
    super::validate::within_roots(&paths, &config.repo_roots)?;
    let (log_paths, run_dir) = run_paths(&paths.runs_root, &request);
    let parent = run_dir.parent().unwrap_or(&paths.runs_root);
    // An earlier attempt that a crashed host left `running` is closed first
    // (its state marked interrupted).
    let recovered = super::recover::recover(parent);
    // Earlier attempts' checkpoints: the numbering continues after them, and
    // a resume point must exist and be valid before anything is written.
    let history = StepHistory::load(parent, request.attempt);
    let resume = match request.checkpoint.as_ref().and_then(|c| c.resume_from_seq) {
        Some(seq) => Some(history.resume_from(parent, seq)?),
        None => None,
    };
    let fresh = match make_run_dir(&paths.runs_root, &run_dir) {
        Ok(()) => true,
        // An attempt that `prepare` made and nothing executed yet is run
        // in place.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            only_prepared(&run_dir, request.attempt, existing)?;
            same_step(&run_dir, &request, &paths)?;
            false
        }
        Err(e) => return Err(Error::io(&run_dir)(e)),
    };
    let setup = Setup {
        history,
        resume,
        recovered,
        max_stream_bytes: limits.log_stream_bytes,
        disk_budget: DiskBudget::new(limits.step_disk_mib.saturating_mul(1024 * 1024)),
        durability,
        sandbox: config.sandbox.clone(),
        fresh,
    };
    match populate(request, paths, log_paths, &run_dir, observer, setup) {
        Ok(prepared) => Ok(prepared),
        Err(e) => {
            // Leave no half-written attempt behind (a prepared one stays).
            if fresh {
                let _ = fs::remove_dir_all(&run_dir);
            }
            Err(e)
        }
    }
}

/// Check that the existing run directory of `attempt` was only prepared:
/// its state says so and no one holds it.
fn only_prepared(run_dir: &Path, attempt: u32, existing: Existing) -> Result<(), Error> {
    let taken = |what: String| {
        Error::invalid(
            "attempt",
            format!(
                "attempt {attempt} of this step already {what} ({}); run the next attempt with `run --next-attempt` (or `--resume` to continue from its latest checkpoint)",
                run_dir.display()
            ),
        )
    };
    // Only a directory this host made, as it made it, is taken up: a
    // runs root others can write must not let them plant an attempt.
    host_made(run_dir)
        .map_err(|why| taken(format!("has a run directory this host cannot trust: {why}")))?;
    let state: RunStateSnapshot =
        crate::fsutil::read_record(&run_dir.join("state.json")).map_err(|e| {
            taken(format!(
                "has a run directory whose state cannot be read: {e}"
            ))
        })?;
    if state.status != RunStatus::Prepared {
        let status = serde_json::to_value(state.status).unwrap_or_default();
        return Err(taken(format!(
            "ran (status {})",
            status.as_str().unwrap_or("?")
        )));
    }
    if RunLock::is_held(run_dir) {
        return Err(taken("is being run by another process".into()));
    }
    if existing == Existing::Refuse {
        return Err(Error::invalid(
            "attempt",
            format!(
                "attempt {attempt} of this step is prepared already ({}); `run` with the same request executes it",
                run_dir.display()
            ),
        ));
    }
    Ok(())
}

/// What `prepare` leaves in a run directory: real directories and files
/// (no links) owned by this host's user.
fn host_made(run_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let euid = rustix::process::geteuid().as_raw();
    let mut entries: Vec<(PathBuf, bool, bool)> = vec![
        (run_dir.to_path_buf(), true, true),
        (run_dir.join("metadata.json"), false, true),
        (run_dir.join("state.json"), false, true),
        (run_dir.join("result.json"), false, false),
        (run_dir.join(super::lock::LOCK_FILE), false, false),
    ];
    for dir in ["logs", "checkpoints", "artifacts", "home"] {
        entries.push((run_dir.join(dir), true, true));
    }
    for file in ["lifecycle.jsonl", "stdout.log", "stderr.log"] {
        entries.push((run_dir.join("logs").join(file), false, true));
    }
    for (_, sub) in baa_launch::PRIVATE_DIRS {
        entries.push((run_dir.join("home").join(sub), true, false));
    }
    for (path, dir, required) in entries {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let why = if meta.file_type().is_symlink() {
            "is a symbolic link"
        } else if meta.uid() != euid {
            "is not owned by this host's user"
        } else if dir != meta.is_dir() || (!dir && !meta.is_file()) {
            "is not what prepare made there"
        } else if !dir && meta.nlink() > 1 {
            "has other hard links"
        } else {
            continue;
        };
        return Err(format!("{} {why}", path.display()));
    }
    Ok(())
}

/// A prepared attempt runs only the step it was prepared for: the request
/// must agree with its metadata.
pub(crate) fn same_step(
    run_dir: &Path,
    request: &StepExecutionRequest,
    paths: &ValidPaths,
) -> Result<(), Error> {
    let metadata: RunMetadata = crate::fsutil::read_record(&run_dir.join("metadata.json"))?;
    let mode = request
        .checkpoint
        .as_ref()
        .map(|c| c.mode)
        .unwrap_or_default();
    let differs: Vec<&str> = [
        ("workerKind", metadata.worker_kind == request.worker_kind),
        ("stepKind", metadata.step_kind == request.step_kind),
        ("stepName", metadata.step_name == request.step_name),
        ("command", metadata.command == request.command),
        (
            "promptSummary",
            metadata.prompt_summary == request.prompt_summary,
        ),
        ("timeoutSec", metadata.timeout_sec == request.timeout_sec),
        (
            "runtime.repoRoot",
            metadata.repo_root == display(&paths.repo_root),
        ),
        (
            "runtime.worktreePath",
            metadata.worktree_path == display(&paths.worktree),
        ),
        ("checkpoint.mode", metadata.checkpoint_mode == mode),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(field, _)| field)
    .collect();
    match differs.first() {
        None => Ok(()),
        Some(first) => Err(Error::invalid(
            first,
            format!(
                "attempt {} was prepared ({}) for a different request: {} differ; run it with the request it was prepared for, or use `--next-attempt`",
                request.attempt,
                run_dir.display(),
                differs.join(", ")
            ),
        )),
    }
}

/// What populating a run directory needs besides the request: what earlier
/// attempts of the step left (their checkpoints, the resume point, the
/// attempts recovery just closed) and the log limit.
struct Setup {
    history: StepHistory,
    resume: Option<Resume>,
    recovered: super::recover::RecoveryReport,
    max_stream_bytes: u64,
    disk_budget: DiskBudget,
    durability: Durability,
    sandbox: crate::config::SandboxConfig,
    /// The run directory is new (else an attempt only prepared, reopened).
    fresh: bool,
}

fn populate(
    request: StepExecutionRequest,
    paths: ValidPaths,
    log_paths: LocalRunPaths,
    run_dir: &Path,
    observer: Option<Observer>,
    setup: Setup,
) -> Result<PreparedStepRun, Error> {
    let Setup {
        history,
        resume,
        recovered,
        max_stream_bytes,
        disk_budget,
        durability,
        sandbox,
        fresh,
    } = setup;
    let lock = RunLock::acquire(run_dir)?;
    if !fresh {
        still_prepared(&log_paths, request.attempt)?;
    }
    make_dirs(&log_paths, fresh)?;
    let now = now_rfc3339();
    let mode = request
        .checkpoint
        .as_ref()
        .map(|c| c.mode)
        .unwrap_or_default();
    let metadata = metadata_of(&request, &paths, run_dir, &now, mode, resume.as_ref());
    let session = session_of(&request, &log_paths, run_dir, &now);
    let logs = open_logs(
        &session,
        &log_paths,
        observer,
        fresh,
        max_stream_bytes,
        durability,
        disk_budget,
    )?;
    let plan = git_diff_plan(&request, &paths.worktree, &sandbox);
    let resumed = resume.as_ref().map(|r| r.record.clone());
    let mut manager = CheckpointManager::new(
        PathBuf::from(&log_paths.checkpoints_dir),
        mode,
        owner_of(&request),
        plan,
        history.clone(),
        resumed,
    );
    manager.set_durability(durability);
    let checkpoint = manager.state();
    announce(&logs, &request, run_dir, fresh, mode);
    announce_history(&logs, &recovered, &history, resume.as_ref());
    let state = RunStateSnapshot {
        last_checkpoint_seq: checkpoint.last_checkpoint_seq,
        lifecycle_event_count: logs.event_count(),
        ..RunStateSnapshot::prepared(now_rfc3339())
    };
    // Both records in one go: one fsync each and one for the run directory.
    super::records::write(
        &log_paths,
        durability,
        &[
            super::records::Record::Metadata(&metadata),
            super::records::Record::State(&state),
        ],
    )?;
    Ok(PreparedStepRun {
        request,
        log_paths,
        log_session: session,
        metadata,
        state,
        checkpoint,
        checkpoint_manager: Arc::new(Mutex::new(manager)),
        logs,
        paths,
        resume,
        sandbox_user: Arc::default(),
        sandbox_namespace: Arc::default(),
        durability,
        _lock: lock,
    })
}

/// The attempt's log files: created, or (a reopened attempt) continued.
fn open_logs(
    session: &LocalRunLogSession,
    log_paths: &LocalRunPaths,
    observer: Option<Observer>,
    fresh: bool,
    max_stream_bytes: u64,
    durability: Durability,
    disk_budget: DiskBudget,
) -> Result<Arc<LogSession>, Error> {
    let session = session.clone();
    if fresh {
        let logs_dir = Path::new(&log_paths.logs_dir);
        LogSession::create(session, observer, max_stream_bytes, durability, disk_budget)
            .map_err(Error::io(logs_dir))
    } else {
        Ok(LogSession::reopen(
            session,
            observer,
            max_stream_bytes,
            durability,
            disk_budget,
        )?)
    }
}

/// The attempt's log session, open.
fn session_of(
    request: &StepExecutionRequest,
    log_paths: &LocalRunPaths,
    run_dir: &Path,
    now: &str,
) -> LocalRunLogSession {
    LocalRunLogSession {
        session_id: format!(
            "{}/{}/{}/{}",
            request.task_id, request.run_id, request.step_id, request.attempt
        ),
        run_dir: display(run_dir),
        started_at: now.to_string(),
        closed_at: None,
        status: LogSessionStatus::Open,
        lifecycle_log_path: log_paths.lifecycle_log_path.clone(),
        stdout_log_path: log_paths.stdout_log_path.clone(),
        stderr_log_path: log_paths.stderr_log_path.clone(),
    }
}

/// Whose checkpoints the attempt's records are.
fn owner_of(request: &StepExecutionRequest) -> CheckpointOwner {
    CheckpointOwner {
        task_id: request.task_id.clone(),
        step_id: request.step_id.clone(),
        run_id: request.run_id.clone(),
        attempt: request.attempt,
    }
}

/// A reopened attempt is still only prepared: another process may have
/// run it between the first check and the lock.
fn still_prepared(log_paths: &LocalRunPaths, attempt: u32) -> Result<(), Error> {
    let state: RunStateSnapshot = crate::fsutil::read_record(Path::new(&log_paths.state_path))?;
    if state.status == RunStatus::Prepared {
        return Ok(());
    }
    Err(Error::invalid(
        "attempt",
        format!(
            "attempt {attempt} of this step was run by another process meanwhile; use `--next-attempt`"
        ),
    ))
}

/// The run directory's subdirectories (a reopened attempt has them
/// already: nothing ran in it), and no stale `prepared` result.
fn make_dirs(log_paths: &LocalRunPaths, fresh: bool) -> Result<(), Error> {
    let create_dir = |dir: &Path| match fs::create_dir(dir) {
        Err(e) if !fresh && e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map_err(Error::io(dir)),
    };
    for dir in [
        &log_paths.logs_dir,
        &log_paths.checkpoints_dir,
        &log_paths.artifacts_dir,
        &log_paths.home_dir,
    ] {
        create_dir(Path::new(dir))?;
    }
    // TMPDIR, and the private /tmp, /var/tmp, /dev/shm and /run/lock of a
    // step that runs in a user namespace of its own (a host without root).
    for (_, sub) in baa_launch::PRIVATE_DIRS {
        create_dir(&Path::new(&log_paths.home_dir).join(sub))?;
    }
    if !fresh {
        // Its `prepared` result is superseded by the one this run writes.
        let result = Path::new(&log_paths.result_path);
        match fs::remove_file(result) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(result)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// The attempt's metadata as prepared.
fn metadata_of(
    request: &StepExecutionRequest,
    paths: &ValidPaths,
    run_dir: &Path,
    now: &str,
    mode: CheckpointMode,
    resume: Option<&Resume>,
) -> RunMetadata {
    RunMetadata {
        schema_version: RUN_SCHEMA_VERSION,
        task_id: request.task_id.clone(),
        step_id: request.step_id.clone(),
        run_id: request.run_id.clone(),
        attempt: request.attempt,
        step_name: request.step_name.clone(),
        step_kind: request.step_kind.clone(),
        worker_kind: request.worker_kind.clone(),
        timeout_sec: request.timeout_sec,
        repo_root: display(&paths.repo_root),
        worktree_path: display(&paths.worktree),
        run_dir: display(run_dir),
        created_at: request.created_at.clone(),
        prepared_at: now.to_string(),
        checkpoint_mode: mode,
        host: format!("baa-runner {}", env!("CARGO_PKG_VERSION")),
        prompt_summary: request.prompt_summary.clone(),
        command: request.command.clone(),
        plugin: None,
        sandbox: None,
        resumed_from_seq: resume.map(|r| r.record.seq),
        outcome: None,
        failure: None,
        finished_at: None,
    }
}

/// The `run.prepared` (or `run.reopened`) event.
fn announce(
    logs: &LogSession,
    request: &StepExecutionRequest,
    run_dir: &Path,
    fresh: bool,
    mode: CheckpointMode,
) {
    let what = if fresh {
        "prepared"
    } else {
        "running the prepared"
    };
    let checkpoint_mode = mode;
    let run_dir_text = display(run_dir);
    let event = if fresh {
        HostEvent::RunPrepared {
            run_dir: run_dir_text,
            checkpoint_mode,
        }
    } else {
        HostEvent::RunReopened {
            run_dir: run_dir_text,
            checkpoint_mode,
        }
    };
    logs.host_info(
        format!(
            "{what} {} step `{}` (task {}, run {}, attempt {}) in {}",
            request.worker_kind,
            request.step_name,
            request.task_id,
            request.run_id,
            request.attempt,
            run_dir.display()
        ),
        event,
    );
}

/// What the attempt inherits from earlier ones: runs a stopped host left
/// open (now closed), corrupt checkpoints skipped, the checkpoint resumed.
fn announce_history(
    logs: &LogSession,
    recovered: &super::recover::RecoveryReport,
    history: &StepHistory,
    resume: Option<&Resume>,
) {
    use crate::contracts::EventLevel;
    for run in &recovered.recovered {
        logs.host(
            EventLevel::Warn,
            format!(
                "closed earlier attempt {} that a stopped host left running",
                run.run_dir
            ),
            HostEvent::RunRecovered {
                run_dir: run.run_dir.clone(),
                last_checkpoint_seq: run.last_checkpoint_seq,
            },
        );
    }
    for why in &history.corrupt {
        logs.host(
            EventLevel::Warn,
            format!("skipped a corrupt checkpoint of an earlier attempt: {why}"),
            HostEvent::CheckpointCorrupt {
                reason: why.clone(),
            },
        );
    }
    if let Some(resume) = resume {
        let record = &resume.record;
        logs.host_info(
            format!(
                "resuming from checkpoint {} ({}, attempt {}): {}",
                record.seq, record.checkpoint_type, record.attempt, record.summary
            ),
            HostEvent::CheckpointResumed {
                seq: record.seq,
                path: record.path.clone(),
                attempt: record.attempt,
            },
        );
    }
}
