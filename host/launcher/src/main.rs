//! `baa-launch`: runs between the host's fork and the exec of a worker's
//! subprocess. It stays as a small supervisor (a child subreaper in a new
//! session) and forks the program, which confines itself before exec
//! (`confine.rs`); the supervisor then reaps and, at the end, kills the whole
//! tree (`supervise.rs`).
//!
//! Usage: `baa-launch --fds REPORT:LIFELINE SPEC-JSON` (run by the host,
//! which passes the report pipe and the lifeline as inherited descriptors so
//! that it can spawn with `posix_spawn`; they are moved to 3 and 4 and every
//! other inherited descriptor is closed), `baa-launch SPEC-JSON` (descriptors
//! already on 3 and 4), `baa-launch --probe`,
//! `baa-launch --self-test SPEC-JSON` (confine itself, try what must be
//! refused, print the verdicts), `baa-launch --probe-view PATH UID` (whether
//! PATH's file system takes an idmapped view for UID), `baa-launch
//! --hold-userns` (a step's user namespace, held until stdin
//! closes) or
//! `baa-launch --sweep UID` (kill every process of a dedicated user), or
//! `baa-launch --zygote --fds CONTROL ENVIRONMENT-JSON` (a step's fork
//! server, `zygote.rs`).

mod builtin;
mod confine;
mod namespace;
mod supervise;
mod sys;
mod view;
mod zygote;

use baa_launch::Stage;
use std::io::Write;
use std::os::fd::FromRawFd;

use baa_launch::{LaunchSpec, Report, LIFELINE_FD, REPORT_FD, SETUP_FAILED};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--probe") => {
            let probe = confine::probe();
            println!("{}", serde_json::to_string(&probe).unwrap_or_default());
        }
        Some("--self-test") => self_test(args.get(2)),
        Some("--probe-view") => probe_view(args.get(2), args.get(3)),
        Some("--hold-userns") => std::process::exit(view::hold_user_namespace()),
        Some("--sweep") => {
            let uid = args.get(2).and_then(|u| u.parse::<u32>().ok());
            match uid {
                Some(uid) if uid != 0 => std::process::exit(supervise::sweep(uid)),
                _ => {
                    eprintln!("baa-launch: --sweep needs a non-zero uid");
                    std::process::exit(2)
                }
            }
        }
        Some("--zygote") => {
            let control = args.get(3).and_then(|f| f.parse::<i32>().ok());
            let env = args
                .get(4)
                .and_then(|e| serde_json::from_str::<baa_launch::Environment>(e).ok());
            match (args.get(2).map(String::as_str), control, env) {
                (Some("--fds"), Some(control), Some(env)) => {
                    adopt_control(control);
                    std::process::exit(zygote::serve(env))
                }
                _ => {
                    eprintln!("baa-launch: --zygote --fds CONTROL ENVIRONMENT-JSON");
                    std::process::exit(2)
                }
            }
        }
        Some("--fds") => {
            let fds = args.get(2).and_then(|f| f.split_once(':'));
            let fds = fds.and_then(|(r, l)| Some((r.parse().ok()?, l.parse().ok()?)));
            match (fds, args.get(3)) {
                (Some((report_fd, lifeline_fd)), Some(spec)) => {
                    adopt_descriptors(report_fd, lifeline_fd);
                    launch(spec)
                }
                _ => {
                    eprintln!("baa-launch: --fds REPORT:LIFELINE SPEC-JSON");
                    std::process::exit(2)
                }
            }
        }
        Some(spec) => launch(spec),
        None => {
            eprintln!(
                "baa-launch is started by baa-runner for each worker subprocess; try --probe"
            );
            std::process::exit(2)
        }
    }
}

/// `--self-test SPEC`: confine this process as `SPEC` says and try what it
/// must not do; print the checks.
fn self_test(spec: Option<&String>) {
    let spec: LaunchSpec = match spec.map(|s| serde_json::from_str(s)) {
        Some(Ok(spec)) => spec,
        _ => {
            eprintln!("baa-launch: --self-test needs a launch spec");
            std::process::exit(2)
        }
    };
    match confine::self_test(&spec) {
        Ok(checks) => println!("{}", serde_json::to_string(&checks).unwrap_or_default()),
        Err((stage, message)) => {
            eprintln!("baa-launch: self-test could not confine itself ({stage}): {message}");
            std::process::exit(SETUP_FAILED)
        }
    }
}

/// `--probe-view PATH UID`: whether PATH's file system takes an idmapped
/// view for UID; print the verdict.
fn probe_view(path: Option<&String>, uid: Option<&String>) {
    let uid = uid.and_then(|u| u.parse::<u32>().ok());
    match (path.map(std::path::PathBuf::from), uid) {
        (Some(path), Some(uid)) => {
            let user = baa_launch::User { uid, gid: uid };
            let verdict = view::probe(&path, user);
            println!("{}", serde_json::to_string(&verdict).unwrap_or_default());
        }
        _ => {
            eprintln!("baa-launch: --probe-view PATH UID");
            std::process::exit(2)
        }
    }
}

/// Move the host's report and lifeline descriptors to 3 and 4 and close
/// every other inherited descriptor above stderr: while the host spawned
/// this launcher, others it spawned at the same moment may have been
/// handed here too.
fn adopt_descriptors(report_fd: i32, lifeline_fd: i32) {
    // SAFETY: plain descriptor system calls on this single-threaded process.
    unsafe {
        let report = libc::fcntl(report_fd, libc::F_DUPFD_CLOEXEC, 10);
        let lifeline = libc::fcntl(lifeline_fd, libc::F_DUPFD_CLOEXEC, 10);
        if report < 0 || lifeline < 0 {
            eprintln!("baa-launch: the host's descriptors are missing");
            std::process::exit(SETUP_FAILED);
        }
        if libc::dup2(report, REPORT_FD) < 0 || libc::dup2(lifeline, LIFELINE_FD) < 0 {
            eprintln!("baa-launch: dup2: {}", std::io::Error::last_os_error());
            std::process::exit(SETUP_FAILED);
        }
        libc::close_range(LIFELINE_FD as u32 + 1, u32::MAX, 0);
    }
}

/// Move the fork server's control socket to its descriptor and close every
/// other inherited descriptor above stderr.
fn adopt_control(control: i32) {
    // SAFETY: plain descriptor system calls on this single-threaded process.
    unsafe {
        let fd = libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10);
        if fd < 0 || libc::dup3(fd, zygote::CONTROL_FD, libc::O_CLOEXEC) < 0 {
            eprintln!("baa-launch: the host's control socket is missing");
            std::process::exit(SETUP_FAILED);
        }
        libc::close_range(zygote::CONTROL_FD as u32 + 1, u32::MAX, 0);
        // Keep the lifeline's number taken: a supervisor moves a launch's
        // descriptors to 0..=4 over whatever the server holds there, so
        // what the server opens must come after it.
        if libc::dup2(zygote::CONTROL_FD, LIFELINE_FD) < 0 {
            std::process::exit(SETUP_FAILED);
        }
    }
}

fn launch(spec: &str) -> ! {
    let spec: LaunchSpec = match serde_json::from_str(spec) {
        Ok(spec) => spec,
        Err(e) => refuse(Stage::Spec, &format!("the launch spec is not valid: {e}")),
    };
    supervise::run(&spec, || confine::prepare(&spec))
}

/// Write `report` as one line on the report descriptor (stderr when there
/// is none).
pub fn report(report: &Report) {
    let line = format!("{}\n", serde_json::to_string(report).unwrap_or_default());
    // SAFETY: fcntl only inspects the descriptor number.
    let open = unsafe { libc::fcntl(REPORT_FD, libc::F_GETFD) } >= 0;
    if open {
        // SAFETY: the host hands descriptor 3 to the launcher for its
        // reports; the copy is not closed here.
        let pipe = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
        let mut pipe = std::mem::ManuallyDrop::new(pipe);
        let _ = pipe.write_all(line.as_bytes());
    } else {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Report that the program was not started, and exit.
pub fn refuse(stage: Stage, message: &str) -> ! {
    report(&Report::Refused {
        stage,
        message: message.to_string(),
    });
    std::process::exit(SETUP_FAILED)
}
