#!/usr/bin/env bash
# Runs every test: real worker components in a real wasmtime, real git
# repositories, real subprocesses, the real Codex CLI against a mock model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
ensure_wasm_target
ensure_codex
ensure_componentize_py
ensure_componentize_js
ensure_nats_server
ensure_client_deps
export BAA_NATS_SERVER="${BAA_NATS_SERVER:-$(nats_server_binary)}"
export BAA_CODEX_BIN="${BAA_CODEX_BIN:-$(codex_native_binary)}"
export BAA_TSC="${BAA_TSC:-$(typescript_tsc)}"
# The CLI tests run the real binary.
cargo build --workspace --locked --bins
cargo test --workspace --locked
# The TypeScript client against the real runner (and examples/typescript).
(cd "$CLIENT_DIR" && BAA_RUNNER_BIN="$ROOT/target/debug/baa-runner" npm test)
# The guest SDK's rustdoc example, run natively.
(cd plugins && cargo test --locked -p baa-worker-sdk --target "$(rustc -vV | sed -n 's/^host: //p')")
# The confinement suites again as a host without root (nobody).
if [ "$(id -u)" = 0 ]; then
    bash "$ROOT/scripts/test-unprivileged.sh"
fi
