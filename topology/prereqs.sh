# topology/prereqs.sh — prerequisite checks shared by topology/run.sh and
# topology/test.sh (sourced, not run). Each check fails with a message that
# says how to install what is missing; nothing is installed behind the
# user's back.
#
# What the Quickstart needs on the machine:
#   * bash >= 4.4, coreutils `timeout`, util-linux `flock` and `setsid`
#   * Java 17 (Kafka 4.x needs >= 17, Cassandra 5.0 runs on 11 or 17 only)
#   * Maven, the first time only (fetches the engine jars; cached afterwards)
#   * Rust (cargo, rustc >= the workspace's rust-version) and a C toolchain
#     (cc, make): rdkafka builds its bundled librdkafka from source.
# shellcheck shell=bash

PREREQ_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREREQ_CHATPIPE_HOME=${CHATPIPE_HOME:-$HOME/.cache/chatpipe}

say() { printf '[chatpipe] %s\n' "$*" >&2; }
prereq_fail() {
  printf '[chatpipe] ERROR: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '[chatpipe]   %s\n' "$line" >&2; done
  exit 1
}

check_shell_tools() {
  if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    prereq_fail "bash >= 4.4 is required (this is bash $BASH_VERSION)" \
      "Debian/Ubuntu: apt-get install -y bash;  macOS: brew install bash"
  fi
  local tool
  for tool in timeout flock setsid sha256sum; do
    command -v "$tool" >/dev/null 2>&1 \
      || prereq_fail "'$tool' not found" "Debian/Ubuntu: apt-get install -y coreutils util-linux"
  done
}

# The same search as engines.sh: CHATPIPE_JAVA, else $JAVA_HOME/bin/java,
# `java` on PATH, /usr/lib/jvm/java-17-*/bin/java; the first Java 17 wins.
check_java() {
  local hint="Debian/Ubuntu: apt-get install -y openjdk-17-jdk-headless (or point CHATPIPE_JAVA at a Java 17 binary)"
  local candidate major found=""
  for candidate in "${CHATPIPE_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" /usr/lib/jvm/java-17-*/bin/java; do
    [[ -n $candidate && -x $candidate ]] || continue
    major=$("$candidate" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }')
    if [[ $major == 17 ]]; then return 0; fi
    found="$candidate (Java $major)"
    # An explicit CHATPIPE_JAVA is used as is by engines.sh: no fallback.
    [[ $candidate == "${CHATPIPE_JAVA:-}" ]] && prereq_fail "CHATPIPE_JAVA=$CHATPIPE_JAVA is Java $major; Java 17 is required" "$hint"
  done
  if [[ -n $found ]]; then
    prereq_fail "Java 17 is required to run Kafka 4.1 and Cassandra 5.0 (found only $found)" "$hint"
  fi
  prereq_fail "java not found: Java 17 is required to run Kafka 4.1 and Cassandra 5.0" "$hint"
}

# Maven is needed only while some engine's jars are not cached yet.
check_mvn() {
  command -v mvn >/dev/null 2>&1 && return 0
  local stamps
  stamps=$(find "$PREREQ_CHATPIPE_HOME/lib" -mindepth 2 -maxdepth 2 -name .stamp 2>/dev/null | wc -l)
  ((stamps >= 3)) && return 0
  prereq_fail "mvn not found: Maven fetches the engine jars from Maven Central the first time" \
    "Debian/Ubuntu: apt-get install -y maven   (the jars are then cached in $PREREQ_CHATPIPE_HOME/lib)"
}

# cargo, found even from a non-login shell (CI, cron): rustup installs put
# it in ~/.cargo/bin, which only ~/.cargo/env adds to PATH.
check_rust() {
  local hint="install Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\""
  if ! command -v cargo >/dev/null 2>&1; then
    local env_file=${CARGO_HOME:-$HOME/.cargo}/env
    # shellcheck disable=SC1090  # rustup's env file
    [[ -f $env_file ]] && . "$env_file"
  fi
  command -v cargo >/dev/null 2>&1 || prereq_fail "cargo not found (not on PATH, no ~/.cargo/env)" "$hint"
  command -v rustc >/dev/null 2>&1 || prereq_fail "rustc not found next to cargo" "$hint"

  local wanted have
  wanted=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$PREREQ_REPO/Cargo.toml" | head -n 1)
  have=$(rustc --version | awk '{ print $2 }')
  if [[ -n $wanted ]] && ! version_at_least "${have%%-*}" "$wanted"; then
    prereq_fail "rustc $have is too old: the workspace needs Rust >= $wanted" "rustup update stable"
  fi
  local tool
  for tool in cc make; do
    command -v "$tool" >/dev/null 2>&1 \
      || prereq_fail "'$tool' not found: a C toolchain is needed (rdkafka builds librdkafka from source)" \
        "Debian/Ubuntu: apt-get install -y build-essential"
  done
}

# version_at_least HAVE WANTED: dotted numeric versions.
version_at_least() {
  local have=$1 wanted=$2 i h w
  local -a hs ws
  IFS=. read -r -a hs <<<"$have"
  IFS=. read -r -a ws <<<"$wanted"
  for i in 0 1 2; do
    h=${hs[i]:-0} w=${ws[i]:-0}
    ((10#$h > 10#$w)) && return 0
    ((10#$h < 10#$w)) && return 1
  done
  return 0
}

# Engines take ~2.3 GiB of RSS (Cassandra 1.5, Kafka 0.35, OpenSearch 0.4).
warn_memory() {
  local available_mib
  available_mib=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo 2>/dev/null || echo "")
  if [[ -n $available_mib ]] && ((available_mib < 3072)); then
    say "warning: only ${available_mib} MiB of memory available; the engines alone need about 2.5 GiB"
  fi
}

check_prereqs() {
  check_shell_tools
  check_java
  check_mvn
  check_rust
  warn_memory
}
