//! Checkpoints: git-diff snapshots of real repositories, resuming across
//! attempts, corrupt records, the writer lock, and crashes at every step of
//! a checkpoint write.

use std::path::Path;
use std::process::Command;

use baa_runner::checkpoints::StepHistory;
use baa_runner::contracts::{CheckpointRecord, StepExecutionOutcome, StepExecutionRequest};
use baa_runner::run::lock::RunLock;
use baa_runner::{Error, Runner};
use baa_runner_tests::{git, read_json, read_lifecycle, Sandbox};

use crate::run;

fn probe_runner(sandbox: &Sandbox) -> Runner {
    crate::probe_runner(sandbox, crate::grant_all()).0
}

fn attempt(
    sandbox: &Sandbox,
    n: u32,
    script: &str,
    resume_from: Option<u32>,
) -> StepExecutionRequest {
    let mut request = sandbox.request("probe", script);
    request.attempt = n;
    request.checkpoint.as_mut().unwrap().resume_from_seq = resume_from;
    request
}

fn record_of<'a>(records: &'a [CheckpointRecord], kind: &str) -> &'a CheckpointRecord {
    records
        .iter()
        .find(|r| r.checkpoint_type.as_str() == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
}

#[tokio::test(flavor = "multi_thread")]
async fn git_diff_snapshot_covers_staged_unstaged_new_deleted_and_binary_files() {
    let sandbox = Sandbox::new();
    let repo = &sandbox.repo;
    std::fs::write(repo.join("staged.txt"), "one\n").unwrap();
    std::fs::write(repo.join("unstaged.txt"), "one\n").unwrap();
    std::fs::write(repo.join("doomed.txt"), "bye\n").unwrap();
    std::fs::write(repo.join("image.bin"), [0u8, 159, 146, 150, 0, 1, 2]).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "base"]);
    let base = git(repo, &["rev-parse", "HEAD"]).trim().to_string();

    std::fs::write(repo.join("staged.txt"), "one\ntwo\n").unwrap();
    git(repo, &["add", "staged.txt"]);
    std::fs::write(repo.join("unstaged.txt"), "one\nthree\n").unwrap();
    std::fs::remove_file(repo.join("doomed.txt")).unwrap();
    std::fs::write(repo.join("new.txt"), "fresh\n").unwrap();
    std::fs::write(repo.join("image.bin"), [0u8, 255, 254, 253, 0, 9]).unwrap();

    let mut request = sandbox.request("shell", "true");
    let checkpoint = request.checkpoint.as_mut().unwrap();
    checkpoint.include_git_diff_stat = Some(true);
    checkpoint.git_diff_base_ref = Some(base.clone());
    let result = run(&crate::runner(), request).await;
    assert!(result.ok, "{}", result.summary);

    let plan = result.checkpoint.git_diff_plan.as_ref().expect("plan");
    assert_eq!(plan.base_ref, base);
    let record = record_of(&result.checkpoint.records, "git-diff");
    let details = record.details.as_ref().unwrap();
    let mut files: Vec<(String, String)> = details["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["status"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    let expected: Vec<(String, String)> = [
        ("D", "doomed.txt"),
        ("M", "image.bin"),
        ("A", "new.txt"),
        ("M", "staged.txt"),
        ("M", "unstaged.txt"),
    ]
    .iter()
    .map(|(s, p)| (s.to_string(), p.to_string()))
    .collect();
    assert_eq!(files, expected);
    assert!(
        details["stat"]
            .as_str()
            .unwrap()
            .contains("5 files changed"),
        "{details}"
    );

    // The patch rebuilds the worktree from the base, binary file included.
    let patch_path = record.payload_path.as_ref().unwrap();
    let copy = sandbox.dir.path().join("copy");
    git(
        sandbox.dir.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    git(&copy, &["checkout", "-q", &base]);
    git(&copy, &["apply", "--binary", patch_path]);
    for file in ["staged.txt", "unstaged.txt", "new.txt", "image.bin"] {
        assert_eq!(
            std::fs::read(copy.join(file)).unwrap(),
            std::fs::read(repo.join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(!copy.join("doomed.txt").exists());

    // The repository's own index was not touched.
    assert_eq!(
        git(repo, &["diff", "--cached", "--name-only"]).trim(),
        "staged.txt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_attempt_resumes_from_a_checkpoint_and_continues_the_numbering() {
    let sandbox = Sandbox::new();
    let runner = probe_runner(&sandbox);
    let first = run(
        &runner,
        attempt(
            &sandbox,
            1,
            "checkpoint probe.state halfway-there\nblock out of time",
            None,
        ),
    )
    .await;
    assert_eq!(first.outcome, StepExecutionOutcome::Blocked);
    let probe_record = record_of(&first.checkpoint.records, "probe.state").clone();
    assert_eq!(probe_record.seq, 1);
    let first_last = first.checkpoint.last_checkpoint_seq;
    assert_eq!(
        first_last, 4,
        "probe.state, then the host's git-diff, log-tail, summary"
    );

    let second = run(&runner, attempt(&sandbox, 2, "resume", Some(1))).await;
    assert!(second.ok, "{}", second.summary);
    let stdout = std::fs::read_to_string(&second.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains(
            "resume: ok seq=1 type=probe.state summary=halfway-there payload=halfway-there"
        ),
        "{stdout}"
    );

    assert_eq!(
        read_json(&second.log_paths.metadata_path)["resumedFromSeq"],
        1
    );
    assert_eq!(second.checkpoint.manager.resumed_from_seq, Some(1));
    let events = read_lifecycle(&second.log_paths.lifecycle_log_path);
    assert!(events
        .iter()
        .any(|e| e["event"] == "checkpoint.resumed" && e["data"]["seq"] == 1));

    // Numbering continues: no gaps, no duplicates across the attempts.
    let seqs: Vec<u32> = second.checkpoint.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=first_last + 3).collect::<Vec<_>>());
    assert!(second
        .checkpoint
        .records
        .iter()
        .filter(|r| r.seq > first_last)
        .all(|r| r.attempt == 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_from_a_missing_or_corrupt_checkpoint_is_a_clear_error() {
    let sandbox = Sandbox::new();
    let runner = probe_runner(&sandbox);
    let first = run(
        &runner,
        attempt(&sandbox, 1, "checkpoint probe.state one", None),
    )
    .await;
    let step_dir = Path::new(&first.log_paths.run_dir)
        .parent()
        .unwrap()
        .to_path_buf();

    let err = runner
        .prepare(attempt(&sandbox, 2, "resume", Some(42)), None)
        .err()
        .expect("refused");
    assert!(
        matches!(&err, Error::InvalidRequest { field, .. } if field == "checkpoint.resumeFromSeq"),
        "{err}"
    );
    assert!(
        err.to_string().contains("checkpoint 42") && err.to_string().contains("000042.json"),
        "{err}"
    );
    assert!(
        !step_dir.join("attempt-2").exists(),
        "nothing written for a refused attempt"
    );

    // Corrupt the latest record: a resume from it names it; a fresh attempt
    // says so, falls back to the previous valid one, and never reuses its seq.
    let latest = Path::new(&first.checkpoint.records.last().unwrap().path).to_path_buf();
    let latest_seq = first.checkpoint.last_checkpoint_seq;
    let text = std::fs::read_to_string(&latest).unwrap();
    std::fs::write(&latest, text.replace("\"summary\"", "\"summarY\"")).unwrap();
    let err = runner
        .prepare(attempt(&sandbox, 2, "resume", Some(latest_seq)), None)
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains(&format!("checkpoint {latest_seq}")),
        "{err}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");

    let history = StepHistory::load(&step_dir, 2);
    assert_eq!(history.latest_valid().unwrap().seq, latest_seq - 1);
    assert_eq!(history.corrupt.len(), 1);
    let second = run(
        &runner,
        attempt(&sandbox, 2, "checkpoint probe.state two", None),
    )
    .await;
    assert_eq!(
        second
            .checkpoint
            .records
            .iter()
            .find(|r| r.attempt == 2)
            .unwrap()
            .seq,
        latest_seq + 1
    );
    let events = read_lifecycle(&second.log_paths.lifecycle_log_path);
    assert!(events.iter().any(|e| e["event"] == "checkpoint.corrupt"));
}

#[test]
fn two_writers_cannot_both_hold_a_run() {
    let sandbox = Sandbox::new();
    let runner = crate::runner();
    let prepared = runner
        .prepare(sandbox.request("shell", "true"), None)
        .unwrap();
    let run_dir = &std::path::PathBuf::from(&prepared.log_paths.run_dir);
    assert!(RunLock::is_held(run_dir));
    let err = RunLock::acquire(run_dir).expect_err("the second writer is refused");
    assert!(matches!(err, Error::RunLocked { .. }), "{err}");
    drop(prepared);
    // A child forked by a concurrent test holds a copy of the lock's file
    // descriptor until it execs; the lock is free once that copy is closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while RunLock::is_held(run_dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock outlived its writer"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    RunLock::acquire(run_dir).expect("free once the first writer is gone");
}

/// Every point of a checkpoint write at which the crash test kills the writer.
const CRASH_POINTS: &[&str] = &[
    "checkpoint.before-payload",
    "write.before-fsync",
    "write.before-rename",
    "write.before-dir-fsync",
    "checkpoint.before-record",
    "checkpoint.after-record",
];

#[test]
fn a_writer_killed_at_any_point_of_a_checkpoint_write_leaves_the_old_or_the_new_record() {
    let writer = crate::built_binary("crash-checkpoint");
    for point in CRASH_POINTS {
        let sandbox = tempfile::tempdir().unwrap();
        let dir = sandbox.path().join("attempt-1/checkpoints");
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(&writer)
            .arg(&dir)
            .env("BAA_FAULT_POINT", point)
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: the writer was killed there"
        );

        let history = StepHistory::load(sandbox.path(), 99);
        assert!(history.corrupt.is_empty(), "{point}: {:?}", history.corrupt);
        let seqs: Vec<u32> = history.records.iter().map(|r| r.seq).collect();
        assert!(
            seqs == [1] || seqs == [1, 2],
            "{point}: visible records {seqs:?}"
        );
        let latest = history.latest_valid().unwrap();
        let resumed = history.resume_from(sandbox.path(), latest.seq).unwrap();
        let expected: &[u8] = if latest.seq == 1 {
            b"old payload"
        } else {
            b"new payload"
        };
        assert_eq!(resumed.payload.as_deref(), Some(expected), "{point}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_concurrent_runs_lose_and_duplicate_no_record() {
    let sandbox = Sandbox::new();
    let runner = probe_runner(&sandbox);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let mut request = sandbox.request(
            "probe",
            "checkpoint probe.state a\ncheckpoint probe.state b\ncheckpoint probe.state c",
        );
        request.step_id = format!("step-{i}");
        let runner = runner.clone();
        set.spawn(async move { runner.run(request, None).await });
    }
    let mut dirs = Vec::new();
    while let Some(joined) = set.join_next().await {
        let result = joined.unwrap().unwrap();
        assert!(result.ok, "{}", result.summary);
        dirs.push(result.log_paths.run_dir.clone());
    }
    assert_eq!(dirs.len(), 32);
    for dir in dirs {
        let step_dir = Path::new(&dir).parent().unwrap();
        let history = StepHistory::load(step_dir, 0);
        assert!(history.corrupt.is_empty(), "{:?}", history.corrupt);
        let seqs: Vec<u32> = history.records.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (1..=6).collect::<Vec<_>>(),
            "{dir}: {:?}",
            baa_runner_tests::read_lifecycle(Path::new(&dir).join("logs/lifecycle.jsonl"))
                .iter()
                .filter(|e| e["event"].as_str().unwrap().starts_with("checkpoint")
                    || e["event"].as_str().unwrap().starts_with("subprocess"))
                .map(|e| e["message"].to_string())
                .collect::<Vec<_>>()
        );
        let summaries: Vec<&str> = history
            .records
            .iter()
            .take(3)
            .map(|r| r.summary.as_str())
            .collect();
        assert_eq!(summaries, ["a", "b", "c"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_killed_mid_run_is_recovered_and_resumed_from_its_last_checkpoint() {
    let sandbox = Sandbox::new();
    let config = crate::probe_config_file(&sandbox);
    let mut json = sandbox.request_json(
        "probe",
        "checkpoint probe.state before-the-crash\nsh echo started; sleep 30.913",
    );
    json["timeoutSec"] = 120.into();
    let request_path = sandbox.dir.path().join("request.json");
    std::fs::write(&request_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let cli = crate::built_binary("baa-runner");
    let mut host = Command::new(&cli)
        .arg("--config")
        .arg(&config)
        .args(["run", "--quiet"])
        .arg(&request_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the step's subprocess runs, then kill the host outright.
    let run_dir = sandbox.runs.join("task-1/run-1/step-1/attempt-1");
    let lifecycle = run_dir.join("logs/lifecycle.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stdout_log = run_dir.join("logs/stdout.log");
    while !std::fs::read_to_string(&stdout_log)
        .unwrap_or_default()
        .contains("started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started its subprocess"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    host.kill().unwrap();
    host.wait().unwrap();
    assert_eq!(read_json(run_dir.join("state.json"))["status"], "running");
    // The host's death cut the launcher's lifeline: the supervisor stops
    // the subprocess's tree by itself.
    let gone = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !baa_runner_tests::processes_with("30.913").is_empty() {
        assert!(
            std::time::Instant::now() < gone,
            "the subprocess outlived the host"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let report = crate::runner().recover(&sandbox.runs);
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert_eq!(report.recovered[0].last_checkpoint_seq, 1);
    let state = read_json(run_dir.join("state.json"));
    assert_eq!(state["status"], "interrupted");
    assert_eq!(state["failure"]["reason"], "interrupted");
    assert_eq!(state["lastCheckpointSeq"], 1);
    assert_eq!(
        read_json(run_dir.join("metadata.json"))["failure"]["reason"],
        "interrupted"
    );
    let events = read_lifecycle(&lifecycle);
    assert_eq!(events.last().unwrap()["event"], "run.recovered");
    let stdout = std::fs::read_to_string(&stdout_log).unwrap();
    assert!(
        stdout.contains("started"),
        "what was logged before the crash is kept"
    );

    // Idempotent.
    let again = crate::runner().recover(&sandbox.runs);
    assert!(
        again.recovered.is_empty() && again.errors.is_empty(),
        "{again:?}"
    );
    assert_eq!(read_lifecycle(&lifecycle).len(), events.len());

    // The next attempt resumes from the checkpoint taken before the crash.
    let runner = probe_runner(&sandbox);
    let second = run(&runner, attempt(&sandbox, 2, "resume", Some(1))).await;
    assert!(second.ok, "{}", second.summary);
    let stdout = std::fs::read_to_string(&second.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains("resume: ok seq=1 type=probe.state summary=before-the-crash"),
        "{stdout}"
    );
    assert_eq!(
        second
            .checkpoint
            .records
            .iter()
            .find(|r| r.attempt == 2)
            .unwrap()
            .seq,
        2
    );
}
