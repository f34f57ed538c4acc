#!/usr/bin/env bash
# The overhead suite of issue 7: every metric through the real host next to
# a native baseline measured in the same run, printed as one table and
# written to target/bench/overhead.md (and .json). BAA_BENCH_QUICK=1 cuts
# the sample counts for a smoke run; BAA_BENCH_ONLY=worktrees runs only the
# worktree-size axis (1k, 50k, 200k files) and the one-shot CLI row.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
ensure_wasm_target
# The one-shot CLI row runs the release binary.
cargo build --release --locked -p baa-runner --bin baa-runner
cargo bench --locked -p baa-runner-tests --bench overhead
# The cluster's queue (issue 20): a real nats-server and worker processes.
ensure_nats_server
BAA_NATS_SERVER="$(nats_server_binary)" cargo bench --locked -p baa-runner-tests --bench cluster
