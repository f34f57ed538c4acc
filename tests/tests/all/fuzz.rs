//! Property tests over what arrives from outside: request bodies and plugin
//! files. Whatever the bytes, the host answers with an error, never a panic.

use baa_runner::contracts::parse_request;
use baa_runner_tests::Sandbox;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_request_parser(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes);
    }

    #[test]
    fn mutated_requests_parse_or_name_a_field(position in 0usize..10_000, byte in any::<u8>(), cut in 0usize..10_000) {
        let mut bytes = serde_json::to_vec(&serde_json::json!({
            "taskId": "task-1", "stepId": "step-1", "runId": "run-1", "attempt": 1,
            "stepName": "fuzzed", "stepKind": "shell", "workerKind": "shell", "timeoutSec": 30,
            "runtime": { "repoRoot": "/tmp/repo", "worktreePath": "/tmp/repo", "env": { "A": "b" } },
            "command": "echo hi",
            "checkpoint": { "mode": "capture", "resumeFromSeq": 2, "logTailLines": 10 },
        }))
        .unwrap();
        let at = position % bytes.len();
        bytes[at] = byte;
        bytes.truncate(bytes.len() - cut % bytes.len());
        match parse_request(&bytes) {
            // A mutation that still parses is a valid request.
            Ok(_) => {}
            Err(baa_runner::Error::InvalidRequest { field, message }) => {
                prop_assert!(!field.is_empty() && !message.is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }
}

#[test]
fn arbitrary_plugin_files_are_refused_without_a_panic() {
    let sandbox = Sandbox::new();
    let dir = sandbox.dir.path().join("fuzzed");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fuzzed.wasm");
    std::fs::write(&file, b"").unwrap();
    let mut config = baa_runner::RunnerConfig::default();
    config.plugin_dirs.push(dir);
    let runner = baa_runner::Runner::new(config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = std::fs::read(baa_runner_tests::fixtures::PROBE_WASM).unwrap();
    let mut runner_proptest = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..512),
        any::<bool>(),
        0usize..1_000_000,
    );
    runner_proptest
        .run(&strategy, |(noise, splice, at)| {
            // Either pure noise, or a real component with noise spliced in.
            let bytes = if splice {
                let mut bytes = probe.clone();
                let at = at % bytes.len();
                let end = (at + noise.len()).min(bytes.len());
                bytes[at..end].copy_from_slice(&noise[..end - at]);
                bytes
            } else {
                noise
            };
            std::fs::write(&file, &bytes).unwrap();
            let kinds = rt.block_on(runner.list_kinds());
            let fuzzed = kinds.iter().find(|k| k.name == "fuzzed").unwrap();
            // Noise is refused; a spliced probe that still loads describes
            // itself as `probe`, which is refused too: never a silent success.
            prop_assert!(fuzzed.error.is_some(), "{fuzzed:?}");
            Ok(())
        })
        .unwrap();
}
