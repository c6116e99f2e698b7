#!/usr/bin/env bash
# Set-up command 2: install everything, then run the whole test suite against real ALSA
# (file plugin), real SQLite, a real PostgreSQL server the tests start, and the real model code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
