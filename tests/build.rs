//! Builds the test fixture worker kinds (`plugins/testing/*`) and exposes
//! their `.wasm` paths as constants, as wasmtime's test-programs do.

#[path = "../plugins/build_support.rs"]
mod build_support;

use std::fmt::Write;

fn main() {
    let mut out = String::new();
    for (package, path) in build_support::build_plugins(&[
        "baa-testing-probe",
        "baa-testing-wrong-version",
        "baa-testing-missing-export",
        "baa-testing-unknown-import",
        "baa-testing-start-loop",
        "baa-testing-big-memory",
        "baa-testing-hostile",
        "baa-testing-hostile-sh",
        "baa-testing-huge-describe",
        "baa-testing-redteam",
        "baa-testing-redteam-git",
        "baa-testing-redteam-sh",
        "baa-testing-world-0-1",
    ]) {
        let name = package
            .trim_start_matches("baa-testing-")
            .to_uppercase()
            .replace('-', "_");
        writeln!(out, "/// `{package}` built for wasm32-wasip2.").unwrap();
        writeln!(
            out,
            "pub const {name}_WASM: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("fixtures.rs");
    std::fs::write(dest, out).unwrap();
}
