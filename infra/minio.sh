#!/usr/bin/env bash
# MinIO (built once from its Go module, cached) on 127.0.0.1, with the installation's keys
# (from $INDEXIFY_DATA_DIR/credentials.env; never MinIO's default ones).
# usage: infra/minio.sh {install|start|stop|status|restart}
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c # last commit; the 2025-10-15 release is refused by the proxy
MINIO_BIN="$INDEXIFY_CACHE_DIR/bin/minio"
MINIO_DATA="$INDEXIFY_DATA_DIR/minio"
MINIO_LOG="$LOG_DIR/minio.log"
MINIO_PATTERN="$MINIO_BIN server"

find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    echo /usr/local/go/bin/go
  else
    die "Go toolchain not found (needed once to build MinIO)"
  fi
}

minio_install() {
  [[ -x $MINIO_BIN ]] && return 0
  ensure_dirs "$INDEXIFY_CACHE_DIR/bin"
  # One build at a time on this machine, across repositories sharing the cache.
  exec 8>"$INDEXIFY_CACHE_DIR/bin/.minio-build.lock"
  flock 8
  while pgrep -f "go install $MINIO_MODULE" >/dev/null 2>&1; do
    log "waiting for a MinIO build already running on this machine"
    sleep 5
  done
  if [[ -x $MINIO_BIN ]]; then
    exec 8>&-
    return 0
  fi
  local go ilog="$LOG_DIR/minio-install.log" t0=$EPOCHREALTIME tmp="$INDEXIFY_CACHE_DIR/bin/.build.$$"
  go=$(find_go)
  log "building MinIO $MINIO_VERSION from the Go module proxy (5-10 min, once; log: $ilog)"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! CGO_ENABLED=0 GOBIN="$tmp" "$go" install "$MINIO_MODULE@$MINIO_VERSION" >>"$ilog" 2>&1; then
    log "go install refused; falling back to go mod download + go build"
    local dir
    dir=$("$go" mod download -json "$MINIO_MODULE@$MINIO_VERSION" 2>>"$ilog" |
      python3 -c 'import json, sys; print(json.load(sys.stdin).get("Dir", ""))') || dir=""
    [[ -n $dir && -d $dir ]] || {
      rm -rf "$tmp"
      tail -n 20 "$ilog" >&2
      die "could not download $MINIO_MODULE@$MINIO_VERSION (log: $ilog)"
    }
    (cd "$dir" && CGO_ENABLED=0 "$go" build -o "$tmp/minio" .) >>"$ilog" 2>&1 || {
      rm -rf "$tmp"
      tail -n 20 "$ilog" >&2
      die "MinIO build failed (log: $ilog)"
    }
  fi
  mv "$tmp/minio" "$MINIO_BIN"
  rm -rf "$tmp"
  exec 8>&-
  log "minio built into $MINIO_BIN ($(elapsed "$t0") s)"
}

minio_ready() {
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 2 "http://$HOST:$INDEXIFY_MINIO_PORT/minio/health/ready"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "http://$HOST:$INDEXIFY_MINIO_PORT/minio/health/ready" >/dev/null 2>&1
  fi
}

minio_start() {
  local t0=$EPOCHREALTIME deadline=$((SECONDS + INDEXIFY_READY_TIMEOUT))
  if ! is_running minio "$MINIO_PATTERN"; then
    refuse_foreign_port minio "$INDEXIFY_MINIO_PORT"
    refuse_foreign_port minio-console "$INDEXIFY_MINIO_CONSOLE_PORT"
    ensure_dirs "$MINIO_DATA"
    # MINIO_SCANNER_SPEED=slowest: the background scanner (data usage, healing checks,
    # lifecycle rules: we set none) runs a cycle every 30 minutes instead of every minute,
    # which woke an idle MinIO every minute (tests/bench/idle.py).
    MINIO_ROOT_USER="${INDEXIFY_MINIO_ACCESS_KEY:-minioadmin}" \
      MINIO_ROOT_PASSWORD="${INDEXIFY_MINIO_SECRET_KEY:-minioadmin}" \
      MINIO_BROWSER=off MINIO_UPDATE=off MINIO_SCANNER_SPEED=slowest \
      start_daemon minio "$MINIO_LOG" "$MINIO_BIN" server "$MINIO_DATA" \
      --address "$HOST:$INDEXIFY_MINIO_PORT" --console-address "$HOST:$INDEXIFY_MINIO_CONSOLE_PORT"
  fi
  until minio_ready; do
    is_running minio "$MINIO_PATTERN" || fail_start minio "$MINIO_LOG" "minio exited"
    ((SECONDS < deadline)) || fail_start minio "$MINIO_LOG" "minio not ready within ${INDEXIFY_READY_TIMEOUT} s"
    sleep 0.1
  done
  check_owner minio "$INDEXIFY_MINIO_PORT"
  log "minio ready on $HOST:$INDEXIFY_MINIO_PORT (pid $(read_pid minio), $(elapsed "$t0") s)"
}

minio_stop() { stop_pid minio "$MINIO_PATTERN"; }

minio_status() {
  if is_running minio "$MINIO_PATTERN" && minio_ready; then
    log "minio running (pid $(read_pid minio), $HOST:$INDEXIFY_MINIO_PORT)"
  else
    log "minio not running"
    return 3
  fi
}

load_credentials
dispatch minio "${1:-}"
