#!/usr/bin/env bash
# A local cluster: a NATS JetStream server and two baa-runner workers on
# this machine, then steps submitted to it.
#   bash examples/cluster-demo.sh up       # server + two workers, in the background
#   bash examples/cluster-demo.sh submit   # six steps at once; each says which host ran it
#   bash examples/cluster-demo.sh down     # stop them
# State, logs and the demo repository: ${TMPDIR:-/tmp}/baa-cluster-demo.
# The server listens on 127.0.0.1:${BAA_DEMO_NATS_PORT:-4222}.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../scripts/tools.sh"
demo="${TMPDIR:-/tmp}/baa-cluster-demo"
port="${BAA_DEMO_NATS_PORT:-4222}"
url="nats://127.0.0.1:$port"
bin="$ROOT/target/debug/baa-runner"

stop() {
    for pidfile in "$demo"/*.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

up() {
    ensure_nats_server
    [ -x "$bin" ] || (cd "$ROOT" && cargo build --workspace --locked)
    stop
    mkdir -p "$demo/js" "$demo/repos"
    chmod 755 "$demo"
    "$(nats_server_binary)" -js -a 127.0.0.1 -p "$port" -sd "$demo/js" > "$demo/nats.log" 2>&1 &
    echo $! > "$demo/nats.pid"
    for _ in $(seq 100); do grep -q "Server is ready" "$demo/nats.log" && break; sleep 0.1; done
    for host in host-a host-b; do
        # Steps from the queue may use repositories under $demo/repos only.
        "$bin" worker --nats "$url" --host-name "$host" --repo-root "$demo/repos" \
            --runs-dir "$demo/runs" > "$demo/$host.log" 2>&1 &
        echo $! > "$demo/$host.pid"
    done
    for host in host-a host-b; do
        for _ in $(seq 300); do grep -q " serving " "$demo/$host.log" && break; sleep 0.1; done
        grep " serving " "$demo/$host.log"
    done
    echo "==> the cluster is up ($url); logs in $demo; now: bash $0 submit"
}

submit() {
    repo="$demo/repos/demo"
    if [ ! -d "$repo/.git" ]; then
        mkdir -p "$repo"
        git -C "$repo" init -q -b main
        printf '# demo\n' > "$repo/README.md"
        git -C "$repo" -c user.name=Demo -c user.email=demo@example.test add -A
        git -C "$repo" -c user.name=Demo -c user.email=demo@example.test commit -q -m "initial commit"
    fi
    run="run-$(date +%s)"
    pids=()
    for i in 1 2 3 4 5 6; do
        sed -e "s|@DEMO_REPO@|$repo|g" -e "s|@RUNS_DIR@|$demo/runs|g" \
            -e "s|\"demo-run\"|\"$run\"|" -e "s|\"run-tests\"|\"step-$i\"|" \
            -e "s|\"sh test.sh\"|\"echo step $i on \$(hostname); sleep 0.$i\"|" \
            "$here/shell.json" > "$demo/step-$i.json"
        "$bin" submit --nats "$url" "$demo/step-$i.json" > "$demo/step-$i.out" 2>&1 &
        pids+=($!)
    done
    status=0
    for i in 1 2 3 4 5 6; do
        wait "${pids[$((i - 1))]}" || status=$?
        echo "==> step-$i: $(grep -m1 '^──' "$demo/step-$i.out" || true) $(grep '^hosts:' "$demo/step-$i.out" || true)"
    done
    exit "$status"
}

case "${1:-}" in
up) up ;;
submit) submit ;;
down) stop; echo "==> stopped" ;;
*) echo "usage: $0 up|submit|down" >&2; exit 3 ;;
esac
