//! The supervisor: a new session and a child subreaper, so every process the
//! program starts (even one that calls `setsid` or double-forks) stays its
//! descendant. When the program exits, the host drops its lifeline or sends
//! SIGTERM, the remaining tree gets SIGTERM, a grace period, then SIGKILL,
//! and everything is reaped before the supervisor exits with the program's
//! status.

use baa_launch::Stage;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use baa_launch::{LaunchSpec, Report, LIFELINE_FD, SETUP_FAILED};

use crate::confine::{self, Prepared};
use crate::sys::Failure;

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Launch the program described by `spec` (with what `prepare` opens and
/// compiles for it) and supervise it; never returns.
pub fn run(spec: &LaunchSpec, prepare: impl FnOnce() -> Result<Prepared, Failure>) -> ! {
    // SAFETY: plain system calls in a single-threaded process.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
    }
    let signals = signal_fd();
    // SAFETY: fcntl only inspects the descriptor number; the host passes the
    // lifeline as descriptor 4, owned by this process from here on.
    let lifeline = unsafe {
        (libc::fcntl(LIFELINE_FD, libc::F_SETFD, libc::FD_CLOEXEC) == 0)
            .then(|| OwnedFd::from_raw_fd(LIFELINE_FD))
    };
    let prepared = match prepare() {
        Ok(p) => p,
        Err((stage, message)) => crate::refuse(stage, &message),
    };
    let mut applied = prepared.applied.clone();
    // SAFETY: a plain system call.
    let me = unsafe { libc::getpid() };
    let child = start_child(spec, prepared, me);
    // The child reports its Landlock status only through success; the ABI
    // and rules were checked before the fork.
    applied.landlock = if applied.landlock_abi == 0 {
        "none".into()
    } else if applied.landlock_abi >= 6 {
        "full".into()
    } else {
        "partial".into()
    };
    crate::report(&Report::Started {
        pid: child,
        supervisor: me,
        applied,
    });
    // The supervisor needs no privileges to signal its own descendants.
    if let Some(user) = spec.user {
        // SAFETY: plain system calls.
        unsafe {
            libc::setgroups(0, std::ptr::null());
            libc::setresgid(user.gid, user.gid, user.gid);
            libc::setresuid(user.uid, user.uid, user.uid);
        }
    }
    let grace = Duration::from_millis(spec.kill_grace_ms);
    let status = supervise(child, &signals, lifeline.as_ref(), grace);
    crate::report(&Report::Exited {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status)
            .then(|| libc::WTERMSIG(status))
            .or((!libc::WIFEXITED(status)).then_some(libc::SIGKILL)),
    });
    exit_like(status)
}

/// SIGCHLD, SIGTERM, SIGINT and SIGHUP, blocked and delivered through a
/// signalfd the supervision loop reads.
fn signal_fd() -> OwnedFd {
    // SAFETY: sigset manipulation on a local value.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            crate::refuse(Stage::Supervisor, "signalfd failed");
        }
        OwnedFd::from_raw_fd(fd)
    }
}

/// Fork the child that confines itself and executes the program (or
/// performs the builtin). Its pid once it executed; a setup failure is
/// reported as the refusal of its stage, and the supervisor exits.
fn start_child(spec: &LaunchSpec, prepared: Prepared, me: i32) -> i32 {
    let (err_read, err_write) = match pipe() {
        Ok(p) => p,
        Err(e) => crate::refuse(Stage::Supervisor, &format!("pipe: {e}")),
    };
    // SAFETY: the launcher is single-threaded, so the child may allocate.
    let child = unsafe { libc::fork() };
    if child < 0 {
        crate::refuse(Stage::Supervisor, "fork failed");
    }
    if child == 0 {
        drop(err_read);
        // SAFETY: see above; the child dies with the supervisor.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != me {
                libc::_exit(SETUP_FAILED);
            }
        }
        let (stage, message) = match &spec.builtin {
            Some(op) => crate::builtin::run(prepared, op, err_write.as_raw_fd()),
            None => confine::exec(prepared),
        };
        let line = format!("{stage}\n{message}");
        // SAFETY: writing a local buffer to our own pipe, then exiting.
        unsafe {
            libc::write(err_write.as_raw_fd(), line.as_ptr().cast(), line.len());
            libc::_exit(SETUP_FAILED);
        }
    }
    drop(prepared);
    drop(err_write);
    // EOF: exec succeeded (the pipe closed at exec). Data: it failed.
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::fs::File::from(err_read), &mut buf);
    if !buf.is_empty() {
        let text = String::from_utf8_lossy(&buf);
        let (stage, message) = match text.split_once('\n') {
            Some((stage, message)) => (Stage::parse(stage).unwrap_or(Stage::Exec), message),
            None => (Stage::Exec, &*text),
        };
        let mut tree = Tree::new(child);
        tree.terminate(Duration::ZERO);
        crate::refuse(stage, &format!("{}: {message}", spec.program.display()));
    }
    child
}

/// Wait for the program; then end the rest of the tree. Returns the
/// program's wait status (SIGKILL's when the tree was stopped first).
fn supervise(child: i32, signals: &OwnedFd, lifeline: Option<&OwnedFd>, grace: Duration) -> i32 {
    let mut tree = Tree::new(child);
    loop {
        let mut fds = vec![libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(l) = lifeline {
            fds.push(libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        let mut stop = false;
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Waiting is impossible (a limit lowered under us): the tree
            // stops rather than this loop spinning.
            stop = true;
            fds.iter_mut().for_each(|fd| fd.revents = 0);
        }
        if fds[0].revents != 0 {
            // SAFETY: a zeroed siginfo is a valid buffer.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reading whole siginfo records into a local value.
            while unsafe {
                libc::read(
                    signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            } > 0
            {
                if info.ssi_signo != libc::SIGCHLD as u32 {
                    stop = true;
                }
            }
            tree.reap();
        }
        if fds.len() > 1 && fds[1].revents != 0 {
            // The host closed its end (or died): stop everything.
            stop = true;
        }
        if tree.status.is_some() || stop {
            tree.terminate(grace);
            return tree.status.unwrap_or(libc::SIGKILL);
        }
    }
}

/// The supervised tree: the program and whatever was reparented to us.
struct Tree {
    child: i32,
    /// The program's wait status, once it exited.
    status: Option<i32>,
}

impl Tree {
    fn new(child: i32) -> Self {
        Tree {
            child,
            status: None,
        }
    }

    /// Reap every exited child, noting the program's status.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.child {
                self.status = Some(status);
            }
        }
    }

    /// Direct children (orphans of the tree are reparented to us).
    fn children() -> Vec<i32> {
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Every process below this one: children, their children, and so on.
    fn descendants() -> Vec<i32> {
        // SAFETY: getpid cannot fail.
        let mut queue = vec![unsafe { libc::getpid() }];
        let mut all = Vec::new();
        while let Some(pid) = queue.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let path = task.path().join("children");
                let kids = std::fs::read_to_string(path).unwrap_or_default();
                for kid in kids.split_whitespace().filter_map(|p| p.parse().ok()) {
                    all.push(kid);
                    queue.push(kid);
                }
            }
        }
        all
    }

    /// SIGTERM to what is left (every descendant, not only the children: a
    /// shell's own children get it too, and so do orphans that come to us
    /// during the grace), up to `grace` for it to exit, then SIGKILL until
    /// nothing is left; everything is reaped.
    fn terminate(&mut self, grace: Duration) {
        self.reap();
        let mut told = std::collections::HashSet::new();
        let tell = |told: &mut std::collections::HashSet<i32>| {
            for pid in Self::descendants() {
                if told.insert(pid) {
                    // SAFETY: signalling a process below this one.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        };
        tell(&mut told);
        if !told.is_empty() {
            let until = Instant::now() + grace;
            while Instant::now() < until {
                self.reap();
                if Self::children().is_empty() {
                    break;
                }
                tell(&mut told);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Every descendant, each pass: SIGKILLed processes cannot fork
        // again, so a chain that forks (and leaves its process group) as
        // fast as it can still shrinks by all it has each pass; what it
        // forked meanwhile comes to us.
        loop {
            self.reap();
            let all = Self::descendants();
            if all.is_empty() {
                break;
            }
            for pid in all {
                // SAFETY: signalling a process below this one.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reap();
    }
}

/// Exit with the program's wait status: its code, or its signal.
fn exit_like(status: i32) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = if libc::WIFSIGNALED(status) {
        libc::WTERMSIG(status)
    } else {
        libc::SIGKILL
    };
    // SAFETY: restore the default action and unblock it, then die by it.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig)
}

/// Kill every process of `uid` (a dedicated sandbox user): become that user,
/// then `kill(-1, SIGKILL)`, which spares only this process and init.
pub fn sweep(uid: u32) -> i32 {
    // SAFETY: plain system calls; after setresuid this process can signal
    // only processes of `uid`.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(uid, uid, uid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            eprintln!(
                "baa-launch: cannot become uid {uid}: {}",
                std::io::Error::last_os_error()
            );
            return 1;
        }
        if libc::kill(-1, libc::SIGKILL) != 0
            && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        {
            return 1;
        }
    }
    0
}
