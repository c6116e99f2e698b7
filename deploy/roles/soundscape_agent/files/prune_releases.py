#!/usr/bin/env python3
"""Remove old soundscape-agent releases on a device; print one JSON object.

    prune_releases.py --prefix /opt/soundscape-agent --keep 3 [--legacy PATH ...]

Keeps the releases `current` and `previous` point to, plus the newest others (by modification
time) up to ``--keep`` in all; removes the rest, then every virtualenv (``venvs/``) and model
(``models/``) that no kept release uses (its ``venv`` link, the ``model`` of its RELEASE.json),
and the ``--legacy`` paths (the layout before releases). Never follows a link out of the prefix.

Output: ``{"changed": bool, "removed": [path, ...], "kept": [release id, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _target(link: Path) -> str | None:
    return Path(link.readlink()).name if link.is_symlink() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", type=Path, required=True)
    parser.add_argument("--keep", type=int, required=True)
    parser.add_argument("--legacy", type=Path, action="append", default=[])
    args = parser.parse_args()
    releases_dir = args.prefix / "releases"
    pinned = {name for name in (_target(args.prefix / "current"), _target(args.prefix / "previous")) if name}
    releases = sorted((p for p in releases_dir.iterdir() if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.stat().st_mtime, reverse=True) if releases_dir.is_dir() else []
    kept = [p for p in releases if p.name in pinned]
    for p in releases:
        if len(kept) >= max(args.keep, len(pinned)):
            break
        if p not in kept:
            kept.append(p)
    removed = []
    for p in releases:
        if p not in kept:
            shutil.rmtree(p)
            removed.append(str(p))
    venvs, models = set(), set()
    for p in kept:
        if (p / "venv").is_symlink():
            venvs.add(Path((p / "venv").readlink()).name)
        try:
            models.add(json.loads((p / "RELEASE.json").read_text())["model"])
        except (OSError, ValueError, KeyError):
            pass
    for folder, used in ((args.prefix / "venvs", venvs), (args.prefix / "models", models)):
        if folder.is_dir() and kept:  # nothing kept yet (no release): remove nothing
            for p in folder.iterdir():
                if p.name not in used and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    removed.append(str(p))
    for p in args.legacy:
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(str(p))
        elif p.is_dir():
            shutil.rmtree(p)
            removed.append(str(p))
    print(json.dumps({"changed": bool(removed), "removed": removed, "kept": [p.name for p in kept]}))


if __name__ == "__main__":
    main()
