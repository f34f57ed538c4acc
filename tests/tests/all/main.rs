//! Integration tests of baa-runner: real worker components in a real
//! wasmtime, real temporary git repositories, real child processes. Each
//! test asserts on the files in the run directory, not only on the result.

mod author;
mod bounds;
mod checkpoints;
mod cli;
mod cluster;
mod cluster_chaos;
mod codex;
mod compiled_cache;
mod confinement;
mod contracts;
mod embed;
mod examples;
mod first_hour;
mod fuzz;
mod git;
mod guide;
mod hostile;
mod privileges;
mod redteam;
mod requests;
mod sandbox;
mod serve;
mod shell;
mod supply_chain;
mod views;
mod worlds;

use std::path::{Path, PathBuf};

use baa_runner::config::KindGrant;
use baa_runner::contracts::{StepExecutionRequest, StepExecutionResult};
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{fixtures, Sandbox};

/// A binary of this workspace that `scripts/test.sh` builds before the tests
/// (the CLI, the crash writer).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with scripts/test.sh (it builds the binaries first)",
        bin.display()
    );
    bin
}

/// The target directory the fixture plugins were built in.
pub fn plugins_target() -> &'static Path {
    Path::new(fixtures::PROBE_WASM)
        .ancestors()
        .nth(3)
        .expect("fixtures live in <target>/wasm32-wasip2/release")
}

/// Run a guest build (`cargo build` of a kind, or a script around it) in
/// `dir` with the plugins' target directory, so that the dependencies
/// already compiled there are reused, and without the host's RUSTFLAGS;
/// panic with its output when it fails.
pub fn guest_build(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr], dir: &Path) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", plugins_target())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A runner with the default config (built-in kinds only).
pub fn runner() -> Runner {
    Runner::new(RunnerConfig::default()).expect("runner builds")
}

/// Run a step to its result.
pub async fn run(runner: &Runner, request: StepExecutionRequest) -> StepExecutionResult {
    runner
        .run(request, None)
        .await
        .expect("the step runs to a result")
}

/// A plugin directory in `sandbox` holding the `probe` fixture as `probe.wasm`.
pub fn probe_plugins_dir(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.dir.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures::PROBE_WASM, dir.join("probe.wasm")).unwrap();
    dir
}

/// A runner whose plugin directory holds `probe.wasm`, granted `grant`.
/// The CLI binary.
pub fn cli() -> std::process::Command {
    let mut cli = std::process::Command::new(built_binary("baa-runner"));
    // No operator config of this machine (an empty one: the defaults).
    cli.env("BAA_CONFIG", "/dev/null");
    cli
}

/// Assert the CLI exited with `code`, showing its stderr otherwise.
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn probe_runner(sandbox: &Sandbox, grant: KindGrant) -> (Runner, PathBuf) {
    probe_runner_with(sandbox, grant, |_| {})
}

/// Like [`probe_runner`], with the config adjusted by `adjust`.
pub fn probe_runner_with(
    sandbox: &Sandbox,
    grant: KindGrant,
    adjust: impl FnOnce(&mut RunnerConfig),
) -> (Runner, PathBuf) {
    let dir = probe_plugins_dir(sandbox);
    let wasm = dir.join("probe.wasm");
    let mut config = RunnerConfig::default();
    config.plugin_dirs.push(dir);
    config.kinds.insert("probe".into(), grant);
    adjust(&mut config);
    (Runner::new(config).unwrap(), wasm)
}

/// A config file for the CLI: the probe's plugin directory, and the grant
/// of everything the probe requests.
pub fn probe_config_file(sandbox: &Sandbox) -> PathBuf {
    let plugins = probe_plugins_dir(sandbox);
    let programs: Vec<String> = PROBE_PROGRAMS.iter().map(|p| format!("{p:?}")).collect();
    let config = sandbox.dir.path().join("baa.toml");
    std::fs::write(
        &config,
        format!(
            "plugin-dirs = [{:?}]\n[kinds.probe]\nprograms = [{}]\nenv = [\"PROBE_VAR\"]\n",
            plugins.display().to_string(),
            programs.join(", ")
        ),
    )
    .unwrap();
    config
}

/// Everything the probe fixture requests (it runs only when granted all).
pub const PROBE_PROGRAMS: &[&str] = &["true", "touch", "sh", "python3"];

/// The operator grants the probe everything it requests.
pub fn grant_all() -> KindGrant {
    grant(PROBE_PROGRAMS)
}

/// The operator grants the probe these programs (and `PROBE_VAR`).
pub fn grant(programs: &[&str]) -> KindGrant {
    KindGrant {
        programs: programs.iter().map(|s| s.to_string()).collect(),
        env: vec!["PROBE_VAR".into()],
        ..Default::default()
    }
}
