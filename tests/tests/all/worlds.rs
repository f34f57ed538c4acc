//! Both released worlds run side by side: a kind built from the frozen
//! `wit/released/0.1.0` (no SDK) beside the 0.2 kinds, each spoken to in
//! its own version, and 0.2's typed refusals.

use baa_runner::config::KindGrant;
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{fixtures, read_json, read_lifecycle, Sandbox};

use crate::{grant_all, probe_runner, run};

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_of_world_0_1_runs_beside_kinds_of_0_2() {
    let sandbox = Sandbox::new();
    let dir = sandbox.dir.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("world-0-1.wasm");
    std::fs::copy(fixtures::WORLD_0_1_WASM, &wasm).unwrap();
    let mut config = RunnerConfig::default();
    config.plugin_dirs.push(dir);
    config.kinds.insert(
        "world-0-1".into(),
        KindGrant {
            programs: vec!["echo".into()],
            ..Default::default()
        },
    );
    let runner = Runner::new(config).unwrap();
    assert_eq!(
        runner.inspect(&wasm).world.as_deref(),
        Some("baa:worker/worker@0.1.0")
    );

    let result = run(&runner, sandbox.request("world-0-1", "observe")).await;
    assert!(result.ok, "{}", result.summary);
    let summary = &result.summary;
    for line in [
        "allowed: exit Some(0): hello from 0.1",
        // 0.1's refusals are strings; a bad cwd has its own case.
        "refused: denied: program `cat` is not allowed for this worker kind",
        "bad cwd: invalid-cwd: cwd `../..` must be a relative path inside the worktree",
        "checkpoint: 1",
    ] {
        assert!(summary.contains(line), "{line:?} not in {summary}");
    }
    let artifact = result
        .artifacts
        .iter()
        .find(|a| a.name == "observations.txt")
        .expect("the 0.1 kind's artifact is listed");
    let stored = std::fs::read_to_string(&artifact.path).unwrap();
    assert!(stored.contains("hello from 0.1"), "{stored}");
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    assert!(events.iter().any(|e| e["event"] == "old.observed"));
    let denied = events
        .iter()
        .find(|e| e["event"] == "subprocess.denied")
        .expect("the refusal is recorded");
    assert_eq!(denied["data"]["denial"], "program");
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["plugin"]["name"], "world-0-1");
    assert_eq!(metadata["plugin"]["version"], "0.1.0");
    let captured = events
        .iter()
        .find(|e| e["event"] == "checkpoint.captured")
        .expect("the 0.1 kind's checkpoint is recorded");
    assert_eq!(captured["data"]["type"], "observed");
    assert_eq!(captured["data"]["source"], "worker");

    // The same runner, the same host, a kind of 0.2.
    let mut request = sandbox.request("shell", "echo from 0.2");
    request.step_id = "latest".into();
    let latest = run(&runner, request).await;
    assert!(latest.ok, "{}", latest.summary);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_of_world_0_2_reads_why_it_was_refused() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    // The probe prints `<operation>: ok <reason>|<message>|<grant>`.
    let answer = |result: &baa_runner::contracts::StepExecutionResult| {
        let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
        let line = stdout.lines().next().unwrap_or_default().to_string();
        line.split_once(": ok ")
            .map(|(_, a)| a.to_string())
            .unwrap_or(line)
    };
    let result = run(&runner, sandbox.request("probe", "denial cat /etc/passwd")).await;
    assert!(result.ok, "{}", result.summary);
    let answer_of_cat = answer(&result);
    let mut parts = answer_of_cat.splitn(3, '|');
    assert_eq!(parts.next(), Some("DenialReason::Program"));
    assert!(
        parts
            .next()
            .unwrap()
            .contains("program `cat` is not allowed"),
        "{answer_of_cat}"
    );
    // Nothing the operator can grant lets a kind run what it never requested.
    assert_eq!(parts.next(), Some("none"));

    let long = "x".repeat(200 * 1024);
    let mut request = sandbox.request("probe", &format!("denial true {long}"));
    request.step_id = "size".into();
    let result = run(&runner, request).await;
    let answer = answer(&result);
    assert!(
        answer.starts_with("DenialReason::Size|"),
        "{}",
        &answer[..200.min(answer.len())]
    );
}
