#!/usr/bin/env bash
# Install (once, cached) and start Kafka, Redis and MinIO on 127.0.0.1, wait until each really
# serves, then create topics and buckets (services.common.bootstrap) when that module exists.
# Idempotent: components already running are left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$EPOCHREALTIME
ensure_credentials # once, before the components start in parallel
ensure_dirs
components=(kafka redis minio)

# Install + start each component in parallel; each script prints its own one-line messages.
declare -A pids=()
for c in "${components[@]}"; do
  "$INFRA_DIR/$c.sh" start &
  pids[$c]=$!
done
failed=()
for c in "${components[@]}"; do
  wait "${pids[$c]}" || failed+=("$c")
done
((${#failed[@]} == 0)) || die "could not start: ${failed[*]} (logs in $LOG_DIR)"

if [[ -f $REPO_ROOT/services/common/bootstrap.py ]]; then
  [[ -x $INDEXIFY_PYTHON ]] || die "$INDEXIFY_PYTHON not found (run make setup, or set INDEXIFY_PYTHON)"
  log "bootstrapping topics and buckets (services.common.bootstrap)"
  # The servers just started, wherever the port settings put them (settings read the
  # credentials from the data directory).
  (
    cd "$REPO_ROOT"
    export INDEXIFY_KAFKA_BOOTSTRAP="${INDEXIFY_KAFKA_BOOTSTRAP:-$HOST:$INDEXIFY_KAFKA_PORT}"
    export INDEXIFY_REDIS_URL="${INDEXIFY_REDIS_URL:-redis://$HOST:$INDEXIFY_REDIS_PORT/0}"
    export INDEXIFY_MINIO_ENDPOINT="${INDEXIFY_MINIO_ENDPOINT:-$HOST:$INDEXIFY_MINIO_PORT}"
    "$INDEXIFY_PYTHON" -m services.common.bootstrap
  ) || die "services.common.bootstrap failed"
fi
log "infrastructure up ($(elapsed "$t0") s): kafka $HOST:$INDEXIFY_KAFKA_PORT, redis $HOST:$INDEXIFY_REDIS_PORT, minio $HOST:$INDEXIFY_MINIO_PORT; data and credentials ($CREDENTIALS_FILE) in $INDEXIFY_DATA_DIR"
