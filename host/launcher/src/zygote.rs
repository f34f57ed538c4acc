//! The fork server of one step (`baa-launch --zygote`): it enters the
//! step's environment once (user namespace, mount namespace, private
//! directories, views), then starts each of the step's processes by forking
//! a supervisor that applies only what differs per command (program, cwd,
//! environment, rlimits, Landlock, seccomp, user) — no exec of the launcher,
//! no namespace or mount per process. When the host closes the control
//! socket, every supervisor stops its tree and the server exits.

use baa_launch::Stage;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use baa_launch::{Environment, Report, ZygoteRequest, LIFELINE_FD, REPORT_FD, ZYGOTE_FDS};

use crate::confine;
use crate::namespace::Namespace;
use crate::sys::{self, Failure};

/// Descriptor of the control socket (a `SOCK_SEQPACKET` end).
pub const CONTROL_FD: i32 = 3;
/// Largest request the server reads (a spec and an environment).
const MAX_REQUEST_BYTES: u64 = 64 * 1024 * 1024;
/// Most descriptors a request carries.
const MAX_FDS: usize = ZYGOTE_FDS.len() + 1;

/// The step's environment as entered, or why it could not be.
struct Entered {
    /// The host's root, opened before the namespace was entered: every
    /// path of a spec is resolved beneath it.
    root: OwnedFd,
    private: Namespace,
    worktree: OwnedFd,
}

impl Entered {
    /// The descriptors the server holds for the environment.
    fn descriptors(&self) -> Vec<i32> {
        let mut fds = vec![self.root.as_raw_fd(), self.worktree.as_raw_fd()];
        fds.extend(self.private.descriptors());
        fds
    }
}

/// Serve launches in the environment `env` until the control socket
/// closes; returns the exit status.
pub fn serve(env: Environment) -> i32 {
    // SAFETY: plain system calls in a single-threaded process.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let entered = enter(&env);
    let signals = match child_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("baa-launch: signalfd: {e}");
            return baa_launch::SETUP_FAILED;
        }
    };
    let mut supervisors: HashSet<i32> = HashSet::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: CONTROL_FD,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if sys::errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Serving is impossible (a limit lowered under us): stop
            // rather than spin; the host's next launch finds it gone.
            break;
        }
        if fds[1].revents != 0 {
            drain(&signals);
            reap(&mut supervisors, false);
        }
        if fds[0].revents == 0 {
            continue;
        }
        match receive() {
            Received::Request(data, fds) => {
                if let Some(pid) = start(&env, &entered, &data, fds) {
                    supervisors.insert(pid);
                }
            }
            Received::Nothing => {}
            Received::Closed => break,
        }
    }
    // The step is over: every supervisor stops its tree, and is reaped.
    for pid in &supervisors {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    reap(&mut supervisors, true);
    0
}

/// Enter the step's environment (this process stays in it).
fn enter(env: &Environment) -> Result<Entered, Failure> {
    let root = sys::open(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| (Stage::Launcher, format!("/: {e}")))?;
    let private = Namespace::prepare(env)?;
    // SAFETY: the server is single-threaded.
    let worktree = match unsafe { private.enter()? } {
        Some(worktree) => worktree,
        None => sys::open(&env.worktree, libc::O_PATH | libc::O_DIRECTORY).map_err(|e| {
            (
                Stage::Cwd,
                format!("worktree {}: {e}", env.worktree.display()),
            )
        })?,
    };
    // Neither the server nor its supervisors (which become the step's
    // user) can be inspected through /proc by a process of the step.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // The filters every launch gets, installed once here: each child
    // inherits them and adds only those of its own spec.
    // SAFETY: plain prctl; the filters are compiled above it.
    let base = confine::base_filters().map_err(|e| (Stage::Seccomp, e))?;
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((Stage::NoNewPrivs, sys::errno().to_string()));
    }
    for filter in &base {
        seccompiler::apply_filter(filter).map_err(|e| (Stage::Seccomp, e.to_string()))?;
    }
    Ok(Entered {
        root,
        private,
        worktree,
    })
}

/// SIGCHLD through a signalfd.
fn child_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local value; the result is checked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn drain(signals: &OwnedFd) {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: reading whole records into a local buffer.
    while unsafe { libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
}

/// Reap exited supervisors; with `all`, wait until none is left.
fn reap(supervisors: &mut HashSet<i32>, all: bool) {
    let flags = if all { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid <= 0 {
            return;
        }
        supervisors.remove(&pid);
    }
}

enum Received {
    Request(Vec<u8>, Vec<OwnedFd>),
    /// A message without a complete request (ignored).
    Nothing,
    Closed,
}

/// One message of the control socket: its request (read from the memfd
/// that comes first) and the descriptors after it.
fn receive() -> Received {
    let mut byte = [0u8; 16];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<i32>()) as u32) };
    let mut control = vec![0u8; space as usize];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(CONTROL_FD, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n == 0 {
        return Received::Closed;
    }
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => Received::Nothing,
            _ => Received::Closed,
        };
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in; each
    // SCM_RIGHTS descriptor is owned by this process from here on.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const i32;
                let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<i32>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if fds.len() < ZYGOTE_FDS.len() || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Received::Nothing;
    }
    let request = fds.remove(0);
    match read_request(&request) {
        Some(data) => Received::Request(data, fds),
        None => Received::Nothing,
    }
}

/// The whole content of the request memfd.
fn read_request(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into a local buffer at an explicit offset.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                out.len() as libc::off_t,
            )
        };
        match n {
            0 => return Some(out),
            n if n > 0 => {
                out.extend_from_slice(&buf[..n as usize]);
                if out.len() as u64 > MAX_REQUEST_BYTES {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Fork a supervisor for one request; its pid, or `None` when it could
/// not be started (the refusal went to the request's report pipe).
fn start(
    env: &Environment,
    entered: &Result<Entered, Failure>,
    data: &[u8],
    fds: Vec<OwnedFd>,
) -> Option<i32> {
    let report_fd = fds[2].as_raw_fd();
    let refuse = |stage: Stage, message: String| {
        let line = Report::Refused { stage, message };
        let line = format!("{}\n", serde_json::to_string(&line).unwrap_or_default());
        // SAFETY: writing a local buffer to the request's report pipe.
        unsafe { libc::write(report_fd, line.as_ptr().cast(), line.len()) };
        None
    };
    let request: ZygoteRequest = match serde_json::from_slice(data) {
        Ok(request) => request,
        Err(e) => return refuse(Stage::Spec, format!("the launch request is not valid: {e}")),
    };
    let entered = match entered {
        Ok(entered) => entered,
        Err((stage, message)) => return refuse(*stage, message.clone()),
    };
    if request.spec.environment() != *env {
        return refuse(
            Stage::Spec,
            "the launch belongs to another environment than this fork server's".into(),
        );
    }
    // SAFETY: the server is single-threaded, so the child may allocate.
    let me = unsafe { libc::getpid() };
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return refuse(Stage::Supervisor, "fork failed".into());
    }
    if pid > 0 {
        return Some(pid);
    }
    supervisor(me, entered, &request, fds)
}

/// In the forked child: take the request's descriptors as stdio, report
/// and lifeline, then supervise the program.
fn supervisor(server: i32, entered: &Entered, request: &ZygoteRequest, fds: Vec<OwnedFd>) -> ! {
    // SAFETY: plain descriptor and signal calls in the single-threaded
    // child; the descriptors are owned here.
    unsafe {
        // The tree stops when the server dies (or the host cut everything).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        if libc::getppid() != server {
            libc::_exit(baa_launch::SETUP_FAILED);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let stdin = match fds.get(4) {
            Some(fd) => libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10),
            None => libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC),
        };
        // Out of the way of 0..=4 first, then into place.
        let high: Vec<i32> = fds[..4]
            .iter()
            .map(|fd| libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10))
            .collect();
        let [out, err, report, lifeline] = [high[0], high[1], high[2], high[3]];
        if stdin < 0 || high.iter().any(|fd| *fd < 0) {
            libc::_exit(baa_launch::SETUP_FAILED);
        }
        for (from, to) in [
            (stdin, 0),
            (out, 1),
            (err, 2),
            (report, REPORT_FD),
            (lifeline, LIFELINE_FD),
        ] {
            if libc::dup2(from, to) < 0 {
                libc::_exit(baa_launch::SETUP_FAILED);
            }
        }
        drop(fds);
        for fd in [stdin, out, err, report, lifeline] {
            libc::close(fd);
        }
        // The control socket and everything above the lifeline: closed at
        // exec (the prepared descriptors live there too).
        libc::close_range(
            LIFELINE_FD as u32 + 1,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as i32,
        );
    }
    let spec = &request.spec;
    crate::supervise::run(spec, || {
        let prepared = confine::prepare_in(
            spec,
            &entered.root,
            entered.private.private(),
            &entered.worktree,
            &request.env,
        );
        // The supervisor becomes the step's user: it keeps nothing of the
        // server's (the host's root above all). Its copies are closed
        // here; the server's own are untouched, and this process never
        // drops them.
        for fd in entered.descriptors() {
            // SAFETY: closing this process's copies of the server's fds.
            unsafe { libc::close(fd) };
        }
        prepared
    })
}
