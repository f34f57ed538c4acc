//! Durable file writes and small helpers shared by the run-record writers:
//! atomic JSON records with an embedded checksum (temp file, fsync, rename,
//! fsync dir), validated reads, digests, timestamps.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Write `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory. Readers see the
/// old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_all_atomic(&[(path, bytes)], Durability::PowerLoss)
}

/// Write several files atomically, each as [`write_atomic`] does, with one
/// fsync per file and one per directory: every temporary file is written
/// (and fsynced), then each is renamed into place in order, then the
/// directories are fsynced. With [`Durability::ProcessCrash`] nothing is
/// fsynced; the renames still keep every file whole.
pub fn write_all_atomic(files: &[(&Path, &[u8])], durability: Durability) -> std::io::Result<()> {
    let sync = durability == Durability::PowerLoss;
    let mut staged = Vec::with_capacity(files.len());
    let cleanup = |staged: &[(std::path::PathBuf, &Path)]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
    };
    for (path, bytes) in files {
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A new file of an unpredictable name, never an existing one and
        // never through a symlink.
        let tmp = dir.join(format!(".{name}.tmp-{}", random_name()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(bytes)?;
            crate::fault::point("write.before-fsync");
            if sync {
                file.sync_all()?;
            }
            Ok(())
        })();
        staged.push((tmp, *path));
        if let Err(e) = written {
            cleanup(&staged);
            return Err(e);
        }
    }
    for (i, (tmp, path)) in staged.iter().enumerate() {
        crate::fault::point("write.before-rename");
        if let Err(e) = fs::rename(tmp, path) {
            cleanup(&staged[i..]);
            return Err(e);
        }
    }
    crate::fault::point("write.before-dir-fsync");
    if sync {
        let mut dirs: Vec<&Path> = files.iter().map(|(p, _)| parent_dir(p)).collect();
        dirs.dedup();
        for dir in dirs {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// [`write_all_atomic`] beneath `dir` (cap-std): files named by plain
/// names, each written to a new temporary file (never an existing one,
/// never through a link), renamed into place, the directory fsynced.
pub fn write_all_atomic_in(
    dir: &cap_std::fs::Dir,
    files: &[(&str, &[u8])],
    durability: Durability,
) -> std::io::Result<()> {
    let sync = durability == Durability::PowerLoss;
    for (name, bytes) in files {
        let tmp = format!(".{name}.tmp-{}", random_name());
        let mut options = cap_std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        let written = (|| {
            let mut file = dir.open_with(&tmp, &options)?;
            file.write_all(bytes)?;
            if sync {
                file.sync_all()?;
            }
            dir.rename(&tmp, dir, name)?;
            // Each in place before the next: a later file never stands
            // without an earlier one (a record without its payload).
            if sync {
                sync_dir_in(dir)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = dir.remove_file(&tmp);
            return Err(e);
        }
    }
    Ok(())
}

/// fsync `dir` itself (a cap-std Dir is an `O_PATH` descriptor, which
/// cannot be synced: the directory is opened again, read-only, beneath it).
fn sync_dir_in(dir: &cap_std::fs::Dir) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let me = rustix::fs::openat(dir, ".", flags, Mode::empty())?;
    rustix::fs::fsync(&me)?;
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// How far the run records survive a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Records are fsynced (files, then their directory) before the write
    /// returns: they survive the machine losing power.
    #[default]
    PowerLoss,
    /// Records are renamed into place whole but not fsynced: they survive
    /// the host process crashing, not the machine. For run directories on
    /// tmpfs or throw-away machines.
    ProcessCrash,
}

/// Serialize `value` as pretty JSON (with a trailing newline) and write it atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// The key under which a record's checksum is stored.
pub const CHECKSUM_KEY: &str = "checksum";

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

/// `sha256:<hex>` of a JSON object without its checksum key; keys are sorted
/// (serde_json's map), so the same object always hashes the same.
fn record_checksum(object: &Value) -> Result<String, serde_json::Error> {
    Ok(format!(
        "sha256:{}",
        sha256_hex(&serde_json::to_vec(object)?)
    ))
}

/// Write `value` (a JSON object) as a record: pretty JSON carrying a
/// `checksum` of its content, written atomically.
pub fn write_record_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &record_bytes(value)?)
}

/// The bytes of `value` as a record: pretty JSON with its checksum.
pub fn record_bytes<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut object = serde_json::to_value(value).map_err(std::io::Error::other)?;
    let checksum = record_checksum(&object).map_err(std::io::Error::other)?;
    match object.as_object_mut() {
        Some(map) => {
            map.insert(CHECKSUM_KEY.to_string(), Value::String(checksum));
        }
        None => return Err(std::io::Error::other("a record must be a JSON object")),
    }
    let mut bytes = serde_json::to_vec_pretty(&object).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Read a record written by [`write_record_atomic`], verify its checksum and
/// return it without the checksum key.
pub fn read_record_value(path: &Path) -> Result<Value, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let bytes = fs::read(path).map_err(|source| RecordError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut object: Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not valid JSON ({e})")))?;
    let stored = object
        .as_object_mut()
        .ok_or_else(|| corrupt("not a JSON object".into()))?
        .remove(CHECKSUM_KEY)
        .ok_or_else(|| corrupt("it has no checksum".into()))?;
    let actual = record_checksum(&object).map_err(|e| corrupt(e.to_string()))?;
    if stored.as_str() != Some(actual.as_str()) {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored}, computed {actual})"
        )));
    }
    Ok(object)
}

/// Read and verify a record, then deserialize it.
pub fn read_record<T: DeserializeOwned>(path: &Path) -> Result<T, RecordError> {
    let value = read_record_value(path)?;
    serde_json::from_value(value).map_err(|e| RecordError::Corrupt {
        path: path.display().to_string(),
        reason: format!("unexpected content ({e})"),
    })
}

/// Parse a JSON-lines log, skipping a torn last line (one a crash cut short,
/// without its newline). Returns the parsed lines and whether one was skipped.
pub fn read_json_lines<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, bool), RecordError> {
    let text = fs::read_to_string(path).map_err(|source| RecordError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    let torn = complete.len() + 1 < text.len() || (complete.is_empty() && !text.is_empty());
    let mut out = Vec::new();
    for (i, line) in complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        out.push(
            serde_json::from_str(line).map_err(|e| RecordError::Corrupt {
                path: path.display().to_string(),
                reason: format!("line {} is not a valid record ({e})", i + 1),
            })?,
        );
    }
    Ok((out, torn))
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// 16 hex digits from the kernel's random source: names that another
/// process (a step writing the same directory) cannot predict.
pub fn random_name() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is valid for its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Not reached on Linux ≥ 3.17; the names are still created
        // exclusively, so a predictable one is only less private.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (nanos ^ u64::from(std::process::id())).to_ne_bytes();
    }
    format!("{:016x}", u64::from_ne_bytes(bytes))
}

/// A new directory `<temp>/<prefix>-<random>` with mode 0755, made by this
/// call (never an existing one or a link someone planted in the shared
/// temporary directory).
pub fn new_temp_dir(prefix: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", random_name()));
    fs::DirBuilder::new().mode(0o755).create(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// A path as a display string for records.
pub fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn files_are_written_beneath_a_dir_durably_and_never_through_a_link() {
        let path = std::env::temp_dir().join(format!("baa-write-in-{}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        let dir = cap_std::fs::Dir::open_ambient_dir(&path, cap_std::ambient_authority()).unwrap();
        let files: [(&str, &[u8]); 2] = [("a.payload", b"payload"), ("a.json", b"{}")];
        write_all_atomic_in(&dir, &files, Durability::PowerLoss).unwrap();
        assert_eq!(fs::read(path.join("a.payload")).unwrap(), b"payload");
        // A name that is a link is replaced, its target untouched.
        let target = path.join("target");
        fs::write(&target, "kept").unwrap();
        std::os::unix::fs::symlink(&target, path.join("b.json")).unwrap();
        write_all_atomic_in(&dir, &[("b.json", b"new")], Durability::PowerLoss).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "kept");
        assert_eq!(fs::read(path.join("b.json")).unwrap(), b"new");
        fs::remove_dir_all(&path).unwrap();
    }
}
