//! What the host asks of `baa-launch`, the small program that runs between
//! fork and exec of every worker subprocess: the [`LaunchSpec`] it reads from
//! its first argument and the [`Report`] it writes back on descriptor 3.
//!
//! The launcher itself (`src/main.rs`) confines the child and supervises its
//! process tree; this library holds only the types both sides share.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Descriptor on which the launcher writes one [`Report`] line, then closes it.
pub const REPORT_FD: i32 = 3;
/// Descriptor the launcher watches: when every writer of this pipe is gone
/// (the host dropped the process or died), the whole tree is killed.
pub const LIFELINE_FD: i32 = 4;
/// Exit status of the launcher when it could not start the program.
pub const SETUP_FAILED: i32 = 125;

/// The directories every user may write, replaced by private ones when
/// [`LaunchSpec::private_dirs`] is set: (mount point, subdirectory).
pub const PRIVATE_DIRS: &[(&str, &str)] = &[
    ("/tmp", "tmp"),
    ("/var/tmp", "var-tmp"),
    ("/dev/shm", "shm"),
    ("/run/lock", "run-lock"),
];

/// How one subprocess is launched and confined. Built by the host after its
/// policy check; the launcher applies all of it or refuses to run the program.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LaunchSpec {
    /// Absolute path of the program (resolved by the host's policy).
    pub program: PathBuf,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// The worktree: the only tree the child may write (besides `writable`).
    pub worktree: PathBuf,
    /// Working directory relative to the worktree, resolved beneath it with
    /// `openat2(RESOLVE_BENEATH)`; empty for the worktree itself.
    pub cwd: PathBuf,
    /// Run as this unprivileged user (the host runs as root).
    pub user: Option<User>,
    /// Give the child private shared-writable directories, in a mount
    /// namespace of its own: `<dir>/tmp`, `var-tmp`, `shm` and `run-lock`
    /// are bind-mounted over `/tmp`, `/var/tmp`, `/dev/shm` and `/run/lock`
    /// (needs root; used with `user`).
    #[serde(default)]
    pub private_dirs: Option<PathBuf>,
    pub rlimits: Rlimits,
    pub landlock: LandlockSpec,
    pub seccomp: SeccompSpec,
    /// After the program exits, or the host asks the tree to stop: how long
    /// the remaining processes get between SIGTERM and SIGKILL.
    pub kill_grace_ms: u64,
    /// Instead of executing `program`, the confined child performs this file
    /// operation itself, as the step's user under the same Landlock domain:
    /// how the host touches places a step can write without following a
    /// link the step planted there.
    #[serde(default)]
    pub builtin: Option<Builtin>,
    /// Trees mounted again over their own paths, idmapped so that their
    /// owner appears as `user` (needs `user` and `private_dirs`): the step
    /// writes them as their owner and nothing on disk changes owner.
    #[serde(default)]
    pub views: Vec<View>,
    /// Join this user namespace (`/proc/PID/ns/user` of the step's
    /// `baa-launch --hold-userns`) first: a host without root gets a
    /// process limit that counts the step's processes alone.
    #[serde(default)]
    pub user_namespace: Option<PathBuf>,
}

/// A tree the step sees as its own through an idmapped mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct View {
    /// An absolute directory.
    pub path: PathBuf,
    /// Its owner on disk, shown as the step's user (entries of any other
    /// owner appear as the overflow user).
    pub owner: User,
    /// A user namespace with that mapping already (`/proc/PID/ns/user` of
    /// a holder the host keeps for the step); else the launcher makes one.
    #[serde(default)]
    pub user_namespace: Option<PathBuf>,
}

/// A file operation the launcher's confined child performs in place of a
/// program. Paths are absolute; none is followed if it is a symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op", deny_unknown_fields)]
pub enum Builtin {
    /// Write standard input to `path`: into a new file of an unpredictable
    /// name beside it (`O_EXCL | O_NOFOLLOW`), then renamed over `path`.
    WriteFile { path: PathBuf },
    /// Copy the regular file `from` (not a symlink) to the new file `to`
    /// (`O_EXCL | O_NOFOLLOW`). A missing or non-regular `from` copies
    /// nothing and is not an error.
    CopyFile { from: PathBuf, to: PathBuf },
    /// Remove the file `path` (a symlink is removed, never followed); a
    /// missing one is not an error.
    Remove { path: PathBuf },
}

/// A dedicated user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Whether this user may search a directory of owner `uid`, group
    /// `gid` and permission bits `mode` (no supplementary groups).
    pub fn may_search(&self, uid: u32, gid: u32, mode: u32) -> bool {
        if uid == self.uid {
            mode & 0o100 != 0
        } else if gid == self.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }
}

/// Resource limits of the child (`setrlimit`); `None` leaves one unchanged.
/// Core dumps are always disabled.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rlimits {
    pub cpu_seconds: Option<u64>,
    pub address_space_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    /// Processes of the child's user; only meaningful with a dedicated user.
    pub processes: Option<u64>,
}

/// The Landlock domain of the child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LandlockSpec {
    /// Refuse to run the program when the kernel cannot enforce Landlock
    /// file-system rules (the operator did not opt out).
    pub required: bool,
    /// Enforce the file-system rules. Off for programs that sandbox their
    /// own children with mount namespaces (bubblewrap), which a Landlock
    /// file-system domain forbids; the network rules and scopes still apply.
    pub filesystem: bool,
    /// Trees the child may read and execute.
    pub read: Vec<PathBuf>,
    /// Trees the child may read, write, create in and remove from.
    pub write: Vec<PathBuf>,
    /// Device files the child may read and write (`/dev/null`, …).
    pub devices: Vec<PathBuf>,
    /// The only files (or trees) the child may execute; `None` lets it
    /// execute whatever it may read. Listed files need their ELF interpreter
    /// or `#!` interpreter listed too.
    #[serde(default)]
    pub execute: Option<Vec<PathBuf>>,
    /// TCP ports the child may connect to; `None` leaves TCP unrestricted
    /// (an operator's explicit `network = "unrestricted"`). Binding is
    /// always refused.
    pub tcp_connect: Option<Vec<u16>>,
}

/// The seccomp filter of the child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompSpec {
    /// Allow `AF_INET`/`AF_INET6` sockets (kinds granted the network);
    /// otherwise only `AF_UNIX` sockets can be created.
    pub inet: bool,
    /// Allow creating user namespaces (and the mount/pid/network namespaces
    /// inside one): needed by programs that sandbox their own children,
    /// such as the Codex CLI. Without privileges in the parent namespace
    /// these cannot widen access; Landlock and seccomp stay in force.
    pub nested_sandbox: bool,
}

/// What the launcher writes on [`REPORT_FD`], one JSON line each: `started`
/// or `refused`, then, once the tree is gone, `exited`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Report {
    /// The program is running as `pid`, confined as described, below the
    /// supervisor `supervisor` (which leads its session and group).
    #[serde(rename_all = "camelCase")]
    Started {
        pid: i32,
        #[serde(default)]
        supervisor: i32,
        applied: Applied,
    },
    /// The program was not started.
    Refused { stage: Stage, message: String },
    /// The program ended (its code, or the signal that killed it) and the
    /// rest of its tree is gone.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// What a step's processes share, made once per step by the fork server
/// (`baa-launch --zygote`): the mount namespace with the step's private
/// directories and views, in the step's user namespace if any. Launches
/// whose [`LaunchSpec::environment`] is equal share one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Environment {
    pub worktree: PathBuf,
    pub user: Option<User>,
    pub private_dirs: Option<PathBuf>,
    pub views: Vec<View>,
    pub user_namespace: Option<PathBuf>,
    /// The Landlock read and write trees: those beneath a private directory
    /// or a hidden ancestor are mounted back into the namespace.
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl LaunchSpec {
    /// The part of this launch that a step's processes share.
    pub fn environment(&self) -> Environment {
        Environment {
            worktree: self.worktree.clone(),
            user: self.user,
            private_dirs: self.private_dirs.clone(),
            views: self.views.clone(),
            user_namespace: self.user_namespace.clone(),
            read: self.landlock.read.clone(),
            write: self.landlock.write.clone(),
        }
    }
}

/// One launch asked of a fork server: sent as a memfd beside the
/// descriptors of the process (see [`ZYGOTE_FDS`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZygoteRequest {
    pub spec: LaunchSpec,
    /// The program's complete environment.
    pub env: Vec<(String, String)>,
}

/// The descriptors that come with a [`ZygoteRequest`], in this order; a
/// sixth, when present, is the program's stdin (else `/dev/null`).
pub const ZYGOTE_FDS: [&str; 5] = ["request", "stdout", "stderr", "report", "lifeline"];

/// The confinement that took effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Landlock ABI the ruleset was built for (0: not enforced).
    pub landlock_abi: u32,
    /// Landlock rules enforced: `full`, `partial` or `none`.
    pub landlock: String,
    pub seccomp: bool,
    pub no_new_privs: bool,
    pub uid: u32,
    pub gid: u32,
}

/// What this machine can enforce (`baa-launch --probe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// Landlock ABI of the kernel (0: unavailable).
    pub landlock_abi: u32,
    /// Landlock can restrict TCP connect/bind (ABI ≥ 4).
    pub landlock_tcp: bool,
    /// Landlock scopes signals and abstract sockets (ABI ≥ 6).
    pub landlock_scopes: bool,
    /// Seccomp filters can be installed.
    pub seccomp: bool,
    /// `openat2` with `RESOLVE_BENEATH` exists (Linux ≥ 5.6).
    pub openat2: bool,
    /// This user may create a user namespace.
    #[serde(default)]
    pub user_namespaces: bool,
    pub euid: u32,
}

/// One attempt of `baa-launch --self-test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    /// `allowed` or `denied`.
    pub expected: String,
    /// `allowed` or `denied (<error>)`.
    pub outcome: String,
    pub ok: bool,
}

/// Where starting a command stopped: every refusal names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The launch spec is malformed (a NUL byte, an unknown field).
    Spec,
    /// The launcher could not be run, or said nothing readable.
    Launcher,
    /// The supervisor of the command's process tree.
    Supervisor,
    /// The program could not be opened.
    Program,
    /// The working directory is not a directory inside the worktree.
    Cwd,
    /// The worktree and granted trees could not be mounted as the step's.
    Views,
    /// The step's private /tmp, /var/tmp, /dev/shm and /run/lock.
    PrivateDirs,
    /// Switching to the step's user.
    User,
    /// Entering the step's user namespace.
    UserNamespace,
    /// Landlock is required and this kernel cannot apply it.
    Landlock,
    Seccomp,
    NoNewPrivs,
    Rlimits,
    /// Closing the descriptors the program must not inherit.
    Descriptors,
    Exec,
    /// The step's control group.
    Cgroup,
    /// The launcher did not report in time.
    Timeout,
}

impl Stage {
    pub const ALL: [Stage; 17] = [
        Stage::Spec,
        Stage::Launcher,
        Stage::Supervisor,
        Stage::Program,
        Stage::Cwd,
        Stage::Views,
        Stage::PrivateDirs,
        Stage::User,
        Stage::UserNamespace,
        Stage::Landlock,
        Stage::Seccomp,
        Stage::NoNewPrivs,
        Stage::Rlimits,
        Stage::Descriptors,
        Stage::Exec,
        Stage::Cgroup,
        Stage::Timeout,
    ];

    /// The stage named `name` (as [`Stage::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Its name in the protocol and in messages: `private-dirs`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Spec => "spec",
            Stage::Launcher => "launcher",
            Stage::Supervisor => "supervisor",
            Stage::Program => "program",
            Stage::Cwd => "cwd",
            Stage::Views => "views",
            Stage::PrivateDirs => "private-dirs",
            Stage::User => "user",
            Stage::UserNamespace => "user-namespace",
            Stage::Landlock => "landlock",
            Stage::Seccomp => "seccomp",
            Stage::NoNewPrivs => "no-new-privs",
            Stage::Rlimits => "rlimits",
            Stage::Descriptors => "descriptors",
            Stage::Exec => "exec",
            Stage::Cgroup => "cgroup",
            Stage::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
