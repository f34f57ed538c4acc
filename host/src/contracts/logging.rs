//! Types the contract imports from `@baa-conductor/logging`: where a run's
//! records live, the log session, its summary, run metadata and state.

use serde::{Deserialize, Serialize};

use super::{CheckpointMode, StepExecutionOutcome, StepKind, WorkerKind};

/// Absolute paths of everything in one run directory
/// (`<runsRootDir>/<taskId>/<runId>/<stepId>/attempt-<attempt>/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRunPaths {
    /// Root of all run directories.
    pub runs_root_dir: String,
    /// This attempt's run directory.
    pub run_dir: String,
    /// `metadata.json`: who/what/where of the run, written at prepare.
    pub metadata_path: String,
    /// `state.json`: the latest [`RunStateSnapshot`].
    pub state_path: String,
    /// `result.json`: the final `StepExecutionResult`.
    pub result_path: String,
    /// `logs/`.
    pub logs_dir: String,
    /// `logs/lifecycle.jsonl`: one [`WorkerLifecycleLogEntry`] per line.
    pub lifecycle_log_path: String,
    /// `logs/stdout.log`: every stdout byte of the worker and its subprocesses.
    pub stdout_log_path: String,
    /// `logs/stderr.log`: every stderr byte of the worker and its subprocesses.
    pub stderr_log_path: String,
    /// `checkpoints/`: numbered checkpoint records and their payloads.
    pub checkpoints_dir: String,
    /// `artifacts/`: files the worker declared as artifacts.
    pub artifacts_dir: String,
    /// `home/`: the `HOME` (and `TMPDIR`) of the step's subprocesses.
    pub home_dir: String,
}

/// Whether a log session still accepts records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogSessionStatus {
    Open,
    Closed,
}

/// The open set of log files one attempt writes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRunLogSession {
    /// `<taskId>/<runId>/<stepId>/<attempt>`: unique under the runs root.
    pub session_id: String,
    pub run_dir: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    pub status: LogSessionStatus,
    pub lifecycle_log_path: String,
    pub stdout_log_path: String,
    pub stderr_log_path: String,
}

/// What the logs of one attempt hold, counted as they were written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRunLogSummary {
    pub lifecycle_event_count: u64,
    pub stdout_chunk_count: u64,
    pub stderr_chunk_count: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The last lines of stdout (lossy UTF-8), oldest first.
    pub stdout_tail: Vec<String>,
    /// The last lines of stderr (lossy UTF-8), oldest first.
    pub stderr_tail: Vec<String>,
    /// Whether `stdout.log` went past its limit (it then ends with a marker
    /// and the stream's last bytes).
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
}

/// Who wrote a lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    Host,
    Worker,
}

/// Severity of a lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// One line of `logs/lifecycle.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerLifecycleLogEntry {
    /// Position in this attempt's lifecycle log, from 1.
    pub seq: u64,
    pub timestamp: String,
    /// Dotted event name. The host's (`source: host`) are those of
    /// `host-event.schema.json` (`run.prepared`, `step.started`,
    /// `plugin.loaded`, `subprocess.denied`, `checkpoint.captured`, …), which
    /// also describes each one's `data`; a worker's are its own `<kind>.<what>`.
    pub event: String,
    pub level: EventLevel,
    pub source: EventSource,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The worker kind's component as it was loaded for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    /// `builtin` or the `.wasm` file's path.
    pub source: String,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// How its machine code was obtained: compiled, or loaded from the
    /// compiled cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<String>,
    /// How long instantiating it for this step took, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instantiate_micros: Option<u64>,
}

/// Why a step did not complete, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureReason {
    /// The worker reported that the work failed (e.g. a non-zero exit).
    WorkerFailed,
    /// The step's `timeoutSec` ran out.
    Timeout,
    /// The guest exceeded its memory limit.
    MemoryLimit,
    /// Output exceeded its limit (the worker's own, or a subprocess's).
    OutputLimit,
    /// The step's logs, events, artifacts and checkpoints outgrew its disk
    /// budget (`limits.step-disk-mib`).
    DiskLimit,
    /// The guest trapped (a panic, `unreachable`, …).
    Trap,
    /// The policy refused something the worker needed.
    PolicyDenied,
    /// The worker kind could not be found or loaded.
    InvalidPlugin,
    /// The worker rejected the request as incomplete.
    InvalidRequest,
    /// The host itself failed.
    HostError,
    /// The step was stopped from outside: cancelled by its embedder (a
    /// cancelled token, a dropped handle, a `cancel` over `serve`), or its
    /// host stopped (crashed, was killed) while it ran and recovery closed it.
    Interrupted,
}

/// A failure, as recorded in state and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    pub reason: FailureReason,
    pub message: String,
    /// For `trap`: what trapped (`unreachable`, `stack overflow`, `exit(3)`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trap_code: Option<String>,
}

/// `metadata.json`: what the run is, written when it is prepared and
/// completed when it finishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunMetadata {
    /// Version of this file's layout.
    pub schema_version: u32,
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub step_name: String,
    pub step_kind: StepKind,
    pub worker_kind: WorkerKind,
    pub timeout_sec: f64,
    pub repo_root: String,
    pub worktree_path: String,
    pub run_dir: String,
    /// The request's `createdAt`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    pub prepared_at: String,
    pub checkpoint_mode: CheckpointMode,
    /// `baa-runner <version>`.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Set once the worker kind's component was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginRecord>,
    /// How the step's subprocesses were confined: Landlock ABI, seccomp,
    /// user, network, paths, rlimits (set once the step ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<ConfinementRecord>,
    /// Set when the attempt resumed from an earlier checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StepExecutionOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Prepared,
    Running,
    Completed,
    Failed,
    Blocked,
    /// The host stopped while the step was running (see recovery).
    Interrupted,
}

/// `state.json`: the run's latest state, rewritten at each transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStateSnapshot {
    pub status: RunStatus,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Exit code of the command that decided the outcome, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRecord>,
    pub last_checkpoint_seq: u32,
    pub lifecycle_event_count: u64,
}

impl RunStateSnapshot {
    /// The state of an attempt just prepared, at `now`.
    pub fn prepared(now: String) -> Self {
        RunStateSnapshot {
            status: RunStatus::Prepared,
            updated_at: now,
            started_at: None,
            finished_at: None,
            summary: None,
            exit_code: None,
            failure: None,
            last_checkpoint_seq: 0,
            lifecycle_event_count: 0,
        }
    }
}

/// How a step's subprocesses were confined (`metadata.sandbox`), as the
/// host set it up on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfinementRecord {
    /// `confined` (Landlock and seccomp both applied) or `degraded`.
    pub mode: ConfinementMode,
    pub landlock: LandlockState,
    /// The kernel's Landlock ABI version (0: none).
    pub landlock_abi: u32,
    pub landlock_tcp: bool,
    pub landlock_scopes: bool,
    pub seccomp: bool,
    pub no_new_privs: bool,
    pub user: StepUserRecord,
    /// How the step's user sees the worktree (and write paths) as its own.
    pub worktree_view: WorktreeViewRecord,
    pub network: NetworkRecord,
    pub nested_sandbox: bool,
    /// What the subprocesses may execute: `any`, or exactly these files.
    pub execute: ExecuteRecord,
    pub read_paths: Vec<String>,
    pub write_paths: Vec<String>,
    pub rlimits: RlimitsRecord,
    pub kill_grace_ms: u64,
    /// What bounds the number of the step's processes.
    pub process_bound: ProcessBoundRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConfinementMode {
    Confined,
    Degraded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockState {
    Enforced,
    /// The kernel has none and `[sandbox] landlock = "required"`: nothing runs.
    RequiredUnavailable,
    /// The kernel has none and the operator chose to run without it.
    UnavailableOptedOut,
}

/// Whose uid the step's subprocesses run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum StepUserRecord {
    /// A uid of its own, from `[sandbox] uid-base` (filled in when known).
    #[serde(rename_all = "camelCase")]
    Dedicated {
        uid_base: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
    },
    /// The host's own uid.
    Current { uid: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WorktreeViewRecord {
    /// An idmapped view: nothing on disk changes owner.
    Idmapped,
    /// Chown lending: entries are chowned to the step's user and back.
    Chown,
    /// No other user: the worktree as it is.
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum NetworkRecord {
    /// `none` or `unrestricted`.
    Named(String),
    /// TCP connections to these ports only (UDP cannot be narrowed by port).
    #[serde(rename_all = "camelCase")]
    TcpPorts { tcp_connect: Vec<u16>, udp: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ExecuteRecord {
    /// `any`: a shell or command runner was granted.
    Any(String),
    Only(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RlimitsRecord {
    pub cpu_seconds: Option<u64>,
    pub address_space_mib: Option<u64>,
    pub file_size_mib: u64,
    pub open_files: u64,
    /// Set only where something bounds processes per user.
    pub processes: Option<u64>,
    pub core: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessBoundRecord {
    /// `pids-cgroup`, `rlimit-dedicated-user`, `rlimit-user-namespace` or `none`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}
