//! The built-in worker kinds, built from `plugins/` by `host/build.rs` and
//! embedded in the host binary.

/// Names of the built-in kinds.
pub const NAMES: [&str; 3] = ["shell", "git", "codex"];

static SHELL: &[u8] = include_bytes!(env!("BAA_BUILTIN_SHELL_WASM"));
static GIT: &[u8] = include_bytes!(env!("BAA_BUILTIN_GIT_WASM"));
static CODEX: &[u8] = include_bytes!(env!("BAA_BUILTIN_CODEX_WASM"));

/// The component bytes of a built-in kind.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "shell" => Some(SHELL),
        "git" => Some(GIT),
        "codex" => Some(CODEX),
        _ => None,
    }
}
