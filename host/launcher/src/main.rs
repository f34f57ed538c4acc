//! `baa-launch`: runs between the host's fork and the exec of a worker's
//! subprocess. It stays as a small supervisor (a child subreaper in a new
//! session) and forks the program, which confines itself before exec
//! (`confine.rs`); the supervisor then reaps and, at the end, kills the whole
//! tree (`supervise.rs`).
//!
//! Usage: `baa-launch SPEC-JSON` (run by the host, with the report pipe on
//! descriptor 3 and the lifeline on 4), `baa-launch --probe`,
//! `baa-launch --self-test SPEC-JSON` (confine itself, try what must be
//! refused, print the verdicts) or `baa-launch --sweep UID` (kill every
//! process of a dedicated user).

mod confine;
mod supervise;

use std::io::Write;
use std::os::fd::FromRawFd;

use baa_launch::{LaunchSpec, Report, REPORT_FD, SETUP_FAILED};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--probe") => {
            let probe = confine::probe();
            println!("{}", serde_json::to_string(&probe).unwrap_or_default());
        }
        Some("--self-test") => {
            let spec: LaunchSpec = match args.get(2).map(|s| serde_json::from_str(s)) {
                Some(Ok(spec)) => spec,
                _ => {
                    eprintln!("baa-launch: --self-test needs a launch spec");
                    std::process::exit(2)
                }
            };
            match confine::self_test(&spec) {
                Ok(checks) => {
                    println!("{}", serde_json::to_string(&checks).unwrap_or_default());
                }
                Err((stage, message)) => {
                    eprintln!(
                        "baa-launch: self-test could not confine itself ({stage}): {message}"
                    );
                    std::process::exit(SETUP_FAILED)
                }
            }
        }
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
        Some(spec) => {
            let spec: LaunchSpec = match serde_json::from_str(spec) {
                Ok(spec) => spec,
                Err(e) => refuse("spec", &format!("the launch spec is not valid: {e}")),
            };
            supervise::run(spec)
        }
        None => {
            eprintln!(
                "baa-launch is started by baa-runner for each worker subprocess; try --probe"
            );
            std::process::exit(2)
        }
    }
}

/// Write `report` on the report descriptor (stderr when there is none) and
/// close it.
pub fn report(report: &Report) {
    let line = format!("{}\n", serde_json::to_string(report).unwrap_or_default());
    // SAFETY: fcntl only inspects the descriptor number.
    let open = unsafe { libc::fcntl(REPORT_FD, libc::F_GETFD) } >= 0;
    if open {
        // SAFETY: the host hands descriptor 3 to the launcher for this report;
        // nothing else in this process uses it, and it is closed here.
        let mut pipe = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
        let _ = pipe.write_all(line.as_bytes());
    } else {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Report that the program was not started, and exit.
pub fn refuse(stage: &str, message: &str) -> ! {
    report(&Report::Refused {
        stage: stage.to_string(),
        message: message.to_string(),
    });
    std::process::exit(SETUP_FAILED)
}
