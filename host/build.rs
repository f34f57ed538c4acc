//! Builds the built-in worker kinds (`plugins/shell`, `git`, `codex`) so that
//! the host embeds them: `baa-runner` runs them with no plugin directory.

#[path = "../plugins/build_support.rs"]
mod build_support;

fn main() {
    for (package, path) in
        build_support::build_plugins(&["baa-worker-shell", "baa-worker-git", "baa-worker-codex"])
    {
        let kind = package.trim_start_matches("baa-worker-").to_uppercase();
        println!("cargo:rustc-env=BAA_BUILTIN_{kind}_WASM={}", path.display());
    }
}
