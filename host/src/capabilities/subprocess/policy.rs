//! The subprocess policy of one worker kind: which programs (resolved to
//! absolute paths when the policy loads), which arguments and which
//! environment variables. Deny by default.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::executables;
use super::{Denial, DenialReason};
use crate::config::{Capabilities, KindGrant};

pub use super::executables::SYSTEM_PATH;

/// The `PATH` given to subprocesses.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables that change how programs load or configure themselves; never
/// passed to a subprocess, whoever asks.
const NEVER_PASSED: &[&str] = &[
    "LD_",
    "DYLD_",
    "BASH_ENV",
    "ENV",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "PATH",
    "HOME",
    "GIT_CONFIG",
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_ASKPASS",
    "GIT_PAGER",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
    "GIT_NO_LAZY_FETCH",
    "GIT_ALLOW_PROTOCOL",
    "GIT_EXTERNAL_DIFF",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_PROXY_COMMAND",
    "NODE_OPTIONS",
    "PYTHONSTARTUP",
    "PERL5OPT",
];

/// Arguments refused for a program (by its file name), because they make it
/// run other programs or read configuration from elsewhere. Matched exactly,
/// as `<option>=<value>`, and for one-letter options also with the value
/// attached (`-Ixz`).
const REFUSED_ARGS: &[(&str, &[&str])] = &[
    (
        "git",
        &[
            "-c",
            "--config-env",
            "--exec-path",
            "--upload-pack",
            "--receive-pack",
            "-u",
            "-C",
            "--git-dir",
            "--work-tree",
            "--namespace",
            "--ext-diff",
            "--textconv",
            "--open-files-in-pager",
            "-O",
            "--extcmd",
            "-x",
            "--exec",
        ],
    ),
    (
        "tar",
        &[
            "--to-command",
            "--use-compress-program",
            "-I",
            "--rsh-command",
            "--info-script",
            "--new-volume-script",
            "-F",
            "--checkpoint-action",
        ],
    ),
    ("find", &["-exec", "-execdir", "-ok", "-okdir"]),
    ("rsync", &["-e", "--rsh", "--rsync-path"]),
    ("zip", &["-TT", "--unzip-command"]),
];

/// git subcommands a policy lets run: git's own commands that run no
/// program a repository or an argument names. Anything else — an alias
/// (`alias.x = !program`), a remote helper, a tool, a server, a script,
/// `help` (a man viewer) — is refused whatever the grant.
const GIT_SUBCOMMANDS: &[&str] = &[
    "add",
    "am",
    "annotate",
    "apply",
    "archive",
    "blame",
    "branch",
    "bundle",
    "cat-file",
    "check-attr",
    "check-ignore",
    "check-mailmap",
    "check-ref-format",
    "checkout",
    "checkout-index",
    "cherry",
    "cherry-pick",
    "clean",
    "clone",
    "column",
    "commit",
    "commit-graph",
    "commit-tree",
    "config",
    "count-objects",
    "describe",
    "diff",
    "diff-files",
    "diff-index",
    "diff-tree",
    "fast-export",
    "fast-import",
    "fetch",
    "fmt-merge-msg",
    "for-each-ref",
    "format-patch",
    "fsck",
    "gc",
    "get-tar-commit-id",
    "grep",
    "hash-object",
    "index-pack",
    "init",
    "log",
    "ls-files",
    "ls-remote",
    "ls-tree",
    "mailinfo",
    "mailsplit",
    "maintenance",
    "merge",
    "merge-base",
    "merge-file",
    "merge-tree",
    "mktag",
    "mktree",
    "multi-pack-index",
    "mv",
    "name-rev",
    "notes",
    "pack-objects",
    "pack-refs",
    "patch-id",
    "prune",
    "prune-packed",
    "pull",
    "push",
    "range-diff",
    "read-tree",
    "rebase",
    "reflog",
    "refs",
    "remote",
    "repack",
    "replace",
    "rerere",
    "reset",
    "restore",
    "rev-list",
    "rev-parse",
    "revert",
    "rm",
    "shortlog",
    "show",
    "show-branch",
    "show-index",
    "show-ref",
    "sparse-checkout",
    "stash",
    "status",
    "stripspace",
    "switch",
    "symbolic-ref",
    "tag",
    "unpack-file",
    "unpack-objects",
    "update-index",
    "update-ref",
    "var",
    "verify-commit",
    "verify-pack",
    "verify-tag",
    "version",
    "whatchanged",
    "worktree",
    "write-tree",
];

/// git subcommands that show diffs (and `log` or `whatchanged` asked for
/// patches), and the options they must be given so
/// that no external diff or textconv program the repository configures
/// (`diff.<driver>.command`, `diff.<driver>.textconv`, `diff.external`)
/// runs: such a program gets a path as its argument, and the ELF
/// interpreter every dynamic program may execute would load whatever file
/// that path names.
const GIT_DIFF_SUBCOMMANDS: &[(&str, &[&str])] = &[
    ("diff", &["--no-ext-diff", "--no-textconv"]),
    ("show", &["--no-ext-diff", "--no-textconv"]),
    ("format-patch", &["--no-ext-diff", "--no-textconv"]),
    ("range-diff", &["--no-ext-diff", "--no-textconv"]),
    ("blame", &["--no-textconv"]),
    ("annotate", &["--no-textconv"]),
];

/// The subcommand of a git command line (its first argument that is not
/// an option) must not run configured programs.
fn check_git_subcommand(args: &[String]) -> Result<(), String> {
    let Some(sub) = args.iter().find(|a| !a.starts_with('-')) else {
        return Ok(());
    };
    if !GIT_SUBCOMMANDS.contains(&sub.as_str()) {
        return Err(format!(
            "`git {}` is refused: only git's own commands run (not aliases, helpers, tools or servers, which run programs the repository or the arguments name)",
            crate::bounds::cut(sub, 64)
        ));
    }
    if args.iter().any(|a| a == "--help") {
        return Err(
            "`git … --help` is refused: it runs the man viewer the repository may name".into(),
        );
    }
    if args
        .iter()
        .any(|a| a == "--trailer" || a.starts_with("--trailer="))
    {
        return Err(
            "`--trailer` of git is refused: it runs the trailer commands (`trailer.<key>.cmd`) the repository configures"
                .into(),
        );
    }
    // `log` and `whatchanged` show patches only when asked to.
    let shows_patches = matches!(sub.as_str(), "log" | "whatchanged")
        && args.iter().any(|a| {
            let a = a.as_str();
            matches!(
                a,
                "-p" | "-u" | "--patch" | "--cc" | "--color-words" | "--remerge-diff"
            ) || a.starts_with("-U")
                || a.starts_with("--unified")
                || a.starts_with("--word-diff")
                || a.starts_with("--diff-merges")
        });
    let needed: Option<&[&str]> = if shows_patches {
        Some(&["--no-ext-diff", "--no-textconv"])
    } else {
        GIT_DIFF_SUBCOMMANDS
            .iter()
            .find(|(s, _)| s == sub)
            .map(|(_, needed)| *needed)
    };
    if let Some(needed) = needed {
        let missing: Vec<&str> = needed
            .iter()
            .filter(|n| !args.iter().any(|a| a == *n))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "`git {sub}` must be given {}: without them git may run diff programs the repository configures",
                missing.join(" ")
            ));
        }
    }
    Ok(())
}

/// What git is told to run where it must not run anything: a path that
/// does not exist, so the attempt fails.
const NO_PROGRAM: &str = "/nonexistent/baa-runner-runs-no-program-here";

/// Configuration every subprocess's git gets with command-line precedence
/// (`GIT_CONFIG_COUNT`; no repository file can override it): no hooks,
/// no fsmonitor, no transport at all (a promisor remote or `ext::` URL the
/// repository names would run a command), no credential helper, no
/// signing, ssh, askpass or man program.
pub const GIT_OVERRIDES: &[(&str, &str)] = &[
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("protocol.allow", "never"),
    ("protocol.ext.allow", "never"),
    ("protocol.fd.allow", "never"),
    ("protocol.file.allow", "never"),
    ("protocol.git.allow", "never"),
    ("protocol.ssh.allow", "never"),
    ("protocol.http.allow", "never"),
    ("protocol.https.allow", "never"),
    ("credential.helper", ""),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("gpg.format", "openpgp"),
    ("gpg.program", NO_PROGRAM),
    ("gpg.openpgp.program", NO_PROGRAM),
    ("gpg.x509.program", NO_PROGRAM),
    ("gpg.ssh.program", NO_PROGRAM),
    ("gpg.ssh.defaultKeyCommand", NO_PROGRAM),
    ("core.sshCommand", NO_PROGRAM),
    ("core.askPass", NO_PROGRAM),
    ("man.viewer", NO_PROGRAM),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
];

/// The environment of a subprocess's git: with `overrides`, [`GIT_OVERRIDES`]
/// plus no lazy fetches, no protocols and no editor; with `view` (the
/// worktree is an idmapped view, whose owner the index does not know),
/// `core.checkStat = minimal`, so that the stat cache stays valid.
pub fn git_env(overrides: bool, view: bool) -> Vec<(String, String)> {
    let mut config: Vec<(&str, &str)> = Vec::new();
    let mut env = Vec::new();
    if overrides {
        config.extend(GIT_OVERRIDES);
        env.extend(
            [
                ("GIT_NO_LAZY_FETCH", "1"),
                ("GIT_ALLOW_PROTOCOL", ""),
                ("GIT_EDITOR", ":"),
                ("GIT_SEQUENCE_EDITOR", ":"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    if view {
        config.push(("core.checkStat", "minimal"));
    }
    if !config.is_empty() {
        env.push(("GIT_CONFIG_COUNT".to_string(), config.len().to_string()));
    }
    for (i, (key, value)) in config.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), key.to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), value.to_string()));
    }
    env
}

/// Whether `name` is a variable a subprocess may never receive.
pub fn is_never_passed(name: &str) -> bool {
    NEVER_PASSED.iter().any(|p| {
        name == *p || (p.ends_with('_') && name.starts_with(p)) || name.starts_with("GIT_CONFIG")
    })
}

/// Whether `name` is a well-formed environment variable name.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The subprocess policy of one kind for one run.
#[derive(Debug, Clone, Default)]
pub struct ExecPolicy {
    /// Program name → absolute path.
    programs: BTreeMap<String, PathBuf>,
    /// Programs granted but not found on this machine, with the reason.
    missing: BTreeMap<String, String>,
    env: Vec<String>,
    network: Network,
    read_paths: Vec<PathBuf>,
    write_paths: Vec<PathBuf>,
    nested_sandbox: bool,
    /// A granted program is a shell or command runner: its subprocesses may
    /// execute whatever they can read.
    executes_anything: bool,
    /// Otherwise, the only files its subprocesses may execute: the granted
    /// programs and what they need to start.
    executables: Vec<PathBuf>,
}

/// The network a kind's subprocesses get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// No IPv4/IPv6 sockets at all (the default).
    #[default]
    None,
    /// IPv4/IPv6 sockets; TCP connections only to these ports.
    TcpPorts(Vec<u16>),
    /// IPv4/IPv6 sockets, any TCP port (`unrestricted-tcp = true`).
    Unrestricted,
}

/// A command the policy allowed, with its program resolved.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub path: PathBuf,
}

impl ExecPolicy {
    /// The policy for a kind that requested `requested` and was granted
    /// `granted`: only what both name.
    pub fn intersect(requested: &Capabilities, granted: &KindGrant) -> Self {
        let network = if !(requested.network && granted.network) {
            Network::None
        } else if granted.unrestricted_tcp {
            Network::Unrestricted
        } else {
            Network::TcpPorts(granted.tcp_connect.clone())
        };
        let mut policy = ExecPolicy {
            network,
            read_paths: granted.read_paths.clone(),
            write_paths: granted.write_paths.clone(),
            nested_sandbox: granted.nested_sandbox,
            ..Default::default()
        };
        for program in &requested.programs {
            // A grant names the program, or gives the absolute path of a
            // program with that file name; the first such entry decides (an
            // operator's, when it added one to a built-in grant), with no
            // fallback to another.
            let Some(grant) = granted.grant_for(program) else {
                continue;
            };
            match resolve_program(grant) {
                Ok(path) => {
                    policy.programs.insert(program.clone(), path);
                }
                Err(why) => {
                    policy.missing.insert(program.clone(), why.to_string());
                }
            }
        }
        policy.executes_anything = policy
            .programs
            .iter()
            .any(|(name, path)| executables::runs_anything(name, path));
        let mut needed: Vec<PathBuf> = policy
            .programs
            .values()
            .flat_map(|p| executables::needed_to_run(p))
            .collect();
        needed.sort();
        needed.dedup();
        policy.executables = needed;
        policy.env = requested
            .env
            .iter()
            .filter(|name| granted.env.contains(name) && !is_never_passed(name))
            .cloned()
            .collect();
        policy
    }

    /// Whether the operator granted program `name` (even if it is missing
    /// on this machine).
    pub fn grants_program(&self, name: &str) -> bool {
        self.programs.contains_key(name) || self.missing.contains_key(name)
    }

    /// Program names this policy allows, with their resolved paths.
    pub fn programs(&self) -> &BTreeMap<String, PathBuf> {
        &self.programs
    }

    pub fn env_names(&self) -> &[String] {
        &self.env
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Trees the operator lets this kind read besides the system paths.
    pub fn read_paths(&self) -> &[PathBuf] {
        &self.read_paths
    }

    /// Trees the operator lets this kind write besides the worktree.
    pub fn write_paths(&self) -> &[PathBuf] {
        &self.write_paths
    }

    pub fn nested_sandbox(&self) -> bool {
        self.nested_sandbox
    }

    /// What this kind's subprocesses may execute: `None` for anything they
    /// can read (a shell was granted), else exactly these files and trees.
    /// Programs a repository configures (git filters, hooks, …) are not
    /// among them unless they were granted.
    pub fn executables(&self) -> Option<Vec<PathBuf>> {
        (!self.executes_anything).then(|| self.executables.clone())
    }

    /// Check a program, its arguments and its extra environment.
    pub fn check(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Allowed, Denial> {
        let path = if program.contains('/') {
            let candidate = Path::new(program);
            self.programs
                .values()
                .find(|p| p.as_path() == candidate)
                .cloned()
                .ok_or_else(|| {
                    Denial::never(
                        DenialReason::Program,
                        format!(
                            "program `{program}` is not allowed for this worker kind (allowed: {})",
                            self.allowed_list()
                        ),
                    )
                })?
        } else if let Some(path) = self.programs.get(program) {
            path.clone()
        } else if let Some(why) = self.missing.get(program) {
            return Err(Denial {
                reason: DenialReason::Program,
                message: format!("program `{program}` is granted but cannot be used: {why}"),
                grant: Some(format!("install `{program}` or grant it by absolute path")),
            });
        } else {
            // The kind runs only once everything it requested is granted:
            // this is a program it did not request.
            return Err(Denial::never(DenialReason::Program, format!(
                "program `{program}` is not allowed for this worker kind (allowed: {}); a kind must request a program in its describe, and the operator grant it",
                self.allowed_list()
            )));
        };
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        for (name, refused) in REFUSED_ARGS {
            if *name != file_name {
                continue;
            }
            for arg in args {
                let option = arg.split('=').next().unwrap_or(arg);
                let attached = refused.iter().find(|r| {
                    r.len() == 2 && !r.starts_with("--") && arg.len() > 2 && arg.starts_with(*r)
                });
                if let Some(option) = refused.iter().find(|r| **r == option).or(attached) {
                    return Err(Denial::never(DenialReason::Argument, format!(
                        "argument `{option}` of `{name}` is refused: it can make `{name}` run other programs or read other configuration"
                    )));
                }
            }
        }
        if file_name == "git" {
            check_git_subcommand(args).map_err(|why| Denial::never(DenialReason::Argument, why))?;
        }
        for (name, _) in env {
            if !is_env_name(name) {
                return Err(Denial::never(
                    DenialReason::Environment,
                    format!("environment variable name `{name}` is malformed"),
                ));
            }
            if is_never_passed(name) {
                return Err(Denial::never(
                    DenialReason::Environment,
                    format!("environment variable `{name}` is never passed to subprocesses"),
                ));
            }
            if !self.env.iter().any(|allowed| allowed == name) {
                return Err(Denial::never(DenialReason::Environment, format!(
                    "environment variable `{name}` is not allowed for this worker kind (allowed: {}); a kind must request it in its describe, and the operator grant it",
                    if self.env.is_empty() { "none".to_string() } else { self.env.join(", ") }
                )));
            }
        }
        Ok(Allowed { path })
    }

    fn allowed_list(&self) -> String {
        if self.programs.is_empty() {
            "none".to_string()
        } else {
            self.programs.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// Why a granted program cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("`{0}` must be a name or an absolute path")]
    NotAbsolute(String),
    #[error("`{0}` is not an executable file")]
    NotExecutable(String),
    #[error("`{program}` was not found in {searched}")]
    NotFound { program: String, searched: String },
}

/// Resolve a granted program to an absolute path of an executable file.
pub fn resolve_program(program: &str) -> Result<PathBuf, ProgramError> {
    let is_executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = Path::new(program);
        if !path.is_absolute() {
            return Err(ProgramError::NotAbsolute(program.to_string()));
        }
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(ProgramError::NotExecutable(program.to_string()))
        };
    }
    SYSTEM_PATH
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| ProgramError::NotFound {
            program: program.to_string(),
            searched: SYSTEM_PATH.join(":"),
        })
}
