#!/usr/bin/env bash
# Make sure Debian's chromium is installed (the browser tests of the UI drive it headless
# through Playwright with executable_path=/usr/bin/chromium; Playwright's own browser
# downloads are never used). Idempotent and quiet: does nothing when it is there already.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM="${INDEXIFY_CHROMIUM:-/usr/bin/chromium}"
[[ -x $CHROMIUM ]] && exit 0
command -v apt-get >/dev/null || die "$CHROMIUM is missing and there is no apt-get to install it"
SUDO=()
((EUID == 0)) || SUDO=(sudo)
log "installing chromium (Debian package) for the UI's browser tests"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
[[ -x $CHROMIUM ]] || die "chromium was installed but $CHROMIUM is not there"
