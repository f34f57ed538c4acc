//! Where compiled worker kinds are kept between runs: one file per plugin
//! digest, engine configuration and host version, with a checksum of its
//! own bytes beside it. An entry that is missing, foreign or damaged is
//! ignored and rebuilt; nothing is deserialized that this check did not pass.
//! The checksum (128-bit XXH3) is for damage; who may write the directory
//! (this user only, checked when it is opened) is what keeps others out.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// The file-name suffix of an entry's checksum.
pub const CHECKSUM_SUFFIX: &str = ".xxh3";

/// The checksum of an entry's bytes, as its checksum file holds it: 128-bit
/// XXH3 in hex (a small part of a load, which SHA-256 over the whole entry
/// was not).
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// How a kind's compiled code was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now; the disk cache is off or could not be written.
    Compiled,
    /// Compiled now and stored in the disk cache.
    CompiledAndStored,
    /// Loaded from the disk cache.
    Cached,
    /// A cache entry was there but did not verify; compiled again.
    Rebuilt(String),
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Compiled => "compiled".into(),
            Origin::CompiledAndStored => "compiled, stored in the cache".into(),
            Origin::Cached => "loaded from the compiled cache".into(),
            Origin::Rebuilt(why) => format!("recompiled: the cached copy {why}"),
        }
    }
}

/// Why the cache directory cannot be used or an entry not stored.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be created or examined.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Another user owns it, or others may write it.
    #[error("{} must belong to this user and be writable by no one else (it holds machine code)", .0.display())]
    Unsafe(PathBuf),
    /// The engine could not serialize the compiled code.
    #[error("{0}")]
    Serialize(String),
    /// An entry or its checksum could not be written.
    #[error("{source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Write one file of an entry atomically.
fn write(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| CacheError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The compiled-code cache directory of one engine.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    /// Engine compatibility and host version, as a file-name part.
    identity: String,
    /// Past this many bytes of entries, the least recently used go.
    max_bytes: u64,
}

use crate::config::DEFAULT_CACHE_MAX_MIB;

/// The default cache directory: `/var/cache/baa-runner/compiled` as root,
/// else `$XDG_CACHE_HOME/baa-runner/compiled` or `~/.cache/baa-runner/compiled`.
pub fn default_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/baa-runner/compiled"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("baa-runner/compiled"))
}

impl DiskCache {
    /// Use `dir` (created if missing). It must belong to this user and be
    /// writable by no one else: its files become machine code.
    pub fn open(dir: &Path, engine: &Engine) -> Result<DiskCache, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let meta = std::fs::symlink_metadata(dir).map_err(io)?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(dir.to_path_buf()));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
            return Err(CacheError::Unsafe(dir.to_path_buf()));
        }
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            identity: format!("{:016x}", hasher.finish()),
            max_bytes: DEFAULT_CACHE_MAX_MIB * 1024 * 1024,
        })
    }

    /// Keep at most `mib` MiB of entries (the least recently used go first;
    /// the entry just stored always stays).
    pub fn with_max_mib(mut self, mib: u64) -> Self {
        self.max_bytes = mib.saturating_mul(1024 * 1024);
        self
    }

    /// The entry of the plugin with digest `sha256`.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.identity))
    }

    fn checksum_path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm{CHECKSUM_SUFFIX}", self.identity))
    }

    /// The cached compilation of `sha256`: `Ok(None)` when there is none,
    /// `Err(why)` when there is one that must not be used.
    ///
    /// The entry is memory-mapped, its checksum taken over the mapping, and
    /// the engine then maps the same file for its code: the compiled code is
    /// never copied, and pages shared with other processes of this host stay
    /// shared.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Result<Option<Component>, String> {
        let path = self.path(sha256);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("could not be read: {e}")),
        };
        let expected = std::fs::read_to_string(self.checksum_path(sha256))
            .map_err(|e| format!("has no checksum: {e}"))?;
        // SAFETY: entries are replaced by rename, never written in place, so
        // the mapped file does not change under us; the mapping is read-only
        // and dropped before the engine maps the file itself.
        let mapped = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| format!("could not be mapped: {e}"))?;
        if checksum(&mapped) != expected.trim() {
            return Err("does not match its checksum".into());
        }
        drop(mapped);
        // SAFETY: the file is what this host serialized for this engine
        // configuration (file name) and was verified against the checksum
        // written with it, in a directory only this user can write, whose
        // entries are only ever replaced whole.
        let component = unsafe { Component::deserialize_file(engine, &path) }
            .map_err(|e| format!("was refused by the engine: {e:#}"))?;
        // Its modification time says when it was last used (for eviction).
        let _ = file.set_modified(std::time::SystemTime::now());
        Ok(Some(component))
    }

    /// Store the compilation of `sha256` (atomically: a reader sees the
    /// whole entry or none).
    pub fn store(&self, sha256: &str, component: &Component) -> Result<(), CacheError> {
        let bytes = component
            .serialize()
            .map_err(|e| CacheError::Serialize(format!("{e:#}")))?;
        let path = self.path(sha256);
        write(&path, &bytes)?;
        write(&self.checksum_path(sha256), checksum(&bytes).as_bytes())?;
        self.evict(&path);
        Ok(())
    }

    /// Remove the least recently used entries (and their checksums) until the
    /// directory holds at most `max_bytes` of them, never `keep`.
    fn evict(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            let mut sum = path.clone().into_os_string();
            sum.push(CHECKSUM_SUFFIX);
            if std::fs::remove_file(&path).is_ok() {
                let _ = std::fs::remove_file(sum);
                total = total.saturating_sub(len);
                tracing::debug!(path = %path.display(), "evicted from the compiled cache");
            }
        }
    }
}
