//! The `git` kind: real commits in a real repository; refused options.

use baa_runner::contracts::{FailureReason, StepArtifactKind, StepExecutionOutcome};
use baa_runner_tests::{git, read_json, read_lifecycle, Sandbox};

use crate::{run, runner};

#[tokio::test(flavor = "multi_thread")]
async fn git_step_commits_and_records_the_diff() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.repo.join("feature.txt"), "a new feature\n").unwrap();
    let request = sandbox.request(
        "git",
        "checkout -b feature/x\nadd -A\ncommit -m \"add the feature\"",
    );
    let result = run(&runner(), request).await;

    assert!(result.ok, "{}", result.summary);
    assert!(
        result.summary.contains("on branch feature/x"),
        "{}",
        result.summary
    );
    assert!(
        result.summary.contains("add the feature"),
        "{}",
        result.summary
    );
    assert!(
        result.summary.contains("worktree clean"),
        "{}",
        result.summary
    );

    // The commit is real.
    assert_eq!(
        git(&sandbox.repo, &["log", "-1", "--format=%s|%an"]).trim(),
        "add the feature|Test Author"
    );
    assert_eq!(
        git(&sandbox.repo, &["branch", "--show-current"]).trim(),
        "feature/x"
    );

    // The diff is an artifact in the run directory.
    let diff = result
        .artifacts
        .iter()
        .find(|a| a.name == "git.diff" && a.kind == StepArtifactKind::Artifact)
        .expect("diff artifact");
    let text = std::fs::read_to_string(&diff.path).unwrap();
    assert!(text.contains("+a new feature"), "{text}");
    assert!(diff.path.starts_with(&result.log_paths.artifacts_dir));

    // And a git-diff checkpoint with the patch as payload.
    let record =
        read_json(std::path::Path::new(&result.log_paths.checkpoints_dir).join("000001.json"));
    assert_eq!(record["type"], "git-diff");
    let payload = std::fs::read_to_string(record["payloadPath"].as_str().unwrap()).unwrap();
    assert_eq!(payload, text.trim_end());
    assert!(
        result.checkpoint.git_diff_plan.is_some(),
        "capture mode plans the git diff"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn git_status_on_a_clean_repo_completes() {
    let sandbox = Sandbox::new();
    let result = run(&runner(), sandbox.request("git", "status")).await;
    assert!(result.ok, "{}", result.summary);
    assert!(
        result
            .summary
            .contains("on branch main; no commit made; worktree clean"),
        "{}",
        result.summary
    );
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(stdout.contains("On branch main"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_options_that_run_other_programs_are_refused() {
    let sandbox = Sandbox::new();
    for (i, command) in [
        "-c alias.x=!touch${IFS}pwned x",
        "status -c core.sshCommand=touch",
        "log --upload-pack=touch",
        "status --exec-path=/tmp",
        "push origin main",
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = sandbox.request("git", command);
        request.step_id = format!("refused-{i}");
        let result = run(&runner(), request).await;
        assert_eq!(result.outcome, StepExecutionOutcome::Failed, "{command}");
        assert_eq!(
            result.state.failure.as_ref().unwrap().reason,
            FailureReason::InvalidRequest,
            "{command}"
        );
        assert!(!sandbox.repo.join("pwned").exists());
        // Refused before the worker started any git process (the host's
        // own snapshot commands come later).
        let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
        assert!(
            !events
                .iter()
                .any(|e| e["event"] == "subprocess.started" && e["data"]["forWorker"] == true),
            "{command}: {events:?}"
        );
    }
}
