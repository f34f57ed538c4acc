//! The `baa-runner` command line: run or prepare a step from a request file,
//! and list the worker kinds found.
//!
//! Exit codes: 0 the step completed (or was prepared), 1 it failed, 2 it is
//! blocked and needs a person, 3 the input (request, config, plugin
//! directory, arguments) is invalid, 4 the host itself failed.

mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use baa_runner::checkpoints::StepHistory;
use baa_runner::contracts::{StepExecutionOutcome, StepExecutionRequest, StepExecutionResult};
use baa_runner::{Error, Runner, RunnerConfig};
use clap::{Parser, Subcommand};

const EXIT_FAILED: u8 = 1;
const EXIT_BLOCKED: u8 = 2;
const EXIT_INVALID_INPUT: u8 = 3;
const EXIT_HOST_ERROR: u8 = 4;

#[derive(Parser)]
#[command(
    name = "baa-runner",
    version,
    about = "Run coding-agent steps inside a WebAssembly sandbox"
)]
struct Cli {
    /// Operator config file (TOML): plugin directories, grants per kind, limits.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Add a directory of third-party `<kind>.wasm` worker kinds (repeatable).
    #[arg(long = "plugins-dir", global = true, value_name = "DIR")]
    plugins_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare and execute a step; show live progress, then a summary.
    Run {
        /// Print exactly the StepExecutionResult JSON on stdout (progress goes to stderr).
        #[arg(long)]
        json: bool,
        /// Do not show live progress.
        #[arg(long, short)]
        quiet: bool,
        /// The StepExecutionRequest JSON file (`-` for stdin).
        request: PathBuf,
    },
    /// Only prepare a step: create its run directory, metadata, state and logs.
    Prepare {
        /// Print exactly the StepExecutionResult JSON (outcome `prepared`).
        #[arg(long)]
        json: bool,
        request: PathBuf,
    },
    /// List the worker kinds found: name, version, requested capabilities, file.
    Kinds {
        #[arg(long)]
        json: bool,
    },
    /// Start the next attempt of a request's step, resuming from checkpoint SEQ.
    Resume {
        /// The checkpoint to resume from (see `checkpoints list`).
        #[arg(long = "from", value_name = "SEQ")]
        from: u32,
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        quiet: bool,
        request: PathBuf,
    },
    /// List or show the checkpoints of a step.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// Scaffold a worker kind project that builds and passes `check` as is.
    New {
        /// The kind's name (also the `.wasm` file's name).
        name: String,
        /// The language of the project.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Show a plugin file's manifest, digest and interface (its code does
    /// not run).
    Inspect {
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
    /// Write a plugin's manifest section from its own `describe` (run once,
    /// in the sandbox, without capabilities).
    Stamp { file: PathBuf },
    /// Check a plugin as the host will use it, then run a trivial step of it
    /// in a scratch repository; exit 0 when nothing failed.
    Check {
        #[arg(long)]
        json: bool,
        /// The `command` of the conformance step.
        #[arg(long, default_value = "true")]
        command: String,
        file: PathBuf,
    },
    /// Show what this machine enforces on subprocesses and prove it: a
    /// process confined as KIND's are tries what it must not do. Exit 0 when
    /// every attempt came out as expected.
    Sandbox {
        #[arg(long)]
        json: bool,
        /// The worker kind whose grants the confined process gets.
        #[arg(long, default_value = "shell")]
        kind: String,
    },
    /// Print the JSON Schema of StepExecutionRequest and StepExecutionResult,
    /// or write them as files into DIR (the repository's `schema/`).
    Schema {
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Serve step requests over a Unix socket (newline-delimited JSON; see
    /// the README's "serve" section) until SIGINT or SIGTERM.
    Serve {
        /// The socket to listen on (created with mode 0600).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
    },
    /// Close attempts a stopped host left running: kill their processes and
    /// mark them interrupted (DIR: a runs root or any directory below it).
    Recover {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// Every checkpoint of the step: seq, attempt, type, time, summary.
    List {
        #[arg(long)]
        json: bool,
        /// A step directory, or one of its `attempt-<n>` directories.
        dir: PathBuf,
    },
    /// One checkpoint with its payload (a git-diff shows the patch).
    Show {
        #[arg(long)]
        json: bool,
        dir: PathBuf,
        seq: u32,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` and the like ends quietly, as for any CLI.
    // SAFETY: restoring the default action of SIGPIPE at start-up, before
    // any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_INVALID_INPUT
            } else {
                0
            });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BAA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let invalid = e
                .downcast_ref::<Error>()
                .is_some_and(Error::is_invalid_input)
                || e.downcast_ref::<InvalidInput>().is_some();
            eprintln!("baa-runner: error: {e:#}");
            ExitCode::from(if invalid {
                EXIT_INVALID_INPUT
            } else {
                EXIT_HOST_ERROR
            })
        }
    }
}

/// An input problem found by the CLI itself (unreadable or malformed file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidInput(String);

fn read_request(path: &Path) -> anyhow::Result<StepExecutionRequest> {
    use std::io::Read;
    let limit = baa_runner::contracts::MAX_REQUEST_BYTES as u64;
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
    };
    let name = if path == Path::new("-") {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    read.map_err(|e| InvalidInput(format!("cannot read request file {name}: {e}")))?;
    baa_runner::contracts::parse_request(&bytes).map_err(|e| {
        InvalidInput(format!(
            "request file {name} is not a valid StepExecutionRequest: {e}"
        ))
        .into()
    })
}

fn runner(cli: &Cli) -> anyhow::Result<Runner> {
    let mut config = match &cli.config {
        Some(path) => RunnerConfig::from_file(path)?,
        None => RunnerConfig::default(),
    };
    config.plugin_dirs.extend(cli.plugins_dirs.iter().cloned());
    // Every command but `serve` executes at most one step: the engine
    // reserves instance slots for that one, not for a server's thousand.
    if !matches!(cli.command, Command::Serve { .. }) {
        config.concurrency.max_steps = 1;
    }
    Ok(Runner::new(config)?)
}

fn exit_code(result: &StepExecutionResult) -> u8 {
    match result.outcome {
        StepExecutionOutcome::Completed | StepExecutionOutcome::Prepared => 0,
        StepExecutionOutcome::Failed => EXIT_FAILED,
        StepExecutionOutcome::Blocked => EXIT_BLOCKED,
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A step directory from a step directory or one of its attempts.
fn step_dir_of(dir: &Path) -> PathBuf {
    let is_attempt = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("attempt-"));
    match dir.parent() {
        Some(parent) if is_attempt => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

fn run_request(
    runner: &Runner,
    request: StepExecutionRequest,
    json: bool,
    quiet: bool,
) -> anyhow::Result<u8> {
    let observer = (!quiet).then(|| render::live_observer(json));
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Ctrl-C or SIGTERM cancels the step: its processes are stopped and its
    // record says `interrupted`.
    let result = tokio.block_on(async {
        let prepared = runner.prepare(request, observer)?;
        let cancel = cancelled_on_signal()?;
        anyhow::Ok(runner.execute_with(prepared, &cancel).await?)
    })?;
    if json {
        print_json(&result)?;
    } else {
        render::summary(&result);
    }
    Ok(exit_code(&result))
}

/// A token cancelled at the first SIGINT or SIGTERM (within a runtime).
fn cancelled_on_signal() -> anyhow::Result<baa_runner::CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = baa_runner::CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let stop = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        stop.cancel();
    });
    Ok(token)
}

fn real_main(cli: Cli) -> anyhow::Result<u8> {
    let runner = runner(&cli)?;
    match &cli.command {
        Command::Run {
            json,
            quiet,
            request,
        } => {
            let request = read_request(request)?;
            run_request(&runner, request, *json, *quiet)
        }
        Command::Resume {
            from,
            json,
            quiet,
            request,
        } => {
            let mut request = read_request(request)?;
            request.attempt = runner.next_attempt(&request)?;
            request
                .checkpoint
                .get_or_insert_with(Default::default)
                .resume_from_seq = Some(*from);
            run_request(&runner, request, *json, *quiet)
        }
        Command::Checkpoints { command } => {
            match command {
                CheckpointsCommand::List { json, dir } => {
                    let history = StepHistory::load(&step_dir_of(dir), 0);
                    if *json {
                        print_json(&history.records)?;
                    } else {
                        render::checkpoints(&history);
                    }
                }
                CheckpointsCommand::Show { json, dir, seq } => {
                    let step_dir = step_dir_of(dir);
                    let checkpoint =
                        StepHistory::load(&step_dir, 0).resume_from(&step_dir, *seq)?;
                    if *json {
                        print_json(&checkpoint.record)?;
                    } else {
                        render::checkpoint(&checkpoint);
                    }
                }
            }
            Ok(0)
        }
        Command::Schema { write } => {
            for (name, schema) in baa_runner::contracts::schema::all() {
                let text = baa_runner::contracts::schema::render(&schema);
                match write {
                    Some(dir) => {
                        let path = dir.join(name);
                        std::fs::write(&path, text)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        println!("wrote {}", path.display());
                    }
                    None => print!("{text}"),
                }
            }
            Ok(0)
        }
        Command::Serve { socket } => {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            tokio.block_on(async {
                let shutdown = cancelled_on_signal()?;
                eprintln!("baa-runner: serving on {}", socket.display());
                baa_runner::serve::serve(runner.clone(), socket, shutdown).await?;
                anyhow::Ok(0)
            })
        }
        Command::Recover { json, dir } => {
            let report = runner.recover(dir);
            if *json {
                print_json(&report)?;
            } else {
                render::recovery(&report);
            }
            Ok(if report.errors.is_empty() {
                0
            } else {
                EXIT_HOST_ERROR
            })
        }
        Command::Prepare { json, request } => {
            let request = read_request(request)?;
            let prepared = runner.prepare(request, None)?;
            let result = runner.finish_prepared(prepared)?;
            if *json {
                print_json(&result)?;
            } else {
                println!("prepared {}", result.log_paths.run_dir);
            }
            Ok(0)
        }
        Command::New { name, lang, dir } => {
            let project = baa_runner::scaffold::new_project(name, lang, dir)
                .map_err(|e| InvalidInput(format!("cannot create the project: {e}")))?;
            println!(
                "created {}; see its README.md to build, stamp and check it",
                project.display()
            );
            Ok(0)
        }
        Command::Inspect { json, file } => {
            let inspection = runner.inspect(file);
            if *json {
                print_json(&inspection)?;
            } else {
                render::inspection(&inspection);
            }
            Ok(if inspection.error.is_some() {
                EXIT_INVALID_INPUT
            } else {
                0
            })
        }
        Command::Stamp { file } => {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let manifest = tokio
                .block_on(runner.stamp(file))
                .map_err(|e| InvalidInput(format!("cannot stamp {}: {e}", file.display())))?;
            println!(
                "stamped {}: {} {} for {}",
                file.display(),
                manifest.name,
                manifest.version,
                manifest.world
            );
            Ok(0)
        }
        Command::Check {
            json,
            command,
            file,
        } => {
            let tokio = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = tokio.block_on(runner.check(file, command));
            if *json {
                print_json(&report)?;
            } else {
                render::check(&report);
            }
            Ok(if report.passed { 0 } else { EXIT_FAILED })
        }
        Command::Sandbox { json, kind } => {
            let report = runner
                .sandbox_self_test(kind)
                .map_err(|e| anyhow::anyhow!("the sandbox self-test could not run: {e}"))?;
            if *json {
                print_json(&report)?;
            } else {
                render::self_test(&report);
            }
            Ok(if report.confined { 0 } else { EXIT_FAILED })
        }
        Command::Kinds { json } => {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let kinds = tokio.block_on(runner.list_kinds());
            if *json {
                print_json(&kinds)?;
            } else {
                render::kinds(&kinds);
            }
            Ok(0)
        }
    }
}
