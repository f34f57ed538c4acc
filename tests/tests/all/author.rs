//! Plugin authors' tools through the CLI: `stamp` writes the manifest from
//! the kind's own describe, `inspect` reads it without running the kind,
//! `check` validates and runs a conformance step; incompatible or lying
//! manifests are refused with both sides named.

use std::path::{Path, PathBuf};

use baa_runner::contracts::FailureReason;
use baa_runner::plugins::manifest::{self, Capabilities, Manifest};
use baa_runner_tests::{fixtures, Sandbox};

use crate::{assert_exit, cli, grant_all, guest_build, plugins_target, probe_runner_with, run};

/// `stamp` then `check` the kind at `file`: every item passes.
fn stamp_and_check_passes(file: &Path) {
    assert_exit(&cli().arg("stamp").arg(file).output().unwrap(), 0);
    let out = cli().arg("check").arg("--json").arg(file).output().unwrap();
    assert_exit(&out, 0);
    let report = json_of(&out);
    assert_eq!(report["passed"], true, "{report:#}");
    assert!(
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["level"] == "pass"),
        "{report:#}"
    );
}

fn probe_copy(dir: &Path) -> PathBuf {
    let path = dir.join("probe.wasm");
    std::fs::copy(fixtures::PROBE_WASM, &path).unwrap();
    path
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_third_party_kind_is_stamped_inspected_and_checked() {
    let sandbox = Sandbox::new();
    let file = probe_copy(sandbox.dir.path());

    let out = cli()
        .arg("inspect")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let before = json_of(&out);
    assert!(before["manifest"].is_null());
    assert_eq!(before["world"], "baa:worker/worker@0.2.0");

    let out = cli().arg("stamp").arg(&file).output().unwrap();
    assert_exit(&out, 0);
    let out = cli()
        .arg("inspect")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let after = json_of(&out);
    assert_eq!(after["manifest"]["name"], "probe");
    assert_eq!(after["manifest"]["world"], "baa:worker/worker@0.2.0");
    assert_eq!(
        after["manifest"]["capabilities"]["programs"],
        serde_json::json!(["true", "touch", "sh", "python3"])
    );
    assert_ne!(after["sha256"], before["sha256"], "the file changed");
    // The section is read straight from the bytes, too.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(manifest::read(&bytes).unwrap().unwrap().name, "probe");

    let out = cli()
        .arg("check")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let report = json_of(&out);
    assert_eq!(report["passed"], true, "{report:#}");
    let levels: Vec<(&str, &str)> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["level"].as_str().unwrap()))
        .collect();
    assert!(
        levels.iter().all(|(_, level)| *level == "pass"),
        "{levels:?}"
    );
    assert!(levels
        .iter()
        .any(|(name, _)| name.contains("stays in its worktree")));
    // The human form ends with the verdict.
    let out = cli().arg("check").arg(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: PASS"));
}

#[test]
fn check_fails_a_component_that_is_not_a_worker_kind() {
    let sandbox = Sandbox::new();
    let file = sandbox.dir.path().join("junk.wasm");
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let out = cli()
        .arg("check")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let report = json_of(&out);
    assert_eq!(report["passed"], false);
    assert_eq!(report["items"][0]["level"], "fail");
}

fn restamp(file: &Path, change: impl FnOnce(&mut Manifest)) {
    let mut m = Manifest {
        name: "probe".into(),
        version: "0.1.0".into(),
        description: String::new(),
        world: manifest::host_world(),
        capabilities: Capabilities {
            programs: vec!["true".into(), "touch".into(), "sh".into(), "python3".into()],
            env: vec!["PROBE_VAR".into()],
            network: false,
        },
    };
    change(&mut m);
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, manifest::write(&bytes, &m).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_for_another_world_version_is_refused_naming_both() {
    let sandbox = Sandbox::new();
    let (runner, plugin) = probe_runner_with(&sandbox, grant_all(), |_| {});
    restamp(&plugin, |m| m.world = "baa:worker/worker@0.9.0".into());
    let inspection = runner.inspect(&plugin);
    let error = inspection.error.unwrap();
    assert!(
        error.contains("baa:worker/worker@0.9.0") && error.contains("baa:worker@0.2.0"),
        "{error}"
    );
    let result = run(&runner, sandbox.request("probe", "true")).await;
    let failure = result.state.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::InvalidPlugin);
    assert!(
        failure.message.contains("baa:worker/worker@0.9.0"),
        "{}",
        failure.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_hides_what_the_kind_requests_is_refused() {
    let sandbox = Sandbox::new();
    let (runner, plugin) = probe_runner_with(&sandbox, grant_all(), |_| {});
    // It claims to need nothing, but its describe asks for programs.
    restamp(&plugin, |m| m.capabilities.programs.clear());
    let result = run(&runner, sandbox.request("probe", "sh echo hi")).await;
    let failure = result.state.failure.unwrap();
    assert_eq!(failure.reason, FailureReason::InvalidPlugin);
    assert!(
        failure.message.contains("stamp it again"),
        "{}",
        failure.message
    );
    assert!(!std::fs::read_to_string(&result.log_paths.stdout_log_path)
        .unwrap()
        .contains("hi"));
}

#[test]
fn a_plugin_named_like_a_built_in_kind_fails_the_check() {
    let sandbox = Sandbox::new();
    let file = sandbox.dir.path().join("shell.wasm");
    std::fs::copy(fixtures::PROBE_WASM, &file).unwrap();
    let out = cli()
        .arg("check")
        .arg("--json")
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let report = json_of(&out);
    let text = report.to_string();
    assert!(text.contains("built-in kind"), "{text}");
}

#[test]
fn a_scaffolded_rust_kind_builds_stamps_and_passes_check_unchanged() {
    let sandbox = Sandbox::new();
    let out = cli()
        .args(["new", "hello-kind", "--dir"])
        .arg(sandbox.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let project = sandbox.dir.path().join("hello-kind");
    // Built as its README says.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    guest_build(cargo, &["build".as_ref(), "--release".as_ref()], &project);
    let file = sandbox.dir.path().join("hello-kind.wasm");
    let built = plugins_target().join("wasm32-wasip2/release/hello_kind.wasm");
    std::fs::copy(built, &file).unwrap();
    stamp_and_check_passes(&file);

    // A second project of that name, or one named like a built-in kind, is refused.
    for name in ["hello-kind", "shell"] {
        let out = cli()
            .args(["new", name, "--dir"])
            .arg(sandbox.dir.path())
            .output()
            .unwrap();
        assert_exit(&out, 3);
    }
}

/// `new NAME --lang LANG`, then the README's build command (`tool` with
/// `args` in the project, writing `NAME.wasm`), then stamp and check.
fn scaffold_build_and_check(lang: &str, name: &str, tool: PathBuf, args: &[&str]) {
    let sandbox = Sandbox::new();
    let out = cli()
        .args(["new", name, "--lang", lang, "--dir"])
        .arg(sandbox.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let project = sandbox.dir.path().join(name);
    let build = std::process::Command::new(tool)
        .args(args)
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    stamp_and_check_passes(&project.join(format!("{name}.wasm")));
}

#[test]
fn a_scaffolded_python_kind_builds_with_componentize_py_and_passes_check() {
    scaffold_build_and_check(
        "python",
        "hello-py",
        baa_runner_tests::componentize_py(),
        &[
            "-d",
            "wit",
            "-w",
            "worker",
            "componentize",
            "app",
            "-o",
            "hello-py.wasm",
        ],
    );
}

#[test]
fn a_scaffolded_javascript_kind_builds_with_componentize_js_and_passes_check() {
    scaffold_build_and_check(
        "javascript",
        "hello-js",
        baa_runner_tests::componentize_js(),
        &[
            "app.js",
            "--wit",
            "wit",
            "-n",
            "worker",
            "-d",
            "http",
            "-d",
            "fetch-event",
            "-o",
            "hello-js.wasm",
        ],
    );
}
