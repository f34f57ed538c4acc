//! File operations the confined child performs instead of executing a
//! program ([`Builtin`]): as the step's user, inside its Landlock domain, with
//! exclusive, no-follow opens. A link the step planted can then at most
//! redirect the operation to a place the step could write anyway.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use baa_launch::Builtin;

use crate::confine::{self, Prepared};
use crate::sys::Failure;

/// Confine this (forked) child as `p` says, tell the supervisor it started
/// by closing `started`, perform `op` and exit: 0 when it succeeded, 1 with
/// the reason on stderr when it did not. Returns only if confinement failed.
pub fn run(mut p: Prepared, op: &Builtin, started: i32) -> Failure {
    if let Err(failure) = confine::apply(&mut p) {
        return failure;
    }
    // SAFETY: `started` is the write end of the supervisor's start pipe,
    // owned by this child; closing it is how a start is reported.
    unsafe { libc::close(started) };
    let code = match perform(op) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("baa-launch: {message}");
            1
        }
    };
    // SAFETY: ending this child.
    unsafe { libc::_exit(code) }
}

fn perform(op: &Builtin) -> Result<(), String> {
    match op {
        Builtin::WriteFile { path } => write_file(path),
        Builtin::CopyFile { from, to } => copy_file(from, to),
        Builtin::Remove { path } => {
            let c = cpath(path)?;
            // SAFETY: `c` is a valid C string. unlink never follows the
            // last component.
            if unsafe { libc::unlink(c.as_ptr()) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(format!("removing {}: {e}", path.display()));
                }
            }
            Ok(())
        }
    }
}

fn cpath(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `openat(dir, name, flags | O_CLOEXEC, 0600)`.
fn openat(dir: i32, name: &CString, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid C string; the result is checked and owned here.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new file at `path` opened for writing: never an existing file and
/// never through a symlink.
fn create_new(path: &Path) -> Result<OwnedFd, String> {
    let c = cpath(path)?;
    openat(
        libc::AT_FDCWD,
        &c,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
    )
    .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Copy everything readable from `from` to `to`.
fn pump(from: i32, to: &OwnedFd) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        let mut done = 0;
        while done < n as usize {
            // SAFETY: the slice is within `buf`.
            let w = unsafe {
                libc::write(
                    to.as_raw_fd(),
                    buf[done..].as_ptr().cast(),
                    n as usize - done,
                )
            };
            if w < 0 {
                let e = errno();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += w as usize;
        }
    }
}

/// Standard input into a new file beside `path` with an unpredictable
/// name, then renamed over `path` (a rename replaces a planted symlink
/// instead of following it).
fn write_file(path: &Path) -> Result<(), String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} is not a file path", path.display()));
    };
    let mut random = [0u8; 8];
    // SAFETY: `random` is valid for its length.
    if unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) } != 8 {
        return Err(format!("getrandom: {}", errno()));
    }
    let mut tmp_name = b".".to_vec();
    tmp_name.extend_from_slice(name.as_bytes());
    tmp_name.extend_from_slice(format!(".{:016x}", u64::from_ne_bytes(random)).as_bytes());
    let tmp = dir.join(std::ffi::OsStr::from_bytes(&tmp_name));
    let file = create_new(&tmp)?;
    let written = pump(0, &file).map_err(|e| format!("writing {}: {e}", tmp.display()));
    drop(file);
    let renamed = written.and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// Copy the regular file `from` to the new file `to`.
fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    let c = cpath(from)?;
    let source = match openat(
        libc::AT_FDCWD,
        &c,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    ) {
        Ok(fd) => fd,
        // Missing, a symlink, or unreadable to the step: nothing to copy.
        Err(_) => return Ok(()),
    };
    // SAFETY: plain data filled in by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer.
    if unsafe { libc::fstat(source.as_raw_fd(), &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFREG
    {
        return Ok(());
    }
    let target = create_new(to)?;
    pump(source.as_raw_fd(), &target).map_err(|e| format!("copying to {}: {e}", to.display()))
}
