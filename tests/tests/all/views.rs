//! The step's view of its worktree on a root host: an idmapped mount in the
//! step's namespace shows the tree to the step's uid as its own, so nothing
//! on disk changes owner, mode or ctime; what the step creates belongs to
//! the tree's owner and is never setuid; a worktree below a directory the
//! step's uid cannot search works; two hosts share a worktree; a host killed
//! mid-step leaves the tree as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baa_runner::contracts::{StepExecutionOutcome, StepExecutionResult};
use baa_runner::{Runner, RunnerConfig};
use baa_runner_tests::{read_json, Sandbox};

use crate::{assert_exit, cli, run};

/// Whether this host runs as root and the worktree's file system takes an
/// idmapped view; says which is missing otherwise (the test then checks
/// nothing).
fn views_here(what: &str, result: &StepExecutionResult) -> bool {
    if !crate::privileges::as_root(what) {
        return false;
    }
    let metadata = read_json(&result.log_paths.metadata_path);
    let view = &metadata["sandbox"]["worktreeView"];
    if view != "idmapped" {
        eprintln!(
            "SKIPPED {what}: the worktree's file system takes no idmapped mount here \
             (worktreeView = {view}); steps fall back to chown lending"
        );
        return false;
    }
    true
}

/// The step completed, and through a view (see [`views_here`]).
fn completed_in_a_view(what: &str, result: &StepExecutionResult) -> bool {
    assert_eq!(
        result.outcome,
        StepExecutionOutcome::Completed,
        "{}",
        result.summary
    );
    views_here(what, result)
}

fn stdout_of(result: &StepExecutionResult) -> String {
    std::fs::read_to_string(&result.log_paths.stdout_log_path).unwrap_or_default()
}

/// Every entry beneath `root` (the `.git` directory included): owner,
/// group, mode, link count, ctime and file capability.
fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let caps = xattr(&path, c"security.capability");
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                format!(
                    "{}:{} {:o} nlink={} ctime={}.{} caps={caps:?}",
                    meta.uid(),
                    meta.gid(),
                    meta.mode(),
                    meta.nlink(),
                    meta.ctime(),
                    meta.ctime_nsec()
                ),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// The value of the extended attribute `name` of `path` (not followed).
fn xattr(path: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: a valid path, name and buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// Give `path` the file capability CAP_NET_RAW (permitted, effective).
fn set_capability(path: &Path) {
    // struct vfs_cap_data, revision 2: magic_etc, then permitted and
    // inheritable for the low and high 32 capabilities.
    let mut data = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        data.extend_from_slice(&word.to_le_bytes());
    }
    // SAFETY: a valid path, name and buffer.
    let rc = unsafe {
        libc::setxattr(
            c_path(path).as_ptr(),
            c"security.capability".as_ptr(),
            data.as_ptr().cast(),
            data.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn shell_request(sandbox: &Sandbox, command: &str) -> serde_json::Value {
    sandbox.request_json("shell", command)
}

async fn run_shell(sandbox: &Sandbox, command: &str) -> StepExecutionResult {
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let request = serde_json::from_value(shell_request(sandbox, command)).unwrap();
    run(&runner, request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_changes_no_owner_mode_ctime_or_capability_in_the_worktree() {
    if !crate::privileges::as_root("a view of the worktree (a root host's)") {
        return;
    }
    let sandbox = Sandbox::new();
    let repo = &sandbox.repo;
    // What chown lending used to lose: other owners and groups, setuid and
    // setgid bits, a setgid directory, a file capability, hard links.
    std::fs::write(repo.join("theirs.txt"), "another user's\n").unwrap();
    chown(&repo.join("theirs.txt"), 1234, 1234);
    std::fs::write(repo.join("group.txt"), "another group's\n").unwrap();
    chown(&repo.join("group.txt"), 0, 4321);
    std::fs::write(repo.join("tool"), "#!/bin/sh\n").unwrap();
    chmod(&repo.join("tool"), 0o6755);
    std::fs::create_dir(repo.join("shared")).unwrap();
    chmod(&repo.join("shared"), 0o2775);
    std::fs::write(repo.join("ping-like"), "binary\n").unwrap();
    set_capability(&repo.join("ping-like"));
    std::fs::write(repo.join("linked-a"), "linked\n").unwrap();
    std::fs::hard_link(repo.join("linked-a"), repo.join("shared/linked-b")).unwrap();
    let before = fingerprint(repo);
    assert!(before[Path::new("ping-like")].contains("caps=Some"));

    let result = run_shell(
        &sandbox,
        "cat theirs.txt group.txt linked-a && ls -A shared",
    )
    .await;
    if !completed_in_a_view("the worktree is left as it was", &result) {
        return;
    }
    // The step ran (and so did the host's git-diff snapshot, as its uid).
    let out = stdout_of(&result);
    assert!(
        out.contains("another user's") && out.contains("linked-b"),
        "{out}"
    );
    // Everything that was there is as it was (the snapshot may add objects).
    assert_kept(&before, &fingerprint(repo));
}

/// Every entry of `before` is in `after` unchanged, but for git's object
/// store and index (and so the `.git` directory), which snapshots and the
/// owner's own git may write.
fn assert_kept(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) {
    for (path, print) in before {
        let git_writes = [".git", ".git/index"].map(Path::new);
        if path.starts_with(".git/objects") || git_writes.contains(&path.as_path()) {
            continue;
        }
        assert_eq!(after.get(path), Some(print), "{}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_step_creates_belongs_to_the_owner_and_is_never_setuid() {
    if !crate::privileges::as_root("a view of the worktree (a root host's)") {
        return;
    }
    let sandbox = Sandbox::new();
    let repo = &sandbox.repo;
    // A worktree of an ordinary user (not the host's root).
    for entry in walk(repo) {
        chown(&entry, 1234, 1234);
    }
    chown(repo, 1234, 1234);
    let script = "id -u; echo made > new.txt; mkdir -p deep/er && echo deeper > deep/er/f; \
                  cp /bin/true tool; \
                  chmod u+s tool 2>/dev/null && echo setuid=granted || echo setuid=refused; \
                  chmod g+s tool 2>/dev/null && echo setgid=granted || echo setgid=refused; \
                  stat -c 'seen-as=%u' new.txt";
    let result = run_shell(&sandbox, script).await;
    if !completed_in_a_view("new files belong to the owner", &result) {
        return;
    }
    let out = stdout_of(&result);
    let uid: u32 = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(
        (61000..62000).contains(&uid),
        "the step ran as {uid}: {out}"
    );
    // Inside, the tree is the step's own; on disk, the owner's.
    assert!(out.contains(&format!("seen-as={uid}")), "{out}");
    assert!(
        out.contains("setuid=refused") && out.contains("setgid=refused"),
        "{out}"
    );
    for path in [
        "new.txt",
        "deep",
        "deep/er",
        "deep/er/f",
        "tool",
        "README.md",
        ".git/index",
    ] {
        let meta = std::fs::symlink_metadata(repo.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 1234), "{path}");
    }
    let mode = std::fs::metadata(repo.join("tool")).unwrap().mode();
    assert_eq!(mode & 0o6000, 0, "tool has mode {mode:o}");
}

/// Every entry beneath `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worktree_below_a_directory_the_step_cannot_search_works_and_hides_its_siblings() {
    if !crate::privileges::as_root("a worktree below a 0700 directory") {
        return;
    }
    // Outside /tmp (the step's /tmp is its own anyway): a 0700 directory
    // holding a secret beside the repository, like a home directory.
    let parent = tempfile::Builder::new()
        .prefix("baa-private-parent-")
        .tempdir_in("/run")
        .unwrap();
    chmod(parent.path(), 0o700);
    std::fs::write(parent.path().join("secret.txt"), "secret\n").unwrap();
    chmod(&parent.path().join("secret.txt"), 0o644);
    let repo = parent.path().join("work/repo");
    std::fs::create_dir_all(&repo).unwrap();
    baa_runner_tests::git(&repo, &["init", "-q", "-b", "main"]);
    let mut sandbox = Sandbox::new();
    sandbox.repo = repo.clone();
    let script = "echo made > made.txt && pwd && \
                  (test -e ../../secret.txt && echo secret=visible || echo secret=hidden)";
    let result = run_shell(&sandbox, script).await;
    if !completed_in_a_view("a worktree below a 0700 directory", &result) {
        return;
    }
    let out = stdout_of(&result);
    assert!(out.contains(&repo.display().to_string()), "{out}");
    assert!(out.contains("secret=hidden"), "{out}");
    assert_eq!(
        std::fs::read_to_string(repo.join("made.txt")).unwrap(),
        "made\n"
    );
    assert_eq!(std::fs::metadata(repo.join("made.txt")).unwrap().uid(), 0);
    assert_eq!(
        std::fs::metadata(parent.path()).unwrap().mode() & 0o7777,
        0o700
    );
}

fn write_request(sandbox: &Sandbox, run_id: &str, command: &str) -> PathBuf {
    let mut json = shell_request(sandbox, command);
    json["runId"] = run_id.into();
    let path = sandbox.dir.path().join(format!("request-{run_id}.json"));
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

#[test]
fn two_hosts_on_one_worktree_each_write_it_and_leave_it_as_it_was() {
    let sandbox = Sandbox::new();
    let before = fingerprint(&sandbox.repo);
    let children: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let command = format!(
                "for i in 1 2 3 4 5; do echo $i >> {name}.txt; sleep 0.2; done; cat {name}.txt"
            );
            let request = write_request(&sandbox, name, &command);
            cli()
                .args(["run", "--json"])
                .arg(request)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, name) in children.into_iter().zip(["one", "two"]) {
        let out = child.wait_with_output().unwrap();
        assert_exit(&out, 0);
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            result["outcome"], "completed",
            "{name}: {}",
            result["summary"]
        );
        let written = std::fs::read_to_string(sandbox.repo.join(format!("{name}.txt"))).unwrap();
        assert_eq!(written, "1\n2\n3\n4\n5\n", "{name}");
    }
    // Nothing that was there changed owner or ctime.
    assert_kept(&before, &fingerprint(&sandbox.repo));
}

#[test]
fn a_host_killed_mid_step_leaves_the_worktree_usable_without_recover() {
    let sandbox = Sandbox::new();
    let before = fingerprint(&sandbox.repo);
    let request = write_request(&sandbox, "killed", "echo started > started.txt; sleep 60");
    let mut child = cli()
        .args(["run", "--json"])
        .arg(request)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = sandbox.repo.join("started.txt");
    let waited = Instant::now();
    while !marker.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The owner's own git works on the tree at once: no owner to hand back.
    let status = baa_runner_tests::git(&sandbox.repo, &["status", "--porcelain"]);
    assert!(status.contains("started.txt"), "{status}");
    assert_kept(&before, &fingerprint(&sandbox.repo));
    assert_eq!(
        std::fs::metadata(&marker).unwrap().uid(),
        std::fs::metadata(&sandbox.repo).unwrap().uid()
    );
}

/// Unmounts what it names when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let path = c_path(&self.0);
        // SAFETY: a valid path; the result does not matter here.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_system_mounted_inside_the_worktree_keeps_its_owners() {
    if !crate::privileges::as_root("a mount inside the worktree") {
        return;
    }
    let sandbox = Sandbox::new();
    let sub = sandbox.repo.join("cache");
    std::fs::create_dir(&sub).unwrap();
    let target = c_path(&sub);
    // SAFETY: valid C strings; the result is checked.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755,size=1m".as_ptr().cast(),
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIPPED a mount inside the worktree: cannot mount a tmpfs here ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    let _unmount = Unmount(sub.clone());
    std::fs::write(sub.join("root-owned.txt"), "root's\n").unwrap();
    let script = "echo made > made.txt; \
                  (echo pwned >> cache/root-owned.txt) 2>/dev/null && echo sub=written || echo sub=refused";
    let result = run_shell(&sandbox, script).await;
    if !views_here("a mount inside the worktree", &result) {
        return;
    }
    let out = stdout_of(&result);
    assert!(out.contains("sub=refused"), "{out}");
    assert_eq!(
        std::fs::read_to_string(sub.join("root-owned.txt")).unwrap(),
        "root's\n"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.repo.join("made.txt")).unwrap(),
        "made\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_root_in_its_own_user_namespace_cannot_plant_a_file_capability() {
    let sandbox = Sandbox::new();
    // A kind that sandboxes its own children may create user namespaces,
    // in which it is root over its view's files. A capability written
    // there would be stored as the tree owner's: root's, on the host.
    let script = "cp /bin/true tool && unshare -Ur python3 -c \"\
import os\n\
cap = bytes([1,0,0,2, 0xc0,0,0,0, 0,0,0,0, 0,0,0,0, 0,0,0,0])\n\
try:\n    os.setxattr('tool', 'security.capability', cap); print('xattr=set')\n\
except OSError as e:\n    print('xattr=refused', e.errno)\n\"";
    let mut config = RunnerConfig::default();
    config.kinds.insert(
        "shell".into(),
        baa_runner::config::KindGrant {
            programs: vec!["sh".into()],
            nested_sandbox: true,
            ..Default::default()
        },
    );
    let runner = Runner::new(config).unwrap();
    let request = serde_json::from_value(shell_request(&sandbox, script)).unwrap();
    let result = run(&runner, request).await;
    if !views_here("no file capability from a nested namespace", &result) {
        return;
    }
    let out = stdout_of(&result);
    assert!(out.contains("xattr=refused"), "{out}");
    assert_eq!(
        xattr(&sandbox.repo.join("tool"), c"security.capability"),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_guest_writes_becomes_the_owners_and_a_bind_mount_inside_is_left_alone() {
    if !crate::privileges::as_root("the guest's files in a view of another owner") {
        return;
    }
    let sandbox = Sandbox::new();
    // Another directory of the same file system, bound into the worktree.
    let outside = sandbox.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mnt = sandbox.repo.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // SAFETY: valid C strings; the result is checked.
    let rc = unsafe {
        libc::mount(
            c_path(&outside).as_ptr(),
            c_path(&mnt).as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        eprintln!(
            "SKIPPED a bind mount inside the worktree: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let _unmount = Unmount(mnt.clone());
    for entry in walk(&sandbox.repo) {
        if !entry.starts_with(&mnt) {
            chown(&entry, 1234, 1234);
        }
    }
    chown(&sandbox.repo, 1234, 1234);
    // The worker (the host's root, through WASI) writes in the tree and in
    // the bound directory; the next command and the step's end hand what
    // it wrote in the tree, and only there, to the tree's owner.
    let (runner, _) = crate::probe_runner(&sandbox, crate::grant_all());
    let script = "sh true\n\
                  write top.txt from-the-worker\n\
                  write mnt/elsewhere.txt from-the-worker\n\
                  sh echo appended >> top.txt && echo top=ok\n\
                  write late.txt after-the-last-command";
    let result = run(&runner, sandbox.request("probe", script)).await;
    if !views_here("the guest's files in a view of another owner", &result) {
        return;
    }
    let out = stdout_of(&result);
    assert!(out.contains("top=ok"), "{out}");
    for name in ["top.txt", "late.txt"] {
        let meta = std::fs::metadata(sandbox.repo.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 1234), "{name}");
    }
    let meta = std::fs::metadata(outside.join("elsewhere.txt")).unwrap();
    assert_eq!(meta.uid(), 0, "a file outside the worktree changed owner");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_steps_share_a_write_path_each_as_its_own_and_leave_it_its_owners() {
    if !crate::privileges::as_root("a write path shared by concurrent steps") {
        return;
    }
    // One CODEX_HOME-like directory granted to the kind, two steps on two
    // worktrees at once (two sandbox users).
    let shared = tempfile::Builder::new()
        .prefix("baa-shared-home-")
        .tempdir_in("/run")
        .unwrap();
    std::fs::write(shared.path().join("config.toml"), "model = \"x\"\n").unwrap();
    chown(shared.path(), 1234, 1234);
    chown(&shared.path().join("config.toml"), 1234, 1234);
    let mut config = RunnerConfig::default();
    config.kinds.insert(
        "shell".into(),
        baa_runner::config::KindGrant {
            programs: vec!["sh".into()],
            write_paths: vec![shared.path().to_path_buf()],
            ..Default::default()
        },
    );
    let runner = std::sync::Arc::new(Runner::new(config).unwrap());
    let home = shared.path().display().to_string();
    let steps: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let sandbox = Sandbox::new();
            let script = format!(
                "for i in 1 2 3 4 5; do echo {name}-$i >> {home}/sessions-{name}.log; \
                 cat {home}/config.toml > /dev/null; sleep 0.1; done; id -u"
            );
            let request = serde_json::from_value(shell_request(&sandbox, &script)).unwrap();
            let runner = runner.clone();
            (
                sandbox,
                tokio::spawn(async move { runner.run(request, None).await.unwrap() }),
            )
        })
        .collect();
    let mut uids = Vec::new();
    for (sandbox, step) in steps {
        let result = step.await.unwrap();
        assert_eq!(
            result.outcome,
            StepExecutionOutcome::Completed,
            "{}",
            result.summary
        );
        if !views_here("a write path shared by concurrent steps", &result) {
            return;
        }
        uids.push(stdout_of(&result).trim().to_string());
        drop(sandbox);
    }
    assert_ne!(uids[0], uids[1], "two steps, two sandbox users");
    for name in ["one", "two"] {
        let log = shared.path().join(format!("sessions-{name}.log"));
        let written = std::fs::read_to_string(&log).unwrap();
        assert_eq!(written.lines().count(), 5, "{name}: {written}");
        assert_eq!(std::fs::metadata(&log).unwrap().uid(), 1234);
    }
    assert_eq!(std::fs::metadata(shared.path()).unwrap().uid(), 1234);
}
