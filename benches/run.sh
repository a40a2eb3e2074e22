#!/usr/bin/env bash
# Runs every chatpipe benchmark end to end on this machine and writes
# benches/RESULTS.md with its plots:
#
#   benches/run.sh                       # everything (about 40 minutes, see RESULTS.md "Run time")
#   SCENARIOS="idle broadcast" benches/run.sh
#   SKIP="criterion kafka persist index centrifugo idle-cpu fuzz fuzz-api" benches/run.sh
#   QUICK=1 benches/run.sh               # smoke pass (a few minutes, see below)
#
# 1. builds chatpipe and the benches (release; QUICK: the dev profile);
# 2. builds Centrifugo from the Go module proxy (benches/centrifugo.sh);
# 3. starts the engines (topology/engines.sh up), or with
#    CHATPIPE_BENCH_ENGINES=reuse only checks that they are healthy (never
#    starts, stops or restarts them: for engines shared with others);
# 4. idle CPU: the engines alone, then the stack started with no client
#    (chatpipe-loadgen idle-cpu, results/idle-cpu.json);
# 5. per scenario (benches/scenarios/*.toml): starts a fresh deployment of
#    chatpipe, runs chatpipe-loadgen against it (and the scenario's
#    baselines: the bare tokio-tungstenite server, Centrifugo), which reads
#    the CPU of every process from /proc, stops chatpipe;
# 6. the Kafka produce path next to kafka-producer-perf-test, the persist and
#    index roles next to their raw baselines (their examples print JSON),
#    the criterion micro-benchmarks;
#    then the fuzzing passes (benches/fuzz.sh: property tests with a
#    million cases each; benches/fuzz-api.sh: schemathesis on the API);
# 7. bench-report: RESULTS.md and the plots, from the JSON results (and
#    results/timings.json: how long each step took).
#
# QUICK=1 is a smoke pass that CI can run: the dev profile (what the tests
# already built), 300 users, a twentieth of the conversations, every phase
# 5 s at a tenth of the rate, short
# settle and drain, the bare baseline only, small role and Kafka runs, no
# criterion, no Centrifugo; results go to $CARGO_TARGET_DIR/bench-quick
# (benches/results and benches/RESULTS.md are left alone). Every knob below
# can still be set by hand.
#
# Environment:
#   SCENARIOS, SKIP               as above
#   QUICK=1                       smoke pass
#   CHATPIPE_BENCH_PROFILE        release | debug (default: release; QUICK: debug)
#   CHATPIPE_BENCH_RESULTS        results directory (default benches/results)
#   CHATPIPE_BENCH_BIN_DIR        run the chatpipe, chatpipe-loadgen and
#                                 bench-report binaries found there instead
#                                 of building them (e.g. copies taken out of a
#                                 target directory that others build into)
#   CHATPIPE_BENCH_ENGINES        up (default) | reuse
#   CHATPIPE_BENCH_PORT_BASE      first port of the deployment under test (default 9580)
#   CHATPIPE_BENCH_MODE           roles (default: one process per role) | all
#   CHATPIPE_BENCH_IDLE_S         length of each idle CPU window (default 30; QUICK 5)
#   CHATPIPE_BENCH_LOADGEN_ARGS   extra chatpipe-loadgen arguments for every scenario
#   CHATPIPE_BENCH_EDGES          edge processes of a roles-mode deployment
#                                 (default: 2 for the faults scenario, else 1;
#                                 the idle scenario and the idle CPU step always
#                                 run one, so that the per-connection memory
#                                 stays comparable). With N > 1 they are named
#                                 edge-1..edge-N (own --edge-id, --worker-id
#                                 901.., public port PORT_BASE, then
#                                 PORT_BASE+30+3(k-2), ops port +1, push port
#                                 PORT_BASE+100+k-1); the load generator gets
#                                 every URL and spreads each conversation's
#                                 members over them, and each edge's CPU is a
#                                 row of its own.
#   CHATPIPE_BENCH_FAULTS         a fault schedule applied during every scenario
#                                 (roles mode), items at SECONDS after the load
#                                 generator starts:
#                                 `kill9:ROLE@SECONDS`   SIGKILL, checked gone,
#                                   restarted with the same arguments 2 s later,
#                                   must report ready (ROLE: fanout, persist,
#                                   index, api, edge = the first edge, edge-K);
#                                 `rolling:edge@SECONDS` every edge in turn:
#                                   SIGTERM, its drain and exit awaited (checked
#                                   gone), restarted, ready, then the next;
#                                 `sigstop:ROLE@SECONDS+D`  SIGSTOP, the stopped
#                                   state checked in /proc, D seconds later
#                                   SIGCONT, checked running (D past the edge's
#                                   10 s lease, `lease_ms`, to test a lost lease);
#                                 `kill9:ENGINE@SECONDS` / `restart:ENGINE@SECONDS`
#                                   an engine (kafka, cassandra, opensearch, or
#                                   one broker or node of a cluster: kafka-2,
#                                   cassandra-3): SIGKILL from its pid file,
#                                   checked gone, then `topology/engines.sh up`;
#                                   or `engines.sh restart`; healthy again;
#                                   on a replicated Kafka (CHATPIPE_KAFKA_NODES
#                                   > 1) a killed broker must also be seen out
#                                   of every ISR of chat.messages before its
#                                   restart, and back in all of them (none
#                                   under-replicated) after it
#                                   (`chatpipe-loadgen kafka-isr`);
#                                 `kill9:kafka-leader@SECONDS` the same, of the
#                                   broker leading the most messages of the
#                                   deployment's chat.messages partitions then
#                                   (`chatpipe-loadgen kafka-leader`; a broker
#                                   this schedule killed before is not picked
#                                   again, so a second item kills a second
#                                   broker); the row names the broker and why;
#                                 `skew:ROLE=+SECONDS` (or -SECONDS) the role
#                                   runs the whole scenario with its wall clock
#                                   that far off, under libfaketime
#                                   (LD_PRELOAD, monotonic clocks left alone;
#                                   CHATPIPE_BENCH_FAKETIME_LIB, default the
#                                   Debian/Ubuntu `faketime` package's); checked
#                                   at the start: the library mapped in the
#                                   process, and the HTTP Date of its ops
#                                   listener that far ahead of the host's;
#                                 e.g. "kill9:fanout@30 rolling:edge@50"; what
#                                 was applied goes to $RESULTS/faults-<scenario>.json
#                                 (benches/faults.sh runs the whole schedule)
#
# Exit status: non-zero when a scenario's verification found a lost message
# (or a step failed). Every process started here is stopped on exit.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}"
QUICK="${QUICK:-}"
if [[ -n $QUICK ]]; then
  MODE_NAME=quick
  PROFILE="${CHATPIPE_BENCH_PROFILE:-debug}"
  RESULTS="${CHATPIPE_BENCH_RESULTS:-$CARGO_TARGET_DIR/bench-quick}"
  REPORT="$RESULTS/RESULTS.md"
  SCENARIOS="${SCENARIOS:-idle chat broadcast storm}"
  SKIP="${SKIP:-centrifugo criterion}"
  IDLE_S="${CHATPIPE_BENCH_IDLE_S:-5}"
  QUICK_LOADGEN=(--users 300 --conversation-scale 0.05 --rate-scale 0.1 --phase-seconds 5 --settle-seconds 2 --drain-seconds 30)
  EXAMPLE_RECORDS=2000
  KAFKA_ARGS=(--records 20000 --rounds 1)
else
  MODE_NAME=full
  PROFILE="${CHATPIPE_BENCH_PROFILE:-release}"
  RESULTS="${CHATPIPE_BENCH_RESULTS:-benches/results}"
  # A run into another results directory (a profile, a fault run) reports
  # there and leaves the published report alone.
  REPORT=benches/RESULTS.md
  if [[ -n ${CHATPIPE_BENCH_RESULTS:-} ]]; then REPORT="$RESULTS/RESULTS.md"; fi
  SCENARIOS="${SCENARIOS:-idle broadcast chat storm}"
  SKIP="${SKIP:-}"
  IDLE_S="${CHATPIPE_BENCH_IDLE_S:-30}"
  QUICK_LOADGEN=()
  EXAMPLE_RECORDS=""
  KAFKA_ARGS=()
fi
case $PROFILE in
  release) CARGO_PROFILE=(--release); BIN="$CARGO_TARGET_DIR/release" ;;
  debug) CARGO_PROFILE=(); BIN="$CARGO_TARGET_DIR/debug" ;;
  *) echo "run.sh: CHATPIPE_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
esac
if [[ -n ${CHATPIPE_BENCH_BIN_DIR:-} ]]; then BIN=$CHATPIPE_BENCH_BIN_DIR; fi
read -r -a EXTRA_LOADGEN <<<"${CHATPIPE_BENCH_LOADGEN_ARGS:-}"
ENGINES_MODE="${CHATPIPE_BENCH_ENGINES:-up}"
mkdir -p "$RESULTS/logs"
status=0
chatpipe_pid=""

log() { printf '\n=== %s ===\n' "$*"; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# How long each step takes, for results/timings.json (read by bench-report).
run_started=$SECONDS
timings=()
timed() { # step-name command...
  local name=$1 started=$SECONDS rc
  shift
  "$@"
  rc=$?
  timings+=("{\"step\":\"$name\",\"seconds\":$((SECONDS - started)),\"status\":$rc}")
  return $rc
}
write_timings() {
  local IFS=,
  printf '{"mode":"%s","steps":[%s],"total_seconds":%d}\n' \
    "$MODE_NAME" "${timings[*]}" $((SECONDS - run_started)) >"$RESULTS/timings.json"
}

wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "run.sh: $1 not ready after $2 s" >&2; return 1; fi
    if [[ -n "$chatpipe_pid" ]] && ! kill -0 "$chatpipe_pid" 2>/dev/null; then echo "run.sh: chatpipe exited (see $RESULTS/logs)" >&2; return 1; fi
    sleep 1
  done
}

# ---- Addresses of the deployment under test: the one place to change them.
# By default every role runs as its own process on ports PORT_BASE.. with its
# own topic prefix, index prefix and consumer groups, fresh for each
# scenario (an isolated deployment on the shared engines: a `chatpipe all`
# already running on the default ports is left alone, one scenario's
# leftovers — e.g. the offline presence of 15,000 users — do not load the
# next, and the edge's memory is the edge's alone).
# CHATPIPE_BENCH_MODE=all runs `chatpipe all` on the default ports instead.
# *_LISTEN are the public listeners (edge WebSocket, API), *_OPS_LISTEN each
# role's loopback ops listener, where /metrics, /healthz and /readyz answer.
MODE="${CHATPIPE_BENCH_MODE:-roles}"
PORT_BASE="${CHATPIPE_BENCH_PORT_BASE:-9580}"
EDGE_LISTEN=127.0.0.1:$PORT_BASE
EDGE_OPS_LISTEN=127.0.0.1:$((PORT_BASE + 1))
EDGE_PUSH_LISTEN=127.0.0.1:$((PORT_BASE + 100))
# Edge K of several (K >= 2): public, ops and push listeners.
edge_listen() { echo "127.0.0.1:$((PORT_BASE + 30 + 3 * ($1 - 2)))"; }
edge_ops_listen() { echo "127.0.0.1:$((PORT_BASE + 31 + 3 * ($1 - 2)))"; }
edge_push_listen() { echo "127.0.0.1:$((PORT_BASE + 100 + $1 - 1))"; }
# How many edges scenario $1 runs (see CHATPIPE_BENCH_EDGES above).
edges_for() {
  if [[ $MODE != roles || $1 == idle || $1 == idle-cpu ]]; then echo 1; return; fi
  if [[ -n ${CHATPIPE_BENCH_EDGES:-} ]]; then echo "$CHATPIPE_BENCH_EDGES"; return; fi
  if [[ $1 == faults ]]; then echo 2; else echo 1; fi
}
API_LISTEN=127.0.0.1:$((PORT_BASE + 10))
FANOUT_OPS_LISTEN=127.0.0.1:$((PORT_BASE + 11))
PERSIST_OPS_LISTEN=127.0.0.1:$((PORT_BASE + 12))
INDEX_OPS_LISTEN=127.0.0.1:$((PORT_BASE + 13))
API_OPS_LISTEN=127.0.0.1:$((PORT_BASE + 14))
if [[ $MODE == all ]]; then
  EDGE_LISTEN=127.0.0.1:8080 EDGE_OPS_LISTEN=127.0.0.1:8081 API_LISTEN=127.0.0.1:8090
  FANOUT_OPS_LISTEN=127.0.0.1:8091 PERSIST_OPS_LISTEN=127.0.0.1:8092
  INDEX_OPS_LISTEN=127.0.0.1:8093 API_OPS_LISTEN=127.0.0.1:8094
fi
EDGE_OPS=http://$EDGE_OPS_LISTEN
API_OPS=http://$API_OPS_LISTEN
FANOUT_OPS=http://$FANOUT_OPS_LISTEN
PERSIST_OPS=http://$PERSIST_OPS_LISTEN
INDEX_OPS=http://$INDEX_OPS_LISTEN
# The load generator's clients share few source addresses; the edge's
# per-IP limits (100 connects/s, 1,000 concurrent connections by default)
# are meant for real clients, so the benchmarks keep the edge-wide budget
# per address and lift the per-address connection cap.
export CHATPIPE_EDGE_CONNECTS_PER_SECOND_PER_IP="${CHATPIPE_EDGE_CONNECTS_PER_SECOND_PER_IP:-2000}"
export CHATPIPE_EDGE_MAX_CONNECTIONS_PER_IP="${CHATPIPE_EDGE_MAX_CONNECTIONS_PER_IP:-0}"
export CHATPIPE_LOADGEN_WS_URL=ws://$EDGE_LISTEN/ws
export CHATPIPE_LOADGEN_API_URL=http://$API_LISTEN
export CHATPIPE_LOADGEN_EDGE_METRICS_URL=$EDGE_OPS/metrics
export CHATPIPE_LOADGEN_FANOUT_METRICS_URL=$FANOUT_OPS/metrics
export CHATPIPE_LOADGEN_PERSIST_METRICS_URL=$PERSIST_OPS/metrics
export CHATPIPE_LOADGEN_INDEX_METRICS_URL=$INDEX_OPS/metrics

stack_pids=()
stack_names=()
# The edges of the running deployment (names as in stack_names) and pids.
edge_names=()
edge_pids=()

stop_chatpipe() {
  local pid
  if [[ -f $RESTARTED_PIDS ]]; then
    while read -r _ pid; do stack_pids+=("$pid"); done <"$RESTARTED_PIDS"
    rm -f "$RESTARTED_PIDS"
  fi
  for pid in "${stack_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${stack_pids[@]}"; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  stack_pids=()
  stack_names=()
  edge_names=()
  edge_pids=()
  chatpipe_pid=""
}
trap 'stop_chatpipe; write_timings' EXIT

# Clock skew (`skew:ROLE=+S` in CHATPIPE_BENCH_FAULTS): the role runs under
# libfaketime with its wall clock S seconds off (the multi-threaded
# variant; monotonic clocks, timers and timeouts, left alone).
FAKETIME_LIB="${CHATPIPE_BENCH_FAKETIME_LIB:-$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null | head -n 1)}"
skew_of() { # role: its clock offset in seconds (+S / -S), or nothing
  local item
  for item in ${CHATPIPE_BENCH_FAULTS:-}; do
    [[ $item == "skew:$1="* ]] && { echo "${item#*=}"; return; }
  done
}
# The command prefix that starts role $1 (env with libfaketime when skewed).
role_prefix() {
  local skew; skew=$(skew_of "$1")
  [[ -n $skew ]] || return 0
  [[ -n $FAKETIME_LIB && -f $FAKETIME_LIB ]] || { echo "run.sh: skew of $1 needs libfaketime (apt-get install -y faketime, or CHATPIPE_BENCH_FAKETIME_LIB)" >&2; return 1; }
  printf '%s\n' env "LD_PRELOAD=$FAKETIME_LIB" "FAKETIME=$skew" FAKETIME_DONT_FAKE_MONOTONIC=1
}

declare -A role_args=() role_ops=()
start_role() { # name log-name args...
  local name=$1 log_name=$2 prefix; shift 2
  mapfile -t prefix < <(role_prefix "$name")
  "${prefix[@]}" "$BIN/chatpipe" "$@" >"$RESULTS/logs/$log_name.log" 2>&1 &
  stack_pids+=($!)
  stack_names+=("$name")
  role_args[$name]="$log_name $(printf '%q ' "$@")"
}

# Restarted roles (started by the fault schedule, in a background job) are
# not in stack_pids: their pids go to this file, which stop_chatpipe reads.
RESTARTED_PIDS="$RESULTS/restarted.pids"

# The latest process of role $1: a restarted one, else the one started first.
role_pid() {
  local pid="" i
  [[ -f $RESTARTED_PIDS ]] && pid=$(awk -v r="$1" '$1 == r { p = $2 } END { print p }' "$RESTARTED_PIDS")
  if [[ -z $pid ]]; then
    for i in "${!stack_names[@]}"; do [[ ${stack_names[$i]} == "$1" ]] && pid=${stack_pids[$i]}; done
  fi
  echo "$pid"
}
# Gone means out of the process table (or a zombie of this shell).
gone() { ! kill -0 "$1" 2>/dev/null || [[ $(ps -o stat= -p "$1" 2>/dev/null) == Z* ]]; }
# Waits up to $2 tenths of a second for pid $1 to be gone.
wait_gone() {
  local _
  for _ in $(seq 1 "$2"); do gone "$1" && return 0; sleep 0.1; done
  gone "$1"
}
# The process state letter of pid $1 (/proc/PID/stat field 3: T = stopped).
proc_state() { awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null; }
now_ms() { date +%s%3N; }
seconds_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# Starts role $1 again with its arguments; its pid goes to $restarted, and
# $ready_s is how long it took to report ready (-1: never, within 60 s).
restart_role() {
  local role=$1 args log_name restart_ms ops=${role_ops[$1]:-} _
  local prefix
  read -r -a args <<<"${role_args[$role]}"
  log_name=${args[0]}; args=("${args[@]:1}")
  mapfile -t prefix < <(role_prefix "$role")
  local quoted=""
  ((${#prefix[@]})) && quoted=$(printf '%q ' "${prefix[@]}")
  # `exec`: the background job is the role itself (or env, which execs
  # it), so $! is its pid.
  eval "exec $quoted\"\$BIN/chatpipe\" ${args[*]}" >>"$RESULTS/logs/$log_name.log" 2>&1 &
  restarted=$!
  echo "$role $restarted" >>"$RESTARTED_PIDS"
  restart_ms=$(now_ms)
  ready_s=-1
  if [[ -n $ops ]]; then
    for _ in $(seq 1 600); do
      # Ready, and from the restarted process (not a leftover).
      if kill -0 "$restarted" 2>/dev/null && curl -fsS -o /dev/null "$ops/readyz" 2>/dev/null; then
        ready_s=$(seconds_since "$restart_ms")
        break
      fi
      sleep 0.1
    done
  fi
  echo "[faults] $(date +%T) $role restarted (pid $restarted), ready after ${ready_s}s" >&2
}

# Applies CHATPIPE_BENCH_FAULTS to the running deployment of scenario $1;
# writes one JSON object per fault applied (a rolling restart: one per
# edge) to $RESULTS/faults-$1.json. Every object says whether the fault was
# seen applied (`applied`: the process gone, or its stopped state seen),
# when it began and ended (unix ms: the restarted role ready, or SIGCONT),
# and how long the role took to be ready again.
# An engine's fault (the engines must be this run's alone: reuse them only
# when nothing else uses them). `kill9:ENGINE@S`: kill -9 of the engine's
# process (one broker or node of a cluster: kafka-2, cassandra-3), checked
# gone, then `topology/engines.sh up` (healthy again); `restart:ENGINE@S`:
# `topology/engines.sh restart` (a clean stop, then up). Sets
# ENGINE_FAULT_ROW to the fault's JSON object; false when not applied.
# Brokers a kill9 of this schedule took down (kafka-leader does not pick
# them again).
KAFKA_KILLED=()
KAFKA_NODES_RUNNING=${CHATPIPE_KAFKA_NODES:-1}
messages_topic() { echo "${CHATPIPE_TOPIC_PREFIX:-}chat.messages"; }
# `chatpipe-loadgen kafka-isr` of broker $1 until $2 (out | in) within $3 s:
# its JSON (exit status 1: not reached).
kafka_isr() {
  "$BIN/chatpipe-loadgen" kafka-isr --topic "$(messages_topic)" --broker "$1" --until "$2" --timeout-s "$3" 2>>"$RESULTS/logs/engines.log"
}
engine_fault() { # item kind engine fault_at
  local item=$1 kind=$2 engine=$3 fault_at=$4 pidfile pid begin_ms end_ms applied=false gone=false healthy=false ready_s=-1
  local extra="" broker="" isr_ok=true isr_left isr_back pick excluded
  if [[ $engine == kafka-leader ]]; then
    # The broker leading the most messages of chat.messages now.
    excluded=$(IFS=,; echo "${KAFKA_KILLED[*]}")
    # Busiest by messages: wait (up to 60 s) for the load to have written
    # some, should the fault come before the sends began.
    local _
    for _ in $(seq 1 60); do
      pick=$("$BIN/chatpipe-loadgen" kafka-leader --topic "$(messages_topic)" ${excluded:+--exclude "$excluded"} 2>>"$RESULTS/logs/engines.log") \
        || { echo "run.sh: $item: no leader of $(messages_topic) to pick" >&2; return 1; }
      (($(jq -r .messages <<<"$pick") > 0)) && break
      sleep 1
    done
    engine=kafka-$(jq -r .broker <<<"$pick")
    echo "[faults] $(date +%T) $item: $engine leads the busiest partitions: $pick" >&2
    extra+=",\"pick\":$pick"
  fi
  [[ $engine =~ ^kafka-([0-9]+)$ ]] && ((KAFKA_NODES_RUNNING > 1)) && broker=${BASH_REMATCH[1]}
  if [[ $engine =~ ^cassandra-([0-9]+)$ && -n ${CHATPIPE_CASSANDRA_FIRST_ADDRESS:-} ]]; then
    local first=$CHATPIPE_CASSANDRA_FIRST_ADDRESS
    extra+=",\"address\":\"${first%.*}.$((${first##*.} + BASH_REMATCH[1] - 1))\""
  fi
  pidfile="${CHATPIPE_HOME:-$HOME/.cache/chatpipe}/run/$engine.pid"
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || { echo "run.sh: no running engine $engine to fault" >&2; return 1; }
  begin_ms=$(now_ms)
  case $kind in
    kill9)
      kill -KILL "$pid" 2>/dev/null
      wait_gone "$pid" 100 && gone=true
      echo "[faults] $(date +%T) kill -9 $engine (pid $pid) at ${fault_at}s: gone=$gone" >&2
      [[ -n $broker ]] && KAFKA_KILLED+=("$broker")
      if [[ -n $broker && $gone == true ]]; then
        # The cluster must notice: the broker out of every ISR (the
        # controller fences it after its session timeout, 9 s by default).
        isr_left=$(kafka_isr "$broker" out 60) || isr_ok=false
        echo "[faults] $(date +%T) $engine out of every ISR of $(messages_topic): $isr_left" >&2
        extra+=",\"isr_left\":${isr_left:-null}"
      fi
      sleep 2
      topology/engines.sh up "$engine" >>"$RESULTS/logs/engines.log" 2>&1 && healthy=true
      if [[ -n $broker && $healthy == true ]]; then
        isr_back=$(kafka_isr "$broker" in 180) || isr_ok=false
        echo "[faults] $(date +%T) $engine back in every ISR of $(messages_topic): $isr_back" >&2
        extra+=",\"isr_back\":${isr_back:-null}"
      fi
      ;;
    restart)
      # engines.sh restart waits for the old process to exit before up.
      topology/engines.sh restart "$engine" >>"$RESULTS/logs/engines.log" 2>&1 && healthy=true
      kill -0 "$pid" 2>/dev/null || gone=true
      echo "[faults] $(date +%T) restart $engine (pid $pid) at ${fault_at}s: gone=$gone healthy=$healthy" >&2
      ;;
    *) echo "run.sh: unknown engine fault $item (kill9 or restart)" >&2; return 1 ;;
  esac
  end_ms=$(now_ms)
  $healthy && ready_s=$(seconds_since "$begin_ms")
  [[ $gone == true && $healthy == true && $isr_ok == true ]] && applied=true
  ENGINE_FAULT_ROW="{\"fault\":\"$item\",\"kind\":\"$kind\",\"role\":\"$engine\",\"at_s\":$fault_at,\"begin_unix_ms\":$begin_ms,\"end_unix_ms\":$end_ms,\"pid\":$pid,\"died\":$gone,\"applied\":$applied,\"ready_after_s\":$ready_s$extra}"
}

# `skew:ROLE=+S` (ROLE as named in the deployment: edge-2 of two edges):
# the role was started under libfaketime (start_role);
# checks that it took: the library mapped in the process, and the Date
# header of its ops listener S seconds (within 1 s: the header's
# resolution) off the host's clock. Sets SKEW_ROW (no begin or end: the
# skew lasts the whole run).
skew_check() { # item
  local item=$1 role skew pid mapped=false date_hdr host_s role_s seen="null" applied=false
  role=${item#skew:} skew=${role#*=} role=${role%%=*}
  pid=$(role_pid "$role")
  [[ -n $pid && $skew =~ ^[+-]?[0-9]+$ ]] || { echo "run.sh: $item: no running $role, or an offset not in whole seconds (skew:ROLE=+S)" >&2; return 1; }
  grep -q libfaketime "/proc/$pid/maps" 2>/dev/null && mapped=true
  host_s=$(date +%s)
  date_hdr=$(curl -fsS -D - -o /dev/null "${role_ops[$role]}/healthz" 2>/dev/null | tr -d '\r' | awk -F': ' 'tolower($1) == "date" { print $2 }')
  if [[ -n $date_hdr ]] && role_s=$(date -d "$date_hdr" +%s 2>/dev/null); then
    seen=$((role_s - host_s))
    ((seen - skew <= 1 && skew - seen <= 1)) && [[ $mapped == true ]] && applied=true
  fi
  echo "[faults] $(date +%T) skew of $role (pid $pid): ${skew} s asked, libfaketime mapped=$mapped, its clock ${seen} s off the host's (HTTP Date)" >&2
  SKEW_ROW="{\"fault\":\"$item\",\"kind\":\"skew\",\"role\":\"$role\",\"pid\":$pid,\"skew_s\":$((skew)),\"faketime_mapped\":$mapped,\"skew_seen_s\":$seen,\"applied\":$applied}"
}

apply_faults() { # scenario
  local out="$RESULTS/faults-$1.json" started=$SECONDS item kind role at duration pid rows=()
  local restarted ready_s
  for item in $CHATPIPE_BENCH_FAULTS; do
    if [[ $item == skew:* ]]; then
      skew_check "$item" && rows+=("$SKEW_ROW")
      continue
    fi
    kind=${item%%:*} role=${item#*:} at=${role#*@} role=${role%@*} duration=0
    if [[ $at == *+* ]]; then duration=${at#*+} at=${at%+*}; fi
    # `edge` with several edges: the first.
    if [[ $role == edge && ${#edge_names[@]} -gt 1 && $kind != rolling ]]; then role=${edge_names[0]}; fi
    while ((SECONDS - started < at)); do sleep 0.2; done
    local fault_at=$((SECONDS - started)) begin_ms end_ms applied=false
    if [[ $role =~ ^(kafka|cassandra|opensearch)(-[0-9]+)?$ || $role == kafka-leader ]]; then
      engine_fault "$item" "$kind" "$role" "$fault_at" && rows+=("$ENGINE_FAULT_ROW")
      continue
    fi
    case $kind in
      kill9)
        pid=$(role_pid "$role")
        [[ -n $pid ]] || { echo "run.sh: no running $role to fault" >&2; continue; }
        begin_ms=$(now_ms)
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 50 && applied=true
        echo "[faults] $(date +%T) kill -9 $role (pid $pid) at ${fault_at}s: gone=$applied" >&2
        sleep 2
        restart_role "$role"
        end_ms=$(now_ms)
        rows+=("{\"fault\":\"$item\",\"kind\":\"kill9\",\"role\":\"$role\",\"at_s\":$fault_at,\"begin_unix_ms\":$begin_ms,\"end_unix_ms\":$end_ms,\"pid\":$pid,\"died\":$applied,\"applied\":$applied,\"restarted_pid\":$restarted,\"ready_after_s\":$ready_s}")
        ;;
      rolling)
        [[ $role == edge ]] || { echo "run.sh: rolling restarts are of the edges (rolling:edge@S), not $role" >&2; continue; }
        local edge drained_s term_ms edge_at
        for edge in "${edge_names[@]}"; do
          pid=$(role_pid "$edge") applied=false
          [[ -n $pid ]] || { echo "run.sh: no running $edge to restart" >&2; continue; }
          begin_ms=$(now_ms) term_ms=$begin_ms edge_at=$((SECONDS - started))
          kill -TERM "$pid" 2>/dev/null
          # The drain: sessions told to reconnect, the lease retired, then
          # exit (within the edge's drain deadline, 10 s by default).
          wait_gone "$pid" 600 && applied=true
          drained_s=$(seconds_since "$term_ms")
          echo "[faults] $(date +%T) rolling: $edge (pid $pid) drained and exited after ${drained_s}s: gone=$applied" >&2
          restart_role "$edge"
          end_ms=$(now_ms)
          rows+=("{\"fault\":\"$item\",\"kind\":\"rolling\",\"role\":\"$edge\",\"at_s\":$edge_at,\"begin_unix_ms\":$begin_ms,\"end_unix_ms\":$end_ms,\"pid\":$pid,\"died\":$applied,\"applied\":$applied,\"drained_after_s\":$drained_s,\"restarted_pid\":$restarted,\"ready_after_s\":$ready_s}")
        done
        ;;
      sigstop)
        pid=$(role_pid "$role")
        [[ -n $pid ]] || { echo "run.sh: no running $role to stop" >&2; continue; }
        ((duration > 0)) || { echo "run.sh: $item needs a duration (sigstop:ROLE@SECONDS+D)" >&2; continue; }
        local stopped=false resumed=false state _
        begin_ms=$(now_ms)
        kill -STOP "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
          [[ $(proc_state "$pid") == T ]] && { stopped=true; break; }
          sleep 0.1
        done
        echo "[faults] $(date +%T) SIGSTOP $role (pid $pid) at ${fault_at}s for ${duration}s: stopped=$stopped" >&2
        sleep "$duration"
        # Still stopped at the end (nothing resumed it early)?
        state=$(proc_state "$pid")
        [[ $state == T ]] || stopped=false
        kill -CONT "$pid" 2>/dev/null
        end_ms=$(now_ms)
        for _ in $(seq 1 50); do
          state=$(proc_state "$pid")
          [[ -n $state && $state != T ]] && { resumed=true; break; }
          sleep 0.1
        done
        # Ready again (its ops listener answers once the process runs).
        ready_s=-1
        local ops=${role_ops[$role]:-}
        if [[ -n $ops ]]; then
          for _ in $(seq 1 600); do
            if curl -fsS -o /dev/null "$ops/readyz" 2>/dev/null; then ready_s=$(seconds_since "$end_ms"); break; fi
            sleep 0.1
          done
        fi
        [[ $stopped == true && $resumed == true ]] && applied=true
        echo "[faults] $(date +%T) SIGCONT $role (pid $pid): running=$resumed, ready after ${ready_s}s" >&2
        rows+=("{\"fault\":\"$item\",\"kind\":\"sigstop\",\"role\":\"$role\",\"at_s\":$fault_at,\"begin_unix_ms\":$begin_ms,\"end_unix_ms\":$end_ms,\"pid\":$pid,\"stopped_s\":$duration,\"stopped_seen\":$stopped,\"resumed_seen\":$resumed,\"applied\":$applied,\"ready_after_s\":$ready_s}")
        ;;
      *) echo "run.sh: unknown fault $item" >&2 ;;
    esac
  done
  local IFS=,
  printf '[%s]\n' "${rows[*]}" >"$out"
}

# `--process NAME=PID` for every running chatpipe process (its CPU is read).
process_args() {
  local i
  for i in "${!stack_pids[@]}"; do printf -- '--process\n%s=%s\n' "${stack_names[$i]}" "${stack_pids[$i]}"; done
}

start_chatpipe() { # tag
  if [[ $MODE == all ]]; then
    start_role chatpipe "chatpipe-all-$1" all
    chatpipe_pid=${stack_pids[0]}
    edge_pids=("$chatpipe_pid")
    wait_http "$EDGE_OPS/readyz" 180 && wait_http "$API_OPS/healthz" 60
    return
  fi
  local tag; tag="bench-$1-$(date +%s)"
  export CHATPIPE_TOPIC_PREFIX="$tag." CHATPIPE_INDEX_PREFIX="$tag-messages"
  "$BIN/chatpipe" topology apply >"$RESULTS/logs/topology-$1.log" 2>&1 || return 1
  local edges k name listen ops push ws_urls=() metrics_urls=()
  edges=$(edges_for "$1")
  role_ops=()
  for ((k = 1; k <= edges; k++)); do
    if ((edges == 1)); then
      name=edge
      start_role edge "edge-$1" edge --edge-id "$tag-edge" --worker-id 901 \
        --listen "$EDGE_LISTEN" --ops-listen "$EDGE_OPS_LISTEN" --push-listen "$EDGE_PUSH_LISTEN"
      listen=$EDGE_LISTEN ops=$EDGE_OPS_LISTEN
    else
      name=edge-$k
      listen=$EDGE_LISTEN ops=$EDGE_OPS_LISTEN push=$EDGE_PUSH_LISTEN
      if ((k > 1)); then listen=$(edge_listen $k) ops=$(edge_ops_listen $k) push=$(edge_push_listen $k); fi
      start_role "$name" "$name-$1" edge --edge-id "$tag-edge-$k" --worker-id $((900 + k)) \
        --listen "$listen" --ops-listen "$ops" --push-listen "$push"
    fi
    edge_names+=("$name")
    edge_pids+=("${stack_pids[-1]}")
    role_ops[$name]=http://$ops
    ws_urls+=("ws://$listen/ws")
    metrics_urls+=("http://$ops/metrics")
  done
  chatpipe_pid=${edge_pids[0]}
  # Several edges: the load generator gets every one (one edge: the
  # single-URL variables above, as before).
  if ((edges > 1)); then
    export CHATPIPE_LOADGEN_WS_URLS="${ws_urls[*]}" CHATPIPE_LOADGEN_EDGE_METRICS_URLS="${metrics_urls[*]}"
  else
    export CHATPIPE_LOADGEN_WS_URLS="" CHATPIPE_LOADGEN_EDGE_METRICS_URLS=""
  fi
  start_role fanout "fanout-$1" fanout --ops-listen "$FANOUT_OPS_LISTEN" --group "$tag-fanout"
  start_role persist "persist-$1" persist --ops-listen "$PERSIST_OPS_LISTEN" --group "$tag-persist"
  start_role index "index-$1" index --ops-listen "$INDEX_OPS_LISTEN" --group "$tag-index"
  start_role api "api-$1" api --api-listen "$API_LISTEN" --api-ops-listen "$API_OPS_LISTEN"
  role_ops+=([fanout]=$FANOUT_OPS [persist]=$PERSIST_OPS [index]=$INDEX_OPS [api]=$API_OPS)
  for name in "${edge_names[@]}"; do wait_http "${role_ops[$name]}/readyz" 180 || return 1; done
  wait_http "$API_OPS/healthz" 60 \
    && wait_http "$FANOUT_OPS/readyz" 120 && wait_http "$PERSIST_OPS/readyz" 120 \
    && wait_http "$INDEX_OPS/readyz" 120
}

build() {
  # Built separately: together, feature unification would rebuild both.
  if [[ -z ${CHATPIPE_BENCH_BIN_DIR:-} ]]; then
    cargo build "${CARGO_PROFILE[@]}" -p chatpipe && cargo build "${CARGO_PROFILE[@]}" -p chatpipe-benches --bins || return 1
  fi
  # No built-in token secret: the roles and the load generator read the same
  # one (CHATPIPE_TOKEN_SECRET, else $CHATPIPE_HOME/token-secret, created here
  # once like topology/run.sh does).
  if [[ -z ${CHATPIPE_TOKEN_SECRET:-} ]]; then "$BIN/chatpipe" secret init >/dev/null || return 1; fi
}

engines() {
  if [[ $ENGINES_MODE == reuse ]]; then
    topology/engines.sh status
  else
    topology/engines.sh up
  fi
}

idle_cpu() {
  rm -f "$RESULTS/idle-cpu.json"
  "$BIN/chatpipe-loadgen" idle-cpu --seconds "$IDLE_S" --label "engines alone" --out "$RESULTS/idle-cpu.json" || return 1
  start_chatpipe idle-cpu || { stop_chatpipe; return 1; }
  # Let the consumers join their groups and start-up work settle first.
  sleep 5
  local processes; mapfile -t processes < <(process_args)
  "$BIN/chatpipe-loadgen" idle-cpu --seconds "$IDLE_S" --label "stack, no client" \
    --out "$RESULTS/idle-cpu.json" "${processes[@]}"
  local rc=$?
  stop_chatpipe
  return $rc
}

scenario() { # name
  start_chatpipe "$1" || { stop_chatpipe; return 1; }
  local processes; mapfile -t processes < <(process_args)
  local faults_job=""
  if [[ -n ${CHATPIPE_BENCH_FAULTS:-} && $MODE == roles ]]; then
    rm -f "$RESTARTED_PIDS"
    apply_faults "$1" &
    faults_job=$!
  fi
  local edge_pid_args=() pid
  for pid in "${edge_pids[@]}"; do edge_pid_args+=(--edge-pid "$pid"); done
  "$BIN/chatpipe-loadgen" --scenario "benches/scenarios/$1.toml" "${edge_pid_args[@]}" \
    --out-dir "$RESULTS" "${processes[@]}" "${centrifugo_flag[@]}" "${QUICK_LOADGEN[@]}" "${EXTRA_LOADGEN[@]}" \
    2>&1 | tee "$RESULTS/logs/$1.log"
  local rc=${PIPESTATUS[0]}
  # The schedule's times lie inside the run; its record is complete here.
  if [[ -n $faults_job ]]; then wait "$faults_job" || rc=1; fi
  stop_chatpipe
  return "$rc"
}

role_example() { # crate example output-name
  # The example prints one JSON object on stdout and prose on stderr.
  CHATPIPE_BENCH_RECORDS="${EXAMPLE_RECORDS:-${CHATPIPE_BENCH_RECORDS:-}}" \
    cargo run "${CARGO_PROFILE[@]}" -q -p "$1" --example "$2" \
    >"$RESULTS/$3.json" 2> >(tee "$RESULTS/logs/$3.log" >&2)
}

# Steps whose output is also shown (`timed` must not run in a pipeline: its
# record of the step would stay in the pipeline's subshell).
kafka_bench() {
  "$BIN/kafka-produce-bench" --out-dir "$RESULTS" "${KAFKA_ARGS[@]}" 2>&1 | tee "$RESULTS/logs/kafka-produce.log"
  return "${PIPESTATUS[0]}"
}
criterion_bench() {
  cargo bench -p chatpipe-benches --bench hot_paths 2>&1 | tee "$RESULTS/logs/criterion.log" | grep -E "^[a-zA-Z].*time:|time:"
  return "${PIPESTATUS[0]}"
}

log "build ($PROFILE)"
timed build build || exit 1

centrifugo_flag=()
if [[ -n $QUICK ]]; then centrifugo_flag=(--only-baseline bare); fi
if ! skipped centrifugo; then
  log "Centrifugo (Go module proxy)"
  timed centrifugo benches/centrifugo.sh build || { echo "run.sh: Centrifugo did not build; its baselines are skipped"; centrifugo_flag=(--only-baseline bare); }
else
  centrifugo_flag=(--only-baseline bare)
fi

log "engines ($ENGINES_MODE)"
timed engines engines || exit 1

if ! skipped idle-cpu; then
  log "idle CPU (no client), ${IDLE_S} s per window"
  timed idle-cpu idle_cpu || status=1
fi

for name in $SCENARIOS; do
  log "scenario $name"
  timed "scenario $name" scenario "$name" || status=1
done

if ! skipped kafka; then
  log "Kafka produce path vs kafka-producer-perf-test"
  timed kafka kafka_bench || status=1
fi
if ! skipped persist; then
  log "persist role vs plain concurrent INSERTs"
  timed persist role_example chatpipe-persist persist_throughput persist || status=1
fi
if ! skipped index; then
  log "index role vs raw _bulk"
  timed index role_example chatpipe-index index_throughput index || status=1
fi
if ! skipped criterion; then
  log "criterion micro-benchmarks"
  timed criterion criterion_bench || status=1
fi

# The long fuzzing passes (issue 14): the property tests with many cases
# (QUICK: 2,000 per property) and the HTTP API against its OpenAPI document
# (QUICK: 10 examples per operation and phase), each on its own isolated
# deployment and ports (benches/fuzz.sh, benches/fuzz-api.sh).
if ! skipped fuzz; then
  log "fuzzing: property tests"
  FUZZ_CASES="${FUZZ_CASES:-${QUICK:+2000}}" CHATPIPE_BENCH_RESULTS="$RESULTS" \
    timed fuzz benches/fuzz.sh || status=1
fi
if ! skipped fuzz-api; then
  log "fuzzing: HTTP API (schemathesis)"
  FUZZ_API_EXAMPLES="${FUZZ_API_EXAMPLES:-${QUICK:+10}}" CHATPIPE_BENCH_RESULTS="$RESULTS" \
    CHATPIPE_BIN="$BIN/chatpipe" timed fuzz-api benches/fuzz-api.sh || status=1
fi

write_timings
if ! skipped report; then
  log "report"
  "$BIN/bench-report" --results-dir "$RESULTS" --output "$REPORT" \
    --criterion-dir "$CARGO_TARGET_DIR/criterion" --notes benches/NOTES.md || status=1
fi
exit $status
