//! `baa-runner serve` driven from another process over its Unix socket:
//! concurrent steps with live events, one cancelled by message and one by
//! closing the connection, bad messages answered with errors that name the
//! field, and a clean stop on SIGTERM.

use std::path::Path;
use std::time::Duration;

use baa_runner_tests::{processes_with, read_json, Sandbox};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{assert_exit, cli};

pub async fn send(stream: &mut tokio::net::unix::OwnedWriteHalf, message: &Value) {
    let mut line = serde_json::to_vec(message).unwrap();
    line.push(b'\n');
    stream.write_all(&line).await.unwrap();
}

fn run_message(sandbox: &Sandbox, id: &str, command: &str) -> Value {
    let mut request = sandbox.request_json("shell", command);
    request["stepId"] = id.into();
    json!({ "op": "run", "id": id, "request": request })
}

pub async fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_streams_and_cancels_steps_for_another_process() {
    let sandbox = Sandbox::new();
    let socket = sandbox.dir.path().join("baa.sock");
    let server = cli()
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&socket).await;

    let marker = format!("33.{}", std::process::id());
    let (read, mut write) = UnixStream::connect(&socket).await.unwrap().into_split();
    let mut lines = BufReader::new(read).lines();
    for (id, command) in [
        ("a", "echo alpha; sleep 0.3; echo alpha done".to_string()),
        ("b", "echo beta >&2; echo beta done".to_string()),
        ("slow", format!("echo working; sleep {marker}; echo never")),
    ] {
        send(&mut write, &run_message(&sandbox, id, &command)).await;
    }
    let mut bad = run_message(&sandbox, "bad", "true");
    bad["request"].as_object_mut().unwrap().remove("timeoutSec");
    send(&mut write, &bad).await;
    // A kind no one has is refused before anything is written.
    let mut unknown = run_message(&sandbox, "unknown", "true");
    unknown["request"]["workerKind"] = "shel".into();
    unknown["request"]["stepId"] = "unknown-kind".into();
    send(&mut write, &unknown).await;
    write.write_all(b"this is not json\n").await.unwrap();

    let mut results = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    let mut last_seq = std::collections::BTreeMap::new();
    let mut output = std::collections::BTreeMap::<String, String>::new();
    let mut accepted = 0;
    let reading = async {
        while results.len() < 3 {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server keeps the connection");
            let message: Value = serde_json::from_str(&line).unwrap();
            let id = message["id"].as_str().unwrap_or_default().to_string();
            match message["type"].as_str().unwrap() {
                "accepted" => {
                    accepted += 1;
                    assert!(message["runDir"].as_str().unwrap().contains(&id));
                }
                "event" | "output" => {
                    let seq = message["seq"].as_u64().unwrap();
                    let last = last_seq.entry(id.clone()).or_insert(0);
                    assert!(seq > *last, "{line}");
                    *last = seq;
                    if message["type"] == "output" {
                        let text = output.entry(id.clone()).or_default();
                        text.push_str(message["text"].as_str().unwrap());
                        if id == "slow" && text.contains("working") {
                            send(&mut write, &json!({ "op": "cancel", "id": "slow" })).await;
                        }
                    } else {
                        assert!(message["event"]["event"].is_string(), "{line}");
                    }
                }
                "result" => {
                    results.insert(id, message["result"].clone());
                }
                "error" => errors.push(message),
                other => panic!("unexpected message type {other}: {line}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("three results within a minute");

    assert_eq!(accepted, 3);
    for id in ["a", "b"] {
        assert_eq!(results[id]["ok"], true, "{}", results[id]["summary"]);
    }
    assert!(output["a"].contains("alpha done") && output["b"].contains("beta"));
    assert_eq!(results["slow"]["outcome"], "failed");
    assert_eq!(results["slow"]["state"]["failure"]["reason"], "interrupted");
    let record = read_json(results["slow"]["logPaths"]["resultPath"].as_str().unwrap());
    assert_eq!(record["state"]["failure"]["reason"], "interrupted");
    assert!(
        processes_with(&marker).is_empty(),
        "the cancelled step's child is gone"
    );
    // Bad messages get errors naming what is wrong; the connection goes on.
    let invalid = errors
        .iter()
        .find(|e| e["id"] == "bad")
        .expect("an error for `bad`");
    assert_eq!(invalid["error"]["kind"], "invalid-request");
    assert_eq!(invalid["error"]["field"], "timeoutSec");
    assert!(
        invalid["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeoutSec"),
        "{invalid}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["error"]["kind"] == "invalid-message"),
        "{errors:?}"
    );
    let unknown = errors
        .iter()
        .find(|e| e["id"] == "unknown")
        .expect("an error for `unknown`");
    assert_eq!(unknown["error"]["field"], "workerKind", "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `shell`?"),
        "{unknown}"
    );
    assert!(!sandbox.runs.join("task-1/run-1/unknown-kind").exists());

    // A client that goes away cancels the steps it started.
    let marker = format!("34.{}", std::process::id());
    let (read, mut write) = UnixStream::connect(&socket).await.unwrap().into_split();
    let mut lines = BufReader::new(read).lines();
    let message = run_message(&sandbox, "orphan", &format!("echo up; sleep {marker}"));
    send(&mut write, &message).await;
    let run_dir = loop {
        let message: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        if message["type"] == "accepted" {
            break message["runDir"].as_str().unwrap().to_string();
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan's child never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((write, lines));
    let result_path = Path::new(&run_dir).join("result.json");
    wait_for(&result_path).await;
    assert_eq!(
        read_json(&result_path)["state"]["failure"]["reason"],
        "interrupted"
    );
    assert!(processes_with(&marker).is_empty());

    // SIGTERM: the server stops and removes its socket.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&server),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_exit(&status, 0);
    assert!(!socket.exists());
}
