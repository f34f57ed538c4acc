//! Dedicated unprivileged users, one per concurrent step, for a host running
//! as root: root children would ignore the process limit and could chmod or
//! chown outside the worktree despite Landlock. A step leases a uid (an
//! `flock`ed file under the state directory) and is lent the worktree and
//! its write paths: as idmapped views its launches mount (nothing changes
//! on disk), or by chown where the file system takes no view. At the end
//! every process of that uid is killed.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use baa_launch::User;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::{launcher, ConfinementError};
use crate::config::SandboxConfig;

/// A tree lent to the step's user, and who owned it before.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lent {
    path: PathBuf,
    uid: u32,
    gid: u32,
    /// How the step sees it as its own.
    #[serde(default)]
    how: Lending,
    /// When it was lent (a walk's start, see [`walk_start`]).
    #[serde(default)]
    since: Option<i128>,
}

/// How a tree is lent to a step's user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lending {
    /// An idmapped view in the step's mount namespace: nothing on disk
    /// changes owner, nothing is handed back.
    Idmapped,
    /// The file system takes no idmapped mount: every entry is chowned to
    /// the step's user and back.
    #[default]
    Chown,
}

impl Lent {
    /// Give back to the owner what `uid` owns in the tree. Runs once no
    /// process of `uid` is left, so nothing changes the tree meanwhile;
    /// not bounded by any deadline (ownership must come back whole).
    fn hand_back(&self, uid: u32) -> std::io::Result<()> {
        match self.how {
            // Nothing changed owner; what the host itself made in a tree of
            // another owner (the worker's files, through WASI) becomes the
            // owner's, as it would have in the tree's own hands.
            Lending::Idmapped => {
                let host = rustix::process::geteuid().as_raw();
                match self.since {
                    Some(since) if self.uid != host => {
                        let walk = Chown {
                            from: Some(host),
                            skip_linked: true,
                            changed_since: Some(since),
                            made_since: Some(since),
                            ..Chown::to(self.uid, self.gid)
                        };
                        chown_tree(&self.path, &walk)
                    }
                    _ => Ok(()),
                }
            }
            Lending::Chown => {
                let walk = Chown {
                    from: Some(uid),
                    ..Chown::to(self.uid, self.gid)
                };
                chown_tree(&self.path, &walk)
            }
        }
    }
}

/// How `path` is lent to a step's user on this machine: an idmapped view
/// where its file system takes one (asked once per file system), else
/// chown.
pub fn lending(path: &Path) -> Lending {
    lending_verdict(path).0
}

/// [`lending`], and why a view is not possible when it is not.
pub fn lending_verdict(path: &Path) -> (Lending, Option<String>) {
    type Known = Vec<(u64, Lending, Option<String>)>;
    static BY_DEVICE: Mutex<Known> = Mutex::new(Vec::new());
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return (Lending::Chown, Some(format!("{}: {e}", path.display()))),
    };
    let mut known = BY_DEVICE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, how, why)) = known.iter().find(|(dev, _, _)| *dev == meta.dev()) {
        return (*how, why.clone());
    }
    let (how, why) = match launcher::probe_view(path) {
        Ok(()) => (Lending::Idmapped, None),
        Err(why) => {
            tracing::warn!(path = %path.display(), "no idmapped view here, lending by chown: {why}");
            (Lending::Chown, Some(why.to_string()))
        }
    };
    known.push((meta.dev(), how, why.clone()));
    (how, why)
}

/// A uid leased for one step. Released (processes killed, trees handed
/// back, home removed) by [`UserLease::release`] or on drop.
#[derive(Debug)]
pub struct UserLease {
    user: User,
    state_dir: PathBuf,
    home: PathBuf,
    lent: Mutex<Vec<Lent>>,
    released: Mutex<bool>,
    /// When the last walk over the lent trees started (less a margin for
    /// the file system's coarse clock): directories whose ctime is older
    /// have had no entry added since, so a resync does not look inside them.
    synced_since: Mutex<Option<i128>>,
    /// Locks on the trees lent by chown (see [`UserLease::lock_tree`]),
    /// released with the lease.
    tree_locks: Mutex<Vec<File>>,
    /// The operator chose chown lending everywhere.
    chown_only: bool,
    _lock: File,
}

/// An I/O failure on `what` in the dedicated user's state.
fn io(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> ConfinementError {
    move |e| ConfinementError::User(format!("{what}: {e}"))
}

/// A failure lending `path`, with `message`.
fn lend_error(path: &Path, message: String) -> ConfinementError {
    ConfinementError::Lend {
        path: path.to_path_buf(),
        message,
    }
}

impl UserLease {
    /// Lease the first free uid of the configured range.
    pub fn acquire(config: &SandboxConfig) -> Result<UserLease, ConfinementError> {
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        let meta = std::fs::symlink_metadata(dir).map_err(io(dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(ConfinementError::User(format!(
                "the sandbox state directory {} must be a directory owned by root and writable only by it",
                dir.display()
            )));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io(dir.display()))?;
        for uid in config.uid_base..config.uid_base.saturating_add(config.uid_count) {
            let lock_path = dir.join(format!("uid-{uid}.lock"));
            let lock = open_lock(&lock_path)?;
            if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            let lease = UserLease {
                user: User { uid, gid: uid },
                state_dir: dir.clone(),
                home: dir.join(format!("uid-{uid}")),
                lent: Mutex::new(Vec::new()),
                released: Mutex::new(false),
                synced_since: Mutex::new(None),
                tree_locks: Mutex::new(Vec::new()),
                chown_only: config.worktree_view == crate::config::WorktreeView::Chown,
                _lock: lock,
            };
            lease.recover()?;
            lease.make_home()?;
            return Ok(lease);
        }
        Err(ConfinementError::User(format!(
            "all {} sandbox users ({}..) are in use; raise [sandbox] uid-count",
            config.uid_count, config.uid_base
        )))
    }

    pub fn user(&self) -> User {
        self.user
    }

    /// The user's private home (`HOME`; `TMPDIR` is `tmp` beneath it).
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn record_path(&self) -> PathBuf {
        self.state_dir
            .join(format!("uid-{}.lent.json", self.user.uid))
    }

    /// A previous holder died: kill what it left and hand its trees back.
    /// Its record is written before anything runs as the user and removed
    /// only after a release killed everything: without one, there is
    /// nothing to recover.
    fn recover(&self) -> Result<(), ConfinementError> {
        let path = self.record_path();
        if let Ok(bytes) = std::fs::read(&path) {
            launcher::sweep(self.user.uid)?;
            if let Ok(lent) = serde_json::from_slice::<Vec<Lent>>(&bytes) {
                for l in lent {
                    tracing::warn!(uid = self.user.uid, path = %l.path.display(), "handing back a tree a stopped host had lent");
                    let _ = l.hand_back(self.user.uid);
                }
            }
            std::fs::remove_file(&path).map_err(io(path.display()))?;
        }
        Ok(())
    }

    fn make_home(&self) -> Result<(), ConfinementError> {
        let home = &self.home;
        if home.exists() {
            std::fs::remove_dir_all(home).map_err(io(home.display()))?;
        }
        let mut dirs = vec![home.clone()];
        dirs.extend(
            baa_launch::PRIVATE_DIRS
                .iter()
                .map(|(_, sub)| home.join(sub)),
        );
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir.display()))?;
            rustix::fs::chown(
                &dir,
                Some(rustix::fs::Uid::from_raw(self.user.uid)),
                Some(rustix::fs::Gid::from_raw(self.user.gid)),
            )
            .map_err(|e| ConfinementError::User(format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Hand `path` (a directory) to this user for the step; its owner gets
    /// it back at [`UserLease::release`]. The user must be able to reach it.
    pub fn lend(&self, path: &Path, until: std::time::Instant) -> Result<(), ConfinementError> {
        // The launcher resolves a view without following links.
        let path = path
            .canonicalize()
            .map_err(|e| lend_error(path, format!("{}: {e}", path.display())))?;
        let path = path.as_path();
        let mut lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        if lent.iter().any(|l| l.path == path) {
            return Ok(());
        }
        let how = match self.chown_only {
            true => Lending::Chown,
            false => lending(path),
        };
        // A view is mounted where the user can reach it (the launcher hides
        // the directories above it the user may not search); a chowned
        // tree is reached by its path.
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| lend_error(path, format!("{}: {e}", path.display())))?;
        if how == Lending::Chown {
            check_reachable(path, self.user)?;
            self.lock_tree(path, &meta, until)?;
        }
        let started = walk_start();
        lent.push(Lent {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
            how,
            since: Some(started),
        });
        // Recorded before the first chown, so a crash leaves a way back.
        // Renamed into place but not fsynced: it only has to outlive the
        // ownership changes it describes, which come after it in the file
        // system's journal (an fsync here cost 6 ms of every step).
        let record = serde_json::to_vec(&*lent).map_err(|e| lend_error(path, e.to_string()))?;
        let record_path = self.record_path();
        crate::fsutil::write_all_atomic(
            &[(&record_path, &record)],
            crate::fsutil::Durability::ProcessCrash,
        )
        .map_err(|e| lend_error(path, format!("{}: {e}", record_path.display())))?;
        if how == Lending::Idmapped {
            // What the worker creates through WASI from now on is looked
            // for by the next resync (see `sync`).
            self.synced_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(started);
            return Ok(());
        }
        let walk = Chown {
            skip_linked: true,
            until: Some(until),
            ..Chown::to(self.user.uid, self.user.gid)
        };
        if let Err(e) = chown_tree(path, &walk) {
            // Cut short: the next resync walks every tree whole.
            *self.synced_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Err(lend_error(
                path,
                format!("lending {} to uid {}: {e}", path.display(), self.user.uid),
            ));
        }
        // An earlier walk's time stays: other trees may have changed since.
        self.synced_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(started);
        Ok(())
    }

    /// Hold the tree (by device and inode) for this lease: two host
    /// processes would otherwise lend one tree to two users in turn. Waits
    /// for the other step until `until`.
    fn lock_tree(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        until: std::time::Instant,
    ) -> Result<(), ConfinementError> {
        let lock_path = self
            .state_dir
            .join(format!("tree-{}-{}.lock", meta.dev(), meta.ino()));
        let lock = open_lock(&lock_path)?;
        while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .is_err()
        {
            if std::time::Instant::now() >= until {
                return Err(lend_error(
                    path,
                    format!(
                        "{} is lent to the sandbox user of a step of another host process until it ends; \
                         run steps on one worktree one at a time, or from one host",
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.tree_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lock);
        Ok(())
    }

    /// Give the user what appeared in its trees since (files the worker
    /// wrote through WASI belong to the host): a chowned tree's new entries
    /// to the user; in a view whose owner is not the host's user, the
    /// entries the host made since to that owner (the view shows them as
    /// the step's). Only directories changed since the last walk are looked
    /// into (their ctime, which no one can set back, says so); the others
    /// are only passed through.
    pub fn sync(&self, until: std::time::Instant) -> Result<(), ConfinementError> {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let since = *self.synced_since.lock().unwrap_or_else(|p| p.into_inner());
        let started = walk_start();
        let host = rustix::process::geteuid().as_raw();
        for l in &lent {
            let walk = match l.how {
                Lending::Chown => Chown {
                    skip_linked: true,
                    changed_since: since,
                    until: Some(until),
                    ..Chown::to(self.user.uid, self.user.gid)
                },
                Lending::Idmapped if l.uid != host && since.is_some() => Chown {
                    from: Some(host),
                    skip_linked: true,
                    changed_since: since,
                    made_since: since,
                    until: Some(until),
                    ..Chown::to(l.uid, l.gid)
                },
                Lending::Idmapped => continue,
            };
            chown_tree(&l.path, &walk)
                .map_err(|e| lend_error(&l.path, format!("{}: {e}", l.path.display())))?;
        }
        *self.synced_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(())
    }

    /// Whether any tree is shown through an idmapped view.
    pub fn has_views(&self) -> bool {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.iter().any(|l| l.how == Lending::Idmapped)
    }

    /// The trees shown to the step's user through idmapped views, each
    /// with the namespace of its mapping (made now if it is the first).
    pub fn views(&self) -> Vec<baa_launch::View> {
        let lent = self.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.iter()
            .filter(|l| l.how == Lending::Idmapped)
            .map(|l| baa_launch::View {
                path: l.path.clone(),
                owner: User {
                    uid: l.uid,
                    gid: l.gid,
                },
                // The step's fork server makes the mapping, once per step.
                user_namespace: None,
            })
            .collect()
    }

    /// Kill every process of the user, hand every lent tree back, empty the
    /// home. Idempotent.
    pub fn release(&self) {
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        if *released {
            return;
        }
        *released = true;
        let swept = launcher::sweep(self.user.uid);
        if let Err(e) = &swept {
            tracing::warn!("{e}");
        }
        let lent = std::mem::take(&mut *self.lent.lock().unwrap_or_else(|p| p.into_inner()));
        for l in &lent {
            if let Err(e) = l.hand_back(self.user.uid) {
                tracing::warn!(path = %l.path.display(), "handing back: {e}");
            }
        }
        // Without a record the next holder would not sweep: keep it when
        // processes of the user may be left.
        if swept.is_ok() {
            let _ = std::fs::remove_file(self.record_path());
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        self.release();
    }
}

/// A lock file in the state directory (host-only), made if missing.
fn open_lock(path: &Path) -> Result<File, ConfinementError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path.display()))
}

/// Every directory from `/` down to `path` must let `user` search it.
pub fn check_reachable(path: &Path, user: User) -> Result<(), ConfinementError> {
    for dir in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let unreachable = |message: String| ConfinementError::Unreachable {
            path: path.to_path_buf(),
            message,
        };
        let meta =
            std::fs::metadata(dir).map_err(|e| unreachable(format!("{}: {e}", dir.display())))?;
        let mode = meta.mode();
        let searchable = user.may_search(meta.uid(), meta.gid(), mode);
        if !searchable && dir != path && meta.is_dir() {
            return Err(unreachable(format!(
                "the sandbox user (uid {}) cannot reach {}: {} has mode {:o}; make it searchable (chmod o+x {}) or set [sandbox] user = \"current\"",
                user.uid,
                path.display(),
                dir.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// One ownership walk of [`chown_tree`].
#[derive(Debug, Clone, Copy)]
struct Chown {
    /// Change entries owned by this uid only; `None`: every entry not
    /// owned by `uid` yet.
    from: Option<u32>,
    uid: u32,
    gid: u32,
    /// Leave files with several hard links alone (one may be a link to a
    /// file outside the tree).
    skip_linked: bool,
    /// Look only into directories changed since (see [`walk_tree`]).
    changed_since: Option<i128>,
    /// Change only entries whose ctime is not older: made since.
    made_since: Option<i128>,
    until: Option<std::time::Instant>,
}

impl Chown {
    fn to(uid: u32, gid: u32) -> Chown {
        Chown {
            from: None,
            uid,
            gid,
            skip_linked: false,
            changed_since: None,
            made_since: None,
            until: None,
        }
    }
}

/// Change the owner of `root` and everything beneath it (without following
/// symlinks or crossing file systems) as `walk` says.
fn chown_tree(root: &Path, walk: &Chown) -> std::io::Result<()> {
    let Chown {
        from,
        uid,
        gid,
        skip_linked,
        changed_since,
        made_since,
        until,
    } = *walk;
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dev = rustix::fs::fstat(&dir)?.st_dev;
    let owner = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    let wanted = |st: &rustix::fs::Stat| {
        let owner = match from {
            Some(f) => st.st_uid == f,
            None => st.st_uid != uid,
        };
        owner && made_since.is_none_or(|since| ctime_nanos(st) >= since)
    };
    let root_stat = rustix::fs::fstat(&dir)?;
    if wanted(&root_stat) {
        rustix::fs::fchown(&dir, owner.0, owner.1)?;
    }
    let mut visited: u32 = 0;
    walk_tree(&dir, dev, changed_since, &mut |dir, name, st| {
        visited = visited.wrapping_add(1);
        if visited.is_multiple_of(256) && until.is_some_and(|t| std::time::Instant::now() >= t) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the step's deadline came first",
            ));
        }
        if !wanted(st) {
            return Ok(());
        }
        // The entry is opened (never followed) and checked as it is opened:
        // what gets a new owner is the inode that was checked, even if the
        // step swaps the name for a link to a file elsewhere meanwhile.
        let Ok(entry) = open_here(dir, name, OFlags::PATH | OFlags::NOFOLLOW) else {
            return Ok(());
        };
        let st = rustix::fs::fstat(&entry)?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let plain = kind == rustix::fs::FileType::Directory
            || kind == rustix::fs::FileType::Symlink
            || (kind == rustix::fs::FileType::RegularFile && !(skip_linked && st.st_nlink > 1));
        if plain && st.st_dev == dev && wanted(&st) {
            rustix::fs::chownat(&entry, c"", owner.0, owner.1, AtFlags::EMPTY_PATH)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Open the entry `name` of `dir` itself: no link followed, no mount
/// crossed (a bind mount of the same file system included, which `st_dev`
/// alone would not tell apart).
fn open_here(dir: &OwnedFd, name: &std::ffi::CStr, flags: OFlags) -> std::io::Result<OwnedFd> {
    use rustix::fs::ResolveFlags;
    Ok(rustix::fs::openat2(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_XDEV
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Directory levels a walk holds open at once.
const MAX_DEPTH: usize = 512;
/// Directories below [`MAX_DEPTH`] levels a walk keeps open to walk later.
const MAX_DEFERRED: usize = 256;

/// The clock reading a walk starts from, in nanoseconds, less a margin:
/// file times come from the kernel's coarse clock, which lags by up to a tick.
fn walk_start() -> i128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    now - 100_000_000
}

fn ctime_nanos(st: &rustix::fs::Stat) -> i128 {
    st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128
}

/// Call `visit` for every entry beneath `root` on device `dev`, depth first,
/// holding one descriptor per level: [`MAX_DEPTH`] levels at a time, the
/// directories found deeper are walked afterwards from themselves (at most
/// [`MAX_DEFERRED`] of them at once), so no nesting a step makes escapes the
/// walk. With `changed_since`, a directory whose ctime is older (no entry
/// added, removed or renamed since) is only passed through: its
/// subdirectories are walked, its other entries not visited.
fn walk_tree(
    root: &OwnedFd,
    dev: u64,
    changed_since: Option<i128>,
    visit: &mut dyn FnMut(&OwnedFd, &std::ffi::CStr, &rustix::fs::Stat) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut deeper = Vec::new();
    walk(root, dev, 0, changed_since, visit, &mut deeper)?;
    while let Some(dir) = deeper.pop() {
        walk(&dir, dev, 0, changed_since, visit, &mut deeper)?;
    }
    Ok(())
}

/// One level of [`walk_tree`].
fn walk(
    dir: &OwnedFd,
    dev: u64,
    depth: usize,
    changed_since: Option<i128>,
    visit: &mut dyn FnMut(&OwnedFd, &std::ffi::CStr, &rustix::fs::Stat) -> std::io::Result<()>,
    deeper: &mut Vec<OwnedFd>,
) -> std::io::Result<()> {
    let unchanged = match changed_since {
        Some(since) => ctime_nanos(&rustix::fs::fstat(dir)?) < since,
        None => false,
    };
    let mut subdirs = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir.as_fd())? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if unchanged {
            let kind = entry.file_type();
            if kind != rustix::fs::FileType::Directory && kind != rustix::fs::FileType::Unknown {
                continue;
            }
        }
        let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if st.st_dev != dev {
            continue;
        }
        if !unchanged {
            visit(dir, name, &st)?;
        }
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            subdirs.push(name.to_owned());
        }
    }
    for name in subdirs {
        let Ok(sub) = open_here(
            dir,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        ) else {
            continue;
        };
        if depth + 1 < MAX_DEPTH {
            walk(&sub, dev, depth + 1, changed_since, visit, deeper)?;
        } else if deeper.len() < MAX_DEFERRED {
            // Walked later from here, once the descriptors above are closed.
            deeper.push(sub);
        }
    }
    Ok(())
}

/// Hand back what hosts that stopped mid-step had lent to dedicated users
/// whose lease is free now, and kill those users' processes. Returns the
/// trees handed back.
pub fn recover_abandoned(config: &SandboxConfig) -> Vec<PathBuf> {
    let mut handed_back = Vec::new();
    let Ok(entries) = std::fs::read_dir(&config.state_dir) else {
        return handed_back;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(uid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("uid-"))
            .and_then(|n| n.strip_suffix(".lent.json"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let lock_path = config.state_dir.join(format!("uid-{uid}.lock"));
        let Ok(lock) = File::options().write(true).open(&lock_path) else {
            continue;
        };
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            continue; // in use by a running step
        }
        let lent: Vec<Lent> = std::fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let _ = launcher::sweep(uid);
        for l in lent {
            // A view had nothing to give back but what the guest made.
            if l.hand_back(uid).is_ok() && l.how == Lending::Chown {
                handed_back.push(l.path);
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    handed_back
}

/// Whether a step's subprocesses run as a dedicated user under `config`.
pub fn dedicated(config: &SandboxConfig) -> Result<bool, ConfinementError> {
    let root = rustix::process::geteuid().is_root();
    match config.user {
        crate::config::SandboxUser::Auto => Ok(root),
        crate::config::SandboxUser::Current => Ok(false),
        crate::config::SandboxUser::Dedicated if root => Ok(true),
        crate::config::SandboxUser::Dedicated => Err(ConfinementError::User(
            "[sandbox] user = \"dedicated\" needs the host to run as root; use \"auto\" or \"current\""
                .into(),
        )),
    }
}

/// Leases by worktree: concurrent steps of this process on one worktree
/// share its user (two users cannot both own the tree).
static BY_WORKTREE: Mutex<Vec<(PathBuf, std::sync::Weak<UserLease>)>> = Mutex::new(Vec::new());

/// The dedicated user of one step: leased at its first subprocess (or
/// scratch file), shared by the worker's and the host's commands (and by
/// other steps on the same worktree), released when the last step using it
/// wrote its record.
#[derive(Debug, Default)]
pub struct StepUser {
    lease: Mutex<Option<std::sync::Arc<UserLease>>>,
}

impl StepUser {
    /// The step's lease; on first use, lease a uid (or join the one of
    /// another step on the same worktree, the first of `trees`) and lend it
    /// `trees`.
    pub fn lease(
        &self,
        config: &SandboxConfig,
        trees: &[PathBuf],
        until: std::time::Instant,
    ) -> Result<std::sync::Arc<UserLease>, ConfinementError> {
        let mut slot = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let lease = match &*slot {
            Some(lease) => lease.clone(),
            None => {
                let key = trees.first().cloned().unwrap_or_default();
                let mut shared = BY_WORKTREE.lock().unwrap_or_else(|p| p.into_inner());
                shared.retain(|(_, weak)| weak.strong_count() > 0);
                let existing = shared
                    .iter()
                    .find(|(tree, _)| *tree == key)
                    .and_then(|(_, weak)| weak.upgrade());
                let lease = match existing {
                    Some(lease) => lease,
                    None => {
                        let lease = std::sync::Arc::new(UserLease::acquire(config)?);
                        shared.push((key, std::sync::Arc::downgrade(&lease)));
                        lease
                    }
                };
                *slot = Some(lease.clone());
                lease
            }
        };
        for tree in trees {
            lease.lend(tree, until)?;
        }
        Ok(lease)
    }

    /// The leased uid, if any.
    pub fn uid(&self) -> Option<u32> {
        self.lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|l| l.user().uid)
    }

    /// This step is done with the user. When no other step shares it, its
    /// processes are killed, its trees handed back and the uid freed.
    pub fn release(&self) {
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Dropping the last reference releases it (see `Drop`). The
        // registry is locked meanwhile so no step joins a lease being
        // released.
        let _registry = BY_WORKTREE.lock().unwrap_or_else(|p| p.into_inner());
        drop(lease);
    }
}
