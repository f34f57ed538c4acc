//! Builds what the host embeds: the built-in worker kinds (`plugins/shell`,
//! `git`, `codex`), so `baa-runner` runs them with no plugin directory, and
//! the `baa-launch` confinement launcher (`host/launcher`), which the host
//! executes from memory for every subprocess.

#[path = "../plugins/build_support.rs"]
mod build_support;

use std::path::PathBuf;

fn main() {
    for (package, path) in
        build_support::build_plugins(&["baa-worker-shell", "baa-worker-git", "baa-worker-codex"])
    {
        let kind = package.trim_start_matches("baa-worker-").to_uppercase();
        println!("cargo:rustc-env=BAA_BUILTIN_{kind}_WASM={}", path.display());
    }
    let launcher = build_launcher();
    println!("cargo:rustc-env=BAA_LAUNCHER_BIN={}", launcher.display());
    version_info();
}

/// What `baa-runner --version` reports besides the crate version: the
/// commit it was built from and the wasmtime it embeds.
fn version_info() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Rebuilt when HEAD moves (a commit or a checkout).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head_ref).display());
        }
    }
    println!("cargo:rustc-env=BAA_COMMIT={commit}");
    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let wasmtime = text
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BAA_WASMTIME_VERSION={wasmtime}");
}

/// Build `host/launcher` in release mode with its own target directory (the
/// outer build holds the lock of ours) and return the binary's path.
fn build_launcher() -> PathBuf {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let launcher_dir = manifest_dir.join("launcher");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("launcher"))
        .unwrap_or_else(|| out_dir.join("launcher"));
    for entry in ["Cargo.toml", "src"] {
        println!(
            "cargo:rerun-if-changed={}",
            launcher_dir.join(entry).display()
        );
    }
    // Linked statically (no dynamic loader at each of its execs: a third
    // less time per start); built for the explicit target so that the
    // flag reaches the launcher alone, not build scripts or macros.
    let target = std::env::var("TARGET").unwrap_or_default();
    let mut cmd =
        build_support::nested_cargo_build(&manifest_dir.join("../Cargo.toml"), &target_dir);
    cmd.args([
        "--profile=launcher",
        "-p",
        "baa-launch",
        "--bin",
        "baa-launch",
        "--target",
        &target,
    ]);
    if target.ends_with("-linux-gnu") {
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the baa-launch launcher");
    assert!(status.success(), "building baa-launch failed ({status})");
    let path = target_dir.join(&target).join("launcher/baa-launch");
    assert!(path.exists(), "{} was not built", path.display());
    path
}
