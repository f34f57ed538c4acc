// Red-team worker kinds `redteam` (granted nothing), `redteam-git`
// (requests `git`) and `redteam-sh` (requests `sh`), shared through
// `#[path]`: written straight against `wit/worker.wit` with wit-bindgen (no
// SDK). Each crate sets `KIND` and `PROGRAMS`.
//
// `command` lists operations, one per line; each prints `<op>: ok …` or
// `<op>: error …` on stdout, and the next runs whatever happened. Times are
// milliseconds since `execute` was called (the WASI monotonic clock).
//
// File operations through WASI (the host process, as root, cap-std):
//   write PATH TEXT… | append PATH TEXT… | rm PATH | rmtree PATH | mkdir PATH
//   symlink TARGET LINK | hardlink FROM TO | rename FROM TO | cat PATH | ls DIR
//   many-files DIR N        N empty files DIR/fNNNNNNN (mkdir -p DIR)
//   fill DIR FILES KIB      FILES incompressible files of KIB KiB
// Clock: clock | sleep-ms N | until-ms N (sleep until N ms after the start)
// Host interfaces:
//   scratch-file NAME TEXT… | capture-git-diff | capture TYPE TEXT…
//   emit NAME MESSAGE…      (level info, no data)
//   emit-data NAME JSON     (message "m")
//   spawn PROG ARGS…        run to its end, print status and output
//   spawn-bg PROG ARGS…     start and keep it running (handle kept)
//   sh SCRIPT… | sh-bg SCRIPT… | git ARGS…
//   spawn-cwd CWD PROG ARGS…   spawn with a cwd
//   bigwrite PATH MIB | fsync-at-ms MS PATH | long-paths N | captures N
//   denied-flood N KIB      N spawns of a program nobody granted, 64 args of KIB each
//   spawn-at-ms MS PROG ARGS…   until-ms MS, then spawn (timed)
//   scratch-at-ms MS        until-ms MS, then scratch-file (timed)
//   capture-at-ms MS        until-ms MS, then capture("git-diff") (timed)
// Repository plants (through WASI only):
//   lazy-fetch CMD…         make the repository a partial clone whose
//                           promisor remote is `ext::CMD` (git-remote-ext
//                           runs CMD without a shell), delete the loose
//                           object of the first index entry's blob and change
//                           that file: any git that needs the old blob
//                           lazily fetches, i.e. runs CMD.
//   ext-diff TARGET         `diff.external = <the ELF interpreter>` and a
//                           symlink `sub/x -> TARGET`: git's external diff
//                           runs `ld.so sub/x OLD HEX MODE NEW HEX MODE`,
//                           i.e. TARGET with those arguments.
//   textconv TARGET         `diff.ldso.textconv = <the ELF interpreter>` for
//                           `*.ldso`: git runs `ld.so TMPFILE` on the blob.

use std::io::Write;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "worker",
});

use baa::worker::types::StepRequest;
use baa::worker::{checkpoint, events, subprocess};
use exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Guest, Status, WorkerInfo, WorkerOutcome,
};

/// The dynamic loader every dynamically linked program on this machine names.
const LDSO: &str = "/lib64/ld-linux-x86-64.so.2";

struct Redteam;

static mut KEPT: Vec<subprocess::Process> = Vec::new();

fn keep(p: subprocess::Process) {
    // SAFETY: the guest is single-threaded.
    #[allow(static_mut_refs)]
    unsafe {
        KEPT.push(p)
    }
}

fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Guest for Redteam {
    fn describe() -> WorkerInfo {
        WorkerInfo {
            name: crate::KIND.into(),
            version: "0.1.0".into(),
            description: "Test fixture: red-team attacks on the host".into(),
            capabilities: Capabilities {
                programs: crate::PROGRAMS.iter().map(|p| p.to_string()).collect(),
                env: Vec::new(),
                network: false,
            },
        }
    }

    fn execute(request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        now_ms();
        let script = request.command.clone().unwrap_or_default();
        let mut ran = 0;
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let result = operation(&words);
            ran += 1;
            let op = words[0];
            let t = now_ms();
            let mut out = std::io::stdout().lock();
            let _ = match result {
                Ok(text) => writeln!(out, "{op}: ok [t={t}] {}", text.trim_end()),
                Err(why) => writeln!(out, "{op}: error [t={t}] {}", why.trim_end()),
            };
            let _ = out.flush();
        }
        Ok(WorkerOutcome {
            status: Status::Completed,
            summary: format!("{ran} operation(s) ran; returned at {} ms", now_ms()),
            needs_human: false,
            exit_code: None,
            suggested_followup: Vec::new(),
        })
    }
}

fn num(words: &[&str], n: usize, default: u64) -> u64 {
    words.get(n).and_then(|w| w.parse().ok()).unwrap_or(default)
}

fn rest(words: &[&str], n: usize) -> String {
    words.get(n..).map(|w| w.join(" ")).unwrap_or_default()
}

fn arg<'a>(words: &[&'a str], n: usize) -> &'a str {
    words.get(n).copied().unwrap_or("")
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn until(ms: u64) {
    let now = now_ms();
    if ms > now {
        std::thread::sleep(std::time::Duration::from_millis(ms - now));
    }
}

fn command(program: &str, args: Vec<String>) -> subprocess::Command {
    subprocess::Command {
        program: program.into(),
        args,
        cwd: None,
        env: Vec::new(),
        timeout_ms: None,
        stdin: None,
    }
}

fn operation(words: &[&str]) -> Result<String, String> {
    use std::fs;
    match words[0] {
        "write" => fs::write(arg(words, 1), rest(words, 2))
            .map(|_| "written".into())
            .map_err(io),
        "append" => {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(arg(words, 1))
                .map_err(io)?;
            f.write_all(format!("{}\n", rest(words, 2)).as_bytes())
                .map_err(io)?;
            Ok("appended".into())
        }
        "rm" => fs::remove_file(arg(words, 1))
            .map(|_| "removed".into())
            .map_err(io),
        "rmtree" => fs::remove_dir_all(arg(words, 1))
            .map(|_| "removed".into())
            .map_err(io),
        "mkdir" => fs::create_dir_all(arg(words, 1))
            .map(|_| "made".into())
            .map_err(io),
        "symlink" => symlink(arg(words, 1), arg(words, 2)),
        "hardlink" => fs::hard_link(arg(words, 1), arg(words, 2))
            .map(|_| "linked".into())
            .map_err(io),
        "rename" => fs::rename(arg(words, 1), arg(words, 2))
            .map(|_| "renamed".into())
            .map_err(io),
        "cat" => fs::read(arg(words, 1))
            .map(|b| String::from_utf8_lossy(&b).replace('\n', "\\n"))
            .map_err(io),
        "ls" => {
            let mut names: Vec<String> = fs::read_dir(arg(words, 1))
                .map_err(io)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.join(" "))
        }
        "many-files" => {
            let (dir, n) = (arg(words, 1), num(words, 2, 1));
            fs::create_dir_all(dir).map_err(io)?;
            for i in 0..n {
                fs::File::create(format!("{dir}/f{i:07}")).map_err(|e| format!("file {i}: {e}"))?;
            }
            Ok(format!("{n} files in {dir}"))
        }
        "fill" => {
            let (dir, files, kib) = (arg(words, 1), num(words, 2, 1), num(words, 3, 1) as usize);
            fs::create_dir_all(dir).map_err(io)?;
            for i in 0..files {
                fs::write(
                    format!("{dir}/f{i:05}.bin"),
                    pseudo_random(kib * 1024, i + 1),
                )
                .map_err(io)?;
            }
            Ok(format!("{files} files of {kib} KiB"))
        }
        "clock" => Ok(format!("{} ms", now_ms())),
        "sleep-ms" => {
            std::thread::sleep(std::time::Duration::from_millis(num(words, 1, 0)));
            Ok("slept".into())
        }
        "until-ms" => {
            until(num(words, 1, 0));
            Ok("reached".into())
        }
        "scratch-file" => subprocess::scratch_file(arg(words, 1), rest(words, 2).as_bytes())
            .map_err(|e| format!("{e:?}")),
        "scratch-at-ms" => {
            until(num(words, 1, 0));
            let t0 = now_ms();
            let r = subprocess::scratch_file("late", b"late").map_err(|e| format!("{e:?}"));
            Ok(format!(
                "called at {t0} ms, returned at {} ms: {r:?}",
                now_ms()
            ))
        }
        "capture-git-diff" => checkpoint::capture("git-diff", "the host's snapshot, please", None)
            .map(|seq| format!("seq={seq}"))
            .map_err(|e| format!("{e:?}")),
        "capture-at-ms" => {
            until(num(words, 1, 0));
            let t0 = now_ms();
            let r = checkpoint::capture("git-diff", "late snapshot", None);
            Ok(format!(
                "called at {t0} ms, returned at {} ms: {r:?}",
                now_ms()
            ))
        }
        "capture" => checkpoint::capture(
            arg(words, 1),
            "the worker's own",
            Some(rest(words, 2).as_bytes()),
        )
        .map(|seq| format!("seq={seq}"))
        .map_err(|e| format!("{e:?}")),
        "emit" => {
            events::emit(events::Level::Info, arg(words, 1), &rest(words, 2), None);
            Ok("emitted".into())
        }
        "emit-data" => {
            events::emit(
                events::Level::Info,
                arg(words, 1),
                "m",
                Some(&rest(words, 2)),
            );
            Ok("emitted".into())
        }
        "spawn" => run(&command(
            arg(words, 1),
            words[2..].iter().map(|s| s.to_string()).collect(),
        )),
        "spawn-bg" => {
            let p = subprocess::spawn(&command(
                arg(words, 1),
                words[2..].iter().map(|s| s.to_string()).collect(),
            ))
            .map_err(|e| format!("{e:?}"))?;
            let pid = p.pid();
            keep(p);
            Ok(format!("pid {pid}"))
        }
        "spawn-at-ms" => {
            until(num(words, 1, 0));
            let t0 = now_ms();
            let r = run(&command(
                arg(words, 2),
                words[3..].iter().map(|s| s.to_string()).collect(),
            ));
            Ok(format!(
                "called at {t0} ms, returned at {} ms: {r:?}",
                now_ms()
            ))
        }
        "sh" => run(&command("sh", vec!["-c".into(), rest(words, 1)])),
        "sh-bg" => {
            let p = subprocess::spawn(&command("sh", vec!["-c".into(), rest(words, 1)]))
                .map_err(|e| format!("{e:?}"))?;
            let pid = p.pid();
            keep(p);
            Ok(format!("pid {pid}"))
        }
        "git" => run(&command(
            "git",
            words[1..].iter().map(|s| s.to_string()).collect(),
        )),
        "denied-flood" => {
            let (n, kib) = (num(words, 1, 1), num(words, 2, 1) as usize);
            let a = "A".repeat(kib * 1024);
            let mut denied = 0;
            for _ in 0..n {
                if subprocess::spawn(&command("nobody-granted-this", vec![a.clone(); 64])).is_err()
                {
                    denied += 1;
                }
            }
            Ok(format!("{denied} of {n} denied"))
        }
        "bigwrite" => {
            let (path, mib) = (arg(words, 1), num(words, 2, 1) as usize);
            let chunk = pseudo_random(16 * 1024 * 1024, 3);
            let mut f = fs::File::create(path).map_err(io)?;
            for _ in 0..mib.div_ceil(16) {
                f.write_all(&chunk).map_err(io)?;
            }
            Ok(format!("{mib} MiB written, not synced"))
        }
        "fsync-at-ms" => {
            until(num(words, 1, 0));
            let t0 = now_ms();
            let f = fs::OpenOptions::new()
                .write(true)
                .open(arg(words, 2))
                .map_err(io)?;
            let r = f.sync_all();
            Ok(format!(
                "fsync called at {t0} ms, returned at {} ms: {r:?}",
                now_ms()
            ))
        }
        "long-paths" => {
            // 15 nested directories of 250-byte names, then N files of
            // 200-byte names: paths of about 3,970 bytes.
            let n = num(words, 1, 1);
            let mut dir = String::from("lp");
            for i in 0..15 {
                dir.push_str(&format!("/{i:02}{}", "d".repeat(248)));
            }
            fs::create_dir_all(&dir).map_err(io)?;
            for i in 0..n {
                fs::File::create(format!("{dir}/{i:07}{}", "f".repeat(193)))
                    .map_err(|e| format!("file {i}: {e}"))?;
            }
            Ok(format!("{n} files at paths of {} bytes", dir.len() + 201))
        }
        "captures" => {
            let n = num(words, 1, 1);
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(match checkpoint::capture("git-diff", "again", None) {
                    Ok(seq) => format!("seq={seq}"),
                    Err(e) => format!("{e:?}").chars().take(200).collect(),
                });
            }
            Ok(out.join("; "))
        }
        "spawn-cwd" => {
            let mut cmd = command(
                arg(words, 2),
                words[3..].iter().map(|s| s.to_string()).collect(),
            );
            cmd.cwd = Some(arg(words, 1).to_string());
            run(&cmd)
        }
        "lazy-fetch" => lazy_fetch(&rest(words, 1)),
        "ext-diff" => {
            append_config(&format!("[diff]\n\texternal = {LDSO}\n"))?;
            fs::create_dir_all("sub").map_err(io)?;
            let how = symlink(arg(words, 1), "sub/x")?;
            Ok(format!("diff.external = {LDSO}; sub/x: {how}"))
        }
        "textconv" => {
            append_config(&format!("[diff \"ldso\"]\n\ttextconv = {LDSO}\n"))?;
            let mut attrs = fs::read_to_string(".gitattributes").unwrap_or_default();
            attrs.push_str("*.ldso diff=ldso\n");
            fs::write(".gitattributes", attrs).map_err(io)?;
            fs::create_dir_all("sub").map_err(io)?;
            let how = symlink(arg(words, 1), "sub/y.ldso")?;
            Ok(format!("textconv = {LDSO}; sub/y.ldso: {how}"))
        }
        other => Err(format!("unknown operation `{other}`")),
    }
}

/// A symlink through WASI: as given, else the same target made relative
/// (enough `../` to climb to `/` from anywhere).
fn symlink(target: &str, link: &str) -> Result<String, String> {
    #[allow(deprecated)]
    let first = std::fs::soft_link(target, link);
    match first {
        Ok(()) => Ok(format!("-> {target}")),
        Err(e) if target.starts_with('/') => {
            let depth = link.matches('/').count();
            let relative = format!("{}{}", "../".repeat(depth + 40), &target[1..]);
            #[allow(deprecated)]
            std::fs::soft_link(&relative, link)
                .map(|()| format!("-> {relative} (absolute refused: {e})"))
                .map_err(|e2| format!("absolute: {e}; relative: {e2}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn append_config(text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(".git/config")
        .map_err(|e| format!(".git/config: {e}"))?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lazy_fetch(cmd: &str) -> Result<String, String> {
    use std::fs;
    let index = fs::read(".git/index").map_err(|e| format!(".git/index: {e}"))?;
    if index.len() < 12 + 62 || &index[..4] != b"DIRC" {
        return Err("no usable index".into());
    }
    // Index v2/v3: 12-byte header, then ctime, mtime (8 each), dev, ino,
    // mode, uid, gid, size (4 each), the 20-byte id, 2 bytes of flags, name.
    let entry = &index[12..];
    let id = hex(&entry[40..60]);
    let name_len = (u16::from_be_bytes([entry[60], entry[61]]) & 0x0fff) as usize;
    let name = String::from_utf8_lossy(&entry[62..62 + name_len]).into_owned();
    let object = format!(".git/objects/{}/{}", &id[..2], &id[2..]);
    fs::remove_file(&object).map_err(|e| format!("{object}: {e}"))?;
    append_config(&format!(
        "[core]\n\trepositoryformatversion = 1\n[extensions]\n\tpartialClone = origin\n\
         [remote \"origin\"]\n\turl = \"ext::{cmd}\"\n\tpromisor = true\n\
         [protocol \"ext\"]\n\tallow = always\n"
    ))?;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&name)
        .map_err(|e| format!("{name}: {e}"))?;
    f.write_all(b"changed by the red team\n").map_err(io)?;
    Ok(format!(
        "deleted {object} (the blob of {name}); promisor remote ext::{cmd}"
    ))
}

/// `n` bytes that do not compress (xorshift), different per `seed`.
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Run `cmd` to its end through the host; its status and output.
fn run(cmd: &subprocess::Command) -> Result<String, String> {
    let process = subprocess::spawn(cmd).map_err(|e| format!("{e:?}"))?;
    let mut output = Vec::new();
    loop {
        match process.next() {
            subprocess::Output::Stdout(bytes) | subprocess::Output::Stderr(bytes) => {
                output.extend_from_slice(&bytes)
            }
            subprocess::Output::Exited(status) => {
                let text: String = String::from_utf8_lossy(&output)
                    .replace('\n', " | ")
                    .chars()
                    .take(2000)
                    .collect();
                return if status.code == Some(0) {
                    Ok(text)
                } else {
                    Err(format!("{status:?}: {text}"))
                };
            }
        }
    }
}

export!(Redteam);
