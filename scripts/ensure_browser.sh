#!/usr/bin/env bash
# The browser tests drive Debian's chromium (Playwright launches it by path; no `playwright install`
# download). Install it, with CJK fonts for the Traditional Chinese pages, when it is missing.
set -euo pipefail

CHROMIUM=${NOTETUNE_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  echo "ensure_browser: $CHROMIUM is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_browser: no $CHROMIUM and no root apt-get to install it; the browser tests will be skipped" >&2
  exit 0
fi
echo "ensure_browser: installing chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null
test -x "$CHROMIUM"
echo "ensure_browser: $CHROMIUM is installed"
