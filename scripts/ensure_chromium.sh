#!/usr/bin/env bash
# Make sure headless Chromium is available at /usr/bin/chromium (for the MLflow UI test in tests/test_flows.py).
# Idempotent: exits 0 at once when it is already installed.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then echo "ensure_chromium: $CHROMIUM missing and not root; run: sudo apt-get install chromium" >&2; exit 1; fi
if ! command -v apt-get >/dev/null 2>&1; then echo "ensure_chromium: $CHROMIUM missing and apt-get not found; install Chromium by hand" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium; } >/tmp/ensure_chromium.log 2>&1; then
  echo "ensure_chromium: apt-get install chromium failed (see /tmp/ensure_chromium.log)" >&2; exit 1
fi
[ -x "$CHROMIUM" ] || { echo "ensure_chromium: installed, but $CHROMIUM is still missing" >&2; exit 1; }
echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
