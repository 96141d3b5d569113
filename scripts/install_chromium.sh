#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the browser tests (tests/browser.py), when missing.
# Nothing to do when both are installed; needs root (or sudo) and apt otherwise. A browser
# downloaded by a test tool is never used: the tests drive the distribution's packages.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_chromium: no apt-get here; install chromium and its chromedriver, or the browser tests are skipped" >&2
  exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "install_chromium: not root; run 'apt-get install chromium chromium-driver' as root, or the browser tests are skipped" >&2
    exit 0
  fi
fi
echo "install_chromium: installing Debian's chromium and chromium-driver"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
