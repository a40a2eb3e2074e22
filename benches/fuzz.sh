#!/usr/bin/env bash
# The long fuzzing pass (issue 14): the same proptest properties that every
# `cargo test` runs with 256 cases each, run with FUZZ_CASES cases each
# (default 1,000,000), and the counts written to results/fuzz.json, which
# bench-report turns into the "Fuzzing" section of RESULTS.md.
#
#   benches/fuzz.sh                    # 1,000,000 cases per property
#   FUZZ_CASES=20000 benches/fuzz.sh   # a shorter pass
#
# Targets (every test under a `properties` module):
#   chatpipe-core   tests/fuzz_frames.rs   the WebSocket client-frame decoder,
#                                          its schema, spliced server frames
#   chatpipe-edge   src/ws.rs              the resume query parameters and replay
#   chatpipe-search src/query.rs           the search query builder, its cursor
#   chatpipe-api    src/history.rs,        the history cursors (before/after),
#                   src/search.rs          the search query string
#
# Environment:
#   FUZZ_CASES                 cases per property (default 1000000)
#   CHATPIPE_BENCH_RESULTS     results directory (default benches/results)
#   CHATPIPE_BENCH_PROFILE     debug (default: what the tests already built) | release
#   CARGO_TARGET_DIR           default ~/.cache/chatpipe/target
#
# The properties run on one test thread (2-core machines); each target's
# wall time is recorded. Exit status: non-zero when a property failed (the
# failing input, shrunk, is in results/logs/fuzz-<crate>.log; keep it as a
# regression test next to the property).
set -uo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}"
CASES="${FUZZ_CASES:-1000000}"
RESULTS="${CHATPIPE_BENCH_RESULTS:-benches/results}"
PROFILE="${CHATPIPE_BENCH_PROFILE:-debug}"
case $PROFILE in
  release) CARGO_PROFILE=(--release) ;;
  debug) CARGO_PROFILE=() ;;
  *) echo "fuzz.sh: CHATPIPE_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac
mkdir -p "$RESULTS/logs"

# crate|cargo test selector|what is fuzzed
TARGETS=(
  "chatpipe-core|--test fuzz_frames|WebSocket client-frame decoder, client/server frame schemas, spliced server frames"
  "chatpipe-edge|--lib|resume query parameters (resume, last_seq) and the replay after last_seq"
  "chatpipe-search|--lib|search query builder and search cursor codec"
  "chatpipe-api|--lib|history cursors (before, after, limit) and the search query string"
)

status=0
started=$SECONDS
rows=()
total_cases=0
for target in "${TARGETS[@]}"; do
  IFS='|' read -r crate selector what <<<"$target"
  read -r -a select <<<"$selector"
  log="$RESULTS/logs/fuzz-$crate.log"
  echo "=== fuzz $crate ($CASES cases per property)"
  if ! cargo test "${CARGO_PROFILE[@]}" -q -p "$crate" "${select[@]}" --no-run >"$log" 2>&1; then
    echo "fuzz.sh: $crate did not build (see $log)" >&2
    status=1
    continue
  fi
  target_started=$SECONDS
  PROPTEST_CASES=$CASES cargo test "${CARGO_PROFILE[@]}" -p "$crate" "${select[@]}" -- \
    --test-threads=1 --format=pretty properties:: >>"$log" 2>&1
  rc=$?
  seconds=$((SECONDS - target_started))
  mapfile -t passed < <(sed -n 's/^test \(.*properties::[^ ]*\) \.\.\. ok$/\1/p' "$log")
  mapfile -t failed < <(sed -n 's/^test \(.*properties::[^ ]*\) \.\.\. FAILED$/\1/p' "$log")
  if ((rc != 0)) || ((${#failed[@]} > 0)) || ((${#passed[@]} == 0)); then
    echo "fuzz.sh: $crate: ${#failed[@]} properties failed, ${#passed[@]} passed (see $log)" >&2
    status=1
  fi
  names=""
  for name in "${passed[@]}"; do names+="${names:+,}\"$name\""; done
  failed_names=""
  for name in "${failed[@]}"; do failed_names+="${failed_names:+,}\"$name\""; done
  cases=$(( ${#passed[@]} * CASES ))
  total_cases=$((total_cases + cases))
  echo "    ${#passed[@]} properties × $CASES cases passed in ${seconds} s${failed_names:+; FAILED: ${failed[*]}}"
  rows+=("{\"crate\":\"$crate\",\"what\":\"$what\",\"passed\":[$names],\"failed\":[$failed_names],\"cases\":$cases,\"seconds\":$seconds,\"status\":$rc}")
done

IFS=,
printf '{"cases_per_property":%d,"profile":"%s","targets":[%s],"total_cases":%d,"total_seconds":%d,"finished_unix_s":%d}\n' \
  "$CASES" "$PROFILE" "${rows[*]}" "$total_cases" $((SECONDS - started)) "$(date +%s)" >"$RESULTS/fuzz.json"
unset IFS
echo "fuzz.sh: $total_cases cases in $((SECONDS - started)) s; $RESULTS/fuzz.json"
exit $status
