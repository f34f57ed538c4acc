//! The cluster under failure: three worker processes, 200 steps of mixed
//! kinds and durations; one worker SIGKILLed mid-run, one SIGSTOPped for
//! longer than the ack wait and then resumed, and the NATS server (file
//! storage) restarted once. Every step must have exactly one answer, none
//! lost; the killed host's steps resume from their last replicated
//! checkpoint; the paused host's late results are refused; no step's
//! process is left behind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baa_runner::cluster::{Answer, Cluster, Reply, RunEnd};
use baa_runner::contracts::StepExecutionRequest;
use baa_runner_tests::nats::{NatsServer, WorkerProcess};
use baa_runner_tests::{processes_in, processes_with, Sandbox};
use serde_json::Value;

use crate::{built_binary, probe_config_file};

const STEPS: usize = 200;

fn step(sandbox: &Sandbox, i: usize, marker: &str) -> StepExecutionRequest {
    let (kind, command) = match i % 4 {
        0 => ("shell", format!(": {marker}; echo step {i}")),
        1 => ("shell", format!(": {marker}; sleep 0.{}; echo step {i}", i % 7)),
        2 => ("git", "status".to_owned()),
        _ => (
            "probe",
            format!("checkpoint summary begun-{i}\nsh : {marker}; sleep 1.5\ncheckpoint summary ended-{i}"),
        ),
    };
    let mut json = sandbox.request_json(kind, &command);
    json["stepId"] = format!("chaos-{i}").into();
    serde_json::from_value(json).unwrap()
}

/// Wait until `host` holds an unanswered step with a replicated checkpoint.
async fn holding_a_checkpoint(cluster: &Cluster, sandbox: &Sandbox, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for i in (3..STEPS).step_by(4) {
            let key = baa_runner::cluster::StepIdentity::of(&step(sandbox, i, "")).key();
            let Ok(Some(record)) = cluster.connection().records.get(&key).await else {
                continue;
            };
            let record: Value = serde_json::from_slice(&record).unwrap();
            let held = record["owner"] == host && record.get("reply").is_none();
            if held
                && record["checkpoints"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{host} never held a checkpointed step"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_step_is_answered_once_through_a_killed_host_a_paused_host_and_a_server_restart() {
    let sandbox = Sandbox::new();
    let mut server = NatsServer::start(&sandbox.dir.path().join("js"));
    let url = server.url();
    let probe = std::fs::read_to_string(probe_config_file(&sandbox)).unwrap();
    let config = sandbox.dir.path().join("chaos.toml");
    std::fs::write(
        &config,
        format!(
            "repo-roots = [{:?}]\n{probe}\n[concurrency]\nmax-steps = 8\n[cluster]\nack-wait-sec = 2\nruns-dir = {:?}\n",
            sandbox.repo.display().to_string(),
            sandbox.runs.join("cluster").display().to_string()
        ),
    )
    .unwrap();
    let binary = built_binary("baa-runner");
    let mut killed = WorkerProcess::start(&binary, &url, "killed", &config, &[]);
    let paused = WorkerProcess::start(&binary, &url, "paused", &config, &[]);
    let _steady = WorkerProcess::start(&binary, &url, "steady", &config, &[]);

    let cluster = Cluster::connect(&url).await.unwrap();
    let mut feed = cluster.answers().await.unwrap();
    let marker = format!("chaos-{}", std::process::id());
    for i in 0..STEPS {
        assert!(!cluster.submit(&step(&sandbox, i, &marker)).await.unwrap());
    }

    let mut answers: BTreeMap<String, Answer> = BTreeMap::new();
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut resume = None;
    while answers.len() < STEPS {
        assert!(Instant::now() < deadline, "only {} answers", answers.len());
        let (key, answer) = tokio::time::timeout(Duration::from_secs(120), feed.next())
            .await
            .expect("answers keep coming")
            .unwrap();
        deliveries += 1;
        assert!(
            answers.insert(key.clone(), answer).is_none(),
            "a second answer for {key}"
        );
        match answers.len() {
            30 => {
                // Killed while it holds a step with a replicated checkpoint.
                holding_a_checkpoint(&cluster, &sandbox, "killed").await;
                killed.child.kill().unwrap();
                killed.child.wait().unwrap();
            }
            60 => {
                // Paused for four ack waits, then back.
                paused.signal(libc::SIGSTOP);
                let pid = paused.pid();
                resume = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(8)).await;
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }));
            }
            120 => server.restart(),
            _ => {}
        }
    }
    resume.expect("paused").await.unwrap();
    assert_eq!(deliveries, STEPS);

    let mut taken_over = 0;
    let mut resumed = 0;
    for (key, answer) in &answers {
        let Reply::Result(result) = &answer.reply else {
            panic!("{key} has no result: {:?}", answer.reply);
        };
        assert!(result.ok, "{key}: {}", result.summary);
        let last = answer.runs.last().unwrap();
        assert_eq!(last.end, Some(RunEnd::Finished), "{key}: {:?}", answer.runs);
        for earlier in &answer.runs[..answer.runs.len() - 1] {
            assert!(
                matches!(
                    earlier.end,
                    Some(RunEnd::TakenOver | RunEnd::Released | RunEnd::Superseded)
                ),
                "{key}: {:?}",
                answer.runs
            );
            taken_over += 1;
        }
        // A step taken over after its first checkpoint resumed from it.
        let record = cluster
            .connection()
            .records
            .get(key)
            .await
            .unwrap()
            .unwrap();
        let record: Value = serde_json::from_slice(&record).unwrap();
        let inherited: Vec<u64> = record["checkpoints"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .filter(|c| c["host"] != last.host.as_str() || c["delivery"] != last.delivery)
            .map(|c| c["seq"].as_u64().unwrap())
            .collect();
        if let Some(seq) = inherited.last() {
            assert_eq!(
                result.checkpoint.manager.resumed_from_seq,
                Some(*seq as u32),
                "{key}"
            );
            resumed += 1;
        }
    }
    assert!(
        taken_over > 0,
        "the killed and paused hosts' steps moved to other hosts"
    );
    eprintln!(
        "{taken_over} turns taken over, {resumed} steps resumed from a replicated checkpoint"
    );

    // Exactly one answer per step in the stream, after everything settles.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut results = cluster.connection().results.clone();
    assert_eq!(results.info().await.unwrap().state.messages, STEPS as u64);
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    // Nor any process at all working in this test's repository or runs.
    let left = processes_in(sandbox.dir.path());
    assert!(left.is_empty(), "{left:?}");
}
