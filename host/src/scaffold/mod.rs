//! `baa-runner new`: the starting point of a third-party worker kind, a
//! project that builds into a component of this host's world and passes
//! `baa-runner check` unchanged: Rust (the guest SDK and the WIT vendored,
//! so it builds with nothing but crates.io), Python (componentize-py from
//! PyPI) or JavaScript (componentize-js from npm).

use std::path::{Path, PathBuf};

/// Languages `new` can scaffold.
pub const LANGUAGES: &[&str] = &["rust", "python", "javascript"];

/// The componentize-py release the Python scaffold is tested with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The componentize-js release the JavaScript scaffold is tested with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

const WIT: &str = include_str!("../../../wit/worker.wit");
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_STEP: &str = include_str!("../../../plugins/sdk/src/step.rs");
const SDK_PROCESS: &str = include_str!("../../../plugins/sdk/src/process.rs");
const SDK_RECORD: &str = include_str!("../../../plugins/sdk/src/record.rs");
const CARGO_TOML: &str = include_str!("templates/rust/Cargo.toml.tmpl");
const CARGO_CONFIG: &str = include_str!("templates/rust/config.toml.tmpl");
const SDK_CARGO_TOML: &str = include_str!("templates/rust/sdk.Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("templates/rust/lib.rs.tmpl");
const README: &str = include_str!("templates/rust/README.md.tmpl");
const APP_PY: &str = include_str!("templates/python/app.py.tmpl");
const README_PY: &str = include_str!("templates/python/README.md.tmpl");
const APP_JS: &str = include_str!("templates/javascript/app.js.tmpl");
const README_JS: &str = include_str!("templates/javascript/README.md.tmpl");
/// The versions the built-in kinds are built and tested with: a new
/// project starts from them (cargo trims and extends the lock file).
const CARGO_LOCK: &str = include_str!("../../../plugins/Cargo.lock");

/// The wit-bindgen the built-in kinds are built with.
const WIT_BINDGEN: &str = "0.63";

/// Why a project could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("`{name}` cannot name a worker kind: {why}")]
    InvalidName { name: String, why: String },
    #[error("`{0}` is a built-in kind, which would shadow a plugin of that name; choose another")]
    Builtin(String),
    #[error("cannot scaffold `{0}` (languages: {langs})", langs = LANGUAGES.join(", "))]
    Language(String),
    #[error("{0} already exists; choose another name or directory")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Create the project of kind `name` in `parent/name`; returns its path.
pub fn new_project(name: &str, language: &str, parent: &Path) -> Result<PathBuf, ScaffoldError> {
    crate::contracts::WorkerKind::new(name).map_err(|why| ScaffoldError::InvalidName {
        name: name.to_string(),
        why: why.to_string(),
    })?;
    if crate::plugins::is_builtin(name) {
        return Err(ScaffoldError::Builtin(name.to_string()));
    }
    if !LANGUAGES.contains(&language) {
        return Err(ScaffoldError::Language(language.to_string()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let world_version = crate::plugins::World::LATEST.version();
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{world_version}}", world_version)
            .replace("{{sdk_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
            .replace("{{componentize_py}}", COMPONENTIZE_PY)
            .replace("{{componentize_js}}", COMPONENTIZE_JS)
    };
    if language == "javascript" {
        return write_files(
            &dir,
            vec![
                ("app.js", fill(APP_JS)),
                ("wit/worker.wit", WIT.to_string()),
                ("README.md", fill(README_JS)),
            ],
        );
    }
    if language == "python" {
        return write_files(
            &dir,
            vec![
                ("app.py", fill(APP_PY)),
                ("wit/worker.wit", WIT.to_string()),
                ("README.md", fill(README_PY)),
            ],
        );
    }
    // The SDK finds the WIT beside it in the project, not in this repository.
    let sdk_lib = SDK_LIB.replace("path: \"../../wit\"", "path: \"../wit\"");
    let files = vec![
        ("Cargo.lock", CARGO_LOCK.to_string()),
        ("Cargo.toml", fill(CARGO_TOML)),
        (".cargo/config.toml", fill(CARGO_CONFIG)),
        ("src/lib.rs", fill(LIB_RS)),
        ("sdk/Cargo.toml", fill(SDK_CARGO_TOML)),
        ("sdk/src/lib.rs", sdk_lib),
        ("sdk/src/step.rs", SDK_STEP.to_string()),
        ("sdk/src/process.rs", SDK_PROCESS.to_string()),
        ("sdk/src/record.rs", SDK_RECORD.to_string()),
        ("wit/worker.wit", WIT.to_string()),
        ("README.md", fill(README)),
    ];
    write_files(&dir, files)
}

fn write_files(dir: &Path, files: Vec<(&str, String)>) -> Result<PathBuf, ScaffoldError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ScaffoldError::Io { path, source }
    };
    for (rel, contents) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, contents).map_err(io(&path))?;
    }
    Ok(dir.to_path_buf())
}
