#!/usr/bin/env bash
# benches/faults.sh — the fault runner (issue 14): a steady chat load
# (benches/scenarios/faults.toml: 3,000 clients, 300 msg/s for 90 s, each
# role in its own process, two edges: CHATPIPE_BENCH_EDGES, default 2 for
# this scenario) with one fault schedule per run, then the load
# generator's full verification: every acked message delivered (live or by
# catch-up), every recipient's live order in message-id order, history
# exactly once and in the order recipients saw live, and a search sample.
# Each conversation's members are spread over both edges; a client whose
# edge dies, drains or stops answering resumes on the other one (or
# catches up from history when the resume is refused).
#
# Usage: benches/faults.sh [NAME...]     (default: every schedule below but
#        the engines' faults kafka, cassandra and opensearch, which restart
#        or kill -9 an engine: name them, on engines nothing else uses)
# A run not repeated keeps its earlier row (with its date) in the summary.
#   FAULT_RUNS_DIR   where each run's results go (default benches/results/faults)
#   the other variables of benches/run.sh (CHATPIPE_BENCH_PROFILE,
#   CHATPIPE_BENCH_ENGINES, CHATPIPE_BENCH_EDGES, CHATPIPE_BENCH_PORT_BASE,
#   CHATPIPE_BENCH_LOADGEN_ARGS for a smaller load) pass through.
# Every run is `benches/run.sh` with CHATPIPE_BENCH_FAULTS set (its header
# lists the fault kinds: kill9, rolling, sigstop); a fault is applied for
# real (a killed or drained process is checked gone before its restart and
# the restarted role must report ready; a stopped edge is seen in state T,
# then running again). The summary goes to benches/results/faults.json
# (FAULTS_SUMMARY moves it), which bench-report renders in RESULTS.md: per
# run, messages acked, lost live, missing or duplicated in history or
# search, live orders out of message-id or history order, and the seconds
# until latency was back to normal after each fault.
# Exit status: non-zero when any run lost a message or a fault was not
# applied.
#
# The replicated engines' schedules (run only when named, on private
# engines started with topology/engines.sh under a CHATPIPE_HOME of their
# own and CHATPIPE_BENCH_ENGINES=reuse; the example at the end):
#   kafka3-leader    three-broker Kafka (CHATPIPE_KAFKA_NODES=3: RF 3, min
#                    ISR 2): at 45 s kill -9 of the broker leading the most
#                    messages of chat.messages (once it holds any), seen out
#                    of every ISR, restarted, back in every ISR; then (at 85 s,
#                    or once the first is back) the same of the busiest leader
#                    among the other brokers. Each row names the broker, the partitions
#                    and messages it led, the smallest ISR seen and how long
#                    leaving and rejoining the ISRs took.
#   cassandra3-node  three-node Cassandra (CHATPIPE_CASSANDRA_NODES=3, the
#                    keyspace at NetworkTopologyStrategy:datacenter1=3, reads
#                    and writes LOCAL_QUORUM): kill -9 of cassandra-2 at 40 s,
#                    checked gone, restarted, healthy again.
#   clock-skew       edge-2 runs the whole load with its wall clock 3 s ahead
#                    (libfaketime, installed with apt-get when missing and
#                    run as root); checked from the HTTP Date of its ops
#                    listener. Message ids come from the edges' clocks
#                    (issue 10), so the order columns are expected to show
#                    live order differing from id order across the edges.
# e.g. (ports away from the shared engines and the tests):
#   export CHATPIPE_HOME=/tmp/faults-home CHATPIPE_KAFKA_NODES=3 \
#     CHATPIPE_KAFKA_PORT=29092 CHATPIPE_KAFKA_CONTROLLER_PORT=29095 \
#     CHATPIPE_CASSANDRA_PORT=29042 CHATPIPE_CASSANDRA_STORAGE_PORT=27000 \
#     CHATPIPE_CASSANDRA_JMX_PORT=27199 CHATPIPE_OPENSEARCH_PORT=9270 \
#     CHATPIPE_OPENSEARCH_TRANSPORT_PORT=9370 \
#     CHATPIPE_KAFKA_BROKERS=127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094 \
#     CHATPIPE_CASSANDRA=127.0.0.1:29042 CHATPIPE_ELASTICSEARCH_URL=http://127.0.0.1:9270 \
#     CHATPIPE_BENCH_ENGINES=reuse CHATPIPE_BENCH_PORT_BASE=31000
#   topology/engines.sh up && benches/faults.sh kafka3-leader clock-skew
#   topology/engines.sh down --wipe
# (cassandra3-node: CHATPIPE_KAFKA_NODES=1, CHATPIPE_CASSANDRA_NODES=3,
# CHATPIPE_CASSANDRA_FIRST_ADDRESS=127.0.0.5, CHATPIPE_CASSANDRA=127.0.0.5:29042,
# 127.0.0.6:29042,127.0.0.7:29042 and
# CHATPIPE_CASSANDRA_REPLICATION=NetworkTopologyStrategy:datacenter1=3.)
set -uo pipefail
cd "$(dirname "$0")/.."

declare -A SCHEDULES=(
  [edge]="kill9:edge@40"
  [rolling]="rolling:edge@30"
  [sigstop]="sigstop:edge@30+20"
  [fanout]="kill9:fanout@40"
  [persist]="kill9:persist@40"
  [index]="kill9:index@40"
  [api]="kill9:api@40"
  [combined]="kill9:fanout@30 kill9:persist@45 kill9:index@60 kill9:edge@75 kill9:api@90"
  # The engines' faults: run only when named, on engines nothing else uses.
  [kafka]="kill9:kafka@40"
  [cassandra]="restart:cassandra@40"
  [opensearch]="restart:opensearch@40"
  # The replicated engines' (see the header).
  [kafka3-leader]="kill9:kafka-leader@45 kill9:kafka-leader@85"
  [cassandra3-node]="kill9:cassandra-2@40"
  [clock-skew]="skew:edge-2=+3"
)
ORDER=(edge rolling sigstop fanout persist index api combined)
ALL_RUNS=("${ORDER[@]}" kafka cassandra opensearch kafka3-leader cassandra3-node clock-skew)
if (($#)); then ORDER=("$@"); fi

# What a schedule needs of the engines and the box, checked before it runs.
prerequisites() { # name
  case $1 in
    kafka3-leader)
      ((${CHATPIPE_KAFKA_NODES:-1} >= 3)) || { echo "faults.sh: $1 needs the three-broker Kafka (CHATPIPE_KAFKA_NODES=3, see the header)" >&2; return 1; } ;;
    cassandra3-node)
      ((${CHATPIPE_CASSANDRA_NODES:-1} >= 3)) && [[ ${CHATPIPE_CASSANDRA_REPLICATION:-} == *=3* ]] \
        || { echo "faults.sh: $1 needs the three-node Cassandra and the keyspace at RF 3 (CHATPIPE_CASSANDRA_NODES=3, CHATPIPE_CASSANDRA_REPLICATION=NetworkTopologyStrategy:datacenter1=3)" >&2; return 1; } ;;
    clock-skew)
      if [[ -z ${CHATPIPE_BENCH_FAKETIME_LIB:-} ]] && ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1; then
        echo "faults.sh: installing libfaketime (apt-get install -y faketime)" >&2
        apt-get install -y -q faketime >/dev/null || { echo "faults.sh: $1 needs libfaketime" >&2; return 1; }
      fi ;;
  esac
}
RUNS_DIR="${FAULT_RUNS_DIR:-benches/results/faults}"
SUMMARY="${FAULTS_SUMMARY:-benches/results/faults.json}"
status=0

for name in "${ORDER[@]}"; do
  schedule=${SCHEDULES[$name]:-}
  [[ -n $schedule ]] || { echo "faults.sh: no schedule named $name" >&2; exit 2; }
  echo "=== fault run $name: $schedule ==="
  prerequisites "$name" || { status=1; continue; }
  dir="$RUNS_DIR/$name"
  rm -rf "$dir"
  CHATPIPE_BENCH_FAULTS="$schedule" CHATPIPE_BENCH_RESULTS="$dir" SCENARIOS=faults \
    SKIP="centrifugo criterion kafka persist index idle-cpu fuzz fuzz-api report" \
    benches/run.sh || status=1
done

# One row per run: what the load generator verified and what was applied.
ALL_RUNS_LIST="${ALL_RUNS[*]}" python3 - "$RUNS_DIR" "$SUMMARY" "${ORDER[@]}" <<'PY' || status=1
import json, os, sys, pathlib, statistics, time
runs_dir, summary, names = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
all_runs = os.environ["ALL_RUNS_LIST"].split()

def back_to_normal(timeline, faults):
    """Per fault (a rolling restart's edges as one): seconds from its
    beginning until send->deliver and send->ack p99 were within 2x (or
    +20 ms) of their level in the 20 s before the first fault, and acks/s
    at 80 % of it, for 5 s in a row, no earlier than the fault's end
    (restart ready, SIGCONT). None: not before the load ended."""
    if not faults or not timeline:
        return []
    groups = []
    for f in faults:
        if "begin_unix_ms" not in f:
            continue
        if groups and f.get("kind") == "rolling" and groups[-1]["fault"] == f["fault"]:
            groups[-1]["end"] = f["end_unix_ms"]
        else:
            groups.append({"fault": f["fault"], "begin": f["begin_unix_ms"], "end": f["end_unix_ms"]})
    if not groups:
        return []
    first = groups[0]["begin"]
    before = [s for s in timeline
              if first - 20_000 <= s["unix_ms"] < first and s["acks_per_s"] > 0]
    if not before:
        return [None for _ in groups]
    deliver = statistics.median(s["deliver_p99_ms"] for s in before)
    ack = statistics.median(s["ack_p99_ms"] for s in before)
    acks = statistics.median(s["acks_per_s"] for s in before)
    def normal(s):
        return (s["deliveries_per_s"] > 0
                and s["deliver_p99_ms"] <= max(2 * deliver, deliver + 20)
                and s["ack_p99_ms"] <= max(2 * ack, ack + 20)
                and s["acks_per_s"] >= 0.8 * acks)
    out = []
    for g in groups:
        found = None
        for i, s in enumerate(timeline):
            if s["unix_ms"] < g["end"]:
                continue
            window = timeline[i:i + 5]
            if len(window) == 5 and all(normal(w) for w in window):
                # A sample covers the second before its time stamp.
                found = round(max(0.0, (s["unix_ms"] - 1000 - g["begin"]) / 1000), 1)
                break
        out.append(found)
    return out

def engine_details(faults, timeline):
    """What an engine's fault or a clock skew did, beyond applied: the
    broker or node killed (and why: what it led), the ISR leaving and
    rejoining, acks/s while it was down; the skew asked and seen."""
    out = []
    for f in faults:
        if f.get("kind") == "skew":
            out.append({k: f.get(k) for k in ("fault", "role", "skew_s", "skew_seen_s", "faketime_mapped")})
            continue
        if not f["role"].startswith(("kafka", "cassandra", "opensearch")):
            continue
        d = {"fault": f["fault"], "killed": f["role"]}
        if "address" in f:
            d["address"] = f["address"]
        if "pick" in f:
            p = f["pick"]
            d["led"] = {k: p[k] for k in ("partitions_led", "partitions", "messages_led", "messages")}
        for key in ("isr_left", "isr_back"):
            w = f.get(key)
            if w:
                d[key] = {k: w.get(k) for k in ("reached", "after_s", "smallest_isr_seen",
                                                  "most_under_replicated_seen", "most_without_leader_seen")}
        during = [s["acks_per_s"] for s in timeline
                  if f.get("begin_unix_ms", 0) < s["unix_ms"] <= f.get("end_unix_ms", 0)]
        if during:
            d["acks_per_s_while_down"] = {"seconds": len(during), "min": round(min(during)),
                                          "median": round(statistics.median(during))}
        out.append(d)
    return out

rows, ok = [], True
for name in names:
    d = runs_dir / name
    try:
        target = json.loads((d / "faults.json").read_text())["targets"][0]
        applied = json.loads((d / "faults-faults.json").read_text())
    except (OSError, ValueError, KeyError, IndexError) as error:
        rows.append({"run": name, "error": f"no result: {error}"}); ok = False; continue
    v = target["verification"]; dl = v["deliveries"]
    counts = v.get("history_counts", {})
    totals = target.get("totals", {})
    phase = target["phases"][0] if target["phases"] else {}
    faults = sorted({f["fault"] for f in applied}, key=[f["fault"] for f in applied].index)
    row = {
        "run": name,
        "faults": faults,
        "all_applied": len(applied) > 0 and all(
            f.get("applied", f.get("died", False)) and f.get("ready_after_s", 0) >= 0 for f in applied),
        "ready_after_s": [f["ready_after_s"] for f in applied if "ready_after_s" in f],
        "engine_faults": engine_details(applied, target.get("timeline", [])),
        "acked": dl["acked_messages"],
        "delivered_live": dl["delivered_live"],
        "delivered_by_catch_up": dl["delivered_by_catch_up"],
        "lost_live": dl["missing_total"],
        "duplicate_acked_ids": len(dl["duplicate_acked_ids"]),
        "history_failures": len(v["history_failures"]),
        "history_missing": counts.get("missing", 0),
        "history_duplicated": counts.get("duplicated", 0),
        "id_order_violations": len(dl.get("id_order_violations", [])),
        "live_order_mismatches": counts.get("live_order_mismatches", 0),
        "live_not_in_history": counts.get("live_not_in_history", 0),
        "search_checked": v["search_checked"],
        "search_missing": len(v["search_missing"]),
        "search_duplicated": len(v.get("search_duplicated", [])),
        "deliver_p99_ms": phase.get("deliver_p99_ms_median"),
        "back_to_normal_s": back_to_normal(target.get("timeline", []), applied),
        "edges": target.get("edges", 1),
        "edge_switches": totals.get("edge_switches", 0),
        "stalls": totals.get("stalls", 0),
        "passed": v["passed"],
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    ok &= row["passed"] and row["all_applied"]
    rows.append(row)
# Runs not named this time keep their earlier row (with its date), so a
# partial rerun does not drop the others from RESULTS.md.
try:
    earlier = {r["run"]: r for r in json.loads(pathlib.Path(summary).read_text())["runs"]}
except (OSError, ValueError, KeyError, TypeError):
    earlier = {}
fresh = {r["run"]: r for r in rows}
merged = [fresh.get(n) or earlier[n] for n in all_runs if n in fresh or n in earlier]
merged += [r for r in rows if r["run"] not in all_runs]
pathlib.Path(summary).write_text(json.dumps({"runs": merged}, indent=1) + "\n")
print(json.dumps({"runs": rows}, indent=1))
sys.exit(0 if ok else 1)
PY
exit $status
