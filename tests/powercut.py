"""A disk with a volatile write cache for the fault ``power_cut`` (tests/test_faults_power.py).

``kill -9`` leaves the kernel's page cache intact, so a queue that never calls ``fsync``
(SQLite ``synchronous=OFF``) survives it. A power cut does not leave it: the writes still in
a cache are gone. :class:`VolatileDisk` mounts ``tests/powercut_fs.py``, a FUSE filesystem
that keeps every change in memory until ``fsync``/``fdatasync`` of that file (or ``fsync`` of
its directory, for creates, unlinks and renames) puts it on a backing directory, the platter;
:meth:`VolatileDisk.cut` drops every change not synced by then and fails every later request,
and the next :meth:`VolatileDisk.mount` (a new filesystem process, a new kernel mount with
empty caches) shows the platter alone: what a restarted machine finds.

The filesystem runs in its own process under Debian's ``/usr/bin/python3``, which has
``python3-pyfuse3`` (the venv's interpreter is another build and cannot import Debian's
extension module; scripts/bootstrap.sh installs ``python3-pyfuse3`` and ``fuse3``). That it
is a separate process is the point anyway: its cache outlives the agent it is cut under.
It needs ``/dev/fuse`` and the right to mount (root).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

FS_SCRIPT = Path(__file__).resolve().with_name("powercut_fs.py")
#: Debian's interpreter, the one ``python3-pyfuse3`` is built for.
SYSTEM_PYTHON = "/usr/bin/python3"


def unavailable() -> str | None:
    """Why this machine cannot run the volatile disk (None when it can)."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if os.geteuid() != 0:
        return "mounting the FUSE filesystem needs root"
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import pyfuse3, trio"], capture_output=True, text=True)
    if r.returncode != 0:
        return (f"{SYSTEM_PYTHON} cannot import pyfuse3 ({r.stderr.strip().splitlines()[-1:]}): "
                "apt-get install python3-pyfuse3 fuse3 (scripts/bootstrap.sh does)")
    return None


class VolatileDisk:
    """The FUSE filesystem of ``tests/powercut_fs.py`` mounted at ``mountpoint`` over ``platter``.

    Args:
        platter: the backing directory (the durable state; created if missing).
        mountpoint: where to mount it (created if missing).
        logdir: where the filesystem's stderr goes (``powercut-fs-<n>.err``).
    """

    def __init__(self, platter: Path, mountpoint: Path, logdir: Path) -> None:
        self.platter, self.mountpoint, self.logdir = platter, mountpoint, logdir
        platter.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None
        self.mounts = 0
        self._answers: queue.Queue[dict] = queue.Queue()

    # -- the filesystem process ------------------------------------------------------------------

    def mount(self, timeout: float = 30) -> dict:
        """Start a filesystem process on the platter; return its ready line (files found,
        orphaned inodes removed)."""
        assert self.proc is None, "already mounted"
        self.mounts += 1
        err = open(self.logdir / f"powercut-fs-{self.mounts}.err", "w")
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(FS_SCRIPT), str(self.platter), str(self.mountpoint)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        self._answers = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self._answers), daemon=True).start()
        ready = self._answer(timeout, "the filesystem's ready line")
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            assert time.monotonic() < deadline, f"{self.mountpoint} is not mounted after {timeout:g} s"
            time.sleep(0.02)
        return ready

    @staticmethod
    def _read(proc: subprocess.Popen[str], answers: queue.Queue[dict]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            answers.put(json.loads(line))

    def _answer(self, timeout: float, what: str) -> dict:
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"powercut filesystem: no answer within {timeout:g} s ({what}); "
                                 f"its log: {self.logdir}/powercut-fs-{self.mounts}.err") from None

    def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None, "not mounted"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict:
        """The filesystem's counters (writes, fsyncs, bytes cached and persisted, ...)."""
        self._send("stats")
        return self._answer(10, "stats")

    def cut(self, keep: float = 0.0, seed: int = 0) -> dict:
        """The power cut: drop every change not synced (with ``keep`` > 0 each cached sector
        reaches the platter first with that probability); every later request fails with EIO.

        Returns:
            What was dropped (``unsynced_writes_dropped``, ``unsynced_bytes_dropped``, ...) and
            the counters; ``cut`` says what cut it (``command`` or an armed trigger).
        """
        self._send(f"cut {keep} {seed}")
        answer = self._answer(10, "cut")
        if answer.get("cut") not in ("command", "already"):
            # an armed trigger fired just before the command: that was the cut
            self._answer(10, "cut after a trigger")
        return answer

    def arm(self, trigger: str, n: int = 1) -> None:
        """Let the filesystem cut by itself: ``checkpoint`` at the next write to ``*.db``
        (SQLite copying WAL frames into the database), ``sync`` at the ``n``-th fsync of a
        ``*-wal`` file from now (a commit in progress), before that request is carried out."""
        self._send(f"arm {trigger} {n}")

    def wait_triggered(self, timeout: float) -> dict | None:
        """The answer of an armed trigger that fired within ``timeout`` s, else None."""
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            return None

    def unmount(self, timeout: float = 30) -> None:
        """Unmount (every process using the mount must be gone) and wait for the filesystem
        process to end. No sync happens: what was not synced or kept by a cut is lost."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while os.path.ismount(self.mountpoint):
            r = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
                break
            time.sleep(0.1)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        self.proc = None

    def cleanup(self) -> None:
        """Unmount whatever state it is in; remove nothing (the platter stays for a post-mortem)."""
        try:
            self.unmount(timeout=10)
        finally:
            if os.path.ismount(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()

    def platter_bytes(self) -> int:
        """Bytes of file data on the platter."""
        data = self.platter / "data"
        return sum(f.stat().st_size for f in data.iterdir()) if data.exists() else 0

    def wipe(self) -> None:
        """Forget the platter (unmounted only): a blank disk."""
        assert self.proc is None, "unmount first"
        shutil.rmtree(self.platter)
        self.platter.mkdir()
