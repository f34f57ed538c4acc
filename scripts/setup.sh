#!/usr/bin/env bash
# Installs what baa-runner needs, builds the host, the worker kinds and the
# TypeScript client, and runs the shell example step on a demo repository.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
ensure_wasm_target
ensure_codex
ensure_componentize_py
ensure_componentize_js
ensure_nats_server
ensure_client_deps
echo "==> cargo build --workspace (host, CLI and the built-in worker kinds)"
cargo build --workspace --locked
echo "==> building the TypeScript client (clients/typescript)"
(cd "$CLIENT_DIR" && npm run --silent build)
echo "==> running examples/shell.json on a demo repository"
bash examples/demo.sh shell
