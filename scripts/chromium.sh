#!/usr/bin/env bash
# Installs Debian's chromium if it is missing, for the debug page's browser
# test (balancer/debugpage), and prints the binary's path on its last line.
#
#   scripts/chromium.sh        # install if missing (apt-get, as root), print the path
#
# Idempotent: with chromium on PATH (or LODESTAR_CHROMIUM set to a binary) it
# installs nothing.
set -euo pipefail

find_chromium() {
  if [ -n "${LODESTAR_CHROMIUM:-}" ] && [ -x "$LODESTAR_CHROMIUM" ]; then
    echo "$LODESTAR_CHROMIUM"
    return 0
  fi
  local c
  for c in chromium chromium-browser google-chrome-stable google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if p=$(find_chromium); then
  echo "$p"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium.sh: chromium is not installed and there is no apt-get to install it; install chromium and retry" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "chromium.sh: installing chromium needs root (or sudo)" >&2; exit 1; }
  sudo=sudo
fi
echo "chromium.sh: installing Debian's chromium (first time only)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >&2
$sudo apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
p=$(find_chromium) || { echo "chromium.sh: chromium installed but not found on PATH" >&2; exit 1; }
echo "$p"
