#!/usr/bin/env bash
# Stop Kafka, Redis and MinIO started by infra/up.sh, by PID (components not running are skipped).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$EPOCHREALTIME
declare -A pids=()
for c in kafka redis minio; do
  "$INFRA_DIR/$c.sh" stop &
  pids[$c]=$!
done
failed=()
for c in kafka redis minio; do
  wait "${pids[$c]}" || failed+=("$c")
done
((${#failed[@]} == 0)) || die "could not stop: ${failed[*]}"
log "infrastructure down ($(elapsed "$t0") s)"
