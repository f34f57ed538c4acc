//! The one place that launches subprocesses for workers: policy check, cwd
//! inside the worktree, scrubbed environment, timeout, output cap, output
//! streamed into the run logs and back to the worker, and the whole process
//! group killed when the process or the step ends.

pub mod policy;
mod process;

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

pub use policy::ExecPolicy;
pub use process::ProcessHandle;

use crate::contracts::{EventLevel, EventSource};
use crate::logs::LogSession;
use crate::sandbox::bindings::baa::worker::subprocess::{Command, ExitStatus, Output, SpawnError};

/// Process groups of a step that may still have members.
#[derive(Debug, Default, Clone)]
pub struct LiveGroups(Arc<Mutex<HashSet<i32>>>);

impl LiveGroups {
    fn insert(&self, pgid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pgid);
    }

    /// How many groups are registered.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no group is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SIGKILL every group still registered; returns how many.
    pub fn kill_all(&self) -> usize {
        let groups: Vec<i32> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for pgid in &groups {
            kill_group(*pgid);
        }
        groups.len()
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

/// The subprocess capability of one step.
pub struct Subprocesses {
    policy: ExecPolicy,
    worktree: PathBuf,
    base_env: BTreeMap<String, String>,
    deadline: Instant,
    output_cap: u64,
    logs: Arc<LogSession>,
    live: LiveGroups,
    denials: Vec<String>,
    spawned: u64,
    scratch_dir: PathBuf,
    max_processes: usize,
    /// Processes killed for exceeding the output cap.
    output_limit_hits: Arc<std::sync::atomic::AtomicU64>,
}

/// Largest scratch file a worker may write.
pub const MAX_SCRATCH_BYTES: usize = 4 * 1024 * 1024;

impl Subprocesses {
    /// `worktree` must be canonical. `base_env` is the complete environment
    /// every child starts from (nothing of the host's own is added).
    /// `scratch_dir` receives [`Subprocesses::scratch_file`]s.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: ExecPolicy,
        worktree: PathBuf,
        scratch_dir: PathBuf,
        base_env: BTreeMap<String, String>,
        deadline: Instant,
        output_cap: u64,
        logs: Arc<LogSession>,
    ) -> Self {
        Subprocesses {
            policy,
            worktree,
            base_env,
            deadline,
            output_cap,
            logs,
            live: LiveGroups::default(),
            denials: Vec::new(),
            spawned: 0,
            scratch_dir,
            max_processes: 32,
            output_limit_hits: Arc::default(),
        }
    }

    /// Allow at most `max` subprocesses running at once.
    pub fn set_max_processes(&mut self, max: usize) {
        self.max_processes = max;
    }

    /// How many subprocesses were killed for exceeding the output cap.
    pub fn output_limit_hits(&self) -> u64 {
        self.output_limit_hits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Write a scratch file for a subprocess argument; returns its path.
    pub fn scratch_file(&mut self, name: &str, contents: &[u8]) -> Result<String, SpawnError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(SpawnError::Denied(format!(
                "scratch file name `{name}` must be a file name of letters, digits, `.`, `-` and `_`"
            )));
        }
        if contents.len() > MAX_SCRATCH_BYTES {
            return Err(SpawnError::Denied(format!(
                "scratch file `{name}` is {} bytes; the limit is {MAX_SCRATCH_BYTES}",
                contents.len()
            )));
        }
        let path = self.scratch_dir.join(name);
        crate::fsutil::write_atomic(&path, contents)
            .map_err(|e| SpawnError::Io(format!("{}: {e}", path.display())))?;
        Ok(path.display().to_string())
    }

    /// Where scratch files and the host's temporary files go.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }

    /// Replace the policy (the kind's grants are known once it described itself).
    pub fn set_policy(&mut self, policy: ExecPolicy) {
        self.policy = policy;
    }

    /// The groups to kill when the step ends.
    pub fn live_groups(&self) -> LiveGroups {
        self.live.clone()
    }

    /// Every denial of this step, in order.
    pub fn denials(&self) -> &[String] {
        &self.denials
    }

    pub fn spawned(&self) -> u64 {
        self.spawned
    }

    /// Record a refused spawn as an event and a denial.
    fn refuse(&mut self, cmd: &Command, why: String) -> String {
        self.logs.event(
            EventSource::Host,
            EventLevel::Warn,
            "subprocess.denied",
            format!("denied `{}`: {why}", cmd.program),
            Some(
                json!({ "program": cmd.program, "args": cmd.args, "cwd": cmd.cwd, "reason": why }),
            ),
        );
        self.denials.push(why.clone());
        why
    }

    /// Check `cmd` against the policy and start it.
    pub fn spawn(&mut self, cmd: Command) -> Result<ProcessHandle, SpawnError> {
        let allowed = match self.policy.check(&cmd.program, &cmd.args, &cmd.env) {
            Ok(allowed) => allowed,
            Err(why) => return Err(SpawnError::Denied(self.refuse(&cmd, why))),
        };
        let cwd = match resolve_cwd(&self.worktree, cmd.cwd.as_deref()) {
            Ok(cwd) => cwd,
            Err(why) => return Err(SpawnError::InvalidCwd(self.refuse(&cmd, why))),
        };
        let now = Instant::now();
        let deadline = match cmd.timeout_ms {
            Some(ms) => self.deadline.min(now + Duration::from_millis(ms)),
            None => self.deadline,
        };
        if deadline <= now {
            return Err(SpawnError::Denied(
                "the step's time is up: no new subprocess may start".into(),
            ));
        }
        if self.live.len() >= self.max_processes {
            let why = format!(
                "{} subprocesses are already running; the limit is {} (limits.max-processes)",
                self.live.len(),
                self.max_processes
            );
            return Err(SpawnError::Denied(self.refuse(&cmd, why)));
        }
        self.launch(&allowed.path, &cwd, cmd, deadline, true)
    }

    /// Run a command of the host's own (e.g. a git snapshot) to completion
    /// with the same hygiene as a worker's: scrubbed environment, process
    /// group, no network, a timeout. Its output is returned, not logged.
    pub async fn run_host(
        &mut self,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), SpawnError> {
        let cmd = Command {
            program: program.display().to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_ms: None,
            stdin: None,
        };
        let worktree = self.worktree.clone();
        let mut process = self.launch(program, &worktree, cmd, Instant::now() + timeout, false)?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match process.next().await {
                Output::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                Output::Stderr(bytes) => stderr.extend_from_slice(&bytes),
                Output::Exited(status) => return Ok((status, stdout, stderr)),
            }
        }
    }

    fn launch(
        &mut self,
        program: &Path,
        cwd: &Path,
        cmd: Command,
        deadline: Instant,
        log_output: bool,
    ) -> Result<ProcessHandle, SpawnError> {
        let mut env = self.base_env.clone();
        env.extend(cmd.env.iter().cloned());
        let mut child = tokio::process::Command::new(program);
        child
            .args(&cmd.args)
            .current_dir(cwd)
            .env_clear()
            .envs(&env)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let network = if self.policy.network() && log_output {
            "granted"
        } else {
            // No network for kinds that were not granted it (nor for the
            // host's own commands): the child gets a network namespace of its
            // own with nothing but a down loopback.
            // SAFETY: runs in the forked child before exec and only makes a
            // raw system call.
            unsafe {
                child.pre_exec(isolate_network);
            }
            "isolated"
        };
        let child = child.spawn().map_err(|e| {
            let why = format!("{}: {e}", program.display());
            self.logs.event(
                EventSource::Host,
                EventLevel::Error,
                "subprocess.failed",
                format!("could not start `{}`: {e}", cmd.program),
                None,
            );
            SpawnError::Io(why)
        })?;
        let pid = child.id().unwrap_or(0);
        let start_time = process_start_time(pid);
        self.spawned += 1;
        self.live.insert(pid as i32);
        self.logs.event(
            EventSource::Host,
            if log_output {
                EventLevel::Info
            } else {
                EventLevel::Debug
            },
            "subprocess.started",
            format!(
                "started `{}` (pid {pid})",
                display_command(program, &cmd.args)
            ),
            Some(json!({
                "pid": pid,
                "program": program.display().to_string(),
                "args": cmd.args,
                "cwd": cwd.display().to_string(),
                "envNames": env.keys().collect::<Vec<_>>(),
                "network": network,
                "forWorker": log_output,
                "startTime": start_time,
            })),
        );
        Ok(process::start(
            child,
            cmd.stdin,
            process::Limits {
                deadline,
                step_deadline: self.deadline,
                output_cap: self.output_cap,
                log_output,
                output_limit_hits: self.output_limit_hits.clone(),
            },
            self.logs.clone(),
            self.live.clone(),
        ))
    }
}

/// Move the calling (child) process into a new, empty network namespace;
/// without the privilege for that, into a new user namespace with one.
fn isolate_network() -> std::io::Result<()> {
    use rustix::thread::{unshare_unsafe, UnshareFlags};
    // SAFETY: called only in a freshly forked, single-threaded child before
    // exec, where changing namespaces cannot confuse other threads.
    unsafe {
        match unshare_unsafe(UnshareFlags::NEWNET) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::PERM) => {
                unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET)
                    .map_err(std::io::Error::from)
            }
            Err(e) => Err(e.into()),
        }
    }
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

/// Resolve a worker-given cwd (relative to the worktree) to a directory that
/// is inside the worktree after following symlinks.
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
    let resolved = worktree
        .join(rel_path)
        .canonicalize()
        .map_err(|e| format!("cwd `{rel}`: {e}"))?;
    if !resolved.starts_with(worktree) {
        return Err(format!("cwd `{rel}` resolves outside the worktree"));
    }
    if !resolved.is_dir() {
        return Err(format!("cwd `{rel}` is not a directory"));
    }
    Ok(resolved)
}

mod host {
    //! The `subprocess` WIT interface, implemented on the step's store data.
    use wasmtime::component::Resource;

    use super::ProcessHandle;
    use crate::sandbox::bindings::baa::worker::subprocess::{
        Command, Host, HostProcess, Output, SpawnError,
    };
    use crate::sandbox::state::StepState;

    impl Host for StepState {
        async fn spawn(
            &mut self,
            cmd: Command,
        ) -> wasmtime::Result<Result<Resource<ProcessHandle>, SpawnError>> {
            match self.host.subprocesses.spawn(cmd) {
                Ok(handle) => Ok(Ok(self.table.push(handle)?)),
                Err(e) => Ok(Err(e)),
            }
        }

        async fn scratch_file(
            &mut self,
            name: String,
            contents: Vec<u8>,
        ) -> wasmtime::Result<Result<String, SpawnError>> {
            Ok(self.host.subprocesses.scratch_file(&name, &contents))
        }
    }

    impl HostProcess for StepState {
        async fn pid(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<u32> {
            Ok(self.table.get(&process)?.pid())
        }

        async fn next(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<Output> {
            Ok(self.table.get_mut(&process)?.next().await)
        }

        async fn kill(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<()> {
            self.table.get(&process)?.kill();
            Ok(())
        }

        async fn drop(&mut self, process: Resource<ProcessHandle>) -> wasmtime::Result<()> {
            // Dropping the handle kills the group if it is still running.
            self.table.delete(process)?;
            Ok(())
        }
    }
}
