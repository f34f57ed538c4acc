//! The `baa-runner` binary: `run --json` prints exactly the result; exit
//! codes tell a failed step from bad input; `kinds` lists the kinds.

use std::path::PathBuf;

use baa_runner_tests::Sandbox;

use crate::{assert_exit, cli};

fn write_request(sandbox: &Sandbox, json: &serde_json::Value) -> PathBuf {
    let path = sandbox
        .dir
        .path()
        .join(format!("request-{}.json", json["stepId"].as_str().unwrap()));
    std::fs::write(&path, serde_json::to_vec(json).unwrap()).unwrap();
    path
}

#[test]
fn run_json_prints_exactly_the_result() {
    let sandbox = Sandbox::new();
    let path = write_request(&sandbox, &sandbox.request_json("shell", "echo via cli"));
    let out = cli().args(["run", "--json"]).arg(&path).output().unwrap();
    assert_exit(&out, 0);
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document");
    for field in [
        "ok",
        "outcome",
        "summary",
        "needsHuman",
        "blocked",
        "taskId",
        "stepId",
        "runId",
        "attempt",
        "workerKind",
        "startedAt",
        "finishedAt",
        "durationMs",
        "metadata",
        "state",
        "logPaths",
        "logSession",
        "logSummary",
        "lifecycleEvents",
        "checkpoint",
        "artifacts",
        "suggestedFollowup",
        "metrics",
    ] {
        assert!(result.get(field).is_some(), "missing {field}");
    }
    assert_eq!(result["outcome"], "completed");
    let on_disk = baa_runner_tests::read_json(result["logPaths"]["resultPath"].as_str().unwrap());
    assert_eq!(on_disk, result);
    // Live progress went to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("via cli"));
}

#[test]
fn exit_codes_distinguish_failed_steps_bad_input_and_blocked() {
    let sandbox = Sandbox::new();
    let mut failing = sandbox.request_json("shell", "exit 3");
    failing["stepId"] = "fails".into();
    let out = cli()
        .args(["run", "--quiet"])
        .arg(write_request(&sandbox, &failing))
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("exit code: 3"),
        "{stdout}"
    );

    let mut bad = sandbox.request_json("shell", "true");
    bad["stepId"] = "bad".into();
    bad["taskId"] = "../escape".into();
    let out = cli()
        .args(["run"])
        .arg(write_request(&sandbox, &bad))
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("taskId"));

    let out = cli()
        .args(["run", "/nonexistent/request.json"])
        .output()
        .unwrap();
    assert_exit(&out, 3);

    let config = crate::probe_config_file(&sandbox);
    let mut blocked = sandbox.request_json("probe", "block waiting for a reviewer");
    blocked["stepId"] = "blocked".into();
    let out = cli()
        .arg("--config")
        .arg(&config)
        .args(["run", "--quiet"])
        .arg(write_request(&sandbox, &blocked))
        .output()
        .unwrap();
    assert_exit(&out, 2);
}

#[test]
fn kinds_lists_builtin_and_third_party_kinds() {
    let sandbox = Sandbox::new();
    let plugins = crate::probe_plugins_dir(&sandbox);
    std::fs::write(plugins.join("broken.wasm"), b"not wasm at all").unwrap();
    let out = cli()
        .args(["kinds", "--json", "--plugins-dir"])
        .arg(&plugins)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let kinds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name = |name: &str| {
        kinds
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        by_name("shell")["capabilities"]["programs"],
        serde_json::json!(["sh"])
    );
    assert_eq!(by_name("shell")["source"], "builtin");
    assert_eq!(
        by_name("git")["capabilities"]["programs"],
        serde_json::json!(["git"])
    );
    assert_eq!(by_name("codex")["capabilities"]["network"], true);
    assert_eq!(by_name("probe")["version"], "0.1.0");
    assert!(by_name("probe")["source"]
        .as_str()
        .unwrap()
        .ends_with("probe.wasm"));
    assert!(by_name("broken")["error"]
        .as_str()
        .unwrap()
        .contains("not a valid WebAssembly component"));
}

#[test]
fn checkpoints_list_and_show_a_steps_records_and_diffs() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.repo.join("feature.txt"), "a new feature\n").unwrap();
    let path = write_request(
        &sandbox,
        &sandbox.request_json("shell", "echo checkpointing"),
    );
    let out = cli()
        .args(["run", "--json", "--quiet"])
        .arg(&path)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_dir = result["logPaths"]["runDir"].as_str().unwrap();

    let out = cli()
        .args(["checkpoints", "list", run_dir])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let listing = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 4, "{listing}");
    assert!(
        lines[1].contains("git-diff") && lines[1].contains("1 file(s) changed"),
        "{listing}"
    );

    let out = cli()
        .args(["checkpoints", "show", run_dir, "2"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("A feature.txt") && shown.contains("+a new feature"),
        "{shown}"
    );

    let out = cli()
        .args(["checkpoints", "show", run_dir, "9"])
        .output()
        .unwrap();
    assert_exit(&out, 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint 9"));

    // `resume` starts attempt 2 from checkpoint 1.
    let out = cli()
        .args(["resume", "--from", "1", "--json", "--quiet"])
        .arg(&path)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resumed["attempt"], 2);
    assert_eq!(resumed["metadata"]["resumedFromSeq"], 1);
    assert_eq!(resumed["checkpoint"]["records"][4]["seq"], 5);
}

#[test]
fn worker_output_is_stored_exactly_and_shown_safely() {
    let sandbox = Sandbox::new();
    let config = crate::probe_config_file(&sandbox);
    let path = write_request(&sandbox, &sandbox.request_json("probe", "bytes"));
    let out = cli()
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .arg(&path)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        !out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07),
        "escapes reach the terminal"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\\u{1b}[31mred"), "{shown}");
}

#[test]
fn an_oversized_or_broken_request_file_is_bad_input() {
    let sandbox = Sandbox::new();
    let huge = sandbox.dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 5 * 1024 * 1024]).unwrap();
    let out = cli().args(["run"]).arg(&huge).output().unwrap();
    assert_exit(&out, 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"));
    let broken = sandbox.dir.path().join("broken.json");
    std::fs::write(&broken, br#"{"taskId": "t", "runtime": {"repoRoot": 7}}"#).unwrap();
    let out = cli().args(["run"]).arg(&broken).output().unwrap();
    assert_exit(&out, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runtime.repoRoot") && stderr.contains("broken.json"),
        "{stderr}"
    );
}

#[test]
fn sandbox_self_test_proves_the_confinement_on_this_machine() {
    let probe = baa_runner::capabilities::subprocess::launcher::probe().unwrap();
    if probe.landlock_abi == 0 || !probe.seccomp {
        eprintln!("SKIPPED sandbox self-test: this kernel lacks Landlock or seccomp ({probe:?})");
        return;
    }
    let out = cli().args(["sandbox", "--json"]).output().unwrap();
    assert_exit(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["confined"], true, "{report:#}");
    assert_eq!(report["probe"]["landlockAbi"], probe.landlock_abi);
    let checks = report["checks"].as_array().unwrap();
    let verdict = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["outcome"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(verdict("write outside the worktree (/etc)").starts_with("denied"));
    assert!(verdict("open a UDP socket").starts_with("denied"));
    assert!(verdict("write the worktree").starts_with("allowed"));
    // The human form ends with the verdict.
    let out = cli().args(["sandbox"]).output().unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: confined"));
}
