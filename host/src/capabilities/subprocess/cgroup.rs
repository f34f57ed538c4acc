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
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut fields = right.split(' ');
            let fstype = fields.next().unwrap_or_default();
            let options = fields.nth(1).unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "pids") {
                if let Some(dir) = parent_in(mount_point, own_group(&own, Some("pids"))) {
                    support.pids.get_or_insert(dir);
                }
            } else if fstype == "cgroup2" {
                if let Some(dir) = parent_in(mount_point, own_group(&own, None)) {
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

/// `<mount><own group>/baa-runner`, made if missing; `None` where the host
/// may not write.
fn parent_in(mount_point: &str, own: Option<String>) -> Option<PathBuf> {
    let own = own?;
    let dir = Path::new(mount_point)
        .join(own.trim_start_matches('/'))
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

/// Groups of hosts that are no longer running: kill what is in them and
/// remove them.
fn sweep_stale(support: &Support) {
    for parent in [&support.pids, &support.unified].into_iter().flatten() {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let host = name
                .strip_prefix("step-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            match host {
                Some(pid) if !Path::new(&format!("/proc/{pid}")).exists() => {
                    tracing::warn!(group = %entry.path().display(), "emptying the cgroup of a step a stopped host left");
                    kill_in(&entry.path(), Instant::now() + Duration::from_secs(2));
                    let _ = std::fs::remove_dir(entry.path());
                }
                _ => {}
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
        if pids.is_empty() || Instant::now() >= until {
            return;
        }
        if !killed {
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
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
        let name = format!(
            "step-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut groups = StepCgroups { dirs: Vec::new() };
        let mut parents: Vec<&PathBuf> = support.pids.iter().collect();
        if support.unified.as_ref() != support.pids.as_ref() {
            parents.extend(support.unified.iter());
        }
        for parent in parents {
            let dir = parent.join(&name);
            if let Err(e) = std::fs::create_dir(&dir) {
                tracing::debug!("a step cgroup {}: {e}", dir.display());
                continue;
            }
            groups.dirs.push(dir.clone());
            if Some(parent) == support.pids.as_ref() {
                if let Err(e) = write(&dir.join("pids.max"), &max.to_string()) {
                    tracing::warn!("pids.max of {}: {e}", dir.display());
                    return None;
                }
            }
        }
        (!groups.dirs.is_empty()).then_some(groups)
    }

    /// Move process `pid` (and what it starts later) into the groups.
    pub fn join(&self, pid: u32) -> std::io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// SIGKILL everything in the groups.
    pub fn kill_all(&self) {
        let until = Instant::now() + Duration::from_millis(500);
        for dir in &self.dirs {
            kill_in(dir, until);
        }
    }
}

impl Drop for StepCgroups {
    fn drop(&mut self) {
        self.kill_all();
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.retain(|dir| std::fs::remove_dir(dir).is_err());
        if dirs.is_empty() {
            return;
        }
        let remove = move || {
            let until = Instant::now() + Duration::from_secs(5);
            for dir in dirs {
                while std::fs::remove_dir(&dir).is_err() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        // Exited processes leave a group a moment after the kill.
        std::thread::spawn(remove);
    }
}
