#!/usr/bin/env bash
# clients/web/scripts/ensure-chromium.sh — makes sure Debian's Chromium is
# installed for the browser test (idempotent: does nothing when it is).
# Prints the browser's path. The test drives it with playwright-core
# (no browser download of its own).
set -euo pipefail
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
# The browser, a text font, and an emoji font (reactions render as emoji;
# without it they show as empty boxes in the screenshot).
PACKAGES=(fonts-dejavu-core fonts-noto-color-emoji)
[[ -x $CHROMIUM ]] || PACKAGES+=(chromium)
MISSING=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || MISSING+=("$package")
done
if ((${#MISSING[@]} > 0)); then
  if ! command -v apt-get >/dev/null; then
    if [[ ! -x $CHROMIUM ]]; then
      echo "ensure-chromium: $CHROMIUM is missing and there is no apt-get: install Chromium and set CHROMIUM_PATH" >&2
      exit 1
    fi
    echo "ensure-chromium: no apt-get to install ${MISSING[*]}; going on without" >&2
  else
    SUDO=()
    ((EUID == 0)) || SUDO=(sudo)
    echo "ensure-chromium: installing ${MISSING[*]} (apt-get)" >&2
    if ! { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${MISSING[@]}"; } >&2; then
      # Only the browser is indispensable; fonts only change the looks.
      [[ -x $CHROMIUM ]] || exit 1
      echo "ensure-chromium: could not install ${MISSING[*]}; going on without" >&2
    fi
  fi
fi
"$CHROMIUM" --version >&2
echo "$CHROMIUM"
