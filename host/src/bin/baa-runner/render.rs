//! How the CLI shows results to a person: a step's summary, kinds,
//! checkpoints, reports. Control characters from workers are shown
//! escaped, never sent raw to the terminal.

use std::io::Write;

use baa_runner::checkpoints::{Resume, StepHistory};
use baa_runner::contracts::{StepExecutionOutcome, StepExecutionResult};
use baa_runner::run::recover::RecoveryReport;
use baa_runner::run::{AttemptState, DryRun, KindInfo};

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

/// Colours for a person's terminal, or none (piped, `NO_COLOR`, `--color
/// never`).
#[derive(Debug, Clone, Copy)]
pub struct Paint(bool);

impl Paint {
    pub fn new(enabled: bool) -> Self {
        Paint(enabled)
    }

    pub fn enabled(self) -> bool {
        self.0
    }

    fn style(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn dim(self, text: &str) -> String {
        self.style("2", text)
    }
    pub fn bold(self, text: &str) -> String {
        self.style("1", text)
    }
    pub fn red(self, text: &str) -> String {
        self.style("31", text)
    }
    pub fn green(self, text: &str) -> String {
        self.style("32", text)
    }
    pub fn yellow(self, text: &str) -> String {
        self.style("33", text)
    }
    pub fn cyan(self, text: &str) -> String {
        self.style("36", text)
    }
}

/// The closing summary of a run, on stdout; a closed stdout is not an
/// error (the step's records are written already).
pub fn summary(result: &StepExecutionResult, paint: Paint) {
    let _ = write_summary(&mut std::io::stdout().lock(), result, paint);
}

fn write_summary(
    out: &mut impl Write,
    result: &StepExecutionResult,
    paint: Paint,
) -> std::io::Result<()> {
    let verdict = match result.outcome {
        StepExecutionOutcome::Completed => paint.green("COMPLETED"),
        StepExecutionOutcome::Failed => paint.red("FAILED"),
        StepExecutionOutcome::Blocked => paint.yellow("BLOCKED (needs a person)"),
        StepExecutionOutcome::Prepared => "PREPARED".to_string(),
    };
    writeln!(out)?;
    writeln!(
        out,
        "── {} · {} · attempt {} · {} ──",
        sanitize(result.worker_kind.as_str()),
        sanitize(&result.step_id),
        result.attempt,
        paint.bold(&verdict)
    )?;
    writeln!(out, "{}", sanitize(&result.summary))?;
    if let Some(code) = result.state.exit_code {
        writeln!(out, "exit code: {code}")?;
    }
    if let Some(failure) = &result.state.failure {
        let reason = serde_json::to_value(failure.reason).unwrap_or_default();
        writeln!(out, "reason: {}", reason.as_str().unwrap_or(""))?;
    }
    writeln!(
        out,
        "took {} ms · {} events · {} stdout / {} stderr chunks · {} checkpoint(s)",
        result.metrics.duration_ms,
        result.metrics.lifecycle_event_count,
        result.metrics.stdout_chunk_count,
        result.metrics.stderr_chunk_count,
        result.metrics.checkpoint_count
    )?;
    for artifact in result
        .artifacts
        .iter()
        .filter(|a| a.kind == baa_runner::contracts::StepArtifactKind::Artifact)
    {
        writeln!(
            out,
            "artifact {}: {}",
            sanitize(&artifact.name),
            sanitize(&artifact.path)
        )?;
    }
    for followup in &result.suggested_followup {
        writeln!(
            out,
            "suggested next: {} ({}): {}",
            sanitize(&followup.step_name),
            followup.step_kind,
            sanitize(&followup.reason)
        )?;
    }
    writeln!(out, "run directory: {}", result.log_paths.run_dir)?;
    out.flush()
}

/// The worker kinds table: what each requests, what it is granted, and
/// what is missing (its steps would be blocked).
pub fn kinds(kinds: &[KindInfo], paint: Paint) {
    for kind in kinds {
        kind_lines(kind, paint);
    }
}

fn kind_lines(kind: &KindInfo, paint: Paint) {
    let list = |items: &[String]| sanitize(&items.join(", "));
    match &kind.error {
        None => {
            println!(
                "{} {} — {}",
                paint.bold(&kind.name),
                sanitize(&kind.version),
                sanitize(&kind.description)
            );
            let asks = &kind.capabilities;
            println!(
                "    requests: programs [{}] · env [{}] · network {}",
                list(&asks.programs),
                list(&asks.env),
                asks.network
            );
            let g = &kind.granted;
            println!(
                "    granted:  programs [{}] · env [{}] · network {}",
                list(&g.programs),
                list(&g.env),
                match (g.network, g.unrestricted_tcp) {
                    (false, _) => "false".to_string(),
                    (true, true) => "any TCP port".to_string(),
                    (true, false) => format!(
                        "TCP ports [{}]",
                        g.tcp_connect
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            );
            let m = &kind.missing;
            if m.is_empty() {
                println!("    missing:  {}", paint.green("nothing (its steps run)"));
            } else {
                let mut wanted = Vec::new();
                if !m.programs.is_empty() {
                    wanted.push(format!("programs [{}]", list(&m.programs)));
                }
                if !m.env.is_empty() {
                    wanted.push(format!("env [{}]", list(&m.env)));
                }
                if m.network {
                    wanted.push("network".to_string());
                }
                println!(
                    "    missing:  {} {} (its steps are blocked; add them under [kinds.{}] in the config)",
                    paint.yellow("!"),
                    wanted.join(" · "),
                    kind.name
                );
            }
        }
        Some(error) => println!(
            "{} — {}: {}",
            paint.bold(&kind.name),
            paint.red("cannot be loaded"),
            sanitize(error)
        ),
    }
    println!(
        "    file: {}{}",
        sanitize(&kind.source),
        if kind.shadowed {
            " (shadowed by an earlier kind of the same name)"
        } else {
            ""
        }
    );
}

/// What `run --dry-run` found.
pub fn dry_run(report: &DryRun, paint: Paint) {
    let attempt = match report.attempt_state {
        AttemptState::Free => "free".to_string(),
        AttemptState::Prepared => "prepared (run executes it)".to_string(),
        AttemptState::Taken => paint.yellow("already ran: use --next-attempt"),
    };
    println!("request: valid");
    println!("attempt {}: {attempt}", report.attempt);
    println!("run directory: {}", report.run_dir);
    kind_lines(&report.kind, paint);
    println!(
        "{}",
        if report.ready {
            paint.green("ready: nothing was written")
        } else {
            paint.yellow("not ready: nothing was written")
        }
    );
}

/// The checkpoints of a step, one line each.
pub fn checkpoints(history: &StepHistory) {
    if history.records.is_empty() {
        println!("no checkpoints yet");
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
        match run.last_checkpoint_seq {
            0 => println!("recovered {} (no valid checkpoint)", run.run_dir),
            seq => println!("recovered {} (latest valid checkpoint {seq})", run.run_dir),
        }
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
    let c = &serde_json::to_value(&report.confinement).unwrap_or_default();
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
