#!/usr/bin/env bash
# Builds the example third-party worker kinds from source into OUT (default
# examples/kinds/out): todo-scan (Rust), changelog (Python, componentize-py)
# and commit-lint (JavaScript, componentize-js). The tools come from the
# package registries through scripts/tools.sh, installed once.
#   bash examples/kinds/build.sh [OUT]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../../scripts/tools.sh"
out="${1:-$here/out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
ensure_wasm_target
ensure_componentize_py
ensure_componentize_js

echo "==> todo-scan (Rust): cargo build --release"
target="${CARGO_TARGET_DIR:-$ROOT/plugins/target}"
(cd "$here/todo-scan" && CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet)
cp "$target/wasm32-wasip2/release/todo_scan.wasm" "$out/todo-scan.wasm"

echo "==> changelog (Python): componentize-py"
(cd "$here/changelog" && "$COMPONENTIZE_PY_VENV/bin/componentize-py" -d "$ROOT/wit" -w worker \
    componentize app -o "$out/changelog.wasm" >/dev/null)

echo "==> commit-lint (JavaScript): componentize-js"
(cd "$here/commit-lint" && "$COMPONENTIZE_JS_PREFIX/node_modules/.bin/componentize-js" app.js \
    --wit "$ROOT/wit" -n worker -d http -d fetch-event -o "$out/commit-lint.wasm" >/dev/null)

echo "built into $out: $(cd "$out" && echo *.wasm)"
