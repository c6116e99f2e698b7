"""The service as deployed: the Ansible role converged into a booted Debian Bookworm, the
hardened unit run by a real systemd (PID 1 of the container), the way a Pi runs it.

The debootstrap tree of the deploy test is booted with ``systemd-nspawn -b`` (never systemd
against this machine's own root: its boot clean-up would empty the system temporary
directory). Ansible reaches it through ``community.docker.nsenter`` (the container's PID 1),
``site.yml`` installs the real role (user, release with its virtualenv, unit, config,
credential, model) and its health gate runs. The container shares the host's network, so the
test's PostgreSQL (provisioned by ``db.yml``) is at 127.0.0.1. The capture device is an ALSA
``type file`` PCM reading a FIFO that this test feeds with real recordings in real time, so the
test decides when audio stops.

What it shows, in order: the converge and its idempotent rerun; ``READY=1`` within
``TimeoutStartSec``, the ``STATUS=`` line, the journal; windows synced with the clock state the
kernel reports (the kernel is set synchronised for the module, so ProtectClock's denial would
show as ``false``); the node-exporter textfile readable by another user; ``diagnose`` inside the
container; ``kill -9`` and a stalled capture (watchdog) both restarted by systemd with nothing
lost or duplicated; a local-only install (no database, no credential); a broken release rolled
back by the role; ``systemctl stop`` with the final sync and exit status 0.

Needs root, ``debootstrap``, ``systemd-nspawn`` (Debian: systemd-container) and the package
registries (apt and PyPI inside the container).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.audio import real_audio_s16
from tests.deploykit import (
    DEVICE,
    EXAMPLE,
    changed_tasks,
    device_inventory,
    extract_tree,
    pip_environment,
    playbook,
    recap,
    remove_tree,
    require_root_and_debootstrap,
    run,
    tail,
    write_yaml,
)
from tests.kernelclock import kernel_clock_synchronised, kernel_synchronised

pytestmark = pytest.mark.service

MACHINE = "soundscape-service-test"
DEVICE_ID = "audiomoth-eth-01"  # the example inventory's device id of DEVICE
RATE = 16000
PERIOD = 1600  # frames: 0.1 s
PCM = "soundscape_test"
FIFO = "srv/soundscape-test/audio.fifo"  # in the tree
TEXTFILE = "/var/lib/prometheus/node-exporter/soundscape_agent.prom"
UNIT = "soundscape-agent.service"
DBNAME = "soundscape_service"  # a database of its own: the deploy test writes test rows for the same device
CLI = "/opt/soundscape-agent/current/venv/bin/soundscape-agent"
QUEUE = "var/lib/soundscape-agent/queue.db"  # in the tree
WATCHDOG_DROPIN = "etc/systemd/system/soundscape-agent.service.d/50-test-watchdog.conf"


@pytest.fixture(scope="module", autouse=True)
def synchronised_kernel_clock() -> Iterator[None]:
    """The kernel's clock marked NTP-synchronised for the module, then put back. With the clock
    unsynchronised, a unit that cannot read the state would store the same false."""
    with kernel_synchronised(True):
        assert kernel_clock_synchronised()
        yield


# ------------------------------------------------------------------------------ the container


class Container:
    """A Debian tree booted with ``systemd-nspawn -b`` (systemd as PID 1), sharing the host's
    network; commands run in it through nsenter, as Ansible's nsenter connection does."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def boot(self, timeout: float = 120) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                # --register=no --keep-unit: no machined or system bus on the host;
                # adjtimex/clock_adjtime: nspawn's own filter denies reading the clock state
                # too unless allowed (setting it still needs CAP_SYS_TIME, which it drops).
                ["systemd-nspawn", "-q", "-D", str(self.root), "-b", "-M", MACHINE, "--register=no", "--keep-unit",
                 "--system-call-filter=adjtimex clock_adjtime"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the container did not boot:\n{self.log.read_text()[-4000:]}")
            self.pid = self._init_pid()
            time.sleep(0.2)
        state = self.exec("systemctl", "is-system-running", "--wait", timeout=timeout, check=False).stdout.strip()
        assert state in ("running", "degraded"), (state, self.exec("systemctl", "--failed", check=False).stdout)

    def _init_pid(self) -> int:
        """The container's PID 1 as the host sees it: systemd, a child of systemd-nspawn."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for pid in children:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        return 0

    def exec(self, *cmd: str, user: str | None = None, timeout: float = 120, check: bool = True,
             ) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", user, "--"] if user else []
        return run(["nsenter", "--ipc", "--mount", "--net", "--pid", "--uts", f"--target={self.pid}", "--",
                    "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                    *prefix, *cmd], timeout=timeout, check=check)

    def show(self, *props: str) -> dict[str, str]:
        out = self.exec("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        """The unit's journal in the container (systemd's lines and the agent's)."""
        return self.exec("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                st = self.exec("systemctl", "status", UNIT, "--no-pager", "-n", "40", check=False).stdout
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{st}")
            time.sleep(poll)

    def poweroff(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.pid:
            subprocess.run(["nsenter", "--mount", "--pid", f"--target={self.pid}", "--", "systemctl", "poweroff"],
                           capture_output=True, timeout=60)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=60)


class AudioFeeder(threading.Thread):
    """Writes real recordings into the FIFO in real time, one ALSA period at a time, like a
    microphone: what no one reads in time is dropped (non-blocking writes), nothing piles up.
    ``pause()`` stops the audio without closing the FIFO (the reader blocks: a stalled device)."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # never EOF for the reader, never blocks here
        self.audio = real_audio_s16(RATE, 60).tobytes()
        self.flowing = threading.Event()
        self.flowing.set()
        self.stopping = threading.Event()
        self.written = 0

    def run(self) -> None:
        step, pos, t = PERIOD * 2, 0, time.monotonic()
        while not self.stopping.is_set():
            t += PERIOD / RATE
            time.sleep(max(0.0, t - time.monotonic()))
            if not self.flowing.is_set():
                continue
            chunk = self.audio[pos:pos + step]
            pos = (pos + step) % (len(self.audio) - step)
            try:
                self.written += os.write(self.fd, chunk)
            except BlockingIOError:
                pass  # nobody reading: the sound is gone, as it would be

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.stopping.set()
        self.join(5)
        os.close(self.fd)


@pytest.fixture(scope="module")
def container(tmp_path_factory) -> Iterator[Container]:
    require_root_and_debootstrap("the service test (systemd-nspawn)")
    if not shutil.which("systemd-nspawn"):
        pytest.fail("systemd-nspawn is not installed (Debian: apt-get install -y systemd-container)", pytrace=False)
    base = tmp_path_factory.mktemp("service")
    root = base / "rootfs"
    box = Container(root, base / "console.log")
    try:
        extract_tree(root)
        (root / "etc" / "hostname").write_text(f"{MACHINE}\n")
        fifo = root / FIFO
        fifo.parent.mkdir(parents=True)
        os.mkfifo(fifo, 0o644)
        # the agent's capture device: the FIFO behind an ALSA file PCM (libasound reads
        # /etc/asound.conf); a null slave, so the FIFO alone paces the capture
        (root / "etc" / "asound.conf").write_text(
            f'pcm.{PCM} {{\n type file\n slave.pcm "null"\n file "/dev/null"\n infile "/{FIFO}"\n format "raw"\n}}\n')
        box.boot()
        yield box
    finally:
        box.poweroff()
        remove_tree(root)


@pytest.fixture(scope="module")
def feeder(container) -> Iterator[AudioFeeder]:
    f = AudioFeeder(container.root / FIFO)
    f.start()
    yield f
    f.close()


@pytest.fixture(scope="module")
def inventory(container, tmp_path_factory) -> Path:
    """The example inventory's vars, with DEVICE reached through nsenter into the container."""
    return device_inventory(tmp_path_factory.mktemp("inventory"), {
        "ansible_connection": "community.docker.nsenter", "ansible_nsenter_pid": container.pid,
        # nsenter runs as root; the example's `pi` does not exist in the container
        "ansible_user": "root"})


@pytest.fixture(scope="module")
def service_db(db_overrides, vault_file, tmp_path_factory) -> dict:
    """db.yml against the test server, for a database of this module's own; its variables."""
    tmp = tmp_path_factory.mktemp("db")
    settings = {**db_overrides, "soundscape_db_name": DBNAME}
    extra = write_yaml(tmp / "overrides.yml", settings)
    r = playbook("db.yml", "-i", EXAMPLE / "hosts.yml", "--vault-password-file", vault_file, "-e", f"@{extra}",
                 log=tmp / "db.log", timeout=600)
    assert r.returncode == 0, tail(r)
    return settings


@pytest.fixture(scope="module")
def device_vars(model_export, service_db, tmp_path_factory) -> dict:
    return {
        **{k: v for k, v in service_db.items() if not k.startswith("soundscape_db_admin")},
        "soundscape_agent_model_dir": str(model_export),
        "soundscape_agent_model_allow_scaffold": True,
        "soundscape_agent_build_dir": str(tmp_path_factory.mktemp("build")),
        "soundscape_agent_pip_environment": pip_environment(),
        "soundscape_agent_capture_pcm": PCM,
        "soundscape_agent_sample_rate": RATE,
        "soundscape_agent_heartbeat_interval_s": 5,
        "soundscape_agent_textfile_path": TEXTFILE,
        "soundscape_agent_config_extra": {
            "capture": {"period_frames": PERIOD},
            "windows": {"length_s": 2.0},
            "sync": {"interval_s": 2.0, "backoff_initial_s": 1.0, "backoff_max_s": 2.0},
        },
        "soundscape_agent_health_retries": 2,
        "soundscape_agent_health_delay_s": 5,
    }


class Deployer:
    def __init__(self, inventory: Path, vault_file: Path, base: dict, tmp: Path) -> None:
        self.inventory, self.vault_file, self.base, self.tmp, self.n = inventory, vault_file, base, tmp, 0

    def __call__(self, **overrides) -> subprocess.CompletedProcess:
        self.n += 1
        extra = write_yaml(self.tmp / f"vars-{self.n}.yml", {**self.base, **overrides})
        return playbook("site.yml", "-i", self.inventory, "--vault-password-file", self.vault_file,
                        "-e", f"@{extra}", log=self.tmp / f"site-{self.n}.log", timeout=1800)


@pytest.fixture(scope="module")
def deploy(inventory, vault_file, device_vars, feeder, tmp_path_factory) -> Deployer:
    return Deployer(inventory, vault_file, device_vars, tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def deployed(deploy) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess | None]:
    first = deploy()
    second = deploy() if first.returncode == 0 else None
    return first, second


@pytest.fixture(scope="module")
def device_dsn(pg_server, service_db) -> str:
    """The central database db.yml provisioned, read as the admin for the checks."""
    return pg_server.dsn(dbname=DBNAME)


def server_windows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT window_key, start_time, clock_synchronised FROM windows WHERE device = %s"
                           " ORDER BY start_time", (DEVICE_ID,)).fetchall()


def local_windows(container: Container) -> list[tuple]:
    """(window_key, synced_at) of every window in the device's queue (read only, beside the writer)."""
    con = sqlite3.connect(f"file:{container.root / QUEUE}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT key, synced_at FROM windows ORDER BY key").fetchall()
    finally:
        con.close()


def active(container: Container) -> bool:
    p = container.show("ActiveState", "SubState")
    return p["ActiveState"] == "active" and p["SubState"] == "running"


def require(deployed):
    first, second = deployed
    assert first.returncode == 0, f"the first converge failed:\n{tail(first)}"
    assert second is not None and second.returncode == 0, f"the second converge failed:\n{tail(second)}"


# ------------------------------------------------------------------------------------- tests


def test_site_converges_into_the_booted_system_then_changes_nothing(deployed, container):
    first, second = deployed
    require(deployed)
    assert recap(first)[DEVICE]["changed"] > 0 and recap(first)[DEVICE]["failed"] == 0
    assert f"{DEVICE} is healthy (diagnose status ok" in first.stdout, tail(first)
    assert recap(second)[DEVICE]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert active(container)


def test_ready_within_timeout_status_line_and_journal(deployed, container):
    require(deployed)
    p = container.show("Type", "TimeoutStartUSec", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                       "StatusText", "NRestarts", "User")
    assert p["Type"] == "notify" and p["User"] == "soundscape"
    # Type=notify: active only once the agent sent READY=1, within TimeoutStartSec
    ready_s = (int(p["ActiveEnterTimestampMonotonic"]) - int(p["ExecMainStartTimestampMonotonic"])) / 1e6
    assert 0 < ready_s <= 180, p
    status = container.exec("systemctl", "status", UNIT, "--no-pager", check=False).stdout
    assert re.search(r"Status: \"\d+ windows \(", status), status
    assert re.match(r"\d+ windows \(", p["StatusText"]), p
    journal = container.journal()
    assert "Started soundscape-agent.service" in journal, journal[-3000:]
    # the agent's own output, under its SyslogIdentifier: one line per stored window
    agent_lines = container.exec("journalctl", "-u", UNIT, "-t", "soundscape-agent", "-o", "cat", "--no-pager").stdout
    assert re.search(r"^window +\d+ ", agent_lines, re.M), agent_lines[-3000:]


def test_windows_synced_with_the_clock_state_the_kernel_reports(deployed, container, device_dsn):
    require(deployed)
    container.wait_for(lambda: len(server_windows(device_dsn)) >= 4, 120, "4 windows in PostgreSQL")
    kernel = kernel_clock_synchronised()
    assert kernel is True  # set for the module: a unit that cannot read it would store false
    stored = {row[2] for row in server_windows(device_dsn)}
    assert stored == {kernel}, f"clock_synchronised stored {stored}, the kernel says {kernel}"
    with psycopg.connect(device_dsn) as con:
        beats = {r[0] for r in con.execute("SELECT clock_synchronised FROM heartbeats WHERE device = %s", (DEVICE_ID,))}
    assert beats == {kernel}
    assert "cannot read the clock" not in container.journal()


def test_textfile_written_and_readable_by_another_user(deployed, container):
    require(deployed)
    path = container.root / TEXTFILE.lstrip("/")
    container.wait_for(path.exists, 60, "the node-exporter textfile")
    assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    text = container.exec("cat", TEXTFILE, user="nobody").stdout
    assert f'soundscape_agent_windows_total{{device="{DEVICE_ID}"}}' in text, text
    assert f'soundscape_agent_clock_synchronised{{device="{DEVICE_ID}"}} 1' in text, text


def test_diagnose_inside_the_container_agrees_with_the_service(deployed, container, device_dsn):
    require(deployed)
    r = container.exec(CLI, "diagnose", "--json", "--config", "/etc/soundscape-agent/agent.toml",
                       user="soundscape", check=False, timeout=300)
    report = json.loads(r.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert checks["clock"]["value"] is True
    assert {row[2] for row in server_windows(device_dsn)} == {checks["clock"]["value"]}
    assert checks["postgres"]["status"] == "ok", checks["postgres"]


def _restarted(container: Container, before: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        p = container.show("NRestarts", "MainPID", "ActiveState", "SubState")
        return (int(p["NRestarts"]) > int(before["NRestarts"]) and p["MainPID"] not in ("0", before["MainPID"])
                and p["ActiveState"] == "active" and p["SubState"] == "running")
    return check


def _no_duplicates(dsn: str) -> None:
    rows = server_windows(dsn)
    starts = [r[1] for r in rows]
    assert len(starts) == len(set(starts)), "a window was stored twice under different keys"


def test_kill_9_is_restarted_and_nothing_is_lost_or_duplicated(deployed, container, device_dsn):
    require(deployed)
    before = container.show("NRestarts", "MainPID")
    committed = {k for k, _ in local_windows(container)}
    container.exec("systemctl", "kill", "-s", "KILL", UNIT)
    container.wait_for(_restarted(container, before), 120, "systemd to restart the agent (Restart=always)")
    seen = len(server_windows(device_dsn))
    container.wait_for(lambda: len(server_windows(device_dsn)) >= seen + 3, 120, "three more windows synced")
    container.wait_for(lambda: committed <= {r[0] for r in server_windows(device_dsn)}, 60,
                       "every window committed before the kill in PostgreSQL")
    _no_duplicates(device_dsn)
    assert "status=9/KILL" in container.journal()


def test_stalled_capture_stops_the_watchdog_and_systemd_restarts_the_agent(deployed, container, feeder, device_dsn):
    require(deployed)
    dropin = container.root / WATCHDOG_DROPIN
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=8s\n")
    try:
        container.exec("systemctl", "daemon-reload")
        container.exec("systemctl", "restart", UNIT, timeout=200)
        assert container.show("WatchdogUSec")["WatchdogUSec"] in ("8s", "8000000")
        before = container.show("NRestarts", "MainPID")
        time.sleep(4)  # pings flow while audio does
        assert container.show("NRestarts")["NRestarts"] == before["NRestarts"]
        feeder.pause()
        container.wait_for(lambda: "Watchdog timeout" in container.journal(), 60, "systemd's watchdog timeout")
        feeder.resume()
        container.wait_for(_restarted(container, before), 120, "the restart after the watchdog timeout")
        journal = container.journal()
        assert "capture stalled" in journal
        seen = len(server_windows(device_dsn))
        container.wait_for(lambda: len(server_windows(device_dsn)) >= seen + 2, 120, "windows synced again")
        _no_duplicates(device_dsn)
    finally:
        feeder.resume()
        dropin.unlink(missing_ok=True)
        container.exec("systemctl", "daemon-reload")
        container.exec("systemctl", "restart", UNIT, timeout=200, check=False)


def test_local_only_install_starts_without_a_credential(deployed, deploy, container):
    require(deployed)
    r = deploy(soundscape_db_host="")
    assert r.returncode == 0, tail(r)
    assert 'dsn = ""' in (container.root / "opt/soundscape-agent/current/agent.toml").read_text()
    # the role removed the password after the gate; the next start (a reboot) has no credential file
    assert not (container.root / "etc/credstore/soundscape-agent.pg-password").exists()
    container.exec("systemctl", "restart", UNIT, timeout=200, check=False)
    container.wait_for(lambda: active(container) or "243/CREDENTIALS" in container.journal(), 60, "the restart")
    assert "243/CREDENTIALS" not in container.journal(), container.journal()[-3000:]
    assert active(container) and container.show("Result")["Result"] == "success"


def test_broken_release_is_rolled_back_and_the_previous_one_syncs(deployed, deploy, container, device_dsn):
    require(deployed)
    good = deploy()  # back to the database release (the local-only one becomes previous)
    assert good.returncode == 0, tail(good)
    current = container.root / "opt/soundscape-agent/current"
    good_release = os.readlink(current)
    seen = len(server_windows(device_dsn))
    broken = deploy(soundscape_agent_capture_pcm="soundscape_missing_device")
    assert broken.returncode != 0 and recap(broken)[DEVICE]["failed"] == 1, tail(broken)
    m = re.search(r"release ([0-9a-f]{12}) failed its health gate and was\s+rolled back to release ([0-9a-f]{12}), "
                  r"which is running and healthy", broken.stdout)
    assert m, tail(broken)
    assert f"releases/{m.group(2)}" == good_release and os.readlink(current) == good_release
    assert (container.root / "opt/soundscape-agent/releases" / m.group(1) / "FAILED").is_file()
    assert "soundscape_missing_device" not in (current / "agent.toml").read_text()
    assert active(container)
    container.wait_for(lambda: len(server_windows(device_dsn)) >= seen + 3, 120,
                       "the previous release syncing windows again")
    _no_duplicates(device_dsn)


def test_stop_runs_the_final_sync_and_exits_0(deployed, container, device_dsn):
    require(deployed)
    container.wait_for(lambda: active(container), 120, "the service running")
    container.exec("systemctl", "stop", UNIT, timeout=120)
    p = container.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert p["ActiveState"] == "inactive" and p["Result"] == "success" and p["ExecMainStatus"] == "0", p
    # the agent's last line: the window in hand at SIGTERM was committed, the final sync sent it
    assert re.search(r"done: \d+ windows .*; queue: 0 of \d+ windows not yet synced", container.journal()), \
        container.journal()[-3000:]
    local = local_windows(container)
    assert local and all(synced for _, synced in local), "windows left unsynced after the final sync"
    remote = {r[0] for r in server_windows(device_dsn)}
    assert {k for k, _ in local} <= remote
    _no_duplicates(device_dsn)
