#!/usr/bin/env bash
# clients/ci.sh — the clients' checks and tests, run by topology/test.sh
# (step `clients`) after the Rust phases, against the running engines:
#
#   sdk-install        npm ci (clients/typescript, from package-lock.json)
#   sdk-check          generated types vs schemas/ (drift fails) + tsc
#   sdk-unit           unit tests, a scripted in-process edge (node:test)
#   web-install        npm ci (clients/web)
#   web-check          tsc over the web app
#   sdk-integration    the SDK against a real `chatpipe all` + a second edge
#                      process that a test kills (-9) mid-conversation
#   browser            Debian's chromium (installed if missing) on the web app
#                      served by `chatpipe all --dev --app-dir`
#   analytics-install  venv + pip install -r requirements.lock
#   analytics-test     pytest (the pure aggregation, then the real Kafka)
#
# Every step runs even if an earlier one failed (except those that need
# what failed); the exit status is 0 iff all passed. Caches: npm's under
# $CHATPIPE_HOME/npm, pip's under $CHATPIPE_HOME/pip, the venv in
# $CHATPIPE_HOME/venv-analytics; installs always run from the lockfiles, so
# a cache never hides a missing dependency.
#
# Environment: CHATPIPE_BIN (default $CARGO_TARGET_DIR/debug/chatpipe, built
# by `cargo test --workspace` or `cargo build -p chatpipe`),
# CHATPIPE_KAFKA_BROKERS, CHATPIPE_CLIENTS_COUNTS_FILE (where to write
# "PASSED FAILED" for topology/test.sh's totals).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${CHATPIPE_HOME:-$HOME/.cache/chatpipe}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME_DIR/target}
export CHATPIPE_BIN=${CHATPIPE_BIN:-$CARGO_TARGET_DIR/debug/chatpipe}
export npm_config_cache=$HOME_DIR/npm
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
VENV=$HOME_DIR/venv-analytics
LOG=$(mktemp -d "${TMPDIR:-/tmp}/chatpipe-clients.XXXXXX")

declare -a SUMMARY=()
declare -A RC=()
PASSED=0
FAILED=0

# step NAME CMD...: runs CMD, shows its output, records ok/FAILED and time.
step() {
  local name=$1 t0=$SECONDS rc
  shift
  printf '\n[clients] ===== %s: %s\n' "$name" "$*"
  "$@" 2>&1 | tee "$LOG/$name.log"
  rc=${PIPESTATUS[0]}
  RC[$name]=$rc
  SUMMARY+=("$(printf '  %-18s %-14s %5ss' "$name" "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")" $((SECONDS - t0)))")
  count "$LOG/$name.log"
  return "$rc"
}

# Adds the test counts of a node:test (spec reporter) or pytest log.
count() {
  local passed failed
  read -r passed failed < <(awk '
    /^ℹ pass [0-9]+$/ { p += $3 } /^ℹ fail [0-9]+$/ { f += $3 }
    /(passed|failed).* in [0-9.]+s/ {
      for (i = 2; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i - 1); if ($(i) ~ /^failed/) f += $(i - 1) }
    }
    END { printf "%d %d\n", p, f }' "$1")
  PASSED=$((PASSED + passed))
  FAILED=$((FAILED + failed))
}

skipped() {
  SUMMARY+=("$(printf '  %-18s %-14s %5ss  (%s)' "$1" "NOT RUN" 0 "$2")")
  RC[$1]=1
}

cd "$REPO/clients/typescript" || exit 1
if step sdk-install npm ci --prefer-offline --no-audit --loglevel=error; then
  step sdk-check npm run check
  step sdk-unit npm test
else
  skipped sdk-check "npm ci failed"
  skipped sdk-unit "npm ci failed"
fi

cd "$REPO/clients/web" || exit 1
if step web-install npm ci --prefer-offline --no-audit --loglevel=error; then
  step web-check npm run check
else
  skipped web-check "npm ci failed"
fi

if [[ ! -x $CHATPIPE_BIN ]]; then
  skipped sdk-integration "no chatpipe binary at $CHATPIPE_BIN"
  skipped browser "no chatpipe binary at $CHATPIPE_BIN"
else
  cd "$REPO/clients/typescript" || exit 1
  if ((RC[sdk-install] == 0)); then step sdk-integration npm run test:integration; else skipped sdk-integration "npm ci failed"; fi
  cd "$REPO/clients/web" || exit 1
  if ((RC[sdk-install] == 0 && RC[web-install] == 0)); then step browser npm run test:browser; else skipped browser "npm ci failed"; fi
fi

cd "$REPO/clients/analytics" || exit 1
install_analytics() {
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --cache-dir "$HOME_DIR/pip" -r requirements.lock
}
if step analytics-install install_analytics; then
  step analytics-test "$VENV/bin/python" -m pytest -q
else
  skipped analytics-test "pip install failed"
fi

printf '\n[clients] summary (logs in %s):\n' "$LOG"
printf '%s\n' "${SUMMARY[@]}"
[[ -n ${CHATPIPE_CLIENTS_COUNTS_FILE:-} ]] && echo "$PASSED $FAILED" >"$CHATPIPE_CLIENTS_COUNTS_FILE"
status=0
for name in "${!RC[@]}"; do ((RC[$name] == 0)) || status=1; done
echo "clients: $PASSED passed, $FAILED failed"
exit "$status"
