# Red-team driver helpers (source me). Drives the real CLI built from HEAD.
#   BAA   the baa-runner binary (default /work/rt/target/debug/baa-runner)
#   WASM  where the redteam fixtures were built
set -u
BAA=${BAA:-/work/rt/target/debug/baa-runner}
WASM=${WASM:-/work/main/plugins/target/wasm32-wasip2/release}

# rt_sandbox NAME: a fresh sandbox in $SB (repo with README.md, runs, plugins, config)
rt_sandbox() {
  SB=$(mktemp -d /tmp/rt-$1-XXXXXX)
  chmod 755 "$SB"
  mkdir -p "$SB/repo" "$SB/runs" "$SB/plugins"
  ( cd "$SB/repo" && git init -q -b main && git config user.name T && git config user.email t@e.test \
      && printf '# demo\n' > README.md && git add README.md && git commit -q -m init )
  for k in redteam redteam-git redteam-sh; do cp "$WASM/baa_testing_${k//-/_}.wasm" "$SB/plugins/$k.wasm"; done
  cat > "$SB/baa.toml" <<TOML
plugin-dirs = ["$SB/plugins"]
durability = "process-crash"
[kinds.redteam-git]
programs = ["git"]
[kinds.redteam-sh]
programs = ["sh"]
TOML
}

# rt_canary: a root-owned 0600 file outside every worktree, fingerprinted in $CANARY_PRINT
rt_canary() {
  CANARY_DIR=/run/rt-canary
  mkdir -p $CANARY_DIR && chmod 755 $CANARY_DIR
  CANARY=$CANARY_DIR/secret
  [ -e $CANARY ] || { echo "root secret $(date +%s%N)" > $CANARY; }
  chown root:root $CANARY; chmod 600 $CANARY
  CANARY_PRINT=$(stat -c '%i %u:%g %a %s' $CANARY; sha256sum < $CANARY)
}
rt_canary_check() {
  local now; now=$(stat -c '%i %u:%g %a %s' $CANARY; sha256sum < $CANARY)
  if [ "$now" = "$CANARY_PRINT" ]; then echo "CANARY: unchanged"; else echo "CANARY: CHANGED: $CANARY_PRINT -> $now"; fi
}

# rt_request KIND STEP TIMEOUT COMMAND [EXTRA_JQ]: writes $SB/req-STEP.json
rt_request() {
  local kind=$1 step=$2 timeout=$3 cmd=$4 extra=${5:-.}
  jq -n --arg kind "$kind" --arg step "$step" --argjson t "$timeout" --arg cmd "$cmd" \
     --arg repo "$SB/repo" --arg runs "$SB/runs" '{
      taskId:"task-1", stepId:$step, runId:"run-1", attempt:1, stepName:("rt " + $step),
      stepKind:$kind, workerKind:$kind, timeoutSec:$t,
      runtime:{repoRoot:$repo, worktreePath:$repo, runsRootDir:$runs},
      command:$cmd, checkpoint:{mode:"capture", includeGitDiffStat:true}}' | jq "$extra" > "$SB/req-$step.json"
}

# rt_run KIND STEP TIMEOUT COMMAND [EXTRA_JQ]: runs it, result in $SB/res-STEP.json, prints summary, wall ms
rt_run() {
  rt_request "$@"
  local step=$2 t0 t1
  t0=$(date +%s%3N)
  "$BAA" --config "$SB/baa.toml" run --json "$SB/req-$step.json" > "$SB/res-$step.json" 2> "$SB/err-$step.log"
  RC=$?
  t1=$(date +%s%3N)
  WALL=$((t1 - t0))
  RUNDIR=$(jq -r '.logPaths.runDir // empty' "$SB/res-$step.json" 2>/dev/null)
  echo "== $1/$step rc=$RC wall=${WALL}ms outcome=$(jq -r '.outcome' "$SB/res-$step.json" 2>/dev/null) reason=$(jq -r '.state.failure.reason // "-"' "$SB/res-$step.json" 2>/dev/null)"
  echo "   summary: $(jq -r '.summary' "$SB/res-$step.json" 2>/dev/null | head -c 600)"
}
rt_stdout() { cat "$RUNDIR/logs/stdout.log"; }
