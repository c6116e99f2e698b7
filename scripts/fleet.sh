#!/usr/bin/env bash
# The fleet benchmark at full scale, writing the committed figures benchmarks/results/fleet.json
# and fleet.md (benchmarks/README.md, "Fleet ..."): the default ingest (1,000 devices x 1 h), the
# full fleet's catch-up (10,000 devices x 6 min), the steady load of 10,000 devices (sync every
# 300 s with 64 and with 128 connections, every 60 s, in real time) and the query phase (1,000 devices x 30 days, day against
# week partitions). About 45 min on this 2-core machine; run nothing else meanwhile (the figures
# include CPU shares). Each section names the commit it was measured at: run it on a clean work
# tree, then commit the results. Uses the virtualenv scripts/bootstrap.sh makes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "$(git -C "$ROOT" status --porcelain -- agent benchmarks/fleet.py benchmarks/fleet_steady.py)" ]; then
    echo "fleet.sh: agent/ or the benchmark has uncommitted changes: commit first, so the figures name the code they measure" >&2
    exit 2
fi
PY="$ROOT/.venv/bin/python"
cd "$ROOT"
# a full run writes every section afresh: no section of an older run (or older code) is kept
rm -f benchmarks/results/fleet.json benchmarks/results/fleet.md
"$PY" benchmarks/fleet.py                                                   # 1,000 devices x 1 h, k 3
"$PY" benchmarks/fleet.py --devices 10000 --hours 0.1 --k 5 --store-as full_fleet
"$PY" benchmarks/fleet.py --steady 300,300:128,60 --devices 10000 --k 5 --connections 64
"$PY" benchmarks/fleet.py --queries
