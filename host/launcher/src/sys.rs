//! The launcher's file-opening calls, on rustix: every descriptor is
//! close-on-exec, and paths a step could have planted links in are
//! resolved descriptor-relative with `openat2` (beneath, no links). The
//! namespace, view and confinement code open paths through here (mount
//! points made in a step's private directories use `openat` directly).

use baa_launch::Stage;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// A failure before exec: which stage, and why.
pub type Failure = (Stage, String);

/// Resolution that follows no link at all and stays beneath the directory.
pub(crate) const NO_LINKS: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

pub(crate) fn cstring(bytes: &[u8], what: &str) -> Result<CString, Failure> {
    CString::new(bytes).map_err(|_| (Stage::Spec, format!("{what} contains a NUL byte")))
}

/// The last OS error (of a call made through `libc`).
pub(crate) fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn oflags(flags: libc::c_int) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

/// Open `path` (absolute) with `flags | O_CLOEXEC`.
pub(crate) fn open(path: &Path, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, oflags(flags), Mode::empty())?)
}

/// `openat2(dir, rel, O_PATH | O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
pub(crate) fn open_beneath(dir: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    openat2(
        dir,
        std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()),
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// `openat2(dir, rel, flags | O_CLOEXEC, resolve)`.
pub(crate) fn openat2(
    dir: &OwnedFd,
    rel: &[u8],
    flags: i32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let rel = CString::new(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::fs::openat2(
        dir.as_fd(),
        rel.as_c_str(),
        oflags(flags),
        Mode::empty(),
        ResolveFlags::from_bits_retain(resolve),
    )?)
}

/// Whether `fd` is a directory.
pub(crate) fn is_dir(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}
