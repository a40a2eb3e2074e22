#!/usr/bin/env bash
# Runs every chatpipe benchmark end to end on this machine and writes
# benches/RESULTS.md with its plots:
#
#   benches/run.sh                       # everything (about 40 minutes)
#   SCENARIOS="idle broadcast" benches/run.sh
#   SKIP="criterion kafka persist index" benches/run.sh
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

stop_chatpipe() {
  if [[ -n "$chatpipe_pid" ]] && kill -0 "$chatpipe_pid" 2>/dev/null; then
    kill -TERM "$chatpipe_pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$chatpipe_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$chatpipe_pid" 2>/dev/null || true
    wait "$chatpipe_pid" 2>/dev/null || true
  fi
  chatpipe_pid=""
}
trap stop_chatpipe EXIT

wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "run.sh: $1 not ready after $2 s" >&2; return 1; fi
    if [[ -n "$chatpipe_pid" ]] && ! kill -0 "$chatpipe_pid" 2>/dev/null; then echo "run.sh: chatpipe exited" >&2; return 1; fi
    sleep 1
  done
}

start_chatpipe() { # scenario
  "$BIN/chatpipe" all >"$RESULTS/chatpipe-$1.log" 2>&1 &
  chatpipe_pid=$!
  wait_http http://127.0.0.1:8080/readyz 180 && wait_http http://127.0.0.1:8090/healthz 60
}

log "build (release)"
cargo build --release -p chatpipe -p chatpipe-benches --bins || exit 1

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
