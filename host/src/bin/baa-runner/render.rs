//! How the CLI shows a step to a person: live events and output as they
//! happen, then a readable summary. Control characters from workers are
//! shown escaped, never sent raw to the terminal.

use std::io::Write;
use std::sync::Arc;

use baa_runner::checkpoints::{Resume, StepHistory};
use baa_runner::contracts::{EventLevel, StepExecutionOutcome, StepExecutionResult};
use baa_runner::logs::{LiveUpdate, Observer, Stream};
use baa_runner::run::recover::RecoveryReport;
use baa_runner::run::KindInfo;

/// Replace terminal control characters (escape sequences, carriage returns,
/// bells, …) with visible escapes; keep newlines and tabs.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// An observer printing events and output live: to stdout, or to stderr
/// when stdout is reserved for JSON.
pub fn live_observer(to_stderr: bool) -> Observer {
    Arc::new(move |update: LiveUpdate<'_>| {
        let mut out: Box<dyn Write> = if to_stderr {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        };
        let _ = match update {
            LiveUpdate::Event(entry) => {
                let marker = match entry.level {
                    EventLevel::Error => "✗",
                    EventLevel::Warn => "!",
                    _ => "▸",
                };
                let time = entry.timestamp.get(11..23).unwrap_or(&entry.timestamp);
                writeln!(
                    out,
                    "{marker} {time} {:<20} {}",
                    entry.event,
                    sanitize(entry.message.lines().next().unwrap_or(""))
                )
            }
            LiveUpdate::Output(stream, bytes) => {
                let text = sanitize(&String::from_utf8_lossy(bytes));
                match stream {
                    Stream::Stdout => write!(out, "{text}"),
                    Stream::Stderr => write!(
                        out,
                        "{}",
                        text.lines()
                            .map(|l| format!("  stderr| {l}\n"))
                            .collect::<String>()
                    ),
                }
            }
        };
        let _ = out.flush();
    })
}

/// The closing summary of a run.
pub fn summary(result: &StepExecutionResult) {
    let verdict = match result.outcome {
        StepExecutionOutcome::Completed => "COMPLETED",
        StepExecutionOutcome::Failed => "FAILED",
        StepExecutionOutcome::Blocked => "BLOCKED (needs a person)",
        StepExecutionOutcome::Prepared => "PREPARED",
    };
    println!();
    println!(
        "── {} · {} · {} ──",
        result.worker_kind, result.step_id, verdict
    );
    println!("{}", sanitize(&result.summary));
    if let Some(code) = result.state.exit_code {
        println!("exit code: {code}");
    }
    if let Some(failure) = &result.state.failure {
        println!(
            "reason: {}",
            serde_json::to_value(failure.reason)
                .map(|v| v.as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        );
    }
    println!(
        "took {} ms · {} events · {} stdout / {} stderr chunks · {} checkpoint(s)",
        result.metrics.duration_ms,
        result.metrics.lifecycle_event_count,
        result.metrics.stdout_chunk_count,
        result.metrics.stderr_chunk_count,
        result.metrics.checkpoint_count
    );
    for artifact in result
        .artifacts
        .iter()
        .filter(|a| a.kind == baa_runner::contracts::StepArtifactKind::Artifact)
    {
        println!("artifact {}: {}", artifact.name, artifact.path);
    }
    for followup in &result.suggested_followup {
        println!(
            "suggested next: {} ({}): {}",
            followup.step_name,
            followup.step_kind,
            sanitize(&followup.reason)
        );
    }
    println!("run directory: {}", result.log_paths.run_dir);
}

/// The worker kinds table.
pub fn kinds(kinds: &[KindInfo]) {
    for kind in kinds {
        match &kind.error {
            None => {
                println!(
                    "{} {} — {}",
                    kind.name,
                    kind.version,
                    sanitize(&kind.description)
                );
                println!(
                    "    programs: [{}] · env: [{}] · network: {}",
                    kind.capabilities.programs.join(", "),
                    kind.capabilities.env.join(", "),
                    kind.capabilities.network
                );
            }
            Some(error) => println!("{} — cannot be loaded: {}", kind.name, sanitize(error)),
        }
        println!(
            "    file: {}{}",
            kind.source,
            if kind.shadowed {
                " (shadowed by an earlier kind of the same name)"
            } else {
                ""
            }
        );
    }
}

/// The checkpoints of a step, one line each.
pub fn checkpoints(history: &StepHistory) {
    if history.records.is_empty() {
        println!("no checkpoints");
    }
    for r in &history.records {
        println!(
            "{:>4}  attempt {:<3} {:<10} {}  {}",
            r.seq,
            r.attempt,
            r.checkpoint_type.as_str(),
            r.created_at,
            sanitize(r.summary.lines().next().unwrap_or(""))
        );
    }
    for why in &history.corrupt {
        println!("! corrupt: {}", sanitize(why));
    }
}

/// One checkpoint and its payload.
pub fn checkpoint(checkpoint: &Resume) {
    let r = &checkpoint.record;
    println!(
        "checkpoint {} · {} · attempt {} · {}",
        r.seq, r.checkpoint_type, r.attempt, r.created_at
    );
    println!("{}", sanitize(&r.summary));
    println!("record: {}", r.path);
    if let Some(details) = &r.details {
        if let Some(files) = details["files"].as_array() {
            for file in files {
                println!(
                    "  {} {}",
                    file["status"].as_str().unwrap_or("?"),
                    sanitize(file["path"].as_str().unwrap_or(""))
                );
            }
        }
        if let Some(stat) = details["stat"].as_str() {
            print!("{}", sanitize(stat));
        }
    }
    if let Some(payload) = &checkpoint.payload {
        println!("── payload ({} bytes) ──", payload.len());
        print!("{}", sanitize(&String::from_utf8_lossy(payload)));
        if !payload.ends_with(b"\n") {
            println!();
        }
    }
}

/// What a recovery pass did.
pub fn recovery(report: &RecoveryReport) {
    for run in &report.recovered {
        println!(
            "recovered {} (latest valid checkpoint {})",
            run.run_dir, run.last_checkpoint_seq
        );
    }
    for dir in &report.live {
        println!("still running (left alone): {dir}");
    }
    for error in &report.errors {
        println!("! {}", sanitize(error));
    }
    if report.recovered.is_empty() && report.live.is_empty() && report.errors.is_empty() {
        println!("nothing to recover");
    }
}

/// `baa-runner sandbox`: what the kernel offers, then each attempt.
pub fn self_test(report: &baa_runner::capabilities::subprocess::confinement::SelfTest) {
    let p = &report.probe;
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!(
        "kernel: Landlock ABI {} (TCP rules: {}, signal scoping: {}), seccomp: {}, openat2: {}",
        p.landlock_abi,
        yes(p.landlock_tcp),
        yes(p.landlock_scopes),
        yes(p.seccomp),
        yes(p.openat2)
    );
    let c = &report.confinement;
    println!(
        "subprocesses: user {} {}, network {}, landlock {}",
        c["user"]["mode"].as_str().unwrap_or("?"),
        c["user"]["uid"],
        c["network"],
        c["landlock"].as_str().unwrap_or("?"),
    );
    println!(
        "worktree view: {}{}; process bound: {} (max {})",
        c["worktreeView"].as_str().unwrap_or("?"),
        match &report.view_fallback {
            Some(why) => format!(" (no idmapped mount: {why})"),
            None => String::new(),
        },
        c["processBound"]["mode"].as_str().unwrap_or("?"),
        c["processBound"]["max"],
    );
    for check in &report.checks {
        println!(
            "  {} {:<40} expected {:<8} got {}",
            if check.ok { "ok  " } else { "FAIL" },
            check.name,
            check.expected,
            check.outcome
        );
    }
    if report.confined {
        println!("verdict: confined");
    } else {
        let failed = report.checks.iter().filter(|c| !c.ok).count();
        println!("verdict: NOT CONFINED ({failed} attempt(s) not as expected)");
    }
}

/// `baa-runner inspect`.
pub fn inspection(i: &baa_runner::run::author::Inspection) {
    println!("{} ({} bytes)", i.file, i.size);
    println!("  sha256    {}", i.sha256);
    match &i.manifest {
        Some(m) => {
            println!("  manifest  {} {} for {}", m.name, m.version, m.world);
            if !m.description.is_empty() {
                println!("            {}", m.description);
            }
            println!(
                "  requests  programs {:?}, env {:?}, network {}",
                m.capabilities.programs, m.capabilities.env, m.capabilities.network
            );
        }
        None => println!("  manifest  none (add one with `baa-runner stamp`)"),
    }
    if let Some(world) = &i.world {
        println!("  exports   {world}");
    }
    if !i.imports.is_empty() {
        println!("  imports   {}", i.imports.join(", "));
    }
    if let Some(compiled) = &i.compiled {
        println!("  code      {compiled}");
    }
    if let Some(error) = &i.error {
        println!("  error     {error}");
    }
}

/// `baa-runner check`.
pub fn check(report: &baa_runner::run::author::CheckReport) {
    println!("{}", report.file);
    for item in &report.items {
        println!("  {:<4} {}: {}", item.level, item.name, item.detail);
    }
    if let Some(r) = &report.requests {
        println!(
            "  requests programs {:?}, env {:?}, network {}",
            r.programs, r.env, r.network
        );
    }
    println!("verdict: {}", if report.passed { "PASS" } else { "FAIL" });
}
