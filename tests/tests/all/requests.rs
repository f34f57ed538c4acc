//! Bad requests get clear errors naming the field, and leave no run directory.

use baa_runner::contracts::StepExecutionRequest;
use baa_runner::Error;
use baa_runner_tests::Sandbox;

use crate::runner;

fn expect_invalid(sandbox: &Sandbox, request: StepExecutionRequest, field: &str) {
    let err = match runner().prepare(request, None) {
        Ok(_) => panic!("`{field}` should be refused"),
        Err(e) => e,
    };
    match &err {
        Error::InvalidRequest { field: f, .. } => assert_eq!(f, field, "{err}"),
        other => panic!("expected an invalid-request error for `{field}`, got {other}"),
    }
    assert!(err.to_string().contains(field));
    // Nothing half-written.
    let leftovers: Vec<_> = walk(&sandbox.runs)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(
        leftovers.is_empty(),
        "{field}: files written: {leftovers:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn ids_that_escape_the_runs_directory_are_refused() {
    let sandbox = Sandbox::new();
    for (field, value) in [
        ("taskId", "../../etc"),
        ("stepId", ".."),
        ("runId", "a/b"),
        ("taskId", ""),
        ("runId", ".hidden"),
    ] {
        let mut json = sandbox.request_json("shell", "true");
        json[field] = value.into();
        let request: StepExecutionRequest = serde_json::from_value(json).unwrap();
        expect_invalid(&sandbox, request, field);
    }
}

#[test]
fn malformed_fields_name_the_field() {
    let sandbox = Sandbox::new();
    let mut request = sandbox.request("shell", "true");
    request.timeout_sec = 0.0;
    expect_invalid(&sandbox, request, "timeoutSec");

    let mut request = sandbox.request("shell", "true");
    request.attempt = 0;
    expect_invalid(&sandbox, request, "attempt");

    let mut request = sandbox.request("shell", "true");
    request.runtime.worktree_path = "relative/path".into();
    expect_invalid(&sandbox, request, "runtime.worktreePath");

    let mut request = sandbox.request("shell", "true");
    request.runtime.worktree_path = sandbox.dir.path().join("missing").display().to_string();
    expect_invalid(&sandbox, request, "runtime.worktreePath");

    let mut request = sandbox.request("shell", "true");
    request.runtime.env = Some([("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())].into());
    expect_invalid(&sandbox, request, "runtime.env.LD_PRELOAD");

    let mut request = sandbox.request("shell", "true");
    request.runtime.runs_root_dir = Some(sandbox.repo.join(".runs").display().to_string());
    expect_invalid(&sandbox, request, "runtime.runsRootDir");
}

#[test]
fn json_errors_name_the_field() {
    let sandbox = Sandbox::new();
    let mut json = sandbox.request_json("shell", "true");
    json.as_object_mut().unwrap().remove("taskId");
    let err = serde_json::from_value::<StepExecutionRequest>(json).unwrap_err();
    assert!(err.to_string().contains("taskId"), "{err}");

    let mut json = sandbox.request_json("shell", "true");
    json["workerKind"] = "Not A Kind".into();
    let err = serde_json::from_value::<StepExecutionRequest>(json).unwrap_err();
    assert!(err.to_string().contains("not a worker kind name"), "{err}");

    let mut json = sandbox.request_json("shell", "true");
    json["checkpoint"]["mode"] = "sometimes".into();
    let err = serde_json::from_value::<StepExecutionRequest>(json).unwrap_err();
    assert!(err.to_string().contains("sometimes"), "{err}");
}

#[test]
fn a_second_prepare_of_the_same_attempt_is_refused_and_keeps_the_first() {
    let sandbox = Sandbox::new();
    let runner = runner();
    let first = runner
        .prepare(sandbox.request("shell", "true"), None)
        .unwrap();
    let metadata_before = std::fs::read(&first.log_paths.metadata_path).unwrap();
    let err = runner
        .prepare(sandbox.request("shell", "true"), None)
        .err()
        .expect("refused");
    assert!(
        matches!(&err, Error::InvalidRequest { field, .. } if field == "attempt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&first.log_paths.metadata_path).unwrap(),
        metadata_before
    );
}

#[test]
fn prepare_alone_yields_outcome_prepared() {
    let sandbox = Sandbox::new();
    let runner = runner();
    let prepared = runner
        .prepare(sandbox.request("shell", "true"), None)
        .unwrap();
    let result = runner.finish_prepared(prepared).unwrap();
    assert_eq!(
        result.outcome,
        baa_runner::contracts::StepExecutionOutcome::Prepared
    );
    assert!(result.ok, "preparing succeeded");
    let state = baa_runner_tests::read_json(&result.log_paths.state_path);
    assert_eq!(state["status"], "prepared");
    assert!(std::path::Path::new(&result.log_paths.lifecycle_log_path).exists());
    assert!(std::path::Path::new(&result.log_paths.result_path).exists());
}

#[test]
fn bad_bodies_are_refused_with_the_field_named() {
    use baa_runner::contracts::{parse_request, MAX_REQUEST_BYTES};
    let sandbox = Sandbox::new();
    let valid = serde_json::to_vec(&sandbox.request_json("shell", "true")).unwrap();
    assert!(parse_request(&valid).is_ok());

    let field_of = |bytes: &[u8]| match parse_request(bytes) {
        Err(Error::InvalidRequest { field, message }) => (field, message),
        other => panic!("expected an invalid request, got {other:?}"),
    };
    assert_eq!(field_of(b"hello").0, "(request)");
    // A truncated body names where it ends.
    let (_, message) = field_of(&valid[..valid.len() / 2]);
    assert!(message.contains("EOF"), "{message}");
    let (_, message) = field_of(&[valid.as_slice(), b" {}"].concat());
    assert!(message.contains("trailing"), "{message}");

    let mut unknown = sandbox.request_json("shell", "true");
    unknown["runtime"]["bogus"] = 1.into();
    let (field, message) = field_of(&serde_json::to_vec(&unknown).unwrap());
    assert!(field.starts_with("runtime"), "{field}");
    assert!(message.contains("bogus"), "{message}");

    let mut wrong = sandbox.request_json("shell", "true");
    wrong["runtime"]["worktreePath"] = 5.into();
    assert_eq!(
        field_of(&serde_json::to_vec(&wrong).unwrap()).0,
        "runtime.worktreePath"
    );

    let mut wrong = sandbox.request_json("shell", "true");
    wrong["attempt"] = (-1).into();
    assert_eq!(field_of(&serde_json::to_vec(&wrong).unwrap()).0, "attempt");

    let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
    let (_, message) = field_of(&huge);
    assert!(message.contains("limit"), "{message}");
}

#[test]
fn absurd_timeouts_ids_and_paths_are_refused() {
    let sandbox = Sandbox::new();
    for timeout in [0.0, -1.0, 1e300, f64::MIN_POSITIVE * 0.0] {
        let mut request = sandbox.request("shell", "true");
        request.timeout_sec = timeout;
        expect_invalid(&sandbox, request, "timeoutSec");
    }
    for id in ["a\0b", "a/b", "..", "x".repeat(300).as_str()] {
        let mut json = sandbox.request_json("shell", "true");
        json["stepId"] = id.into();
        let request: StepExecutionRequest = serde_json::from_value(json).unwrap();
        expect_invalid(&sandbox, request, "stepId");
    }
    let mut request = sandbox.request("shell", "true");
    request.runtime.runs_root_dir = Some(request.runtime.worktree_path.clone());
    expect_invalid(&sandbox, request, "runtime.runsRootDir");
    let mut request = sandbox.request("shell", "true");
    request.runtime.repo_root = "/nonexistent/repo".into();
    expect_invalid(&sandbox, request, "runtime.repoRoot");
}

#[test]
fn missing_required_fields_are_all_named() {
    use baa_runner::contracts::parse_request;
    let sandbox = Sandbox::new();
    let invalid = |json: serde_json::Value| match parse_request(json.to_string().as_bytes()) {
        Err(Error::InvalidRequest { field, message }) => (field, message),
        other => panic!("expected an invalid request, got {other:?}"),
    };
    let required = [
        "taskId",
        "stepId",
        "runId",
        "attempt",
        "stepName",
        "stepKind",
        "workerKind",
        "timeoutSec",
        "runtime",
    ];

    // An empty object names all of them, the first as the field.
    let (field, message) = invalid(serde_json::json!({}));
    assert_eq!(field, "taskId");
    assert_eq!(
        message,
        format!(
            "missing required fields: {} (see `baa-runner schema --kind request`, or schema/step-execution-request.schema.json)",
            required.join(", ")
        )
    );

    // Two missing: both named, in schema order.
    let mut json = sandbox.request_json("shell", "true");
    let object = json.as_object_mut().unwrap();
    object.remove("timeoutSec");
    object.remove("stepId");
    let (field, message) = invalid(json);
    assert_eq!(field, "stepId");
    assert!(
        message.starts_with("missing required fields: stepId, timeoutSec ("),
        "{message}"
    );

    // Nested: the dotted path, alone or after missing top-level fields.
    let mut json = sandbox.request_json("shell", "true");
    json["checkpoint"] = serde_json::json!({ "summaryHint": "x" });
    let (field, message) = invalid(json.clone());
    assert_eq!(field, "checkpoint.mode");
    assert!(
        message.starts_with("missing required field: checkpoint.mode ("),
        "{message}"
    );
    json["runtime"].as_object_mut().unwrap().remove("repoRoot");
    json.as_object_mut().unwrap().remove("attempt");
    let (field, message) = invalid(json);
    assert_eq!(field, "attempt");
    assert!(
        message.starts_with("missing required fields: attempt, "),
        "{message}"
    );
    for nested in ["checkpoint.mode", "runtime.repoRoot"] {
        assert!(message.contains(nested), "{message}");
    }
    assert!(!message.contains("worktreePath"), "{message}");

    // A body that stops being JSON after the gap still names the field.
    let (field, _) = match parse_request(br#"{"checkpoint": {}"#) {
        Err(Error::InvalidRequest { field, message }) => (field, message),
        other => panic!("expected an invalid request, got {other:?}"),
    };
    assert_eq!(field, "checkpoint.mode");
}

/// A link planted in the runs root (by anyone who can write it) does not
/// turn the attempt's directories into directories elsewhere: preparing
/// is refused and nothing appears where the link points.
#[test]
fn a_link_planted_in_the_runs_root_makes_nothing_elsewhere() {
    let sandbox = Sandbox::new();
    let runner = runner();
    let elsewhere = sandbox.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&sandbox.runs).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sandbox.runs.join("task-1")).unwrap();
    let err = runner
        .prepare(sandbox.request("shell", "true"), None)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("step-1"), "{err}");
    assert!(walk(&elsewhere).is_empty(), "{:?}", walk(&elsewhere));
    // Without the link the same request prepares.
    std::fs::remove_file(sandbox.runs.join("task-1")).unwrap();
    runner
        .prepare(sandbox.request("shell", "true"), None)
        .unwrap();
}
