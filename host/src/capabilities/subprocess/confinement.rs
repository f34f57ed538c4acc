//! How one step's subprocesses are confined: the operator's `[sandbox]`
//! settings and the kind's grants turned into a [`LaunchSpec`] per process
//! (Landlock paths and ports, seccomp, rlimits, user), and the record of it
//! that goes into every run's metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baa_launch::{LandlockSpec, LaunchSpec, Probe, Rlimits, SeccompSpec};

use super::policy::{ExecPolicy, Network};
use super::user::{StepUser, UserLease};
use super::userns::StepNamespace;
use super::ConfinementError;
use crate::config::{LandlockMode, SandboxConfig, WorktreeView};

/// Device files every subprocess may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

const MIB: u64 = 1024 * 1024;

/// The confinement of one step's subprocesses.
#[derive(Clone)]
pub struct Confinement {
    pub sandbox: SandboxConfig,
    /// The subprocesses' `HOME` (and `TMPDIR` beneath it) without a
    /// dedicated user: writable.
    pub home: PathBuf,
    /// The step's dedicated user, when the host runs as root.
    pub user: Option<Arc<StepUser>>,
    /// Trees lent to the dedicated user: the worktree first.
    pub lend: Vec<PathBuf>,
    /// The step's user namespace, for a host without a dedicated user
    /// whose kernel lets it make one.
    pub namespace: Option<Arc<StepNamespace>>,
    pub probe: Probe,
}

/// One launch: what to run, where, with which network.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub worktree: &'a Path,
    /// Working directory relative to the worktree.
    pub cwd: &'a Path,
    pub policy: &'a ExecPolicy,
    /// The host's own commands never get the network or nested sandboxes.
    pub for_worker: bool,
    /// Seconds left in the step (the CPU limit when none is configured).
    pub seconds_left: u64,
    /// What the process may execute (`None`: whatever it may read).
    pub execute: Option<Vec<PathBuf>>,
    /// A file operation the launcher performs instead of running `program`.
    pub builtin: Option<baa_launch::Builtin>,
    /// The step's user namespace to join (see [`Confinement::user_namespace`]).
    pub user_namespace: Option<PathBuf>,
}

impl Confinement {
    /// The step's dedicated user (leased now if this is its first use),
    /// lent the worktree and `also` (the kind's write paths).
    /// Lending stops at `until` (the step's last moment for host work).
    pub fn lease(
        &self,
        also: &[PathBuf],
        until: std::time::Instant,
    ) -> Result<Option<Arc<UserLease>>, ConfinementError> {
        match &self.user {
            Some(user) => {
                let mut trees = self.lend.clone();
                trees.extend(also.iter().cloned());
                user.lease(&self.sandbox, &trees, until).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The step's user namespace (made at its first use), when the step
    /// has no dedicated user but may have a namespace of its own.
    pub fn user_namespace(&self) -> Result<Option<PathBuf>, ConfinementError> {
        match &self.namespace {
            Some(ns) if self.user.is_none() => ns.path().map(Some),
            _ => Ok(None),
        }
    }

    /// Where subprocesses' `HOME` is under `lease`.
    pub fn home<'a>(&'a self, lease: Option<&'a UserLease>) -> &'a Path {
        lease.map(|l| l.home()).unwrap_or(&self.home)
    }

    /// The launcher's instructions for one process.
    pub fn spec(&self, launch: &Launch, lease: Option<&UserLease>) -> LaunchSpec {
        let s = &self.sandbox;
        let network = if launch.for_worker {
            launch.policy.network().clone()
        } else {
            Network::None
        };
        let mut read = s.read_paths.clone();
        read.extend(launch.policy.read_paths().iter().cloned());
        // The programs themselves (e.g. a CLI installed under a home).
        for program in launch.policy.programs().values() {
            if let Some(dir) = program.parent() {
                if !read.iter().any(|r| dir.starts_with(r)) {
                    read.push(dir.to_path_buf());
                }
            }
        }
        if let Some(dir) = launch.program.parent() {
            if !read.iter().any(|r| dir.starts_with(r)) {
                read.push(dir.to_path_buf());
            }
        }
        let mut write = vec![
            launch.worktree.to_path_buf(),
            self.home(lease).to_path_buf(),
        ];
        // The private directories (bind mounts of the home's `tmp`, …) get
        // their rules from the launcher, on the directories it checked.
        let nested = launch.for_worker && launch.policy.nested_sandbox();
        write.extend(launch.policy.write_paths().iter().cloned());
        LaunchSpec {
            program: launch.program.to_path_buf(),
            args: launch.args.to_vec(),
            worktree: launch.worktree.to_path_buf(),
            cwd: launch.cwd.to_path_buf(),
            user: lease.map(|u| u.user()),
            // What every user may write (/tmp, /var/tmp, /dev/shm,
            // /run/lock) becomes the step's own: programs that ignore TMPDIR
            // stay inside, and nothing is left behind (a mount namespace
            // needs the root a lease implies, or the step's own user
            // namespace on a host without root).
            private_dirs: match (lease, &launch.user_namespace) {
                (Some(lease), _) => Some(lease.home().to_path_buf()),
                (None, Some(_)) => Some(self.home.clone()),
                (None, None) => None,
            },
            rlimits: Rlimits {
                cpu_seconds: Some(s.cpu_seconds.unwrap_or(launch.seconds_left.max(1))),
                address_space_bytes: s.address_space_mib.map(|m| m * MIB),
                file_size_bytes: Some(s.file_size_mib * MIB),
                open_files: Some(s.open_files),
                // RLIMIT_NPROC counts the processes of a user in a user
                // namespace: meaningful for a user or a namespace that
                // belongs to this step alone.
                processes: (lease.is_some() || launch.user_namespace.is_some())
                    .then_some(s.processes),
            },
            landlock: LandlockSpec {
                required: s.landlock == LandlockMode::Required,
                // A kind whose program sandboxes its own children with mount
                // namespaces cannot live in a Landlock file-system domain
                // (it forbids mounts): its files are confined by the
                // dedicated user and the private directories instead.
                filesystem: !nested,
                read,
                write,
                devices: DEVICES.iter().map(PathBuf::from).collect(),
                execute: launch.execute.clone(),
                tcp_connect: match &network {
                    Network::None => Some(Vec::new()),
                    Network::TcpPorts(ports) => Some(ports.clone()),
                    Network::Unrestricted => None,
                },
            },
            seccomp: SeccompSpec {
                inet: network != Network::None,
                nested_sandbox: nested,
            },
            kill_grace_ms: s.kill_grace_ms,
            builtin: launch.builtin.clone(),
            views: lease.map(|l| l.views()).unwrap_or_default(),
            user_namespace: launch.user_namespace.clone(),
        }
    }

    /// What applies to this step, for its metadata and events. `cgroup`:
    /// whether the step got its pids cgroup (`None`: it started nothing
    /// yet; what this host gives a step is recorded).
    pub fn record(
        &self,
        policy: &ExecPolicy,
        cgroup: Option<bool>,
    ) -> crate::contracts::ConfinementRecord {
        use crate::contracts as c;
        let bound =
            self.process_bound(cgroup.unwrap_or_else(|| super::cgroup::support().limits_pids()));
        let p = &self.probe;
        let landlock = match (p.landlock_abi, self.sandbox.landlock) {
            (0, LandlockMode::Required) => c::LandlockState::RequiredUnavailable,
            (0, LandlockMode::Optional) => c::LandlockState::UnavailableOptedOut,
            _ => c::LandlockState::Enforced,
        };
        let user = match &self.user {
            Some(_) => c::StepUserRecord::Dedicated {
                uid_base: self.sandbox.uid_base,
                uid: None,
                gid: None,
            },
            None => c::StepUserRecord::Current {
                uid: rustix::process::geteuid().as_raw(),
            },
        };
        // How the step's user sees the worktree (and write paths) as its
        // own: an idmapped view, chown lending, or no other user.
        let worktree_view = match (&self.user, self.lend.first()) {
            (Some(_), _) if self.sandbox.worktree_view == WorktreeView::Chown => {
                c::WorktreeViewRecord::Chown
            }
            (Some(_), Some(tree)) => match super::user::lending(tree) {
                super::user::Lending::Idmapped => c::WorktreeViewRecord::Idmapped,
                super::user::Lending::Chown => c::WorktreeViewRecord::Chown,
            },
            _ => c::WorktreeViewRecord::Direct,
        };
        let network = match policy.network() {
            Network::None => c::NetworkRecord::Named("none".into()),
            Network::TcpPorts(ports) => c::NetworkRecord::TcpPorts {
                tcp_connect: ports.clone(),
                udp: "unrestricted".into(),
            },
            Network::Unrestricted => c::NetworkRecord::Named("unrestricted".into()),
        };
        let paths = |paths: &mut dyn Iterator<Item = &PathBuf>| {
            paths.map(|p| p.display().to_string()).collect::<Vec<_>>()
        };
        c::ConfinementRecord {
            mode: if p.landlock_abi > 0 && p.seccomp {
                c::ConfinementMode::Confined
            } else {
                c::ConfinementMode::Degraded
            },
            landlock,
            landlock_abi: p.landlock_abi,
            landlock_tcp: p.landlock_tcp,
            landlock_scopes: p.landlock_scopes,
            seccomp: p.seccomp,
            no_new_privs: true,
            user,
            worktree_view,
            network,
            nested_sandbox: policy.nested_sandbox(),
            execute: match policy.executables() {
                None => c::ExecuteRecord::Any("any".into()),
                Some(files) => c::ExecuteRecord::Only(paths(&mut files.iter())),
            },
            read_paths: paths(&mut self.sandbox.read_paths.iter().chain(policy.read_paths())),
            write_paths: paths(&mut policy.write_paths().iter()),
            rlimits: c::RlimitsRecord {
                cpu_seconds: self.sandbox.cpu_seconds,
                address_space_mib: self.sandbox.address_space_mib,
                file_size_mib: self.sandbox.file_size_mib,
                open_files: self.sandbox.open_files,
                processes: bound.map(|_| self.sandbox.processes),
                core: 0,
            },
            kill_grace_ms: self.sandbox.kill_grace_ms,
            process_bound: c::ProcessBoundRecord {
                mode: bound.unwrap_or("none").into(),
                max: bound.map(|_| self.sandbox.processes),
            },
        }
    }

    fn process_bound(&self, cgroup: bool) -> Option<&'static str> {
        if cgroup {
            Some("pids-cgroup")
        } else if self.user.is_some() {
            Some("rlimit-dedicated-user")
        } else if self.namespace.is_some() {
            Some("rlimit-user-namespace")
        } else {
            None
        }
    }
}

/// A command of the host's own outside any step (`git rev-parse HEAD` while
/// a step is prepared): it may read the system paths and `worktree`, write
/// nothing, execute only `program` and what it needs, reach no network. It
/// runs as the host's user: Landlock, not the uid, is what confines it.
pub fn read_only_spec(
    sandbox: &SandboxConfig,
    program: &Path,
    args: Vec<String>,
    worktree: &Path,
) -> LaunchSpec {
    let mut read = sandbox.read_paths.clone();
    read.push(worktree.to_path_buf());
    if let Some(dir) = program.parent() {
        read.push(dir.to_path_buf());
    }
    LaunchSpec {
        program: program.to_path_buf(),
        args,
        worktree: worktree.to_path_buf(),
        cwd: PathBuf::new(),
        user: None,
        private_dirs: None,
        rlimits: Rlimits {
            cpu_seconds: Some(10),
            address_space_bytes: None,
            file_size_bytes: Some(0),
            open_files: Some(sandbox.open_files),
            processes: None,
        },
        landlock: LandlockSpec {
            required: sandbox.landlock == LandlockMode::Required,
            filesystem: true,
            read,
            write: Vec::new(),
            devices: DEVICES.iter().map(PathBuf::from).collect(),
            execute: Some(super::executables::needed_to_run(program)),
            tcp_connect: Some(Vec::new()),
        },
        seccomp: SeccompSpec::default(),
        kill_grace_ms: sandbox.kill_grace_ms,
        builtin: None,
        views: Vec::new(),
        user_namespace: None,
    }
}

/// What `baa-runner sandbox` reports: what the kernel offers, and the
/// verdict of a confined process trying what it must not do.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfTest {
    pub probe: Probe,
    /// The confinement record of the kind tested (as in run metadata).
    pub confinement: crate::contracts::ConfinementRecord,
    pub checks: Vec<baa_launch::Check>,
    /// Every check came out as expected.
    pub confined: bool,
    /// Why the worktree view is chown lending rather than an idmapped
    /// mount here (the scratch worktree's file system), if it is.
    pub view_fallback: Option<String>,
}

/// Confine a process the way `kind`'s subprocesses are confined under
/// `config` (in a scratch worktree) and let it try what it must not do.
pub fn self_test(config: &crate::RunnerConfig, kind: &str) -> Result<SelfTest, ConfinementError> {
    let probe = super::launcher::probe()?;
    let grant = config.grant(kind);
    let policy = ExecPolicy::intersect(&grant.capabilities(), &grant);
    let worktree = crate::fsutil::new_temp_dir("baa-self-test").map_err(|e| {
        ConfinementError::SelfTest(format!("a scratch worktree for the self-test: {e}"))
    })?;
    for sub in std::iter::once("").chain(baa_launch::PRIVATE_DIRS.iter().map(|(_, s)| *s)) {
        std::fs::create_dir(worktree.join("home").join(sub))
            .map_err(|e| ConfinementError::SelfTest(format!("{}: {e}", worktree.display())))?;
    }
    let result = (|| {
        let user = super::user::dedicated(&config.sandbox)?.then(|| Arc::new(StepUser::default()));
        let confinement = Confinement {
            sandbox: config.sandbox.clone(),
            home: worktree.join("home"),
            user: user.clone(),
            lend: vec![worktree.clone()],
            namespace: (user.is_none() && probe.user_namespaces)
                .then(|| Arc::new(StepNamespace::default())),
            probe: probe.clone(),
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let lease = confinement.lease(policy.write_paths(), until)?;
        let program = PathBuf::from("/bin/true");
        let spec = confinement.spec(
            &Launch {
                program: &program,
                args: &[],
                worktree: &worktree,
                cwd: Path::new(""),
                policy: &policy,
                for_worker: true,
                seconds_left: 10,
                execute: policy.executables(),
                builtin: None,
                user_namespace: confinement.user_namespace()?,
            },
            lease.as_deref(),
        );
        let checks = super::launcher::self_test(&spec)?;
        let mut record = confinement.record(&policy, None);
        if let (Some(lease), crate::contracts::StepUserRecord::Dedicated { uid, .. }) =
            (&lease, &mut record.user)
        {
            *uid = Some(lease.user().uid);
        }
        if let Some(user) = &confinement.user {
            user.release();
        }
        if let Some(namespace) = &confinement.namespace {
            namespace.release();
        }
        let view_fallback = match &confinement.user {
            Some(_) => super::user::lending_verdict(&worktree).1,
            None => None,
        };
        Ok(SelfTest {
            probe: probe.clone(),
            confinement: record,
            confined: checks.iter().all(|c| c.ok),
            checks,
            view_fallback,
        })
    })();
    let _ = std::fs::remove_dir_all(&worktree);
    result
}
