#!/usr/bin/env bash
# Debian's chromium, for the browser tests: Playwright drives it with executable_path=/usr/bin/chromium
# (never `playwright install`: no browser is downloaded). Idempotent: installs only if it is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if ! [ -x /usr/bin/chromium ]; then
    echo "chromium.sh: installing Debian's chromium"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi
echo "chromium.sh: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium installed')"
