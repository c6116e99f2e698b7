#!/usr/bin/env python3
"""Build soundscape-agent's wheel on the control node, reproducibly; print one JSON object.

    build_wheel.py --src REPO_ROOT --out DIR

Builds from a clean copy of pyproject.toml and agent/ (the checkout gets no build/ or
*.egg-info litter), with ``pip wheel --no-deps`` and a fixed SOURCE_DATE_EPOCH. The README is
replaced by a one-line stub in the copy: it is only the wheel's long description, and a
documentation edit must not re-deploy (and restart) the fleet. The new wheel replaces
``DIR/<wheel name>`` only when its contents differ, so an unchanged tree leaves the file, its
checksum and every Pi untouched. Older soundscape_agent wheels in DIR are removed.

Output: ``{"wheel": path, "name": file name, "sha256": hex, "changed": bool}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# 1980-01-02: the earliest time a zip entry can carry (plus a day against time-zone shifts).
FIXED_EPOCH = "315619200"
STUB_README = "soundscape-agent: see the repository's README.md.\n"


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _can_build_in_place() -> bool:
    """setuptools >= 68 (pyproject's build requirement) in this Python: no isolated build needed."""
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 68


def build(src: Path, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soundscape-wheel-") as tmp:
        tree = Path(tmp, "src")
        tree.mkdir()
        shutil.copy2(src / "pyproject.toml", tree / "pyproject.toml")
        (tree / "README.md").write_text(STUB_README, encoding="utf-8")
        shutil.copytree(src / "agent", tree / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = Path(tmp, "dist")
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
               "--wheel-dir", str(built), str(tree)]
        if _can_build_in_place():
            cmd.insert(4, "--no-build-isolation")
        env = {**os.environ, "SOURCE_DATE_EPOCH": FIXED_EPOCH, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            sys.exit(f"build_wheel: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        wheels = sorted(built.glob("soundscape_agent-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"build_wheel: expected one soundscape_agent wheel, found {[w.name for w in wheels]}")
        new = wheels[0]
        dest = out / new.name
        changed = not dest.exists() or _contents(dest) != _contents(new)
        if changed:
            staging = out / f".{new.name}.partial"
            shutil.copyfile(new, staging)
            os.replace(staging, dest)
    for old in out.glob("soundscape_agent-*.whl"):
        if old.name != dest.name:
            old.unlink()
            changed = True
    return {"wheel": str(dest), "name": dest.name, "sha256": _sha256(dest), "changed": changed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True, help="repository root (pyproject.toml, agent/)")
    p.add_argument("--out", type=Path, required=True, help="directory the wheel is kept in")
    args = p.parse_args(argv)
    print(json.dumps(build(args.src.resolve(), args.out.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
