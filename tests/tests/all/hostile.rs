//! Hostile worker kinds: each attack runs through the real host and must end
//! with the expected reason, no escape (a canary tree beside the worktree is
//! unchanged), a complete run record, and a host that runs the next step.

use std::collections::BTreeMap;
use std::path::Path;

use baa_runner::contracts::{FailureReason, StepExecutionOutcome, StepExecutionResult};
use baa_runner::Runner;
use baa_runner_tests::{fixtures, read_json, read_lifecycle, Sandbox};

use crate::{grant_all, probe_runner_with, run};

/// Every file below `dir` with its content (the canary's fingerprint).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            let p = entry.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                );
            }
        }
    }
    out
}

/// A canary tree beside the worktree, plus symlinks in the worktree that
/// point at it (pre-existing escapes a worker might try to use).
fn plant_canary(sandbox: &Sandbox) -> std::path::PathBuf {
    let canary = sandbox.dir.path().join("canary");
    std::fs::create_dir_all(canary.join("nested")).unwrap();
    std::fs::write(canary.join("secret.txt"), "CANARY-SECRET").unwrap();
    std::fs::write(canary.join("nested/data.bin"), [1u8, 2, 3]).unwrap();
    std::os::unix::fs::symlink("../canary/secret.txt", sandbox.repo.join("rel-out")).unwrap();
    std::os::unix::fs::symlink(&canary, sandbox.repo.join("abs-out")).unwrap();
    canary
}

/// The run record is complete and readable on its own.
fn assert_complete_record(result: &StepExecutionResult) {
    let paths = &result.log_paths;
    for file in [&paths.metadata_path, &paths.state_path, &paths.result_path] {
        read_json(file);
    }
    let events = read_lifecycle(&paths.lifecycle_log_path);
    assert_eq!(events.last().unwrap()["event"], "step.finished");
    baa_runner::checkpoints::StepHistory::load(Path::new(&paths.run_dir).parent().unwrap(), 0)
        .corrupt
        .is_empty()
        .then_some(())
        .expect("no corrupt checkpoint");
}

async fn next_step_succeeds(runner: &Runner, sandbox: &Sandbox, n: usize) {
    let mut request = sandbox.request("probe", "write after.txt the host is fine");
    request.step_id = format!("after-{n}");
    let result = run(runner, request).await;
    assert!(result.ok, "the next step failed: {}", result.summary);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_workers_end_with_the_expected_reason_and_no_escape() {
    let sandbox = Sandbox::new();
    let canary = plant_canary(&sandbox);
    let before = snapshot(&canary);
    let rss_before = rss_kib();
    let (runner, _) = probe_runner_with(&sandbox, grant_all(), |config| {
        config.limits.log_stream_bytes = 1024 * 1024;
        config.limits.max_processes = 4;
        config.limits.resource_table_entries = 256;
    });
    let cases: &[(&str, &str, Option<FailureReason>, f64)] = &[
        ("escape", "read rel-out\nread rel-out/\nread abs-out/\nread abs-out/secret.txt\nwrite rel-out x\nwrite abs-out/planted x\nsymlink abs-out/nested sneaky\nread sneaky/data.bin\nsymlink loop-a loop-b\nsymlink loop-b loop-a\nread loop-a\nreadlong 3000\nread ../canary/secret.txt\nrawopen README.md\nrawopen README.md\\0../canary/secret.txt\nrawopen ../canary/secret.txt", Some(FailureReason::WorkerFailed), 30.0),
        ("cpu", "loop", Some(FailureReason::Timeout), 1.0),
        ("memory", "alloc 2048", Some(FailureReason::MemoryLimit), 30.0),
        ("stack", "recurse", Some(FailureReason::Trap), 30.0),
        ("unreachable", "unreachable", Some(FailureReason::Trap), 30.0),
        ("panic", "panic", Some(FailureReason::Trap), 30.0),
        ("exit", "exit 7", Some(FailureReason::Trap), 30.0),
        ("flood", "flood 8", Some(FailureReason::OutputLimit), 30.0),
        ("line", "line 4", Some(FailureReason::OutputLimit), 30.0),
        ("big-host-call", "bigemit 32", None, 30.0),
        ("processes", "spawnmany 10", Some(FailureReason::PolicyDenied), 30.0),
        ("resources", "openmany 1000", None, 30.0),
        ("bytes", "bytes", None, 30.0),
    ];
    for (n, (name, script, reason, timeout)) in cases.iter().enumerate() {
        let mut request = sandbox.request("probe", script);
        request.step_id = format!("hostile-{name}");
        request.timeout_sec = *timeout;
        let result = run(&runner, request).await;
        if let Some(reason) = reason {
            assert_eq!(
                result.outcome,
                StepExecutionOutcome::Failed,
                "{name}: {}",
                result.summary
            );
            let failure = result.state.failure.as_ref().unwrap();
            assert_eq!(failure.reason, *reason, "{name}: {}", failure.message);
        }
        assert_complete_record(&result);
        assert_eq!(snapshot(&canary), before, "{name}: the canary changed");
        next_step_succeeds(&runner, &sandbox, n).await;

        let failure = result.state.failure.clone();
        let stdout = std::fs::read(&result.log_paths.stdout_log_path).unwrap();
        match *name {
            "escape" => {
                let text = String::from_utf8_lossy(&stdout);
                assert!(!text.contains("CANARY-SECRET"), "{text}");
                // Creating a link inside the worktree is fine; reading or
                // writing through any link or path that leaves it is not.
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("read ") || l.starts_with("write "))
                {
                    assert!(line.contains(": denied"), "not refused: {line}");
                }
                // Raw WASI opens: the plain one works, a NUL byte or `..` does not.
                assert!(text.contains("rawopen README.md: ok opened"), "{text}");
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("rawopen ") && !l.starts_with("rawopen README.md:"))
                {
                    assert!(line.contains(": denied"), "not refused: {line}");
                }
            }
            "stack" => {
                let code = failure.unwrap().trap_code.unwrap();
                assert_eq!(code, "stack-overflow");
            }
            "unreachable" => {
                let code = failure.unwrap().trap_code.unwrap();
                assert_eq!(code, "unreachable-code-reached");
            }
            "exit" => {
                // WASI 0.2's exit carries only success or failure: 7 arrives as 1.
                assert_eq!(failure.unwrap().trap_code.as_deref(), Some("exit(1)"));
                assert_eq!(result.state.exit_code, Some(1));
            }
            "flood" | "line" => {
                assert!(result.log_summary.stdout_truncated);
                assert!(
                    stdout.len() < 1024 * 1024 + 128 * 1024,
                    "{} bytes kept",
                    stdout.len()
                );
                let end = String::from_utf8_lossy(&stdout[stdout.len() - 70 * 1024..]).into_owned();
                assert!(
                    end.contains("[baa-runner: log truncated at 1048576 bytes"),
                    "the tail is kept after a marker"
                );
            }
            "big-host-call" => {
                let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
                let big = events.iter().find(|e| e["event"] == "probe.big").unwrap();
                assert!(
                    big["message"].as_str().unwrap().len() < 64 * 1024,
                    "host-call data is cut"
                );
            }
            "bytes" => {
                assert!(result.ok, "{}", result.summary);
                let expected: &[u8] =
                    b"\xff\xfe invalid utf-8 \x1b[31mred\x1b[0m \x1b]0;title\x07 bell\n";
                assert!(
                    stdout.windows(expected.len()).any(|w| w == expected),
                    "stored exactly"
                );
            }
            "resources" => assert_ne!(
                result.outcome,
                StepExecutionOutcome::Completed,
                "the table limit held"
            ),
            _ => {}
        }
    }
    // The host stays bounded: the guests' memory went with their stores.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 1024 * 1024, "the host grew by {grown} KiB");
}

/// The test process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_plugins_are_refused_with_a_precise_reason() {
    let sandbox = Sandbox::new();
    let dir = sandbox.dir.path().join("malformed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.wasm"), b"").unwrap();
    std::fs::write(
        dir.join("random.wasm"),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::copy(fixtures::WRONG_VERSION_WASM, dir.join("future.wasm")).unwrap();
    std::fs::copy(fixtures::MISSING_EXPORT_WASM, dir.join("hollow.wasm")).unwrap();
    std::fs::copy(fixtures::UNKNOWN_IMPORT_WASM, dir.join("greedy.wasm")).unwrap();
    let mut config = baa_runner::RunnerConfig::default();
    config.plugin_dirs.push(dir);
    let runner = Runner::new(config).unwrap();
    for (kind, expected) in [
        ("empty", "not a valid WebAssembly component"),
        ("random", "not a valid WebAssembly component"),
        ("core", "not a valid WebAssembly component"),
        (
            "future",
            "built for baa:worker@0.9.0, but this host runs baa:worker@0.1.0 and baa:worker@0.2.0",
        ),
        (
            "hollow",
            "does not export `baa:worker/worker-executor@0.2.0`",
        ),
        ("greedy", "needs imports this host does not provide"),
    ] {
        let mut request = sandbox.request(kind, "x");
        request.step_id = format!("malformed-{kind}");
        let result = run(&runner, request).await;
        assert_eq!(result.outcome, StepExecutionOutcome::Failed, "{kind}");
        let failure = result.state.failure.as_ref().unwrap();
        assert_eq!(
            failure.reason,
            FailureReason::InvalidPlugin,
            "{kind}: {}",
            failure.message
        );
        assert!(
            failure.message.contains(expected),
            "{kind}: {}",
            failure.message
        );
        assert_complete_record(&result);
    }
    next_step_succeeds(&crate::probe_runner(&sandbox, grant_all()).0, &sandbox, 99).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_spins_while_starting_or_asks_for_too_much_memory_is_stopped() {
    let sandbox = Sandbox::new();
    let canary = plant_canary(&sandbox);
    let before = snapshot(&canary);
    let dir = crate::probe_plugins_dir(&sandbox);
    std::fs::copy(fixtures::START_LOOP_WASM, dir.join("start-loop.wasm")).unwrap();
    std::fs::copy(fixtures::BIG_MEMORY_WASM, dir.join("big-memory.wasm")).unwrap();
    let mut config = baa_runner::RunnerConfig::default();
    config.plugin_dirs.push(dir);
    config.kinds.insert("probe".into(), grant_all());
    let runner = Runner::new(config).unwrap();

    let mut request = sandbox.request("start-loop", "x");
    request.timeout_sec = 1.0;
    let started = std::time::Instant::now();
    let result = run(&runner, request).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let failure = result.state.failure.as_ref().unwrap();
    assert_eq!(
        failure.reason,
        FailureReason::Timeout,
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("while starting"),
        "{}",
        failure.message
    );
    assert_complete_record(&result);

    let mut request = sandbox.request("big-memory", "x");
    request.step_id = "big-memory".into();
    let result = run(&runner, request).await;
    let failure = result.state.failure.as_ref().unwrap();
    assert_eq!(
        failure.reason,
        FailureReason::MemoryLimit,
        "{}",
        failure.message
    );
    assert_complete_record(&result);

    assert_eq!(snapshot(&canary), before);
    next_step_succeeds(&runner, &sandbox, 7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_flood_keeps_every_event_on_disk_and_a_bounded_list_in_the_result() {
    let sandbox = Sandbox::new();
    let (runner, _) = crate::probe_runner(&sandbox, grant_all());
    let result = run(&runner, sandbox.request("probe", "emitmany 5000")).await;
    assert!(result.ok, "{}", result.summary);
    let on_disk = read_lifecycle(&result.log_paths.lifecycle_log_path);
    assert!(on_disk.len() > 5000, "{}", on_disk.len());
    assert_eq!(result.metrics.lifecycle_event_count, on_disk.len() as u64);
    let kept = &result.lifecycle_events;
    assert_eq!(kept.len(), 2 * baa_runner::logs::KEPT_EVENTS);
    // The start and the end of the step are both there; seq shows the gap.
    assert_eq!(kept.first().unwrap().event, "run.prepared");
    assert!(kept.iter().any(|e| e.event == "step.finished"));
    let gap = kept
        .windows(2)
        .find(|w| w[1].seq != w[0].seq + 1)
        .expect("a gap in seq");
    assert!(gap[1].seq - gap[0].seq > 4000);
}
