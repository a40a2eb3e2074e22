#!/usr/bin/env bash
# Centrifugo, the baseline WebSocket server, built from the Go module proxy
# into a cache directory (never into the repository).
#
#   benches/centrifugo.sh build              # go install; prints the binary path
#   benches/centrifugo.sh run [PORT] [KEY]   # exec centrifugo on 127.0.0.1:PORT
#
# The config allows anonymous connections and subscriptions to any channel
# without a namespace (the load generator uses `bench`), and the HTTP API
# (`POST /api/publish`, `/api/broadcast`) with the key KEY. Logs at warn.
set -euo pipefail

CACHE="${CHATPIPE_HOME:-$HOME/.cache/chatpipe}/centrifugo"
GOPATH_DIR="$CACHE/gopath"
BIN="$GOPATH_DIR/bin/centrifugo"
VERSIONS=("${CENTRIFUGO_VERSION:-latest}" v6.5.1 v6.3.1 v6.1.0 v6.0.0)

build() {
  if [[ -x "$BIN" ]]; then echo "$BIN"; return 0; fi
  command -v go >/dev/null || { echo "centrifugo.sh: Go is required (https://go.dev/dl)" >&2; exit 1; }
  mkdir -p "$GOPATH_DIR"
  for version in "${VERSIONS[@]}"; do
    echo "centrifugo.sh: go install github.com/centrifugal/centrifugo/v6@$version" >&2
    if GOPATH="$GOPATH_DIR" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0 \
       go install "github.com/centrifugal/centrifugo/v6@$version" >&2; then
      echo "$BIN"; return 0
    fi
  done
  echo "centrifugo.sh: no version built" >&2
  exit 1
}

run() {
  local port="${1:-8390}" key="${2:-bench-api-key}"
  local bin; bin="$(build)"
  local config="$CACHE/config-$port.json"
  cat >"$config" <<JSON
{
  "log": { "level": "warn" },
  "http_server": { "address": "127.0.0.1", "port": "$port" },
  "client": {
    "allowed_origins": ["*"],
    "allow_anonymous_connect_without_token": true
  },
  "channel": {
    "without_namespace": {
      "allow_subscribe_for_client": true,
      "allow_subscribe_for_anonymous": true
    }
  },
  "http_api": { "key": "$key" }
}
JSON
  exec "$bin" --config "$config"
}

case "${1:-build}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run [PORT] [API_KEY]" >&2; exit 2 ;;
esac
