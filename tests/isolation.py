"""Run code in a fresh interpreter and see which modules it imported: the tests' one way to
check that a module's import (or a code path) stays free of heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules_imported_by(code: str, names: Iterable[str]) -> list[str]:
    """Run ``code`` with this interpreter in a new process (repository root as the working
    directory) and return those of ``names`` that are then in ``sys.modules`` (importing any
    submodule imports its package, so a package name covers all of it).

    Raises:
        subprocess.CalledProcessError: ``code`` failed (e.g. one of its own asserts).
    """
    names = list(names)
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {names!r} if m in sys.modules]))\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
