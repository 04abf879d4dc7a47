#!/usr/bin/env bash
# Headless Chromium for the live page and report tests: Debian's package, driven by Playwright through
# executable_path (never `playwright install`, which downloads a browser build).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
