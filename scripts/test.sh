#!/usr/bin/env bash
# Set-up command 2: install everything, lint (ruff) and type-check (mypy), then run the whole test
# suite against real ALSA (file plugin), real SQLite, a real PostgreSQL server the tests start,
# and the real model code.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# The checks that keep the code as it is meant to be (pyproject.toml: [tool.ruff], [tool.mypy]).
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
