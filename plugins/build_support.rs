// Shared by `host/build.rs` and `tests/build.rs` (via `#[path]`): builds
// worker-kind crates of the `plugins/` workspace for wasm32-wasip2 with their
// own CARGO_TARGET_DIR, as wasmtime's test-programs do, and returns the
// `.wasm` paths.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `packages` (crate names) in release mode; returns `(package, wasm path)`.
pub fn build_plugins(packages: &[&str]) -> Vec<(String, PathBuf)> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let plugins_dir = manifest_dir.join("../plugins");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // <target>/<profile>/build/<crate-hash>/out → <target>/wasm-plugins, shared
    // by every profile and by the host and the tests.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));

    for entry in [
        "Cargo.toml",
        "Cargo.lock",
        "sdk",
        "shell",
        "git",
        "codex",
        "testing",
        "../wit",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            plugins_dir.join(entry).display()
        );
    }

    let mut cmd = nested_cargo_build(&plugins_dir.join("Cargo.toml"), &target_dir);
    cmd.arg("--release").arg("--target=wasm32-wasip2");
    for package in packages {
        cmd.arg("-p").arg(package);
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the worker plugins");
    if !status.success() {
        panic!(
            "building the worker plugins failed ({status}). Is the wasm target installed? Run `rustup target add wasm32-wasip2`."
        );
    }
    packages
        .iter()
        .map(|package| {
            let file = format!("{}.wasm", package.replace('-', "_"));
            let path = target_dir.join("wasm32-wasip2/release").join(file);
            assert!(
                Path::new(&path).exists(),
                "{} was not built",
                path.display()
            );
            (package.to_string(), path)
        })
        .collect()
}

/// `cargo build` of another manifest from a build script, into its own
/// target directory (the outer build holds the lock of ours), without the
/// outer build's flags; `--locked` in CI.
pub fn nested_cargo_build(manifest: &Path, target_dir: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG");
    if std::env::var_os("CI").is_some() || std::env::var_os("BAA_LOCKED").is_some() {
        cmd.arg("--locked");
    }
    cmd
}
