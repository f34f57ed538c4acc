//! The README's "Writing a worker kind", followed literally: its shell
//! blocks marked `<!-- guide-test: run -->` run in order in one shell, in an
//! empty directory, with the built CLI on PATH; the Rust block marked
//! `<!-- guide-test: src/lib.rs -->` replaces the scaffolded `src/lib.rs`
//! right after the block that runs `baa-runner new`. The step the guide
//! runs must end as the guide says, with its artifact and checkpoints in
//! the run directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use baa_runner_tests::{read_json, read_lifecycle};

use crate::{built_binary, plugins_target};

const SECTION: &str = "## Writing a worker kind\n";
const RUN: &str = "<!-- guide-test: run -->";
const LIB_RS: &str = "<!-- guide-test: src/lib.rs -->";

/// What the guide says the run ends with (each must appear in its prose,
/// between backticks).
const COMPLETED: &str = "COMPLETED";
const SUMMARY: &str = "wrote hello.txt (3 words)";
const RUN_DIR: &str = "runs/demo/run-1/greet/attempt-1/";
const ARTIFACT: &str = "artifacts/hello.txt";
const GREETING: &str = "hello from greet\n";

/// The section's text and its marked blocks: the shell blocks in order and
/// the Rust one.
fn guide() -> (String, Vec<String>, String) {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).unwrap();
    let start = readme.find(SECTION).expect("the README has the section") + SECTION.len();
    let section = &readme[start..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut run = Vec::new();
    let mut lib_rs = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let (blocks, fence) = match line.trim() {
            RUN => (&mut run, "```sh"),
            LIB_RS => (&mut lib_rs, "```rust"),
            _ => continue,
        };
        assert_eq!(
            lines.next(),
            Some(fence),
            "`{}` must be followed by a {fence} block",
            line.trim()
        );
        let mut body = String::new();
        loop {
            match lines.next() {
                Some("```") => break,
                Some(line) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => panic!("a {fence} block of the guide is not closed"),
            }
        }
        blocks.push(body);
    }
    assert_eq!(lib_rs.len(), 1, "one marked src/lib.rs block");
    assert!(run.len() >= 2, "marked shell blocks: {run:?}");
    (section.to_string(), run, lib_rs.pop().unwrap())
}

/// The cargo that runs the tests (or the first on PATH).
fn real_cargo() -> PathBuf {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return cargo.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("cargo"))
        .find(|path| path.is_file())
        .expect("cargo on PATH")
}

#[test]
fn the_worker_kind_guide_runs_as_written() {
    let (section, blocks, lib_rs) = guide();
    for documented in [COMPLETED, SUMMARY, RUN_DIR, ARTIFACT] {
        assert!(
            section.contains(&format!("`{documented}`")),
            "the guide no longer says `{documented}`"
        );
    }
    let scaffolds: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].contains("baa-runner new "))
        .collect();
    assert_eq!(scaffolds.len(), 1, "one marked block runs `baa-runner new`");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), &lib_rs).unwrap();
    let mut script = String::new();
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(block);
        if i == scaffolds[0] {
            script.push_str("cp \"$GUIDE_LIB_RS\" src/lib.rs\n");
        }
    }
    std::fs::write(dir.path().join("guide.sh"), &script).unwrap();
    // The guide's `cargo build` runs, as `crate::guest_build` does, in the
    // plugins' target directory, which already holds the SDK's compiled
    // dependencies; the project's `target` points there for the guide's `cp`.
    let shims = dir.path().join("shims");
    std::fs::create_dir(&shims).unwrap();
    let shim = shims.join("cargo");
    std::fs::write(
        &shim,
        "#!/bin/sh\n[ -e target ] || ln -s \"$CARGO_TARGET_DIR\" target\nexec \"$GUIDE_CARGO\" \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli_dir = built_binary("baa-runner").parent().unwrap().to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        [shims, cli_dir]
            .into_iter()
            .chain(std::env::split_paths(&path)),
    )
    .unwrap();

    let out = std::process::Command::new("sh")
        .arg("-ex")
        .arg("guide.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env("GUIDE_LIB_RS", dir.path().join("lib.rs"))
        .env("GUIDE_CARGO", real_cargo())
        .env("CARGO_TARGET_DIR", plugins_target())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // The guide's `git commit`, whoever runs the tests.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Guide Reader")
        .env("GIT_AUTHOR_EMAIL", "reader@example.test")
        .env("GIT_COMMITTER_NAME", "Guide Reader")
        .env("GIT_COMMITTER_EMAIL", "reader@example.test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the guide failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // stamp, check and inspect saw the guide's kind.
    assert!(
        stdout.contains("stamped hello-world.wasm: hello-world 0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    assert!(stdout.contains(r#"programs ["wc"]"#), "{stdout}");

    // The run ends as the guide says, in the run directory it names.
    let verdict = stdout.rfind(COMPLETED).expect(COMPLETED);
    assert!(
        stdout[verdict..].contains(&format!("\n{SUMMARY}\n")),
        "{stdout}"
    );
    let project = dir.path().join("hello-world");
    let run_dir = project.join(RUN_DIR);
    assert!(
        stdout[verdict..].contains(run_dir.display().to_string().trim_end_matches('/')),
        "{stdout}"
    );
    let result = read_json(run_dir.join("result.json"));
    assert_eq!(result["outcome"], "completed", "{result:#}");
    assert_eq!(result["summary"], SUMMARY);
    assert_eq!(result["state"]["exitCode"], 0, "{result:#}");

    // The worktree, the artifact and the checkpoints.
    assert_eq!(
        std::fs::read_to_string(project.join("demo/hello.txt")).unwrap(),
        GREETING
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join(ARTIFACT)).unwrap(),
        GREETING
    );
    assert!(
        result["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "hello.txt" && a["kind"] == "artifact"),
        "{result:#}"
    );
    let mut checkpoints: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut records: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    records.sort();
    for record in records {
        let record = read_json(record);
        let payload = std::fs::read(record["payloadPath"].as_str().unwrap()).unwrap();
        checkpoints.push((
            record["type"].as_str().unwrap().to_string(),
            record["source"].as_str().unwrap().to_string(),
            payload,
        ));
    }
    let types: Vec<(&str, &str)> = checkpoints
        .iter()
        .map(|(t, s, _)| (t.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("greeting", "worker"),
            ("git-diff", "host"),
            ("log-tail", "host"),
            ("summary", "host")
        ],
        "{result:#}"
    );
    assert_eq!(checkpoints[0].2, GREETING.as_bytes());
    let diff = String::from_utf8_lossy(&checkpoints[1].2);
    assert!(
        diff.contains("b/hello.txt") && diff.contains("+hello from greet"),
        "{diff}"
    );

    // The progress event, with its data.
    let events = read_lifecycle(run_dir.join("logs/lifecycle.jsonl"));
    let progress = events
        .iter()
        .find(|e| e["event"] == "worker.progress")
        .expect("a worker.progress event");
    assert_eq!(progress["data"], serde_json::json!({ "words": "3" }));
}
