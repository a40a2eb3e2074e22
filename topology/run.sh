#!/usr/bin/env bash
# topology/run.sh — Quickstart command 1: run the whole of chatpipe on this
# machine, in the foreground, until Ctrl+C.
#
#   1. checks the prerequisites (Java 17, Maven the first time, Rust, cc/make),
#   2. starts the engines (`topology/engines.sh up`: Kafka, Cassandra,
#      OpenSearch as local JVM processes; idempotent) in the background,
#   3. meanwhile builds the `chatpipe` binary in the dev profile, the one
#      `topology/test.sh` uses, so the test command reuses this build,
#   4. creates the token secret on first use (`chatpipe secret init`: a random
#      secret in $CHATPIPE_HOME/token-secret, mode 0600, kept afterwards;
#      skipped when CHATPIPE_TOKEN_SECRET is set, which overrides the file),
#   5. builds the web app (clients/web, when npm is installed; npm ci from
#      its lockfile, then esbuild) and serves it at http://127.0.0.1:8090/app/
#      with development sign-in (CHATPIPE_APP_DIR, CHATPIPE_DEV; set
#      CHATPIPE_DEV=false, or CHATPIPE_APP_DIR to your own build, to change
#      that; development sign-in needs the API on a loopback address),
#   6. execs `chatpipe all`, which applies the topology (Kafka topics,
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

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/chatpipe/target}
ENGINES_LOG=$(mktemp "${TMPDIR:-/tmp}/chatpipe-engines.XXXXXX")
trap 'rm -f "$ENGINES_LOG"' EXIT
# The engines start (JVMs, mostly waiting) while the binary builds.
say "starting the engines (topology/engines.sh up) in the background, output after the build ..."
"$REPO/topology/engines.sh" up </dev/null >"$ENGINES_LOG" 2>&1 &
ENGINES_PID=$!

# The dev profile, the one `topology/test.sh` builds and tests: the second
# Quickstart command reuses this build. (Dependencies are optimized in the
# dev profile; benches/run.sh builds release for the benchmark figures.)
say "building chatpipe (the first build takes ~10 min on 2 cores) into $CARGO_TARGET_DIR ..."
if ! (cd "$REPO" && cargo build -p chatpipe --bin chatpipe); then
  wait "$ENGINES_PID" || true
  prereq_fail "cargo build failed (see above)"
fi
say "waiting for the engines ..."
ENGINES_RC=0
wait "$ENGINES_PID" || ENGINES_RC=$?
cat "$ENGINES_LOG" >&2
rm -f "$ENGINES_LOG"
((ENGINES_RC == 0)) \
  || prereq_fail "the engines did not start (see above); inspect them with: topology/engines.sh status / logs NAME"
BIN=$CARGO_TARGET_DIR/debug/chatpipe

# There is no built-in token secret: make a random one the first time, keep
# it (mode 0600) under the chatpipe home, where every role and
# `chatpipe token` read it.
export CHATPIPE_HOME=${CHATPIPE_HOME:-$HOME/.cache/chatpipe}
if [[ -z ${CHATPIPE_TOKEN_SECRET:-} ]]; then
  SECRET_FILE=$("$BIN" secret init) || prereq_fail "could not create the token secret under $CHATPIPE_HOME"
  SECRET_NOTE="signed with the secret in $SECRET_FILE"
else
  SECRET_NOTE="signed with CHATPIPE_TOKEN_SECRET"
fi

# The web app, served by the API under /app/ with development sign-in.
APP_NOTE="not built (npm not found; see clients/web/README.md)"
if [[ -n ${CHATPIPE_APP_DIR:-} ]]; then
  APP_NOTE="http://127.0.0.1:8090/app/ (from $CHATPIPE_APP_DIR)"
elif command -v npm >/dev/null 2>&1; then
  say "building the web app (clients/web: npm ci, esbuild) ..."
  if (cd "$REPO/clients/web" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build); then
    export CHATPIPE_APP_DIR=$REPO/clients/web/dist
    export CHATPIPE_DEV=${CHATPIPE_DEV:-true}
    APP_NOTE="http://127.0.0.1:8090/app/   (sign in with any user name: development mode)"
  else
    APP_NOTE="did not build (see above); chatpipe runs without it"
  fi
fi

cat >&2 <<EOF

[chatpipe] chatpipe is starting (all roles in one process):
[chatpipe]   WebSocket (first edge)  ws://127.0.0.1:8080/ws
[chatpipe]   HTTP API                http://127.0.0.1:8090   (OpenAPI: /openapi.json)
[chatpipe]   web app                 $APP_NOTE
[chatpipe]   metrics and health      GET /metrics, /healthz, /readyz on each role's ops listener (loopback):
[chatpipe]                           edge-1 8081 (edge N: 8081+2(N-1)), fanout 8091, persist 8092, index 8093, api 8094
[chatpipe]   engines                 Kafka 127.0.0.1:9092, Cassandra 127.0.0.1:9042, OpenSearch http://127.0.0.1:9200
[chatpipe] A bearer token for user alice ($SECRET_NOTE):
[chatpipe]   $BIN token --user alice
[chatpipe] Ctrl+C stops chatpipe; the engines keep running. Stop them with: topology/engines.sh down

EOF

cd "$REPO"
exec "$BIN" all "$@"
