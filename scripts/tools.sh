# Sourced by setup.sh and test.sh: installs what the build and the tests need,
# idempotently, outside the repository's tracked files.
#   - the wasm32-wasip2 Rust target (worker kinds are WASI 0.2 components);
#   - componentize-py (PyPI, pinned) in a virtualenv beside it, for Python
#     worker kinds, and componentize-js (npm, pinned) for JavaScript ones;
#   - the Codex CLI (npm `@openai/codex`, pinned) into a cache outside the
#     repository, shared by clones: $BAA_TOOLS_DIR, else /var/cache/baa-runner
#     as root (the sandbox's dedicated users must reach the binary, and root's
#     home is closed to them), else ~/.cache/baa-runner.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CODEX_VERSION="0.169.0"
if [ "$(id -u)" = 0 ]; then
    DEFAULT_TOOLS_DIR=/var/cache/baa-runner
else
    DEFAULT_TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/baa-runner"
fi
TOOLS_DIR="${BAA_TOOLS_DIR:-$DEFAULT_TOOLS_DIR}"
CODEX_PREFIX="$TOOLS_DIR/codex-$CODEX_VERSION"
COMPONENTIZE_PY_VERSION="0.25.1"
COMPONENTIZE_PY_VENV="$TOOLS_DIR/componentize-py-$COMPONENTIZE_PY_VERSION"
COMPONENTIZE_JS_VERSION="0.23.0"
COMPONENTIZE_JS_PREFIX="$TOOLS_DIR/componentize-js-$COMPONENTIZE_JS_VERSION"

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "==> rustup target add wasm32-wasip2"
        rustup target add wasm32-wasip2
    fi
}

ensure_codex() {
    local bin="$CODEX_PREFIX/node_modules/.bin/codex"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$CODEX_VERSION"; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm is required to install the Codex CLI (apt-get install nodejs npm)" >&2
        return 1
    fi
    echo "==> npm install @openai/codex@$CODEX_VERSION into $CODEX_PREFIX (about 400 MB, once)"
    mkdir -p "$CODEX_PREFIX"
    npm install --prefix "$CODEX_PREFIX" --no-audit --no-fund --loglevel=error "@openai/codex@$CODEX_VERSION"
}

# The native codex binary inside the npm package (the .bin entry is a Node wrapper).
codex_native_binary() {
    find "$CODEX_PREFIX/node_modules" -type f -name codex -path '*vendor*' -perm -u+x 2>/dev/null | head -n 1
}

ensure_componentize_py() {
    local bin="$COMPONENTIZE_PY_VENV/bin/componentize-py"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$COMPONENTIZE_PY_VERSION"; then
        return 0
    fi
    echo "==> pip install componentize-py==$COMPONENTIZE_PY_VERSION into $COMPONENTIZE_PY_VENV (once)"
    python3 -m venv "$COMPONENTIZE_PY_VENV"
    "$COMPONENTIZE_PY_VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
}

ensure_componentize_js() {
    local bin="$COMPONENTIZE_JS_PREFIX/node_modules/.bin/componentize-js"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$COMPONENTIZE_JS_VERSION"; then
        return 0
    fi
    echo "==> npm install @bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION into $COMPONENTIZE_JS_PREFIX (once)"
    mkdir -p "$COMPONENTIZE_JS_PREFIX"
    npm install --prefix "$COMPONENTIZE_JS_PREFIX" --no-audit --no-fund --loglevel=error \
        "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
}

TYPESCRIPT_VERSION="5.9.3"
TYPESCRIPT_PREFIX="$TOOLS_DIR/typescript-$TYPESCRIPT_VERSION"

# TypeScript (npm, pinned), for the check that the JSON the host emits
# satisfies shared/reference/contracts.ts.
ensure_typescript() {
    local bin="$TYPESCRIPT_PREFIX/node_modules/.bin/tsc"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TYPESCRIPT_VERSION"; then
        return 0
    fi
    echo "==> npm install typescript@$TYPESCRIPT_VERSION into $TYPESCRIPT_PREFIX (once)"
    mkdir -p "$TYPESCRIPT_PREFIX"
    npm install --prefix "$TYPESCRIPT_PREFIX" --no-audit --no-fund --loglevel=error "typescript@$TYPESCRIPT_VERSION"
}

typescript_tsc() {
    echo "$TYPESCRIPT_PREFIX/node_modules/.bin/tsc"
}
