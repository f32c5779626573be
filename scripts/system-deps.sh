#!/usr/bin/env bash
# Installs the Debian libraries spin-ray needs beyond PyPI, if they are missing:
# libegl1 + libgl1 (headless EGL rendering with Mesa llvmpipe, or the NVIDIA driver on GPU nodes).
set -euo pipefail
# With SPIN_RAY_TEST_BROWSER=1 (set by `make test`): also Debian's chromium, for the gallery's browser
# test. A failed install only warns: that test then skips and says why.
if [ "${SPIN_RAY_TEST_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null; then
  browser_sudo=""; [ "$(id -u)" -ne 0 ] && browser_sudo=sudo
  if [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null; then
    { DEBIAN_FRONTEND=noninteractive $browser_sudo apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $browser_sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
      || echo "warning: could not install chromium (apt-get failed); the gallery browser test will be skipped" >&2
  else
    echo "warning: chromium is not installed and installing it needs root; the gallery browser test will be skipped" >&2
  fi
fi
missing=()
for lib in libEGL.so.1 libGL.so.1; do
  ldconfig -p | grep -q "$lib" || missing+=("$lib")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "spin-ray needs ${missing[*]} (Debian: apt-get install libegl1 libgl1); run this script as root" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends libegl1 libgl1 >/dev/null
