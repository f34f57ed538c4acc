//! Test fixture `probe`: a third-party worker kind whose `command` is a list
//! of operations, one per line, each reported on stdout as `<op>: ok …` or
//! `<op>: denied …`. Used by the host's tests to exercise the sandbox.
//!
//! Operations: `true` (nothing), `read PATH`, `write PATH TEXT`, `symlink TARGET LINK`,
//! `spawn PROGRAM ARGS…`, `sh SCRIPT` (`sh -c SCRIPT`), `connect HOST:PORT`, `artifact NAME TEXT`, `emit EVENT MESSAGE`, `checkpoint TYPE SUMMARY`, `resume` (print the resume checkpoint),
//! `followup NAME KIND REASON`, `block REASON`, `loop`, `alloc MIB`, `panic`,
//! and the hostile ones: `recurse`, `unreachable`, `exit CODE`, `flood MIB`,
//! `line MIB` (one line), `bytes` (invalid UTF-8 and terminal escapes),
//! `bigemit MIB`, `emitmany N`, `fsops N` (timed file operations), `spawnmany N`, `openmany N`, `readlong N`, `rawopen PATH`
//! (a raw WASI open; `\0` in PATH is a NUL byte); `ambient`
//! prints what the sandbox hands the worker (environment, arguments, stdin,
//! directories).

use std::io::Write;

use baa_worker_sdk::*;

struct Probe;

impl Worker for Probe {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("probe")
            .description("Test fixture: performs the operations its command lists")
            .version("0.1.0")
            .program("true")
            .program("touch")
            .program("sh")
            .program("python3")
            .env("PROBE_VAR")
    }

    fn execute(request: Step) -> Result<WorkerOutcome, ExecuteError> {
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
                "true" => Ok("nothing to do".into()),
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
                // The typed refusal of `baa:worker@0.2`: reason|message|grant.
                "denial" => match spawn(&Command::new(arg(1), words[2..].iter().copied())) {
                    Err(SpawnError::Denied(d)) => Ok(format!(
                        "{:?}|{}|{}",
                        d.reason,
                        d.message,
                        d.operator_can_grant.as_deref().unwrap_or("none")
                    )),
                    Err(e) => Err(describe_spawn_error(&e)),
                    Ok(_) => Err("it was allowed".into()),
                },
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
                "recurse" => Ok(recurse(0).to_string()),
                "unreachable" => core::arch::wasm32::unreachable(),
                "exit" => std::process::exit(arg(1).parse().unwrap_or(1)),
                "flood" => write_repeated(
                    b"flood flood flood flood flood flood flood flood flood flood\n",
                    arg(1).parse::<usize>().unwrap_or(1) * 1024 * 1024,
                ),
                "line" => write_repeated(
                    &[b'x'; 4096],
                    arg(1).parse::<usize>().unwrap_or(1) * 1024 * 1024,
                ),
                "bytes" => std::io::stdout()
                    .write_all(b"\xff\xfe invalid utf-8 \x1b[31mred\x1b[0m \x1b]0;title\x07 bell\n")
                    .map(|_| "raw bytes written".into())
                    .map_err(|e| e.to_string()),
                "bigemit" => {
                    let mib: usize = arg(1).parse().unwrap_or(1);
                    emit(
                        Level::Info,
                        "probe.big",
                        &"m".repeat(mib * 1024 * 1024),
                        None,
                    );
                    Ok("emitted".into())
                }
                "fsops" => fs_ops(arg(1).parse().unwrap_or(100)),
                "emit" => {
                    emit(Level::Info, arg(1), &rest(2), None);
                    Ok(format!("emitted {}", arg(1)))
                }
                "emitmany" => {
                    let n: usize = arg(1).parse().unwrap_or(1);
                    for i in 0..n {
                        emit(Level::Debug, "probe.many", &format!("event {i}"), None);
                    }
                    Ok(format!("emitted {n} events"))
                }
                "spawnmany" => {
                    let n: usize = arg(1).parse().unwrap_or(1);
                    let mut held = Vec::new();
                    let mut refused = None;
                    for i in 0..n {
                        match spawn(&Command::new("sh", ["-c", "sleep 30"])) {
                            Ok(process) => held.push(process),
                            Err(e) => {
                                refused =
                                    Some(format!("process {i}: {}", describe_spawn_error(&e)));
                                break;
                            }
                        }
                    }
                    match refused {
                        Some(why) => Err(why),
                        None => Ok(format!("{} running", held.len())),
                    }
                }
                "openmany" => {
                    let n: usize = arg(1).parse().unwrap_or(1);
                    let mut held = Vec::new();
                    let mut failed = None;
                    for i in 0..n {
                        match std::fs::File::open("README.md") {
                            Ok(file) => held.push(file),
                            Err(e) => {
                                failed = Some(format!("open {i}: {e}"));
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(why) => Err(why),
                        None => Ok(format!("{} open", held.len())),
                    }
                }
                "ambient" => {
                    use std::io::Read;
                    let mut stdin = Vec::new();
                    let stdin = std::io::stdin()
                        .read_to_end(&mut stdin)
                        .map(|_| stdin.len());
                    let root = std::fs::read_dir("/").map(|d| d.count());
                    let here = std::fs::read_dir(".").map(|d| d.count());
                    Ok(format!(
                        "env={} args={} stdin={:?} root={} here={}",
                        std::env::vars().count(),
                        std::env::args().count(),
                        stdin.map_err(|e| e.kind().to_string()),
                        root.map(|n| n.to_string())
                            .unwrap_or_else(|e| e.to_string()),
                        here.map(|n| n.to_string())
                            .unwrap_or_else(|e| e.to_string()),
                    ))
                }
                "rawopen" => {
                    // `\0` in the script stands for a NUL byte.
                    use wasi::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
                    let path = rest(1).replace("\\0", "\0");
                    let dirs = wasi::filesystem::preopens::get_directories();
                    match dirs.first() {
                        Some((dir, _)) => dir
                            .open_at(
                                PathFlags::empty(),
                                &path,
                                OpenFlags::empty(),
                                DescriptorFlags::READ,
                            )
                            .map(|_| "opened".to_string())
                            .map_err(|e| format!("{e:?}")),
                        None => Err("no preopened directory".into()),
                    }
                }
                "readlong" => {
                    let n: usize = arg(1).parse().unwrap_or(1);
                    std::fs::read_to_string("a/".repeat(n) + "x").map_err(|e| e.to_string())
                }
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

/// `n` rounds of file operations in `fsops/` (write, open+read, stat, then
/// one readdir), timed here; prints the mean nanoseconds per operation as
/// `write W read R stat S readdir D`. The benchmarks run the same natively.
fn fs_ops(n: u32) -> Result<String, String> {
    use std::time::Instant;
    let e = |e: std::io::Error| e.to_string();
    let dir = std::path::Path::new("fsops");
    std::fs::create_dir_all(dir).map_err(e)?;
    let payload = [7u8; 256];
    let paths: Vec<_> = (0..n).map(|i| dir.join(format!("f{i}"))).collect();
    let t = Instant::now();
    for p in &paths {
        std::fs::write(p, payload).map_err(e)?;
    }
    let write = t.elapsed();
    let t = Instant::now();
    for p in &paths {
        std::hint::black_box(std::fs::read(p).map_err(e)?);
    }
    let read = t.elapsed();
    let t = Instant::now();
    for p in &paths {
        std::hint::black_box(std::fs::metadata(p).map_err(e)?.len());
    }
    let stat = t.elapsed();
    let t = Instant::now();
    let count = std::fs::read_dir(dir).map_err(e)?.count();
    let readdir = t.elapsed();
    std::fs::remove_dir_all(dir).map_err(e)?;
    let per = |d: std::time::Duration| d.as_nanos() / u128::from(n.max(1));
    Ok(format!(
        "write {} read {} stat {} readdir {} entries {count}",
        per(write),
        per(read),
        per(stat),
        readdir.as_nanos()
    ))
}

/// Recurse until the stack runs out.
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    let deeper = recurse(depth + 1);
    std::hint::black_box(deeper) + 1
}

/// Write `unit` to stdout until `total` bytes are written.
fn write_repeated(unit: &[u8], total: usize) -> Result<String, String> {
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    while written < total {
        out.write_all(unit).map_err(|e| e.to_string())?;
        written += unit.len();
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(format!("wrote {written} bytes"))
}

export_worker!(Probe);
