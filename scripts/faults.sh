#!/usr/bin/env bash
# The fault-injection suite at full counts (e.g. 200 kill -9 cycles instead of CI's 50), writing
# the committed figures: benchmarks/results/faults.json and faults.md (docs/delivery.md quotes them).
# Installs what it needs like scripts/test.sh; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/faults.json"
rm -f "$OUT" "${OUT%.json}.md"
SOUNDSCAPE_FAULT_SCALE=full SOUNDSCAPE_FAULT_RESULTS="$OUT" exec bash "$ROOT/scripts/test.sh" -m faults "$@"
