//! The step's view of the trees it may write: each one mounted again over
//! its own path, **idmapped** so that its owner appears as the step's user.
//! Nothing on disk changes (files the step creates belong to the owner),
//! and the view vanishes with the mount namespace. Also the user namespace
//! a step of a host without root runs in.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use baa_launch::User;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x0000_0040;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A user namespace whose only mapping shows `owner` as `user` (uid and
/// gid): the mapping an idmapped mount applies. Made by a child that
/// unshares its user namespace and waits while this process writes the
/// maps and opens the namespace; the namespace outlives the child through
/// the descriptor.
pub fn user_namespace(owner: User, user: User) -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: both were just created and are owned here.
    let (ready_read, ready_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: as above.
    let (done_read, done_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the launcher is single-threaded; the child makes only system
    // calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno());
    }
    if pid == 0 {
        // SAFETY: system calls on inherited descriptors, then _exit.
        unsafe {
            // Only the parent may hold the write end this child waits on.
            libc::close(done_write.as_raw_fd());
            libc::close(ready_read.as_raw_fd());
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let byte = [u8::from(ok)];
            libc::write(ready_write.as_raw_fd(), byte.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(done_read.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        }
    }
    drop(ready_write);
    drop(done_read);
    let result = (|| {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        let n = unsafe { libc::read(ready_read.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n != 1 || b[0] != 1 {
            return Err(std::io::Error::other(
                "could not create a user namespace for the mapping",
            ));
        }
        let proc = format!("/proc/{pid}");
        std::fs::write(
            format!("{proc}/uid_map"),
            format!("{} {} 1\n", owner.uid, user.uid),
        )?;
        std::fs::write(
            format!("{proc}/gid_map"),
            format!("{} {} 1\n", owner.gid, user.gid),
        )?;
        crate::sys::open(Path::new(&format!("{proc}/ns/user")), libc::O_RDONLY)
    })();
    drop(done_write);
    // SAFETY: reaping our own child.
    unsafe {
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    result
}

/// A detached copy of the mount tree at `dir` (a directory or a file, with
/// every mount beneath it): a recursive bind mount, not yet attached.
pub fn clone_tree(dir: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and an empty C string; the result is checked.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | AT_RECURSIVE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(errno());
    }
    // SAFETY: just returned by open_tree, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// A detached copy of the mount tree at `dir`, its top mount idmapped
/// through `userns`, without setuid or device files. Mounts beneath it
/// keep their ids: what another file system holds inside the tree stays
/// its owners' (as a walk that never crossed devices left it).
pub fn idmapped_tree(dir: &OwnedFd, userns: &OwnedFd) -> std::io::Result<OwnedFd> {
    let tree = clone_tree(dir)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: a valid descriptor, an empty C string and a properly sized
    // mount_attr; the result is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(tree)
}

/// Mount the detached `tree` over the directory `target` (in this mount
/// namespace).
pub fn attach(tree: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: valid descriptors and empty C strings; the result is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Whether the file system of `path` takes idmapped mounts here: a mapping
/// of its owner to `probe_user`, and a detached idmapped copy of it (which
/// is never attached anywhere).
pub fn probe(path: &Path, probe_user: User) -> Result<(), String> {
    let dir = crate::sys::open(path, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: plain data filled in by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer.
    if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(format!("{}: {}", path.display(), errno()));
    }
    let owner = User {
        uid: st.st_uid,
        gid: st.st_gid,
    };
    let userns = user_namespace(owner, probe_user).map_err(|e| format!("user namespace: {e}"))?;
    idmapped_tree(&dir, &userns).map_err(|e| format!("idmapped mount: {e}"))?;
    Ok(())
}

/// `baa-launch --hold-userns`: become a new user namespace that maps this
/// user to itself, say `ready` on stdout, and hold it until stdin closes
/// (the host's end of the step). The step's fork server joins it, so that
/// `RLIMIT_NPROC`, counted per user and user namespace, bounds the step's
/// processes alone. Returns the exit status.
pub fn hold_user_namespace() -> i32 {
    // SAFETY: plain system calls in this single-threaded process.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: as above.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        eprintln!("baa-launch: unshare(CLONE_NEWUSER): {}", errno());
        return 1;
    }
    let maps = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("{uid} {uid} 1\n")),
        ("/proc/self/gid_map", format!("{gid} {gid} 1\n")),
    ];
    for (path, map) in &maps {
        if let Err(e) = std::fs::write(path, map) {
            eprintln!("baa-launch: {path}: {e}");
            return 1;
        }
    }
    use std::io::{Read, Write};
    if std::io::stdout()
        .write_all(b"ready\n")
        .and_then(|()| std::io::stdout().flush())
        .is_err()
    {
        return 1;
    }
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    0
}
