//! The embedding API: steps started concurrently from one runner stream
//! their events live, can be cancelled (token or dropped handle) with their
//! processes gone and their record saying `interrupted`, fail in isolation,
//! and wait for a slot over a concurrency limit.

use std::time::Duration;

use baa_runner::contracts::{FailureReason, StepExecutionOutcome, StepExecutionResult};
use baa_runner::logs::Stream;
use baa_runner::{Runner, StepEventBody, StepHandle};
use baa_runner_tests::{event_names, processes_with, read_json, read_lifecycle, Sandbox};

use crate::{grant_all, probe_runner_with};

/// Start a probe step named `step` running `script`.
fn start(runner: &Runner, sandbox: &Sandbox, step: &str, script: &str) -> StepHandle {
    let mut request = sandbox.request("probe", script);
    request.step_id = step.to_string();
    runner.start(request).expect("the request is valid")
}

/// Read `handle`'s events until stdout carries `text`.
async fn wait_for_output(handle: &mut StepHandle, text: &str) {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = handle.events().next().await {
            if let StepEventBody::Output { stream, bytes } = &event.body {
                if *stream == Stream::Stdout {
                    seen.push_str(&String::from_utf8_lossy(bytes));
                    if seen.contains(text) {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no `{text}` on stdout; saw {seen:?}");
}

fn assert_interrupted(result: &StepExecutionResult) {
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Failed,
        "{}",
        result.summary
    );
    assert_eq!(
        result.state.failure.as_ref().map(|f| f.reason),
        Some(FailureReason::Interrupted),
        "{}",
        result.summary
    );
    // The record on disk says the same, and the log session is closed.
    let on_disk = read_json(&result.log_paths.result_path);
    assert_eq!(on_disk["state"]["failure"]["reason"], "interrupted");
    assert_eq!(read_json(&result.log_paths.state_path)["status"], "failed");
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    assert_eq!(events.last().unwrap()["event"], "step.finished");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_steps_stream_live_events_and_one_is_cancelled() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let marker = format!("31.{}", std::process::id());
    let mut slow = start(
        &runner,
        &sandbox,
        "slow",
        &format!("sh echo started; sleep {marker}; echo never"),
    );
    let quick: Vec<StepHandle> = (0..2)
        .map(|i| {
            start(
                &runner,
                &sandbox,
                &format!("quick-{i}"),
                &format!("sh echo quick {i}; sleep 0.2; echo done {i}"),
            )
        })
        .collect();

    wait_for_output(&mut slow, "started").await;
    assert!(!processes_with(&marker).is_empty(), "the child runs");
    slow.cancel();
    // The rest of its stream: numbered without gaps, ending in `Finished`.
    let mut last_seq = 0;
    let mut names = Vec::new();
    let mut finished = None;
    while let Some(event) = slow.events().next().await {
        assert!(event.seq > last_seq);
        last_seq = event.seq;
        match event.body {
            StepEventBody::Lifecycle(entry) => names.push(entry.event),
            StepEventBody::Finished(f) => finished = Some(f),
            StepEventBody::Output { .. } => {}
        }
    }
    assert_eq!(slow.events().missed(), 0);
    let finished = finished.expect("the stream ends with Finished");
    assert_eq!(finished.failure, Some(FailureReason::Interrupted));
    assert!(names.contains(&"step.finished".to_string()), "{names:?}");
    let result = slow.result().await.unwrap();
    assert_interrupted(&result);
    assert!(result.summary.contains("cancelled"), "{}", result.summary);
    assert!(
        processes_with(&marker).is_empty(),
        "the cancelled step's child is gone"
    );
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains("started") && !stdout.contains("never"),
        "{stdout}"
    );

    for (i, handle) in quick.into_iter().enumerate() {
        let result = handle.result().await.unwrap();
        assert!(result.ok, "{}", result.summary);
        let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
        assert!(stdout.contains(&format!("done {i}")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_handle_cancels_its_step_and_the_record_is_still_written() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let marker = format!("32.{}", std::process::id());
    let mut handle = start(
        &runner,
        &sandbox,
        "dropped",
        &format!("sh echo up; sleep {marker}"),
    );
    wait_for_output(&mut handle, "up").await;
    let result_path = format!("{}/result.json", handle.run_dir());
    drop(handle);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&result_path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no result.json after the drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result: StepExecutionResult = serde_json::from_value(read_json(&result_path)).unwrap();
    assert_interrupted(&result);
    assert!(
        processes_with(&marker).is_empty(),
        "the dropped step's child is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_never_affects_the_others_or_the_runner() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let healthy: Vec<StepHandle> = (0..2)
        .map(|i| {
            start(
                &runner,
                &sandbox,
                &format!("healthy-{i}"),
                &format!("sh sleep 1; echo healthy {i}\nwrite healthy-{i}.txt ok"),
            )
        })
        .collect();
    let host_panic = format!("emit {} boom", baa_runner::fault::HOST_PANIC_EVENT);
    // Each failing step, and the event at which it is cancelled (if it is).
    let failing = [
        ("trap", "panic", FailureReason::Trap, None),
        ("memory", "alloc 2048", FailureReason::MemoryLimit, None),
        (
            "host-panic",
            host_panic.as_str(),
            FailureReason::HostError,
            None,
        ),
        ("timeout", "loop", FailureReason::Timeout, None),
        (
            "cancel-child",
            "sh sleep 30",
            FailureReason::Interrupted,
            Some("subprocess.started"),
        ),
        (
            "cancel-loop",
            "loop",
            FailureReason::Interrupted,
            Some("plugin.loaded"),
        ),
    ];
    let mut handles = Vec::new();
    for (name, script, reason, cancel_at) in failing {
        let mut request = sandbox.request("probe", script);
        request.step_id = name.into();
        if name == "timeout" {
            request.timeout_sec = 1.0;
        }
        let mut handle = runner.start(request).unwrap();
        handles.push((
            reason,
            tokio::spawn(async move {
                while let Some(event) = handle.events().next().await {
                    match event.body {
                        StepEventBody::Lifecycle(entry)
                            if Some(entry.event.as_str()) == cancel_at =>
                        {
                            handle.cancel()
                        }
                        _ => {}
                    }
                }
                handle.result().await
            }),
        ));
    }
    for (reason, handle) in handles {
        let result = handle.await.unwrap().unwrap();
        assert_eq!(
            result.outcome,
            StepExecutionOutcome::Failed,
            "{}",
            result.summary
        );
        assert_eq!(
            result.state.failure.as_ref().map(|f| f.reason),
            Some(reason),
            "{}",
            result.summary
        );
        assert_eq!(read_json(&result.log_paths.state_path)["status"], "failed");
    }
    for (i, handle) in healthy.into_iter().enumerate() {
        let result = handle.result().await.unwrap();
        assert!(result.ok, "{}", result.summary);
        assert!(sandbox.repo.join(format!("healthy-{i}.txt")).exists());
    }
    // The runner goes on.
    let after = start(&runner, &sandbox, "after", "write after.txt fine");
    assert!(after.result().await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_over_a_concurrency_limit_wait_for_a_slot() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.concurrency.kinds.insert("probe".into(), 1);
    });
    let handles: Vec<StepHandle> = (0..3)
        .map(|i| start(&runner, &sandbox, &format!("limited-{i}"), "sh sleep 0.3"))
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.result().await.unwrap());
    }
    let mut spans = Vec::new();
    let mut queued = 0;
    for result in &results {
        assert!(result.ok, "{}", result.summary);
        let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
        let names = event_names(&events);
        if names.contains(&"step.queued".to_string()) {
            queued += 1;
            let q = names.iter().position(|n| n == "step.queued").unwrap();
            let a = names.iter().position(|n| n == "step.admitted").unwrap();
            let s = names.iter().position(|n| n == "step.started").unwrap();
            assert!(q < a && a < s, "{names:?}");
        }
        spans.push((result.started_at.clone(), result.finished_at.clone()));
    }
    assert_eq!(queued, 2, "two of the three steps waited");
    // One at a time: no two executions overlap.
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap: {pair:?}");
    }

    // A step cancelled while it waits ends interrupted without running.
    let mut first = start(&runner, &sandbox, "holder", "sh sleep 1");
    while let Some(event) = first.events().next().await {
        if matches!(&event.body, StepEventBody::Lifecycle(e) if e.event == "step.started") {
            break;
        }
    }
    let mut waiting = start(&runner, &sandbox, "waiter", "write never.txt x");
    while let Some(event) = waiting.events().next().await {
        if matches!(&event.body, StepEventBody::Lifecycle(e) if e.event == "step.queued") {
            break;
        }
    }
    waiting.cancel();
    let result = waiting.result().await.unwrap();
    assert_interrupted(&result);
    assert!(
        result.summary.contains("waiting for a slot"),
        "{}",
        result.summary
    );
    assert!(!sandbox.repo.join("never.txt").exists());
    assert!(first.result().await.unwrap().ok);

    // Limits that could never admit a step are refused, naming the setting.
    let mut config = baa_runner::RunnerConfig::default();
    config.concurrency.kinds.insert("shell".into(), 0);
    let err = Runner::new(config).err().expect("refused").to_string();
    assert!(err.contains("concurrency.kinds.shell"), "{err}");
    let mut config = baa_runner::RunnerConfig::default();
    config.concurrency.max_steps = 0;
    let err = Runner::new(config).err().expect("refused").to_string();
    assert!(err.contains("concurrency.max-steps"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_subscriber_can_tell_how_many_events_it_missed() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let n = 2 * baa_runner::run::handle::EVENT_BUFFER;
    let mut handle = start(&runner, &sandbox, "flood", &format!("emitmany {n}"));
    // A second subscriber follows the step to its end; the handle's own
    // one (subscribed before the preparation) reads nothing meanwhile.
    let mut follower = handle.subscribe();
    let mut followed = 0;
    while follower.next().await.is_some() {
        followed += 1;
    }
    assert!(followed > 0);
    let stream = handle.events();
    let mut seqs = Vec::new();
    while let Some(event) = stream.next().await {
        seqs.push(event.seq);
    }
    let missed = stream.missed();
    assert!(missed > 0, "the stalled subscriber fell behind");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs.len() as u64 + missed,
        last,
        "every number is seen or missed"
    );
    let result = handle.result().await.unwrap();
    assert!(result.ok, "{}", result.summary);
    // The record has every event.
    assert!(read_lifecycle(&result.log_paths.lifecycle_log_path).len() > n);
}

#[test]
fn the_embedding_example_runs_three_steps_and_cancels_one() {
    let sandbox = Sandbox::new();
    let out = std::process::Command::new(crate::built_binary("embed"))
        .arg(&sandbox.repo)
        .arg(&sandbox.runs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    crate::assert_exit(&out, 0);
    for line in [
        "[count #",
        "stdout: tick 3",
        "[slow] cancelling",
        "count: completed",
        "status: completed",
        "slow: failed",
        "the cancelled one is recorded as interrupted",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
}

#[test]
fn starting_a_step_outside_a_runtime_is_an_error_and_prepares_nothing() {
    let sandbox = Sandbox::new();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |_| {});
    let mut request = sandbox.request("probe", "true");
    request.step_id = "no-runtime".into();
    let err = runner.start(request).err().expect("refused").to_string();
    assert!(err.contains("within a tokio runtime"), "{err}");
    assert!(!sandbox.runs.exists(), "nothing was prepared");
}
