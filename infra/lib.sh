# shellcheck shell=bash
# Shared helpers for the infra/ scripts. Source it; do not run it.
#
# Every setting is an environment variable with a default, so the same scripts work locally,
# in CI and in the fault-injection tests (which may pick other ports and data directories).

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"
export LC_ALL=C

: "${INDEXIFY_CACHE_DIR:=$HOME/.cache/indexify}"
: "${INDEXIFY_DATA_DIR:=$REPO_ROOT/.data}"
: "${INDEXIFY_PYTHON:=$REPO_ROOT/.venv/bin/python}"
: "${INDEXIFY_KAFKA_PORT:=9092}"
: "${INDEXIFY_KAFKA_CONTROLLER_PORT:=9093}"
: "${INDEXIFY_REDIS_PORT:=6379}"
: "${INDEXIFY_MINIO_PORT:=9000}"
: "${INDEXIFY_MINIO_CONSOLE_PORT:=9001}"
: "${INDEXIFY_MINIO_ACCESS_KEY:=minioadmin}"
: "${INDEXIFY_MINIO_SECRET_KEY:=minioadmin}"
: "${INDEXIFY_STOP_TIMEOUT:=20}"    # seconds between SIGTERM and SIGKILL
: "${INDEXIFY_READY_TIMEOUT:=60}"   # seconds a start waits for readiness
export INDEXIFY_CACHE_DIR INDEXIFY_DATA_DIR INDEXIFY_PYTHON INDEXIFY_KAFKA_PORT \
  INDEXIFY_KAFKA_CONTROLLER_PORT INDEXIFY_REDIS_PORT INDEXIFY_MINIO_PORT \
  INDEXIFY_MINIO_CONSOLE_PORT INDEXIFY_MINIO_ACCESS_KEY INDEXIFY_MINIO_SECRET_KEY \
  INDEXIFY_STOP_TIMEOUT INDEXIFY_READY_TIMEOUT

HOST=127.0.0.1
RUN_DIR="$INDEXIFY_DATA_DIR/run"
LOG_DIR="$INDEXIFY_DATA_DIR/logs"

log() { printf '[infra] %s\n' "$*"; }
warn() { printf '[infra] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[infra] ERROR: %s\n' "$*" >&2
  exit 1
}

# Seconds since the EPOCHREALTIME value $1, with one decimal.
elapsed() { awk -v s="$1" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }

# shellcheck disable=SC2120  # callers in the component scripts pass directories
ensure_dirs() { mkdir -p "$RUN_DIR" "$LOG_DIR" "$@"; }

# Run a command as root (directly, or through sudo when available).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# apt_install <logfile> <package>...: install Debian packages, output to the log file.
apt_install() {
  local logfile=$1
  shift
  log "installing $* with apt-get (log: $logfile)"
  if ! { as_root apt-get update -q && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@"; } \
    >>"$logfile" 2>&1; then
    tail -n 20 "$logfile" >&2
    die "apt-get install $* failed (log: $logfile)"
  fi
}

# port_open <port>: true when something accepts TCP connections on 127.0.0.1:<port>.
port_open() { (: <>"/dev/tcp/$HOST/$1") 2>/dev/null; }

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# read_pid <name>: print the PID recorded for <name>, or nothing.
read_pid() {
  local f
  f=$(pid_file "$1")
  [[ -f $f ]] || return 0
  local pid
  pid=$(tr -dc '0-9' <"$f")
  printf '%s' "$pid"
}

# alive <pid>: the process exists and is not a zombie (PID 1 in a container may not reap).
alive() {
  local pid=$1 state
  kill -0 "$pid" 2>/dev/null || return 1
  state=$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null || true)
  [[ $state != Z && $state != X ]]
}

# pid_matches <pid> <pattern>: the process is alive and its command line contains <pattern>
# (guards against a recycled PID belonging to something else).
pid_matches() {
  local pid=$1 pattern=$2
  [[ -n $pid ]] && alive "$pid" || return 1
  [[ -r /proc/$pid/cmdline ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# is_running <name> <pattern>: our process for <name> is alive. A stale pid file is removed.
is_running() {
  local name=$1 pattern=$2 pid
  pid=$(read_pid "$name")
  if pid_matches "$pid" "$pattern"; then
    return 0
  fi
  if [[ -f $(pid_file "$name") ]]; then
    rm -f "$(pid_file "$name")"
  fi
  return 1
}

# lock <name>: serialise start/stop of one component across concurrent scripts (fd 9).
lock() {
  ensure_dirs
  exec 9>"$RUN_DIR/$1.lock"
  flock 9
}

# start_daemon <name> <logfile> <command>...: start a long-running process in its own session
# (immune to the caller's Ctrl-C / hang-up / process-group kills), output appended to
# <logfile>, PID written to the pid file by the process itself before exec.
start_daemon() {
  local name=$1 logfile=$2
  shift 2
  local pf
  pf=$(pid_file "$name")
  rm -f "$pf"
  printf '\n==== %s start %s ====\n' "$name" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$logfile"
  # shellcheck disable=SC2016  # $$ and $@ are expanded by the inner shell
  setsid -f bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec nohup "$@"' "$pf" "$@" \
    </dev/null >>"$logfile" 2>&1 9>&-
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s $pf ]] && return 0
    sleep 0.05
  done
  die "$name did not start (no pid file $pf); see $logfile"
}

# stop_pid <name> <pattern>: SIGTERM, wait up to INDEXIFY_STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
  local name=$1 pattern=$2 pid t0
  if ! is_running "$name" "$pattern"; then
    log "$name not running"
    return 0
  fi
  pid=$(read_pid "$name")
  t0=$EPOCHREALTIME
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + INDEXIFY_STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if alive "$pid"; then
    warn "$name (pid $pid) still alive after ${INDEXIFY_STOP_TIMEOUT} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$(pid_file "$name")"
  log "$name stopped (pid $pid, $(elapsed "$t0") s)"
}

# wait_for_port <name> <pattern> <port> <deadline-SECONDS>: wait until the port accepts
# connections; fail early if the process dies.
wait_for_port() {
  local name=$1 pattern=$2 port=$3 deadline=$4
  until port_open "$port"; do
    is_running "$name" "$pattern" || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# port_users <port>: who listens on the port, e.g. "python3",pid=123 (empty without ss).
port_users() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o '"[^"]*",pid=[0-9]*' | sort -u | paste -sd ' ' - || true
}

# check_owner <name> <port>: the port is served by our recorded PID, not by some other process
# (e.g. the port setting changed while ours kept running). Skipped when ss is unavailable.
check_owner() {
  local name=$1 port=$2 pid
  command -v ss >/dev/null 2>&1 || return 0
  pid=$(read_pid "$name")
  ss -Hltnp "sport = :$port" 2>/dev/null | grep -q "pid=$pid," && return 0
  die "$name runs as pid $pid but $HOST:$port is served by another process ($(port_users "$port")) - stop it, or run infra/$name.sh restart if the port setting changed"
}

# refuse_foreign_port <name> <port>: fail clearly when something that is not ours holds it.
refuse_foreign_port() {
  local name=$1 port=$2
  if port_open "$port"; then
    local who=""
    who=$(port_users "$port")
    die "port $HOST:$port is already in use by a process not started by infra/${who:+ ($who)} - stop it or set another port for $name"
  fi
}

# fail_start <name> <logfile> <message>: show the end of the log and exit non-zero.
fail_start() {
  local name=$1 logfile=$2
  shift 2
  printf '[infra] ERROR: %s; last 40 lines of %s:\n' "$*" "$logfile" >&2
  tail -n 40 "$logfile" >&2 || true
  exit 1
}

# dispatch <component-prefix> <command>: shared {install|start|stop|status|restart} entry point.
dispatch() {
  local c=$1 cmd=${2:-}
  case $cmd in
  install) "${c}_install" ;;
  start) lock "$c" && "${c}_install" && "${c}_start" ;;
  stop) lock "$c" && "${c}_stop" ;;
  restart) lock "$c" && "${c}_install" && "${c}_stop" && "${c}_start" ;;
  status) "${c}_status" ;;
  *)
    echo "usage: $0 {install|start|stop|status|restart}" >&2
    exit 2
    ;;
  esac
}
