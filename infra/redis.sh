#!/usr/bin/env bash
# Redis (Debian's redis-server) on 127.0.0.1 with AOF on, the installation's password
# (requirepass, from $INDEXIFY_DATA_DIR/credentials.env), protected mode on and CONFIG disabled.
# usage: infra/redis.sh {install|start|stop|status|restart}
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REDIS_DATA="$INDEXIFY_DATA_DIR/redis"
REDIS_LOG="$LOG_DIR/redis.log"
REDIS_CONF="$RUN_DIR/redis.conf"
REDIS_PATTERN=redis-server

redis_install() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  ensure_dirs
  # The package may enable a system service; we never use it, we run our own below.
  apt_install "$LOG_DIR/redis-install.log" redis-server
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
}

# The password goes through the environment: a command line is readable by every user.
redis_cli() { REDISCLI_AUTH="${INDEXIFY_REDIS_PASSWORD:-}" redis-cli --no-auth-warning -h "$HOST" -p "$INDEXIFY_REDIS_PORT" "$@"; }

redis_ping() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }

# The server's settings, in a file only its owner reads (the password must not appear on a
# command line); rewritten at every start, so a changed setting applies on restart.
# INDEXIFY_REDIS_APPENDFSYNC: everysec (the default: at most the last second of writes is lost
# when the machine, not only Redis, goes down) or always (nothing acknowledged is lost; every
# write waits for the disk).
write_redis_conf() {
  local tmp="$REDIS_CONF.tmp" fsync=${INDEXIFY_REDIS_APPENDFSYNC:-everysec}
  [[ $fsync == everysec || $fsync == always ]] ||
    die "INDEXIFY_REDIS_APPENDFSYNC must be everysec or always, not '$fsync'"
  (
    umask 077
    cat >"$tmp" <<EOF
bind $HOST
port $INDEXIFY_REDIS_PORT
dir $REDIS_DATA
appendonly yes
appendfsync $fsync
save ""
daemonize no
protected-mode yes
rename-command CONFIG ""
EOF
    if [[ -n ${INDEXIFY_REDIS_PASSWORD:-} ]]; then
      echo "requirepass $INDEXIFY_REDIS_PASSWORD" >>"$tmp"
    fi
  )
  mv "$tmp" "$REDIS_CONF"
}

redis_start() {
  local t0=$EPOCHREALTIME deadline=$((SECONDS + INDEXIFY_READY_TIMEOUT))
  if ! is_running redis "$REDIS_PATTERN"; then
    if port_open "$INDEXIFY_REDIS_PORT" && redis_ping; then
      die "a Redis not started by infra/ already answers on $HOST:$INDEXIFY_REDIS_PORT (a system service? try 'systemctl stop redis-server') - stop it or set INDEXIFY_REDIS_PORT"
    fi
    refuse_foreign_port redis "$INDEXIFY_REDIS_PORT"
    ensure_dirs "$REDIS_DATA"
    write_redis_conf
    start_daemon redis "$REDIS_LOG" redis-server "$REDIS_CONF"
  fi
  # PING answers -LOADING while the AOF is replayed, PONG once Redis serves (and an
  # authentication error when the running server has another password).
  until redis_ping; do
    if [[ $(redis_cli ping 2>&1) == *WRONGPASS* ]]; then
      die "redis on $HOST:$INDEXIFY_REDIS_PORT refuses the password in $CREDENTIALS_FILE (it was started with another): run infra/redis.sh restart"
    fi
    is_running redis "$REDIS_PATTERN" || fail_start redis "$REDIS_LOG" "redis exited"
    ((SECONDS < deadline)) || fail_start redis "$REDIS_LOG" "redis not ready within ${INDEXIFY_READY_TIMEOUT} s"
    sleep 0.05
  done
  check_owner redis "$INDEXIFY_REDIS_PORT"
  log "redis ready on $HOST:$INDEXIFY_REDIS_PORT (pid $(read_pid redis), $(elapsed "$t0") s)"
}

redis_stop() { stop_pid redis "$REDIS_PATTERN"; }

redis_status() {
  if is_running redis "$REDIS_PATTERN" && redis_ping; then
    log "redis running (pid $(read_pid redis), $HOST:$INDEXIFY_REDIS_PORT)"
  else
    log "redis not running"
    return 3
  fi
}

load_credentials
dispatch redis "${1:-}"
