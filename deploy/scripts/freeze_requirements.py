#!/usr/bin/env python3
"""Write the Pi's pinned requirements: the closure of pyproject's core dependencies, exact versions.

Run it with the Python of an environment where the agent's core dependencies are installed at the
versions the fleet should get (the development virtualenv), from the repository root:

    .venv/bin/python deploy/scripts/freeze_requirements.py            # rewrite the file
    .venv/bin/python deploy/scripts/freeze_requirements.py --check    # exit 1 if it is stale
    .venv/bin/python deploy/scripts/freeze_requirements.py --check-wheels   # asks the package index

``--check-wheels`` asks the configured package index (``pip install --dry-run``, nothing is
installed) whether every pin exists as a wheel for the Pi (CPython 3.11, manylinux aarch64,
glibc <= 2.36 as on Bookworm); pyalsaaudio is exempt (an sdist: it builds on the Pi).

It reads ``[project] dependencies`` of pyproject.toml (no extras: no torch), follows each
requirement through the installed distributions' metadata (``importlib.metadata``), keeps the
requirements whose environment markers hold on a Raspberry Pi 4 (Linux, aarch64, CPython 3.11) or
an x86_64 Debian host (the converge test's chroot), and writes one ``name==version`` line per
distribution to deploy/roles/soundscape_agent/files/requirements.txt (a line needed on one of the
two machines only carries a ``platform_machine`` marker), each with the sha256 of every file the
package index publishes for that version (``--hash=sha256:...``, from the index's simple page, PEP
503: ``$PIP_INDEX_URL`` or https://pypi.org/simple). The role installs them with
``--require-hashes``: a file that differs from what was pinned here is refused. The project itself
is not listed: the role installs it from a wheel built on the control node. Only the index pages
are read; no package is downloaded. ``--check`` compares names and versions only (offline).
"""

from __future__ import annotations

import argparse
import html.parser
import importlib.metadata as md
import os
import re
import ssl
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "deploy" / "roles" / "soundscape_agent" / "files" / "requirements.txt"
TARGETS = ("aarch64", "x86_64")
# Distributions published as source only: they build on the Pi (build-essential, headers).
SDIST_ONLY = ("pyalsaaudio",)


def _environment(machine: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython", "implementation_version": "3.11.2", "os_name": "posix",
        "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
        "platform_system": "Linux", "platform_version": "", "python_full_version": "3.11.2",
        "python_version": "3.11", "sys_platform": "linux", "extra": "",
    }


def closure(dependencies: list[str], machine: str) -> dict[str, str]:
    """``{canonical name: installed version}`` of every distribution ``dependencies`` pull in."""
    env = _environment(machine)
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Requirement, frozenset[str]]] = [(Requirement(d), frozenset()) for d in dependencies]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in (parent_extras or {""})):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"freeze_requirements: {req.name} (needed by the core dependencies) is not installed "
                     f"in {sys.prefix}; install the project there first (pip install -e .)")
        if not req.specifier.contains(version, prereleases=True):
            sys.exit(f"freeze_requirements: installed {req.name} {version} does not satisfy {req}")
        found[name] = version
        for sub in md.requires(req.name) or []:
            todo.append((Requirement(sub), frozenset(req.extras)))
    return found


class _Links(html.parser.HTMLParser):
    """The ``href`` of every ``<a>`` of a PEP 503 simple page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def index_hashes(name: str, version: str, index: str) -> list[str]:
    """sha256 of every file the index publishes for ``name`` ``version`` (wheels and sdist), sorted.

    Raises:
        SystemExit: the page cannot be read, or it lists no file of that version with a sha256.
    """
    url = f"{index.rstrip('/')}/{canonicalize_name(name)}/"
    cafile = os.environ.get("PIP_CERT") or None
    try:
        with urllib.request.urlopen(url, timeout=60, context=ssl.create_default_context(cafile=cafile)) as resp:
            page = resp.read().decode("utf-8", "replace")
    except OSError as e:
        sys.exit(f"freeze_requirements: cannot read {url}: {e}")
    links = _Links()
    links.feed(page)
    # file names normalise the project name (PEP 427 / PEP 625): compare canonically
    name_re = "[-_.]".join(re.escape(part) for part in canonicalize_name(name).split("-"))
    stem = re.compile(rf"^{name_re}-{re.escape(version)}" r"(-|\.tar\.gz$|\.zip$)", re.IGNORECASE)
    found = sorted({m.group(1) for href in links.hrefs
                    if stem.match(href.rsplit("/", 1)[-1].split("#", 1)[0])
                    and (m := re.search(r"#sha256=([0-9a-f]{64})", href))})
    if not found:
        sys.exit(f"freeze_requirements: {url} lists no file of {name} {version} with a sha256")
    return found


def render(pyproject: Path, index: str | None = None) -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    per_target = {m: closure(project["dependencies"], m) for m in TARGETS}
    names = sorted(set().union(*per_target.values()))
    lines = [
        "# Pinned run-time dependencies of soundscape-agent on the Pi (core install: no torch).",
        "# GENERATED by deploy/scripts/freeze_requirements.py from pyproject.toml's [project] dependencies",
        "# and the versions installed in the development virtualenv; do not edit by hand. Regenerate with",
        "#   .venv/bin/python deploy/scripts/freeze_requirements.py",
        "# The role installs these with `pip install --no-deps --require-hashes -r` (each file must match a",
        "# hash below, as the package index published it), then the agent's wheel with --no-deps, then runs",
        "# `pip check`: a dependency missing here fails the deployment instead of floating.",
    ]
    pins: list[tuple[str, str, str]] = []  # (name, version, marker)
    for name in names:
        versions = {per_target[m].get(name) for m in TARGETS}
        if len(versions) != 1:
            pins += [(name, per_target[m][name], f' ; platform_machine == "{m}"')
                     for m in TARGETS if name in per_target[m]]
        else:
            pins.append((name, str(versions.pop()), ""))
    for name, version, marker in pins:
        if index is None:
            lines.append(f"{name}=={version}{marker}")
        else:
            hashes = index_hashes(name, version, index)
            lines.append(f"{name}=={version}{marker} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes))
    return "\n".join(lines) + "\n"


def pins_of(text: str) -> list[str]:
    """The ``name==version[ ; marker]`` lines of a requirements text, without hashes or comments."""
    joined = text.replace("\\\n", " ")
    return [re.sub(r"\s+--hash=\S+", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def check_wheels(requirements: Path, machine: str = "aarch64") -> int:
    """pip's verdict on whether every pin (but the sdist-only ones) has a wheel for the Pi."""
    pins = [line.split(";")[0].strip() for line in pins_of(requirements.read_text(encoding="utf-8"))
            if (";" not in line or machine in line) and not line.startswith(SDIST_ONLY)]
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)] + [f"manylinux2014_{machine}"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "--target", tmp, "--disable-pip-version-check", "--quiet"]
        for platform in platforms:
            cmd += ["--platform", platform]
        proc = subprocess.run(cmd + pins, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(f"some pins have no CPython 3.11 {machine} wheel:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        return 1
    print(f"every pin but {', '.join(SDIST_ONLY)} has a CPython 3.11 manylinux {machine} wheel")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    p.add_argument("--check-wheels", action="store_true",
                   help="ask the package index whether every pin of --out has an aarch64 wheel")
    args = p.parse_args(argv)
    if args.check_wheels:
        return check_wheels(args.out)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if pins_of(current) != pins_of(render(args.pyproject)):
            print(f"{args.out} is stale; regenerate it with {Path(sys.argv[0]).name}", file=sys.stderr)
            return 1
        return 0
    index = os.environ.get("PIP_INDEX_URL", "").strip() or "https://pypi.org/simple"
    text = render(args.pyproject, index)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(pins_of(text))} pins with their sha256 from {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
