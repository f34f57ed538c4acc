//! The writer lock of a run directory: whoever prepared an attempt holds an
//! exclusive lock on its `.lock` file until the attempt is finished, so a
//! second writer (a bug, or another host) gets an error instead of winning.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::Error;

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Held for as long as this process writes the run directory.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Take the lock of `run_dir`, or fail at once if someone holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock, Error> {
        let path = run_dir.join(LOCK_FILE);
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(Error::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::RunLocked {
                path: path.display().to_string(),
            }),
            Err(TryLockError::Error(e)) => Err(Error::io(&path)(e)),
        }
    }

    /// Whether some process holds the lock of `run_dir` right now.
    pub fn is_held(run_dir: &Path) -> bool {
        let Ok(file) = File::open(run_dir.join(LOCK_FILE)) else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(_)) => false,
        }
    }
}
