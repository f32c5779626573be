#!/usr/bin/env bash
# Installs the Debian libraries spin-ray needs beyond PyPI, if they are missing:
# libegl1 + libgl1 (headless EGL rendering with Mesa llvmpipe, or the NVIDIA driver on GPU nodes).
set -euo pipefail
# With SPIN_RAY_TEST_TOOLS=1 (set by `make test`): also the Debian packages some tests use: chromium (the
# gallery's browser test), redis-tools and openssl (the store over TLS: a TLS-capable redis-server, and the
# test's certificates). A failed install only warns: those tests then skip and say why.
if [ "${SPIN_RAY_TEST_TOOLS:-0}" = "1" ]; then
  wanted=()
  command -v chromium >/dev/null || wanted+=(chromium)
  [ -x /usr/bin/redis-check-rdb ] && [ -x /usr/bin/redis-cli ] || wanted+=(redis-tools)
  command -v openssl >/dev/null || wanted+=(openssl)
  if [ ${#wanted[@]} -gt 0 ]; then
    tools_sudo=""; [ "$(id -u)" -ne 0 ] && tools_sudo=sudo
    if [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null; then
      { DEBIAN_FRONTEND=noninteractive $tools_sudo apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $tools_sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null; } \
        || echo "warning: could not install ${wanted[*]} (apt-get failed); the tests that need them will be skipped" >&2
    else
      echo "warning: ${wanted[*]} not installed and installing needs root; the tests that need them will be skipped" >&2
    fi
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
