#!/usr/bin/env bash
# Installs the Debian libraries spin-ray needs beyond PyPI, if they are missing:
# libegl1 + libgl1 (headless EGL rendering with Mesa llvmpipe, or the NVIDIA driver on GPU nodes).
set -euo pipefail
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
