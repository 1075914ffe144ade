#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report browser test (tests/report/test_browser.py).
# Idempotent: does nothing when `chromium` is already on PATH. Needs root (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
