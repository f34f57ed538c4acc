//! The third-party example kinds in `examples/kinds/` (Rust, Python,
//! JavaScript), built from source with `examples/kinds/build.sh`, loaded
//! from a plugin directory, stamped and checked with the CLI, and run
//! through the host on a real repository with the grants in
//! `examples/kinds/runner.toml`.

use std::path::{Path, PathBuf};

use baa_runner_tests::{git, read_json, Sandbox};
use serde_json::Value;

use crate::{assert_exit, cli, guest_build};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kinds")
}

/// `baa-runner run --json` of `kind` with `command` on the sandbox's repository.
fn run_kind(sandbox: &Sandbox, plugins: &Path, kind: &str, step: &str, command: &str) -> Value {
    let mut request = sandbox.request_json(kind, command);
    request["stepId"] = step.into();
    let file = sandbox.dir.path().join(format!("{step}.json"));
    std::fs::write(&file, request.to_string()).unwrap();
    let out = cli()
        .arg("--plugins-dir")
        .arg(plugins)
        .arg("--config")
        .arg(examples_dir().join("runner.toml"))
        .args(["run", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn artifact(result: &Value, name: &str) -> String {
    let artifact = result["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no artifact {name}: {result:#}"));
    std::fs::read_to_string(artifact["path"].as_str().unwrap()).unwrap()
}

fn compiled_how(result: &Value) -> String {
    let metadata = read_json(result["logPaths"]["metadataPath"].as_str().unwrap());
    metadata["plugin"]["compiled"].as_str().unwrap().to_string()
}

#[test]
fn the_example_kinds_build_from_source_pass_check_and_run_real_steps() {
    let sandbox = Sandbox::new();
    let plugins = sandbox.dir.path().join("plugins");
    let script = examples_dir().join("build.sh");
    guest_build(
        "bash",
        &[script.as_os_str(), plugins.as_os_str()],
        &examples_dir(),
    );

    for kind in ["todo-scan", "changelog", "commit-lint"] {
        let file = plugins.join(format!("{kind}.wasm"));
        assert_exit(&cli().arg("stamp").arg(&file).output().unwrap(), 0);
        let out = cli()
            .args(["check", "--json", "--command", "5"])
            .arg(&file)
            .output()
            .unwrap();
        assert_exit(&out, 0);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let levels: Vec<&str> = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["level"].as_str().unwrap())
            .collect();
        assert!(levels.iter().all(|l| *l == "pass"), "{kind}: {report:#}");
    }

    // A repository with notes to find and commits to list and lint.
    let repo = &sandbox.repo;
    std::fs::create_dir(repo.join("src")).unwrap();
    std::fs::write(
        repo.join("src/main.rs"),
        "fn main() {\n    // TODO: parse the arguments\n    println!(\"hi\");\n}\n",
    )
    .unwrap();
    std::fs::write(repo.join("notes.txt"), "FIXME the build is slow\nfine\n").unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "feat(cli): print a greeting"]);
    std::fs::write(repo.join("notes.txt"), "FIXME the build is slow\nbetter\n").unwrap();
    git(repo, &["commit", "-q", "-am", "Update notes."]);
    let bad = git(repo, &["rev-parse", "--short", "HEAD"])
        .trim()
        .to_string();

    // Rust: the worktree walked through WASI; no programs.
    let todo = run_kind(&sandbox, &plugins, "todo-scan", "todo", "TODO FIXME");
    assert_eq!(todo["outcome"], "completed", "{todo:#}");
    assert!(
        todo["summary"]
            .as_str()
            .unwrap()
            .starts_with("2 marked line(s) (TODO, FIXME) in 3 file(s)"),
        "{}",
        todo["summary"]
    );
    let report = artifact(&todo, "todos.md");
    assert!(
        report.contains("- `notes.txt:1` FIXME the build is slow")
            && report.contains("- `src/main.rs:2` // TODO: parse the arguments"),
        "{report}"
    );
    assert_eq!(todo["suggestedFollowup"][0]["stepName"], "address-todos");

    // Python: git through the subprocess capability, a file written in the worktree.
    let changelog = run_kind(&sandbox, &plugins, "changelog", "changelog", "10");
    assert_eq!(changelog["outcome"], "completed", "{changelog:#}");
    let written = std::fs::read_to_string(repo.join("CHANGELOG.md")).unwrap();
    let lines: Vec<&str> = written.lines().filter(|l| l.starts_with("- ")).collect();
    assert_eq!(lines.len(), 3, "{written}");
    assert!(
        lines[0].contains(&format!("`{bad}` Update notes. (Test Author)")),
        "{written}"
    );
    assert!(lines[2].contains("initial commit"), "{written}");
    assert_eq!(artifact(&changelog, "CHANGELOG.md"), written);

    // JavaScript: the lint fails on the two non-conventional subjects.
    let lint = run_kind(&sandbox, &plugins, "commit-lint", "lint", "2");
    assert_eq!(lint["outcome"], "failed", "{lint:#}");
    assert_eq!(
        lint["summary"],
        format!("1 of 2 commit subject(s) to reword: {bad}")
    );
    assert_eq!(lint["suggestedFollowup"][0]["stepKind"], "codex");
    assert!(artifact(&lint, "commit-lint.md").contains(&format!("`{bad}` REWORD: Update notes.")));
    let lint = run_kind(&sandbox, &plugins, "commit-lint", "lint-all", "x");
    assert_eq!(lint["outcome"], "failed");
    assert!(
        lint["summary"]
            .as_str()
            .unwrap()
            .contains("a positive integer"),
        "{lint:#}"
    );

    // A later run loads each kind's compiled code from the cache that
    // `check` and the first run filled.
    assert_eq!(compiled_how(&lint), "loaded from the compiled cache");
    let again = run_kind(&sandbox, &plugins, "todo-scan", "todo-again", "TODO");
    assert_eq!(compiled_how(&again), "loaded from the compiled cache");
    the_example_demos_end_as_documented(&plugins);
}

/// `bash examples/demo.sh KIND` for the example kinds, as the README shows
/// it, with the kinds this test built: each ends as documented there.
fn the_example_demos_end_as_documented(plugins: &Path) {
    let demo = examples_dir().join("../demo.sh");
    for (kind, code, says) in [
        ("todo-scan", 0, "1 marked line(s) (TODO, FIXME)"),
        ("changelog", 0, "COMPLETED"),
        ("commit-lint", 1, "1 of 1 commit subject(s) to reword"),
    ] {
        let out = std::process::Command::new("bash")
            .arg(&demo)
            .arg(kind)
            .env("BAA_EXAMPLE_KINDS_OUT", plugins)
            .env("BAA_CONFIG", "/dev/null")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_exit(&out, code);
        assert!(stdout.contains(says), "{kind}: {stdout}");
    }
}
