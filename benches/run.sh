#!/usr/bin/env bash
# Runs every chatpipe benchmark end to end on this machine and writes
# benches/RESULTS.md with its plots:
#
#   benches/run.sh                       # everything (about 40 minutes)
#   SCENARIOS="idle broadcast" benches/run.sh
#   SKIP="criterion kafka persist index centrifugo" benches/run.sh
#
# 1. builds chatpipe and the benches in release mode;
# 2. builds Centrifugo from the Go module proxy (benches/centrifugo.sh);
# 3. starts the engines (topology/engines.sh up);
# 4. per scenario (benches/scenarios/*.toml): starts a fresh `chatpipe all`,
#    runs chatpipe-loadgen against it (and the scenario's baselines: the bare
#    tokio-tungstenite server, Centrifugo), stops chatpipe;
# 5. the Kafka produce path next to kafka-producer-perf-test, the persist and
#    index roles next to their raw baselines, the criterion micro-benchmarks;
# 6. bench-report: benches/RESULTS.md and benches/results/*.png.
#
# Exit status: non-zero when a scenario's verification found a lost message
# (or a step failed). Every process started here is stopped on exit.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}"
RESULTS=benches/results
SCENARIOS="${SCENARIOS:-idle broadcast chat storm}"
SKIP="${SKIP:-}"
BIN="$CARGO_TARGET_DIR/release"
mkdir -p "$RESULTS"
status=0
chatpipe_pid=""

log() { printf '\n=== %s ===\n' "$*"; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "run.sh: $1 not ready after $2 s" >&2; return 1; fi
    if [[ -n "$chatpipe_pid" ]] && ! kill -0 "$chatpipe_pid" 2>/dev/null; then echo "run.sh: chatpipe exited (see $RESULTS/logs)" >&2; return 1; fi
    sleep 1
  done
}

# chatpipe under test: by default every role as its own process on ports
# 9580-9594 (ops listeners: edge 9581, fan-out 9591, persist 9592, index
# 9593, API 9594) with its own topic prefix, index prefix and consumer groups,
# fresh for each scenario (an isolated deployment on the shared engines: a
# `chatpipe all` already running on the default ports is left alone, one
# scenario's leftovers — e.g. the offline presence of 15,000 users — do not
# load the next, and the edge's memory is the edge's alone).
# CHATPIPE_BENCH_MODE=all runs `chatpipe all` on the default ports instead.
MODE="${CHATPIPE_BENCH_MODE:-roles}"
stack_pids=()
if [[ $MODE == roles ]]; then
  export CHATPIPE_LOADGEN_WS_URL=ws://127.0.0.1:9580/ws
  export CHATPIPE_LOADGEN_API_URL=http://127.0.0.1:9590
  export CHATPIPE_LOADGEN_EDGE_METRICS_URL=http://127.0.0.1:9581/metrics
  export CHATPIPE_LOADGEN_FANOUT_METRICS_URL=http://127.0.0.1:9591/metrics
  export CHATPIPE_LOADGEN_PERSIST_METRICS_URL=http://127.0.0.1:9592/metrics
  export CHATPIPE_LOADGEN_INDEX_METRICS_URL=http://127.0.0.1:9593/metrics
fi

stop_chatpipe() {
  local pid
  for pid in "${stack_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${stack_pids[@]}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  stack_pids=()
  chatpipe_pid=""
}
trap stop_chatpipe EXIT

start_role() { # log-name args...
  local name=$1; shift
  "$BIN/chatpipe" "$@" >"$RESULTS/logs/$name.log" 2>&1 &
  stack_pids+=($!)
}

start_chatpipe() { # scenario
  mkdir -p "$RESULTS/logs"
  if [[ $MODE == all ]]; then
    start_role "chatpipe-all-$1" all
    chatpipe_pid=${stack_pids[0]}
    wait_http http://127.0.0.1:8081/readyz 180 && wait_http http://127.0.0.1:8094/healthz 60
    return
  fi
  local tag; tag="bench-$1-$(date +%s)"
  export CHATPIPE_TOPIC_PREFIX="$tag." CHATPIPE_INDEX_PREFIX="$tag-messages"
  "$BIN/chatpipe" topology apply >"$RESULTS/logs/topology-$1.log" 2>&1 || return 1
  start_role "edge-$1" edge --edge-id "$tag-edge" --worker-id 901 \
    --listen 127.0.0.1:9580 --ops-listen 127.0.0.1:9581 --push-listen 127.0.0.1:9680
  chatpipe_pid=${stack_pids[0]}
  start_role "fanout-$1" fanout --ops-listen 127.0.0.1:9591 --group "$tag-fanout"
  start_role "persist-$1" persist --ops-listen 127.0.0.1:9592 --group "$tag-persist"
  start_role "index-$1" index --ops-listen 127.0.0.1:9593 --group "$tag-index"
  start_role "api-$1" api --api-listen 127.0.0.1:9590 --api-ops-listen 127.0.0.1:9594
  wait_http http://127.0.0.1:9581/readyz 180 && wait_http http://127.0.0.1:9594/healthz 60 \
    && wait_http http://127.0.0.1:9591/readyz 120 && wait_http http://127.0.0.1:9592/readyz 120 \
    && wait_http http://127.0.0.1:9593/readyz 120
}

log "build (release)"
# Built separately: together, feature unification would rebuild both.
cargo build --release -p chatpipe || exit 1
cargo build --release -p chatpipe-benches --bins || exit 1
# No built-in token secret: the roles and the load generator read the same
# one (CHATPIPE_TOKEN_SECRET, else $CHATPIPE_HOME/token-secret, created here
# once like topology/run.sh does).
if [[ -z ${CHATPIPE_TOKEN_SECRET:-} ]]; then "$BIN/chatpipe" secret init >/dev/null || exit 1; fi

centrifugo_flag=()
if ! skipped centrifugo; then
  log "Centrifugo (Go module proxy)"
  benches/centrifugo.sh build || { echo "run.sh: Centrifugo did not build; its baselines are skipped"; centrifugo_flag=(--only-baseline bare); }
else
  centrifugo_flag=(--only-baseline bare)
fi

log "engines"
topology/engines.sh up || exit 1

for scenario in $SCENARIOS; do
  log "scenario $scenario"
  start_chatpipe "$scenario" || { status=1; stop_chatpipe; continue; }
  "$BIN/chatpipe-loadgen" --scenario "benches/scenarios/$scenario.toml" --edge-pid "$chatpipe_pid" \
    --out-dir "$RESULTS" "${centrifugo_flag[@]}" 2>&1 | tee "$RESULTS/$scenario.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  stop_chatpipe
done

if ! skipped kafka; then
  log "Kafka produce path vs kafka-producer-perf-test"
  "$BIN/kafka-produce-bench" --out-dir "$RESULTS" 2>&1 | tee "$RESULTS/kafka-produce.log" || status=1
fi
if ! skipped persist; then
  log "persist role vs plain concurrent INSERTs"
  cargo run --release -q -p chatpipe-persist --example persist_throughput 2>/dev/null | tee "$RESULTS/persist.txt" || status=1
fi
if ! skipped index; then
  log "index role vs raw _bulk"
  cargo run --release -q -p chatpipe-index --example index_throughput 2>/dev/null | tee "$RESULTS/index.txt" || status=1
fi
if ! skipped criterion; then
  log "criterion micro-benchmarks"
  cargo bench -p chatpipe-benches --bench hot_paths 2>&1 | tee "$RESULTS/criterion.log" | grep -E "^[a-zA-Z].*time:|time:" || status=1
fi

log "report"
"$BIN/bench-report" --results-dir "$RESULTS" --output benches/RESULTS.md \
  --criterion-dir "$CARGO_TARGET_DIR/criterion" --notes benches/NOTES.md || status=1
exit $status
