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
    /// Whether the kind's subprocesses may use the network.
    #[serde(default)]
    pub network: bool,
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
    /// Extra time after `timeoutSec` for the guest to return after its
    /// subprocesses were killed, before it is interrupted (default 2000 ms).
    pub timeout_grace_ms: u64,
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
            timeout_grace_ms: 2000,
            wasm_stack_kib: 1024,
            log_stream_bytes: 64 * 1024 * 1024,
            max_processes: 32,
            resource_table_entries: 4096,
        }
    }
}

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
    /// [`RunnerConfig::default`]); an entry here replaces a kind's default.
    #[serde(default)]
    pub kinds: BTreeMap<String, KindGrant>,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
}

impl Default for RunnerConfig {
    /// The built-in kinds' grants: `shell` may run `sh`; `git` may run `git`
    /// with author/committer identity variables; `codex` may run `codex`
    /// (`$BAA_CODEX_BIN` if set) with its home, API key variables and the
    /// network.
    fn default() -> Self {
        let grant = |programs: &[&str], env: &[&str], network| KindGrant {
            programs: programs.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            network,
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
        kinds.insert(
            "codex".into(),
            grant(
                &[codex.as_str()],
                &[
                    "CODEX_HOME",
                    "OPENAI_API_KEY",
                    "OPENAI_BASE_URL",
                    "BAA_CODEX_API_KEY",
                ],
                true,
            ),
        );
        RunnerConfig {
            plugin_dirs: Vec::new(),
            limits: Limits::default(),
            kinds,
        }
    }
}

impl RunnerConfig {
    /// Read a TOML file; entries it names replace the defaults of those kinds.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: RunnerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut kinds = RunnerConfig::default().kinds;
        kinds.extend(file.kinds);
        Ok(RunnerConfig {
            plugin_dirs: file.plugin_dirs,
            limits: file.limits,
            kinds,
        })
    }

    /// The operator's grant for `kind` (empty when none was configured).
    pub fn grant(&self, kind: &str) -> KindGrant {
        self.kinds.get(kind).cloned().unwrap_or_default()
    }
}
