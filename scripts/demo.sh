#!/usr/bin/env bash
# Set-up command 1: install, then run the main job on the bundled real recordings.
# Set SOUNDSCAPE_DSN=postgresql://... to also sync the results to PostgreSQL.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/soundscape-agent -v demo "$@"
