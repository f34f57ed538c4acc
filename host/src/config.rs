//! The operator's configuration: plugin directories, per-kind grants and
//! limits, read from a TOML file (`baa-runner --config FILE`) or built in code.
//!
//! ```toml
//! plugin-dirs = ["/opt/baa/plugins"]
//!
//! [limits]
//! memory-mib = 512
//!
//! [kinds.lint]            # a third-party kind: grants are deny-by-default
//! programs = ["cargo"]
//! env = ["CARGO_HOME"]
//!
//! [kinds.shell]           # a built-in kind: added to its built-in grant
//! env = ["CI"]            # (`replace = true` would replace it)
//!
//! [concurrency]           # steps over a limit wait for a slot
//! max-steps = 16
//! kinds = { codex = 2 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the operator allows one worker kind to use. A kind gets only what it
/// requests in `describe` *and* the operator grants here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KindGrant {
    /// Programs the kind's subprocesses may run: names (resolved in
    /// `/usr/local/bin:/usr/bin:/bin` when the policy loads) or absolute paths.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Environment variable names the kind may pass to its subprocesses.
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether the kind's subprocesses may use the network: IPv4/IPv6
    /// sockets, TCP connections only to `tcp-connect` ports (Landlock) unless
    /// `unrestricted-tcp` says otherwise. UDP cannot be narrowed by port.
    #[serde(default)]
    pub network: bool,
    /// TCP ports a kind granted the network may connect to.
    #[serde(default)]
    pub tcp_connect: Vec<u16>,
    /// Let a kind granted the network connect to any TCP port.
    #[serde(default)]
    pub unrestricted_tcp: bool,
    /// Trees the kind's subprocesses may read (besides the system paths).
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// Trees the kind's subprocesses may write besides the worktree. With a
    /// dedicated sandbox user they are lent to that user for the step.
    #[serde(default)]
    pub write_paths: Vec<PathBuf>,
    /// Let the kind's subprocesses create user namespaces to sandbox their
    /// own children (the Codex CLI does); Landlock and seccomp stay in force.
    #[serde(default)]
    pub nested_sandbox: bool,
    /// In a config file: this entry replaces the kind's built-in grant
    /// instead of adding to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

pub use crate::contracts::Capabilities;

impl KindGrant {
    /// The first entry of this grant naming `program`: the name itself,
    /// or an absolute path whose file name it is.
    pub fn grant_for(&self, program: &str) -> Option<&String> {
        self.programs.iter().find(|g| {
            *g == program
                || (Path::new(g.as_str()).is_absolute()
                    && Path::new(g.as_str()).file_name().and_then(|n| n.to_str()) == Some(program))
        })
    }

    /// The programs, variables and network of this grant, as a request.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            programs: self.programs.clone(),
            env: self.env.clone(),
            network: self.network,
        }
    }

    /// What `requested` asks for beyond this grant.
    pub fn missing(&self, requested: &Capabilities) -> Capabilities {
        Capabilities {
            programs: (requested.programs.iter())
                .filter(|p| self.grant_for(p).is_none())
                .cloned()
                .collect(),
            env: (requested.env.iter())
                .filter(|e| !self.env.contains(e))
                .cloned()
                .collect(),
            network: requested.network && !self.network,
        }
    }

    /// This grant widened by `more`: lists united (`more`'s entries first,
    /// so an operator's path for a program is the one used), switches or-ed.
    fn add(&mut self, more: KindGrant) {
        fn union<T: PartialEq>(into: &mut Vec<T>, more: Vec<T>) {
            let mut united = more;
            for item in std::mem::take(into) {
                if !united.contains(&item) {
                    united.push(item);
                }
            }
            *into = united;
        }
        union(&mut self.programs, more.programs);
        union(&mut self.env, more.env);
        union(&mut self.tcp_connect, more.tcp_connect);
        union(&mut self.read_paths, more.read_paths);
        union(&mut self.write_paths, more.write_paths);
        self.network |= more.network;
        self.unrestricted_tcp |= more.unrestricted_tcp;
        self.nested_sandbox |= more.nested_sandbox;
    }
}

/// Whether subprocesses may start when the kernel cannot confine them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    /// Refuse to start subprocesses without Landlock (the default).
    #[default]
    Required,
    /// Start them unconfined by Landlock when the kernel lacks it (recorded
    /// in every run's metadata).
    Optional,
}

/// Which user subprocesses run as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxUser {
    /// A dedicated unprivileged user per concurrent step when the host runs
    /// as root; the host's own user otherwise (the default).
    #[default]
    Auto,
    /// Always a dedicated user (the host must run as root).
    Dedicated,
    /// The host's own user, even when it is root.
    Current,
}

/// How a step's dedicated user writes the worktree and write paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorktreeView {
    /// An idmapped view where the file system takes one, chown lending
    /// elsewhere (the default).
    #[default]
    Auto,
    /// Always chown lending: ownership handed over and back (setuid and
    /// setgid bits of lent files are cleared by the kernel).
    Chown,
}

/// How worker subprocesses are confined (`[sandbox]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub landlock: LandlockMode,
    pub user: SandboxUser,
    /// First uid (and gid) of the dedicated users (default 61000).
    pub uid_base: u32,
    /// How many dedicated users, i.e. concurrent steps with subprocesses
    /// (default 1000).
    pub uid_count: u32,
    /// Where dedicated users' homes and leases live (default `/run/baa-runner`).
    pub state_dir: PathBuf,
    /// Trees every subprocess may read and execute.
    pub read_paths: Vec<PathBuf>,
    /// Between SIGTERM and SIGKILL for what a program leaves running, and
    /// for a tree being stopped (default 500 ms).
    pub kill_grace_ms: u64,
    /// CPU seconds per subprocess (default: the step's timeout).
    pub cpu_seconds: Option<u64>,
    /// Address space per process, in MiB (default: unlimited; JIT runtimes
    /// reserve far more than they use).
    pub address_space_mib: Option<u64>,
    /// Largest file a subprocess may write, in MiB (default 1024).
    pub file_size_mib: u64,
    /// Open descriptors per process (default 1024).
    pub open_files: u64,
    /// Processes of one step's dedicated user (default 256).
    pub processes: u64,
    /// How the dedicated user is lent the worktree (default `auto`).
    pub worktree_view: WorktreeView,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            landlock: LandlockMode::Required,
            user: SandboxUser::Auto,
            uid_base: 61000,
            uid_count: 1000,
            state_dir: PathBuf::from("/run/baa-runner"),
            read_paths: [
                "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            kill_grace_ms: 500,
            cpu_seconds: None,
            address_space_mib: None,
            file_size_mib: 1024,
            open_files: 1024,
            processes: 256,
            worktree_view: WorktreeView::Auto,
        }
    }
}

/// Resource limits of one step, armed before the worker is instantiated.
/// This is the one place the defaults are defined; each field documents its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory of the worker component, in MiB (default 256).
    pub memory_mib: u64,
    /// Output one subprocess may produce before it is killed (default 64 MiB).
    pub subprocess_output_bytes: u64,
    /// Largest plugin file the host will compile (default 32 MiB).
    pub plugin_file_bytes: u64,
    /// The one grace after `timeoutSec` (default 1000 ms): a guest waiting
    /// in a host call may return within its first half once its
    /// subprocesses were killed, the host's own work for the step
    /// (snapshots, the final git-diff) must end within three quarters, the
    /// last quarter is for the records; the step is `failed` with reason
    /// `timeout` whatever the guest returns. Guest code still computing at
    /// the deadline is interrupted within three epoch ticks.
    pub timeout_grace_ms: u64,
    /// Disk one step may fill with its logs, events, artifacts and
    /// checkpoints, in MiB (default 512). Past it the step ends `failed`
    /// with reason `disk-limit`; its records are still written.
    pub step_disk_mib: u64,
    /// WebAssembly stack of the worker, in KiB (default 1024); deeper
    /// recursion traps with a stack overflow.
    pub wasm_stack_kib: u64,
    /// Bytes of stdout (and of stderr) a step's log keeps (default 64 MiB):
    /// past it the log keeps its head and its last 64 KiB, marked truncated,
    /// and a worker writing more to its own stdout is stopped.
    pub log_stream_bytes: u64,
    /// Subprocesses one step may have running at once (default 32).
    pub max_processes: u32,
    /// Entries of the worker's resource table: open files, streams,
    /// processes (default 4096).
    pub resource_table_entries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 256,
            subprocess_output_bytes: 64 * 1024 * 1024,
            plugin_file_bytes: 32 * 1024 * 1024,
            timeout_grace_ms: 1000,
            step_disk_mib: 512,
            wasm_stack_kib: 1024,
            log_stream_bytes: 64 * 1024 * 1024,
            max_processes: 32,
            resource_table_entries: 4096,
        }
    }
}

/// How many steps execute at once (`[concurrency]`); a step over a limit
/// waits for a slot, with `step.queued` and `step.admitted` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Concurrency {
    /// Steps of the runner executing at once (default and most: 1000, the
    /// engine's instance slots).
    pub max_steps: u32,
    /// Steps of one worker kind executing at once (default: no limit of
    /// their own).
    pub kinds: BTreeMap<String, u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max_steps: POOL_STEPS,
            kinds: BTreeMap::new(),
        }
    }
}

/// Most steps of one runner executing at once (`concurrency.max-steps`):
/// the engine reserves an instance slot for each.
pub const POOL_STEPS: u32 = 1000;

/// The operator's configuration of a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunnerConfig {
    /// Directories searched for third-party `<kind>.wasm` files, in order.
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    /// Grants per worker kind. The built-in kinds have defaults (see
    /// [`RunnerConfig::default`]); a config file's entry adds to a kind's
    /// default, or replaces it with `replace = true`.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindGrant>,
    /// Confinement of every subprocess.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Keep compiled worker kinds on disk so later runs load instead of
    /// compiling (default true).
    #[serde(default = "yes")]
    pub compiled_cache: bool,
    /// Where (default `/var/cache/baa-runner/compiled` as root, else
    /// `~/.cache/baa-runner/compiled`); it must be writable only by this user.
    #[serde(default)]
    pub compiled_cache_dir: Option<PathBuf>,
    /// Most MiB of compiled code the cache keeps (default 1024); past it the
    /// least recently used entries are removed.
    #[serde(default = "compiled_cache_max_mib")]
    pub compiled_cache_max_mib: u64,
    /// How far run records survive a failure: `power-loss` (default: every
    /// record, checkpoint and closed log is fsynced) or `process-crash`
    /// (written whole, not fsynced: for run directories on tmpfs or
    /// throw-away machines).
    #[serde(default)]
    pub durability: crate::fsutil::Durability,
    /// Steps executing at once, per runner and per kind.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// How `baa-runner worker` takes part in a NATS JetStream cluster.
    #[serde(default)]
    pub cluster: ClusterSettings,
    /// When set, a step's `runtime.repoRoot` and `runtime.worktreePath`
    /// must lie inside one of these directories (after resolving symlinks).
    /// Required for `baa-runner worker`: whoever can publish to the queue
    /// names a step's paths.
    #[serde(default)]
    pub repo_roots: Vec<PathBuf>,
}

/// `[cluster]`: how this host takes part in a cluster (`baa-runner worker`).
///
/// ```toml
/// [cluster]
/// url = "nats://queue.internal:4222"
/// ack-wait-sec = 30     # silence after which another host takes a step
/// max-deliver = 8       # most hosts (deliveries) one step gets
/// kinds = ["shell"]     # serve only these (default: every runnable kind)
/// runs-dir = "/var/lib/baa-runner/cluster"
/// ```
/// A worker also needs the top-level `repo-roots`: the directories whose
/// repositories queued steps may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The NATS server (`--nats` overrides it).
    pub url: Option<String>,
    /// This host's name in the cluster (default: `<hostname>-<pid>`).
    pub host_name: Option<String>,
    /// Seconds a step's delivery may go without a sign of life from its
    /// host (sent every third of it while the step runs) before the queue
    /// gives it to another host (default 30).
    pub ack_wait_sec: u64,
    /// Most deliveries of one step (default 8); later redeliveries back
    /// off (one, two, then four times `ack-wait-sec`).
    pub max_deliver: u32,
    /// The kinds this host serves (default: every kind it can run and is
    /// granted what it requests).
    pub kinds: Option<Vec<String>>,
    /// Where this host keeps the run directories of the steps it takes
    /// (default: the default runs root's `cluster/`). A request's
    /// `runtime.runsRootDir` names a place on the conductor's machine: it
    /// is not used.
    pub runs_dir: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            url: None,
            host_name: None,
            ack_wait_sec: 30,
            max_deliver: 8,
            kinds: None,
            runs_dir: None,
        }
    }
}

fn compiled_cache_max_mib() -> u64 {
    DEFAULT_CACHE_MAX_MIB
}

/// The compiled cache's size when `compiled-cache-max-mib` is not set.
pub const DEFAULT_CACHE_MAX_MIB: u64 = 1024;

fn yes() -> bool {
    true
}

/// An entry that adds to a built-in grant cannot take away from it: a
/// switch the built-in grant turns on, set to `false`, is refused rather
/// than silently ignored.
fn refuse_narrowing(raw: &toml::Table, kind: &str, builtin: &KindGrant) -> Result<(), ConfigError> {
    let entry = raw
        .get("kinds")
        .and_then(|k| k.get(kind))
        .and_then(|e| e.as_table());
    let switches = [
        ("network", builtin.network),
        ("unrestricted-tcp", builtin.unrestricted_tcp),
        ("nested-sandbox", builtin.nested_sandbox),
    ];
    for (key, on) in switches {
        let off = entry.and_then(|e| e.get(key)).and_then(|v| v.as_bool()) == Some(false);
        if on && off {
            return Err(ConfigError::Setting {
                setting: format!("kinds.{kind}.{key}"),
                message: format!(
                    "`{key} = false` cannot narrow the built-in grant of `{kind}`, which turns it on: an entry adds to the built-in grant; add `replace = true` to write the whole grant yourself"
                ),
            });
        }
    }
    Ok(())
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config setting `{setting}` cannot be used: {message}")]
    Setting { setting: String, message: String },
}

impl Default for RunnerConfig {
    /// The built-in kinds' grants: `shell` may run `sh`; `git` may run `git`
    /// with author/committer identity variables; `codex` may run `codex`
    /// (`$BAA_CODEX_BIN` if set) with its home, API key variables and the
    /// network, and `git` with a scratch index for the turn's diff.
    fn default() -> Self {
        let grant = |programs: &[&str], env: &[&str], network| KindGrant {
            programs: programs.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            network,
            ..Default::default()
        };
        let mut kinds = BTreeMap::new();
        kinds.insert("shell".into(), grant(&["sh"], &[], false));
        kinds.insert(
            "git".into(),
            grant(
                &["git"],
                &[
                    "GIT_AUTHOR_NAME",
                    "GIT_AUTHOR_EMAIL",
                    "GIT_COMMITTER_NAME",
                    "GIT_COMMITTER_EMAIL",
                    "GIT_TERMINAL_PROMPT",
                ],
                false,
            ),
        );
        // The Codex CLI: `$BAA_CODEX_BIN` when the operator set it, else
        // `codex` on the system path.
        let codex = std::env::var("BAA_CODEX_BIN")
            .ok()
            .filter(|p| std::path::Path::new(p).is_absolute())
            .unwrap_or_else(|| "codex".into());
        let mut codex_grant = grant(
            // git: the diff of the turn, through a scratch index.
            &[codex.as_str(), "git"],
            &[
                "GIT_INDEX_FILE",
                "CODEX_HOME",
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
                "BAA_CODEX_API_KEY",
            ],
            true,
        );
        // Its model provider over HTTPS, and its own sandbox for the
        // commands it runs.
        codex_grant.tcp_connect = vec![443];
        codex_grant.nested_sandbox = true;
        kinds.insert("codex".into(), codex_grant);
        RunnerConfig {
            plugin_dirs: Vec::new(),
            limits: Limits::default(),
            kinds,
            sandbox: SandboxConfig::default(),
            compiled_cache: true,
            compiled_cache_dir: None,
            compiled_cache_max_mib: compiled_cache_max_mib(),
            durability: Default::default(),
            concurrency: Concurrency::default(),
            cluster: ClusterSettings::default(),
            repo_roots: Vec::new(),
        }
    }
}

impl RunnerConfig {
    /// Read a TOML file; its `[kinds.X]` entries add to the built-in grants
    /// of those kinds (or replace them, with `replace = true`).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: RunnerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let raw: toml::Table = toml::from_str(&text).unwrap_or_default();
        let mut kinds = RunnerConfig::default().kinds;
        for (name, mut grant) in file.kinds {
            match kinds.get_mut(&name) {
                Some(builtin) if !grant.replace => {
                    refuse_narrowing(&raw, &name, builtin)?;
                    builtin.add(grant)
                }
                _ => {
                    grant.replace = false;
                    kinds.insert(name, grant);
                }
            }
        }
        Ok(RunnerConfig {
            plugin_dirs: file.plugin_dirs,
            limits: file.limits,
            kinds,
            sandbox: file.sandbox,
            compiled_cache: file.compiled_cache,
            compiled_cache_dir: file.compiled_cache_dir,
            compiled_cache_max_mib: file.compiled_cache_max_mib,
            durability: file.durability,
            concurrency: file.concurrency,
            cluster: file.cluster,
            repo_roots: file.repo_roots,
        })
    }

    /// The operator's grant for `kind` (empty when none was configured).
    /// An entry added to a built-in grant comes before the built-in's own
    /// (the operator's choice of a program's path wins).
    pub fn grant(&self, kind: &str) -> KindGrant {
        self.kinds.get(kind).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<RunnerConfig, ConfigError> {
        let file = tempfile_path(text);
        let config = RunnerConfig::from_file(&file);
        let _ = std::fs::remove_file(&file);
        config
    }

    fn tempfile_path(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "baa-config-test-{}-{}.toml",
            std::process::id(),
            crate::fsutil::random_name()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_entry_adds_to_a_builtin_grant_its_programs_first() {
        let config =
            from_toml("[kinds.shell]\nprograms = [\"/bin/sh\", \"sh\"]\nenv = [\"CI\"]\n").unwrap();
        let shell = config.grant("shell");
        assert_eq!(shell.programs, ["/bin/sh", "sh"]);
        assert_eq!(shell.env, ["CI"]);
        assert_eq!(shell.grant_for("sh").map(String::as_str), Some("/bin/sh"));
    }

    #[test]
    fn replace_replaces_and_narrowing_without_it_is_refused() {
        let config = from_toml("[kinds.codex]\nreplace = true\nprograms = [\"codex\"]\n").unwrap();
        let codex = config.grant("codex");
        assert!(!codex.network && !codex.nested_sandbox && codex.env.is_empty());
        let refused = from_toml("[kinds.codex]\nnested-sandbox = false\n").unwrap_err();
        assert!(
            matches!(&refused, ConfigError::Setting { setting, .. } if setting == "kinds.codex.nested-sandbox"),
            "{refused}"
        );
        // Saying what is already on is no narrowing.
        assert!(from_toml("[kinds.codex]\nnetwork = true\n").is_ok());
    }

    #[test]
    fn missing_lists_what_a_request_asks_beyond_the_grant() {
        let grant = KindGrant {
            programs: vec!["/usr/bin/git".into()],
            env: vec!["A".into()],
            ..Default::default()
        };
        let requested = Capabilities {
            programs: vec!["git".into(), "curl".into()],
            env: vec!["A".into(), "B".into()],
            network: true,
        };
        let missing = grant.missing(&requested);
        assert_eq!(missing.programs, ["curl"]);
        assert_eq!(missing.env, ["B"]);
        assert!(missing.network && !missing.is_empty());
        assert_eq!(
            missing.config_lines(),
            ["programs = [\"curl\"]", "env = [\"B\"]", "network = true"]
        );
        assert!(grant.missing(&Capabilities::default()).is_empty());
    }
}
