//! The one place that launches subprocesses for workers: policy check, cwd
//! inside the worktree, scrubbed environment, OS confinement through the
//! embedded launcher, timeout, output cap, output streamed into the run logs
//! and back to the worker, and the whole tree stopped when the process or
//! the step ends.
//!
//! - `policy.rs`: which programs, arguments, variables and network a kind gets;
//! - `hostgit.rs`: the host's own git (options, environment, confined runs);
//! - `confinement.rs`: Landlock, seccomp, rlimits and user of each process;
//! - `launcher.rs`: the embedded `baa-launch` and its report;
//! - `user.rs`: dedicated uids and the trees lent to them;
//! - `process.rs`: a running process's output, deadline and exit.

pub mod cgroup;
mod command;
pub mod confinement;
pub mod error;
pub mod executables;
pub mod hostgit;
pub mod launcher;
pub mod policy;
mod process;
pub mod user;
pub mod userns;
mod zygote;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

pub use baa_launch::{Builtin, Stage};
pub use command::{Chunk, Denial, DenialReason, ExitInfo, SpawnError, SpawnRequest};
pub use confinement::Confinement;
pub use error::ConfinementError;
pub use policy::ExecPolicy;
pub use process::ProcessHandle;

use crate::contracts::{EventLevel, HostEvent};
use crate::logs::LogSession;

/// The processes of a step that may still be running: their supervisors'
/// process groups and lifelines.
#[derive(Debug, Default, Clone)]
pub struct LiveGroups(Arc<Mutex<std::collections::HashMap<i32, process::Lifeline>>>);

impl LiveGroups {
    fn insert(&self, pgid: i32, lifeline: process::Lifeline) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pgid, lifeline);
    }

    fn remove(&self, pgid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pgid);
    }

    /// How many processes are registered.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no process is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop every process still registered: cut their lifelines (each
    /// supervisor sends SIGTERM, waits `grace`, sends SIGKILL and reaps),
    /// wait for them, then SIGKILL the groups of any that did not finish.
    /// Returns how many were running.
    pub async fn stop_all(&self, grace: Duration) -> usize {
        let running: Vec<i32> = {
            let live = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for lifeline in live.values() {
                lifeline.cut();
            }
            live.keys().copied().collect()
        };
        if running.is_empty() {
            return 0;
        }
        let until = Instant::now() + grace + Duration::from_millis(1000);
        while !self.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left: Vec<i32> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(pgid, _)| pgid)
            .collect();
        for pgid in left {
            kill_group(pgid);
        }
        running.len()
    }
}

/// When process `pid` started (clock ticks since boot, from
/// `/proc/<pid>/stat`): with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it follow `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Send SIGKILL to process group `pgid`.
pub fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        // ESRCH (already gone) is fine.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// What a step's subprocess capability starts from.
pub struct Setup {
    /// The canonical worktree.
    pub worktree: PathBuf,
    /// The complete environment every child starts from (nothing of the
    /// host's own is added).
    pub base_env: BTreeMap<String, String>,
    /// When the worker's subprocesses are stopped: the step's timeout.
    pub deadline: Instant,
    /// When the host's own commands for the step are stopped: the timeout
    /// plus three quarters of its grace (`limits.timeout-grace-ms`).
    pub deadline_host: Instant,
    pub output_cap: u64,
    pub max_processes: usize,
    pub logs: Arc<LogSession>,
    pub confinement: Confinement,
}

/// A command of the host's own, run inside a step's confinement.
pub struct HostCommand<'a> {
    /// The program (ignored for a builtin).
    pub program: &'a Path,
    /// A file operation the launcher performs as the step's user instead.
    pub builtin: Option<Builtin>,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub stdin: Option<Vec<u8>>,
    /// When it is stopped (never later than the step's deadline for host work).
    pub deadline: Instant,
}

impl HostCommand<'_> {
    /// A builtin file operation.
    pub fn builtin(op: Builtin, stdin: Option<Vec<u8>>, deadline: Instant) -> Self {
        HostCommand {
            program: Path::new("/"),
            builtin: Some(op),
            args: &[],
            env: &[],
            stdin,
            deadline,
        }
    }
}

/// How a host command ended and what it wrote.
pub struct HostOutput {
    pub status: ExitInfo,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Whose command a launch is.
enum Origin {
    /// The worker's: its policy, its network, its output logged.
    Worker,
    /// The host's own: no network, executing only its program (or, for a
    /// builtin, nothing), output returned.
    Host(Option<Builtin>),
}

fn builtin_name(op: &Builtin) -> &'static str {
    match op {
        Builtin::WriteFile { .. } => "write-file",
        Builtin::CopyFile { .. } => "copy-file",
        Builtin::Remove { .. } => "remove",
    }
}

/// The subprocess capability of one step.
pub struct Subprocesses {
    policy: ExecPolicy,
    setup: Setup,
    live: LiveGroups,
    denials: Vec<Denial>,
    spawned: u64,
    /// Processes killed for exceeding the output cap.
    output_limit_hits: Arc<std::sync::atomic::AtomicU64>,
    /// Output read from the step's processes and not yet taken.
    unread: Arc<process::Unread>,
    servers: Servers,
}

/// The fork servers and control groups of a step's capability: made at its
/// first subprocess, dropped (everything left in them killed) with it.
#[derive(Default)]
struct Servers {
    /// One per environment (usually one; another only when a launch needs
    /// other read or write trees, as a program in a directory of its own
    /// does). Kept to the step's end: stopping one would stop what it runs.
    zygotes: Vec<zygote::Zygote>,
    /// The step's control groups (made with its first fork server, where
    /// the host may): dropped after the servers, killing what is left.
    cgroups: Option<Option<cgroup::StepCgroups>>,
}

/// Denials of one step kept for its outcome (every one is an event).
const MAX_DENIALS: usize = 32;

/// Largest scratch file a worker may write.
pub const MAX_SCRATCH_BYTES: usize = 4 * 1024 * 1024;

impl Subprocesses {
    /// A capability that refuses every command: a kind's `describe` runs
    /// with it, outside any step (no worktree, no home, no processes).
    pub fn deny_all(logs: Arc<LogSession>, sandbox: crate::config::SandboxConfig) -> Self {
        let nowhere = PathBuf::from("/nonexistent");
        let now = Instant::now();
        Subprocesses::new(
            ExecPolicy::default(),
            Setup {
                worktree: nowhere.clone(),
                base_env: BTreeMap::new(),
                deadline: now,
                deadline_host: now,
                output_cap: 0,
                max_processes: 0,
                logs,
                confinement: Confinement {
                    sandbox,
                    home: nowhere,
                    user: None,
                    lend: Vec::new(),
                    namespace: None,
                    probe: Default::default(),
                },
            },
        )
    }

    pub fn new(policy: ExecPolicy, setup: Setup) -> Self {
        Subprocesses {
            policy,
            setup,
            live: LiveGroups::default(),
            denials: Vec::new(),
            spawned: 0,
            output_limit_hits: Arc::default(),
            unread: Arc::default(),
            servers: Servers::default(),
        }
    }

    /// Start `spec` through the fork server of its environment (started
    /// now if the step has none running for it).
    async fn start(
        &mut self,
        spec: &baa_launch::LaunchSpec,
        env: &BTreeMap<String, String>,
        stdin: bool,
    ) -> Result<zygote::Launched, launcher::Refusal> {
        let environment = spec.environment();
        self.servers.zygotes.retain_mut(|z| z.alive());
        let found = self
            .servers
            .zygotes
            .iter()
            .position(|z| z.environment() == &environment);
        let server = match found {
            Some(i) => self.servers.zygotes.remove(i),
            None => {
                let server = zygote::Zygote::start(environment)?;
                let max = self.setup.confinement.sandbox.processes;
                let cgroups = self
                    .servers
                    .cgroups
                    .get_or_insert_with(|| cgroup::StepCgroups::create(max));
                if let (Some(groups), Some(pid)) = (cgroups.as_ref(), server.pid()) {
                    groups.join(pid).map_err(|e| launcher::Refusal {
                        stage: Stage::Cgroup,
                        message: format!("the step's fork server cannot join its cgroup: {e}"),
                    })?;
                }
                server
            }
        };
        let launched = server.launch(spec, env, stdin).await;
        self.servers.zygotes.push(server);
        launched
    }

    /// How many subprocesses were killed for exceeding the output cap.
    pub fn output_limit_hits(&self) -> u64 {
        self.output_limit_hits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Write a scratch file for a subprocess argument; returns its path.
    /// The file is written by the launcher as the step's user, inside its
    /// confinement: a link planted in the scratch directory cannot turn it
    /// into a write elsewhere.
    pub async fn scratch_file(
        &mut self,
        name: &str,
        contents: Vec<u8>,
    ) -> Result<String, SpawnError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(SpawnError::Denied(Denial::never(
                DenialReason::Argument,
                format!(
                    "scratch file name `{}` must be a file name of letters, digits, `.`, `-` and `_`",
                    crate::bounds::cut(name, 128)
                ),
            )));
        }
        if contents.len() > MAX_SCRATCH_BYTES {
            return Err(SpawnError::Denied(Denial::never(
                DenialReason::Size,
                format!(
                    "scratch file `{name}` is {} bytes; the limit is {MAX_SCRATCH_BYTES}",
                    contents.len()
                ),
            )));
        }
        let path = self.scratch_dir()?.join(name);
        let out = self
            .run_host(HostCommand::builtin(
                Builtin::WriteFile { path: path.clone() },
                Some(contents),
                self.setup.deadline,
            ))
            .await?;
        if out.status.code != Some(0) {
            return Err(SpawnError::Io(format!(
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(path.display().to_string())
    }

    /// Where scratch files and the host's temporary files for subprocesses
    /// go: `tmp` in the subprocesses' home.
    pub fn scratch_dir(&self) -> Result<PathBuf, SpawnError> {
        let lease = self
            .setup
            .confinement
            .lease(
                self.policy.write_paths(),
                self.setup.deadline_host.into_std(),
            )
            .map_err(|e| SpawnError::Io(format!("sandbox user: {e}")))?;
        Ok(self.setup.confinement.home(lease.as_deref()).join("tmp"))
    }

    /// The last moment the host's own commands for this step may run.
    pub fn deadline_host(&self) -> Instant {
        self.setup.deadline_host
    }

    /// Replace the policy (the kind's grants are known once it described itself).
    pub fn set_policy(&mut self, policy: ExecPolicy) {
        self.policy = policy;
    }

    /// How this step's subprocesses are confined, for the run's metadata.
    pub fn confinement_record(&self) -> crate::contracts::ConfinementRecord {
        let cgroup = self.servers.cgroups.as_ref().map(Option::is_some);
        self.setup.confinement.record(&self.policy, cgroup)
    }

    /// The processes to stop when the step ends.
    pub fn live_groups(&self) -> LiveGroups {
        self.live.clone()
    }

    /// Every denial of this step, in order.
    pub fn denials(&self) -> &[Denial] {
        &self.denials
    }

    pub fn spawned(&self) -> u64 {
        self.spawned
    }

    /// Record a refused spawn as an event and a denial; returns the denial.
    fn refuse(&mut self, cmd: &SpawnRequest, denial: Denial) -> Denial {
        self.setup.logs.host(
            EventLevel::Warn,
            format!("denied `{}`: {}", cmd.program, denial.message),
            HostEvent::SubprocessDenied {
                program: cmd.program.clone(),
                args: record_args(&cmd.args),
                cwd: cmd.cwd.clone(),
                reason: denial.message.clone(),
                denial: denial.reason,
                operator_can_grant: denial.grant.clone(),
            },
        );
        self.note(&denial);
        denial
    }

    /// Keep `denial` for the step's outcome (the first [`MAX_DENIALS`]).
    fn note(&mut self, denial: &Denial) {
        if self.denials.len() < MAX_DENIALS {
            self.denials.push(denial.clone());
        }
    }

    /// Check `cmd` against the policy and start it, confined.
    pub async fn spawn(&mut self, cmd: SpawnRequest) -> Result<ProcessHandle, SpawnError> {
        // Refused before anything of it is copied into a record.
        if let Err(why) = check_size(&cmd) {
            let denial = Denial::never(DenialReason::Size, why);
            self.note(&denial);
            return Err(SpawnError::Denied(denial));
        }
        let allowed = match self.policy.check(&cmd.program, &cmd.args, &cmd.env) {
            Ok(allowed) => allowed,
            Err(denial) => return Err(SpawnError::Denied(self.refuse(&cmd, denial))),
        };
        // A program inside the worktree is the worker's to rewrite: never run
        // one, whatever the grant says.
        let canonical = allowed.path.canonicalize().unwrap_or(allowed.path.clone());
        if canonical.starts_with(&self.setup.worktree) {
            let why = format!(
                "program `{}` lies inside the worktree; only programs installed outside it may run",
                allowed.path.display()
            );
            let denial = Denial::never(DenialReason::InsideWorktree, why);
            return Err(SpawnError::Denied(self.refuse(&cmd, denial)));
        }
        let cwd = match resolve_cwd(&self.setup.worktree, cmd.cwd.as_deref()) {
            Ok(cwd) => cwd,
            Err(why) => {
                let denial = Denial::never(DenialReason::Cwd, why);
                return Err(SpawnError::Denied(self.refuse(&cmd, denial)));
            }
        };
        let now = Instant::now();
        let deadline = match cmd.timeout_ms {
            Some(ms) => self.setup.deadline.min(now + Duration::from_millis(ms)),
            None => self.setup.deadline,
        };
        if deadline <= now {
            return Err(SpawnError::Denied(Denial::never(
                DenialReason::TimeUp,
                "the step's time is up: no new subprocess may start",
            )));
        }
        if self.live.len() >= self.setup.max_processes {
            let why = format!(
                "{} subprocesses are already running; the limit is {} (limits.max-processes)",
                self.live.len(),
                self.setup.max_processes
            );
            let denial = Denial::never(DenialReason::ProcessLimit, why);
            return Err(SpawnError::Denied(self.refuse(&cmd, denial)));
        }
        self.setup.logs.host(
            EventLevel::Debug,
            format!("allowed `{}`", display_command(&allowed.path, &cmd.args)),
            HostEvent::SubprocessAllowed {
                program: allowed.path.display().to_string(),
                args: record_args(&cmd.args),
                cwd: cmd.cwd.clone(),
            },
        );
        self.launch(&allowed.path, &cwd, cmd, deadline, Origin::Worker)
            .await
    }

    /// Run a command of the host's own (a git snapshot, a builtin file
    /// operation) to completion inside the step's confinement, as the
    /// step's user, without the network, executing nothing but its own
    /// program (and that program's helpers), by `command.deadline` at the
    /// latest. Its output is returned, not logged.
    pub async fn run_host(&mut self, command: HostCommand<'_>) -> Result<HostOutput, SpawnError> {
        let cmd = SpawnRequest {
            program: match &command.builtin {
                Some(op) => format!("baa-launch {}", builtin_name(op)),
                None => command.program.display().to_string(),
            },
            args: command.args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: command
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_ms: None,
            stdin: command.stdin,
        };
        let deadline = command.deadline.min(self.setup.deadline_host);
        if deadline <= Instant::now() {
            return Err(SpawnError::Denied(Denial::never(
                DenialReason::TimeUp,
                "the step's time is up: the host runs nothing more for it",
            )));
        }
        let worktree = self.setup.worktree.clone();
        let mut process = self
            .launch(
                command.program,
                &worktree,
                cmd,
                deadline,
                Origin::Host(command.builtin),
            )
            .await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match process.next().await {
                Chunk::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                Chunk::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                Chunk::Exited(status) => {
                    return Ok(HostOutput {
                        status,
                        stdout,
                        stderr,
                    })
                }
            }
        }
    }

    async fn launch(
        &mut self,
        program: &Path,
        cwd: &Path,
        cmd: SpawnRequest,
        deadline: Instant,
        origin: Origin,
    ) -> Result<ProcessHandle, SpawnError> {
        let for_worker = matches!(origin, Origin::Worker);
        let builtin = match origin {
            Origin::Host(builtin) => builtin,
            Origin::Worker => None,
        };
        let is_builtin = builtin.is_some();
        let lease = self.lease_for(program, is_builtin, &cmd)?;
        let confinement = &self.setup.confinement;
        let user_namespace = confinement
            .user_namespace()
            .map_err(|e| SpawnError::Io(format!("sandbox user namespace: {e}")))?;
        let env = self.child_env(lease.as_deref(), for_worker, &cmd);
        let rel_cwd = cwd
            .strip_prefix(&self.setup.worktree)
            .unwrap_or(Path::new(""));
        let execute = if is_builtin {
            Some(Vec::new())
        } else if for_worker {
            self.policy.executables()
        } else {
            Some(executables::needed_to_run(program))
        };
        let spec = confinement.spec(
            &confinement::Launch {
                program,
                args: &cmd.args,
                worktree: &self.setup.worktree,
                cwd: rel_cwd,
                policy: &self.policy,
                for_worker,
                seconds_left: deadline.saturating_duration_since(Instant::now()).as_secs() + 1,
                execute,
                builtin,
                user_namespace,
            },
            lease.as_deref(),
        );
        let launched = match self.start(&spec, &env, cmd.stdin.is_some()).await {
            Ok(launched) => launched,
            Err(refusal) => return Err(self.refused(&cmd, refusal)),
        };
        // A builtin runs no program: it is shown by its name.
        let shown = if is_builtin {
            PathBuf::from(&cmd.program)
        } else {
            program.to_path_buf()
        };
        self.started_event(&launched, &shown, cwd, &cmd, &env, for_worker);
        let pid = launched.pid.max(0) as u32;
        let supervisor = launched.supervisor;
        self.spawned += 1;
        let lifeline = process::Lifeline::new(launched.lifeline);
        self.live.insert(supervisor as i32, lifeline.clone());
        Ok(process::start(
            process::Started {
                stdin: launched.stdin,
                stdout: launched.stdout,
                stderr: launched.stderr,
                report: launched.report,
                pid,
                supervisor,
                lifeline,
            },
            cmd.stdin,
            process::Limits {
                deadline,
                step_deadline: self.setup.deadline,
                output_cap: self.setup.output_cap,
                log_output: for_worker,
                output_limit_hits: self.output_limit_hits.clone(),
                kill_grace: Duration::from_millis(self.setup.confinement.sandbox.kill_grace_ms),
            },
            self.setup.logs.clone(),
            self.live.clone(),
            self.unread.clone(),
        ))
    }

    /// The step's dedicated user for a launch (none without one): its
    /// trees lent, the files the worker made through WASI handed over, and
    /// `program` reachable by it (a builtin runs none).
    fn lease_for(
        &mut self,
        program: &Path,
        is_builtin: bool,
        cmd: &SpawnRequest,
    ) -> Result<Option<Arc<user::UserLease>>, SpawnError> {
        let until = self.setup.deadline_host.into_std();
        let lease = self
            .setup
            .confinement
            .lease(self.policy.write_paths(), until)
            .map_err(|e| SpawnError::Io(format!("sandbox user: {e}")))?;
        let Some(lease) = lease else {
            return Ok(None);
        };
        // A program the user cannot reach would start (the launcher opens
        // it as root) but fail as soon as it looks at its own path.
        if !is_builtin {
            if let Err(why) = user::check_reachable(program, lease.user()) {
                let denial = Denial {
                    reason: DenialReason::Program,
                    message: why.to_string(),
                    grant: Some(format!(
                        "install `{}` where every user can reach it",
                        program.display()
                    )),
                };
                return Err(SpawnError::Denied(self.refuse(cmd, denial)));
            }
        }
        // Files the worker created through WASI belong to the host.
        lease
            .sync(until)
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        Ok(Some(lease))
    }

    /// The complete environment of a child: the step's base, its HOME and
    /// TMPDIR, git's overrides, then the command's own variables.
    fn child_env(
        &self,
        lease: Option<&user::UserLease>,
        for_worker: bool,
        cmd: &SpawnRequest,
    ) -> BTreeMap<String, String> {
        let mut env = self.setup.base_env.clone();
        let home = self.setup.confinement.home(lease).display().to_string();
        env.insert("TMPDIR".into(), format!("{home}/tmp"));
        env.insert("HOME".into(), home);
        // Whatever the repository configures, the git of the host or of a
        // kind that may execute only what it was granted runs no program of
        // the repository's (a kind granted a shell runs what it likes).
        let view = lease.is_some_and(|l| l.has_views());
        let overrides = !for_worker || self.policy.executables().is_some();
        env.extend(policy::git_env(overrides, view));
        env.extend(cmd.env.iter().cloned());
        env
    }

    /// What the launcher's refusal means for the worker: a bad cwd or a
    /// kernel without the required Landlock are denials (the second one
    /// the operator can lift); anything else is an I/O failure, logged.
    fn refused(&mut self, cmd: &SpawnRequest, refusal: launcher::Refusal) -> SpawnError {
        let why = format!("{} ({})", refusal.message, refusal.stage);
        match refusal.stage {
            Stage::Cwd => {
                SpawnError::Denied(self.refuse(cmd, Denial::never(DenialReason::Cwd, why)))
            }
            Stage::Landlock => {
                let denial = Denial {
                    reason: DenialReason::Confinement,
                    message: why,
                    grant: Some(
                        "[sandbox] landlock = \"optional\" (run subprocesses without Landlock on this kernel)"
                            .to_string(),
                    ),
                };
                SpawnError::Denied(self.refuse(cmd, denial))
            }
            _ => {
                self.setup.logs.host(
                    EventLevel::Error,
                    format!("could not start `{}`: {why}", cmd.program),
                    HostEvent::SubprocessFailed {
                        stage: refusal.stage.to_string(),
                        message: refusal.message,
                    },
                );
                SpawnError::Io(why)
            }
        }
    }

    /// The `subprocess.started` event (debug level for the host's own).
    fn started_event(
        &self,
        launched: &zygote::Launched,
        shown: &Path,
        cwd: &Path,
        cmd: &SpawnRequest,
        env: &BTreeMap<String, String>,
        for_worker: bool,
    ) {
        let pid = launched.pid.max(0) as u32;
        let network = match (for_worker, self.policy.network()) {
            (true, policy::Network::TcpPorts(ports)) => json!({ "tcpConnect": ports }),
            (true, policy::Network::Unrestricted) => json!("unrestricted"),
            _ => json!("none"),
        };
        self.setup.logs.host(
            if for_worker {
                EventLevel::Info
            } else {
                EventLevel::Debug
            },
            format!(
                "started `{}` (pid {pid})",
                display_command(shown, &cmd.args)
            ),
            HostEvent::SubprocessStarted {
                pid,
                supervisor_pid: launched.supervisor,
                program: shown.display().to_string(),
                args: record_args(&cmd.args),
                cwd: cwd.display().to_string(),
                env_names: env.keys().cloned().collect(),
                network,
                confinement: serde_json::to_value(&launched.applied).unwrap_or_default(),
                for_worker,
                start_time: process_start_time(pid),
            },
        );
    }
}

/// A command within the bounds a worker may hand over.
fn check_size(cmd: &SpawnRequest) -> Result<(), String> {
    use crate::bounds::{ARG_BYTES, COMMAND_ARGS, COMMAND_BYTES, PATH_BYTES, STDIN_BYTES};
    let bytes = cmd.program.len()
        + cmd.cwd.as_ref().map_or(0, String::len)
        + cmd.args.iter().map(String::len).sum::<usize>()
        + cmd
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if cmd.args.len() > COMMAND_ARGS || bytes > COMMAND_BYTES {
        return Err(format!(
            "the command has {} arguments and {bytes} bytes of program, arguments, environment and cwd; the limits are {COMMAND_ARGS} and {COMMAND_BYTES}",
            cmd.args.len()
        ));
    }
    let long = [cmd.program.as_str(), cmd.cwd.as_deref().unwrap_or_default()]
        .into_iter()
        .any(|s| s.len() > PATH_BYTES);
    if long || cmd.args.iter().any(|a| a.len() > ARG_BYTES) {
        return Err(format!(
            "the program or cwd is longer than {PATH_BYTES} bytes, or an argument longer than {ARG_BYTES}"
        ));
    }
    let stdin = cmd.stdin.as_ref().map_or(0, Vec::len);
    if stdin > STDIN_BYTES {
        return Err(format!(
            "stdin of {stdin} bytes exceeds the limit of {STDIN_BYTES}"
        ));
    }
    Ok(())
}

/// A command's arguments as its events record them: the first 64, each
/// cut to 1 KiB.
fn record_args(args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = args
        .iter()
        .take(64)
        .map(|a| crate::bounds::cut(a, 1024))
        .collect();
    if args.len() > 64 {
        out.push(format!("… ({} more)", args.len() - 64));
    }
    out
}

fn display_command(program: &Path, args: &[String]) -> String {
    let mut out = program.display().to_string();
    for arg in args {
        out.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            out.push_str(&format!("{arg:?}"));
        } else {
            out.push_str(arg);
        }
    }
    out
}

/// Check a worker-given cwd (relative to the worktree): it must resolve to
/// a directory beneath the worktree. It is resolved with `openat2`
/// (`RESOLVE_BENEATH`) from the worktree, so a link out of it fails before
/// anything outside is looked at (no answer tells the step whether a path
/// it cannot read exists); the launcher resolves it the same way again.
fn resolve_cwd(worktree: &Path, cwd: Option<&str>) -> Result<PathBuf, String> {
    let Some(rel) = cwd.filter(|c| !c.is_empty() && *c != ".") else {
        return Ok(worktree.to_path_buf());
    };
    let rel_path = Path::new(rel);
    if rel.contains('\0') {
        return Err("cwd contains a NUL byte".into());
    }
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!(
            "cwd `{rel}` must be a relative path inside the worktree, without `..`"
        ));
    }
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root = rustix::fs::open(
        worktree,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("the worktree: {e}"))?;
    rustix::fs::openat2(
        &root,
        rel_path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::XDEV => format!("cwd `{rel}` resolves outside the worktree"),
        rustix::io::Errno::NOTDIR => format!("cwd `{rel}` is not a directory"),
        e => format!("cwd `{rel}`: {e}"),
    })?;
    Ok(worktree.join(rel_path))
}
