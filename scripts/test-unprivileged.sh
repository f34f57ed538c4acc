#!/usr/bin/env bash
# The confinement suites again with the host running as an unprivileged
# user (nobody): such a host has no dedicated uid per step, its steps run in
# a user namespace of their own instead (process bound, private views).
# Called by scripts/test.sh when it runs as root; skips, saying why, when
# the checkout is not reachable by that user.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
user=nobody
if ! command -v setpriv >/dev/null || ! id "$user" >/dev/null 2>&1; then
    echo "SKIPPED the unprivileged-host suites: setpriv or the user $user is missing" >&2
    exit 0
fi
bin="$(cargo test --locked -p baa-runner-tests --test all --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "all":
        print(m["executable"])')"
uid="$(id -u "$user")"
if ! setpriv --reuid="$uid" --regid="$uid" --clear-groups test -x "$bin"; then
    echo "SKIPPED the unprivileged-host suites: $user cannot reach $bin (a parent directory is closed to it)" >&2
    exit 0
fi
home="$(mktemp -d "${TMPDIR:-/tmp}/baa-unprivileged.XXXXXX")"
trap 'rm -rf "$home"' EXIT
chown "$uid" "$home"
echo "==> the confinement suites as $user (uid $uid), a host without root"
cd "$ROOT/tests"
setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin BAA_TOOLS_DIR="$TOOLS_DIR" \
    "$bin" --test-threads 2 \
    confinement:: views:: bounds:: privileges:: redteam:: shell:: git:: hostile:: checkpoints:: sandbox::
