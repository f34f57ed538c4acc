//! The `baa-runner` command line: run or prepare a step from a request file,
//! list the worker kinds found, author kinds, serve steps over a socket.
//! Exit codes are in [`exit`] and in `--help`.

#[cfg(feature = "cluster")]
mod cluster;
mod live;
mod render;
mod step;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use baa_runner::checkpoints::StepHistory;
use baa_runner::contracts::StepExecutionRequest;
use baa_runner::{Error, Runner, RunnerConfig};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use render::Paint;
use step::Attempt;

/// The process's exit codes.
pub mod exit {
    /// The step failed (`state.failure.reason` says why), or `check`/`sandbox` found a problem.
    pub const FAILED: u8 = 1;
    /// The step is blocked and needs a person (or `--dry-run`: it would be).
    pub const BLOCKED: u8 = 2;
    /// Bad input: the request, the config, a plugin, a path or the arguments.
    pub const INVALID_INPUT: u8 = 3;
    /// The host itself failed (e.g. the run directory could not be written).
    pub const HOST_ERROR: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0    the step completed (or was prepared); other commands: success
  1    the step failed (the result says why); check/sandbox found a problem
  2    the step is blocked and needs a person
  3    bad input: the request, the config, a plugin, a path or the arguments
  4    the host itself failed (e.g. the run directory could not be written)
  130  interrupted by Ctrl-C (143: SIGTERM); the step's records are written

Config: --config FILE, else $BAA_CONFIG, else $XDG_CONFIG_HOME/baa-runner/config.toml
(~/.config/…), else /etc/baa-runner/config.toml, else the built-in defaults.";

/// `baa-runner 0.1.0 (commit …, wasmtime …, worlds baa:worker@0.1.0 and …)`.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (commit {}, wasmtime {}, worlds {})",
        env!("CARGO_PKG_VERSION"),
        env!("BAA_COMMIT"),
        env!("BAA_WASMTIME_VERSION"),
        baa_runner::plugins::World::supported(),
    )
});

#[derive(Parser)]
#[command(
    name = "baa-runner",
    version = VERSION.as_str(),
    about = "Run coding-agent steps inside a WebAssembly sandbox",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Operator config file (TOML): plugin directories, grants per kind, limits.
    #[arg(long, global = true, value_name = "FILE", env = "BAA_CONFIG")]
    config: Option<PathBuf>,
    /// Add a directory of third-party `<kind>.wasm` worker kinds (repeatable).
    #[arg(long = "plugins-dir", global = true, value_name = "DIR")]
    plugins_dirs: Vec<PathBuf>,
    /// Colours: on a terminal unless NO_COLOR is set (auto), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// How `run` and `resume` show a step, and which attempt they take.
#[derive(Args)]
pub struct RunArgs {
    /// Print exactly the StepExecutionResult JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Show no live progress; only the summary (or the JSON).
    #[arg(long, short, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Show every event live, the host's own work and debug detail included.
    #[arg(long, short)]
    pub verbose: bool,
    /// Check the request, the attempt and the kind's grants; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The StepExecutionRequest JSON file (`-` for stdin).
    pub request: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare and execute a step; show live progress, then a summary.
    ///
    /// An attempt that `prepare` made is executed in place; one that already
    /// ran is refused: `--next-attempt` takes the next free one.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Run the step's next free attempt instead of the request's `attempt`.
        #[arg(long)]
        next_attempt: bool,
        /// With the next attempt, resume from the step's latest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Only prepare a step: create its run directory, metadata, state and
    /// logs; `run` with the same request executes it.
    Prepare {
        /// Print exactly the StepExecutionResult JSON (outcome `prepared`).
        #[arg(long)]
        json: bool,
        /// Prepare the step's next free attempt instead of the request's `attempt`.
        #[arg(long)]
        next_attempt: bool,
        request: PathBuf,
    },
    /// List the worker kinds found: name, version, what each requests, what
    /// is granted, what is missing, file.
    Kinds {
        #[arg(long)]
        json: bool,
    },
    /// Start the next attempt of a request's step, resuming from checkpoint
    /// SEQ (`run --next-attempt --resume` takes the latest).
    Resume {
        /// The checkpoint to resume from (see `checkpoints list`).
        #[arg(long = "from", value_name = "SEQ")]
        from: u32,
        #[command(flatten)]
        args: RunArgs,
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
    /// Print the JSON Schema of StepExecutionRequest, StepExecutionResult or
    /// the host's lifecycle events, or write them all as files into DIR (the
    /// repository's `schema/`).
    Schema {
        /// Which document to print.
        #[arg(long, value_enum, required_unless_present = "write")]
        kind: Option<SchemaKind>,
        #[arg(long, value_name = "DIR", conflicts_with = "kind")]
        write: Option<PathBuf>,
    },
    /// Serve step requests over a Unix socket (newline-delimited JSON; see
    /// the README's "serve" section) until SIGINT or SIGTERM.
    Serve {
        /// The socket to listen on (created with mode 0600).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Also stop (as on SIGTERM) when standard input reaches its end: a
        /// parent holding the other end of a pipe takes the server with it
        /// when it exits, however it exits.
        #[arg(long)]
        stop_on_stdin_close: bool,
        /// Queue the steps in the cluster at this NATS server instead of
        /// running them here: the same protocol, events from whichever host
        /// runs each step, cancel reaching it there.
        #[cfg(feature = "cluster")]
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
    },
    /// Take part in a cluster: pull steps of the kinds this host can run
    /// from NATS JetStream, run them, publish their events and answers,
    /// until SIGINT or SIGTERM (then finish the steps running here).
    #[cfg(feature = "cluster")]
    Worker {
        /// The NATS server (else `[cluster] url`, else nats://127.0.0.1:4222).
        #[arg(long, value_name = "URL", env = "BAA_NATS_URL")]
        nats: Option<String>,
        /// This host's name in the cluster (else `[cluster] host-name`, else
        /// <hostname>-<pid>).
        #[arg(long, value_name = "NAME")]
        host_name: Option<String>,
        /// Serve only this kind (repeatable; else `[cluster] kinds`, else
        /// every kind this host can run and grants).
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// A directory whose repositories queued steps may use (repeatable;
        /// added to the config's `repo-roots`; at least one is required).
        #[arg(long = "repo-root", value_name = "DIR")]
        repo_roots: Vec<PathBuf>,
        /// Where this host keeps its steps' run directories (else
        /// `[cluster] runs-dir`, else the default runs root's `cluster/`).
        #[arg(long, value_name = "DIR")]
        runs_dir: Option<PathBuf>,
    },
    /// Queue a step in the cluster and wait for its answer: output, JSON
    /// and exit codes as `run`; Ctrl-C cancels it wherever it runs.
    #[cfg(feature = "cluster")]
    Submit {
        /// The NATS server (else `[cluster] url`, else nats://127.0.0.1:4222).
        #[arg(long, value_name = "URL", env = "BAA_NATS_URL")]
        nats: Option<String>,
        /// Print exactly the StepExecutionResult JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Follow the step's events live, wherever it runs.
        #[arg(long)]
        watch: bool,
        /// The StepExecutionRequest JSON file (`-` for stdin).
        request: PathBuf,
    },
    /// Look at the cluster.
    #[cfg(feature = "cluster")]
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Close attempts a stopped host left running: mark them interrupted
    /// (their processes died with that host; leftover sandbox users are
    /// swept). DIR: a runs root or any directory below it.
    Recover {
        /// Print the recovery report as JSON.
        #[arg(long)]
        json: bool,
        /// A runs root, or any directory below it.
        dir: PathBuf,
    },
    /// Print a completion script: `baa-runner completions bash >
    /// /etc/bash_completion.d/baa-runner` (or zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemaKind {
    Request,
    Result,
    /// The host's lifecycle events: each `event` name with its `data`.
    HostEvent,
}

#[cfg(feature = "cluster")]
#[derive(Subcommand)]
enum ClusterCommand {
    /// The live workers: their kinds and load.
    Status {
        #[arg(long, value_name = "URL", env = "BAA_NATS_URL")]
        nats: Option<String>,
        #[arg(long)]
        json: bool,
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
    // An empty BAA_CONFIG is no config file, not a missing value.
    if std::env::var_os("BAA_CONFIG").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("BAA_CONFIG");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::INVALID_INPUT
            } else {
                0
            });
        }
    };
    // Listing commands piped into `head` end quietly, as any CLI's. A step
    // (and `serve`) is never killed by a closed stdout: output to it is
    // dropped and the step finishes and writes its records.
    if !(serves_many(&cli.command)
        || matches!(cli.command, Command::Run { .. } | Command::Resume { .. }))
    {
        // SAFETY: restoring the default action of SIGPIPE before any
        // thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let streams = Streams::new(cli.color);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BAA_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(streams.stderr.enabled())
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli, streams) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let invalid = e
                .downcast_ref::<Error>()
                .is_some_and(Error::is_invalid_input)
                || e.downcast_ref::<InvalidInput>().is_some()
                || cluster_invalid(&e);
            eprintln!(
                "{} {}",
                streams.stderr.red("baa-runner: error:"),
                causes(&e)
            );
            ExitCode::from(if invalid {
                exit::INVALID_INPUT
            } else {
                exit::HOST_ERROR
            })
        }
    }
}

#[cfg(feature = "cluster")]
fn cluster_invalid(error: &anyhow::Error) -> bool {
    cluster::invalid(error)
}

#[cfg(not(feature = "cluster"))]
fn cluster_invalid(_: &anyhow::Error) -> bool {
    false
}

/// An error and its causes on one line, each cause once (messages that
/// already quote their cause do not repeat it).
fn causes(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Whether stdout and stderr get colours.
#[derive(Clone, Copy)]
pub struct Streams {
    pub stdout: Paint,
    pub stderr: Paint,
}

impl Streams {
    fn new(choice: ColorChoice) -> Self {
        // https://no-color.org: set and not empty.
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let paint = |terminal: bool| {
            Paint::new(match choice {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => terminal && !no_color,
            })
        };
        Streams {
            stdout: paint(std::io::stdout().is_terminal()),
            stderr: paint(std::io::stderr().is_terminal()),
        }
    }
}

/// An input problem found by the CLI itself (unreadable or malformed file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(String);

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

/// The config file to read: `--config` or `$BAA_CONFIG` (which must
/// exist), else the first of the default locations that exists.
fn config_path(cli: &Cli) -> Option<PathBuf> {
    if let Some(path) = &cli.config {
        return Some(path.clone());
    }
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    xdg.map(|d| d.join("baa-runner/config.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/baa-runner/config.toml")])
        .filter(|p| p.is_file())
        .find(|p| trusted_config(p))
}

/// A config found in a default location grants capabilities: as root, only
/// one that root owns and no one else may change (nor its directory) is
/// read — `sudo -E` keeps a user's `$HOME` and `$XDG_CONFIG_HOME`.
fn trusted_config(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return true;
    }
    let safe = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    let trusted = safe(path) && path.parent().is_some_and(safe);
    if !trusted {
        eprintln!(
            "baa-runner: warning: ignoring {}: as root, a default config must be owned by root and writable by no one else (pass --config to use it anyway)",
            path.display()
        );
    }
    trusted
}

/// `serve` and `worker` run many steps at once; every other command one.
fn serves_many(command: &Command) -> bool {
    #[cfg(feature = "cluster")]
    if matches!(command, Command::Worker { .. }) {
        return true;
    }
    matches!(command, Command::Serve { .. })
}

/// The config file's settings, for commands that need no runner.
#[cfg(feature = "cluster")]
fn settings(cli: &Cli) -> anyhow::Result<RunnerConfig> {
    Ok(match config_path(cli) {
        Some(path) => RunnerConfig::from_file(&path).map_err(Error::from)?,
        None => RunnerConfig::default(),
    })
}

fn runner(cli: &Cli, streams: Streams) -> anyhow::Result<Runner> {
    let mut config = match config_path(cli) {
        Some(path) => {
            tracing::debug!("config: {}", path.display());
            RunnerConfig::from_file(&path).map_err(Error::from)?
        }
        None => RunnerConfig::default(),
    };
    config.plugin_dirs.extend(cli.plugins_dirs.iter().cloned());
    #[cfg(feature = "cluster")]
    if let Command::Worker {
        repo_roots,
        runs_dir,
        ..
    } = &cli.command
    {
        config.repo_roots.extend(repo_roots.iter().cloned());
        if runs_dir.is_some() {
            config.cluster.runs_dir.clone_from(runs_dir);
        }
    }
    // Every command but `serve` executes at most one step: the engine
    // reserves instance slots for that one, not for a server's thousand.
    if !serves_many(&cli.command) {
        config.concurrency.max_steps = 1;
    }
    let runner = Runner::new(config)?;
    for warning in runner.warnings() {
        eprintln!(
            "{} {warning}",
            streams.stderr.yellow("baa-runner: warning:")
        );
    }
    Ok(runner)
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A plugin file given on the command line must exist.
fn existing_file(path: &Path) -> anyhow::Result<&Path> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(InvalidInput(format!(
            "{} is not a file: give the path of a worker kind's .wasm file",
            path.display()
        ))
        .into())
    }
}

fn dispatch(cli: Cli, streams: Streams) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "baa-runner", &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if *shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 spells the case labels of a hyphenated
                // binary differently from the names it matches them with.
                script = script.replace("baa__subcmd__runner", "baa__runner");
            }
            print!("{script}");
            Ok(0)
        }
        Command::Schema { kind, write } => schema(*kind, write.as_deref()),
        Command::New { name, lang, dir } => {
            let project = baa_runner::scaffold::new_project(name, lang, dir)
                .map_err(|e| InvalidInput(format!("cannot create the project: {e}")))?;
            println!(
                "created {}; see its README.md to build, stamp and check it",
                project.display()
            );
            Ok(0)
        }
        Command::Checkpoints { command } => checkpoints(command),
        #[cfg(feature = "cluster")]
        Command::Submit {
            nats,
            json,
            watch,
            request,
        } => {
            let config = settings(&cli)?;
            cluster::submit(
                nats.as_deref(),
                &config.cluster,
                request,
                *json,
                *watch,
                streams,
            )
        }
        #[cfg(feature = "cluster")]
        Command::Cluster {
            command: ClusterCommand::Status { nats, json },
        } => cluster::status(nats.as_deref(), &settings(&cli)?.cluster, *json),
        #[cfg(feature = "cluster")]
        Command::Serve {
            socket,
            stop_on_stdin_close,
            nats: Some(url),
        } => serve(Serving::Cluster(url), socket, *stop_on_stdin_close),
        _ => with_runner(&cli, &runner(&cli, streams)?, streams),
    }
}

/// The commands that need a runner (engine, plugins, config).
fn with_runner(cli: &Cli, runner: &Runner, streams: Streams) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Run { .. } | Command::Resume { .. } | Command::Prepare { .. } => {
            step_command(&cli.command, runner, streams)
        }
        Command::Inspect { .. } | Command::Stamp { .. } | Command::Check { .. } => {
            author_command(&cli.command, runner)
        }
        Command::Serve {
            socket,
            stop_on_stdin_close,
            ..
        } => serve(Serving::Local(runner), socket, *stop_on_stdin_close),
        Command::Recover { .. } | Command::Sandbox { .. } | Command::Kinds { .. } => {
            host_command(&cli.command, runner, streams)
        }
        #[cfg(feature = "cluster")]
        Command::Worker {
            nats,
            host_name,
            kinds,
            ..
        } => cluster::worker(runner, nats.as_deref(), host_name.as_deref(), kinds),
        #[cfg(feature = "cluster")]
        Command::Submit { .. } | Command::Cluster { .. } => {
            unreachable!("dispatched without a runner")
        }
        Command::Completions { .. }
        | Command::Schema { .. }
        | Command::New { .. }
        | Command::Checkpoints { .. } => unreachable!("dispatched without a runner"),
    }
}

/// `run`, `resume` and `prepare`: one step.
fn step_command(command: &Command, runner: &Runner, streams: Streams) -> anyhow::Result<u8> {
    match command {
        Command::Run {
            args,
            next_attempt,
            resume,
        } => {
            let mut request = read_request(&args.request)?;
            let attempt = if *next_attempt || *resume {
                Attempt::Next {
                    resume: *resume,
                    run_prepared: true,
                }
            } else {
                Attempt::AsRequested
            };
            step::choose_attempt(runner, &mut request, attempt)?;
            step::run(runner, request, args, streams)
        }
        Command::Resume { from, args } => {
            let mut request = read_request(&args.request)?;
            step::choose_attempt(runner, &mut request, Attempt::ResumeFrom(*from))?;
            step::run(runner, request, args, streams)
        }
        Command::Prepare {
            json,
            next_attempt,
            request,
        } => {
            let mut request = read_request(request)?;
            if *next_attempt {
                step::choose_attempt(
                    runner,
                    &mut request,
                    Attempt::Next {
                        resume: false,
                        run_prepared: false,
                    },
                )?;
            }
            step::prepare(runner, request, *json, *next_attempt)
        }
        _ => unreachable!("not a step command"),
    }
}

/// `inspect`, `stamp` and `check`: the plugin authors' tools.
fn author_command(command: &Command, runner: &Runner) -> anyhow::Result<u8> {
    match command {
        Command::Inspect { json, file } => {
            let inspection = runner.inspect(existing_file(file)?);
            if *json {
                print_json(&inspection)?;
            } else {
                render::inspection(&inspection);
            }
            Ok(if inspection.error.is_some() {
                exit::INVALID_INPUT
            } else {
                0
            })
        }
        Command::Stamp { file } => {
            let manifest = step::runtime()?
                .block_on(runner.stamp(existing_file(file)?))
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
            let report = step::runtime()?.block_on(runner.check(existing_file(file)?, command));
            if *json {
                print_json(&report)?;
            } else {
                render::check(&report);
            }
            Ok(if report.passed { 0 } else { exit::FAILED })
        }
        _ => unreachable!("not an authoring command"),
    }
}

/// `recover`, `sandbox` and `kinds`: the host and its kinds.
fn host_command(command: &Command, runner: &Runner, streams: Streams) -> anyhow::Result<u8> {
    match command {
        Command::Recover { json, dir } => {
            if !dir.is_dir() {
                return Err(InvalidInput(format!(
                    "{} is not a directory: give a runs root or a directory below it",
                    dir.display()
                ))
                .into());
            }
            let report = runner.recover(dir);
            if *json {
                print_json(&report)?;
            } else {
                render::recovery(&report);
            }
            Ok(if report.errors.is_empty() {
                0
            } else {
                exit::HOST_ERROR
            })
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
            Ok(if report.confined { 0 } else { exit::FAILED })
        }
        Command::Kinds { json } => {
            let kinds = step::runtime()?.block_on(runner.list_kinds());
            if *json {
                print_json(&kinds)?;
            } else {
                render::kinds(&kinds, streams.stdout);
            }
            Ok(0)
        }
        _ => unreachable!("not a host command"),
    }
}

fn checkpoints(command: &CheckpointsCommand) -> anyhow::Result<u8> {
    match command {
        CheckpointsCommand::List { json, dir } => {
            let mut history = StepHistory::load(&step::step_dir_of(dir)?, 0);
            // One attempt's directory: that attempt's checkpoints.
            if let Some(attempt) = step::attempt_of(dir) {
                history.records.retain(|r| r.attempt == attempt);
            }
            if *json {
                print_json(&history.records)?;
            } else {
                render::checkpoints(&history);
            }
        }
        CheckpointsCommand::Show { json, dir, seq } => {
            let step_dir = step::step_dir_of(dir)?;
            let history = StepHistory::load(&step_dir, 0);
            if !history.records.iter().any(|r| r.seq == *seq) {
                let seqs: Vec<String> = history.records.iter().map(|r| r.seq.to_string()).collect();
                return Err(InvalidInput(format!(
                    "{} has no valid checkpoint {seq} (it has: {}); see `baa-runner checkpoints list`",
                    step_dir.display(),
                    if seqs.is_empty() { "none".to_string() } else { seqs.join(", ") }
                ))
                .into());
            }
            let checkpoint = history.resume_from(&step_dir, *seq)?;
            if *json {
                print_json(&checkpoint.record)?;
            } else {
                render::checkpoint(&checkpoint);
            }
        }
    }
    Ok(0)
}

fn schema(kind: Option<SchemaKind>, write: Option<&Path>) -> anyhow::Result<u8> {
    let all = baa_runner::contracts::schema::all();
    if let Some(dir) = write {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, schema) in &all {
            let path = dir.join(name);
            std::fs::write(&path, baa_runner::contracts::schema::render(schema))
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        return Ok(0);
    }
    let wanted = match kind {
        Some(SchemaKind::Result) => "step-execution-result.schema.json",
        Some(SchemaKind::HostEvent) => "host-event.schema.json",
        _ => "step-execution-request.schema.json",
    };
    for (name, schema) in &all {
        if *name == wanted {
            print!("{}", baa_runner::contracts::schema::render(schema));
        }
    }
    Ok(0)
}

/// Cancel `shutdown` once standard input reaches its end (or fails). A
/// detached thread: a blocking read would hold up the runtime's shutdown.
fn stop_at_end_of_stdin(shutdown: baa_runner::CancellationToken) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 512];
        let mut stdin = std::io::stdin().lock();
        loop {
            match std::io::Read::read(&mut stdin, &mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        shutdown.cancel();
    });
}

/// What `serve` hands its steps to.
enum Serving<'a> {
    Local(&'a Runner),
    #[cfg(feature = "cluster")]
    Cluster(&'a str),
}

fn serve(serving: Serving, socket: &Path, stop_on_stdin_close: bool) -> anyhow::Result<u8> {
    let parent = match socket.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("/"),
    };
    if !parent.is_dir() {
        return Err(InvalidInput(format!(
            "--socket {}: directory {} does not exist; create it or choose another path",
            socket.display(),
            parent.display()
        ))
        .into());
    }
    // sun_path holds 107 bytes and a NUL.
    if socket.as_os_str().len() > 107 {
        return Err(InvalidInput(format!(
            "--socket {}: a Unix socket path may have at most 107 bytes; choose a shorter one",
            socket.display()
        ))
        .into());
    }
    step::runtime()?.block_on(async {
        let shutdown = step::cancelled_on_signal(Default::default())?;
        if stop_on_stdin_close {
            stop_at_end_of_stdin(shutdown.clone());
        }
        let backend: baa_runner::serve::Backend = match serving {
            Serving::Local(runner) => runner.clone().into(),
            #[cfg(feature = "cluster")]
            Serving::Cluster(url) => baa_runner::cluster::Cluster::connect(url).await?.into(),
        };
        let listener = baa_runner::serve::listen(socket)?;
        eprintln!("baa-runner: serving on {}", socket.display());
        let serving = baa_runner::serve::serve_on(backend, listener, socket, shutdown.clone());
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => {
                served?;
                return anyhow::Ok(0);
            }
            () = shutdown.cancelled() => {}
        }
        // Stopping: the steps are cancelled and their records written. A
        // second signal does not wait for them.
        let signal = Arc::new(AtomicI32::new(0));
        let again = step::cancelled_on_signal(signal.clone())?;
        tokio::select! {
            served = serving => served?,
            () = again.cancelled() => {
                let _ = std::fs::remove_file(socket);
                eprintln!("baa-runner: stopped without waiting for the steps' records");
                return anyhow::Ok(128 + signal.load(Ordering::SeqCst) as u8);
            }
        }
        anyhow::Ok(0)
    })
}
