//! What a worker can and cannot do: the `probe` fixture kind, loaded from a
//! plugin directory like any third-party `.wasm`.

use std::time::{Duration, Instant};

use baa_runner::contracts::{FailureReason, StepExecutionOutcome};
use baa_runner_tests::{read_json, read_lifecycle, Sandbox};

use crate::{grant_all, probe_runner, probe_runner_with, run};

fn stdout_of(result: &baa_runner::contracts::StepExecutionResult) -> String {
    std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_third_party_kind_from_a_plugin_directory_runs() {
    let sandbox = Sandbox::new();
    let (runner, wasm) = probe_runner(&sandbox, grant_all());
    let script = "write notes.txt written by the probe\nread notes.txt\nartifact report.txt all good\ncheckpoint probe.state halfway\nfollowup review-it review please review\nspawn true";
    let result = run(&runner, sandbox.request("probe", script)).await;

    assert!(result.ok, "{}\n{}", result.summary, stdout_of(&result));
    assert_eq!(
        std::fs::read_to_string(sandbox.repo.join("notes.txt")).unwrap(),
        "written by the probe"
    );
    let stdout = stdout_of(&result);
    assert!(
        stdout.contains("read notes.txt: ok written by the probe"),
        "{stdout}"
    );

    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["plugin"]["source"], wasm.display().to_string());
    assert_eq!(metadata["plugin"]["version"], "0.1.0");
    let artifact = result
        .artifacts
        .iter()
        .find(|a| a.name == "report.txt")
        .expect("artifact");
    assert_eq!(std::fs::read_to_string(&artifact.path).unwrap(), "all good");
    let record = result
        .checkpoint
        .records
        .iter()
        .find(|r| r.checkpoint_type.as_str() == "probe.state")
        .expect("the probe's checkpoint");
    assert_eq!(record.checkpoint_type.as_str(), "probe.state");
    assert_eq!(
        std::fs::read_to_string(record.payload_path.as_ref().unwrap()).unwrap(),
        "halfway"
    );
    assert_eq!(result.suggested_followup.len(), 1);
    assert_eq!(result.suggested_followup[0].step_name, "review-it");
    assert_eq!(result.suggested_followup[0].step_kind.as_str(), "review");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cannot_read_or_write_outside_its_worktree() {
    let sandbox = Sandbox::new();
    let secret = sandbox.dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-CONTENT").unwrap();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let script = format!(
        "read README.md\nread ../secret.txt\nread {secret}\nread /etc/passwd\nwrite ../planted.txt x\nsymlink ../secret.txt link-out\nread link-out\nsymlink {secret} abs-link\nread abs-link",
        secret = secret.display()
    );
    let result = run(&runner, sandbox.request("probe", &script)).await;

    let stdout = stdout_of(&result);
    assert!(stdout.contains("read README.md: ok # demo"), "{stdout}");
    assert!(
        !stdout.contains("TOP-SECRET-CONTENT"),
        "the secret leaked: {stdout}"
    );
    assert!(
        !stdout.contains("root:x:0:0"),
        "/etc/passwd leaked: {stdout}"
    );
    for op in [
        "read ../secret.txt",
        "read /etc/passwd",
        "write ../planted.txt x",
        "read link-out",
        "read abs-link",
    ] {
        assert!(
            stdout.contains(&format!("{op}: denied")),
            "`{op}` was not denied: {stdout}"
        );
    }
    assert!(!sandbox.dir.path().join("planted.txt").exists());
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_the_policy_does_not_allow_is_denied_and_never_spawned() {
    let sandbox = Sandbox::new();
    // The operator grants the probe what it requests; it did not request `rm`
    // or `cp`, so no grant can allow them.
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let script =
        "spawn true\nspawn rm -rf README.md\nspawn /bin/cp README.md copied\nspawn /usr/bin/true";
    let result = run(&runner, sandbox.request("probe", script)).await;

    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert!(!result.needs_human);
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::PolicyDenied
    );
    assert!(sandbox.repo.join("README.md").exists());
    assert!(!sandbox.repo.join("copied").exists());

    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let started: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "subprocess.started" && e["data"]["forWorker"] == true)
        .collect();
    // `true` by name and by its resolved path.
    assert_eq!(started.len(), 2, "only `true` may start: {started:?}");
    assert!(started
        .iter()
        .all(|e| e["data"]["program"].as_str().unwrap().ends_with("/true")));
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "subprocess.denied")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied[0]["message"].as_str().unwrap().contains("rm"));
    assert!(denied
        .iter()
        .all(|d| d["data"]["operatorCanGrant"].is_null()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_requesting_more_than_granted_is_blocked_before_it_runs() {
    let sandbox = Sandbox::new();
    // The probe requests `true`, `touch`, `sh` and `python3`; the operator
    // granted only `true` (as for an older version that asked for less).
    let (runner, _) = probe_runner(&sandbox, crate::grant(&["true"]));
    let result = run(
        &runner,
        sandbox.request("probe", "spawn true\nwrite ran.txt yes"),
    )
    .await;

    assert_eq!(result.outcome, StepExecutionOutcome::Blocked);
    assert!(result.needs_human);
    let failure = result.state.failure.as_ref().unwrap();
    assert_eq!(failure.reason, FailureReason::PolicyDenied);
    assert!(
        failure
            .message
            .contains(r#"programs = ["touch", "sh", "python3"]"#),
        "the error says what is missing: {}",
        failure.message
    );
    assert_eq!(result.suggested_followup.len(), 1);
    assert!(result.suggested_followup[0]
        .step_name
        .contains("[kinds.probe]"));
    // It did not run at all.
    assert!(!sandbox.repo.join("ran.txt").exists());
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    assert!(!events
        .iter()
        .any(|e| e["event"] == "subprocess.started" && e["data"]["forWorker"] == true));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_subprocess_environment_is_scrubbed() {
    let sandbox = Sandbox::new();
    std::env::set_var("BAA_TEST_HOST_SECRET", "host-secret-value");
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let result = run(&runner, sandbox.request("probe", "spawn sh -c env")).await;
    assert!(result.ok, "{}", result.summary);
    let stdout = stdout_of(&result);
    assert!(!stdout.contains("host-secret-value"), "{stdout}");
    assert!(stdout.contains("PROBE_VAR=from-probe"), "{stdout}");
    // HOME is the step's home, or the dedicated user's private one.
    let home = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HOME="))
        .unwrap_or_default();
    assert!(
        home == result.log_paths.home_dir || home.starts_with("/run/baa-runner/uid-"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_in_an_endless_loop_is_interrupted_at_its_deadline() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let mut request = sandbox.request("probe", "loop");
    request.timeout_sec = 0.5;
    let started = Instant::now();
    let result = run(&runner, request).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::Timeout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_beyond_the_limit_fails_with_memory_limit() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let result = run(&runner, sandbox.request("probe", "alloc 1024")).await;
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    let failure = result.state.failure.as_ref().unwrap();
    assert_eq!(
        failure.reason,
        FailureReason::MemoryLimit,
        "{}",
        failure.message
    );
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["failure"]["reason"], "memory-limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_worker_is_a_trap_with_a_complete_record() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let result = run(
        &runner,
        sandbox.request("probe", "write before.txt x\npanic"),
    )
    .await;
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::Trap
    );
    let stderr = std::fs::read_to_string(&result.log_paths.stderr_log_path).unwrap();
    assert!(stderr.contains("probe was asked to panic"), "{stderr}");
    assert_eq!(
        read_json(&result.log_paths.result_path)["outcome"],
        "failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_worker_needs_a_human() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let result = run(
        &runner,
        sandbox.request("probe", "block the credentials are missing"),
    )
    .await;
    assert_eq!(result.outcome, StepExecutionOutcome::Blocked);
    assert!(result.blocked && result.needs_human && !result.ok);
    assert_eq!(result.summary, "the credentials are missing");
    assert_eq!(read_json(&result.log_paths.state_path)["status"], "blocked");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kind_is_refused_before_anything_is_written() {
    let sandbox = Sandbox::new();
    let runner = crate::runner();
    let refused = runner.prepare(sandbox.request("nosuchkind", "x"), None);
    match refused {
        Err(baa_runner::Error::InvalidRequest { field, message }) => {
            assert_eq!(field, "workerKind");
            assert!(message.contains("nosuchkind.wasm"), "{message}");
        }
        Err(other) => panic!("refused with the wrong error: {other}"),
        Ok(_) => panic!("an unknown kind was prepared"),
    }
    assert!(!sandbox.runs.exists(), "something was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn neither_the_worker_nor_its_subprocesses_get_the_network_unless_granted() {
    let sandbox = Sandbox::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let script = format!("connect {addr}\nspawn true");
    let result = run(&runner, sandbox.request("probe", &script)).await;

    let stdout = stdout_of(&result);
    assert!(
        stdout.contains(&format!("connect {addr}: denied")),
        "{stdout}"
    );
    // Its subprocesses get no network either (what they try is in
    // confinement.rs); the start event and the metadata say so.
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let started = events
        .iter()
        .find(|e| e["event"] == "subprocess.started")
        .unwrap();
    assert_eq!(started["data"]["network"], "none");
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["sandbox"]["network"], "none", "{metadata}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subprocess_flooding_output_is_killed_at_the_cap() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.limits.subprocess_output_bytes = 1024 * 1024;
    });
    let result = run(
        &runner,
        sandbox.request("probe", "sh while :; do echo flood; done"),
    )
    .await;

    let stdout = stdout_of(&result);
    assert!(
        stdout.contains("denied killed: output limit exceeded"),
        "{}",
        &stdout[stdout.len().saturating_sub(300)..]
    );
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let exited = events
        .iter()
        .find(|e| e["event"] == "subprocess.exited")
        .unwrap();
    assert_eq!(exited["data"]["outputLimitExceeded"], true);
    // The cap bounds what was taken in: at most one read past it.
    let bytes = exited["data"]["outputBytes"].as_u64().unwrap();
    assert!(
        (1024 * 1024..1024 * 1024 + 128 * 1024).contains(&bytes),
        "{bytes}"
    );
}
