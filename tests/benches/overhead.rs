//! What the sandbox costs: every metric of issue 7 measured through the real
//! host (real components in wasmtime, real subprocesses, real git) next to a
//! native baseline measured in the same run, as p50/p90/p99 and a ratio,
//! with a pass/fail against the project's targets.
//!
//! `cargo bench -p baa-runner-tests --bench overhead` (or `scripts/bench.sh`)
//! prints one table and writes it to `target/bench/overhead.md` and `.json`.
//! `BAA_BENCH_QUICK=1` cuts the sample counts for a smoke run.
//!
//! Steps run on a runner with `durability = "process-crash"` (records not
//! fsynced) unless a row says "records fsynced": on this kind of disk one
//! fsync costs 0.3–0.5 ms and a step makes about ten, which would hide
//! everything else; the two empty-step rows show the difference.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baa_runner::config::KindGrant;
use baa_runner::contracts::StepExecutionResult;
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{fixtures, git, Sandbox};
use serde_json::{json, Value};

/// p50/p90/p99 of a metric, in its unit.
#[derive(Clone, Copy, Default)]
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Stats {
    fn of(mut samples: Vec<f64>) -> Stats {
        assert!(!samples.is_empty());
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
        }
    }

    fn one(value: f64) -> Stats {
        Stats {
            p50: value,
            p90: value,
            p99: value,
        }
    }
}

/// What a metric must meet.
#[derive(Clone, Copy)]
enum Target {
    /// ours p50 at most this (in the metric's unit).
    P50AtMost(f64),
    /// ours p99 at most this.
    P99AtMost(f64),
    /// ours/native p50 at most this (times: lower is better).
    RatioAtMost(f64),
    /// ours/native p50 at least this (throughputs: higher is better).
    RatioAtLeast(f64),
    /// Reported only.
    None,
}

struct Row {
    metric: String,
    unit: &'static str,
    ours: Stats,
    native: Stats,
    baseline: &'static str,
    target: Target,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours.p50 / self.native.p50
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::P50AtMost(v) => format!("p50 ≤ {v} {}", self.unit),
            Target::P99AtMost(v) => format!("p99 ≤ {v} {}", self.unit),
            Target::RatioAtMost(v) => format!("≤ {v:.2}×"),
            Target::RatioAtLeast(v) => format!("≥ {v:.2}×"),
            Target::None => "—".into(),
        }
    }

    fn verdict(&self) -> &'static str {
        let pass = match self.target {
            Target::P50AtMost(v) => self.ours.p50 <= v,
            Target::P99AtMost(v) => self.ours.p99 <= v,
            Target::RatioAtMost(v) => self.ratio() <= v,
            Target::RatioAtLeast(v) => self.ratio() >= v,
            Target::None => return "",
        };
        if pass {
            "pass"
        } else {
            "MISS"
        }
    }
}

fn quick() -> bool {
    std::env::var_os("BAA_BENCH_QUICK").is_some()
}

fn n(full: usize) -> usize {
    if quick() {
        (full / 10).max(3)
    } else {
        full
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (micros(t.elapsed()), out)
}

async fn time_async<T>(f: impl std::future::Future<Output = T>) -> (f64, T) {
    let t = Instant::now();
    let out = f.await;
    (micros(t.elapsed()), out)
}

/// The bench's world: a repository, the probe plugin, a runner granting it
/// what it needs, and a counter for unique step ids.
struct Bench {
    sandbox: Sandbox,
    runner: Arc<Runner>,
    /// The same runner with `durability = "process-crash"` (no fsync).
    fast: Arc<Runner>,
    cache_dir: PathBuf,
    plugins: PathBuf,
    next: std::sync::atomic::AtomicU64,
}

impl Bench {
    fn new() -> Bench {
        let sandbox = Sandbox::new();
        std::fs::write(sandbox.repo.join("src.txt"), "one\ntwo\n").unwrap();
        git(&sandbox.repo, &["add", "-A"]);
        git(&sandbox.repo, &["commit", "-q", "-m", "src"]);
        std::fs::write(sandbox.repo.join("src.txt"), "one\ntwo\nthree\n").unwrap();
        let plugins = sandbox.dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::copy(fixtures::PROBE_WASM, plugins.join("probe.wasm")).unwrap();
        let cache_dir = sandbox.dir.path().join("compiled");
        let runner = Arc::new(Runner::new(config(&plugins, &cache_dir, true)).unwrap());
        let mut relaxed = config(&plugins, &cache_dir, true);
        relaxed.durability = baa_runner::fsutil::Durability::ProcessCrash;
        let fast = Arc::new(Runner::new(relaxed).unwrap());
        Bench {
            sandbox,
            runner,
            fast,
            cache_dir,
            plugins,
            next: Default::default(),
        }
    }

    fn request(&self, kind: &str, command: &str, checkpoints: bool, timeout_sec: u64) -> Value {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = self.sandbox.request_json(kind, command);
        request["stepId"] = format!("s{id}").into();
        request["timeoutSec"] = timeout_sec.into();
        if !checkpoints {
            request["checkpoint"] = json!({ "mode": "disabled" });
        }
        request
    }

    /// Run a step on the runner with `durability = "process-crash"`.
    async fn step(&self, request: Value) -> StepExecutionResult {
        let request = serde_json::from_value(request).unwrap();
        self.fast.run(request, None).await.unwrap()
    }

    /// Run `kind`'s `command` on the default (fsyncing) runner and return
    /// the wall time in µs.
    async fn timed_step(&self, kind: &str, command: &str, checkpoints: bool) -> f64 {
        self.timed_step_on(&self.runner, kind, command, checkpoints)
            .await
    }

    async fn timed_step_on(
        &self,
        runner: &Runner,
        kind: &str,
        command: &str,
        checkpoints: bool,
    ) -> f64 {
        let request = serde_json::from_value(self.request(kind, command, checkpoints, 60)).unwrap();
        let (us, result) = time_async(runner.run(request, None)).await;
        let result = result.unwrap();
        assert!(result.ok, "{kind} `{command}`: {}", result.summary);
        us
    }
}

fn config(plugins: &Path, cache_dir: &Path, disk_cache: bool) -> RunnerConfig {
    let mut config = RunnerConfig::default();
    config.plugin_dirs.push(plugins.to_path_buf());
    config.compiled_cache = disk_cache;
    config.compiled_cache_dir = Some(cache_dir.to_path_buf());
    config.kinds.insert(
        "probe".into(),
        KindGrant {
            programs: ["true", "touch", "sh", "python3"]
                .map(String::from)
                .to_vec(),
            env: vec!["PROBE_VAR".into()],
            ..Default::default()
        },
    );
    config
}

/// Spawn `program args` and read all its output, as a native caller would.
fn spawn_direct(program: &str, args: &[&str], cwd: &Path) -> f64 {
    time(|| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
    })
    .0
}

/// The files of a run directory, with their contents.
fn run_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Natively write the same files a run directory holds (each fsynced when
/// `sync`, as the host's records are by default), in a new directory.
fn write_like(root: &Path, files: &[(PathBuf, Vec<u8>)], sync: bool) -> f64 {
    time(|| {
        for (rel, bytes) in files {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut f, bytes).unwrap();
            if sync {
                f.sync_data().unwrap();
            }
        }
    })
    .0
}

fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The probe's `fsops` report natively: the same operations in `dir`.
fn fs_ops_native(dir: &Path, n: u32) -> [f64; 4] {
    let dir = dir.join("fsops");
    std::fs::create_dir_all(&dir).unwrap();
    let payload = [7u8; 256];
    let paths: Vec<_> = (0..n).map(|i| dir.join(format!("f{i}"))).collect();
    let t = Instant::now();
    for p in &paths {
        std::fs::write(p, payload).unwrap();
    }
    let write = t.elapsed();
    let t = Instant::now();
    for p in &paths {
        std::hint::black_box(std::fs::read(p).unwrap());
    }
    let read = t.elapsed();
    let t = Instant::now();
    for p in &paths {
        std::hint::black_box(std::fs::metadata(p).unwrap().len());
    }
    let stat = t.elapsed();
    let t = Instant::now();
    let count = std::fs::read_dir(&dir).unwrap().count();
    let readdir = t.elapsed();
    assert_eq!(count, n as usize);
    std::fs::remove_dir_all(&dir).unwrap();
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(n) / 1000.0;
    [
        per(write),
        per(read),
        per(stat),
        readdir.as_nanos() as f64 / 1000.0,
    ]
}

/// The probe's `fsops` line in a step's stdout: µs per write, read, stat, and the readdir.
fn fs_ops_guest(result: &StepExecutionResult) -> [f64; 4] {
    let out = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    let line = out.lines().find(|l| l.starts_with("fsops")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> f64 {
        let i = words.iter().position(|w| *w == key).unwrap();
        words[i + 1].parse::<f64>().unwrap() / 1000.0
    };
    [
        after("write"),
        after("read"),
        after("stat"),
        after("readdir"),
    ]
}

/// `n` calls of the probe's `describe` export on two bare engines, one with
/// `concurrency_support` off and one with it on (imports stubbed: describe
/// uses none), warmed up, then timed in alternating batches.
fn guest_calls(probe: &[u8], n: usize) -> [Vec<f64>; 2] {
    use wasmtime::component::{Component, Func, Linker, Val};
    let setup = |concurrency: bool| -> (wasmtime::Store<()>, Func) {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(concurrency);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let component = Component::new(&engine, probe).unwrap();
        let mut linker = Linker::<()>::new(&engine);
        linker.define_unknown_imports_as_traps(&component).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let interface = instance
            .get_export_index(&mut store, None, "baa:worker/worker-executor@0.1.0")
            .unwrap();
        let describe = instance
            .get_export_index(&mut store, Some(&interface), "describe")
            .unwrap();
        let func = instance.get_func(&mut store, describe).unwrap();
        (store, func)
    };
    let mut engines = [setup(false), setup(true)];
    let mut samples = [Vec::new(), Vec::new()];
    let mut results = [Val::Bool(false)];
    for round in 0..(n / 100).max(1) + 10 {
        for (i, (store, func)) in engines.iter_mut().enumerate() {
            for _ in 0..100 {
                let (us, ()) = time(|| func.call(&mut *store, &[], &mut results).unwrap());
                // The first ten rounds warm both up.
                if round >= 10 {
                    samples[i].push(us);
                }
            }
        }
    }
    samples
}

async fn measure(bench: &Bench, rows: &mut Vec<Row>) {
    let repo = bench.sandbox.repo.clone();
    let scratch = bench.sandbox.dir.path().join("native");
    std::fs::create_dir_all(&scratch).unwrap();
    let probe_bytes = std::fs::read(fixtures::PROBE_WASM).unwrap();

    // 1. Plugin cold load: a first compile, then a load from the disk cache.
    let mut compile = Vec::new();
    let mut read_native = Vec::new();
    for i in 0..n(10) {
        let dir = bench.sandbox.dir.path().join(format!("cold-{i}"));
        let runner = Runner::new(config(&bench.plugins, &dir, true)).unwrap();
        compile.push(time_async(runner.kind("probe")).await.0);
        read_native.push(time(|| std::hint::black_box(std::fs::read(fixtures::PROBE_WASM))).0);
    }
    rows.push(Row {
        metric: format!(
            "plugin cold load: compile ({} KB) + describe",
            probe_bytes.len() / 1024
        ),
        unit: "µs",
        ours: Stats::of(compile),
        native: Stats::of(read_native),
        baseline: "read the .wasm file",
        target: Target::None,
    });

    let engine =
        baa_runner::worker::engine::engine(&Default::default(), baa_runner::config::POOL_STEPS)
            .unwrap();
    let disk = baa_runner::plugins::cache::DiskCache::open(&bench.cache_dir, &engine).unwrap();
    let sha = baa_runner::fsutil::sha256_hex(&probe_bytes);
    let component = wasmtime::component::Component::new(&engine, &probe_bytes).unwrap();
    disk.store(&sha, &component).unwrap();
    let cwasm = disk.path(&sha);
    let (mut load, mut read) = (Vec::new(), Vec::new());
    for _ in 0..n(200) {
        load.push(time(|| disk.load(&engine, &sha).unwrap().unwrap()).0);
        read.push(time(|| std::hint::black_box(std::fs::read(&cwasm).unwrap())).0);
    }
    rows.push(Row {
        metric: "compiled-cache load of a kind (verify + deserialize)".into(),
        unit: "µs",
        ours: Stats::of(load),
        native: Stats::of(read),
        baseline: "read the compiled file",
        target: Target::P50AtMost(1000.0),
    });

    // 2. Instantiation per step: a warm kind instantiated and asked to describe itself.
    let _ = bench.runner.kind("probe").await;
    let (mut inst, mut native) = (Vec::new(), Vec::new());
    for _ in 0..n(2000) {
        let (us, info) = time_async(bench.runner.kind("probe")).await;
        assert!(info.unwrap().error.is_none());
        inst.push(us);
        native.push(
            time(|| {
                std::hint::black_box(KindLike {
                    name: "probe".into(),
                    version: "0.1.0".into(),
                    programs: vec!["true".into(), "touch".into()],
                })
            })
            .0,
        );
    }
    rows.push(Row {
        metric: "describe a kind: store + WASI context + instance + call".into(),
        unit: "µs",
        ours: Stats::of(inst),
        native: Stats::of(native),
        baseline: "the same describe as a native call",
        target: Target::None,
    });

    // The component-model setting chosen for call cost: the same guest
    // export called on an engine with `concurrency_support` off (the host's
    // setting) and on (wasmtime's default).
    let [off, on] = guest_calls(&probe_bytes, n(20_000));
    rows.push(Row {
        metric: "guest call (describe) with concurrency_support off, vs on".into(),
        unit: "µs",
        ours: Stats::of(off),
        native: Stats::of(on),
        baseline: "the same call with concurrency_support on",
        target: Target::None,
    });

    // The instantiation inside real steps, as each step's metadata records
    // it (InstancePre → instance), next to starting a process instead.
    let (mut inst, mut native) = (Vec::new(), Vec::new());
    for _ in 0..n(300) {
        let result = bench.step(bench.request("probe", "true", false, 60)).await;
        let metadata = baa_runner_tests::read_json(&result.log_paths.metadata_path);
        inst.push(metadata["plugin"]["instantiateMicros"].as_f64().unwrap());
        native.push(spawn_direct("/bin/true", &[], &repo));
    }
    rows.push(Row {
        metric: "instantiation in a step (InstancePre → instance, pooled)".into(),
        unit: "µs",
        ours: Stats::of(inst),
        native: Stats::of(native),
        baseline: "spawning /bin/true instead",
        target: Target::P50AtMost(15.0),
    });

    // 3. An empty step end to end (no subprocess, checkpoints off, logs on),
    // and the full per-step overhead (checkpoints on: git-diff snapshot).
    let warm = bench.step(bench.request("probe", "true", false, 60)).await;
    let files = run_files(Path::new(&warm.log_paths.run_dir));
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for i in 0..n(300) {
        ours.push(bench.timed_step("probe", "true", false).await);
        native.push(write_like(
            &scratch.join(format!("empty-{i}")),
            &files,
            true,
        ));
    }
    let empty = Stats::of(ours);
    rows.push(Row {
        metric: "empty step end to end, in process, logs on (records fsynced)".into(),
        unit: "µs",
        ours: empty,
        native: Stats::of(native),
        baseline: "write the same run files natively, each fsynced",
        target: Target::None,
    });
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for i in 0..n(300) {
        ours.push(
            bench
                .timed_step_on(&bench.fast, "probe", "true", false)
                .await,
        );
        native.push(write_like(
            &scratch.join(format!("empty-nosync-{i}")),
            &files,
            false,
        ));
    }
    let empty_fast = Stats::of(ours);
    rows.push(Row {
        metric: "empty step end to end, in process, logs on (durability = process-crash)".into(),
        unit: "µs",
        ours: empty_fast,
        native: Stats::of(native),
        baseline: "write the same run files natively",
        target: Target::P50AtMost(500.0),
    });
    let full = bench.step(bench.request("probe", "true", true, 60)).await;
    let files = run_files(Path::new(&full.log_paths.run_dir));
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for i in 0..n(100) {
        ours.push(bench.timed_step("probe", "true", true).await);
        native.push(
            write_like(&scratch.join(format!("full-{i}")), &files, true)
                + spawn_direct("git", &["diff", "HEAD"], &repo),
        );
    }
    rows.push(Row {
        metric: "full per-step overhead: run dir, metadata, logs, 4 checkpoints, result (records fsynced)".into(),
        unit: "µs",
        ours: Stats::of(ours),
        native: Stats::of(native),
        baseline: "same files + one `git diff HEAD`",
        target: Target::None,
    });

    // 4. git status / git diff through the kinds vs spawned directly, and
    // what each further subprocess costs.
    measure_git_kinds(bench, rows).await;
    measure_subprocess_cost(bench, rows).await;

    // 5. Output streaming into the run logs vs a plain pipe.
    let bytes: u64 = 32 * 1024 * 1024;
    let cmd = format!("head -c {bytes} /dev/zero");
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for _ in 0..n(10) {
        let us = bench.timed_step_on(&bench.fast, "shell", &cmd, false).await;
        ours.push(bytes as f64 / us);
        let us = time(|| {
            let mut child = std::process::Command::new("head")
                .args(["-c", &bytes.to_string(), "/dev/zero"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let copied =
                std::io::copy(child.stdout.as_mut().unwrap(), &mut std::io::sink()).unwrap();
            child.wait().unwrap();
            assert_eq!(copied, bytes);
        })
        .0;
        native.push(bytes as f64 / us);
    }
    rows.push(Row {
        metric: "stdout streaming into the run logs (32 MiB via the shell kind)".into(),
        unit: "MB/s",
        ours: Stats::of(ours),
        native: Stats::of(native),
        baseline: "the same command into a plain pipe",
        target: Target::RatioAtLeast(0.7),
    });

    // 6. WASI file operations in the worktree vs native.
    let mut guest = vec![Vec::new(); 4];
    let mut host = vec![Vec::new(); 4];
    for _ in 0..n(20) {
        let result = bench
            .step(bench.request("probe", "fsops 500", false, 60))
            .await;
        assert!(result.ok, "{}", result.summary);
        for (i, v) in fs_ops_guest(&result).into_iter().enumerate() {
            guest[i].push(v);
        }
        for (i, v) in fs_ops_native(&scratch, 500).into_iter().enumerate() {
            host[i].push(v);
        }
    }
    for (i, name) in [
        "write (create 256 B)",
        "open + read",
        "stat",
        "readdir of 500",
    ]
    .iter()
    .enumerate()
    {
        rows.push(Row {
            metric: format!("WASI file op: {name}"),
            unit: "µs",
            ours: Stats::of(guest[i].clone()),
            native: Stats::of(host[i].clone()),
            baseline: "the same operation natively",
            target: Target::None,
        });
    }

    // 7. Timeout precision: how long after the deadline the step is over
    // and a looping guest / a sleeping child is gone.
    for (kind, command, what) in [
        ("probe", "loop", "a looping guest"),
        ("shell", "sleep 30", "a sleeping child"),
    ] {
        let (mut ours, mut native) = (Vec::new(), Vec::new());
        for _ in 0..n(5).max(3) {
            let request = serde_json::from_value(bench.request(kind, command, false, 1)).unwrap();
            let (us, result) = time_async(bench.fast.run(request, None)).await;
            let result = result.unwrap();
            assert!(!result.ok);
            ours.push(us / 1000.0 - 1000.0);
            let (us, ()) = time_async(async {
                let mut child = tokio::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                child.kill().await.unwrap();
            })
            .await;
            native.push(us / 1000.0 - 1000.0);
        }
        rows.push(Row {
            metric: format!("timeout: {what} gone after the deadline"),
            unit: "ms",
            ours: Stats::of(ours),
            native: Stats::of(native),
            baseline: "tokio timeout + kill of a child",
            target: Target::P99AtMost(20.0),
        });
    }

    // 8. A new step's latency while 8 CPU-bound steps run.
    let mut loops = Vec::new();
    for _ in 0..8 {
        let request = serde_json::from_value(bench.request("probe", "loop", false, 8)).unwrap();
        let runner = bench.runner.clone();
        loops.push(tokio::spawn(async move { runner.run(request, None).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut loaded = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until && loaded.len() < n(200) {
        loaded.push(
            bench
                .timed_step_on(&bench.fast, "probe", "true", false)
                .await,
        );
    }
    for l in loops {
        let _ = l.await;
    }
    rows.push(Row {
        metric: "new-step latency under 8 CPU-bound steps (process-crash)".into(),
        unit: "µs",
        ours: Stats::of(loaded),
        native: empty_fast,
        baseline: "the same step with no load",
        target: Target::P99AtMost(5000.0),
    });

    // 9. Throughput on 2 cores.
    measure_throughput(bench, rows).await;

    // 10. Memory: RSS per idle concurrent step (its guest waits on a child),
    // and RSS drift over many steps.
    let idle = 50;
    let before = rss_kib();
    let mut waiting = Vec::new();
    for _ in 0..idle {
        let request =
            serde_json::from_value(bench.request("probe", "sh sleep 3", false, 30)).unwrap();
        let runner = bench.runner.clone();
        waiting.push(tokio::spawn(async move { runner.run(request, None).await }));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = rss_kib();
    for w in waiting {
        let _ = w.await;
    }
    let native_before = rss_kib();
    let mut children = Vec::new();
    for _ in 0..idle {
        let mut child = tokio::process::Command::new("sleep")
            .arg("2")
            .spawn()
            .unwrap();
        children.push(tokio::spawn(async move { child.wait().await }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let native_during = rss_kib();
    for c in children {
        let _ = c.await;
    }
    rows.push(Row {
        metric: format!("RSS per idle concurrent step ({idle} waiting on a child)"),
        unit: "KB",
        ours: Stats::one(((during - before) / idle as f64).max(0.0)),
        native: Stats::one(((native_during - native_before) / idle as f64).max(1.0)),
        baseline: "a task waiting on a spawned child",
        target: Target::P50AtMost(64.0),
    });

    let steps = n(10_000);
    let warmup = steps / 10;
    let mut at_warm = 0.0;
    for i in 0..steps {
        if i == warmup {
            at_warm = rss_kib();
        }
        let request = serde_json::from_value(bench.request("probe", "true", false, 60)).unwrap();
        let result = bench.fast.run(request, None).await.unwrap();
        assert!(result.ok);
    }
    let drift = rss_kib() - at_warm;
    rows.push(Row {
        metric: format!("RSS drift over {steps} empty steps (after {warmup}, process-crash)"),
        unit: "KB",
        ours: Stats::one(drift.max(0.0)),
        native: Stats::one(at_warm),
        baseline: "RSS after the warm-up",
        target: Target::P50AtMost(1024.0),
    });
}

/// `git status` and `git diff` through the shell and git kinds vs the same
/// git spawned directly.
async fn measure_git_kinds(bench: &Bench, rows: &mut Vec<Row>) {
    let repo = bench.sandbox.repo.clone();
    for (kind, command, args, target) in [
        (
            "shell",
            "git status",
            &["status"][..],
            Target::RatioAtMost(1.10),
        ),
        ("git", "status", &["status"][..], Target::RatioAtMost(2.0)),
        ("shell", "git diff", &["diff"][..], Target::None),
        ("git", "diff", &["diff"][..], Target::None),
    ] {
        let (mut ours, mut native) = (Vec::new(), Vec::new());
        for _ in 0..n(100) {
            ours.push(bench.timed_step_on(&bench.fast, kind, command, false).await);
            native.push(spawn_direct("git", args, &repo));
        }
        rows.push(Row {
            metric: format!("`git {}` through the {kind} kind", args[0]),
            unit: "µs",
            ours: Stats::of(ours),
            native: Stats::of(native),
            baseline: "the same git spawned directly",
            target,
        });
    }
}

/// What each further subprocess of a step costs: a probe step spawning
/// `/bin/true` 21 times against one spawning it once, per extra process,
/// vs `/bin/true` spawned directly.
async fn measure_subprocess_cost(bench: &Bench, rows: &mut Vec<Row>) {
    let extra = 20;
    let many = vec!["spawn true"; extra + 1].join("\n");
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for _ in 0..n(30) {
        let one = bench
            .timed_step_on(&bench.fast, "probe", "spawn true", false)
            .await;
        let all = bench
            .timed_step_on(&bench.fast, "probe", &many, false)
            .await;
        ours.push((all - one) / extra as f64);
        native.push(spawn_direct("true", &[], &bench.sandbox.repo));
    }
    rows.push(Row {
        metric: "per extra subprocess in a step (21 vs 1 `/bin/true` through the probe)".into(),
        unit: "µs",
        ours: Stats::of(ours),
        native: Stats::of(native),
        baseline: "/bin/true spawned directly",
        target: Target::P50AtMost(1000.0),
    });
}

/// Steps per second on 2 cores, 4 in flight, against bare spawns.
async fn measure_throughput(bench: &Bench, rows: &mut Vec<Row>) {
    let total = n(600);
    let steps_per_sec = |command: &'static str| async move {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let bench_runner = bench.fast.clone();
        let requests: Vec<Value> = (0..total)
            .map(|_| bench.request("probe", command, false, 60))
            .collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        for request in requests {
            let runner = bench_runner.clone();
            let permit = sem.clone().acquire_owned().await.unwrap();
            tasks.spawn(async move {
                let request = serde_json::from_value(request).unwrap();
                let result = runner.run(request, None).await.unwrap();
                drop(permit);
                assert!(result.ok, "{}", result.summary);
            });
        }
        while tasks.join_next().await.is_some() {}
        total as f64 / t.elapsed().as_secs_f64()
    };
    let spawns_per_sec = || async move {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        for _ in 0..total {
            let permit = sem.clone().acquire_owned().await.unwrap();
            tasks.spawn(async move {
                let status = tokio::process::Command::new("/bin/true")
                    .status()
                    .await
                    .unwrap();
                drop(permit);
                assert!(status.success());
            });
        }
        while tasks.join_next().await.is_some() {}
        total as f64 / t.elapsed().as_secs_f64()
    };
    let empty_rate = steps_per_sec("true").await;
    let true_rate = steps_per_sec("spawn true").await;
    let spawn_rate = spawns_per_sec().await;
    rows.push(Row {
        metric: "throughput: empty steps, 4 in flight (process-crash)".into(),
        unit: "/s",
        ours: Stats::one(empty_rate),
        native: Stats::one(spawn_rate),
        baseline: "bare /bin/true spawns, 4 in flight",
        target: Target::None,
    });
    rows.push(Row {
        metric: "throughput: `/bin/true` steps, 4 in flight (process-crash)".into(),
        unit: "/s",
        ours: Stats::one(true_rate),
        native: Stats::one(spawn_rate),
        baseline: "bare /bin/true spawns, 4 in flight",
        target: Target::RatioAtLeast(0.8),
    });
}

/// A repository of `files` committed files, 100 per directory.
fn big_repo(root: &Path, files: usize) -> PathBuf {
    let repo = root.join(format!("repo-{files}"));
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "user.name", "Bench"]);
    git(&repo, &["config", "user.email", "bench@example.test"]);
    for i in 0..files {
        let dir = repo.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}.txt")), format!("{i}\n")).unwrap();
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "files"]);
    git(&repo, &["status", "--porcelain"]);
    // Written out before anything is measured: the steps are timed, not
    // the writeback of the files just made.
    rustix::fs::sync();
    repo
}

/// The worktree-size axis (issue 15): a `true` step on worktrees of 1k,
/// 50k and 200k files, the owner's `git status` before and after a step,
/// `git status` through the shell kind on a big tree, and the one-shot CLI.
async fn measure_worktrees(bench: &Bench, rows: &mut Vec<Row>) {
    let sizes: &[usize] = if quick() {
        &[1_000, 20_000]
    } else {
        &[1_000, 50_000, 200_000]
    };
    let root = bench.sandbox.dir.path().join("worktrees");
    let home = bench.sandbox.dir.path().join("git-home");
    std::fs::create_dir_all(&home).unwrap();
    let native_status = |repo: &Path| {
        time(|| {
            let out = std::process::Command::new("git")
                .args(["status", "--porcelain"])
                .current_dir(repo)
                .env("HOME", &home)
                .output()
                .unwrap();
            assert!(out.status.success());
        })
        .0
    };
    let step_on = |repo: &Path, command: &str, checkpoints: bool| {
        let mut request = bench.request("shell", command, checkpoints, 600);
        request["runtime"]["repoRoot"] = repo.display().to_string().into();
        request["runtime"]["worktreePath"] = repo.display().to_string().into();
        request
    };
    let mut smallest = None;
    for &files in sizes {
        let repo = big_repo(&root, files);
        let samples = if files > 10_000 { n(5) } else { n(20) };
        // One unmeasured step first, as for the other sizes' first sample.
        let warm = bench.step(step_on(&repo, "true", false)).await;
        assert!(warm.ok, "{}", warm.summary);
        let mut ours = Vec::new();
        for _ in 0..samples {
            let request = step_on(&repo, "true", false);
            let (us, result) = time_async(bench.step(request)).await;
            assert!(result.ok, "{}", result.summary);
            ours.push(us);
        }
        let ours = Stats::of(ours);
        let base = *smallest.get_or_insert(ours);
        rows.push(Row {
            metric: format!("`true` step (shell kind, no checkpoints), {files}-file worktree"),
            unit: "µs",
            ours,
            native: base,
            baseline: "the same step on a 1k-file worktree",
            target: if files == sizes[0] {
                Target::None
            } else {
                Target::RatioAtMost(1.2)
            },
        });
        if files != *sizes.last().unwrap() {
            continue;
        }
        // The owner's git status, warm, before and right after a step.
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for _ in 0..n(5) {
            native_status(&repo);
            before.push(native_status(&repo));
            let result = bench
                .step(step_on(&repo, "git status --porcelain", true))
                .await;
            assert!(result.ok, "{}", result.summary);
            after.push(native_status(&repo));
        }
        rows.push(Row {
            metric: format!("owner's `git status` right after a step, {files}-file worktree"),
            unit: "µs",
            ours: Stats::of(after),
            native: Stats::of(before),
            baseline: "the owner's git status before the step",
            target: Target::RatioAtMost(1.1),
        });
        let (mut ours, mut native) = (Vec::new(), Vec::new());
        for _ in 0..n(5) {
            let request = step_on(&repo, "git status --porcelain", false);
            let (us, result) = time_async(bench.step(request)).await;
            assert!(result.ok, "{}", result.summary);
            ours.push(us);
            native.push(native_status(&repo));
        }
        rows.push(Row {
            metric: format!("`git status` through the shell kind, {files}-file worktree"),
            unit: "µs",
            ours: Stats::of(ours),
            native: Stats::of(native),
            baseline: "the same git status spawned directly",
            target: Target::RatioAtMost(1.1),
        });
    }
    // The one-shot CLI: a whole `baa-runner run` of `git status` with
    // checkpoint capture on a small repository, against git status itself.
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/baa-runner");
    if !cli.exists() {
        eprintln!(
            "SKIPPED the one-shot CLI row: {} is not built",
            cli.display()
        );
        return;
    }
    let repo = big_repo(&root, 100);
    let (mut ours, mut native) = (Vec::new(), Vec::new());
    for i in 0..n(20) {
        let mut request = step_on(&repo, "git status", true);
        request["runId"] = format!("cli-{i}").into();
        let path = root.join(format!("cli-{i}.json"));
        std::fs::write(&path, serde_json::to_vec(&request).unwrap()).unwrap();
        ours.push(
            time(|| {
                let out = std::process::Command::new(&cli)
                    .args(["run", "--json"])
                    .arg(&path)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            })
            .0,
        );
        native.push(native_status(&repo));
    }
    let (ours, native) = (Stats::of(ours), Stats::of(native));
    rows.push(Row {
        metric: "one-shot CLI `baa-runner run` of `git status`, checkpoint capture, 100-file repo"
            .into(),
        unit: "µs",
        ours,
        native,
        baseline: "git status run directly (target: at most 30 ms more)",
        target: Target::P50AtMost(native.p50 + 30_000.0),
    });
}

struct KindLike {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    version: String,
    #[allow(dead_code)]
    programs: Vec<String>,
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} cores, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}

fn render(rows: &[Row]) -> String {
    let mut out = format!("Machine: {}\n\n", machine());
    out.push_str(
        "| metric | unit | baa p50 | p90 | p99 | native p50 | p90 | p99 | ratio | target | |\n",
    );
    out.push_str("| --- | --- | --: | --: | --: | --: | --: | --: | --: | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2}× | {} | {} |",
            r.metric,
            r.unit,
            fmt(r.ours.p50),
            fmt(r.ours.p90),
            fmt(r.ours.p99),
            fmt(r.native.p50),
            fmt(r.native.p90),
            fmt(r.native.p99),
            r.ratio(),
            r.target_text(),
            r.verdict()
        );
    }
    out.push_str("\nBaselines: ");
    let baselines: Vec<String> = rows
        .iter()
        .map(|r| format!("{} — {}", r.metric, r.baseline))
        .collect();
    out.push_str(&baselines.join("; "));
    out.push('\n');
    out
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench = Bench::new();
    let mut rows = Vec::new();
    // BAA_BENCH_ONLY=worktrees runs only the worktree-size axis.
    let only = std::env::var("BAA_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() {
        tokio.block_on(measure(&bench, &mut rows));
    }
    if only.is_empty() || only == "worktrees" {
        tokio.block_on(measure_worktrees(&bench, &mut rows));
    }
    // BAA_BENCH_ONLY=subprocesses: what launching costs.
    if only == "subprocesses" {
        tokio.block_on(async {
            measure_git_kinds(&bench, &mut rows).await;
            measure_subprocess_cost(&bench, &mut rows).await;
            measure_throughput(&bench, &mut rows).await;
        });
    }
    let table = render(&rows);
    println!("\n{table}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("overhead.md"), &table).unwrap();
    let json: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "metric": r.metric, "unit": r.unit, "baseline": r.baseline,
                "ours": { "p50": r.ours.p50, "p90": r.ours.p90, "p99": r.ours.p99 },
                "native": { "p50": r.native.p50, "p90": r.native.p90, "p99": r.native.p99 },
                "ratio": r.ratio(), "target": r.target_text(), "verdict": r.verdict(),
            })
        })
        .collect();
    std::fs::write(
        dir.join("overhead.json"),
        serde_json::to_string_pretty(&json!({ "machine": machine(), "rows": json })).unwrap(),
    )
    .unwrap();
    println!("written to {}", dir.join("overhead.md").display());
}
