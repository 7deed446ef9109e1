#!/usr/bin/env bash
# The cluster profile: three Apache Kafka nodes (KRaft, each broker + controller) on
# 127.0.0.1, replication factor 3, min.insync.replicas=2. Beside the single dev broker of
# kafka.sh, not instead of it: its own ports, data and pid files.
#
# usage: infra/kafka-cluster.sh {install|start|stop|status|restart|bootstrap}
#        infra/kafka-cluster.sh {start-node|stop-node|kill-node} N    (N = 1, 2 or 3)
#
# Node N listens on INDEXIFY_KAFKA_CLUSTER_PORT + 2(N-1) (default 9192, 9194, 9196) and its
# controller on the port after it. `bootstrap` prints the client bootstrap list, e.g. for
# INDEXIFY_KAFKA_BOOTSTRAP="$(infra/kafka-cluster.sh bootstrap)".
#
# On several hosts (infra/netns.sh): INDEXIFY_KAFKA_CLUSTER_HOSTS lists the three nodes'
# addresses (comma-separated; default 127.0.0.1 for all), which each node listens on and
# advertises, and INDEXIFY_KAFKA_CLUSTER_NETNS the network namespaces they run in (`ip netns
# exec`; none by default).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=$(sed -n 's/^KAFKA_VERSION=\([0-9.]*\).*/\1/p' "$INFRA_DIR/kafka.sh")
# shellcheck source-path=SCRIPTDIR source=kafka-env.sh
source "$INFRA_DIR/kafka-env.sh"
: "${INDEXIFY_KAFKA_CLUSTER_PORT:=9192}"
NODES=(1 2 3)
CLUSTER_DATA="$INDEXIFY_DATA_DIR/kafka-cluster"
IFS=, read -r -a NODE_HOSTS <<<"${INDEXIFY_KAFKA_CLUSTER_HOSTS:-$HOST,$HOST,$HOST}"
IFS=, read -r -a NODE_NETNS <<<"${INDEXIFY_KAFKA_CLUSTER_NETNS:-}"
((${#NODE_HOSTS[@]} == ${#NODES[@]})) || die "INDEXIFY_KAFKA_CLUSTER_HOSTS must list ${#NODES[@]} addresses, not '${INDEXIFY_KAFKA_CLUSTER_HOSTS:-}'"
((${#NODE_NETNS[@]} == 0 || ${#NODE_NETNS[@]} == ${#NODES[@]})) || die "INDEXIFY_KAFKA_CLUSTER_NETNS must list ${#NODES[@]} namespaces, not '${INDEXIFY_KAFKA_CLUSTER_NETNS:-}'"

node_port() { echo $((INDEXIFY_KAFKA_CLUSTER_PORT + 2 * ($1 - 1))); }
controller_port() { echo $((INDEXIFY_KAFKA_CLUSTER_PORT + 2 * ($1 - 1) + 1)); }
node_host() { echo "${NODE_HOSTS[$(($1 - 1))]}"; }
node_netns() { echo "${NODE_NETNS[$(($1 - 1))]:-}"; }
# node_port_open N: node N accepts connections on its client port
node_port_open() { (: <>"/dev/tcp/$(node_host "$1")/$(node_port "$1")") 2>/dev/null; }
node_dir() { echo "$CLUSTER_DATA/node$1"; }
# what identifies node N's process (its properties file is on its command line)
node_pattern() { echo "$(node_dir "$1")/server.properties"; }
node_log() { echo "$LOG_DIR/kafka-node$1.log"; }

bootstrap_list() {
  local n list=()
  for n in "${NODES[@]}"; do list+=("$(node_host "$n"):$(node_port "$n")"); done
  (IFS=,; echo "${list[*]}")
}

voters() {
  local n list=()
  for n in "${NODES[@]}"; do list+=("$n@$(node_host "$n"):$(controller_port "$n")"); done
  (IFS=,; echo "${list[*]}")
}

check_node() {
  [[ ${1:-} =~ ^[123]$ ]] || die "name a node: 1, 2 or 3 (got '${1:-}')"
}

node_configure() {
  local n=$1 dir
  dir=$(node_dir "$n")
  ensure_dirs "$dir/data"
  sed -e "s|@NODE@|$n|g" -e "s|@VOTERS@|$(voters)|g" \
    -e "s|@PORT@|$(node_port "$n")|g" -e "s|@CONTROLLER_PORT@|$(controller_port "$n")|g" \
    -e "s|@LOG_DIRS@|$dir/data|g" -e "s|@HOST@|$(node_host "$n")|g" \
    "$INFRA_DIR/kafka/cluster.properties.template" >"$dir/server.properties"
  if [[ ! -f $dir/data/meta.properties ]]; then
    log "formatting node $n's storage in $dir/data (cluster id $(<"$CLUSTER_DATA/cluster.id"))"
    kafka_java kafka.tools.StorageTool format --cluster-id="$(<"$CLUSTER_DATA/cluster.id")" \
      -c "$dir/server.properties" --ignore-formatted >>"$(node_log "$n")" 2>&1 ||
      fail_start "kafka-node$n" "$(node_log "$n")" "storage format failed"
  fi
}

node_start() {
  local n=$1 netns in_netns=()
  if is_running "kafka-node$n" "$(node_pattern "$n")"; then
    return 0
  fi
  netns=$(node_netns "$n")
  if [[ -n $netns ]]; then
    in_netns=("$(command -v ip || echo /usr/sbin/ip)" netns exec "$netns")
  elif [[ $(node_host "$n") == "$HOST" ]]; then
    refuse_foreign_port "kafka-node$n" "$(node_port "$n")"
    refuse_foreign_port "kafka-node$n-controller" "$(controller_port "$n")"
  fi
  node_configure "$n"
  start_daemon "kafka-node$n" "$(node_log "$n")" "${in_netns[@]}" java "${KAFKA_JVM_OPTS[@]}" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$(node_pattern "$n")"
  log "kafka node $n starting (pid $(read_pid "kafka-node$n"), $(node_host "$n"):$(node_port "$n")${netns:+ in netns $netns}, log $(node_log "$n"))"
}

# cluster_wait_ready <brokers>: an admin round trip that sees <brokers> registered brokers.
cluster_wait_ready() {
  local brokers=$1 t0=$EPOCHREALTIME
  [[ -x $INDEXIFY_PYTHON ]] || die "$INDEXIFY_PYTHON not found (run make setup, or set INDEXIFY_PYTHON)"
  "$INDEXIFY_PYTHON" -c "$KAFKA_PROBE" "$(bootstrap_list)" "$INDEXIFY_READY_TIMEOUT" "$brokers" ||
    die "the kafka cluster did not show $brokers brokers within ${INDEXIFY_READY_TIMEOUT} s (logs: $LOG_DIR/kafka-node*.log)"
  log "kafka cluster ready with $brokers brokers: $(bootstrap_list) ($(elapsed "$t0") s)"
}

kafka_cluster_install() { "$INFRA_DIR/kafka.sh" install; }

kafka_cluster_start() {
  ensure_dirs "$CLUSTER_DATA"
  [[ -s $CLUSTER_DATA/cluster.id ]] || new_cluster_id >"$CLUSTER_DATA/cluster.id"
  local n pid pids=()
  # the storage formats (a JVM each) side by side
  for n in "${NODES[@]}"; do
    node_configure "$n" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || die "formatting the nodes' storage failed (logs: $LOG_DIR/kafka-node*.log)"
  done
  # all three at once: a controller quorum needs a majority before anything is served
  for n in "${NODES[@]}"; do node_start "$n"; done
  cluster_wait_ready "${#NODES[@]}"
}

kafka_cluster_stop() {
  local n
  for n in "${NODES[@]}"; do stop_pid "kafka-node$n" "$(node_pattern "$n")" & done
  wait
}

kafka_cluster_status() {
  local n down=0
  for n in "${NODES[@]}"; do
    if is_running "kafka-node$n" "$(node_pattern "$n")" && node_port_open "$n"; then
      log "kafka node $n running (pid $(read_pid "kafka-node$n"), $(node_host "$n"):$(node_port "$n"))"
    else
      log "kafka node $n not running"
      down=1
    fi
  done
  ((down == 0)) || return 3
}

case ${1:-} in
  bootstrap) bootstrap_list ;;
  start-node)
    check_node "${2:-}"
    lock kafka-cluster && kafka_cluster_install && node_start "$2"
    cluster_wait_ready "${#NODES[@]}"
    ;;
  stop-node) check_node "${2:-}" && stop_pid "kafka-node$2" "$(node_pattern "$2")" ;;
  kill-node)
    check_node "${2:-}"
    pid=$(read_pid "kafka-node$2")
    pid_matches "$pid" "$(node_pattern "$2")" || die "kafka node $2 is not running"
    kill -KILL "$pid"
    log "kafka node $2 killed (pid $pid)"
    ;;
  *) dispatch kafka_cluster "${1:-}" ;;
esac
