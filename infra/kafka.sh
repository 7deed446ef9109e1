#!/usr/bin/env bash
# Apache Kafka 4.3.1, KRaft, single combined broker+controller on 127.0.0.1.
# usage: infra/kafka.sh {install|start|stop|status|restart}
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=4.3.1 # also read by kafka-cluster.sh
# shellcheck source-path=SCRIPTDIR source=kafka-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/kafka-env.sh"
KAFKA_DATA="$INDEXIFY_DATA_DIR/kafka"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_PATTERN=kafka.Kafka

kafka_installed() {
  [[ -f $KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar && -f $KAFKA_LIB/kafka-server-$KAFKA_VERSION.jar ]] &&
    compgen -G "$KAFKA_LIB/log4j-slf4j2-impl-*.jar" >/dev/null
}

kafka_install() {
  kafka_installed && return 0
  ensure_dirs "$KAFKA_HOME"
  local ilog="$LOG_DIR/kafka-install.log"
  command -v java >/dev/null 2>&1 || apt_install "$ilog" openjdk-17-jre-headless
  command -v mvn >/dev/null 2>&1 || apt_install "$ilog" maven
  local t0=$EPOCHREALTIME tmp="$KAFKA_HOME/lib.tmp.$$"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB (log: $ilog)"
  rm -rf "$tmp"
  if ! mvn -B -q -f "$INFRA_DIR/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    "-DoutputDirectory=$tmp" -DincludeScope=runtime >>"$ilog" 2>&1; then
    rm -rf "$tmp"
    tail -n 20 "$ilog" >&2
    die "maven could not fetch the Kafka jars (log: $ilog)"
  fi
  rm -rf "$KAFKA_LIB"
  mv "$tmp" "$KAFKA_LIB"
  kafka_installed || die "Kafka jars incomplete in $KAFKA_LIB"
  log "kafka $KAFKA_VERSION installed ($(find "$KAFKA_LIB" -name '*.jar' | wc -l) jars, $(elapsed "$t0") s)"
}


kafka_configure() {
  ensure_dirs "$KAFKA_DATA/data"
  sed -e "s|@PORT@|$INDEXIFY_KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$INDEXIFY_KAFKA_CONTROLLER_PORT|g" \
    -e "s|@LOG_DIRS@|$KAFKA_DATA/data|g" \
    "$INFRA_DIR/kafka/server.properties.template" >"$KAFKA_DATA/server.properties"
  if [[ ! -s $KAFKA_DATA/cluster.id ]]; then
    new_cluster_id >"$KAFKA_DATA/cluster.id"
  fi
  if [[ ! -f $KAFKA_DATA/data/meta.properties ]]; then
    local cid
    cid=$(<"$KAFKA_DATA/cluster.id")
    log "formatting Kafka storage in $KAFKA_DATA/data (cluster id $cid)"
    kafka_java kafka.tools.StorageTool format --cluster-id="$cid" -c "$KAFKA_DATA/server.properties" \
      --ignore-formatted >>"$KAFKA_LOG" 2>&1 || fail_start kafka "$KAFKA_LOG" "kafka storage format failed"
  fi
}


kafka_wait_ready() {
  local deadline=$1 t0=$2
  wait_for_port kafka "$KAFKA_PATTERN" "$INDEXIFY_KAFKA_PORT" "$deadline" ||
    fail_start kafka "$KAFKA_LOG" "kafka did not open 127.0.0.1:$INDEXIFY_KAFKA_PORT"
  local left=$((deadline - SECONDS))
  ((left > 0)) || left=1
  if "$INDEXIFY_PYTHON" -c 'import aiokafka' >/dev/null 2>&1; then
    "$INDEXIFY_PYTHON" -c "$KAFKA_PROBE" "$HOST:$INDEXIFY_KAFKA_PORT" "$left" ||
      fail_start kafka "$KAFKA_LOG" "kafka did not answer an admin request within ${INDEXIFY_READY_TIMEOUT} s"
  else
    warn "$INDEXIFY_PYTHON has no aiokafka (run make setup); waiting for the broker's 'started' log line instead"
    # the started line must come after the last start marker written by start_daemon
    until awk '/^==== kafka start/ { s = 0 } /Kafka Server started/ { s = 1 } END { exit !s }' \
      "$KAFKA_LOG" 2>/dev/null; do
      is_running kafka "$KAFKA_PATTERN" || fail_start kafka "$KAFKA_LOG" "kafka exited"
      ((SECONDS < deadline)) || fail_start kafka "$KAFKA_LOG" "kafka not started within ${INDEXIFY_READY_TIMEOUT} s"
      sleep 0.2
    done
  fi
  check_owner kafka "$INDEXIFY_KAFKA_PORT"
  log "kafka ready on $HOST:$INDEXIFY_KAFKA_PORT (pid $(read_pid kafka), $(elapsed "$t0") s)"
}

kafka_start() {
  local t0=$EPOCHREALTIME deadline=$((SECONDS + INDEXIFY_READY_TIMEOUT))
  if is_running kafka "$KAFKA_PATTERN"; then
    kafka_wait_ready "$deadline" "$t0"
    return 0
  fi
  refuse_foreign_port kafka "$INDEXIFY_KAFKA_PORT"
  refuse_foreign_port kafka-controller "$INDEXIFY_KAFKA_CONTROLLER_PORT"
  ensure_dirs
  kafka_configure
  start_daemon kafka "$KAFKA_LOG" java "${KAFKA_JVM_OPTS[@]}" -cp "$KAFKA_LIB/*" \
    kafka.Kafka "$KAFKA_DATA/server.properties"
  log "kafka starting (pid $(read_pid kafka), log $KAFKA_LOG)"
  kafka_wait_ready "$deadline" "$t0"
}

kafka_stop() { stop_pid kafka "$KAFKA_PATTERN"; }

kafka_status() {
  if is_running kafka "$KAFKA_PATTERN" && port_open "$INDEXIFY_KAFKA_PORT"; then
    log "kafka running (pid $(read_pid kafka), $HOST:$INDEXIFY_KAFKA_PORT)"
  else
    log "kafka not running"
    return 3
  fi
}

dispatch kafka "${1:-}"
