//! The `shell` kind: success, failure with an exit code, timeout.

use std::path::Path;
use std::time::{Duration, Instant};

use baa_runner::contracts::{FailureReason, StepExecutionOutcome};
use baa_runner_tests::{event_names, processes_with, read_json, read_lifecycle, Sandbox};

use crate::{run, runner};

#[tokio::test(flavor = "multi_thread")]
async fn shell_step_succeeds_and_records_everything() {
    let sandbox = Sandbox::new();
    let request = sandbox.request("shell", "echo hello from shell; echo warning >&2; ls");
    let result = run(&runner(), request).await;

    assert!(result.ok, "{}", result.summary);
    assert_eq!(result.outcome, StepExecutionOutcome::Completed);
    assert_eq!(result.state.exit_code, Some(0));
    assert!(result.summary.contains("exit code 0"), "{}", result.summary);
    assert!(
        result.summary.contains("README.md"),
        "summary quotes the last lines: {}",
        result.summary
    );
    assert!(!result.needs_human && !result.blocked);

    // Every file of the run directory is there and readable on its own.
    let paths = &result.log_paths;
    let stdout = std::fs::read_to_string(&paths.stdout_log_path).unwrap();
    assert!(stdout.contains("hello from shell\n"), "{stdout}");
    assert!(stdout.contains("README.md"));
    assert_eq!(
        std::fs::read_to_string(&paths.stderr_log_path).unwrap(),
        "warning\n"
    );
    let metadata = read_json(&paths.metadata_path);
    assert_eq!(metadata["workerKind"], "shell");
    assert_eq!(metadata["plugin"]["source"], "builtin");
    assert_eq!(metadata["plugin"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(metadata["outcome"], "completed");
    let state = read_json(&paths.state_path);
    assert_eq!(state["status"], "completed");
    assert_eq!(state["exitCode"], 0);
    let on_disk = read_json(&paths.result_path);
    assert_eq!(on_disk, serde_json::to_value(&result).unwrap());

    let events = read_lifecycle(&paths.lifecycle_log_path);
    let names = event_names(&events);
    for expected in [
        "run.prepared",
        "step.started",
        "plugin.loaded",
        "subprocess.started",
        "subprocess.exited",
        "checkpoint.captured",
        "step.finished",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "missing {expected} in {names:?}"
        );
    }
    assert_eq!(events.len() as u64, result.metrics.lifecycle_event_count);
    assert_eq!(result.lifecycle_events.len(), events.len());
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], i as u64 + 1);
    }

    // Real counts: the child wrote to both streams.
    assert!(result.metrics.stdout_chunk_count >= 1);
    assert!(result.metrics.stderr_chunk_count >= 1);
    // The worker's summary, then the host's git-diff, log-tail and summary.
    assert_eq!(result.metrics.checkpoint_count, 4);
    let types: Vec<&str> = result
        .checkpoint
        .records
        .iter()
        .map(|r| r.checkpoint_type.as_str())
        .collect();
    assert_eq!(types, ["summary", "git-diff", "log-tail", "summary"]);
    let record = read_json(std::path::Path::new(&paths.checkpoints_dir).join("000001.json"));
    assert_eq!(record["seq"], 1);
    assert_eq!(record["type"], "summary");
    assert_eq!(result.checkpoint.last_checkpoint_seq, 4);
    assert_eq!(result.checkpoint.next_checkpoint_seq, 5);
    let tail = read_json(std::path::Path::new(&paths.checkpoints_dir).join("000003.json"));
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tail["payloadPath"].as_str().unwrap()).unwrap())
            .unwrap();
    assert!(
        payload["stdout"].to_string().contains("hello from shell"),
        "{payload}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_step_that_exits_3_fails_with_exit_code_3() {
    let sandbox = Sandbox::new();
    let result = run(
        &runner(),
        sandbox.request("shell", "echo about to fail; exit 3"),
    )
    .await;

    assert!(!result.ok);
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert_eq!(result.state.exit_code, Some(3));
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::WorkerFailed
    );
    assert!(result.summary.contains("exit code 3"), "{}", result.summary);
    let state = read_json(&result.log_paths.state_path);
    assert_eq!(state["status"], "failed");
    assert_eq!(state["exitCode"], 3);
    assert_eq!(state["failure"]["reason"], "worker-failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_step_times_out_and_leaves_no_process_behind() {
    let sandbox = Sandbox::new();
    // A child and a background grandchild, both sleeping far past the timeout.
    let mut request = sandbox.request("shell", "sleep 30.417 & sleep 30.417; echo never");
    request.timeout_sec = 1.0;
    let started = Instant::now();
    let result = run(&runner(), request).await;
    let took = started.elapsed();

    assert!(
        took < Duration::from_secs(10),
        "the step took {took:?}; it must end soon after its 1 s timeout"
    );
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::Timeout
    );
    assert!(result.summary.contains("timed out"), "{}", result.summary);
    let metadata = read_json(&result.log_paths.metadata_path);
    assert_eq!(metadata["failure"]["reason"], "timeout");
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(!stdout.contains("never"));
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let exited = events
        .iter()
        .find(|e| e["event"] == "subprocess.exited")
        .expect("exit recorded");
    assert_eq!(exited["data"]["timedOut"], true);

    let left = processes_with("30.417");
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_step_without_command_is_an_invalid_request_outcome() {
    let sandbox = Sandbox::new();
    let mut request = sandbox.request("shell", "");
    request.command = None;
    let result = run(&runner(), request).await;
    assert_eq!(result.outcome, StepExecutionOutcome::Failed);
    assert_eq!(
        result.state.failure.as_ref().unwrap().reason,
        FailureReason::InvalidRequest
    );
    assert!(
        result.summary.contains("`command` is required"),
        "{}",
        result.summary
    );
}

/// Output is batched in memory, yet it reaches its log file while the step
/// still runs (within the flush interval), not only when the step ends; and
/// a burst of small lines arrives whole and in order.
#[tokio::test(flavor = "multi_thread")]
async fn output_reaches_its_log_file_while_the_step_runs() {
    let sandbox = Sandbox::new();
    let runner = runner();
    let mut request = sandbox.request(
        "shell",
        "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; sleep 30.733",
    );
    request.step_id = "batched".into();
    let handle = runner.start(request).unwrap();
    let stdout_log = Path::new(handle.run_dir()).join("logs/stdout.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&stdout_log).unwrap_or_default();
        if text.contains("line 1999\n") {
            let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
            assert_eq!(text, expected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the output never reached {}",
            stdout_log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !processes_with("30.733").is_empty(),
        "the step is still running"
    );
    handle.cancel();
    let result = handle.result().await.unwrap();
    assert_eq!(
        result.log_summary.stdout_bytes,
        std::fs::metadata(&stdout_log).unwrap().len()
    );
}
