//! `worker`, `submit` and `cluster status`: this host as one of many pulling
//! steps from NATS JetStream, and a conductor's command line to the queue.
//! `submit` answers as `run` does: the same output, JSON and exit codes.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use baa_runner::cluster::client::CANCELLED;
use baa_runner::cluster::{Cluster, ClusterError, Worker};
use baa_runner::config::ClusterSettings;
use baa_runner::logs::LiveUpdate;
use baa_runner::{Runner, StepEventBody};

use crate::live::{LiveView, Verbosity};
use crate::step::{cancelled_on_signal, exit_after, runtime};
use crate::{render, InvalidInput, Streams};

/// Where the cluster is when neither `--nats` nor `[cluster] url` says.
const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The NATS server: `--nats`, else `[cluster] url`, else the local default.
pub fn url(flag: Option<&str>, settings: &ClusterSettings) -> String {
    flag.map(str::to_owned)
        .or_else(|| settings.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// `baa-runner worker`: serve until SIGINT or SIGTERM, then finish the
/// steps running here (a second signal stops at once: their deliveries go
/// to other hosts).
pub fn worker(
    runner: &Runner,
    nats: Option<&str>,
    host_name: Option<&str>,
    kinds: &[String],
) -> anyhow::Result<u8> {
    let mut settings = runner.config().cluster.clone();
    if !kinds.is_empty() {
        settings.kinds = Some(kinds.to_vec());
    }
    let host = host_name
        .map(str::to_owned)
        .or_else(|| settings.host_name.clone())
        .unwrap_or_else(default_host_name);
    baa_runner::cluster::topology::check_token(&host)
        .map_err(|why| InvalidInput(format!("--host-name: {why}")))?;
    let url = url(nats, &settings);
    runtime()?.block_on(async {
        let connection = baa_runner::cluster::nats::Connection::open(&url).await?;
        let transport = baa_runner::cluster::nats::NatsTransport::new(connection, settings.clone());
        let worker = Worker::new(runner.clone(), Arc::new(transport), host.clone(), settings);
        let kinds = worker.preflight().await?;
        eprintln!("baa-runner: worker {host} serving {} from {url}", kinds.join(", "));
        let signal = Arc::new(AtomicI32::new(0));
        let stop = cancelled_on_signal(signal.clone())?;
        let mut serving = tokio::spawn(worker.serve(stop.clone()));
        tokio::select! {
            served = &mut serving => {
                served.context("the worker ended abnormally")??;
                return anyhow::Ok(0);
            }
            () = stop.cancelled() => {}
        }
        eprintln!("baa-runner: worker {host} stopping: finishing the steps running here (signal again to stop now)");
        let again = cancelled_on_signal(Arc::new(AtomicI32::new(0)))?;
        tokio::select! {
            served = serving => served.context("the worker ended abnormally")??,
            () = again.cancelled() => {}
        }
        anyhow::Ok(128 + signal.load(Ordering::SeqCst) as u8)
    })
}

fn default_host_name() -> String {
    let name = rustix::system::uname();
    let node = name.nodename().to_string_lossy();
    let node: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{node}-{}", std::process::id())
}

/// `baa-runner submit`: queue a request, wait for its answer (following
/// it live with `--watch`); Ctrl-C cancels it wherever it runs.
pub fn submit(
    nats: Option<&str>,
    settings: &ClusterSettings,
    request_path: &Path,
    json: bool,
    watch: bool,
    streams: Streams,
) -> anyhow::Result<u8> {
    let request = crate::read_request(request_path)?;
    let url = url(nats, settings);
    let title = format!("{} · {}", request.worker_kind, request.step_name);
    let paint = if json { streams.stderr } else { streams.stdout };
    let verbosity = if watch {
        Verbosity::Normal
    } else {
        Verbosity::Quiet
    };
    let view = LiveView::new(&title, json, verbosity, paint);
    let observer = view.observer();
    let signal = Arc::new(AtomicI32::new(0));
    let answer = runtime()?.block_on(async {
        let cluster = Cluster::connect(&url).await?;
        let mut step = cluster.start(&request).await?;
        if step.duplicate() {
            eprintln!("baa-runner: step {} was submitted before: following that submission", step.identity());
        }
        if !cluster.served(request.worker_kind.as_str()).await? {
            eprintln!(
                "baa-runner: waiting: no live worker serves kind `{}`; the step stays queued until one does (Ctrl-C cancels it)",
                request.worker_kind
            );
        }
        let cancel = cancelled_on_signal(signal.clone())?;
        let mut cancelled = false;
        loop {
            tokio::select! {
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    step.cancel().await?;
                }
                event = step.next_event() => match event? {
                    Some(event) => match &event.event.body {
                        StepEventBody::Lifecycle(entry) => observer(LiveUpdate::Event(entry)),
                        StepEventBody::Output { stream, bytes } => {
                            observer(LiveUpdate::Output(*stream, bytes))
                        }
                        StepEventBody::Finished(_) => {}
                    },
                    None => break,
                },
            }
        }
        anyhow::Ok(step.answer().await?)
    });
    view.finish();
    let answer = answer?;
    let result = match answer.reply {
        baa_runner::cluster::Reply::Result(result) => result,
        baa_runner::cluster::Reply::Error(error) if error.kind == CANCELLED => {
            eprintln!("baa-runner: {}", error.message);
            return Ok(match signal.load(Ordering::SeqCst) {
                0 => crate::exit::FAILED,
                signal => 128 + signal as u8,
            });
        }
        baa_runner::cluster::Reply::Error(error) => {
            return Err(ClusterError::Rejected(error).into());
        }
    };
    if json {
        let _ = crate::print_json(&result);
    } else {
        render::summary(&result, streams.stdout);
        let hosts: Vec<String> = answer
            .runs
            .iter()
            .map(|run| match run.end {
                Some(end) => format!("{} ({})", run.host, end.as_str()),
                None => run.host.clone(),
            })
            .collect();
        println!("hosts: {}", hosts.join(", "));
    }
    Ok(exit_after(&result, signal.load(Ordering::SeqCst)))
}

/// `baa-runner cluster status`: live hosts, their kinds and load, and each
/// kind's queue.
pub fn status(nats: Option<&str>, settings: &ClusterSettings, json: bool) -> anyhow::Result<u8> {
    let url = url(nats, settings);
    let status = runtime()?.block_on(async {
        let cluster = Cluster::connect(&url).await?;
        anyhow::Ok(cluster.status().await?)
    })?;
    if json {
        crate::print_json(&status)?;
        return Ok(0);
    }
    println!("hosts ({}):", status.hosts.len());
    for host in &status.hosts {
        let kinds: Vec<&str> = host["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
        println!(
            "  {:<24} running {}/{}  kinds {}",
            host["host"].as_str().unwrap_or("?"),
            host["running"],
            host["capacity"],
            kinds.join(", ")
        );
    }
    println!(
        "queue: {} step(s){}",
        status.queued,
        match &status.oldest_queued_at {
            Some(at) => format!(", oldest queued at {at}"),
            None => String::new(),
        }
    );
    for kind in &status.kinds {
        let served = match kind.hosts.len() {
            0 => "NO HOST SERVES IT".to_owned(),
            _ => format!("served by {}", kind.hosts.join(", ")),
        };
        let stuck = match kind.out_of_deliveries {
            0 => String::new(),
            n => format!(" out of deliveries {n} (unanswered: restart a worker to answer them)"),
        };
        println!(
            "  {:<16} waiting {:<5} running {:<5} redelivered {:<5} {served}{stuck}",
            kind.kind, kind.waiting, kind.running, kind.redelivered
        );
    }
    Ok(0)
}

/// Whether a cluster error is the caller's fault (exit 3) or not (4).
pub fn invalid(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ClusterError>()
        .is_some_and(ClusterError::is_invalid_input)
}
