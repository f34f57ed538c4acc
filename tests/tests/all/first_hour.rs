//! The CLI as a new user meets it (issue 16), through the real binary:
//! grants that compose, re-running and dry runs, exit codes and signals,
//! a live view that is quiet where it should be (and alive on a terminal
//! through a pseudo-terminal), and the usual conventions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baa_runner_tests::{read_json, read_lifecycle, Sandbox};
use serde_json::Value;

use crate::{assert_exit, cli};

fn request_file(sandbox: &Sandbox, name: &str, json: &Value) -> PathBuf {
    let path = sandbox.dir.path().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
    path
}

/// A file in a directory of its own that lives as long as the test.
fn sandbox_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn config_file(sandbox: &Sandbox, name: &str, text: &str) -> PathBuf {
    let path = sandbox.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn attempts(sandbox: &Sandbox) -> Vec<String> {
    let step = sandbox.runs.join("task-1/run-1/step-1");
    let mut names: Vec<String> = std::fs::read_dir(step)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn operator_grants_add_to_a_builtin_kinds_and_misspelt_kinds_are_named() {
    let sandbox = Sandbox::new();
    let mut request = sandbox.request_json("shell", "echo \"FOO=$FOO\"");
    request["runtime"]["env"] = serde_json::json!({ "FOO": "bar" });
    let request = request_file(&sandbox, "shell", &request);
    // The README's own example: one more variable for shell, and a typo.
    let added = config_file(
        &sandbox,
        "added.toml",
        "[kinds.shell]\nenv = [\"FOO\"]\n\n[kinds.shel]\nenv = [\"BAR\"]\n\n[concurrency]\nkinds = { gti = 1 }\n",
    );
    let out = cli()
        .arg("--config")
        .arg(&added)
        .args(["run", "--json"])
        .arg(&request)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["logSummary"]["stdoutTail"]
            .to_string()
            .contains("FOO=bar"),
        "{result}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`[kinds.shel]`") && stderr.contains("did you mean `shell`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`[concurrency.kinds.gti]`") && stderr.contains("did you mean `git`?"),
        "{stderr}"
    );

    // Replacing is said loudly, and `kinds` shows what that takes away.
    let replaced = config_file(
        &sandbox,
        "replaced.toml",
        "[kinds.shell]\nreplace = true\nenv = [\"FOO\"]\n",
    );
    let (kinds, shell) = shell_kind(&replaced);
    assert_eq!(shell["missing"]["programs"], serde_json::json!(["sh"]));
    assert_eq!(shell["granted"]["env"], serde_json::json!(["FOO"]));
    assert_no_kebab_keys(&kinds);
    let human = cli()
        .arg("--config")
        .arg(&replaced)
        .arg("kinds")
        .output()
        .unwrap();
    assert!(
        text(&human.stdout).contains("missing:  ! programs [sh]"),
        "{}",
        text(&human.stdout)
    );
    let out = cli()
        .arg("--config")
        .arg(&replaced)
        .args(["run", "--quiet", "--next-attempt"])
        .arg(&request)
        .output()
        .unwrap();
    assert_exit(&out, 2);
}

/// `kinds --json` with `config`: all kinds, and the shell kind's entry.
fn shell_kind(config: &Path) -> (Value, Value) {
    let out = cli()
        .arg("--config")
        .arg(config)
        .args(["kinds", "--json"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let kinds: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shell = (kinds.as_array().unwrap().iter())
        .find(|k| k["name"] == "shell")
        .cloned()
        .unwrap();
    (kinds, shell)
}

/// Every key of every object is camelCase (as all the CLI's JSON is).
fn assert_no_kebab_keys(value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                assert!(!key.contains('-'), "kebab-case key {key}");
                assert_no_kebab_keys(inner);
            }
        }
        Value::Array(items) => items.iter().for_each(assert_no_kebab_keys),
        _ => {}
    }
}

#[test]
fn steps_rerun_prepared_attempts_run_and_dry_runs_write_nothing() {
    let sandbox = Sandbox::new();
    let request = request_file(
        &sandbox,
        "step",
        &sandbox.request_json("shell", "echo change >> notes.txt"),
    );
    let run = |args: &[&str]| {
        cli()
            .args(["run", "--json"])
            .args(args)
            .arg(&request)
            .output()
            .unwrap()
    };
    // A dry run before anything exists: ready, nothing written.
    let out = run(&["--dry-run"]);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["attemptState"], "free");
    assert!(!sandbox.runs.exists(), "a dry run wrote {:?}", sandbox.runs);

    assert_exit(&run(&[]), 0);
    // The same request again: refused, naming the way forward.
    let out = run(&[]);
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("--next-attempt"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--dry-run"]);
    assert_exit(&out, 3);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["attemptState"], "taken");

    let out = run(&["--next-attempt"]);
    assert_exit(&out, 0);
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["attempt"], 2);

    // prepare, then run: the prepared attempt is executed in place.
    let out = cli()
        .args(["prepare", "--json", "--next-attempt"])
        .arg(&request)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let prepared: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(prepared["attempt"], 3);
    assert_eq!(prepared["outcome"], "prepared");
    // Preparing it again, or running another request in it, is refused.
    let out = cli()
        .args(["prepare", "--json"])
        .arg(&request)
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let mut other = sandbox.request_json("shell", "echo something else");
    other["attempt"] = 3.into();
    let out = cli()
        .args(["run", "--json"])
        .arg(request_file(&sandbox, "other", &other))
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("`command`") && text(&out.stderr).contains("different request"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--dry-run", "--next-attempt"]);
    assert_exit(&out, 0);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["attemptState"], "prepared");
    let out = run(&["--next-attempt"]);
    assert_exit(&out, 0);
    let third: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(third["attempt"], 3);
    assert_eq!(third["outcome"], "completed");
    let events: Vec<String> =
        read_lifecycle(third["logPaths"]["lifecycleLogPath"].as_str().unwrap())
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(
        events[..3],
        ["run.prepared", "run.reopened", "step.started"]
    );
    let seqs: Vec<u64> = read_lifecycle(third["logPaths"]["lifecycleLogPath"].as_str().unwrap())
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // --resume: the next attempt, from the latest checkpoint.
    let latest = third["checkpoint"]["lastCheckpointSeq"].as_u64().unwrap();
    let out = run(&["--resume"]);
    assert_exit(&out, 0);
    let fourth: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fourth["attempt"], 4);
    assert_eq!(fourth["metadata"]["resumedFromSeq"], latest);
    assert_eq!(
        attempts(&sandbox),
        ["attempt-1", "attempt-2", "attempt-3", "attempt-4"]
    );

    // An unknown kind is bad input before anything is written.
    let mut unknown = sandbox.request_json("shel", "true");
    unknown["stepId"] = "other-step".into();
    let out = cli()
        .arg("run")
        .arg(request_file(&sandbox, "unknown", &unknown))
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`workerKind`") && stderr.contains("did you mean `shell`?"),
        "{stderr}"
    );
    assert!(!sandbox.runs.join("task-1/run-1/other-step").exists());
}

#[test]
fn a_closed_stdout_never_kills_a_step_and_ctrl_c_exits_130() {
    let sandbox = Sandbox::new();
    let request = request_file(
        &sandbox,
        "loud",
        &sandbox.request_json(
            "shell",
            "for i in $(seq 2000); do echo line $i; done; sleep 0.5; echo done > finished.txt",
        ),
    );
    // `run … | head -1`: the reader goes away at once.
    let mut child = cli()
        .arg("run")
        .arg(&request)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(sandbox.repo.join("finished.txt").exists());
    let result = read_json(
        sandbox
            .runs
            .join("task-1/run-1/step-1/attempt-1/result.json"),
    );
    assert_eq!(result["outcome"], "completed");

    let mut slow = sandbox.request_json("shell", "sleep 30");
    slow["stepId"] = "slow".into();
    let child = cli()
        .args(["run", "--quiet"])
        .arg(request_file(&sandbox, "slow", &slow))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let attempt = sandbox.runs.join("task-1/run-1/slow/attempt-1");
    wait_for_event(&attempt, "subprocess.started");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 130);
    let result = read_json(attempt.join("result.json"));
    assert_eq!(result["state"]["failure"]["reason"], "interrupted");
}

fn wait_for_event(attempt: &Path, event: &str) {
    let log = attempt.join("logs/lifecycle.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&format!("\"{event}\""))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {event} in {}", log.display());
}

#[test]
fn bad_input_of_every_kind_exits_3() {
    let sandbox = Sandbox::new();
    let broken = config_file(
        &sandbox,
        "broken.toml",
        "[kinds.shell]\nprogram = [\"sh\"]\n",
    );
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["--config".into(), broken.clone().into(), "kinds".into()],
            "program",
        ),
        (
            vec!["check".into(), "/nonexistent/kind.wasm".into()],
            "is not a file",
        ),
        (
            vec!["inspect".into(), "/nonexistent/kind.wasm".into()],
            "is not a file",
        ),
        (
            vec![
                "serve".into(),
                "--socket".into(),
                "/nonexistent/dir/sock".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "checkpoints".into(),
                "list".into(),
                "/nonexistent/step".into(),
            ],
            "is not a directory",
        ),
        (vec!["schema".into()], "--kind"),
        (
            vec!["checkpoints".into(), "list".into(), "/tmp".into()],
            "is not a step directory",
        ),
        (
            vec!["recover".into(), "/nonexistent/runs".into()],
            "is not a directory",
        ),
    ];
    for (args, says) in cases {
        let out = cli().args(&args).output().unwrap();
        assert_exit(&out, 3);
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // BAA_CONFIG names a file that must exist.
    let out = cli()
        .env("BAA_CONFIG", "/nonexistent/config.toml")
        .arg("kinds")
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(text(&out.stderr).contains("/nonexistent/config.toml"));
}

#[test]
fn conventions_version_completions_schema_and_default_config() {
    let out = cli().arg("--version").output().unwrap();
    assert_exit(&out, 0);
    let version = text(&out.stdout);
    for part in [
        "baa-runner 0.1.0",
        "commit ",
        "wasmtime 48.",
        "worlds baa:worker@0.1.0 and baa:worker@0.2.0",
    ] {
        assert!(version.contains(part), "{version}");
    }
    let help = cli().arg("--help").output().unwrap();
    assert!(text(&help.stdout).contains("130  interrupted by Ctrl-C"));

    // An empty BAA_CONFIG is no config.
    let out = cli().env("BAA_CONFIG", "").arg("kinds").output().unwrap();
    assert_exit(&out, 0);
    for shell in ["bash", "zsh", "fish"] {
        let out = cli().args(["completions", shell]).output().unwrap();
        assert_exit(&out, 0);
        assert!(text(&out.stdout).contains("next-attempt"), "{shell}");
    }
    let bash = cli().args(["completions", "bash"]).output().unwrap();
    let check = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&bash.stdout)?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "the bash completion script does not parse");
    // It completes a subcommand's options, as bash calls it.
    let script = sandbox_file("completion.bash", &bash.stdout);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(baa-runner run --js); COMP_CWORD=2; _baa__runner baa-runner --js run; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "--json", "{}", text(&out.stderr));

    for (kind, title) in [
        ("request", "StepExecutionRequest"),
        ("result", "StepExecutionResult"),
    ] {
        let out = cli().args(["schema", "--kind", kind]).output().unwrap();
        assert_exit(&out, 0);
        let schema: Value = serde_json::from_slice(&out.stdout).expect("exactly one document");
        assert_eq!(schema["title"], title);
    }

    // The default config: $XDG_CONFIG_HOME/baa-runner/config.toml when
    // neither --config nor BAA_CONFIG says otherwise.
    let sandbox = Sandbox::new();
    let xdg = sandbox.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("baa-runner")).unwrap();
    std::fs::write(xdg.join("baa-runner/config.toml"), "[kinds.gitt]\n").unwrap();
    let out = cli()
        .env_remove("BAA_CONFIG")
        .env("XDG_CONFIG_HOME", &xdg)
        .arg("kinds")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        text(&out.stderr).contains("`[kinds.gitt]`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_live_view_shows_the_step_not_the_hosts_snapshots() {
    let sandbox = Sandbox::new();
    let request = request_file(
        &sandbox,
        "view",
        &sandbox.request_json(
            "shell",
            "echo out; printf 'half ' >&2; sleep 0.3; printf 'line\\n' >&2; printf tail; echo change > file.txt",
        ),
    );
    let out = cli().arg("run").arg(&request).output().unwrap();
    assert_exit(&out, 0);
    let view = text(&out.stdout);
    assert!(!view.contains('\x1b'), "colours when piped: {view:?}");
    assert!(view.contains("  stderr| half line\n"), "{view}");
    // An unfinished last line is shown at the end.
    assert!(view.contains("\ntail\n"), "{view}");
    assert!(view.contains("⤷ checkpoint"), "{view}");
    for hidden in ["rev-parse", "baa-launch copy-file", "diff --cached"] {
        assert!(!view.contains(hidden), "{hidden} shown: {view}");
    }
    let out = cli()
        .args(["run", "--verbose", "--next-attempt"])
        .arg(&request)
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("diff --cached"));
    let out = cli()
        .args(["run", "--quiet", "--next-attempt"])
        .arg(&request)
        .output()
        .unwrap();
    let quiet = text(&out.stdout);
    assert!(
        !quiet.contains("step.started") && quiet.contains("COMPLETED"),
        "{quiet}"
    );
}

/// `run` on a terminal (a pseudo-terminal from `script`): a status line
/// with the step and its elapsed time keeps moving while the step is quiet,
/// in colour unless NO_COLOR is set.
#[test]
fn on_a_terminal_a_status_line_shows_the_step_alive() {
    let sandbox = Sandbox::new();
    let request = request_file(
        &sandbox,
        "quiet",
        &sandbox.request_json("shell", "sleep 1.5; echo finally"),
    );
    let on_terminal = |no_color: bool, next: bool| {
        let command = format!(
            "{} run {}{}",
            crate::built_binary("baa-runner").display(),
            if next { "--next-attempt " } else { "" },
            request.display()
        );
        let mut script = Command::new("script");
        script.args(["-qec", &command, "/dev/null"]);
        script.env("TERM", "xterm-256color").env_remove("NO_COLOR");
        if no_color {
            script.env("NO_COLOR", "1");
        }
        let out = script.output().expect("script(1) from util-linux runs");
        assert_exit(&out, 0);
        text(&out.stdout)
    };
    let coloured = on_terminal(false, false);
    assert!(coloured.contains("shell step"), "{coloured:?}");
    // The status line is redrawn (erase line) with the spinner and time.
    assert!(coloured.contains("\x1b[2K"), "{coloured:?}");
    assert!(coloured.contains("· 1s ·"), "{coloured:?}");
    assert!(coloured.contains("\x1b[32m"), "no colour: {coloured:?}");
    assert!(coloured.contains("finally"));
    let plain = on_terminal(true, true);
    assert!(plain.contains("\x1b[2K"), "{plain:?}");
    for colour in ["\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[36m"] {
        assert!(!plain.contains(colour), "colour with NO_COLOR: {plain:?}");
    }
}

/// The README followed on a fresh clone with nothing beside it (no
/// `../shared`): its Quick start block holds the two commands, and the
/// documented demos of the built-in kinds run from the clone to their
/// documented outcomes (the codex one against the scripted local model,
/// with the grant the demo writes). The clone's `target` is this build's,
/// so nothing is compiled twice.
#[test]
fn the_readme_works_from_a_fresh_clone_without_shared() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let outer = tempfile::tempdir().unwrap();
    let clone = outer.path().join("baa-runner");
    let status = Command::new("git")
        .args(["-c", "safe.directory=*", "clone", "-q"])
        .arg(&root)
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success(), "git clone failed");
    assert!(!outer.path().join("shared").exists());
    // <target>/debug/baa-runner: demo.sh uses the clone's target/debug.
    let bin = crate::built_binary("baa-runner");
    let target = bin.parent().and_then(Path::parent).unwrap();
    std::os::unix::fs::symlink(target, clone.join("target")).unwrap();

    let readme = std::fs::read_to_string(clone.join("README.md")).unwrap();
    assert!(readme.starts_with("# baa-runner\n\n## Quick start\n"));
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands, ["./scripts/setup.sh", "./scripts/test.sh"]);

    for (kind, says) in [
        ("shell", "ok - lint"),
        ("git", "farewell.txt"),
        ("codex", "suggested next: review the greeting"),
    ] {
        assert!(readme.contains(&format!("bash examples/demo.sh {kind}")));
        let out = Command::new("bash")
            .arg("examples/demo.sh")
            .arg(kind)
            .current_dir(&clone)
            .env("BAA_CONFIG", "/dev/null")
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert_exit(&out, 0);
        assert!(
            stdout.contains("· COMPLETED ──") && stdout.contains(says),
            "{kind}: {stdout}"
        );
        assert!(stdout.contains("result.json"), "{kind}: {stdout}");
    }
}

/// `serve` never takes over a socket a live server listens on, nor a path
/// that is not a socket; a stale socket of a stopped server is replaced.
#[test]
fn serve_refuses_a_live_servers_socket_and_other_files() {
    let sandbox = Sandbox::new();
    let socket = sandbox.dir.path().join("s.sock");
    let mut first = cli()
        .args(["serve", "--socket"])
        .arg(&socket)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli()
        .args(["serve", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(text(&out.stderr).contains("another server is listening"));
    assert!(!text(&out.stderr).contains("serving on"));
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the first server was cut off"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(first.wait().unwrap().success());

    let file = sandbox.dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = cli()
        .args(["serve", "--socket"])
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("is not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// A terminal (here a pipe) that stops reading loses lines of the live
/// view; the step still finishes and writes its records.
#[test]
fn a_terminal_that_stops_reading_never_stalls_the_step() {
    let sandbox = Sandbox::new();
    let request = request_file(
        &sandbox,
        "flood",
        &sandbox.request_json("shell", "seq 200000; echo done > finished.txt"),
    );
    let mut child = cli()
        .arg("run")
        .arg(&request)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nothing reads stdout until the result is written.
    let result = sandbox
        .runs
        .join("task-1/run-1/step-1/attempt-1/result.json");
    let start = Instant::now();
    while !result.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the step stalled behind its live view"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut shown = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read_json(&result)["outcome"], "completed");
    // The view was shown after all (or a note says what was not).
    assert!(
        shown.contains("COMPLETED"),
        "{}",
        &shown[shown.len().saturating_sub(2000)..]
    );
}

/// An attempt directory this host did not make as it makes them (here a
/// prepared attempt whose home was replaced by a link) is never taken up.
#[test]
fn a_planted_or_tampered_prepared_attempt_is_refused() {
    let sandbox = Sandbox::new();
    let request = request_file(&sandbox, "step", &sandbox.request_json("shell", "true"));
    assert_exit(&cli().arg("prepare").arg(&request).output().unwrap(), 0);
    let attempt = sandbox.runs.join("task-1/run-1/step-1/attempt-1");
    std::fs::remove_dir_all(attempt.join("home")).unwrap();
    std::os::unix::fs::symlink("/", attempt.join("home")).unwrap();
    let out = cli().arg("run").arg(&request).output().unwrap();
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("is a symbolic link"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(read_json(attempt.join("state.json"))["status"], "prepared");
}

/// An entry that adds to a built-in grant cannot take away from it, and an
/// operator's path for a program comes before the built-in name.
#[test]
fn added_grants_cannot_narrow_and_the_operators_path_comes_first() {
    let sandbox = Sandbox::new();
    let narrowing = config_file(&sandbox, "narrow.toml", "[kinds.codex]\nnetwork = false\n");
    let out = cli()
        .arg("--config")
        .arg(&narrowing)
        .arg("kinds")
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(
        text(&out.stderr).contains("kinds.codex.network")
            && text(&out.stderr).contains("replace = true"),
        "{}",
        text(&out.stderr)
    );
    let pinned = config_file(
        &sandbox,
        "pinned.toml",
        "[kinds.shell]\nprograms = [\"/bin/sh\"]\n",
    );
    let (_, shell) = shell_kind(&pinned);
    assert_eq!(
        shell["granted"]["programs"],
        serde_json::json!(["/bin/sh", "sh"])
    );
}
