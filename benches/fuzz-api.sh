#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis
# (issue 14). The result must be no 5xx and no response outside the
# documented statuses, headers, content types and schemas.
#
#   benches/fuzz-api.sh                   # 100 examples per operation and phase
#   FUZZ_API_EXAMPLES=1000 benches/fuzz-api.sh
#
# 1. installs schemathesis (pinned, from PyPI) and websockets into a venv
#    under $CHATPIPE_HOME (default ~/.cache/chatpipe), once;
# 2. starts an isolated deployment on the shared engines, each role its own
#    process on ports FUZZ_API_PORT_BASE.. (default 18400: edge 18400, edge
#    ops 18401, edge push 18402, API 18410, ops of fan-out 18411, persist
#    18412, index 18413, API 18414), with its own topic prefix, index
#    prefix, consumer groups, keyspace (`chatpipe_fuzz_api`) and a random
#    token secret; the binary is copied first, so a concurrent build cannot
#    replace it mid-run;
# 3. seeds a conversation of two users with messages sent over the
#    WebSocket (so that history and search answer real messages, not only
#    empty pages) and waits until history and search hold them;
# 4. run 1, every operation: `st run` on the served /openapi.json with the
#    first user's bearer token, every phase (examples, coverage, fuzzing,
#    stateful), positive and negative data;
# 5. run 2, the seeded conversation: listMessages with `id` fixed to it and
#    searchMessages with `q` fixed to a seeded word, everything else fuzzed,
#    so that real `Message` and `SearchHit` objects meet the schemas;
# 6. writes results/fuzz-api.json (operations, test cases, failures per run,
#    duration) for bench-report, and stops everything it started.
#
# Checks: not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance,
# response_schema_conformance. Requests are limited to 40/s: the API's
# per-user limit is 50/s (a 429 would be documented, but it tests nothing).
#
# Environment:
#   FUZZ_API_EXAMPLES        max examples per operation and phase (default 100)
#   FUZZ_API_SEED            schemathesis seed (default: random, printed)
#   FUZZ_API_PORT_BASE       first port (default 18400)
#   CHATPIPE_BIN             the chatpipe binary (default $CARGO_TARGET_DIR/debug/chatpipe)
#   CHATPIPE_BENCH_RESULTS   results directory (default benches/results)
#   CHATPIPE_HOME            where the venv lives (default ~/.cache/chatpipe)
#
# Exit status: non-zero when schemathesis found a failure (see
# results/logs/fuzz-api-*.log) or a step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SCHEMATHESIS_VERSION=4.32.5
WEBSOCKETS_VERSION=17.4
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}"
CHATPIPE_HOME="${CHATPIPE_HOME:-$HOME/.cache/chatpipe}"
VENV="$CHATPIPE_HOME/schemathesis-$SCHEMATHESIS_VERSION"
RESULTS="${CHATPIPE_BENCH_RESULTS:-benches/results}"
EXAMPLES="${FUZZ_API_EXAMPLES:-100}"
SEED="${FUZZ_API_SEED:-$RANDOM$RANDOM}"
PORT_BASE="${FUZZ_API_PORT_BASE:-18400}"
SOURCE_BIN="${CHATPIPE_BIN:-$CARGO_TARGET_DIR/debug/chatpipe}"
mkdir -p "$RESULTS/logs"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatpipe-fuzz-api.XXXXXX")
started=$SECONDS

say() { printf '[fuzz-api] %s\n' "$*" >&2; }

# ---- 1. schemathesis, pinned, in its own venv.
if [[ ! -x $VENV/bin/st ]] || ! "$VENV/bin/python" -c "import websockets" 2>/dev/null; then
  say "installing schemathesis $SCHEMATHESIS_VERSION and websockets $WEBSOCKETS_VERSION into $VENV"
  python3 -m venv "$VENV" \
    && "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" "websockets==$WEBSOCKETS_VERSION" \
    || { say "pip install failed"; exit 1; }
fi
"$VENV/bin/st" --version >&2

# ---- 2. an isolated deployment.
[[ -x $SOURCE_BIN ]] || { say "no chatpipe binary at $SOURCE_BIN (cargo build -p chatpipe)"; exit 1; }
cp "$SOURCE_BIN" "$WORK/chatpipe"
BIN="$WORK/chatpipe"
TAG="fuzz-api-$(date +%s)"
export CHATPIPE_TOKEN_SECRET
CHATPIPE_TOKEN_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export CHATPIPE_TOPIC_PREFIX="$TAG." CHATPIPE_INDEX_PREFIX="$TAG-messages"
export CHATPIPE_CASSANDRA_KEYSPACE=chatpipe_fuzz_api
EDGE_LISTEN=127.0.0.1:$PORT_BASE
EDGE_OPS=127.0.0.1:$((PORT_BASE + 1))
EDGE_PUSH=127.0.0.1:$((PORT_BASE + 2))
API_LISTEN=127.0.0.1:$((PORT_BASE + 10))
API=http://$API_LISTEN

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  rm -rf "$WORK"
}
trap stop_all EXIT

start_role() { # log-name args...
  local name=$1
  shift
  "$BIN" "$@" >"$RESULTS/logs/fuzz-api-$name.log" 2>&1 &
  pids+=($!)
}

wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then say "$1 not ready after $2 s (logs in $RESULTS/logs)"; return 1; fi
    sleep 1
  done
}

say "deployment $TAG: API $API, edge ws://$EDGE_LISTEN/ws"
"$BIN" topology apply >"$RESULTS/logs/fuzz-api-topology.log" 2>&1 || { say "topology apply failed"; exit 1; }
start_role api api --api-listen "$API_LISTEN" --api-ops-listen "127.0.0.1:$((PORT_BASE + 14))"
start_role edge edge --edge-id "$TAG-edge" --worker-id 902 --listen "$EDGE_LISTEN" \
  --ops-listen "$EDGE_OPS" --push-listen "$EDGE_PUSH"
start_role fanout fanout --ops-listen "127.0.0.1:$((PORT_BASE + 11))" --group "$TAG-fanout"
start_role persist persist --ops-listen "127.0.0.1:$((PORT_BASE + 12))" --group "$TAG-persist"
start_role index index --ops-listen "127.0.0.1:$((PORT_BASE + 13))" --group "$TAG-index"
wait_http "http://127.0.0.1:$((PORT_BASE + 14))/healthz" 120 \
  && wait_http "http://$EDGE_OPS/readyz" 120 \
  && wait_http "http://127.0.0.1:$((PORT_BASE + 12))/readyz" 120 \
  && wait_http "http://127.0.0.1:$((PORT_BASE + 13))/readyz" 120 || exit 1

# Users of this run only: the keyspace is kept between runs, and a 1:1
# conversation's id follows from its two users.
ALICE=alice-$TAG BOB=bob-$TAG
ALICE_TOKEN=$("$BIN" token --user "$ALICE") || exit 1
BOB_TOKEN=$("$BIN" token --user "$BOB") || exit 1

# ---- 3. seed: one 1:1 conversation with messages, live in history and search.
seed_started=$SECONDS
CONVERSATION=$(ALICE_TOKEN=$ALICE_TOKEN BOB_TOKEN=$BOB_TOKEN BOB=$BOB API=$API WS=ws://$EDGE_LISTEN/ws \
  "$VENV/bin/python" - <<'PY'
import asyncio, json, os, sys, time, urllib.request

api, ws_url = os.environ["API"], os.environ["WS"]
alice, bob = os.environ["ALICE_TOKEN"], os.environ["BOB_TOKEN"]

def call(method, path, token, body=None):
    request = urllib.request.Request(
        api + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")

conversation = call("POST", "/v1/conversations", alice, {"members": [os.environ["BOB"]]})["conversation_id"]
bodies = [
    "fuzzword plain text", "fuzzword <b>markup</b> & \"quotes\"", "fuzzword émoji 👋 and 東京",
    "fuzzword line one\nline two", "  fuzzword padded  ",
] * 6

async def send(token, prefix, texts):
    import websockets
    async with websockets.connect(ws_url, additional_headers={"Authorization": "Bearer " + token}) as socket:
        json.loads(await socket.recv())  # hello
        for number, text in enumerate(texts):
            await socket.send(json.dumps({"op": "send", "conversation_id": conversation,
                                          "client_msg_id": f"{prefix}-{number}", "body": text}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
                if frame.get("op") == "ack":
                    break
                if frame.get("op") == "error":
                    sys.exit(f"send refused: {frame}")

asyncio.run(send(alice, "a", bodies[::2]))
asyncio.run(send(bob, "b", bodies[1::2]))
deadline = time.time() + 60
while time.time() < deadline:
    history = call("GET", f"/v1/conversations/{conversation}/messages?limit=200", alice)
    hits = call("GET", "/v1/search?q=fuzzword&limit=100", alice)
    if len(history["messages"]) == len(bodies) and len(hits["hits"]) == len(bodies):
        print(conversation)
        sys.exit(0)
    time.sleep(1)
sys.exit(f"history has {len(history['messages'])}, search {len(hits['hits'])} of {len(bodies)} messages")
PY
) || { say "seeding failed"; exit 1; }
say "seeded conversation $CONVERSATION with 30 messages in $((SECONDS - seed_started)) s"

# ---- 4./5. schemathesis.
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
cat >"$WORK/seeded.toml" <<EOF
[[operations]]
include-operation-id = "listMessages"
parameters = { id = "$CONVERSATION" }

[[operations]]
include-operation-id = "searchMessages"
parameters = { q = "fuzzword" }
EOF

status=0
runs=()
run_schemathesis() { # name extra-args...
  local name=$1 run_started=$SECONDS rc
  shift
  say "schemathesis run '$name' (seed $SEED, $EXAMPLES examples per operation and phase)"
  (cd "$WORK" && "$VENV/bin/st" "$@" run "$API/openapi.json" --url "$API" \
    -H "Authorization: Bearer $ALICE_TOKEN" --checks "$CHECKS" --mode all \
    --max-examples "$EXAMPLES" --seed "$SEED" --rate-limit 40/s --workers 1 \
    --request-timeout 20 --report json --report-json-path "$WORK/$name.json" \
    --output-sanitize true --no-color ${RUN_FILTER:-}) >"$RESULTS/logs/fuzz-api-$name.log" 2>&1
  rc=$?
  tail -n 25 "$RESULTS/logs/fuzz-api-$name.log" >&2
  "$VENV/bin/python" - "$WORK/$name.json" "$RESULTS/logs/fuzz-api-$name.log" "$name" "$rc" "$((SECONDS - run_started))" \
    >"$WORK/$name.summary.json" <<'PY'
import json, sys
report_path, log_path, name, rc, seconds = sys.argv[1:]
summary = {"name": name, "status": int(rc), "seconds": int(seconds)}
try:
    report = json.load(open(report_path))
except (OSError, ValueError):
    report = {}
operations = report.get("operations") or {}
cases = report.get("test_cases") or {}
summary.update({
    "operations_tested": operations.get("tested"),
    "test_cases": cases.get("generated"),
    "unique_failures": cases.get("unique_failures"),
    "errored": cases.get("errored"),
    "failures": [f"{group['title']} ({', '.join(group['operations'])})" for group in report.get("failures", [])],
    "errors": [group["title"] for group in report.get("errors", [])],
    "phases": {phase: value["status"] for phase, value in (report.get("phases") or {}).items()},
})
print(json.dumps(summary))
PY
  runs+=("$(cat "$WORK/$name.summary.json")")
  ((rc == 0)) || status=1
}

RUN_FILTER="" run_schemathesis all-operations
RUN_FILTER="--include-operation-id listMessages --include-operation-id searchMessages" \
  run_schemathesis seeded-conversation --config-file "$WORK/seeded.toml"

IFS=,
printf '{"schemathesis":"%s","seed":%s,"max_examples":%s,"checks":"%s","seconds":%d,"runs":[%s],"finished_unix_s":%d}\n' \
  "$SCHEMATHESIS_VERSION" "$SEED" "$EXAMPLES" "$CHECKS" $((SECONDS - started)) "${runs[*]}" "$(date +%s)" \
  >"$RESULTS/fuzz-api.json"
unset IFS
say "done in $((SECONDS - started)) s: $RESULTS/fuzz-api.json"
cd "$ROOT" || exit 1
exit $status
