//! What the queue costs (issue 20): steps per second and submit-to-start
//! latency (p50/p99) through NATS JetStream with 1, 2 and 4 worker
//! processes, against the same steps started in process in the same run;
//! and the per-step cost of replication (the answer, a checkpoint).
//!
//! `cargo bench -p baa-runner-tests --bench cluster` (or `scripts/bench.sh`)
//! prints one table and writes it to `target/bench/cluster.md`.
//! `BAA_BENCH_QUICK=1` cuts the sample counts for a smoke run. Workers are
//! the release binary (`$BAA_RUNNER_BIN` overrides it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use baa_runner::cluster::{Cluster, Reply};
use baa_runner::contracts::{StepExecutionRequest, StepExecutionResult};
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::nats::{NatsServer, WorkerProcess};
use baa_runner_tests::{fixtures, Sandbox};

/// Steps each worker process runs at once (and the in-process runner).
const SLOTS_PER_HOST: u32 = 4;

fn quick() -> bool {
    std::env::var_os("BAA_BENCH_QUICK").is_some()
}

fn release_binary() -> PathBuf {
    std::env::var_os("BAA_RUNNER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/baa-runner")
        })
}

fn request(
    sandbox: &Sandbox,
    run: &str,
    i: usize,
    kind: &str,
    command: &str,
) -> StepExecutionRequest {
    let mut json = sandbox.request_json(kind, command);
    json["runId"] = run.into();
    json["stepId"] = format!("s{i}").into();
    serde_json::from_value(json).unwrap()
}

fn millis_since(submitted: SystemTime, started_at: &str) -> f64 {
    let started =
        time::OffsetDateTime::parse(started_at, &time::format_description::well_known::Rfc3339)
            .expect("startedAt is RFC 3339");
    let submitted = time::OffsetDateTime::from(submitted);
    (started - submitted).as_seconds_f64() * 1000.0
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Throughput and submit-to-start latency of one configuration.
struct Row {
    name: String,
    steps_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn of(name: String, elapsed: Duration, mut latencies: Vec<f64>) -> Row {
        Row {
            name,
            steps_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile(&mut latencies, 0.5),
            p99_ms: percentile(&mut latencies, 0.99),
        }
    }
}

async fn in_process(sandbox: &Sandbox, run: &str, steps: usize) -> Row {
    let mut config = RunnerConfig::default();
    config.concurrency.max_steps = SLOTS_PER_HOST;
    let runner = Runner::new(config).unwrap();
    let began = Instant::now();
    let mut handles = Vec::new();
    for i in 0..steps {
        let submitted = SystemTime::now();
        handles.push((
            submitted,
            runner
                .start(request(sandbox, run, i, "shell", "true"))
                .unwrap(),
        ));
    }
    let mut latencies = Vec::new();
    for (submitted, handle) in handles {
        let result = handle.result().await.unwrap();
        assert!(result.ok);
        latencies.push(millis_since(submitted, &result.started_at));
    }
    Row::of(
        format!("in process ({SLOTS_PER_HOST} slots)"),
        began.elapsed(),
        latencies,
    )
}

/// Submit `steps` and wait for every answer; the results with their
/// submission times.
async fn through_queue(
    cluster: &Cluster,
    requests: Vec<StepExecutionRequest>,
) -> (Duration, Vec<(SystemTime, StepExecutionResult)>) {
    let mut feed = cluster.answers().await.unwrap();
    let began = Instant::now();
    let mut submitted = std::collections::HashMap::new();
    for request in &requests {
        submitted.insert(request.step_id.clone(), SystemTime::now());
        cluster.submit(request).await.unwrap();
    }
    let mut results = Vec::new();
    while results.len() < requests.len() {
        let (_, answer) = feed.next().await.unwrap();
        let Reply::Result(result) = answer.reply else {
            panic!("no result: {:?}", answer.reply);
        };
        if let Some(at) = submitted.get(&result.step_id) {
            results.push((*at, *result));
        }
    }
    (began.elapsed(), results)
}

struct Cluster1 {
    _server: NatsServer,
    _workers: Vec<WorkerProcess>,
    cluster: Cluster,
}

async fn start_cluster(sandbox: &Sandbox, hosts: usize, tag: &str) -> Cluster1 {
    let server = NatsServer::start(&sandbox.dir.path().join(format!("js-{tag}")));
    let plugins = sandbox.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(fixtures::PROBE_WASM, plugins.join("probe.wasm")).unwrap();
    let config = sandbox.dir.path().join(format!("{tag}.toml"));
    std::fs::write(
        &config,
        format!(
            "repo-roots = [{:?}]\nplugin-dirs = [{:?}]\ndurability = \"process-crash\"\n[kinds.probe]\nprograms = [\"true\", \"touch\", \"sh\", \"python3\"]\nenv = [\"PROBE_VAR\"]\n[concurrency]\nmax-steps = {SLOTS_PER_HOST}\n[cluster]\nruns-dir = {:?}\n",
            sandbox.repo.display().to_string(),
            plugins.display().to_string(),
            sandbox.runs.join("cluster").display().to_string()
        ),
    )
    .unwrap();
    let workers = (0..hosts)
        .map(|n| {
            WorkerProcess::start(
                &release_binary(),
                &server.url(),
                &format!("{tag}-{n}"),
                &config,
                &[],
            )
        })
        .collect();
    let cluster = Cluster::connect(&server.url()).await.unwrap();
    Cluster1 {
        _server: server,
        _workers: workers,
        cluster,
    }
}

/// Mean milliseconds per step of `command` run one after another.
async fn sequential_ms(
    cluster: &Cluster,
    sandbox: &Sandbox,
    run: &str,
    kind: &str,
    command: &str,
    n: usize,
) -> f64 {
    let began = Instant::now();
    for i in 0..n {
        let step = cluster
            .start(&request(sandbox, run, i, kind, command))
            .await
            .unwrap();
        step.result().await.unwrap();
    }
    began.elapsed().as_secs_f64() * 1000.0 / n as f64
}

async fn sequential_local_ms(
    runner: &Runner,
    sandbox: &Sandbox,
    run: &str,
    kind: &str,
    command: &str,
    n: usize,
) -> f64 {
    let began = Instant::now();
    for i in 0..n {
        runner
            .run(request(sandbox, run, i, kind, command), None)
            .await
            .unwrap();
    }
    began.elapsed().as_secs_f64() * 1000.0 / n as f64
}

#[tokio::main]
async fn main() {
    assert!(
        release_binary().is_file(),
        "build it first: scripts/bench.sh does"
    );
    let steps = if quick() { 40 } else { 200 };
    let sequential = if quick() { 10 } else { 40 };
    let sandbox = Sandbox::new();
    let mut rows = vec![in_process(&sandbox, "local", steps).await];
    for hosts in [1, 2, 4] {
        let cluster = start_cluster(&sandbox, hosts, &format!("h{hosts}")).await;
        let run = format!("queue-{hosts}");
        let requests = (0..steps)
            .map(|i| request(&sandbox, &run, i, "shell", "true"))
            .collect();
        let (elapsed, results) = through_queue(&cluster.cluster, requests).await;
        let latencies = results
            .iter()
            .map(|(at, r)| millis_since(*at, &r.started_at))
            .collect();
        rows.push(Row::of(
            format!("queue, {hosts} worker process(es) × {SLOTS_PER_HOST} slots"),
            elapsed,
            latencies,
        ));
    }

    // Replication: one step at a time, so each costs only itself.
    let cluster = start_cluster(&sandbox, 1, "seq").await;
    let mut config = RunnerConfig {
        durability: baa_runner::fsutil::Durability::ProcessCrash,
        ..Default::default()
    };
    config.plugin_dirs.push(sandbox.dir.path().join("plugins"));
    let grant = baa_runner::config::KindGrant {
        programs: ["true", "touch", "sh", "python3"]
            .map(String::from)
            .to_vec(),
        env: vec!["PROBE_VAR".into()],
        ..Default::default()
    };
    config.kinds.insert("probe".into(), grant);
    let runner = Runner::new(config).unwrap();
    // A B A B: each round runs the four one-at-a-time series in turn, so
    // the machine's drift falls on all of them; the replication cost is
    // taken per round, and its median reported with the spread.
    let rounds = if quick() { 2 } else { 4 };
    let per_round = sequential / rounds;
    let (mut sums, mut replication) = ([0.0f64; 4], Vec::new());
    for round in 0..rounds {
        let mut ms = [0.0f64; 4];
        for (at, (queue, command)) in [
            (false, "true"),
            (false, "checkpoint summary x"),
            (true, "true"),
            (true, "checkpoint summary x"),
        ]
        .into_iter()
        .enumerate()
        {
            let run = format!("seq-{at}-{round}");
            ms[at] = if queue {
                sequential_ms(
                    &cluster.cluster,
                    &sandbox,
                    &run,
                    "probe",
                    command,
                    per_round,
                )
                .await
            } else {
                sequential_local_ms(&runner, &sandbox, &run, "probe", command, per_round).await
            };
            sums[at] += ms[at];
        }
        replication.push((ms[3] - ms[1]) - (ms[2] - ms[0]));
    }
    let [local_plain, local_cp, queue_plain, queue_cp] = sums.map(|sum| sum / rounds as f64);
    replication.sort_by(f64::total_cmp);
    let median = replication[replication.len() / 2];
    let (low, high) = (replication[0], replication[replication.len() - 1]);

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| configuration | steps/s | submit→start p50 | p99 | vs in process |"
    );
    let _ = writeln!(table, "|---|---:|---:|---:|---:|");
    let base = rows[0].steps_per_sec;
    for row in &rows {
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {:.2}× |",
            row.name,
            row.steps_per_sec,
            row.p50_ms,
            row.p99_ms,
            row.steps_per_sec / base
        );
    }
    let _ = writeln!(table, "\n| one step at a time (probe kind) | in process | through the queue | cost of the queue |");
    let _ = writeln!(table, "|---|---:|---:|---:|");
    let _ = writeln!(table, "| no checkpoint (answer replicated) | {local_plain:.1} ms | {queue_plain:.1} ms | {:.1} ms |", queue_plain - local_plain);
    let _ = writeln!(
        table,
        "| one checkpoint (also replicated) | {local_cp:.1} ms | {queue_cp:.1} ms | {:.1} ms |",
        queue_cp - local_cp
    );
    let _ = writeln!(table, "\nreplicating one checkpoint: {median:.1} ms per step (median of {rounds} interleaved rounds, {low:.1} to {high:.1}; {steps} steps per row above, {sequential} one at a time)");
    print!("{table}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.md"), &table).unwrap();
}
