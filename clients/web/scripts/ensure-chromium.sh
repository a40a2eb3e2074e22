#!/usr/bin/env bash
# clients/web/scripts/ensure-chromium.sh — makes sure Debian's Chromium is
# installed for the browser test (idempotent: does nothing when it is).
# Prints the browser's path. The test drives it with playwright-core
# (no browser download of its own).
set -euo pipefail
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM ]]; then
  if ! command -v apt-get >/dev/null; then
    echo "ensure-chromium: $CHROMIUM is missing and there is no apt-get: install Chromium and set CHROMIUM_PATH" >&2
    exit 1
  fi
  SUDO=()
  ((EUID == 0)) || SUDO=(sudo)
  echo "ensure-chromium: installing Debian's chromium (apt-get)" >&2
  "${SUDO[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi
"$CHROMIUM" --version >&2
echo "$CHROMIUM"
