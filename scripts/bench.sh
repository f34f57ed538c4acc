#!/usr/bin/env bash
# The overhead suite of issue 7: every metric through the real host next to
# a native baseline measured in the same run, printed as one table and
# written to target/bench/overhead.md (and .json). BAA_BENCH_QUICK=1 cuts
# the sample counts for a smoke run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools.sh"
cd "$ROOT"
ensure_wasm_target
cargo bench --locked -p baa-runner-tests --bench overhead
