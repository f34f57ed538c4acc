//! The contract as published: the committed JSON Schema equals what the
//! Rust types generate, and the JSON the host emits (requests, and results
//! of completed, failed, prepared and interrupted steps) type-checks with
//! `tsc --strict` against the conductor's `contracts.ts` (vendored in
//! `tests/contracts/`, checked against `../shared/reference/` when that sits
//! beside the repository).

use std::path::{Path, PathBuf};

use baa_runner::contracts::{schema, StepExecutionOutcome};
use baa_runner::StepEventBody;
use baa_runner_tests::Sandbox;
use serde_json::Value;

use crate::{run, runner};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_committed_schema_is_what_the_types_generate() {
    let dir = repo_root().join("schema");
    for (name, generated) in schema::all() {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == schema::render(&generated),
            "{} differs from the Rust types: regenerate it with `cargo run -p baa-runner -- schema --write schema` and commit it",
            path.display()
        );
    }
    // The schema names what the contract requires.
    let (_, request) = &schema::all()[0];
    let required: Vec<&str> = request["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in ["taskId", "workerKind", "timeoutSec", "runtime"] {
        assert!(required.contains(&field), "{required:?}");
    }
}

/// `tsc` as `scripts/tools.sh` installed it (`BAA_TSC`, set by scripts/test.sh).
fn tsc() -> PathBuf {
    let tsc = std::env::var_os("BAA_TSC").map(PathBuf::from).expect(
        "BAA_TSC is not set: run the tests with scripts/test.sh (it installs TypeScript from npm)",
    );
    assert!(tsc.is_file(), "{} is missing", tsc.display());
    tsc
}

/// Type-check `values` (TypeScript type name, JSON) in `dir`; the output of
/// `tsc` when it fails.
fn type_check(dir: &Path, values: &[(&str, Value)]) -> Result<(), String> {
    let contracts = repo_root().join("tests/contracts/contracts.ts");
    std::fs::create_dir_all(dir).unwrap();
    let mut source = String::from(
        "import type { StepExecutionRequest, StepExecutionResult } from \"contracts\";\n",
    );
    for (i, (ty, value)) in values.iter().enumerate() {
        source.push_str(&format!(
            "export const value{i}: {ty} = {};\n",
            serde_json::to_string_pretty(value).unwrap()
        ));
    }
    std::fs::write(dir.join("check.ts"), source).unwrap();
    let tsconfig = serde_json::json!({
        "compilerOptions": {
            "strict": true,
            "exactOptionalPropertyTypes": true,
            "noEmit": true,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "types": [],
            "paths": { "contracts": [contracts.canonicalize().unwrap()] },
        },
        "files": [
            dir.join("check.ts"),
            repo_root().join("tests/contracts/baa-conductor.d.ts"),
        ],
    });
    std::fs::write(dir.join("tsconfig.json"), tsconfig.to_string()).unwrap();
    let out = std::process::Command::new(tsc())
        .arg("-p")
        .arg(dir.join("tsconfig.json"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The vendored contract is the conductor's: where `../shared` sits beside
/// the repository (CI), its `reference/contracts.ts` is the same file.
#[test]
fn the_vendored_contract_matches_the_shared_reference() {
    let shared = repo_root().join("../shared/reference/contracts.ts");
    let Ok(reference) = std::fs::read_to_string(&shared) else {
        eprintln!(
            "SKIPPED the contract drift check: {} is not beside this checkout",
            shared.display()
        );
        return;
    };
    let vendored =
        std::fs::read_to_string(repo_root().join("tests/contracts/contracts.ts")).unwrap();
    assert!(
        vendored == reference,
        "tests/contracts/contracts.ts differs from {}: copy the reference over it and fix what the type check then reports",
        shared.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emitted_json_satisfies_the_typescript_contract() {
    let sandbox = Sandbox::new();
    let runner = runner();
    let mut values: Vec<(&str, Value)> = Vec::new();
    let mut request = |step: &str, kind: &str, command: &str| {
        let mut json = sandbox.request_json(kind, command);
        json["stepId"] = step.into();
        json["promptSummary"] = "check the contract".into();
        json["checkpoint"] = serde_json::json!({
            "mode": "capture", "summaryHint": "contract", "includeGitDiffStat": true, "logTailLines": 5
        });
        values.push(("StepExecutionRequest", json.clone()));
        serde_json::from_value::<baa_runner::contracts::StepExecutionRequest>(json).unwrap()
    };
    let completed = request("completed", "shell", "echo hello; echo more >> README.md");
    let failed = request("failed", "shell", "echo oops >&2; exit 3");
    let git = request("git", "git", "status\ndiff");
    let prepared = request("prepared", "shell", "true");
    let cancelled = request("cancelled", "shell", "echo going; sleep 30");

    let mut results = Vec::new();
    for request in [completed, failed, git] {
        results.push(run(&runner, request).await);
    }
    results.push(
        runner
            .finish_prepared(runner.prepare(prepared, None).unwrap())
            .unwrap(),
    );
    let mut handle = runner.start(cancelled).unwrap();
    while let Some(event) = handle.events().next().await {
        if matches!(event.body, StepEventBody::Output { .. }) {
            handle.cancel();
        }
    }
    results.push(handle.result().await.unwrap());
    let outcomes: Vec<StepExecutionOutcome> = results.iter().map(|r| r.outcome).collect();
    use StepExecutionOutcome::*;
    assert_eq!(outcomes, [Completed, Failed, Completed, Prepared, Failed]);
    values.extend(
        results
            .iter()
            .map(|r| ("StepExecutionResult", serde_json::to_value(r).unwrap())),
    );

    let dir = sandbox.dir.path().join("ts");
    if let Err(errors) = type_check(&dir, &values) {
        panic!("the emitted JSON does not satisfy contracts.ts:\n{errors}");
    }

    // The check can fail: a result with an outcome the contract does not
    // know, and one without a required field, are refused.
    let mut bad_outcome = values.last().unwrap().1.clone();
    bad_outcome["outcome"] = "exploded".into();
    let mut missing = values.last().unwrap().1.clone();
    missing.as_object_mut().unwrap().remove("metrics");
    for (name, bad) in [("exploded", bad_outcome), ("metrics", missing)] {
        let errors = type_check(&dir, &[("StepExecutionResult", bad)])
            .expect_err("tsc refuses a result that breaks the contract");
        assert!(errors.contains(name), "{errors}");
    }
}

/// Every event the host writes has a name and data of `HostEvent`
/// (`host-event.schema.json`): steps that queue, resume, get denied, run
/// subprocesses, capture and fail checkpoints and stop leftovers.
#[tokio::test(flavor = "multi_thread")]
async fn every_host_event_written_is_a_typed_host_event() {
    use baa_runner::contracts::{EventSource, HostEvent, WorkerLifecycleLogEntry};
    let sandbox = Sandbox::new();
    let (runner, _) = crate::probe_runner(&sandbox, crate::grant_all());
    let mut names = std::collections::BTreeSet::new();
    let capture = serde_json::json!({ "mode": "capture", "logTailLines": 5 });
    let mut results = Vec::new();
    for (step, kind, command) in [
        (
            "shell",
            "shell",
            "echo hi; echo more >> README.md; (sleep 30 &)",
        ),
        ("denied", "probe", "spawn cat /etc/passwd"),
        (
            "artifact",
            "probe",
            "artifact notes.txt hello\ncheckpoint custom one",
        ),
    ] {
        let mut json = sandbox.request_json(kind, command);
        json["stepId"] = step.into();
        json["checkpoint"] = capture.clone();
        let request = serde_json::from_value(json).unwrap();
        results.push(run(&runner, request).await);
    }
    for result in &results {
        for line in baa_runner_tests::read_lifecycle(&result.log_paths.lifecycle_log_path) {
            let entry: WorkerLifecycleLogEntry = serde_json::from_value(line).unwrap();
            if entry.source != EventSource::Host {
                continue;
            }
            let typed = serde_json::json!({ "event": entry.event, "data": entry.data });
            let parsed: Result<HostEvent, _> = serde_json::from_value(typed.clone());
            assert!(parsed.is_ok(), "not a HostEvent: {typed} ({parsed:?})");
            names.insert(entry.event.clone());
        }
    }
    for name in [
        "run.prepared",
        "step.started",
        "plugin.loaded",
        "subprocess.started",
        "subprocess.exited",
        "subprocess.denied",
        "checkpoint.captured",
        "artifact.declared",
        "step.finished",
    ] {
        assert!(names.contains(name), "no {name} among {names:?}");
    }
}
