//! The cluster through a real `nats-server -js` and real `baa-runner
//! worker` processes: every step answered exactly once, duplicates dropped,
//! bad requests answered naming their field, an unserved kind waiting
//! until a host serves it, cancellation reaching the host, and a stalled
//! host's step taken over while its late result is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baa_runner::cluster::{Answer, Cluster, Reply, RunEnd, StepIdentity};
use baa_runner::contracts::StepExecutionRequest;
use baa_runner_tests::nats::{NatsServer, WorkerProcess};
use baa_runner_tests::{processes_in, processes_with, Reaped, Sandbox};
use serde_json::Value;

use crate::{assert_exit, built_binary, cli, probe_config_file};

/// A worker config: `[cluster]` with `ack_wait` seconds, plus `extra`.
fn worker_config(sandbox: &Sandbox, name: &str, ack_wait: u64, extra: &str) -> PathBuf {
    let path = sandbox.dir.path().join(format!("{name}.toml"));
    let roots = format!("repo-roots = [{:?}]\n", sandbox.repo.display().to_string());
    let runs = sandbox.runs.join("cluster").display().to_string();
    std::fs::write(
        &path,
        format!("{roots}{extra}\n[cluster]\nack-wait-sec = {ack_wait}\nruns-dir = {runs:?}\n"),
    )
    .unwrap();
    path
}

/// A worker config whose queue delivers each step once, waiting 1 s.
fn one_delivery_config(sandbox: &Sandbox, name: &str) -> PathBuf {
    let config = worker_config(sandbox, name, 1, "");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("max-deliver = 1\n");
    std::fs::write(&config, toml).unwrap();
    config
}

fn request(sandbox: &Sandbox, step: &str, command: &str) -> StepExecutionRequest {
    let mut json = sandbox.request_json("shell", command);
    json["stepId"] = step.into();
    serde_json::from_value(json).unwrap()
}

/// Each host that took a step, and how its turn ended.
fn turns(answer: &Answer) -> Vec<(&str, Option<RunEnd>)> {
    answer
        .runs
        .iter()
        .map(|r| (r.host.as_str(), r.end))
        .collect()
}

fn result_of(answer: &Answer) -> &baa_runner::contracts::StepExecutionResult {
    match &answer.reply {
        Reply::Result(result) => result,
        Reply::Error(e) => panic!("no result: {e:?}"),
    }
}

/// Messages in the steps queue (waiting or running).
async fn queued(cluster: &Cluster) -> u64 {
    let mut steps = cluster.connection().steps.clone();
    steps.info().await.unwrap().state.messages
}

async fn answers_in_stream(cluster: &Cluster) -> u64 {
    let mut results = cluster.connection().results.clone();
    results.info().await.unwrap().state.messages
}

/// Poll `check` for up to 60 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_answer_every_step_once_drop_duplicates_and_cancel_where_it_runs() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = worker_config(&sandbox, "workers", 5, "");
    let binary = built_binary("baa-runner");
    let _a = WorkerProcess::start(&binary, &server.url(), "host-a", &config, &[]);
    let _b = WorkerProcess::start(&binary, &server.url(), "host-b", &config, &[]);
    let cluster = Cluster::connect(&server.url()).await.unwrap();

    let mut steps = Vec::new();
    for i in 0..24 {
        let command = match i % 3 {
            0 => format!("echo step {i}"),
            1 => format!("sleep 0.{i}; echo step {i}"),
            _ => format!("echo step {i} >&2; exit {}", i % 2),
        };
        let step = cluster
            .start(&request(&sandbox, &format!("s{i}"), &command))
            .await
            .unwrap();
        assert!(!step.duplicate());
        steps.push(step);
    }
    // Live events reach the submitter from whichever host runs the step.
    let mut first = steps.remove(0);
    let mut seen = Vec::new();
    while let Some(event) = first.next_event().await.unwrap() {
        assert!(["host-a", "host-b"].contains(&event.host.as_str()));
        seen.push(event.event.seq);
    }
    assert!(
        seen.len() >= 3 && seen.windows(2).all(|w| w[0] < w[1]),
        "{seen:?}"
    );
    let mut answers = vec![first.answer().await.unwrap()];
    for step in steps {
        answers.push(step.answer().await.unwrap());
    }
    for (i, answer) in answers.iter().enumerate() {
        let result = result_of(answer);
        assert_eq!(result.step_id, format!("s{i}"));
        assert_eq!(
            result.ok,
            i % 3 != 2 || i % 2 == 0,
            "step {i}: {}",
            result.summary
        );
        assert_eq!(answer.runs.len(), 1, "{:?}", answer.runs);
        assert_eq!(answer.runs[0].end, Some(RunEnd::Finished));
        let run_dir = answer.runs[0].run_dir.as_deref().unwrap();
        assert_eq!(run_dir, result.log_paths.run_dir);
        assert!(Path::new(run_dir).join("result.json").is_file());
    }
    assert_eq!(answers_in_stream(&cluster).await, 24);

    // The same step again is not queued twice: it gets the first answer.
    let again = cluster
        .start(&request(&sandbox, "s0", "echo step 0"))
        .await
        .unwrap();
    assert!(again.duplicate());
    assert_eq!(again.answer().await.unwrap(), answers[0]);
    assert_eq!(answers_in_stream(&cluster).await, 24);

    // Ctrl-C on `submit` cancels the step on the host that runs it.
    let marker = format!("41.{}", std::process::id());
    let file = sandbox.dir.path().join("slow.json");
    let slow = request(&sandbox, "slow", &format!("echo working; sleep {marker}"));
    std::fs::write(&file, serde_json::to_vec(&slow).unwrap()).unwrap();
    let submit = cli()
        .args(["submit", "--nats", &server.url(), "--json", "--watch"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until("the slow step runs", async || {
        !processes_with(&marker).is_empty()
    })
    .await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(submit.id() as i32, libc::SIGINT) };
    let out = submit.wait_with_output().unwrap();
    assert_exit(&out, 130);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["state"]["failure"]["reason"], "interrupted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("working"));
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    assert_eq!(answers_in_stream(&cluster).await, 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_request_is_answered_naming_its_field_and_an_unserved_kind_waits_for_a_host() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = worker_config(&sandbox, "shell-only", 5, "");
    let binary = built_binary("baa-runner");
    let _shell = WorkerProcess::start(
        &binary,
        &server.url(),
        "shell-host",
        &config,
        &["--kind", "shell"],
    );

    // A request whose worktree does not exist on the host: the host
    // answers with the error `run` gives, naming the field.
    let mut bad = sandbox.request_json("shell", "true");
    bad["runtime"]["worktreePath"] = "/nonexistent/worktree".into();
    let file = sandbox.dir.path().join("bad.json");
    std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
    let submitted = cli()
        .args(["submit", "--nats", &server.url()])
        .arg(&file)
        .output()
        .unwrap();
    let ran = cli().arg("run").arg(&file).output().unwrap();
    assert_exit(&submitted, 3);
    assert_exit(&ran, 3);
    let said = String::from_utf8_lossy(&submitted.stderr);
    assert!(said.contains("`runtime.worktreePath`"), "{said}");
    let error_line = |text: &str| {
        text.lines()
            .find(|l| l.contains("error:"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(
        error_line(&said),
        error_line(&String::from_utf8_lossy(&ran.stderr))
    );

    // A malformed request (another step) is refused as by `run`.
    bad["stepId"] = "malformed".into();
    bad["timeoutSec"] = (-1).into();
    std::fs::write(&file, serde_json::to_vec(&bad).unwrap()).unwrap();
    let submitted = cli()
        .args(["submit", "--nats", &server.url()])
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&submitted, 3);
    assert!(String::from_utf8_lossy(&submitted.stderr).contains("`timeoutSec`"));

    // A host whose runs directory overlaps a repository root refuses to
    // start: a step could reach other steps' records.
    let overlapping = sandbox.dir.path().join("overlap.toml");
    let root = sandbox.dir.path().display().to_string();
    let runs = sandbox.runs.display().to_string();
    std::fs::write(
        &overlapping,
        format!("repo-roots = [{root:?}]\n[cluster]\nruns-dir = {runs:?}\n"),
    )
    .unwrap();
    let refused = cli()
        .arg("--config")
        .arg(&overlapping)
        .args(["worker", "--nats", &server.url()])
        .output()
        .unwrap();
    assert_exit(&refused, 3);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("overlap"));

    // Whoever can publish to the queue names a step's paths: a host lets
    // steps use only repositories under its `repo-roots`.
    let elsewhere = Sandbox::new();
    let mut outside = elsewhere.request_json("shell", "touch owned");
    outside["stepId"] = "outside".into();
    std::fs::write(&file, serde_json::to_vec(&outside).unwrap()).unwrap();
    let submitted = cli()
        .args(["submit", "--nats", &server.url()])
        .arg(&file)
        .output()
        .unwrap();
    assert_exit(&submitted, 3);
    let said = String::from_utf8_lossy(&submitted.stderr);
    assert!(
        said.contains("`runtime.repoRoot`") && said.contains("repo-roots"),
        "{said}"
    );
    assert!(!elsewhere.repo.join("owned").exists());

    // A message on one kind's queue runs as that kind or not at all.
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    let mut smuggled = sandbox.request_json("git", "status");
    smuggled["stepId"] = "smuggled".into();
    let raw = bytes::Bytes::from(serde_json::to_vec(&smuggled).unwrap());
    let js = &cluster.connection().jetstream;
    js.publish("baa.steps.shell", raw)
        .await
        .unwrap()
        .await
        .unwrap();
    until("the smuggled message is gone", async || {
        queued(&cluster).await == 0
    })
    .await;
    let smuggled_key = baa_runner::cluster::StepIdentity::of(
        &serde_json::from_value::<StepExecutionRequest>(smuggled).unwrap(),
    )
    .key();
    let record = cluster
        .connection()
        .records
        .get(&smuggled_key)
        .await
        .unwrap();
    assert!(
        record.is_none(),
        "a rejected message touches no step's record"
    );

    // The same step submitted again as another message (a resubmission
    // past the duplicate window, say) is not run again.
    let mut twice = sandbox.request_json("shell", "echo once >> ran.txt");
    twice["stepId"] = "twice".into();
    let twice: StepExecutionRequest = serde_json::from_value(twice).unwrap();
    let first = cluster.start(&twice).await.unwrap().answer().await.unwrap();
    let raw = bytes::Bytes::from(serde_json::to_vec(&twice).unwrap());
    js.publish("baa.steps.shell", raw)
        .await
        .unwrap()
        .await
        .unwrap();
    until("the copy is dropped", async || queued(&cluster).await == 0).await;
    let again = cluster.start(&twice).await.unwrap();
    assert!(again.duplicate());
    assert_eq!(again.answer().await.unwrap(), first);
    assert_eq!(first.runs.len(), 1);
    let ran = std::fs::read_to_string(sandbox.repo.join("ran.txt")).unwrap();
    assert_eq!(ran, "once\n");

    // A kind no live host serves waits, visibly, until one does.
    let mut probe = sandbox.request_json("probe", "true");
    probe["stepId"] = "probe".into();
    let file = sandbox.dir.path().join("probe.json");
    std::fs::write(&file, serde_json::to_vec(&probe).unwrap()).unwrap();
    let waiting = cli()
        .args(["submit", "--nats", &server.url(), "--json"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until("the probe step is queued", async || {
        queued(&cluster).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        answers_in_stream(&cluster).await,
        4,
        "nothing answers the probe step yet"
    );
    let status = cluster.status().await.unwrap();
    let probe_queue = status.kinds.iter().find(|k| k.kind == "probe").unwrap();
    assert_eq!((probe_queue.waiting, probe_queue.hosts.len()), (1, 0));
    assert!(status.oldest_queued_at.is_some());
    let out = cli()
        .args(["cluster", "status", "--nats", &server.url()])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("NO HOST SERVES IT") && shown.contains("shell-host"),
        "{shown}"
    );
    let probe_config = std::fs::read_to_string(probe_config_file(&sandbox)).unwrap();
    let config = worker_config(&sandbox, "probe-host", 5, &probe_config);
    let _probe = WorkerProcess::start(&binary, &server.url(), "probe-host", &config, &[]);
    let out = waiting.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting: no live worker serves kind `probe`"),
        "{stderr}"
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["outcome"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_host_is_taken_over_and_its_late_result_is_refused() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = worker_config(&sandbox, "fast-expiry", 2, "");
    let binary = built_binary("baa-runner");
    let stalled = WorkerProcess::start(&binary, &server.url(), "stalled", &config, &[]);
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    let mut step = cluster
        .start(&request(
            &sandbox,
            "long",
            "echo begun; sleep 4; echo ended",
        ))
        .await
        .unwrap();
    let event = step.next_event().await.unwrap().expect("an event");
    assert_eq!(event.host, "stalled");
    stalled.signal(libc::SIGSTOP);
    let successor = WorkerProcess::start(&binary, &server.url(), "successor", &config, &[]);
    let answer = step.answer().await.unwrap();
    assert_eq!(
        turns(&answer),
        [
            ("stalled", Some(RunEnd::TakenOver)),
            ("successor", Some(RunEnd::Finished))
        ]
    );
    assert!(result_of(&answer).ok);
    let run_dir = &result_of(&answer).log_paths.run_dir;
    assert!(
        run_dir.contains("/cluster/successor/delivery-"),
        "{run_dir}"
    );

    // The stalled host comes back and finishes its copy: refused, recorded.
    stalled.signal(libc::SIGCONT);
    let key = answer_key(&answer);
    until(
        "the stalled host records its turn as superseded",
        async || {
            let entry = cluster.connection().records.get(&key).await.unwrap();
            let record: Value = serde_json::from_slice(&entry.unwrap()).unwrap();
            record["runs"][0]["end"] == "superseded"
        },
    )
    .await;
    assert!(stalled.logged("superseded"));
    assert_eq!(answers_in_stream(&cluster).await, 1);
    drop(successor);
}

fn answer_key(answer: &Answer) -> String {
    let result = result_of(answer);
    baa_runner::cluster::StepIdentity {
        task_id: result.task_id.clone(),
        step_id: result.step_id.clone(),
        run_id: result.run_id.clone(),
        attempt: result.attempt,
    }
    .key()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_is_succeeded_by_one_resuming_from_its_last_replicated_checkpoint() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let probe_config = std::fs::read_to_string(probe_config_file(&sandbox)).unwrap();
    let config = worker_config(&sandbox, "probe-hosts", 2, &probe_config);
    let binary = built_binary("baa-runner");
    let mut first = WorkerProcess::start(&binary, &server.url(), "first", &config, &[]);
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    let mut request = sandbox.request_json(
        "probe",
        "resume\ncheckpoint summary half-way\nsh sleep 3\ncheckpoint summary done\nartifact notes.txt hello-artifact",
    );
    request["stepId"] = "resumable".into();
    let request: StepExecutionRequest = serde_json::from_value(request).unwrap();
    let step = cluster.start(&request).await.unwrap();
    let key = step.identity().key();
    until("the first host replicates its checkpoint", async || {
        let Some(entry) = cluster.connection().records.get(&key).await.unwrap() else {
            return false;
        };
        let record: Value = serde_json::from_slice(&entry).unwrap();
        record["checkpoints"]
            .as_array()
            .is_some_and(|c| c.len() == 1)
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let _second = WorkerProcess::start(&binary, &server.url(), "second", &config, &[]);

    let answer = step.answer().await.unwrap();
    assert_eq!(
        turns(&answer),
        [
            ("first", Some(RunEnd::TakenOver)),
            ("second", Some(RunEnd::Finished))
        ]
    );
    let result = result_of(&answer);
    assert!(result.ok, "{}", result.summary);
    // The successor resumed from the first host's checkpoint, and numbered
    // its own after it.
    assert_eq!(result.checkpoint.manager.resumed_from_seq, Some(1));
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    assert!(
        stdout.contains("seq=1 type=worker:summary summary=half-way payload=half-way"),
        "{stdout}"
    );
    let seqs: Vec<u32> = result.checkpoint.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs[..3], [1, 2, 3], "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(result.checkpoint.records[0].summary, "half-way");
    let inherited = Path::new(&result.log_paths.run_dir)
        .parent()
        .unwrap()
        .join("inherited/checkpoints/000001.json");
    assert!(inherited.is_file());
    // Its artifact is in the object store, for a conductor on any machine.
    let names: Vec<(&str, &str)> = answer
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.host.as_str()))
        .collect();
    assert_eq!(names, [("notes.txt", "second")]);
    let contents = cluster.artifact(&answer.artifacts[0].object).await.unwrap();
    assert_eq!(contents, b"hello-artifact");
}

/// A step whose every delivery dies with its host (here `max-deliver` 1)
/// is answered once the queue gives up on it: `host-error` naming the
/// host's expired turn, and the message leaves the queue. A record that is
/// not one (written by anyone else) answers its step the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_no_delivery_finishes_is_answered_when_the_queue_gives_up() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = one_delivery_config(&sandbox, "one-delivery");
    let binary = built_binary("baa-runner");
    let mut hosts = [
        WorkerProcess::start(&binary, &server.url(), "one", &config, &[]),
        WorkerProcess::start(&binary, &server.url(), "two", &config, &[]),
    ];
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    let marker = format!("35.{}", std::process::id());
    let doomed = request(&sandbox, "doomed", &format!("echo started; sleep {marker}"));
    let mut step = cluster.start(&doomed).await.unwrap();
    let running_on = loop {
        let event = step.next_event().await.unwrap().expect("the step starts");
        if let baa_runner::StepEventBody::Output { bytes, .. } = &event.event.body {
            if bytes.starts_with(b"started") {
                break event.host;
            }
        }
    };
    let at = hosts.iter().position(|h| h.name == running_on).unwrap();
    hosts[at].child.kill().unwrap();
    hosts[at].child.wait().unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(60), step.answer())
        .await
        .expect("answered once the queue gives up")
        .unwrap();
    let Reply::Error(error) = &answer.reply else {
        panic!("no host finished it, yet: {answer:?}");
    };
    assert_eq!(error.kind, "host-error");
    assert!(error.message.contains("1 delivery"), "{}", error.message);
    assert_eq!(
        turns(&answer),
        [(running_on.as_str(), Some(RunEnd::Expired))]
    );
    until("the message leaves the queue", async || {
        queued(&cluster).await == 0
    })
    .await;
    assert_eq!(answers_in_stream(&cluster).await, 1);
    assert!(
        processes_with(&marker).is_empty(),
        "the killed host's step went with it"
    );

    // An announcement the queue does not bear out (a step no host served,
    // so never delivered) is not believed: the step stays queued.
    let mut unserved = request(&sandbox, "waits-for-a-host", "true");
    unserved.worker_kind = baa_runner::contracts::WorkerKind::new("nobody-serves").unwrap();
    cluster.submit(&unserved).await.unwrap();
    let mut steps = cluster.connection().steps.clone();
    let sequence = steps.info().await.unwrap().state.last_sequence;
    for consumer in ["steps-nobody-serves", "steps-shell"] {
        let forged =
            serde_json::json!({ "stream_seq": sequence, "deliveries": 8, "consumer": consumer });
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BAA_STEPS.{consumer}");
        cluster
            .connection()
            .client
            .publish(subject, forged.to_string().into())
            .await
            .unwrap();
    }
    cluster.connection().client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        queued(&cluster).await,
        1,
        "a forged announcement took a step out of the queue"
    );
    assert_eq!(
        answers_in_stream(&cluster).await,
        1,
        "a forged announcement answered a step"
    );
    cluster
        .connection()
        .steps
        .delete_message(sequence)
        .await
        .unwrap();

    // A record no host wrote: the step is answered, never run.
    let forged = request_with_id(&sandbox, "forged-record");
    let key = StepIdentity::of(&forged).key();
    cluster
        .connection()
        .records
        .put(&key, "not a record".into())
        .await
        .unwrap();
    let answer = cluster
        .start(&forged)
        .await
        .unwrap()
        .answer()
        .await
        .unwrap();
    let Reply::Error(error) = &answer.reply else {
        panic!("a step with a forged record ran: {answer:?}");
    };
    assert!(error.message.contains("cannot run"), "{}", error.message);
    until("the message leaves the queue", async || {
        queued(&cluster).await == 0
    })
    .await;
}

/// The only host dies holding the step's last delivery, so no host hears
/// the queue give up on it: a host that starts later answers it.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_whose_only_host_died_is_answered_by_the_next_host_to_start() {
    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = one_delivery_config(&sandbox, "alone");
    let binary = built_binary("baa-runner");
    let mut alone = WorkerProcess::start(&binary, &server.url(), "alone", &config, &[]);
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    let marker = format!("36.{}", std::process::id());
    let lonely = request(&sandbox, "lonely", &format!("echo started; sleep {marker}"));
    let mut step = cluster.start(&lonely).await.unwrap();
    while let Some(event) = step.next_event().await.unwrap() {
        if matches!(&event.event.body, baa_runner::StepEventBody::Output { bytes, .. } if bytes.starts_with(b"started"))
        {
            break;
        }
    }
    alone.child.kill().unwrap();
    alone.child.wait().unwrap();
    // Its one delivery expires with no host listening.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let next = WorkerProcess::start(&binary, &server.url(), "next", &config, &[]);
    let answer = tokio::time::timeout(Duration::from_secs(90), step.answer())
        .await
        .expect("answered once a host is back")
        .unwrap();
    let Reply::Error(error) = &answer.reply else {
        panic!("no host finished it, yet: {answer:?}");
    };
    assert_eq!(error.kind, "host-error");
    assert_eq!(turns(&answer), [("alone", Some(RunEnd::Expired))]);
    until("the message leaves the queue", async || {
        queued(&cluster).await == 0
    })
    .await;
    // By its sweep of the queue: the server's announcement went unheard.
    until("the sweep says so", async || {
        next.logged("unannounced: answered")
    })
    .await;
}

fn request_with_id(sandbox: &Sandbox, step: &str) -> StepExecutionRequest {
    request(sandbox, step, "echo never")
}

#[test]
fn the_readme_cluster_demo_runs_steps_on_two_hosts() {
    let sandbox = Sandbox::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let demo = |verb: &str| {
        std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster-demo.sh"))
            .arg(verb)
            .env("TMPDIR", sandbox.dir.path())
            .env("BAA_DEMO_NATS_PORT", port.to_string())
            .output()
            .unwrap()
    };
    let up = demo("up");
    let submitted = demo("submit");
    let down = demo("down");
    assert_exit(&up, 0);
    assert_exit(&down, 0);
    assert_exit(&submitted, 0);
    let shown = String::from_utf8_lossy(&submitted.stdout);
    assert_eq!(shown.matches("COMPLETED").count(), 6, "{shown}");
    assert!(shown.contains("hosts: host-"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_too_large_for_the_queue_is_trimmed_then_points_at_its_run_directory() {
    let sandbox = Sandbox::new();
    let result = crate::run(&crate::runner(), request(&sandbox, "big", "echo big")).await;
    let size = |reply: &Reply| serde_json::to_vec(reply).unwrap().len();
    let whole = Reply::Result(Box::new(result.clone()));
    assert_eq!(whole.clone().fit(size(&whole)), whole);
    // Just too large: the lifecycle events go (the run directory has them).
    match whole.clone().fit(size(&whole) - 1) {
        Reply::Result(trimmed) => {
            assert!(trimmed.lifecycle_events.is_empty() && !result.lifecycle_events.is_empty());
            assert_eq!(trimmed.summary, result.summary);
        }
        other => panic!("{other:?}"),
    }
    // Far too large: an error that says where the result is.
    match whole.fit(256) {
        Reply::Error(e) => {
            assert_eq!(e.kind, "host-error");
            assert!(e
                .message
                .contains(&format!("{}/result.json", result.log_paths.run_dir)));
        }
        other => panic!("{other:?}"),
    }
}

/// `serve --nats`: a conductor speaking the serve protocol has its steps
/// queued in the cluster and sees what it sees locally: accepted, live
/// events (from the host that runs the step), the result; a bad request
/// refused naming its field; cancel reaching the running host (the result
/// says interrupted) or answering a still-queued step `cancelled`.
#[tokio::test(flavor = "multi_thread")]
async fn serve_with_nats_queues_steps_in_the_cluster_over_the_same_protocol() {
    use crate::serve::{send, wait_for};
    use serde_json::json;
    use tokio::io::AsyncBufReadExt;

    let sandbox = Sandbox::new();
    let server = NatsServer::start(&sandbox.dir.path().join("js"));
    let config = worker_config(&sandbox, "worker", 5, "");
    let _worker = WorkerProcess::start(
        &built_binary("baa-runner"),
        &server.url(),
        "host-a",
        &config,
        &[],
    );
    let socket = sandbox.dir.path().join("cluster.sock");
    let mut serve = Reaped(
        cli()
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--nats", &server.url()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket).await;

    let marker = format!("34.{}", std::process::id());
    let message = |id: &str, command: &str| {
        let mut request = sandbox.request_json("shell", command);
        request["stepId"] = id.into();
        json!({ "op": "run", "id": id, "request": request })
    };
    let (read, mut write) = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap()
        .into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    send(&mut write, &message("ok", "echo from the cluster")).await;
    send(
        &mut write,
        &message("slow", &format!("echo working; sleep {marker}")),
    )
    .await;
    let mut bad = message("bad", "true");
    bad["request"]["timeoutSec"] = "soon".into();
    send(&mut write, &bad).await;
    let mut unserved = message("unserved", "true");
    unserved["request"]["workerKind"] = "nobody-serves-this".into();
    send(&mut write, &unserved).await;

    let mut results = std::collections::BTreeMap::new();
    let mut errors = std::collections::BTreeMap::new();
    let mut output = String::new();
    let mut hosts = std::collections::BTreeSet::new();
    let reading = async {
        while results.len() + errors.len() < 4 {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server keeps the connection");
            let message: Value = serde_json::from_str(&line).unwrap();
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str().unwrap() {
                "accepted" => {
                    assert!(message["step"].as_str().unwrap().contains(&id), "{line}");
                    assert!(
                        message.get("runDir").is_none(),
                        "no run directory here: {line}"
                    );
                    if id == "unserved" {
                        send(&mut write, &json!({ "op": "cancel", "id": "unserved" })).await;
                    }
                }
                "event" | "output" => {
                    hosts.insert(message["host"].as_str().unwrap().to_owned());
                    let text = message["text"].as_str().unwrap_or_default();
                    if id == "ok" {
                        output.push_str(text);
                    }
                    if id == "slow" && text.contains("working") {
                        // Its process works in the sandbox (what the chaos
                        // test's last check looks for).
                        let sandbox_dir = sandbox.dir.path();
                        until("the step's sleep runs", async || {
                            !processes_in(sandbox_dir).is_empty()
                        })
                        .await;
                        send(&mut write, &json!({ "op": "cancel", "id": "slow" })).await;
                    }
                }
                "result" => drop(results.insert(id, message["result"].clone())),
                "error" => drop(errors.insert(id, message["error"].clone())),
                other => panic!("unexpected message {other}: {line}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("every step answered within a minute");

    assert_eq!(results["ok"]["ok"], true, "{}", results["ok"]["summary"]);
    assert!(output.contains("from the cluster"), "{output:?}");
    assert_eq!(hosts, ["host-a".to_owned()].into());
    assert_eq!(results["slow"]["state"]["failure"]["reason"], "interrupted");
    assert!(
        processes_with(&marker).is_empty(),
        "the cancelled step's process is gone"
    );
    let left = processes_in(sandbox.dir.path());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(errors["bad"]["kind"], "invalid-request");
    assert_eq!(errors["bad"]["field"], "timeoutSec");
    assert_eq!(
        errors["unserved"]["kind"], "cancelled",
        "{}",
        errors["unserved"]
    );

    // Another connection submitting the same step follows it (duplicate),
    // and closing leaves it to its submitter; the same identity with
    // another request is refused, naming the attempt to bump.
    send(&mut write, &message("long", "sleep 1; echo long done")).await;
    let (read2, mut write2) = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap()
        .into_split();
    let mut lines2 = tokio::io::BufReader::new(read2).lines();
    let mut next2 = async || -> Value {
        let line = lines2.next_line().await.unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    send(&mut write2, &message("ok", "echo from the cluster")).await;
    let again = next2().await;
    assert_eq!(again["type"], "accepted", "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    loop {
        let message = next2().await;
        if message["type"] == "result" {
            assert_eq!(message["result"]["ok"], true, "the first answer, again");
            break;
        }
    }
    send(&mut write2, &message("ok", "echo another request")).await;
    let refused = next2().await;
    assert_eq!(refused["error"]["kind"], "invalid-request", "{refused}");
    assert_eq!(refused["error"]["field"], "attempt");
    send(&mut write2, &message("long", "sleep 1; echo long done")).await;
    let follows = next2().await;
    assert_eq!(follows["duplicate"], true, "{follows}");
    drop((write2, lines2));
    let long = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == "long" && message["type"] == "result" {
                return message["result"].clone();
            }
        }
    })
    .await
    .expect("the submitter's step is answered");
    assert_eq!(
        long["ok"], true,
        "a follower closing did not cancel it: {long}"
    );

    // SIGTERM stops the server cleanly (nothing of its own is running).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    let status = serve.0.wait().unwrap();
    assert!(status.success() || status.code() == Some(143), "{status:?}");
}
