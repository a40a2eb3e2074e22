#!/usr/bin/env bash
# topology/test.sh — Quickstart command 2: the whole test suite, against the
# real engines. This is what CI runs (.ci/run).
#
#   pre-checks  the Quickstart contract (README block, .ci/run) and
#               docker-compose.yml (topology/tests/precheck.sh)
#   lint        cargo fmt --all --check
#               cargo clippy --workspace --all-targets -- -D warnings
#               (each a step of its own: a failure fails the run, and the
#               tests still run)
#   engines     `topology/engines.sh up` (idempotent; fails loudly: the
#               integration tests need real Kafka, Cassandra and OpenSearch),
#               started in the background before the lint and waited for
#               after it
#   phase 1     cargo test --workspace --all-targets --no-fail-fast
#               cargo test --workspace --doc --no-fail-fast
#               (everything that shares the engines, in parallel)
#   phase 2     cargo test --workspace --lib --bins --tests --no-fail-fast -- --ignored --test-threads=1
#               the `#[ignore = "..."]` tests: they stop, kill or restart
#               the shared engines, so they run after everything else, one
#               at a time (--lib --bins --tests: a doc example marked
#               `ignore` is not a test)
#   restore     `topology/engines.sh up`, so the engines are left running
#               even if an outage test failed midway
#   clients     clients/ci.sh: the TypeScript SDK (npm ci from the lockfile,
#               generated-types drift check, unit tests, integration tests
#               against a real `chatpipe all` with an edge killed midway),
#               the web app in Debian's chromium, the Python analytics
#               example against the real Kafka (uses the debug binary that
#               phase 1 built; npm/pip caches under $CHATPIPE_HOME)
#
# Every phase runs even if an earlier one failed; a summary of each (per
# test binary, failing tests, compile errors, totals) is printed at the end.
# Exit status: 0 iff every step passed; 130 if interrupted.
#
# Wall time: the whole run is bounded (default 80 min, CI allows 90): phase 1
# gets what is left after reserving time for phase 2 and the restore, and a
# phase that runs out of time is killed and reported as TIMED OUT.
#
# Environment (all optional):
#   CARGO_TARGET_DIR                  default ~/.cache/chatpipe/target
#   CHATPIPE_TEST_BUDGET_SECS         whole run, default 4800
#   CHATPIPE_TEST_PHASE2_MIN_SECS     time kept for phase 2, default 1200
#   CHATPIPE_TEST_MIN_STEP_SECS       least time any cargo step gets, default 600
#   CHATPIPE_TEST_LINT_SECS           limit of the clippy step, default 1500
#   CHATPIPE_TEST_CLIENTS_SECS        time kept for the clients step, default 900
#   CHATPIPE_TEST_LOG_DIR             full cargo output, default ~/.cache/chatpipe/test-logs/<time>
#   plus topology/engines.sh's variables (CHATPIPE_HOME, ports, heaps).
set -uo pipefail   # no -e on purpose: a failing phase must not hide the next

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=prereqs.sh
source "$REPO/topology/prereqs.sh"
cd "$REPO" || exit 1
# One stream: cargo's output, our progress lines and the summary stay in
# order when CI (or a user) captures them.
exec 2>&1

START=$SECONDS
BUDGET=${CHATPIPE_TEST_BUDGET_SECS:-4800}
PHASE2_MIN=${CHATPIPE_TEST_PHASE2_MIN_SECS:-1200}
RESTORE_RESERVE=300
CLIENTS_RESERVE=${CHATPIPE_TEST_CLIENTS_SECS:-900}
MIN_PHASE=${CHATPIPE_TEST_MIN_STEP_SECS:-600}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
LOG_DIR=${CHATPIPE_TEST_LOG_DIR:-${CHATPIPE_HOME:-$HOME/.cache/chatpipe}/test-logs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$LOG_DIR"

SUMMARY_FILE=$LOG_DIR/summary.txt
: >"$SUMMARY_FILE"
FAILED_STEPS=()
INTERRUPTED=0
CHILD=""
RESTORED=0

banner() { printf '\n[chatpipe] ===== %s =====\n' "$*" >&2; }

# --------------------------------------------------------------- signals ---

# A Ctrl+C (or CI's SIGTERM) stops the running step and goes straight to
# the restore and the summary. `timeout` runs in its own process group (so
# it does not see the terminal's SIGINT): forward the signal to it, and it
# passes it on to cargo and the test binaries.
# shellcheck disable=SC2317  # invoked by trap
on_signal() {
  INTERRUPTED=1
  say "interrupted: stopping the running step, then restoring the engines"
  if [[ -n $CHILD ]]; then kill -TERM "$CHILD" 2>/dev/null; fi
}

# Whatever happens, leave the engines running.
restore_engines() {
  ((RESTORED)) && return 0
  RESTORED=1
  banner "restore: topology/engines.sh up"
  if "$REPO/topology/engines.sh" up </dev/null; then
    "$REPO/topology/engines.sh" status </dev/null || true
    record "restore" 0 0 "engines up"
  else
    "$REPO/topology/engines.sh" status </dev/null || true
    record "restore" 1 0 "engines did NOT come back up: see topology/engines.sh logs NAME"
  fi
}

# ---------------------------------------------------------------- steps ---

# record NAME RC SECONDS NOTE: one line of the final summary.
record() {
  local name=$1 rc=$2 secs=$3 note=$4 verdict
  case $rc in
    0) verdict=ok ;;
    124 | 137) verdict="TIMED OUT" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  ((INTERRUPTED && rc != 0)) && verdict="INTERRUPTED"
  ((rc == 0)) || FAILED_STEPS+=("$name")
  printf '%-10s %-18s %6ss  %s\n' "$name" "$verdict" "$secs" "$note" >>"$SUMMARY_FILE"
}

remaining() { echo $((BUDGET - (SECONDS - START))); }
at_least() { (($1 > $2)) && echo "$1" || echo "$2"; }

# run_step NAME LIMIT_SECS CMD...: runs CMD under `timeout`, streams its
# output to the terminal and appends it to $LOG_DIR/NAME.log; sets STEP_RC.
run_step() {
  local name=$1 limit=$2 log tail_pid offset
  shift 2
  log=$LOG_DIR/$name.log
  banner "$name (limit ${limit}s): $*"
  printf '=== %s: %s\n' "$(date -Is)" "$*" >>"$log"
  offset=$(($(stat -c %s "$log") + 1))
  timeout --kill-after=60 "$limit" "$@" </dev/null >>"$log" 2>&1 &
  CHILD=$!
  # Show the output as it comes; tail exits once CHILD is gone and the log
  # is drained.
  tail -c "+$offset" -s 0.5 -f --pid="$CHILD" "$log" &
  tail_pid=$!
  # `wait` returns early when a trapped signal arrives: wait again until
  # CHILD has really exited.
  while :; do
    wait "$CHILD"
    STEP_RC=$?
    kill -0 "$CHILD" 2>/dev/null || break
  done
  CHILD=""
  wait "$tail_pid" 2>/dev/null
  if ((STEP_RC == 124 || STEP_RC == 137)); then
    say "$name: TIMED OUT after ${limit}s (killed)"
  fi
}

# cargo_phase NAME LIMIT_SECS CARGO_ARGS... [-- TEST_ARGS...]: one cargo
# test phase, recorded in the summary. Cargo builds every test binary before
# it runs any, so one package that does not compile would hide the results
# of all the others: the phase then still FAILS, but it is retried without
# the packages that did not compile (a few rounds, since their dependents
# fail next), so that the rest of the workspace is still tested.
cargo_phase() {
  local name=$1 limit=$2
  shift 2
  local cargo_args=() test_args=() after_dashes=0 arg
  for arg in "$@"; do
    if ((after_dashes)); then test_args+=("$arg")
    elif [[ $arg == -- ]]; then after_dashes=1
    else cargo_args+=("$arg"); fi
  done
  local log=$LOG_DIR/$name.log t0=$SECONDS deadline=$((SECONDS + limit))
  local excludes=() excluded=() new=() phase_rc=0 round package command
  : >"$log"
  for round in 1 2 3 4; do
    command=(cargo "${cargo_args[@]}" "${excludes[@]}")
    ((${#test_args[@]})) && command+=(-- "${test_args[@]}")
    run_step "$name" "$((deadline - SECONDS))" "${command[@]}"
    ((STEP_RC == 0)) && break
    ((phase_rc == 0)) && phase_rc=$STEP_RC
    ((STEP_RC == 124 || STEP_RC == 137)) && { phase_rc=$STEP_RC; break; }
    ((INTERRUPTED)) && break
    new=()
    # shellcheck disable=SC2016  # the backquotes are cargo's, not ours
    while read -r package; do
      [[ " ${excluded[*]} " == *" $package "* ]] || new+=("$package")
    done < <(sed -n 's/^error: could not compile `\([^`]*\)`.*/\1/p' "$log" | sort -u)
    ((${#new[@]})) || break
    ((round < 4 && deadline - SECONDS > 60)) || break
    for package in "${new[@]}"; do
      excluded+=("$package")
      excludes+=(--exclude "$package")
    done
    say "$name: ${new[*]} did not compile; testing the rest of the workspace without: ${excluded[*]}"
  done
  local note="cargo ${cargo_args[*]}${test_args[*]:+ -- ${test_args[*]}}"
  ((${#excluded[@]})) && note+="  [did not compile: ${excluded[*]}; the rest was tested without them]"
  record "$name" "$phase_rc" $((SECONDS - t0)) "$note"
}

# Summary of one cargo test log: per test binary, failures, totals.
summarize_cargo() {
  local name=$1
  awk -v step="$name" '
    function count(word,   i) { for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" word) return $i + 0; return 0 }
    /^ +Running / {
      line = $0; sub(/^ +Running /, "", line)
      src = line; sub(/ \(.*$/, "", src)
      bin = line; sub(/^.*\(/, "", bin); sub(/\)$/, "", bin)
      n = split(bin, parts, "/"); bin = parts[n]; sub(/-[0-9a-f]+$/, "", bin)
      target = bin " " src
      next
    }
    /^ +Doc-tests / { target = $2 " doc-tests"; next }
    /^test result: / {
      verdict = $3; sub(/\.$/, "", verdict)
      p = count("passed"); f = count("failed"); ig = count("ignored"); fo = count("filtered")
      tp += p; tf += f; ti += ig; tfo += fo; binaries++
      # Quiet lines for binaries that ran nothing (filtered out in phase 2).
      if (p + f + ig > 0 || verdict != "ok")
        rows = rows sprintf("    %-6s %4d passed %3d failed %3d ignored   %s\n", verdict, p, f, ig, target)
      next
    }
    /^test .* \.\.\. FAILED$/ { t = $0; sub(/^test /, "", t); sub(/ \.\.\. FAILED$/, "", t); failures = failures "      " target ": " t "\n"; next }
    /^error: could not compile/ { compile = compile "      " $0 "\n"; next }
    /^error: [0-9]+ targets? failed:/ { in_targets = 1; next }
    in_targets && /^ +`/ { t = $0; sub(/^ +/, "", t); targets = targets "      " t "\n"; next }
    in_targets { in_targets = 0 }
    END {
      printf "  %s: %d test binaries, %d passed, %d failed, %d ignored, %d filtered out\n", step, binaries, tp, tf, ti, tfo
      if (rows != "") printf "%s", rows
      if (failures != "") printf "    failed tests:\n%s", failures
      if (compile != "") printf "    compile errors:\n%s", compile
      if (targets != "") printf "    failed targets:\n%s", targets
    }
  ' "$LOG_DIR/$name.log"
}

# ----------------------------------------------------------------- main ---

banner "prerequisites"
check_prereqs
say "cargo: $(command -v cargo) ($(cargo --version)); CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
say "full logs: $LOG_DIR"

banner "pre-checks: Quickstart contract, docker-compose.yml"
t0=$SECONDS
bash "$REPO/topology/tests/precheck.sh"
record "precheck" $? $((SECONDS - t0)) "README Quickstart, .ci/run, docker-compose.yml"

# The engines start in the background while the lint runs (neither lint
# step needs them; their JVMs spend most of the start waiting).
ENGINES_T0=$SECONDS
say "engines: topology/engines.sh up in the background (its output is shown after the lint)"
"$REPO/topology/engines.sh" up </dev/null >"$LOG_DIR/engines.log" 2>&1 &
ENGINES_PID=$!

t0=$SECONDS
run_step fmt 300 cargo fmt --all --check
record "fmt" "$STEP_RC" $((SECONDS - t0)) "cargo fmt --all --check"
if ((!INTERRUPTED)); then
  t0=$SECONDS
  run_step clippy "${CHATPIPE_TEST_LINT_SECS:-1500}" cargo clippy --workspace --all-targets -- -D warnings
  record "clippy" "$STEP_RC" $((SECONDS - t0)) "cargo clippy --workspace --all-targets -- -D warnings"
fi

banner "engines: waiting for topology/engines.sh up"
ENGINES_RC=0
wait "$ENGINES_PID" || ENGINES_RC=$?
cat "$LOG_DIR/engines.log" >&2
if ((ENGINES_RC != 0)); then
  record "engines" 1 $((SECONDS - ENGINES_T0)) "engines did not start: NO TESTS RUN (see above; topology/engines.sh logs NAME)"
  say "ERROR: the engines did not start; the integration tests need them, so no test was run"
  cat "$SUMMARY_FILE" >&2
  exit 1
fi
# From here on the engines are up: an interruption or a crash of this script
# still ends with them up.
trap on_signal INT TERM
trap restore_engines EXIT
"$REPO/topology/engines.sh" status </dev/null
record "engines" 0 $((SECONDS - ENGINES_T0)) "Kafka, Cassandra, OpenSearch healthy (started during the lint)"

if ((!INTERRUPTED)); then
  limit=$(at_least $(($(remaining) - PHASE2_MIN - RESTORE_RESERVE)) "$MIN_PHASE")
  cargo_phase phase1 "$limit" test --workspace --all-targets --no-fail-fast
fi

if ((!INTERRUPTED)); then
  limit=$(at_least $(($(remaining) - PHASE2_MIN - RESTORE_RESERVE)) "$MIN_PHASE")
  cargo_phase phase1-doc "$limit" test --workspace --doc --no-fail-fast
fi

if ((!INTERRUPTED)); then
  limit=$(at_least $(($(remaining) - RESTORE_RESERVE - CLIENTS_RESERVE)) "$MIN_PHASE")
  cargo_phase phase2 "$limit" test --workspace --lib --bins --tests --no-fail-fast -- --ignored --test-threads=1
fi

restore_engines

# The clients (clients/ci.sh) need the engines and the debug binary of
# phase 1; they start their own chatpipe processes on ports 18000-18999.
if ((!INTERRUPTED)); then
  t0=$SECONDS
  export CHATPIPE_CLIENTS_COUNTS_FILE=$LOG_DIR/clients-counts.txt
  run_step clients "$(at_least "$(remaining)" 600)" bash "$REPO/clients/ci.sh"
  record "clients" "$STEP_RC" $((SECONDS - t0)) "clients/ci.sh: $(grep -a '^clients: ' "$LOG_DIR/clients.log" | tail -1 || true)"
fi

banner "summary"
{
  for step in phase1 phase1-doc phase2; do
    [[ -f $LOG_DIR/$step.log ]] && summarize_cargo "$step"
  done
  if [[ -f $LOG_DIR/clients.log ]]; then
    echo "  clients:"
    sed -n '/^\[clients\] summary/,/^clients: /p' "$LOG_DIR/clients.log" | sed '1d; s/^/  /'
  fi
  echo
  echo "  steps:"
  sed 's/^/    /' "$SUMMARY_FILE"
  echo
  echo "  total $((SECONDS - START))s; full logs in $LOG_DIR"
} | tee "$LOG_DIR/report.txt" >&2

# One plain closing line over every phase: "tests: N passed, N failed".
# (Tests ignored in phase 1 are the ones phase 2 runs, so they are counted
# there, as passed or failed.)
# The clients' counts (node:test and pytest) are added from clients/ci.sh.
totals() {
  local clients="0 0"
  [[ -f $LOG_DIR/clients-counts.txt ]] && clients=$(cat "$LOG_DIR/clients-counts.txt")
  cat "$LOG_DIR"/phase1.log "$LOG_DIR"/phase1-doc.log "$LOG_DIR"/phase2.log 2>/dev/null |
    awk -v clients="$clients" '/^test result: / { for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
         END { split(clients, c, " "); printf "tests: %d passed, %d failed\n", p + c[1], f + c[2] }'
}

if ((INTERRUPTED)); then
  say "INTERRUPTED"
  totals
  exit 130
fi
if ((${#FAILED_STEPS[@]})); then
  say "FAILED: ${FAILED_STEPS[*]}"
  totals
  exit 1
fi
say "all tests passed"
totals
exit 0
