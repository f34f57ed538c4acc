//! Finding and loading worker kinds: the built-in kinds embedded in the host,
//! and `<kind>.wasm` files in the operator's plugin directories. A kind is
//! compiled once per runner and checked against the `baa:worker` version.

mod builtin;
pub mod cache;
pub mod manifest;
pub mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::contracts::WorkerKind;
use crate::fsutil::sha256_hex;
pub use world::World;

/// Why a worker kind cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown worker kind `{kind}`: no built-in kind has that name and no `{kind}.wasm` is in the plugin directories ({searched}); add the file or pass --plugins-dir")]
    Unknown { kind: String, searched: String },
    #[error("cannot read plugin directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {path} is {size} bytes; the limit is {limit} (limits.plugin-file-bytes)")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("plugin {source_name} is not a valid WebAssembly component: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("plugin {source_name} was built for {found}, but this host runs {}; rebuild it against {}", World::supported(), World::LATEST.package())]
    IncompatibleVersion { source_name: String, found: String },
    #[error("plugin {source_name} does not export `{}`; it must implement the `baa:worker` world (exports: {exports})", World::LATEST.executor_export())]
    MissingExport {
        source_name: String,
        exports: String,
    },
    #[error("plugin {source_name} needs imports this host does not provide: {message}")]
    Link {
        source_name: String,
        message: String,
    },
}

/// Whether `name` is a built-in kind (a plugin file of that name is shadowed).
pub fn is_builtin(name: &str) -> bool {
    builtin::NAMES.contains(&name)
}

/// Where a kind's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Embedded in the host binary.
    Builtin,
    /// A `.wasm` file in a plugin directory.
    File(PathBuf),
}

impl PluginSource {
    /// `builtin` or the file's path.
    pub fn describe(&self) -> String {
        match self {
            PluginSource::Builtin => "builtin".into(),
            PluginSource::File(path) => path.display().to_string(),
        }
    }
}

/// A kind found by discovery (not yet compiled).
#[derive(Debug, Clone)]
pub struct PluginEntry {
    pub kind: WorkerKind,
    pub source: PluginSource,
}

/// A compiled, checked worker kind.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub kind: WorkerKind,
    pub source: PluginSource,
    pub sha256: String,
    pub component: Component,
    /// Compiled now, or loaded from the disk cache.
    pub origin: cache::Origin,
    /// What its `baa:worker-manifest` section says, if it carries one.
    pub manifest: Option<manifest::Manifest>,
    /// The version of the world it implements (by its executor export).
    pub world: World,
}

/// The worker kinds a runner knows: built-ins first, then plugin directories
/// in order; the first entry of a name wins and later ones are reported as
/// shadowed.
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    entries: BTreeMap<String, PluginEntry>,
    shadowed: Vec<PluginEntry>,
    dirs: Vec<PathBuf>,
}

impl PluginRegistry {
    /// Discover the built-in kinds and every `<kind>.wasm` in `dirs`.
    pub fn discover(dirs: &[PathBuf]) -> Result<Self, PluginError> {
        let mut registry = PluginRegistry {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        for name in builtin::NAMES {
            if let Ok(kind) = WorkerKind::new(name) {
                registry.add(PluginEntry {
                    kind,
                    source: PluginSource::Builtin,
                });
            }
        }
        for dir in dirs {
            let read = std::fs::read_dir(dir).map_err(|source| PluginError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
            let mut files: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
                .collect();
            files.sort();
            for path in files {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                match WorkerKind::new(stem) {
                    Ok(kind) => registry.add(PluginEntry {
                        kind,
                        source: PluginSource::File(path),
                    }),
                    Err(why) => tracing::warn!("ignoring plugin file {}: {why}", path.display()),
                }
            }
        }
        Ok(registry)
    }

    fn add(&mut self, entry: PluginEntry) {
        if self.entries.contains_key(entry.kind.as_str()) {
            self.shadowed.push(entry);
        } else {
            self.entries.insert(entry.kind.as_str().to_string(), entry);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &PluginEntry> {
        self.entries.values()
    }

    /// Entries whose name an earlier entry already took.
    pub fn shadowed(&self) -> &[PluginEntry] {
        &self.shadowed
    }

    pub fn find(&self, kind: &WorkerKind) -> Result<&PluginEntry, PluginError> {
        self.entries
            .get(kind.as_str())
            .ok_or_else(|| PluginError::Unknown {
                kind: kind.to_string(),
                searched: if self.dirs.is_empty() {
                    "none configured".into()
                } else {
                    self.dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }
}

/// The bytes of an entry's component.
fn read_bytes(
    entry: &PluginEntry,
    max_file_bytes: u64,
) -> Result<std::borrow::Cow<'static, [u8]>, PluginError> {
    Ok(match &entry.source {
        PluginSource::Builtin => builtin::bytes(entry.kind.as_str())
            .map(std::borrow::Cow::Borrowed)
            .ok_or_else(|| PluginError::Invalid {
                source_name: "builtin".into(),
                message: format!("no built-in kind `{}`", entry.kind),
            })?,
        PluginSource::File(path) => std::borrow::Cow::Owned(read_limited(path, max_file_bytes)?),
    })
}

/// Compile and check an entry's component from its bytes, or load its
/// compilation from the disk cache.
fn compile(
    engine: &Engine,
    disk: Option<&cache::DiskCache>,
    entry: &PluginEntry,
    bytes: &[u8],
    sha256: String,
) -> Result<LoadedPlugin, PluginError> {
    use cache::Origin;
    let source_name = format!("`{}` ({})", entry.kind, entry.source.describe());
    // The manifest is read before anything is compiled: an incompatible
    // world is refused with both versions named.
    let manifest = manifest::read(bytes).map_err(|e| PluginError::Invalid {
        source_name: source_name.clone(),
        message: e.to_string(),
    })?;
    if let Some(m) = &manifest {
        if !manifest::compatible(&m.world) {
            return Err(PluginError::IncompatibleVersion {
                source_name,
                found: crate::bounds::cut(&m.world, 128),
            });
        }
    }
    let cached = match disk.map(|d| d.load(engine, &sha256)) {
        Some(Ok(Some(component))) => Ok(component),
        Some(Ok(None)) | None => Err(None),
        Some(Err(why)) => {
            tracing::warn!("{source_name}: the compiled cache entry {why}; compiling again");
            Err(Some(why))
        }
    };
    let (component, origin) = match cached {
        Ok(component) => (component, Origin::Cached),
        Err(stale) => {
            let component =
                Component::from_binary(engine, bytes).map_err(|e| PluginError::Invalid {
                    source_name: source_name.clone(),
                    message: format!("{e:#}"),
                })?;
            let stored = match disk.map(|d| d.store(&sha256, &component)) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    tracing::warn!("{source_name}: cannot store the compiled code: {e}");
                    false
                }
                None => false,
            };
            let origin = match (stale, stored) {
                (Some(why), _) => Origin::Rebuilt(why),
                (None, true) => Origin::CompiledAndStored,
                (None, false) => Origin::Compiled,
            };
            (component, origin)
        }
    };
    let world = check_exports(engine, &component, &source_name)?;
    if let Some(m) = manifest
        .as_ref()
        .filter(|m| World::running(&m.world) != Some(world))
    {
        return Err(PluginError::Invalid {
            source_name,
            message: format!(
                "its manifest says it implements {}, but it exports {}; stamp it again (`baa-runner stamp`)",
                crate::bounds::cut(&m.world, 128),
                world.executor_export()
            ),
        });
    }
    Ok(LoadedPlugin {
        kind: entry.kind.clone(),
        source: entry.source.clone(),
        sha256,
        component,
        origin,
        manifest,
        world,
    })
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, PluginError> {
    let read_err = |source| PluginError::Read {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > limit {
        return Err(PluginError::TooLarge {
            path: path.display().to_string(),
            size,
            limit,
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// The world version the component implements: it must export
/// `baa:worker/worker-executor` at a version this host runs.
fn check_exports(
    engine: &Engine,
    component: &Component,
    source_name: &str,
) -> Result<World, PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if let Some(world) = World::of_exports(exports.iter().map(String::as_str)) {
        return Ok(world);
    }
    if let Some(other) = exports
        .iter()
        .find(|e| e.split('@').next() == Some("baa:worker/worker-executor"))
    {
        let version = other.split('@').nth(1).unwrap_or("an unversioned package");
        return Err(PluginError::IncompatibleVersion {
            source_name: source_name.to_string(),
            found: format!("baa:worker@{version}"),
        });
    }
    Err(PluginError::MissingExport {
        source_name: source_name.to_string(),
        exports: if exports.is_empty() {
            "none".into()
        } else {
            exports.join(", ")
        },
    })
}

/// What identifies a plugin file's contents without reading it: if none of
/// these changed, neither did the file (ctime cannot be set by its owner).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

/// Compiled kinds of a runner, keyed by kind and digest: a kind is compiled
/// once per content (or loaded from the disk cache), and a changed file is
/// noticed (its identity, then its digest, differs). An unchanged file is
/// not read again.
#[derive(Default)]
pub struct PluginCache {
    loaded: std::sync::Mutex<BTreeMap<(String, String), Arc<LoadedPlugin>>>,
    digests: std::sync::Mutex<std::collections::HashMap<FileId, String>>,
    builtin_digests: std::sync::Mutex<BTreeMap<String, String>>,
    disk: Option<cache::DiskCache>,
}

impl PluginCache {
    /// A cache that also keeps compiled code in `disk`.
    pub fn new(disk: Option<cache::DiskCache>) -> Self {
        PluginCache {
            disk,
            ..Default::default()
        }
    }

    /// The digest of `entry` if it is known without reading it.
    fn known_digest(&self, entry: &PluginEntry) -> Option<String> {
        match &entry.source {
            PluginSource::Builtin => self
                .builtin_digests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(entry.kind.as_str())
                .cloned(),
            PluginSource::File(path) => {
                let id = FileId::of(path)?;
                self.digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned()
            }
        }
    }

    fn remember_digest(&self, entry: &PluginEntry, id: Option<FileId>, sha256: &str) {
        match (&entry.source, id) {
            (PluginSource::Builtin, _) => {
                self.builtin_digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(entry.kind.to_string(), sha256.to_string());
            }
            (PluginSource::File(_), Some(id)) => {
                self.digests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, sha256.to_string());
            }
            _ => {}
        }
    }

    /// Keep `component` in the disk cache as the compilation of `sha256`
    /// too: bytes that differ from its source only in custom sections (a
    /// manifest written by `stamp`) compile to the same code.
    pub fn store_equivalent(&self, sha256: &str, component: &Component) {
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.store(sha256, component) {
                tracing::warn!("cannot store the compiled code: {e}");
            }
        }
    }

    /// The compilation of `entry` with digest `sha256`, if this runner has it.
    fn compiled(&self, entry: &PluginEntry, sha256: String) -> Option<Arc<LoadedPlugin>> {
        let key = (entry.kind.to_string(), sha256);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|hit| hit.source == entry.source)
            .cloned()
    }

    /// Load `entry`, reusing an earlier compilation of the same bytes.
    pub fn get(
        &self,
        engine: &Engine,
        entry: &PluginEntry,
        max_file_bytes: u64,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        if let Some(hit) = self
            .known_digest(entry)
            .and_then(|sha256| self.compiled(entry, sha256))
        {
            return Ok(hit);
        }
        let id = match &entry.source {
            PluginSource::File(path) => FileId::of(path),
            PluginSource::Builtin => None,
        };
        let bytes = read_bytes(entry, max_file_bytes)?;
        let sha256 = sha256_hex(&bytes);
        // The file may have changed between the stat and the read: only an
        // identity taken before a read that still holds after it is kept.
        let id = match &entry.source {
            PluginSource::File(path) if FileId::of(path) == id => id,
            _ => None,
        };
        self.remember_digest(entry, id, &sha256);
        if let Some(hit) = self.compiled(entry, sha256.clone()) {
            return Ok(hit);
        }
        let key = (entry.kind.to_string(), sha256.clone());
        let loaded = Arc::new(compile(engine, self.disk.as_ref(), entry, &bytes, sha256)?);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, loaded.clone());
        Ok(loaded)
    }
}
