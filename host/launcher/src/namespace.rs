//! The mount environment of a step's processes: its private `/tmp` and the
//! like, the idmapped views of its worktree and write paths, an empty tmpfs
//! over ancestors its user cannot search, all in a mount (and IPC)
//! namespace of its own, inside the step's user namespace if it has one.
//! Made once per step by the fork server, or per process by a one-shot
//! launch.

use baa_launch::Stage;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use baa_launch::Environment;

use crate::sys::{cstring, errno, open, openat2, Failure, NO_LINKS};

/// Everything a step's mount environment needs, opened and checked before
/// it is entered.
pub struct Namespace {
    user: Option<baa_launch::User>,
    /// The step's user namespace to join (a host without root).
    user_namespace: Option<OwnedFd>,
    /// Private directories to mount: (source, opened without following a
    /// link, and the system directory it replaces), and the home they are
    /// in (opened again inside the new mount namespace).
    private: Vec<(OwnedFd, &'static str)>,
    private_home: Option<PathBuf>,
    /// Trees under those mount points the step must still see: (path, is
    /// a directory).
    expose: Vec<(CString, bool)>,
    /// The worktree, resolved again inside the new mount namespace (a
    /// directory opened outside it is unreachable).
    worktree: PathBuf,
    /// Trees to mount again, idmapped through the user namespace beside
    /// each (made before entering, as root).
    views: Vec<(CString, OwnedFd)>,
    /// Directories above a view that the step's user may not search,
    /// replaced by an empty tmpfs in which what the step needs beneath
    /// them is mounted again: the view is reached by mount, not by path.
    masks: Vec<PathBuf>,
}

impl Namespace {
    /// Open, check and resolve everything `env` asks for.
    pub fn prepare(env: &Environment) -> Result<Namespace, Failure> {
        let private = match &env.private_dirs {
            Some(home) => private_dirs(home, env.user)?,
            None => Vec::new(),
        };
        let views = views(env, &private)?;
        let user_namespace = match &env.user_namespace {
            Some(path) => Some(open(path, libc::O_RDONLY).map_err(|e| {
                (
                    Stage::UserNamespace,
                    format!("the step's user namespace {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        let masks = masks(env, &private);
        let expose = expose(env, &private, &masks)?;
        Ok(Namespace {
            user: env.user,
            user_namespace,
            private,
            private_home: env.private_dirs.clone(),
            expose,
            worktree: env.worktree.clone(),
            views,
            masks,
        })
    }

    /// The private directories, as checked (Landlock rules go on these).
    pub fn private(&self) -> &[(OwnedFd, &'static str)] {
        &self.private
    }

    /// Every descriptor held.
    pub fn descriptors(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.private.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        fds.extend(self.user_namespace.iter().map(|fd| fd.as_raw_fd()));
        fds.extend(self.views.iter().map(|(_, fd)| fd.as_raw_fd()));
        fds
    }

    /// Join the step's user namespace, then make and fill the mount
    /// namespace. Returns the worktree as the step sees it, or `None` when
    /// there is nothing to enter (no private directories).
    ///
    /// # Safety
    /// Called in a single-threaded process only.
    pub unsafe fn enter(&self) -> Result<Option<OwnedFd>, Failure> {
        if let Some(ns) = &self.user_namespace {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                return Err((Stage::UserNamespace, format!("setns: {}", errno())));
            }
        }
        if self.private.is_empty() {
            return Ok(None);
        }
        // A mount namespace whose changes do not propagate back, with the
        // step's own directories as /tmp and the like. And an IPC namespace
        // of its own: SysV queues and shared memory die with it, never
        // reaching the next step of the uid.
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC) != 0
            || libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
        {
            return Err((
                Stage::PrivateDirs,
                format!("a mount namespace: {}", errno()),
            ));
        }
        step_mounts(self).map(Some)
    }
}

/// The read and write trees beneath a private directory or a hidden
/// ancestor (not the directory itself), each once, that exist.
fn expose(
    env: &Environment,
    private: &[(OwnedFd, &'static str)],
    masks: &[PathBuf],
) -> Result<Vec<(CString, bool)>, Failure> {
    let targets: Vec<&Path> = private
        .iter()
        .map(|(_, t)| Path::new(*t))
        .chain(masks.iter().map(PathBuf::as_path))
        .collect();
    let mut expose = Vec::new();
    if targets.is_empty() {
        return Ok(expose);
    }
    let mut seen: Vec<&Path> = Vec::new();
    for path in env
        .read
        .iter()
        .chain(&env.write)
        .chain(std::iter::once(&env.worktree))
    {
        if !targets.iter().any(|t| path.starts_with(t) && path != t) {
            continue;
        }
        if seen.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        seen.push(path);
        if path.exists() {
            let c = cstring(path.as_os_str().as_bytes(), "a path")?;
            expose.push((c, path.is_dir()));
        }
    }
    Ok(expose)
}

/// The step's private directories in its home (which the step can write):
/// each opened beneath the home without following any link, and required
/// to be a directory of the step's user, with the system directory it
/// replaces. A step that replaced one by a link gets no subprocess rather
/// than a mount of what the link names.
fn private_dirs(
    home: &Path,
    user: Option<baa_launch::User>,
) -> Result<Vec<(OwnedFd, &'static str)>, Failure> {
    let fail = |what: String| (Stage::PrivateDirs, what);
    let home_fd = open(home, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .map_err(|e| fail(format!("the step's home {}: {e}", home.display())))?;
    let mut out = Vec::new();
    for (target, sub) in baa_launch::PRIVATE_DIRS {
        if !Path::new(target).is_dir() {
            continue;
        }
        let fd = openat2(
            &home_fd,
            sub.as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            NO_LINKS | libc::RESOLVE_NO_XDEV,
        )
        .map_err(|e| {
            fail(format!(
                "`{sub}` in the step's home is not a directory of its own (replaced by a link?): {e}"
            ))
        })?;
        // SAFETY: plain data filled in by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(fail(format!("`{sub}`: {}", errno())));
        }
        if user.is_some_and(|u| u.uid != st.st_uid) {
            return Err(fail(format!(
                "`{sub}` in the step's home belongs to uid {}, not the step's",
                st.st_uid
            )));
        }
        out.push((fd, *target));
    }
    Ok(out)
}

/// The user namespace of each of the spec's views. Views need the step's
/// own user and mount namespace.
fn views(
    spec: &Environment,
    private: &[(OwnedFd, &'static str)],
) -> Result<Vec<(CString, OwnedFd)>, Failure> {
    if spec.views.is_empty() {
        return Ok(Vec::new());
    }
    let user = match spec.user {
        Some(user) if !private.is_empty() => user,
        _ => {
            return Err((
                Stage::Views,
                "idmapped views need a dedicated user and private directories".into(),
            ))
        }
    };
    let mut out = Vec::new();
    for view in &spec.views {
        if !view.path.is_absolute() {
            return Err((
                Stage::Views,
                format!("{} is not absolute", view.path.display()),
            ));
        }
        let made = match &view.user_namespace {
            Some(path) => open(path, libc::O_RDONLY),
            None => crate::view::user_namespace(view.owner, user),
        };
        let userns = made.map_err(|e| {
            (
                Stage::Views,
                format!("a user namespace for {}: {e}", view.path.display()),
            )
        })?;
        out.push((cstring(view.path.as_os_str().as_bytes(), "a view")?, userns));
    }
    Ok(out)
}

/// The topmost directory above each view that `spec.user` cannot search
/// (`/root` above `/root/work/repo`), outside the private directories
/// (which are rebuilt searchable anyway).
fn masks(spec: &Environment, private: &[(OwnedFd, &'static str)]) -> Vec<PathBuf> {
    let Some(user) = spec.user else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for view in &spec.views {
        if private.iter().any(|(_, t)| view.path.starts_with(t)) {
            continue;
        }
        let above: Vec<&Path> = view.path.ancestors().skip(1).collect();
        for dir in above.into_iter().rev() {
            let Ok(meta) = std::fs::metadata(dir) else {
                break;
            };
            use std::os::unix::fs::MetadataExt;
            if !user.may_search(meta.uid(), meta.gid(), meta.mode()) {
                if !out.iter().any(|m| dir.starts_with(m)) {
                    out.retain(|m| !m.starts_with(dir));
                    out.push(dir.to_path_buf());
                }
                break;
            }
        }
    }
    out
}

/// In the child's new mount namespace: the step's private directories over
/// `/tmp` and the like, an empty tmpfs over each directory above a view the
/// step's user may not search, what the step needs beneath those bound
/// back, its views attached, and its working directory opened in them.
/// Every path is resolved once, before anything the step can write is
/// mounted, or beneath a descriptor without following links: a step that
/// renames or links in its own directories redirects nothing.
///
/// Returns the worktree as the step sees it.
///
/// # Safety
/// Called in a single-threaded process only, in its new mount namespace.
unsafe fn step_mounts(p: &Namespace) -> Result<OwnedFd, Failure> {
    let slash = open(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| (Stage::PrivateDirs, format!("/: {e}")))?;
    // Resolved now, in the host's tree as this namespace still shows it
    // (what is bound back may be reached through the host's own links; a
    // view, which the step will own, through none).
    let (mut sources, early) = mount_sources(p, &slash)?;
    let worktree = beneath_root(
        &slash,
        p.worktree.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| {
        (
            Stage::Cwd,
            format!("worktree {}: {e}", p.worktree.display()),
        )
    })?;
    private_mounts(p)?;
    // Parents first: each is mounted on a point made in the step's own
    // directory without following links, or beneath a mount made here.
    sources.sort_by_key(|(path, _)| path.len());
    let mut roots: Vec<Opened> = Vec::new();
    for (path, mount) in sources {
        let target = mount_target(p, &path, &mount, &roots, &early)?;
        let tree = match mount {
            Mount::View(tree) => tree,
            Mount::Bind(source, _) => crate::view::clone_tree(&source).map_err(|e| {
                (
                    Stage::PrivateDirs,
                    format!("{}: {e}", String::from_utf8_lossy(&path)),
                )
            })?,
        };
        crate::view::attach(&tree, &target).map_err(|e| {
            (
                Stage::Views,
                format!("mounting {}: {e}", String::from_utf8_lossy(&path)),
            )
        })?;
        roots.push((path, tree));
    }
    // The worktree as the step sees it: its view, or the tree itself.
    let wt = p.worktree.as_os_str().as_bytes();
    match roots.into_iter().rev().find(|(path, _)| path == wt) {
        Some((_, root)) => Ok(root),
        None => Ok(worktree),
    }
}

/// `path` (absolute) opened beneath the host's root `slash`, never through
/// a magic link.
fn beneath_root(
    slash: &OwnedFd,
    path: &[u8],
    flags: i32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    openat2(slash, rel, flags, resolve | libc::RESOLVE_NO_MAGICLINKS)
}

/// A path and what is mounted at it.
type Source = (Vec<u8>, Mount);

/// A path and the directory it was opened as.
type Opened = (Vec<u8>, OwnedFd);

/// What the step's mounts are made of: the trees exposed to it (bound
/// back as they are) and its views (idmapped, resolved through no link),
/// with the directories the views were resolved to.
fn mount_sources(p: &Namespace, slash: &OwnedFd) -> Result<(Vec<Source>, Vec<Opened>), Failure> {
    let mut sources = Vec::new();
    for (path, is_dir) in &p.expose {
        let fd = beneath_root(slash, path.as_bytes(), libc::O_PATH, 0)
            .map_err(|e| (Stage::PrivateDirs, format!("{path:?}: {e}")))?;
        sources.push((path.as_bytes().to_vec(), Mount::Bind(fd, *is_dir)));
    }
    let mut early = Vec::new();
    for (path, userns) in &p.views {
        let dir = beneath_root(
            slash,
            path.as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| (Stage::Views, format!("{path:?}: {e}")))?;
        let tree = crate::view::idmapped_tree(&dir, userns)
            .map_err(|e| (Stage::Views, format!("an idmapped view of {path:?}: {e}")))?;
        early.push((path.as_bytes().to_vec(), dir));
        sources.push((path.as_bytes().to_vec(), Mount::View(tree)));
    }
    Ok((sources, early))
}

/// Where `mount` goes: beneath the nearest mount made here (opened
/// without following links), else a point made in the step's own private
/// directory, else (a view in the host's own tree) where it was resolved.
fn mount_target(
    p: &Namespace,
    path: &[u8],
    mount: &Mount,
    roots: &[Opened],
    early: &[Opened],
) -> Result<OwnedFd, Failure> {
    let under = |prefix: &[u8]| {
        path.starts_with(prefix)
            && (path.len() == prefix.len() || path.get(prefix.len()) == Some(&b'/'))
    };
    let is_dir = !matches!(mount, Mount::Bind(_, false));
    let parent = roots
        .iter()
        .filter(|(root, _)| under(root))
        .max_by_key(|(root, _)| root.len());
    if let Some((root, fd)) = parent {
        if root.len() == path.len() {
            return fd.try_clone().map_err(|e| (Stage::Views, e.to_string()));
        }
        let rel = &path[root.len() + 1..];
        let flags = if is_dir {
            libc::O_PATH | libc::O_DIRECTORY
        } else {
            libc::O_PATH
        };
        return openat2(fd, rel, flags | libc::O_NOFOLLOW, NO_LINKS).map_err(|e| {
            (
                Stage::Views,
                format!("{}: {e}", String::from_utf8_lossy(path)),
            )
        });
    }
    let covered = p
        .private
        .iter()
        .map(|(_, t)| Path::new(*t))
        .chain(p.masks.iter().map(PathBuf::as_path))
        .filter(|t| under(t.as_os_str().as_bytes()))
        .max_by_key(|t| t.as_os_str().len());
    match (covered, mount) {
        (Some(t), _) => mount_point(t, path, is_dir).map_err(|e| {
            (
                Stage::PrivateDirs,
                format!("{}: {e}", String::from_utf8_lossy(path)),
            )
        }),
        // A view in the host's own tree: where it was resolved.
        (None, Mount::View(_)) => early
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, fd)| fd.try_clone())
            .transpose()
            .map_err(|e| (Stage::Views, e.to_string()))?
            .ok_or((Stage::Views, "a view without its directory".to_string())),
        (None, Mount::Bind(..)) => Err((
            Stage::PrivateDirs,
            format!(
                "{} is under no private directory",
                String::from_utf8_lossy(path)
            ),
        )),
    }
}

/// What [`step_mounts`] mounts at a path.
enum Mount {
    /// The host's tree there, bound back (a directory or not).
    Bind(OwnedFd, bool),
    /// An idmapped view, detached until attached there.
    View(OwnedFd),
}

/// The step's private directories over `/tmp` and the like, and an empty
/// tmpfs over each directory above a view its user may not search.
///
/// # Safety
/// Called in a single-threaded process only, in its new mount namespace.
unsafe fn private_mounts(p: &Namespace) -> Result<(), Failure> {
    // A mount needs its source in this namespace: the directories are
    // opened again, the same way, and must be the ones checked before.
    let home = p
        .private_home
        .as_deref()
        .unwrap_or(Path::new("/nonexistent"));
    let fresh = private_dirs(home, p.user)?;
    let same = fresh.len() == p.private.len()
        && fresh
            .iter()
            .zip(&p.private)
            .all(|((a, _), (b, _))| same_inode(a, b));
    if !same {
        return Err((
            Stage::PrivateDirs,
            "the step's private directories changed while it was being confined".into(),
        ));
    }
    for (source, target) in &fresh {
        let source = format!("/proc/self/fd/{}\0", source.as_raw_fd());
        let target_c = format!("{target}\0");
        if libc::mount(
            source.as_ptr().cast(),
            target_c.as_ptr().cast(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err((
                Stage::PrivateDirs,
                format!("mounting a private {target}: {}", errno()),
            ));
        }
    }
    // Directories the step's user may not search, emptied.
    for mask in &p.masks {
        let target = cstring(mask.as_os_str().as_bytes(), "a directory")?;
        if libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0755,size=1m,nr_inodes=4k".as_ptr().cast(),
        ) != 0
        {
            return Err((
                Stage::Views,
                format!("hiding {}: {}", mask.display(), errno()),
            ));
        }
    }
    Ok(())
}

/// Whether two descriptors refer to the same file.
fn same_inode(a: &OwnedFd, b: &OwnedFd) -> bool {
    let stat = |fd: &OwnedFd| {
        // SAFETY: plain data filled in by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat buffer.
        (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}

/// Make `path` (below the private directory now mounted at `target`, with
/// its parents) a directory or an empty file to mount on, and open it.
/// Every component is created and opened beneath its parent without
/// following a link: the private directory is the step's to fill.
fn mount_point(target: &Path, path: &[u8], is_dir: bool) -> std::io::Result<OwnedFd> {
    let rel = path
        .strip_prefix(target.as_os_str().as_bytes())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let parts: Vec<&[u8]> = rel
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let mut dir = open(target, libc::O_PATH | libc::O_DIRECTORY)?;
    for (i, part) in parts.iter().enumerate() {
        let c = CString::new(*part).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let last = i + 1 == parts.len();
        // SAFETY: a valid descriptor and C string; results are checked.
        let rc = unsafe {
            if last && !is_dir {
                let fd = libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_NONBLOCK
                        | libc::O_CLOEXEC,
                    0o600,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    -1
                }
            } else {
                libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755)
            }
        };
        if rc != 0 && errno().raw_os_error() != Some(libc::EEXIST) {
            return Err(errno());
        }
        let flags = if last && !is_dir {
            libc::O_PATH | libc::O_NOFOLLOW
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW
        };
        dir = openat2(&dir, part, flags, NO_LINKS)?;
    }
    Ok(dir)
}
