//! The dependency floors that carry known security fixes, checked against
//! the lockfile, and the sandbox configuration pinned: nothing ambient.

use baa_runner_tests::Sandbox;

use crate::{grant_all, probe_runner, run};

/// Crates and the lowest version that carries the fixes we rely on.
const FLOORS: &[(&str, (u64, u64, u64))] = &[
    ("wasmtime", (48, 0, 8)),
    ("wasmtime-wasi", (48, 0, 8)),
    ("cap-std", (4, 0, 3)),
    // The August 2026 trailing-slash symlink escape.
    ("cap-primitives", (4, 0, 3)),
];

fn parse_version(v: &str) -> (u64, u64, u64) {
    let mut parts = v
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn the_lockfile_resolves_at_or_above_the_security_floors() {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let mut packages = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            packages.push((n, parse_version(v.trim_matches('"'))));
        }
    }
    for (krate, floor) in FLOORS {
        let versions: Vec<_> = packages
            .iter()
            .filter(|(n, _)| n == krate)
            .map(|(_, v)| *v)
            .collect();
        assert!(!versions.is_empty(), "{krate} is not in Cargo.lock");
        for version in versions {
            assert!(
                version >= *floor,
                "{krate} {version:?} is below the floor {floor:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_gets_nothing_ambient() {
    let sandbox = Sandbox::new();
    std::env::set_var("BAA_AMBIENT_CANARY", "should-not-leak");
    let (runner, _) = probe_runner(&sandbox, grant_all());
    let script = "ambient\nread /README.md\nread /../canary";
    let result = run(&runner, sandbox.request("probe", script)).await;
    let stdout = std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap();
    // No environment, no arguments, an empty stdin, and exactly one
    // directory: the worktree, which is also what `/` resolves to.
    let entries = std::fs::read_dir(&sandbox.repo).unwrap().count();
    let expected = format!("ambient: ok env=0 args=0 stdin=Ok(0) root={entries} here={entries}");
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(stdout.contains("read /README.md: ok # demo"), "{stdout}");
    assert!(stdout.contains("read /../canary: denied"), "{stdout}");
}

#[test]
fn the_released_wit_of_the_current_version_is_frozen() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let current = std::fs::read_to_string(root.join("wit/worker.wit")).unwrap();
    let version = current
        .lines()
        .find_map(|l| l.trim().strip_prefix("package baa:worker@"))
        .and_then(|v| v.strip_suffix(';'))
        .expect("wit/worker.wit declares `package baa:worker@<version>;`");
    // The host implements exactly this version.
    assert_eq!(
        baa_runner::plugins::manifest::host_world(),
        format!("baa:worker/worker@{version}")
    );
    let released = root.join(format!("wit/released/{version}/worker.wit"));
    let frozen = std::fs::read_to_string(&released).unwrap_or_else(|_| {
        panic!(
            "{} is missing: copy wit/worker.wit there when releasing {version}",
            released.display()
        )
    });
    assert_eq!(
        frozen, current,
        "wit/worker.wit changed but still says {version}, which is released: bump its version"
    );
}
