"""Shared by the deployment tests (tests/test_deploy.py: a debootstrap chroot; tests/test_systemd.py:
the same Bookworm tree booted with systemd as PID 1): ansible-playbook runs, the example vault,
a real model export, the Debian Bookworm root file system (debootstrap, cached as a tarball) and
the central database provisioned by db.yml.

Needs root, ``debootstrap`` and network access to deb.debian.org and PyPI. The debootstrap
result is cached in ``~/.cache/soundscape-agent/deploy-test`` (``$SOUNDSCAPE_DEPLOY_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "inventory" / "example"
ROLE = DEPLOY / "roles" / "soundscape_agent"
BIN = Path(sys.executable).parent
VAULT_PASSWORD = "soundscape-example-vault"  # the example vault's documented password

CACHE = Path(os.environ.get("SOUNDSCAPE_DEPLOY_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soundscape-agent" / "deploy-test")
SUITE = "bookworm"
MIRROR = os.environ.get("SOUNDSCAPE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What Raspberry Pi OS Lite has and the role relies on without installing it.
BASE_PACKAGES = ("python3", "systemd", "sudo")
DEVICE = "pi-eth-01"  # the example host the chroot plays

RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
                   r"\s+ignored=(?P<ignored>\d+)", re.M)


# ------------------------------------------------------------------------------------ helpers


def run(cmd, *, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` (bounded by ``timeout`` seconds), capturing text output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
    return proc


def ansible_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(DEPLOY / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def playbook(*args, log: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``ansible-playbook ARGS`` from deploy/; the output is also written to ``log``."""
    proc = run([BIN / "ansible-playbook", *args], timeout=timeout, check=False, cwd=DEPLOY, env=ansible_env())
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """The PLAY RECAP lines: ``{host: {ok, changed, unreachable, failed, ...}}``."""
    found = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
             for m in RECAP.finditer(proc.stdout)}
    assert found, f"no PLAY RECAP in the output:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return found


def tail(proc: subprocess.CompletedProcess, n: int = 6000) -> str:
    return f"{proc.stdout[-n:]}\n--- stderr ---\n{proc.stderr[-2000:]}"


def changed_tasks(proc: subprocess.CompletedProcess) -> list[str]:
    """Names of the tasks that reported a change (to explain a non-idempotent run)."""
    names, current = [], None
    for line in proc.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and current and current not in names:
            names.append(current)
    return names


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path



# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def vault_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("vault") / "password"
    f.write_text(VAULT_PASSWORD + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture(scope="session")
def vault(vault_file) -> dict:
    """The example vault's secrets, decrypted with ansible-vault."""
    import yaml

    out = run([BIN / "ansible-vault", "view", "--vault-password-file", vault_file,
               EXAMPLE / "group_vars" / "all" / "vault.yml"], timeout=60, env=ansible_env())
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="session")
def model_export(tmp_path_factory) -> Path:
    """A real model export (tiny scaffold → `model export`, int8 + manifest), made once."""
    base = tmp_path_factory.mktemp("model")
    cli = BIN / "soundscape-agent"
    run([cli, "model", "scaffold", "--tiny", "--out", base / "scaffold"], timeout=600)
    run([cli, "model", "export", "--model", base / "scaffold", "--out", base / "tiny-int8"], timeout=900)
    return base / "tiny-int8"


@pytest.fixture(scope="session")
def db_overrides(pg_server, tmp_path_factory) -> dict:
    """Point the example inventory's database settings at the test server."""
    return {
        "soundscape_db_host": "127.0.0.1",
        "soundscape_db_port": pg_server.port,
        "soundscape_db_sslmode": "disable",
        "soundscape_db_admin_user": "admin",
        "soundscape_db_admin_password": "admin-secret-pw",
    }


@pytest.fixture(scope="session")
def provisioned_db(db_overrides, vault_file, tmp_path_factory):
    """db.yml run twice against the test server: (first run, second run)."""
    tmp = tmp_path_factory.mktemp("db")
    extra = write_yaml(tmp / "overrides.yml", db_overrides)
    args = ["db.yml", "-i", EXAMPLE / "hosts.yml", "--vault-password-file", vault_file, "-e", f"@{extra}"]
    first = playbook(*args, log=tmp / "db-1.log", timeout=600)
    second = playbook(*args, log=tmp / "db-2.log", timeout=600) if first.returncode == 0 else None
    return first, second



# ------------------------------------------------------------------------ the Debian tree


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return points


def _umount_all(root: Path) -> None:
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


def remove_tree(root: Path) -> None:
    """Delete a chroot, never following a mount into the host (refuses while one remains)."""
    _umount_all(root)
    left = _mounts_under(root)
    if left:
        raise RuntimeError(f"not deleting {root}: still mounted: {left}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True, timeout=300)


def _rootfs_tarball() -> Path:
    """A Debian Bookworm minbase (+ BASE_PACKAGES) tarball, from the cache or made now."""
    arch = run(["dpkg", "--print-architecture"], timeout=30).stdout.strip()
    key = hashlib.sha256(repr((SUITE, arch, MIRROR, BASE_PACKAGES, "minbase")).encode()).hexdigest()[:12]
    tarball = CACHE / f"debian-{SUITE}-{arch}-minbase-{key}.tar.gz"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f".build-{os.getpid()}"
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, work, MIRROR],
            timeout=1200)
        for deb in (work / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        partial = CACHE / f".{tarball.name}.{os.getpid()}.partial"
        run(["tar", "-C", work, "--numeric-owner", "-czf", partial, "."], timeout=900)
        os.replace(partial, tarball)
    finally:
        remove_tree(work)
    return tarball



def extract_tree(root: Path) -> Path:
    """A fresh Debian Bookworm root at ``root`` (created), from the cached tarball, with the
    host's resolv.conf and local CA certificates (a TLS-intercepting proxy's)."""
    root.mkdir(parents=True)
    run(["tar", "-C", root, "--numeric-owner", "-xzf", _rootfs_tarball()], timeout=600)
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    local_ca = root / "usr" / "local" / "share" / "ca-certificates"
    local_ca.mkdir(parents=True, exist_ok=True)
    for crt in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        shutil.copyfile(crt, local_ca / crt.name)
    return root


def require_root_and_debootstrap(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root", pytrace=False)
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is not installed (Debian: apt-get install -y debootstrap)", pytrace=False)


def pip_environment() -> dict[str, str]:
    """soundscape_agent_pip_environment for a device in the tree: the system CA bundle, and the
    host's package index when it has one."""
    env = {"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"}
    if os.environ.get("PIP_INDEX_URL", "").startswith(("http://", "https://")):
        env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
    return env


def require_pair(run_pair):
    """A (first, second) pair of playbook runs: both must have passed."""
    first, second = run_pair
    assert first.returncode == 0, tail(first)
    assert second is not None and second.returncode == 0, tail(second)
    return first, second


def device_inventory(inv: Path, connection: dict[str, object]) -> Path:
    """An inventory at ``inv`` with the example's group and host vars, DEVICE in the ethernet
    group reached with ``connection`` (ansible_connection and its settings); its hosts.yml."""
    shutil.copytree(EXAMPLE / "group_vars", inv / "group_vars")
    (inv / "host_vars").mkdir()
    shutil.copyfile(EXAMPLE / "host_vars" / f"{DEVICE}.yml", inv / "host_vars" / f"{DEVICE}.yml")
    host = {"ansible_python_interpreter": "/usr/bin/python3", **connection}
    return write_yaml(inv / "hosts.yml", {"soundscape_agents": {"children": {"ethernet": {"hosts": {DEVICE: host}}}}})

