#!/usr/bin/env bash
# Runs the example request of a worker kind on a demo repository created on
# the fly:  bash examples/demo.sh shell
# Built-in kinds: shell, git, codex; third-party example kinds (examples/kinds/,
# built and stamped here when missing): todo-scan, changelog, commit-lint.
# The codex example talks to a scripted local model (tests/src/bin/mock-model.rs);
# point CODEX_HOME at a real Codex configuration to use a real one.
set -euo pipefail
kind="${1:-shell}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/tools.sh"
case "$kind" in
shell|git|codex) request="$here/$kind.json" ;;
todo-scan|changelog|commit-lint) request="$here/kinds/$kind/request.json" ;;
*) echo "usage: $0 shell|git|codex|todo-scan|changelog|commit-lint" >&2; exit 3 ;;
esac

bin="$ROOT/target/debug/baa-runner"
[ -x "$bin" ] || (cd "$ROOT" && cargo build --workspace --locked)

demo="$(mktemp -d "${TMPDIR:-/tmp}/baa-demo.XXXXXX")"
# As root, the step's subprocesses run as a dedicated user that must reach it.
chmod 755 "$demo"
repo="$demo/repo"
mkdir -p "$repo"
git -C "$repo" init -q -b main
git -C "$repo" config user.name "Demo Author"
git -C "$repo" config user.email "demo@example.test"
printf '#!/bin/sh\n# TODO: add a lint check\necho "running 3 checks"\nfor t in parse build lint; do echo "ok - $t"; done\n' > "$repo/test.sh"
printf '# demo\n' > "$repo/README.md"
git -C "$repo" add -A && git -C "$repo" commit -q -m "initial commit"
# An uncommitted change for the git example to commit.
printf 'goodbye\n' > "$repo/farewell.txt"

sed -e "s|@DEMO_REPO@|$repo|g" -e "s|@RUNS_DIR@|$demo/runs|g" -e "s|@CODEX_HOME@|$demo/codex-home|g" \
    "$request" > "$demo/request.json"

if [ "$kind" = codex ]; then
    export BAA_CODEX_BIN="${BAA_CODEX_BIN:-$(codex_native_binary)}"
    "$ROOT/target/debug/mock-model" --script "$here/codex-model-script.json" --codex-home "$demo" &
    model=$!
    trap 'kill $model 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [ -f "$demo/codex-home/config.toml" ] && break; sleep 0.05; done
    port="$(sed -n 's|.*127.0.0.1:\([0-9]*\)/.*|\1|p' "$demo/codex-home/config.toml")"
    # The operator's grant: the CLI, its home, its package, TCP to the model only.
    cat > "$demo/baa.toml" <<TOML
[kinds.codex]
programs = ["$BAA_CODEX_BIN"]
env = ["CODEX_HOME", "BAA_CODEX_API_KEY"]
network = true
tcp-connect = [$port]
nested-sandbox = true
write-paths = ["$demo/codex-home"]
read-paths = ["$(dirname "$(dirname "$(dirname "$BAA_CODEX_BIN")")")"]
TOML
    config=(--config "$demo/baa.toml")
elif [ "$kind" != shell ] && [ "$kind" != git ]; then
    # Built (and stamped) here when missing; BAA_EXAMPLE_KINDS_OUT names another directory.
    out="${BAA_EXAMPLE_KINDS_OUT:-$here/kinds/out}"
    if [ ! -f "$out/$kind.wasm" ]; then
        bash "$here/kinds/build.sh" "$out"
        for wasm in "$out"/*.wasm; do "$bin" stamp "$wasm"; done
    fi
    config=(--plugins-dir "$out" --config "$here/kinds/runner.toml")
else
    config=()
fi

echo "==> baa-runner run $demo/request.json"
status=0
"$bin" "${config[@]}" run "$demo/request.json" || status=$?
echo "==> the run directory:"
find "$demo/runs" -type f | sort | sed "s|$demo/runs/||"
exit "$status"
