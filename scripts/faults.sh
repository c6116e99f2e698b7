#!/usr/bin/env bash
# The fault-injection suite at full counts (e.g. 200 kill -9 cycles instead of CI's 50), writing
# the committed figures: benchmarks/results/faults.json and faults.md, and the table in
# docs/delivery.md. Each fault's entry names the commit and the time it was measured at: run it on
# a clean work tree (committed code), then commit the results. Installs what it needs like
# scripts/test.sh; extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/faults.json"
if [ -n "$(git -C "$ROOT" status --porcelain -- agent tests)" ]; then
    echo "faults.sh: agent/ or tests/ has uncommitted changes: commit first, so the figures name the code they measure" >&2
    exit 2
fi
rm -f "$OUT" "${OUT%.json}.md"
SOUNDSCAPE_FAULT_SCALE=full SOUNDSCAPE_FAULT_RESULTS="$OUT" bash "$ROOT/scripts/test.sh" -m faults "$@"
"$ROOT/.venv/bin/python" - "$ROOT" <<'PY'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
table = (root / "benchmarks/results/faults.md").read_text()
doc = root / "docs/delivery.md"
text = doc.read_text()
new = re.sub(r"(<!-- faults-table: [^>]*-->\n).*?(<!-- /faults-table -->)", lambda m: m[1] + table + m[2], text,
             count=1, flags=re.S)
doc.write_text(new)
print("docs/delivery.md: faults table updated")
PY
