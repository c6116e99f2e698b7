"""Fleet ingest benchmark: many devices deliver their queues to one PostgreSQL through the agent's
real ``Syncer`` and its real batches; the server's throughput, commit latency, CPU, WAL and
storage per device-day, measured in one run and written to ``benchmarks/results/fleet.json``
and ``fleet.md``.

What runs (docs: benchmarks/README.md, "Fleet ingest"):

1. A PostgreSQL of this machine's Debian package in a temporary cluster (tests/pg.py) with
   production durability (``fsync``, ``synchronous_commit``, ``full_page_writes`` on), the agent's
   schema (``db init``) and one LOGIN role per device with deploy/db.yml's grants and its
   ``device_roles`` row (row-level security on, as in the field).
2. Each device's outbox: a real SQLite queue (agent.store.Outbox) holding ``--hours`` of 10 s
   windows with ``--k`` AST detections each and a heartbeat every 5 min: one template queue is
   filled through ``Outbox.put`` / ``put_heartbeat``, then copied per device with its device id
   (window keys may repeat across devices: keys are scoped by device since schema 9).
3. The devices sync, ``--connections`` at a time (asyncio, one connection each, as the agent
   does: connect, schema check, batches of ``--batch-size``, COMMIT, mark locally), each with
   its own role and password, until every queue is empty.

Measured: wall time, rows inserted per second (windows, detections, heartbeats), the server
part of every commit (send + ``SELECT now()`` + COMMIT, what ``Syncer._commit_bounded`` times
out) at p50/p95/p99, the server's CPU seconds (every process of the ``postgres`` user, from
/proc), WAL bytes (``pg_wal_lsn_diff``), table + index bytes per device-day, and what a fleet of
``--fleet`` devices needs at its steady rate against what was reached.

Usage (from the repository root, main virtualenv):

    .venv/bin/python benchmarks/fleet.py                          # 1,000 devices, 1 h each
    .venv/bin/python benchmarks/fleet.py --devices 10000 --hours 0.25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pwd
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from agent.config import StoreConfig, SyncConfig  # noqa: E402
from agent.records import Heartbeat  # noqa: E402
from agent.store import Outbox  # noqa: E402
from agent.sync import Syncer, migrate  # noqa: E402
from tests.factories import make_result  # noqa: E402
from tests.pg import DEVICE_INSERT_TABLES, PgServer  # noqa: E402

WINDOW_S = 10.0  # the agent's default window
HEARTBEAT_S = 300.0  # [ops] heartbeat_interval_s default
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "shared_buffers": "512MB",
           "max_wal_size": "4GB", "checkpoint_timeout": "15min"}
PASSWORD = "fleet-device-pw"
TABLES = ("windows", "detections", "heartbeats", "gaps", "clock_steps")


class TimedSyncer(Syncer):
    """The agent's Syncer, unchanged, with the server part of each commit timed."""

    latencies: list[tuple[int, float]]

    async def _commit_bounded(self, conn, send, what, bound, where, params):  # type: ignore[override]
        t0 = time.perf_counter()
        result = await Syncer._commit_bounded(conn, send, what, bound, where, params)
        self.latencies.append((int(what.split()[0]), time.perf_counter() - t0))
        return result


def heartbeat(device: str, t: datetime, depth: int) -> Heartbeat:
    """A heartbeat as the agent takes it (plausible host values)."""
    return Heartbeat(heartbeat_id=str(uuid.uuid4()), device_id=device, time=t, uptime_s=3600.0, windows=360,
                     classified=360, skipped=0, failed=0, xruns=0, queue_depth=depth, oldest_unsynced_start=None,
                     last_sync_at=None, cpu_temp_c=52.5, throttled=0, throttle_flags=(), disk_free_bytes=20 * 10**9,
                     disk_total_bytes=32 * 10**9, clock_synchronised=True, rss_bytes=180 * 10**6,
                     peak_rss_bytes=210 * 10**6, model_id="MIT/ast-finetuned-audioset-10-10-0.4593",
                     model_hash="9f" * 32, agent_version="0.1.0")


async def fill_template(path: Path, hours: float, k: int, start: datetime) -> tuple[int, int, int]:
    """A queue of ``hours`` of windows (and heartbeats) for device ``TEMPLATE``; returns
    (windows, detections, heartbeats)."""
    n = int(hours * 3600 / WINDOW_S)
    beats = int(hours * 3600 / HEARTBEAT_S)
    async with Outbox(StoreConfig(path=path, reserve_mb=0)) as ob:
        for i in range(n):
            await ob.put(make_result(i, device="TEMPLATE", stream="s1", k=k,
                                     start=start + timedelta(seconds=WINDOW_S * i)))
        for j in range(beats):
            await ob.put_heartbeat(heartbeat("TEMPLATE", start + timedelta(seconds=HEARTBEAT_S * (j + 1)), n))
    return n, n * k, beats


def device_queue(template: Path, path: Path, device: str) -> None:
    """Copy the template queue for ``device`` (its rows carry the device id)."""
    shutil.copyfile(template, path)
    con = sqlite3.connect(path)
    try:
        con.execute("UPDATE windows SET device_id = ?", (device,))
        rows = con.execute("SELECT heartbeat_id, payload FROM heartbeats").fetchall()
        con.executemany("UPDATE heartbeats SET payload = ? WHERE heartbeat_id = ?",
                        [(json.dumps({**json.loads(p), "device_id": device, "heartbeat_id": str(uuid.uuid4())}), h)
                         for h, p in rows])
        con.commit()
    finally:
        con.close()


def provision(admin_dsn: str, devices: list[str]) -> dict[str, str]:
    """One LOGIN role per device with deploy/db.yml's grants (tests.pg.provision_device, in one
    session); returns device -> role."""
    db = psycopg.conninfo.conninfo_to_dict(admin_dsn)["dbname"]
    roles = {}
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        con.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        for device in devices:
            role = "sa_" + device.replace("-", "_")
            con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOINHERIT").format(
                sql.Identifier(role), sql.Literal(PASSWORD)))
            con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(role)))
            con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            con.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, DEVICE_INSERT_TABLES)), sql.Identifier(role)))
            con.execute(sql.SQL("GRANT SELECT ON schema_migrations TO {}").format(sql.Identifier(role)))
            con.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, %s)", (role, device))
            roles[device] = role
    return roles


def postgres_cpu_s() -> float:
    """CPU seconds (user + system) of every process of the ``postgres`` OS user and of the children they
    have reaped (the backends of closed connections), from /proc."""
    uid = pwd.getpwnam("postgres").pw_uid
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime (proc(5): fields 14-17); cutime/cstime hold the backends
            # the postmaster has reaped, whose own entries are gone
            total += sum(int(f) for f in fields[11:15])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def sync_fleet(server: PgServer, dbname: str, queues: dict[str, Path], roles: dict[str, str],
                     connections: int, batch_size: int) -> tuple[list[tuple[int, float]], int]:
    """Every device syncs its queue once to the end, ``connections`` at a time."""
    sem = asyncio.Semaphore(connections)
    latencies: list[tuple[int, float]] = []
    delivered = 0

    async def device(dev: str) -> None:
        nonlocal delivered
        async with sem:
            cfg = SyncConfig(dsn=server.dsn(dbname, user=roles[dev], password=PASSWORD), link="ethernet",
                             batch_size=batch_size, tls="off")
            async with Outbox(StoreConfig(path=queues[dev], reserve_mb=0)) as ob:
                syncer = TimedSyncer(cfg, ob)
                syncer.latencies = latencies
                n = await syncer.sync_once()
            delivered += n

    await asyncio.gather(*(device(d) for d in queues))
    return latencies, delivered


def server_figures(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as con:
        rows = {t: con.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                for t in TABLES}
        size = {t: con.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in TABLES}
        lsn = con.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    return {"rows": rows, "bytes": size, "lsn": lsn}


def git_commit() -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "benchmarks/fleet.py"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"commit": head or None, "dirty": bool(dirty)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=args.queue_dir))
    server = PgServer(settings={**DURABLE, "max_connections": str(args.connections + 20)})
    try:
        server.start()
        admin = server.create_database("fleet")
        migrate(admin)
        devices = [f"fleet-{i:05d}" for i in range(args.devices)]
        t0 = time.perf_counter()
        roles = provision(admin, devices)
        provision_s = time.perf_counter() - t0
        start = datetime(2026, 6, 1, tzinfo=timezone.utc)
        template = work / "template.db"
        windows, detections, beats = asyncio.run(fill_template(template, args.hours, args.k, start))
        queues = {}
        for d in devices:
            queues[d] = work / f"{d}.db"
            device_queue(template, queues[d], d)
        before = server_figures(admin)
        cpu0, client0, t0 = postgres_cpu_s(), time.process_time(), time.perf_counter()
        latencies, delivered = asyncio.run(sync_fleet(server, "fleet", queues, roles, args.connections,
                                                      args.batch_size))
        wall = time.perf_counter() - t0
        cpu1, client1 = postgres_cpu_s(), time.process_time()
        after = server_figures(admin)
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    inserted = {t: after["rows"][t] - before["rows"][t] for t in TABLES}
    rows = sum(inserted.values())
    device_days = args.devices * args.hours / 24
    window_lat = [s for n, s in latencies if n == args.batch_size] or [s for _, s in latencies]
    # steady state of a fleet: one window per WINDOW_S per device, k detections each, a heartbeat per HEARTBEAT_S
    need_rows_s = args.fleet * ((1 + args.k) / WINDOW_S + 1 / HEARTBEAT_S)
    return {
        **git_commit(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "postgresql": server.bindir.parent.name},
        "parameters": {"devices": args.devices, "hours_per_device": args.hours, "k": args.k,
                       "connections": args.connections, "batch_size": args.batch_size, "server_settings": DURABLE},
        "queued_per_device": {"windows": windows, "detections": detections, "heartbeats": beats},
        "delivered_windows": delivered,
        "inserted": inserted,
        "complete": (inserted["windows"], inserted["detections"], inserted["heartbeats"])
        == (windows * args.devices, detections * args.devices, beats * args.devices),
        "provision_s": round(provision_s, 2),
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall, 1),
        "windows_per_s": round(inserted["windows"] / wall, 1),
        "commits": len(latencies),
        "commit_latency_s": {q: None if (v := percentile(window_lat, p)) is None else round(v, 4)
                             for q, p in (("p50", 50), ("p95", 95), ("p99", 99))},
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "server_cpu_share": round((cpu1 - cpu0) / wall / (os.cpu_count() or 1), 3),
        "client_cpu_s": round(client1 - client0, 2),
        "wal_bytes": wal_bytes_between(before["lsn"], after["lsn"]),
        "wal_bytes_per_row": None,
        "bytes_per_device_day": {t: round(after["bytes"][t] / device_days) for t in TABLES if inserted[t]},
        "fleet": {"devices": args.fleet, "steady_rows_per_s_needed": round(need_rows_s, 1),
                  "headroom": round(rows / wall / need_rows_s, 2)},
    }


def wal_bytes_between(before: str, after: str) -> int:
    """Bytes between two ``pg_lsn`` texts (``X/Y``: 32-bit high and low halves)."""
    def value(lsn: str) -> int:
        hi, lo = lsn.split("/")
        return (int(hi, 16) << 32) + int(lo, 16)
    return value(after) - value(before)


def markdown(r: dict[str, Any]) -> str:
    lat = r["commit_latency_s"]
    lines = [
        "# Fleet ingest", "",
        f"Measured at commit `{(r['commit'] or '?')[:12]}`{' (dirty tree)' if r['dirty'] else ''} on "
        f"{r['measured_at']}, {r['machine']['cpus']} CPUs, PostgreSQL {r['machine']['postgresql']}; "
        "`benchmarks/fleet.py` (see benchmarks/README.md).", "",
        "| devices | h/device | connections | batch | rows/s | windows/s | commit p50 / p95 / p99 (s) "
        "| server CPU | WAL bytes/row | complete |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        f"| {r['parameters']['devices']} | {r['parameters']['hours_per_device']} | {r['parameters']['connections']} "
        f"| {r['parameters']['batch_size']} | {r['rows_per_s']} | {r['windows_per_s']} "
        f"| {lat['p50']} / {lat['p95']} / {lat['p99']} | {r['server_cpu_share']:.0%} of the machine "
        f"| {r['wal_bytes_per_row']} | {r['complete']} |", "",
        "Table + index bytes per device-day: "
        + ", ".join(f"{t} {b / 1e6:.1f} MB" for t, b in r["bytes_per_device_day"].items()), "",
        f"A fleet of {r['fleet']['devices']} devices needs {r['fleet']['steady_rows_per_s_needed']} rows/s at its "
        f"steady rate; this run reached {r['rows_per_s']} rows/s: headroom x{r['fleet']['headroom']}.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--hours", type=float, default=1.0, help="hours of 10 s windows queued per device (default 1)")
    p.add_argument("--k", type=int, default=3, help="AST detections per window (default 3)")
    p.add_argument("--connections", type=int, default=32, help="devices syncing at once (default 32)")
    p.add_argument("--batch-size", type=int, default=500, help="windows per batch ([sync] batch_size, default 500)")
    p.add_argument("--fleet", type=int, default=10_000, help="fleet size the steady rate is computed for")
    p.add_argument("--queue-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                   help="where the device queues live (default /dev/shm: the devices' SD cards are not measured)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    args = p.parse_args(argv)
    result = run(args)
    rows = sum(result["inserted"].values())
    result["wal_bytes_per_row"] = round(result["wal_bytes"] / rows) if rows else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fleet.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
