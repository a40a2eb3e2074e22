#!/usr/bin/env bash
# topology/run.sh — Quickstart command 1: run the whole of chatpipe on this
# machine, in the foreground, until Ctrl+C.
#
#   1. checks the prerequisites (Java 17, Maven the first time, Rust, cc/make),
#   2. starts the engines (`topology/engines.sh up`: Kafka, Cassandra,
#      OpenSearch as local JVM processes; idempotent),
#   3. builds the `chatpipe` binary in release mode,
#   4. execs `chatpipe all`, which applies the topology (Kafka topics,
#      Cassandra schema, index template) and runs every role in one process.
#
# Usage: topology/run.sh [ARGS FOR `chatpipe all` ...]
#   e.g. topology/run.sh --edges 2
# Environment: CARGO_TARGET_DIR (default ~/.cache/chatpipe/target), the
# CHATPIPE_* variables of `chatpipe` (see `chatpipe all --help`) and of
# topology/engines.sh (CHATPIPE_HOME, ports, heaps).
#
# Ctrl+C stops chatpipe only; the engines keep running so the next start is
# fast. Stop them with `topology/engines.sh down`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=prereqs.sh
source "$REPO/topology/prereqs.sh"

check_prereqs

say "starting the engines (topology/engines.sh up) ..."
"$REPO/topology/engines.sh" up \
  || prereq_fail "the engines did not start (see above); inspect them with: topology/engines.sh status / logs NAME"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}
say "building chatpipe (release; the first build takes ~10 min on 2 cores) into $CARGO_TARGET_DIR ..."
(cd "$REPO" && cargo build --release -p chatpipe --bin chatpipe) \
  || prereq_fail "cargo build failed (see above)"
BIN=$CARGO_TARGET_DIR/release/chatpipe

cat >&2 <<EOF

[chatpipe] chatpipe is starting (all roles in one process):
[chatpipe]   WebSocket (first edge)  ws://127.0.0.1:8080/ws
[chatpipe]   HTTP API                http://127.0.0.1:8090   (OpenAPI: /openapi.json)
[chatpipe]   metrics and health      GET /metrics, /healthz, /readyz on each role's HTTP port (8080, 8090, ...)
[chatpipe]   engines                 Kafka 127.0.0.1:9092, Cassandra 127.0.0.1:9042, OpenSearch http://127.0.0.1:9200
[chatpipe] A bearer token for user alice (development secret unless CHATPIPE_TOKEN_SECRET is set):
[chatpipe]   $BIN token --user alice
[chatpipe] Ctrl+C stops chatpipe; the engines keep running. Stop them with: topology/engines.sh down

EOF

cd "$REPO"
exec "$BIN" all "$@"
