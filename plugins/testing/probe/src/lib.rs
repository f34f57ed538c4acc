//! Test fixture `probe`: a third-party worker kind whose `command` is a list
//! of operations, one per line, each reported on stdout as `<op>: ok …` or
//! `<op>: denied …`. Used by the host's tests to exercise the sandbox.
//!
//! Operations: `read PATH`, `write PATH TEXT`, `symlink TARGET LINK`,
//! `spawn PROGRAM ARGS…`, `sh SCRIPT` (`sh -c SCRIPT`), `connect HOST:PORT`, `artifact NAME TEXT`, `checkpoint TYPE SUMMARY`, `resume` (print the resume checkpoint),
//! `followup NAME KIND REASON`, `block REASON`, `loop`, `alloc MIB`, `panic`.

use baa_worker_sdk::*;

struct Probe;

impl Worker for Probe {
    fn describe() -> WorkerInfo {
        WorkerInfo::new(
            "probe",
            "0.1.0",
            "Test fixture: performs the operations its command lists",
        )
        .program("true")
        .program("touch")
        .program("sh")
        .env("PROBE_VAR")
    }

    fn execute(request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        let script = request.command.ok_or_else(|| {
            ExecuteError::InvalidRequest("`command` lists the probe operations".into())
        })?;
        let mut outcome = WorkerOutcome::completed("all operations ran");
        let mut failures = 0;
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let rest = |n: usize| words.get(n..).map(|w| w.join(" ")).unwrap_or_default();
            let arg = |n: usize| words.get(n).copied().unwrap_or("");
            let result: Result<String, String> = match words[0] {
                "read" => std::fs::read_to_string(arg(1)).map_err(|e| e.to_string()),
                "write" => std::fs::write(arg(1), rest(2))
                    .map(|_| "written".into())
                    .map_err(|e| e.to_string()),
                #[allow(deprecated)] // the stable way to make a symlink on WASI
                "symlink" => std::fs::soft_link(arg(1), arg(2))
                    .map(|_| "created".into())
                    .map_err(|e| e.to_string()),
                "spawn" | "sh" => {
                    let cmd = if words[0] == "sh" {
                        Command::new("sh", ["-c".to_string(), rest(1)])
                    } else {
                        Command::new(arg(1), words[2..].iter().copied())
                    };
                    let cmd = cmd.env("PROBE_VAR", "from-probe");
                    match run(&cmd) {
                        Ok(done) if done.success() => Ok(done.stdout_text()),
                        Ok(done) => Err(done.describe_exit()),
                        Err(e) => Err(describe_spawn_error(&e)),
                    }
                }
                "connect" => std::net::TcpStream::connect(arg(1))
                    .map(|_| "connected".into())
                    .map_err(|e| e.to_string()),
                "artifact" => declare_artifact(arg(1), "probe artifact", rest(2).as_bytes())
                    .map_err(|e| format!("{e:?}")),
                "checkpoint" => capture_checkpoint(arg(1), &rest(2), Some(rest(2).as_bytes()))
                    .map(|seq| seq.to_string())
                    .map_err(|e| format!("{e:?}")),
                "resume" => match &request.resume {
                    Some(r) => Ok(format!(
                        "seq={} type={} summary={} payload={}",
                        r.seq,
                        r.checkpoint_type,
                        r.summary,
                        r.payload
                            .as_deref()
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default()
                    )),
                    None => Err("no resume checkpoint".into()),
                },
                "followup" => {
                    outcome = outcome.with_followup(arg(1), arg(2), &rest(3));
                    Ok("suggested".into())
                }
                "block" => {
                    outcome = WorkerOutcome::blocked(rest(1));
                    Ok("blocked".into())
                }
                "loop" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mib: usize = arg(1).parse().unwrap_or(1);
                    let mut blocks = Vec::new();
                    for _ in 0..mib {
                        blocks.push(vec![1u8; 1024 * 1024]);
                    }
                    Ok(format!("allocated {} MiB", blocks.len()))
                }
                "panic" => panic!("probe was asked to panic"),
                other => Err(format!("unknown operation `{other}`")),
            };
            match result {
                Ok(text) => println!("{line}: ok {}", text.trim_end()),
                Err(why) => {
                    failures += 1;
                    println!("{line}: denied {why}");
                }
            }
        }
        if failures > 0 && outcome.status == Status::Completed {
            outcome = WorkerOutcome::failed(format!("{failures} operation(s) were refused"));
        }
        Ok(outcome)
    }
}

export_worker!(Probe);
