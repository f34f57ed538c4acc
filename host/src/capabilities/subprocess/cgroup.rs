//! A step's control groups, where the host may make them (root and a
//! writable hierarchy): a `pids` limit over everything the step starts,
//! whatever its user or namespace (cgroup v1 `pids`, or v2 with the pids
//! controller), and one kill of all of it when the step ends (v2
//! `cgroup.kill`, else SIGKILL by pid until the group is empty). The step's
//! fork server joins them before it forks anything; its processes cannot
//! leave. Groups a stopped host left are emptied by the next one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The directory, below the host's own group, that holds the steps'.
const PARENT: &str = "baa-runner";

/// The hierarchies a step's groups are made in.
#[derive(Debug, Clone, Default)]
pub struct Support {
    /// Where step groups with a `pids` controller go (v1 `pids`, or v2
    /// when its pids controller can be enabled there).
    pids: Option<PathBuf>,
    /// The v2 parent (for `cgroup.kill`), when there is one.
    unified: Option<PathBuf>,
}

impl Support {
    /// Whether steps get a pids limit.
    pub fn limits_pids(&self) -> bool {
        self.pids.is_some()
    }
}

/// What this host may make, found once per process.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return Support::default();
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut support = Support::default();
        for line in mounts.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut mount = left.split(' ');
            let root = mount.nth(3).unwrap_or_default();
            let mount_point = mount.next().unwrap_or_default();
            let mut fields = right.split(' ');
            let fstype = fields.next().unwrap_or_default();
            let options = fields.nth(1).unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "pids") {
                let own = own_group(&own, Some("pids"));
                if let Some(dir) = parent_in(mount_point, root, own) {
                    support.pids.get_or_insert(dir);
                }
            } else if fstype == "cgroup2" {
                if let Some(dir) = parent_in(mount_point, root, own_group(&own, None)) {
                    if support.pids.is_none() && enable_pids(&dir) {
                        support.pids = Some(dir.clone());
                    }
                    support.unified.get_or_insert(dir);
                }
            }
        }
        sweep_stale(&support);
        support
    })
}

/// The host's group in the v1 hierarchy of `controller` (or v2's).
fn own_group(cgroup: &str, controller: Option<&str>) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            Some(c) => controllers.split(',').any(|x| x == c),
            None => controllers.is_empty(),
        };
        matches.then(|| path.to_string())
    })
}

/// `<mount point><own group below the mount's root>/baa-runner`, made if
/// missing; `None` where the host's group is not below that mount or the
/// host may not write there.
fn parent_in(mount_point: &str, root: &str, own: Option<String>) -> Option<PathBuf> {
    let own = own?;
    let below = if root == "/" {
        own.as_str()
    } else {
        own.strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    let dir = Path::new(mount_point)
        .join(below.trim_start_matches('/'))
        .join(PARENT);
    match std::fs::create_dir(&dir) {
        Ok(()) => Some(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
        Err(e) => {
            tracing::debug!("no step cgroups in {}: {e}", dir.display());
            None
        }
    }
}

/// Enable the v2 pids controller for the step groups below `dir`.
fn enable_pids(dir: &Path) -> bool {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    available.split_whitespace().any(|c| c == "pids")
        && write(&dir.join("cgroup.subtree_control"), "+pids").is_ok()
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Who a host process is, across pid reuse and pid namespaces: its pid
/// namespace, pid and start time (`<pidns inode>-<pid>-<start ticks>`).
fn host_identity(pid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let pidns = std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok()?.ino();
    let start = super::process_start_time(pid)?;
    Some(format!("{pidns}-{pid}-{start}"))
}

/// This host's identity (made once).
fn own_identity() -> &'static str {
    static OWN: OnceLock<String> = OnceLock::new();
    OWN.get_or_init(|| {
        host_identity(std::process::id()).unwrap_or_else(|| format!("0-{}-0", std::process::id()))
    })
}

/// Whether the group `name` (`step-<pidns>-<pid>-<start>-<n>`) belongs to
/// a host of this pid namespace that is no longer running. A group of
/// another namespace is never judged: its host may be alive.
fn is_stale(name: &str) -> bool {
    let mut parts = name.strip_prefix("step-").unwrap_or_default().split('-');
    let (Some(pidns), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let own_pidns = own_identity().split('-').next().unwrap_or_default();
    if pidns != own_pidns {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match host_identity(pid) {
        Some(alive) => alive != format!("{pidns}-{pid}-{start}"),
        None => true,
    }
}

/// Groups of hosts (of this pid namespace) that are no longer running:
/// kill what is in them and remove them.
fn sweep_stale(support: &Support) {
    for parent in [&support.pids, &support.unified].into_iter().flatten() {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if is_stale(&name) {
                tracing::info!(group = %entry.path().display(), "emptying the cgroup of a step a stopped host left");
                kill_in(&entry.path(), Instant::now() + Duration::from_secs(2));
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// SIGKILL everything in the group at `dir` (`cgroup.kill` where there is
/// one), until it is empty or `until`.
fn kill_in(dir: &Path, until: Instant) {
    let killed = write(&dir.join("cgroup.kill"), "1").is_ok();
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        if !killed {
            for pid in pids {
                kill_member(dir, pid);
            }
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL process `pid` if it is (still) in the group at `dir`: through a
/// pidfd taken before the check, so a pid reused meanwhile is not hit.
fn kill_member(dir: &Path, pid: i32) {
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
        return;
    };
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
    let member = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|groups| {
            name.is_some_and(|name| {
                groups
                    .lines()
                    .any(|l| l.ends_with(&format!("/{PARENT}/{name}")))
            })
        })
        .unwrap_or(false);
    if member {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
}

/// One step's groups; dropping them kills everything left in them.
#[derive(Debug)]
pub struct StepCgroups {
    dirs: Vec<PathBuf>,
}

impl StepCgroups {
    /// Make the groups of a step, at most `max` processes and threads.
    /// `None` where the host may not (the step keeps its rlimit bound).
    pub fn create(max: u64) -> Option<StepCgroups> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let support = support();
        let pids_parent = support.pids.as_ref()?;
        let mut groups = StepCgroups { dirs: Vec::new() };
        // A name no other group has (EEXIST: a group left under a reused
        // identity; another name is taken).
        let (name, dir) = (0..16).find_map(|_| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("step-{}-{n}", own_identity());
            let dir = pids_parent.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => Some((name, dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                Err(e) => {
                    tracing::warn!("a step cgroup {}: {e}", dir.display());
                    None
                }
            }
        })?;
        groups.dirs.push(dir.clone());
        if let Err(e) = write(&dir.join("pids.max"), &max.to_string()) {
            tracing::warn!("pids.max of {}: {e}", dir.display());
            return None;
        }
        if let Some(unified) = support.unified.as_ref().filter(|u| *u != pids_parent) {
            let dir = unified.join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => groups.dirs.push(dir),
                Err(e) => tracing::debug!("a step cgroup {}: {e}", dir.display()),
            }
        }
        Some(groups)
    }

    /// Move process `pid` (and what it starts later) into the groups.
    pub fn join(&self, pid: u32) -> std::io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }
}

impl Drop for StepCgroups {
    fn drop(&mut self) {
        // Killed now; waited for (exited processes leave a group a moment
        // after the kill) and removed off this thread, which may be a
        // runtime's.
        for dir in &self.dirs {
            kill_in(dir, Instant::now());
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.retain(|dir| std::fs::remove_dir(dir).is_err());
        if dirs.is_empty() {
            return;
        }
        let remove = move || {
            let until = Instant::now() + Duration::from_secs(5);
            for dir in dirs {
                kill_in(&dir, until);
                while std::fs::remove_dir(&dir).is_err() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        std::thread::spawn(remove);
    }
}
