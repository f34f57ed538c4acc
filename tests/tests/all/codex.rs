//! The `codex` kind against the real Codex CLI and a scripted mock model.

use baa_runner::config::KindGrant;
use baa_runner::contracts::{StepExecutionOutcome, StepExecutionRequest};
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::mock_model::{codex_binary, MockModel, Reply};
use baa_runner_tests::{event_names, read_json, read_lifecycle, Sandbox};
use serde_json::json;

use crate::run;

/// The codex kind's grant: the real CLI, its home (where the mock's
/// provider is configured) and TCP to the mock model only.
fn codex_grant(sandbox: &Sandbox, model: &MockModel) -> KindGrant {
    let mut grant: KindGrant = RunnerConfig::default().grant("codex");
    grant.programs = vec![codex_binary().display().to_string(), "git".into()];
    grant.write_paths = vec![sandbox.dir.path().join("codex-home")];
    // The npm package's native binary reads files beside its directory.
    grant.read_paths = codex_binary()
        .ancestors()
        .nth(3)
        .map(|p| p.to_path_buf())
        .into_iter()
        .collect();
    grant.tcp_connect = vec![model.port];
    grant
}

/// A runner with [`codex_grant`].
fn codex_runner(sandbox: &Sandbox, model: &MockModel) -> Runner {
    let mut config = RunnerConfig::default();
    config
        .kinds
        .insert("codex".into(), codex_grant(sandbox, model));
    Runner::new(config).unwrap()
}

fn codex_request(sandbox: &Sandbox, model: &MockModel, prompt: &str) -> StepExecutionRequest {
    let mut json = sandbox.request_json("codex", "");
    json.as_object_mut().unwrap().remove("command");
    json["stepName"] = "fix the greeting".into();
    json["stepKind"] = "codex".into();
    json["promptSummary"] = prompt.into();
    json["timeoutSec"] = 120.into();
    json["runtime"]["env"] = json!({
        "CODEX_HOME": model.codex_home(sandbox.dir.path()),
        "BAA_CODEX_API_KEY": "test-key",
    });
    serde_json::from_value(json).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_changes_files_and_completes() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::command("printf 'hello, world\\n' > greeting.txt && cat greeting.txt"),
        Reply::answer(
            "completed",
            "wrote greeting.txt",
            false,
            json!([{ "stepName": "review greeting", "stepKind": "review", "reason": "check the wording" }]),
        ),
    ]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Create greeting.txt saying hello"),
    )
    .await;

    assert!(
        result.ok,
        "{}\n{:?}",
        result.summary, result.log_summary.stderr_tail
    );
    assert_eq!(result.outcome, StepExecutionOutcome::Completed);
    assert!(
        result.summary.starts_with("wrote greeting.txt"),
        "{}",
        result.summary
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.repo.join("greeting.txt")).unwrap(),
        "hello, world\n"
    );
    assert_eq!(result.suggested_followup.len(), 1);
    assert_eq!(result.suggested_followup[0].step_kind.as_str(), "review");
    // The turn's changes are an artifact, new files included.
    let diff = result
        .artifacts
        .iter()
        .find(|a| a.name == "codex.diff")
        .expect("a codex.diff artifact");
    let diff = std::fs::read_to_string(&diff.path).unwrap();
    assert!(
        diff.contains("+hello, world") && diff.contains("greeting.txt"),
        "{diff}"
    );

    // The model saw a prompt built from the step name and prompt summary.
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "one request per model turn");
    let first = requests[0].to_string();
    assert!(
        first.contains("fix the greeting") && first.contains("Create greeting.txt saying hello")
    );

    // Codex's event stream became lifecycle events.
    let events = read_lifecycle(&result.log_paths.lifecycle_log_path);
    let names = event_names(&events);
    for expected in [
        "codex.thread",
        "codex.command",
        "codex.message",
        "codex.usage",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "missing {expected}: {names:?}"
        );
    }
    let command = events
        .iter()
        .find(|e| e["event"] == "codex.command")
        .unwrap();
    assert_eq!(command["data"]["exitCode"], 0);
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains("\"turn.completed\""),
        "the raw JSON lines are logged"
    );
    assert_eq!(
        read_json(&result.log_paths.metadata_path)["plugin"]["name"],
        "codex"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_fails_when_the_model_fails() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::Status(500, "the model is down".into())]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Do anything"),
    )
    .await;

    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Failed,
        "{}",
        result.summary
    );
    assert!(
        result.summary.contains("codex turn failed"),
        "{}",
        result.summary
    );
    assert_eq!(result.state.exit_code, Some(1));
    assert!(!model.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_ends_blocked_when_it_needs_a_person() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::answer(
        "blocked",
        "the API token for the staging server is missing",
        true,
        json!([]),
    )]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Deploy to staging"),
    )
    .await;

    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Blocked,
        "{}",
        result.summary
    );
    assert!(result.blocked && result.needs_human && !result.ok);
    assert!(result.summary.contains("API token"), "{}", result.summary);
    assert_eq!(read_json(&result.log_paths.state_path)["status"], "blocked");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_codex_steps_share_one_codex_home_and_leave_it_its_owners() {
    // Two steps at once on two worktrees (two sandbox users on a root host)
    // with the one CODEX_HOME the operator granted: each writes its session
    // there as its own, neither is refused, and the home stays its owner's.
    let first = Sandbox::new();
    let second = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::answer("completed", "first done", false, json!([])),
        Reply::answer("completed", "second done", false, json!([])),
    ]);
    let runner = std::sync::Arc::new(codex_runner(&first, &model));
    let home = model.codex_home(first.dir.path());
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&home).unwrap().uid()
    };
    let steps: Vec<_> = [&first, &second]
        .into_iter()
        .map(|sandbox| {
            let mut request = codex_request(&first, &model, "say done");
            request.runtime.worktree_path = sandbox.repo.display().to_string();
            request.runtime.repo_root = sandbox.repo.display().to_string();
            request.runtime.runs_root_dir = Some(sandbox.runs.display().to_string());
            let runner = runner.clone();
            tokio::spawn(async move { runner.run(request, None).await.unwrap() })
        })
        .collect();
    for step in steps {
        let result = step.await.unwrap();
        assert_eq!(
            result.outcome,
            StepExecutionOutcome::Completed,
            "{}\n{:?}",
            result.summary,
            result.log_summary.stderr_tail
        );
    }
    // Codex recorded both sessions in the shared home; nothing there
    // belongs to a sandbox user.
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![home.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        assert_eq!(
            std::fs::metadata(&dir).unwrap().uid(),
            owner,
            "{}",
            dir.display()
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(meta.uid(), owner, "{}", path.display());
            if meta.is_dir() {
                stack.push(path);
            } else {
                files += 1;
            }
        }
    }
    assert!(files > 1, "codex wrote nothing to its home");
}

fn followups(result: &baa_runner::contracts::StepExecutionResult) -> String {
    result
        .suggested_followup
        .iter()
        .map(|f| format!("{} ({}): {}\n", f.step_name, f.step_kind, f.reason))
        .collect()
}

fn assert_blocked_for_a_person(result: &baa_runner::contracts::StepExecutionResult) {
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Blocked,
        "{}\n{:?}",
        result.summary,
        result.log_summary.stderr_tail
    );
    assert!(result.needs_human && result.blocked && !result.ok);
    assert!(!result.suggested_followup.is_empty());
}

/// The event `name` of a run, with its data.
fn event(result: &baa_runner::contracts::StepExecutionResult, name: &str) -> serde_json::Value {
    read_lifecycle(&result.log_paths.lifecycle_log_path)
        .into_iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_escalation_blocks_the_step_for_a_person() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::escalation("touch /etc/baa-escalated", "the fix needs /etc"),
        Reply::answer("completed", "done", false, json!([])),
    ]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Change the system config"),
    )
    .await;
    assert_blocked_for_a_person(&result);
    assert!(
        result.summary.contains("refused 1 command"),
        "{}",
        result.summary
    );
    assert!(
        followups(&result).contains("run or allow the commands codex refused"),
        "{}",
        followups(&result)
    );
    let refused = event(&result, "codex.escalation_rejected");
    assert!(refused["data"]["line"]
        .as_str()
        .unwrap()
        .contains("reject command"));
    assert!(!std::path::Path::new("/etc/baa-escalated").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_to_the_user_blocks_the_step() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::question("Which database should I use?"),
        Reply::answer("completed", "asked about the database", false, json!([])),
    ]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Add persistence"),
    )
    .await;
    assert_blocked_for_a_person(&result);
    assert!(
        followups(&result).contains("answer the model's question"),
        "{}",
        followups(&result)
    );
    assert!(event(&result, "codex.question")["data"]["line"]
        .as_str()
        .unwrap()
        .contains("request_user_input"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_codex_configuration_blocks_naming_the_setting() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::answer("completed", "x", false, json!([]))]);
    let request = codex_request(&sandbox, &model, "Do anything");
    let config = model.codex_home(sandbox.dir.path()).join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"responses\"", "\"chat\"")).unwrap();
    let result = run(&codex_runner(&sandbox, &model), request).await;
    assert_blocked_for_a_person(&result);
    assert!(
        result.summary.contains("CODEX_HOME/config.toml"),
        "{}",
        result.summary
    );
    assert!(followups(&result).contains("fix CODEX_HOME/config.toml"));
    assert!(model.requests().is_empty(), "the turn started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_api_key_blocks_naming_the_variable() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::answer("completed", "x", false, json!([]))]);
    let mut request = codex_request(&sandbox, &model, "Do anything");
    request
        .runtime
        .env
        .as_mut()
        .unwrap()
        .remove("BAA_CODEX_API_KEY");
    let result = run(&codex_runner(&sandbox, &model), request).await;
    assert_blocked_for_a_person(&result);
    assert!(
        result.summary.contains("BAA_CODEX_API_KEY"),
        "{}",
        result.summary
    );
    assert!(
        followups(&result).contains("runtime.env"),
        "{}",
        followups(&result)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ungranted_model_port_blocks_at_once_with_the_grant_to_add() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::answer("completed", "x", false, json!([]))]);
    let mut config = RunnerConfig::default();
    let mut grant = codex_grant(&sandbox, &model);
    grant.tcp_connect = vec![443];
    config.kinds.insert("codex".into(), grant);
    let runner = Runner::new(config).unwrap();
    let result = run(&runner, codex_request(&sandbox, &model, "Do anything")).await;
    assert_blocked_for_a_person(&result);
    let wanted = format!("tcp-connect = [{}]", model.port);
    assert!(
        followups(&result).contains(&wanted),
        "{}",
        followups(&result)
    );
    assert!(
        result.state.failure.is_none()
            || result.state.failure.as_ref().unwrap().reason
                != baa_runner::contracts::FailureReason::Timeout
    );
    assert!(model.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_command_is_visible_when_it_starts() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::command("sleep 1; echo slept"),
        Reply::answer("completed", "slept", false, json!([])),
    ]);
    let result = run(
        &codex_runner(&sandbox, &model),
        codex_request(&sandbox, &model, "Sleep a little"),
    )
    .await;
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Completed,
        "{}",
        result.summary
    );
    let started = event(&result, "codex.command.started");
    let ended = event(&result, "codex.command");
    assert!(started["seq"].as_u64() < ended["seq"].as_u64());
    assert!(started["message"].as_str().unwrap().contains("sleep 1"));
    assert!(
        result.summary.contains("1 command(s) run"),
        "{}",
        result.summary
    );
    // One log-tail checkpoint (the host's), and the thread's.
    let types: Vec<String> = result
        .checkpoint
        .records
        .iter()
        .map(|r| r.checkpoint_type.as_str().to_string())
        .collect();
    assert_eq!(
        types.iter().filter(|t| *t == "log-tail").count(),
        1,
        "{types:?}"
    );
    assert!(
        types
            .iter()
            .any(|t| t == "worker:codex-thread" || t == "codex-thread"),
        "{types:?}"
    );
}

/// Two attempts of a codex step, the second resuming from the first's
/// latest checkpoint (after codex's recorded sessions are removed, when
/// `forget`); the sandbox (its records), the model and the second result.
async fn resumed(
    forget: bool,
) -> (
    Sandbox,
    MockModel,
    baa_runner::contracts::StepExecutionResult,
) {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::answer("completed", "first attempt's answer", false, json!([])),
        Reply::answer("completed", "second attempt's answer", false, json!([])),
    ]);
    let runner = codex_runner(&sandbox, &model);
    let first = run(&runner, codex_request(&sandbox, &model, "Write the plan")).await;
    assert_eq!(
        first.outcome,
        StepExecutionOutcome::Completed,
        "{}",
        first.summary
    );
    if forget {
        // The recorded sessions are gone (another CODEX_HOME, say).
        let home = model.codex_home(sandbox.dir.path());
        for entry in std::fs::read_dir(&home).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() != "config.toml" {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    let mut again = codex_request(&sandbox, &model, "Write the plan");
    again.attempt = 2;
    again.checkpoint.as_mut().unwrap().resume_from_seq = Some(first.checkpoint.last_checkpoint_seq);
    let second = run(&runner, again).await;
    assert_eq!(
        second.outcome,
        StepExecutionOutcome::Completed,
        "{}",
        second.summary
    );
    (sandbox, model, second)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_attempt_continues_codexs_thread() {
    let (_sandbox, model, second) = resumed(false).await;
    assert_eq!(event(&second, "codex.resume")["data"]["continued"], true);
    // The model's second request carries the first turn: its own answer.
    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1]["input"]
            .to_string()
            .contains("first attempt's answer"),
        "{}",
        requests[1]["input"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_codex_home_or_a_plain_directory_blocks_naming_the_setting() {
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![Reply::answer("completed", "x", false, json!([]))]);
    let mut request = codex_request(&sandbox, &model, "Do anything");
    request.runtime.env.as_mut().unwrap().insert(
        "CODEX_HOME".into(),
        sandbox
            .dir
            .path()
            .join("codex-home/missing")
            .display()
            .to_string(),
    );
    let result = run(&codex_runner(&sandbox, &model), request).await;
    assert_blocked_for_a_person(&result);
    assert!(
        result.summary.contains("(CODEX_HOME)"),
        "{}",
        result.summary
    );
    assert!(
        followups(&result).contains("fix CODEX_HOME"),
        "{}",
        followups(&result)
    );

    // A worktree that is not a git repository.
    let plain = sandbox.dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let mut request = codex_request(&sandbox, &model, "Do anything");
    request.step_id = "plain".into();
    request.runtime.repo_root = plain.display().to_string();
    request.runtime.worktree_path = plain.display().to_string();
    request.checkpoint = None;
    let result = run(&codex_runner(&sandbox, &model), request).await;
    assert_blocked_for_a_person(&result);
    assert!(
        followups(&result).contains("runtime.worktreePath"),
        "{}\n{}",
        result.summary,
        followups(&result)
    );
    assert!(model.requests().is_empty(), "a turn started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_codex_does_not_know_starts_anew_with_the_summary() {
    let (_sandbox, model, second) = resumed(true).await;
    assert_eq!(event(&second, "codex.resume")["data"]["continued"], false);
    let requests = model.requests();
    assert!(requests[1]["input"]
        .to_string()
        .contains("An earlier attempt got this far"));
}

#[tokio::test(flavor = "multi_thread")]
async fn declined_commands_block_the_step_and_are_not_counted_as_run() {
    // With codex's automatic reviewer, a refused escalation shows up as a
    // `declined` command (the reviewer is the scripted model too).
    let sandbox = Sandbox::new();
    let model = MockModel::start(vec![
        Reply::escalation("touch /etc/baa-declined", "the fix needs /etc"),
        Reply::message(
            &json!({ "outcome": "deny", "rationale": "writes outside the workspace" }).to_string(),
        ),
        Reply::answer("completed", "could not change /etc", false, json!([])),
    ]);
    let request = codex_request(&sandbox, &model, "Change the system config");
    let config = model.codex_home(sandbox.dir.path()).join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "approval_policy = \"never\"",
            "approval_policy = \"on-request\"\napprovals_reviewer = \"auto_review\"",
        ),
    )
    .unwrap();
    let result = run(&codex_runner(&sandbox, &model), request).await;
    assert_blocked_for_a_person(&result);
    assert!(
        result.summary.contains("0 command(s) run, 1 declined"),
        "{}",
        result.summary
    );
    assert!(
        followups(&result).contains("run or allow the declined commands")
            && followups(&result).contains("touch /etc/baa-declined"),
        "{}",
        followups(&result)
    );
    assert!(!std::path::Path::new("/etc/baa-declined").exists());
}
