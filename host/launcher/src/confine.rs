//! The confinement a child applies to itself between fork and exec: resource
//! limits, a dedicated user, a working directory resolved beneath the
//! worktree, no inherited descriptors, no new privileges, Landlock, seccomp.
//! Everything that allocates or opens paths happens in [`prepare`], before
//! the fork; [`exec`] only makes system calls.

use baa_launch::Stage;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use baa_launch::{Applied, LaunchSpec, Probe};

use crate::namespace::Namespace;
use crate::sys::is_dir;
use landlock::{
    Access, AccessFs, AccessNet, NetPort, PathBeneath, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The Landlock ABI the rules are written for (tested on this ABI); the
/// crate degrades them on older kernels and the result is reported.
const ABI_TARGET: ABI = ABI::V6;

use crate::sys::Failure;
use crate::sys::{cstring, errno, open, open_beneath, openat2};

/// Everything the child needs, opened and compiled before the fork.
pub struct Prepared {
    /// The program, opened (none for a builtin, which executes nothing).
    program: Option<OwnedFd>,
    program_path: CString,
    cwd: OwnedFd,
    /// The working directory relative to the worktree, resolved again in
    /// the namespace (a directory opened outside it is unreachable).
    rel_cwd: PathBuf,
    argv: Vec<CString>,
    envp: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    user: Option<baa_launch::User>,
    /// The mount environment to enter (a one-shot launch); `None` inside a
    /// fork server, which entered it already.
    namespace: Option<Namespace>,
    ruleset: Option<RulesetCreated>,
    filters: Vec<BpfProgram>,
    pub applied: Applied,
}

/// How the paths of a spec are opened: in this process's mount namespace,
/// or beneath the host's root as it was before the step's namespace was
/// entered (a fork server: what the step mounted or planted in its own
/// directories is never followed).
#[derive(Clone, Copy)]
pub enum Resolve<'a> {
    Direct,
    InRoot(&'a OwnedFd),
}

impl Resolve<'_> {
    pub fn open(self, path: &Path, flags: libc::c_int) -> std::io::Result<OwnedFd> {
        match self {
            Resolve::Direct => open(path, flags),
            Resolve::InRoot(root) => {
                let rel = path.as_os_str().as_bytes();
                let rel = rel.strip_prefix(b"/").unwrap_or(rel);
                let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
                openat2(
                    root,
                    rel,
                    flags,
                    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
                )
            }
        }
    }
}

/// Open, resolve and compile everything the child of a one-shot launch
/// needs: its mount environment too, and the environment this launcher
/// was started with.
pub fn prepare(spec: &LaunchSpec) -> Result<Prepared, Failure> {
    let namespace = Namespace::prepare(&spec.environment())?;
    let root = open(&spec.worktree, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
        (
            Stage::Cwd,
            format!("worktree {}: {e}", spec.worktree.display()),
        )
    })?;
    let mut envp = Vec::new();
    for (name, value) in std::env::vars_os() {
        let mut entry = name.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        envp.push(cstring(&entry, "an environment variable")?);
    }
    let mut p = command(spec, Resolve::Direct, namespace.private(), &root, envp)?;
    p.namespace = Some(namespace);
    Ok(p)
}

/// What a fork server's child needs for `spec`: the server entered the
/// step's environment already (`private`, as it was checked; `worktree`,
/// as the step sees it); the spec's paths are opened beneath the host's
/// `root`.
pub fn prepare_in(
    spec: &LaunchSpec,
    root: &OwnedFd,
    private: &[(OwnedFd, &'static str)],
    worktree: &OwnedFd,
    env: &[(String, String)],
) -> Result<Prepared, Failure> {
    let mut envp = Vec::with_capacity(env.len());
    for (name, value) in env {
        envp.push(cstring(
            format!("{name}={value}").as_bytes(),
            "an environment variable",
        )?);
    }
    command(spec, Resolve::InRoot(root), private, worktree, envp)
}

/// The program, its working directory beneath `worktree`, argv, rlimits,
/// Landlock ruleset and seccomp filters of `spec`.
/// The resource limits of a command: no core dumps, and the spec's.
fn rlimits(r: &baa_launch::Rlimits) -> Vec<(libc::__rlimit_resource_t, u64)> {
    let mut rlimits = vec![(libc::RLIMIT_CORE, 0)];
    for (resource, value) in [
        (libc::RLIMIT_CPU, r.cpu_seconds),
        (libc::RLIMIT_AS, r.address_space_bytes),
        (libc::RLIMIT_FSIZE, r.file_size_bytes),
        (libc::RLIMIT_NOFILE, r.open_files),
        (libc::RLIMIT_NPROC, r.processes),
    ] {
        if let Some(value) = value {
            rlimits.push((resource, value));
        }
    }
    rlimits
}

/// The command's Landlock ruleset and the ABI it is enforced at (none on a
/// kernel without Landlock, where the spec must allow running unconfined).
fn landlock(
    spec: &LaunchSpec,
    resolve: Resolve,
    private: &[(OwnedFd, &'static str)],
) -> Result<(Option<RulesetCreated>, u32), Failure> {
    let kernel_abi = landlock_abi();
    if kernel_abi == 0 {
        if spec.landlock.required {
            return Err((
                Stage::Landlock,
                "this kernel cannot enforce Landlock, so the subprocess would not be confined; \
                 the operator may allow unconfined subprocesses with `[sandbox] landlock = \"optional\"`"
                    .into(),
            ));
        }
        return Ok((None, 0));
    }
    let ruleset = ruleset(spec, resolve, private).map_err(|e| (Stage::Landlock, e))?;
    Ok((Some(ruleset), kernel_abi.min(ABI_TARGET as u32)))
}

fn command(
    spec: &LaunchSpec,
    resolve: Resolve,
    private: &[(OwnedFd, &'static str)],
    worktree: &OwnedFd,
    envp: Vec<CString>,
) -> Result<Prepared, Failure> {
    if !spec.program.is_absolute() || !spec.worktree.is_absolute() {
        return Err((
            Stage::Spec,
            "program and worktree must be absolute paths".into(),
        ));
    }
    // A builtin executes nothing: its program is never opened.
    let program = match spec.builtin {
        Some(_) => None,
        None => Some(
            resolve
                .open(&spec.program, libc::O_PATH)
                .map_err(|e| (Stage::Program, format!("{}: {e}", spec.program.display())))?,
        ),
    };
    let cwd = open_beneath(worktree, &spec.cwd).map_err(|e| {
        (
            Stage::Cwd,
            format!(
                "`{}` does not resolve to a directory beneath the worktree: {e}",
                spec.cwd.display()
            ),
        )
    })?;

    let program_path = cstring(spec.program.as_os_str().as_bytes(), "program")?;
    let mut argv = vec![program_path.clone()];
    for arg in &spec.args {
        argv.push(cstring(arg.as_bytes(), "an argument")?);
    }
    let rlimits = rlimits(&spec.rlimits);
    let (ruleset, landlock_abi) = landlock(spec, resolve, private)?;
    let filters = match resolve {
        // A fork server runs under the base filters already.
        Resolve::InRoot(_) => command_filters(&spec.seccomp),
        Resolve::Direct => filters(&spec.seccomp),
    }
    .map_err(|e| (Stage::Seccomp, e))?;
    let user = spec.user;
    Ok(Prepared {
        program,
        program_path,
        cwd,
        rel_cwd: spec.cwd.clone(),
        argv,
        envp,
        rlimits,
        user,
        namespace: None,
        ruleset,
        filters,
        applied: Applied {
            landlock_abi,
            landlock: String::new(),
            seccomp: true,
            no_new_privs: true,
            uid: user
                .map(|u| u.uid)
                .unwrap_or_else(|| unsafe { libc::geteuid() }),
            gid: user
                .map(|u| u.gid)
                .unwrap_or_else(|| unsafe { libc::getegid() }),
        },
    })
}

fn ruleset(
    spec: &LaunchSpec,
    resolve: Resolve,
    private: &[(OwnedFd, &str)],
) -> Result<RulesetCreated, String> {
    let abi = ABI_TARGET;
    let err = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default();
    if spec.landlock.filesystem {
        ruleset = ruleset
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?;
    }
    if spec.landlock.tcp_connect.is_some() {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(err)?;
    }
    let mut created = ruleset
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    // With an execute list, nothing else may be executed: the read and
    // write rules lose the right, the listed files alone get it.
    let no_exec = |access: landlock::BitFlags<AccessFs>| match &spec.landlock.execute {
        Some(_) => access & !AccessFs::Execute,
        None => access,
    };
    let run = AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir;
    let none = Vec::new();
    let groups = [
        (&spec.landlock.read, no_exec(AccessFs::from_read(abi))),
        (&spec.landlock.write, no_exec(AccessFs::from_all(abi))),
        (&spec.landlock.devices, no_exec(AccessFs::from_file(abi))),
        (spec.landlock.execute.as_ref().unwrap_or(&none), run),
    ];
    for (paths, access) in groups {
        if !spec.landlock.filesystem {
            break;
        }
        for path in paths {
            let fd = match resolve.open(path, libc::O_PATH) {
                Ok(fd) => fd,
                // Absent system directories (e.g. /lib32) are skipped.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            let access = if is_dir(&fd) {
                access
            } else {
                access & AccessFs::from_file(abi)
            };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(err)?;
        }
    }
    // A bind mount's root is where Landlock's walk up the tree leaves it:
    // each private directory needs a rule of its own, on the directory that
    // was checked (not on whatever its path names by now).
    if spec.landlock.filesystem {
        for (fd, _) in private {
            let fd = fd.try_clone().map_err(|e| e.to_string())?;
            created = created
                .add_rule(PathBeneath::new(fd, no_exec(AccessFs::from_all(abi))))
                .map_err(err)?;
        }
    }
    for port in spec.landlock.tcp_connect.iter().flatten() {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    Ok(created)
}

/// The kernel's Landlock ABI version (0: none).
pub fn landlock_abi() -> u32 {
    // SAFETY: querying the version takes no pointer and no ruleset.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 0 {
        0
    } else {
        v as u32
    }
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(target_arch = "riscv64")]
const ARCH: TargetArch = TargetArch::riscv64;

/// System calls no worker subprocess may make: tracing and reading other
/// processes, kernel keyrings, BPF, io_uring (it bypasses seccomp), device
/// nodes, modules, swap, reboot.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mknodat,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mknod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Namespace and mount calls: denied unless the kind sandboxes its own
/// children (then only inside a new user namespace do they mean anything).
const NAMESPACES: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
];

const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

fn filters(spec: &baa_launch::SeccompSpec) -> Result<Vec<BpfProgram>, String> {
    let mut programs = base_filters()?;
    programs.append(&mut command_filters(spec)?);
    Ok(programs)
}

/// The filters every process of every step gets, whatever its spec: calls
/// no step makes, setuid bits, extended attributes. A fork server installs
/// them once on itself (its children inherit them without a second JIT).
pub fn base_filters() -> Result<Vec<BpfProgram>, String> {
    let e = |e: seccompiler::BackendError| e.to_string();
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in DENIED {
        deny.insert(*nr, Vec::new());
    }
    setuid_guard(&mut deny).map_err(e)?;
    // Limits, scheduling and priorities of another process are not a
    // step's to change: its supervisor, its fork server and (on a host
    // without root) the host itself may run as its user. Only calls on
    // the caller itself (pid 0) pass.
    let not = |arg: u8, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(e)
    };
    for nr in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
    ] {
        deny.insert(nr, vec![not(0, 0)?]);
    }
    // (which, who): the caller's own process only, not its process group
    // or every process of its user.
    const IOPRIO_WHO_PROCESS: u64 = 1;
    deny.insert(
        libc::SYS_setpriority,
        vec![not(0, libc::PRIO_PROCESS as u64)?, not(1, 0)?],
    );
    deny.insert(
        libc::SYS_ioprio_set,
        vec![not(0, IOPRIO_WHO_PROCESS)?, not(1, 0)?],
    );
    // Extended attributes are not set at all: a kind root in a user
    // namespace of its own could otherwise write `security.capability`
    // on a file of a view, which the kernel stores as the tree owner's
    // (root's) capability. Answered "not supported", as a file system
    // without them would.
    let xattrs = [
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        SYS_SETXATTRAT,
    ];
    Ok(vec![
        program(deny, libc::EPERM)?,
        program(
            xattrs.iter().map(|nr| (*nr, Vec::new())).collect(),
            libc::EOPNOTSUPP,
        )?,
    ])
}

/// The filters that depend on the spec: socket families, namespaces, and
/// the calls whose flags a filter cannot read.
fn command_filters(spec: &baa_launch::SeccompSpec) -> Result<Vec<BpfProgram>, String> {
    let e = |e: seccompiler::BackendError| e.to_string();
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Sockets: UNIX only, plus IPv4/IPv6 for kinds granted the network.
    let mut families = vec![libc::AF_UNIX];
    if spec.inet {
        families.extend([libc::AF_INET, libc::AF_INET6]);
    }
    if spec.nested_sandbox {
        // bubblewrap brings up the loopback of the network namespace it
        // creates over netlink.
        families.push(libc::AF_NETLINK);
    }
    let conditions = families
        .iter()
        .map(|f| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *f as u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(e)?;
    deny.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(conditions).map_err(e)?],
    );
    if !spec.nested_sandbox {
        for nr in NAMESPACES {
            deny.insert(*nr, Vec::new());
        }
        let rules = NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let flag = *flag as u64;
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        deny.insert(libc::SYS_clone, rules);
    }
    // clone3 and openat2 take their flags in memory a filter cannot read:
    // answer ENOSYS so that the C library falls back to clone and openat,
    // whose flags are checked above.
    let unreadable = BTreeMap::from([
        (libc::SYS_clone3, Vec::new()),
        (libc::SYS_openat2, Vec::new()),
    ]);
    Ok(vec![
        program(deny, libc::EPERM)?,
        program(unreadable, libc::ENOSYS)?,
    ])
}

/// A filter that answers `errno` to the calls `rules` match and allows the
/// rest.
fn program(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, String> {
    let e = |e: seccompiler::BackendError| e.to_string();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        ARCH,
    )
    .map_err(e)?
    .try_into()
    .map_err(e)
}

/// `setxattrat` (Linux 6.13), not named by every libc.
const SYS_SETXATTRAT: libc::c_long = 463;

/// No subprocess makes a file setuid or setgid: through an idmapped view a
/// file the step creates belongs to the tree's owner on disk (root, often),
/// so a setuid bit would be the owner's. `chmod` calls and creating opens
/// whose mode carries either bit are refused (the views are also `nosuid`).
/// `openat2` takes its mode in memory a filter cannot read: refused with
/// ENOSYS, so callers fall back to `openat`.
fn setuid_guard(
    deny: &mut BTreeMap<i64, Vec<SeccompRule>>,
) -> Result<(), seccompiler::BackendError> {
    let bit = |arg: u8, bit: u64| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bit),
            bit,
        )
    };
    let special = [libc::S_ISUID as u64, libc::S_ISGID as u64];
    // (system call, index of its mode argument, index of its flags argument)
    let mut calls: Vec<(libc::c_long, u8, Option<u8>)> = vec![
        (libc::SYS_fchmod, 1, None),
        (libc::SYS_fchmodat, 2, None),
        (SYS_FCHMODAT2, 2, None),
        (libc::SYS_openat, 3, Some(2)),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (libc::SYS_chmod, 1, None),
        (libc::SYS_open, 2, Some(1)),
        (libc::SYS_creat, 1, None),
    ]);
    let creating = [libc::O_CREAT as u64, 0o20000000 /* __O_TMPFILE */];
    for (nr, mode, flags) in calls {
        let mut rules = Vec::new();
        for b in special {
            match flags {
                None => rules.push(SeccompRule::new(vec![bit(mode, b)?])?),
                Some(flags) => {
                    for create in creating {
                        rules.push(SeccompRule::new(vec![bit(flags, create)?, bit(mode, b)?])?);
                    }
                }
            }
        }
        deny.insert(nr, rules);
    }
    Ok(())
}

/// `fchmodat2` (Linux 6.6), not named by every libc.
const SYS_FCHMODAT2: libc::c_long = 452;

/// In the forked child: confine, then exec. Returns only on failure.
pub fn exec(mut p: Prepared) -> Failure {
    if let Err(failure) = apply(&mut p) {
        return failure;
    }
    // SAFETY: plain system calls on values prepared before the fork.
    unsafe {
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let Some(program) = &p.program else {
            return (Stage::Exec, "a builtin executes no program".into());
        };
        libc::execveat(
            program.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
            libc::AT_EMPTY_PATH,
        );
        let first = errno();
        // A script cannot be run from a descriptor that closes at exec: run
        // it by its path instead.
        if first.raw_os_error() == Some(libc::ENOENT) {
            libc::execve(
                p.program_path.as_ptr(),
                argv.as_ptr().cast(),
                envp.as_ptr().cast(),
            );
        }
        (Stage::Exec, first.to_string())
    }
}

/// In the forked child: apply every confinement of `p` to this process.
pub fn apply(p: &mut Prepared) -> Result<(), Failure> {
    // SAFETY (whole function): the child is single-threaded (the launcher
    // never starts threads); every call is a plain system call on values
    // prepared before the fork.
    unsafe {
        if let Some(namespace) = p.namespace.take() {
            if let Some(worktree) = namespace.enter()? {
                p.cwd = open_beneath(&worktree, &p.rel_cwd)
                    .map_err(|e| (Stage::Cwd, format!("in the step's mount namespace: {e}")))?;
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        for (resource, value) in &p.rlimits {
            let (soft, hard) = if *resource == libc::RLIMIT_CPU {
                // SIGXCPU at the soft limit, SIGKILL a second later.
                (*value, value.saturating_add(1))
            } else {
                (*value, *value)
            };
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(*resource, &limit) != 0 {
                return Err((
                    Stage::Rlimits,
                    format!("setrlimit({resource}): {}", errno()),
                ));
            }
        }
        if let Some(user) = p.user {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(user.gid, user.gid, user.gid) != 0
                || libc::setresuid(user.uid, user.uid, user.uid) != 0
            {
                return Err((
                    Stage::User,
                    format!(
                        "cannot become uid {} gid {}: {}",
                        user.uid,
                        user.gid,
                        errno()
                    ),
                ));
            }
        }
        if libc::fchdir(p.cwd.as_raw_fd()) != 0 {
            return Err((Stage::Cwd, format!("fchdir: {}", errno())));
        }
        // Every descriptor but stdio closes at exec (ours included).
        if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
            return Err((Stage::Descriptors, format!("close_range: {}", errno())));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err((Stage::NoNewPrivs, errno().to_string()));
        }
        if let Some(ruleset) = p.ruleset.take() {
            match ruleset.restrict_self() {
                Ok(status) => {
                    p.applied.landlock = match status.ruleset {
                        RulesetStatus::FullyEnforced => "full",
                        RulesetStatus::PartiallyEnforced => "partial",
                        RulesetStatus::NotEnforced => "none",
                    }
                    .into()
                }
                Err(e) => return Err((Stage::Landlock, e.to_string())),
            }
        }
        for filter in &p.filters {
            if let Err(e) = seccompiler::apply_filter(filter) {
                return Err((Stage::Seccomp, e.to_string()));
            }
        }
    }
    Ok(())
}

/// What this machine can enforce.
pub fn probe() -> Probe {
    let landlock_abi = landlock_abi();
    // SAFETY: the child only installs a filter and exits.
    let seccomp = unsafe {
        match libc::fork() {
            0 => {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let ok = filters(&Default::default())
                    .ok()
                    .and_then(|f| f.first().map(|f| seccompiler::apply_filter(f).is_ok()))
                    .unwrap_or(false);
                libc::_exit(if ok { 0 } else { 1 })
            }
            pid if pid > 0 => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
            _ => false,
        }
    };
    let openat2 = match open(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY) {
        Ok(root) => open_beneath(&root, Path::new(".")).is_ok(),
        Err(_) => false,
    };
    // SAFETY: the child only tries to unshare and exits.
    let user_namespaces = unsafe {
        match libc::fork() {
            0 => libc::_exit(if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            }),
            pid if pid > 0 => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
            _ => false,
        }
    };
    Probe {
        user_namespaces,
        landlock_abi,
        landlock_tcp: landlock_abi >= 4,
        landlock_scopes: landlock_abi >= 6,
        seccomp,
        openat2,
        // SAFETY: geteuid cannot fail.
        euid: unsafe { libc::geteuid() },
    }
}

/// `baa-launch --self-test SPEC`: confine this process as `spec` says, then
/// try what a confined program must not do (and what it must be able to),
/// and report each attempt.
pub fn self_test(spec: &LaunchSpec) -> Result<Vec<baa_launch::Check>, Failure> {
    let mut p = prepare(spec)?;
    apply(&mut p)?;
    let network =
        !matches!(&spec.landlock.tcp_connect, Some(ports) if ports.is_empty()) || spec.seccomp.inet;
    let mut checks = Vec::new();
    let mut check = |name: &str, expect_allowed: bool, rc: i64| {
        let error = (rc < 0).then(|| errno().to_string());
        checks.push(baa_launch::Check {
            name: name.to_string(),
            expected: if expect_allowed { "allowed" } else { "denied" }.into(),
            outcome: match &error {
                None => "allowed".into(),
                Some(e) => format!("denied ({e})"),
            },
            ok: error.is_none() == expect_allowed,
        });
    };
    // SAFETY: plain system calls on local values; descriptors are closed.
    unsafe {
        file_checks(&mut check);
        process_checks(&mut check, network, spec.seccomp.nested_sandbox);
    }
    Ok(checks)
}

/// What the confined process may do to files: read the system, write the
/// worktree; no xattrs, setuid bits, or writes and chmods outside.
unsafe fn file_checks(check: &mut impl FnMut(&str, bool, i64)) {
    let open_rc = |path: &std::ffi::CStr, flags: i32| {
        let fd = libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600);
        if fd >= 0 {
            libc::close(fd);
        }
        fd as i64
    };
    check(
        "read system files (/usr)",
        true,
        open_rc(c"/usr", libc::O_RDONLY | libc::O_DIRECTORY),
    );
    let rc = open_rc(c"./.baa-self-test", libc::O_CREAT | libc::O_WRONLY);
    check("write the worktree", true, rc);
    let rc = libc::setxattr(
        c"./.baa-self-test".as_ptr(),
        c"user.baa".as_ptr(),
        c"x".as_ptr().cast(),
        1,
        0,
    );
    check("set an extended attribute", false, rc as i64);
    let rc = libc::chmod(c"./.baa-self-test".as_ptr(), 0o4755);
    check("make a file setuid", false, rc as i64);
    libc::unlink(c"./.baa-self-test".as_ptr());
    let rc = open_rc(
        c"/etc/.baa-self-test",
        libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
    );
    if rc >= 0 {
        libc::unlink(c"/etc/.baa-self-test".as_ptr());
    }
    check("write outside the worktree (/etc)", false, rc);
    check(
        "chmod a system file (/etc/hostname)",
        false,
        libc::chmod(c"/etc/hostname".as_ptr(), 0o777) as i64,
    );
}

/// What the confined process may do beyond files: sockets (as granted),
/// no ptrace or signals outside its tree, user namespaces only when nested
/// sandboxes are granted, no io_uring, no core dumps.
unsafe fn process_checks(check: &mut impl FnMut(&str, bool, i64), network: bool, nested: bool) {
    for (name, kind) in [
        ("open a TCP socket", libc::SOCK_STREAM),
        ("open a UDP socket", libc::SOCK_DGRAM),
    ] {
        let fd = libc::socket(libc::AF_INET, kind, 0);
        if fd >= 0 {
            libc::close(fd);
        }
        check(name, network, fd as i64);
    }
    check(
        "ptrace init",
        false,
        libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0),
    );
    check("signal init", false, libc::kill(1, 0) as i64);
    check(
        "create a user namespace",
        nested,
        libc::unshare(libc::CLONE_NEWUSER) as i64,
    );
    let mut params = [0u8; 120];
    let fd = libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr());
    if fd >= 0 {
        libc::close(fd as i32);
    }
    check("set up io_uring", false, fd);
    let mut core = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    libc::getrlimit(libc::RLIMIT_CORE, &mut core);
    check("dump core", false, if core.rlim_max == 0 { -1 } else { 0 });
}
