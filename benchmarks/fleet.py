"""Fleet benchmark: many devices deliver their queues to one PostgreSQL through the agent's
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

The queues end when the run starts and the day partitions of their days exist (schema 10:
nothing lands in a default partition).

With ``--steady`` (benchmarks/fleet_steady.py; docs: benchmarks/README.md, "Fleet steady load"), a
fleet at its steady rate instead: every device syncs once per sync interval in real time, open loop.

With ``--queries`` (docs: benchmarks/README.md, "Fleet queries"), the query-latency phase instead:

1. A month of a fleet (``--query-devices`` x ``--query-days``) bulk-generated with COPY as the
   owner into the partitioned schema, after ``soundscape_maintain()`` and the past days'
   ``soundscape_create_partition``: raw windows and detections for the last ``--query-raw-hours``
   (a month of raw windows, 259 M rows for 1,000 devices, does not fit this machine), heartbeats
   every 5 min and the hourly rollups for the whole month (computed from the same values as the
   raw rows, checked against the server's ``soundscape_rollup_of`` / ``soundscape_detections_of``).
2. The dashboard's queries timed as a read-only role (p50/p95 over varied parameters) on the
   rollups and, for comparison, on the raw rows; ``device_status``; the report's
   ``hourly_rollup``; the hourly ``soundscape_maintain()``.
3. Partition width: the raw rows and heartbeats again in week partitions; the queries on
   partitioned tables, the maintenance, a short ingest and a retention drop in both layouts.

Results: the ``queries`` and ``partition_width`` sections of fleet.json (a run replaces only its
own part of the file; ``--store-as full_fleet`` keeps an ingest run beside the default one).

Usage (from the repository root, main virtualenv):

    .venv/bin/python benchmarks/fleet.py                          # 1,000 devices, 1 h each
    .venv/bin/python benchmarks/fleet.py --devices 10000 --hours 0.1 --k 5 --store-as full_fleet
    .venv/bin/python benchmarks/fleet.py --steady 300,30 --devices 10000 --connections 64
    .venv/bin/python benchmarks/fleet.py --queries                # 1,000 devices x 30 days, day and week
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
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

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.copy import QueuedLibpqWriter  # noqa: E402

from agent.config import StoreConfig, SyncConfig  # noqa: E402
from agent.records import Heartbeat  # noqa: E402
from agent.store import Outbox  # noqa: E402
from agent.sync import Syncer, migrate  # noqa: E402
from tests.factories import make_result  # noqa: E402
from tests.pg import PgServer, grant_device_group, provision_role  # noqa: E402

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


async def fill_template(path: Path, windows: int, heartbeats: int, k: int, start: datetime) -> tuple[int, int, int]:
    """A queue for device ``TEMPLATE``: ``windows`` windows of ``k`` detections from ``start``
    (one every WINDOW_S) and ``heartbeats`` heartbeats (one every HEARTBEAT_S); returns
    (windows, detections, heartbeats)."""
    async with Outbox(StoreConfig(path=path, reserve_mb=0)) as ob:
        for i in range(windows):
            await ob.put(make_result(i, device="TEMPLATE", stream="s1", k=k,
                                     start=start + timedelta(seconds=WINDOW_S * i)))
        for j in range(heartbeats):
            await ob.put_heartbeat(heartbeat("TEMPLATE", start + timedelta(seconds=HEARTBEAT_S * (j + 1)), windows))
    return windows, windows * k, heartbeats


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
    """One LOGIN role per device as deploy/db.yml makes it (tests.pg.provision_role, in one
    session): a member of the device group role, which holds the grants; returns device -> role."""
    db = psycopg.conninfo.conninfo_to_dict(admin_dsn)["dbname"]
    roles = {}
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        grant_device_group(con, db)
        for device in devices:
            roles[device] = "sa_" + device.replace("-", "_")
            provision_role(con, roles[device], PASSWORD, device)
    return roles


def postgres_cpu_s(server: PgServer) -> float:
    """CPU seconds (user + system) of ``server``'s cluster: its postmaster, the children it has
    reaped (the backends of closed connections) and its living children, from /proc (other
    clusters of the ``postgres`` user, e.g. a test suite's, are not counted)."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # proc(5): field 4 ppid, fields 14-17 utime, stime, cutime, cstime (after the name: 1, 11..14)
            if int(pid) == postmaster or int(fields[1]) == postmaster:
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
        size = {t: relation_bytes(con, t) for t in TABLES}
        lsn = con.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    return {"rows": rows, "bytes": size, "lsn": lsn}


def relation_bytes(con: psycopg.Connection[Any], table: str) -> int:
    """Table + index + TOAST bytes of ``table`` with all its partitions (a partitioned table has no
    storage of its own: ``pg_total_relation_size`` of the parent alone is 0)."""
    return table_figures(con, (table,))[table]["bytes"]


def git_commit() -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent", "benchmarks/fleet.py",
                            "benchmarks/fleet_steady.py"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"commit": head or None, "dirty": bool(dirty)}


def day_start(t: datetime) -> datetime:
    """Midnight (UTC) of the day holding ``t``."""
    return t.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def create_day_partitions(admin_dsn: str, since: datetime, until: datetime) -> int:
    """The day partitions of every partitioned table for the days in ``[since, until]``, as
    ``soundscape_maintain()`` makes them (``soundscape_create_partition``; days already covered are
    skipped); returns how many were created."""
    made = 0
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        day = day_start(since)
        while day <= until:
            for t in TABLES:
                made += con.execute("SELECT soundscape_create_partition(%s, %s)", (t, day)).fetchone()[0] is not None
            day += timedelta(days=1)
    return made


def ingest_run(server: PgServer, dbname: str, admin: str, devices: list[str], *, hours: float, k: int,
               connections: int, batch_size: int, work: Path) -> dict[str, Any]:
    """Provision ``devices``, queue ``hours`` of windows each (ending now, in day partitions of
    their own days, as in the field), sync them all; the raw measurements."""
    t0 = time.perf_counter()
    roles = provision(admin, devices)
    provision_s = time.perf_counter() - t0
    now = datetime.now(timezone.utc)
    start = now - timedelta(seconds=round(hours * 3600 / WINDOW_S) * WINDOW_S)
    start = start.replace(microsecond=0) - timedelta(seconds=start.second % int(WINDOW_S))
    create_day_partitions(admin, start, now)
    template = work / f"template-{dbname}.db"
    windows, detections, beats = asyncio.run(fill_template(
        template, int(hours * 3600 / WINDOW_S), int(hours * 3600 / HEARTBEAT_S), k, start))
    queues = {}
    for d in devices:
        queues[d] = work / f"{d}.db"
        device_queue(template, queues[d], d)
    before = server_figures(admin)
    cpu0, client0, t0 = postgres_cpu_s(server), time.process_time(), time.perf_counter()
    latencies, delivered = asyncio.run(sync_fleet(server, dbname, queues, roles, connections, batch_size))
    wall = time.perf_counter() - t0
    cpu1, client1 = postgres_cpu_s(server), time.process_time()
    after = server_figures(admin)
    for q in (template, *queues.values()):
        q.unlink(missing_ok=True)
    inserted = {t: after["rows"][t] - before["rows"][t] for t in TABLES}
    window_lat = [s for n, s in latencies if n == batch_size] or [s for _, s in latencies]
    return {"queued_per_device": {"windows": windows, "detections": detections, "heartbeats": beats},
            "queued_from": start.isoformat(timespec="seconds"), "delivered_windows": delivered,
            "inserted": inserted, "complete": (inserted["windows"], inserted["detections"], inserted["heartbeats"])
            == (windows * len(devices), detections * len(devices), beats * len(devices)),
            "provision_s": round(provision_s, 2), "wall_s": round(wall, 2),
            "rows_per_s": round(sum(inserted.values()) / wall, 1),
            "windows_per_s": round(inserted["windows"] / wall, 1), "commits": len(latencies),
            "commit_latency_s": latency_quantiles(window_lat),
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "server_cpu_share": round((cpu1 - cpu0) / wall / (os.cpu_count() or 1), 3),
            "client_cpu_s": round(client1 - client0, 2), "wal_bytes": wal_bytes_between(before["lsn"], after["lsn"]),
            "bytes_after": after["bytes"]}


def latency_quantiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 of ``values`` (seconds, rounded to 0.1 ms)."""
    return {q: None if (v := percentile(values, p)) is None else round(v, 4)
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}


def machine(server: PgServer) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "postgresql": server.bindir.parent.name}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir=args.queue_dir))
    server = PgServer(settings={**DURABLE, "max_connections": str(args.connections + 20)})
    try:
        server.start()
        admin = server.create_database("fleet")
        migrate(admin)
        devices = [f"fleet-{i:05d}" for i in range(args.devices)]
        m = ingest_run(server, "fleet", admin, devices, hours=args.hours, k=args.k, connections=args.connections,
                       batch_size=args.batch_size, work=work)
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    rows = sum(m["inserted"].values())
    device_days = args.devices * args.hours / 24
    # steady state of a fleet: one window per WINDOW_S per device, k detections each, a heartbeat per HEARTBEAT_S
    need_rows_s = args.fleet * ((1 + args.k) / WINDOW_S + 1 / HEARTBEAT_S)
    bytes_after = m.pop("bytes_after")
    return {
        **git_commit(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(server),
        "parameters": {"devices": args.devices, "hours_per_device": args.hours, "k": args.k,
                       "connections": args.connections, "batch_size": args.batch_size, "server_settings": DURABLE},
        **m,
        "wal_bytes_per_row": round(m["wal_bytes"] / rows) if rows else None,
        "bytes_per_device_day": {t: round(bytes_after[t] / device_days) for t in TABLES if m["inserted"][t]},
        "fleet": {"devices": args.fleet, "steady_rows_per_s_needed": round(need_rows_s, 1),
                  "headroom": round(m["rows_per_s"] / need_rows_s, 2),
                  # a fleet producing more than the server takes accumulates it in the devices' queues
                  "backlog_growth_rows_per_s": round(max(0.0, need_rows_s - m["rows_per_s"]), 1)},
    }


def wal_bytes_between(before: str, after: str) -> int:
    """Bytes between two ``pg_lsn`` texts (``X/Y``: 32-bit high and low halves)."""
    def value(lsn: str) -> int:
        hi, lo = lsn.split("/")
        return (int(hi, 16) << 32) + int(lo, 16)
    return value(after) - value(before)


# ============================================================================================
# Query latency (--queries): a month of a fleet, bulk-generated, and the dashboard's queries

SLOTS = round(86400 / WINDOW_S)  # windows per device-day
BEATS = round(86400 / HEARTBEAT_S)  # heartbeats per device-day
PER_HOUR = round(3600 / WINDOW_S)
VARIANTS = 16  # template days: device d on day n follows template (d + n) % VARIANTS
INDEX_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)  # window_index = 10 s slots since then
BANDS_HZ = (25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800, 1000, 1250, 1600, 2000,
            2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500, 16000, 20000)  # the agent's default 30 bands
AST_ID, AST_HASH = "MIT/ast-finetuned-audioset-10-10-0.4593", "9f" * 32
BIRDNET_ID, BIRDNET_HASH = "BirdNET-GLOBAL-6K-V2.4 (CC BY-NC-SA 4.0, non-commercial)", "b1" * 32
# an outdoor AudioSet vocabulary (label, index from the packaged AST config)
AST_LABELS = (
    "Speech", "Bird", "Bird vocalization, bird call, bird song", "Chirp, tweet", "Caw", "Crow", "Pigeon, dove", "Owl",
    "Insect", "Cricket", "Mosquito", "Fly, housefly", "Bee, wasp, etc.", "Frog", "Croak", "Dog", "Bark",
    "Livestock, farm animals, working animals", "Cattle, bovinae", "Moo", "Chicken, rooster", "Wind",
    "Wind noise (microphone)", "Rustling leaves", "Rain", "Raindrop", "Rain on surface", "Thunder", "Thunderstorm",
    "Water", "Stream", "Vehicle", "Car", "Car passing by", "Truck", "Motorcycle", "Traffic noise, roadway noise",
    "Aircraft", "Fixed-wing aircraft, airplane", "Helicopter", "Train", "Engine", "Idling", "Silence",
    "Outside, rural or natural", "Outside, urban or manmade", "Inside, small room", "Noise", "Environmental noise",
    "Static", "Mains hum", "Hum", "Animal", "Wild animals", "Walk, footsteps", "Church bell", "Chainsaw",
    "Lawn mower", "Music", "Siren", "Applause", "Cacophony", "White noise", "Pink noise")
BIRD_SPECIES = 300  # the region's species (synthetic BirdNET-style labels); each site hears 40 of them
READER, READER_PASSWORD = "fleet_reader", "fleet-reader-pw"


def copy_text(value: str) -> str:
    """A text value for COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S+00")


def arr(values: Any, fmt: str = "{:.2f}") -> str:
    return "{" + ",".join(fmt.format(v) for v in values) + "}"


def energy_mean(levels: np.ndarray, axis: int | None = None) -> np.ndarray:
    return 10 * np.log10(np.mean(np.power(10.0, levels / 10), axis=axis))


class DayTemplate:
    """One simulated device-day (:data:`SLOTS` windows), as COPY text, and its hourly rollups.

    Levels follow a diurnal course (quiet at 03:00, loudest at 15:00) with noise; each window's
    LAeq is the energy mean of its 1 s LAeq series, as the agent computes it. Detections: AST's
    top 3 of an outdoor AudioSet vocabulary (Zipf-weighted, shifting with the hour) on every
    window, and 0-3 BirdNET species (Poisson, more at the dawn and dusk choruses) out of the
    site's 40 species of :data:`BIRD_SPECIES`, of which a few to 15 are active in an hour.
    The rollups are computed here, from the same numbers, with ``soundscape_rollup_of``'s
    formulas (energy means, the 10th percentile of the 1 s series, maxima, arithmetic means of
    the indices): the benchmark checks them against the server's function.
    """

    def __init__(self, variant: int) -> None:
        rng = np.random.default_rng(20261206 + variant)
        hour = np.arange(SLOTS) * WINDOW_S / 3600
        base = 38 + (variant % 8) * 1.5 + 6 * np.sin(2 * np.pi * (hour - 9) / 24)
        series = np.round(base[:, None] + rng.normal(0, 2.0, SLOTS)[:, None] + rng.normal(0, 1.5, (SLOTS, 10)), 2)
        laeq = np.round(energy_mean(series, axis=1), 2)
        lz_series = np.round(series + 6.5 + rng.normal(0, 0.3, (SLOTS, 10)), 2)
        lzeq = np.round(energy_mean(lz_series, axis=1), 2)
        lafmax = np.round(series.max(axis=1) + 2 + np.abs(rng.normal(0, 1, SLOTS)), 2)
        pct = np.round(np.percentile(series, [90, 50, 10], axis=1), 2)
        centres = np.array(BANDS_HZ, dtype=float)
        shape = -1.2 * np.log2(centres / 1000) ** 2
        bands = np.round(laeq[:, None] - 12 + shape[None, :] + rng.normal(0, 1.5, (SLOTS, len(BANDS_HZ))), 2)
        r = rng.random((SLOTS, 7))
        ix = np.round(np.column_stack([1400 + 200 * r[:, 0], 1.5 + r[:, 1], 0.3 + 0.3 * r[:, 2], 3 + 6 * r[:, 3],
                                       -0.5 + 1.2 * r[:, 4], 0.6 + 0.3 * r[:, 5], 0.9 + 0.09 * r[:, 6]]), 3)
        centres_text = arr(BANDS_HZ, "{:g}")
        const = ("\t".join(["classified", AST_ID, AST_HASH, "onnx", "f"]),
                 "0\t0.0001", "{}\t-1.25\t-38\t44.3\t3.3\t94\t2026-01-15 09:00:00+00",
                 '{"audioset": "classified", "birdnet": "classified"}')
        self.windows = [
            # duration_s .. classifier_status (WINDOW_COPY's columns after sync_time)
            f"10\t48000\tt\t0\t{lzeq[i]:.2f}\t{arr(lz_series[i])}\t{lzeq[i]:.2f}\t{arr(lz_series[i])}"
            f"\t{-30 + (laeq[i] - 38) * 0.8:.2f}\t{const[0]}\t{laeq[i]:.2f}\t{laeq[i] + 4:.2f}\t{lafmax[i]:.2f}"
            f"\t{series[i].min() - 1:.2f}\t{series[i].max() + 0.5:.2f}\t{pct[0, i]:.2f}\t{pct[1, i]:.2f}"
            f"\t{pct[2, i]:.2f}\t{arr(series[i])}\t{centres_text}\t{arr(bands[i])}\t"
            + "\t".join(f"{v:.3f}" for v in ix[i])
            + f"\t{const[1]}\t{-45 + laeq[i] - 38:.2f}\t0.01\t{const[2]}\t{const[3]}"
            for i in range(SLOTS)]

        # AST: top 3 per window out of 15 labels of the vocabulary that change every 3 hours
        # (Gumbel top-k of Zipf weights: a few labels dominate)
        n_ast = len(AST_LABELS)
        ast_idx = ast_label_indices()
        slot_hour = (np.arange(SLOTS) // PER_HOUR).astype(int)
        logw = np.full((8, n_ast), -np.inf)
        for b in range(8):
            logw[b, rng.choice(n_ast, 15, replace=False)] = -1.3 * np.log(np.arange(1, 16))
        keys = logw[slot_hour // 3] + rng.gumbel(size=(SLOTS, n_ast))
        top = np.argsort(-keys, axis=1)[:, :3]
        ast_scores = np.sort(rng.uniform(0.05, 0.9, (SLOTS, 3)), axis=1)[:, ::-1]
        # BirdNET: the site's 40 species; k(h) active per hour; Poisson(lambda(h)) detections per window, <= 3
        pool = rng.choice(BIRD_SPECIES, 40, replace=False)
        h = np.arange(24)
        lam = 0.15 + 1.3 * np.exp(-(((h - 6) / 1.5) ** 2)) + 0.6 * np.exp(-(((h - 19) / 1.5) ** 2))
        active = [pool[rng.choice(40, max(2, round(10 * lam[x])), replace=False)] for x in range(24)]
        counts = np.minimum(rng.poisson(lam[slot_hour]), 3)
        self.detections: list[tuple[str, ...]] = []
        self.rollup_detections: list[list[str]] = []
        per_hour: dict[tuple[str, str], list[float]] = {}
        for i in range(SLOTS):
            frags = []
            for rank in range(3):
                label = AST_LABELS[top[i, rank]]
                score = float(np.float32(ast_scores[i, rank]))
                frags.append(f"audioset\t{rank + 1}\t{copy_text(label)}\t{ast_idx[label]}\t{score:.4f}\t\\N"
                             f"\t{AST_ID}\t{AST_HASH}\tf\n")
                per_hour.setdefault(("audioset", label), []).append(round(score, 4))
            n = min(int(counts[i]), len(active[slot_hour[i]]))
            if n:
                species = rng.choice(active[slot_hour[i]], n, replace=False)
                scores = np.sort(rng.uniform(0.5, 0.99, n))[::-1]
                for rank in range(n):
                    label = bird_label(int(species[rank]))
                    frags.append(f"birdnet\t{rank + 1}\t{label}\t{1000 + int(species[rank])}\t{scores[rank]:.4f}"
                                 f"\t{3.0 * rng.integers(0, 4):g}\t{BIRDNET_ID}\t{BIRDNET_HASH}\tf\n")
                    per_hour.setdefault(("birdnet", label), []).append(round(float(scores[rank]), 4))
            self.detections.append(tuple(frags))
            if (i + 1) % PER_HOUR == 0:  # the hour's rollup_detections_hourly rows (taxonomy .. scaffold)
                self.rollup_detections.append([f"{tax}\t{copy_text(label)}\t{len(v)}\t{max(v):.4f}\tf\n"
                                               for (tax, label), v in sorted(per_hour.items())])
                per_hour = {}

        # rollup_hourly per hour (laeq_db .. ht), soundscape_rollup_of's formulas on the same values
        self.rollups = []
        for x in range(24):
            s = slice(x * PER_HOUR, (x + 1) * PER_HOUR)
            band = energy_mean(bands[s], axis=0).astype(np.float32)
            means = ix[s].mean(axis=0)
            self.rollups.append(
                f"{float(energy_mean(laeq[s])):.6f}\t{PER_HOUR * WINDOW_S:g}\t{np.percentile(series[s], 10):.6f}"
                f"\t{lafmax[s].max():.2f}\t{centres_text}\t{arr(band, '{:.4f}')}\t"
                + "\t".join(f"{v:.6f}" for v in means))


def bird_label(species: int) -> str:
    """A BirdNET-style label ``Scientific name_Common name`` for species number ``species``."""
    return f"Avis{species:03d} silvestris_Forest songbird {species:03d}"


_AST_INDEX: dict[str, int] = {}


def ast_label_indices() -> dict[str, int]:
    """AudioSet label -> index, from the packaged AST config (agent/data/ast-audioset)."""
    if not _AST_INDEX:
        config = json.loads((ROOT / "agent" / "data" / "ast-audioset" / "config.json").read_text())
        _AST_INDEX.update({name: int(i) for name, i in config["label2id"].items() if name in AST_LABELS})
    return _AST_INDEX


class Templates:
    """The :class:`DayTemplate` of each variant, made when first needed."""

    def __init__(self) -> None:
        self._made: dict[int, DayTemplate] = {}

    def __call__(self, device: int, day: datetime) -> DayTemplate:
        v = (device + (day - INDEX_EPOCH).days) % VARIANTS
        if v not in self._made:
            self._made[v] = DayTemplate(v)
        return self._made[v]


WINDOW_COPY = (
    "COPY windows (device, window_key, window_index, start_time, sync_time, sync_id, duration_s, sample_rate,"
    " clock_synchronised, xruns, lzeq_db, lzeq_series_db, leq_db, leq_series_db, peak_dbfs, status, model_id,"
    " model_hash, model_backend, model_is_scaffold, laeq_db, lceq_db, lafmax_db, lafmin_db, lasmax_db, la10_db,"
    " la50_db, la90_db, laeq_series_db, band_centres_hz, band_leq_db, aci, adi, aei, bi, ndsi, hf, ht,"
    " clipping_ratio, dc_offset_fs, rms_dbfs, hum_share, health_flags, cal_offset_db, cal_sensitivity_dbv,"
    " cal_gain_db, cal_vadc, cal_reference_db, cal_time, classifier_status) FROM STDIN")
DETECTION_COPY = ("COPY detections (device, window_key, start_time, taxonomy, rank, label, label_index, score,"
                  " offset_s, model_id, model_hash, model_is_scaffold) FROM STDIN")
HEARTBEAT_COPY = ("COPY heartbeats (device, heartbeat_id, time, sync_time, uptime_s, windows, classified, skipped,"
                  " failed, xruns, queue_depth, oldest_unsynced_start, last_sync_at, cpu_temp_c, throttled,"
                  " throttle_flags, disk_free_bytes, disk_total_bytes, clock_synchronised, rss_bytes, peak_rss_bytes,"
                  " model_id, model_hash, agent_version, degraded, evicted_unsynced, evicted_synced, dropped_windows,"
                  " set_aside) FROM STDIN")
ROLLUP_COPY = ("COPY rollup_hourly (device, hour, windows, duration_s, first_start, last_end, laeq_db, laeq_s, la90_db,"
               " lafmax_db, band_centres_hz, band_leq_db, aci, adi, aei, bi, ndsi, hf, ht) FROM STDIN")
ROLLUP_DETECTION_COPY = ("COPY rollup_detections_hourly (device, hour, taxonomy, label, detections, max_score,"
                         " scaffold) FROM STDIN")


class Loader:
    """COPY into several tables at once, one connection each (the server parses each stream in its
    own backend while this process generates), as the owner with the tables' user triggers off
    (``session_replication_role = replica``: what they would set is in the rows already:
    ``sync_time``, the legacy ``leq`` copies; ``device_latest`` is written afterwards)."""

    def __init__(self, dsn: str, statements: dict[str, str]) -> None:
        self.dsn, self.statements = dsn, statements
        self.rows = dict.fromkeys(statements, 0)
        self._stack = contextlib.ExitStack()
        self._copies: dict[str, Any] = {}

    def __enter__(self) -> Loader:
        for name, stmt in self.statements.items():
            con = self._stack.enter_context(psycopg.connect(self.dsn))
            con.execute("SET session_replication_role = replica")
            con.execute("SET synchronous_commit = off")
            cur = con.cursor()
            self._copies[name] = self._stack.enter_context(cur.copy(stmt, writer=QueuedLibpqWriter(cur)))
        return self

    def write(self, name: str, rows: list[str]) -> None:
        if rows:
            self._copies[name].write("".join(rows))
            self.rows[name] += len(rows)

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)  # each COPY ends, then its transaction commits, then the connection closes


def load_raw(dsn: str, devices: list[str], since: datetime, until: datetime, templates: Templates) -> dict[str, int]:
    """Windows and their detections of every device for the 10 s slots in ``[since, until)``,
    an hour of all devices after another (each device's hour one batch: one ``sync_id``,
    delivered a minute after the hour's last window, at most at ``until``)."""
    with Loader(dsn, {"windows": WINDOW_COPY, "detections": DETECTION_COPY}) as load:
        hour = since
        while hour < until:
            end = min(hour + timedelta(hours=1), until)
            n = int((end - hour).total_seconds() // WINDOW_S)
            first = int((hour - INDEX_EPOCH).total_seconds() // WINDOW_S)
            slot0 = int((hour - day_start(hour)).total_seconds() // WINDOW_S)
            delivered = ts(min(end + timedelta(minutes=1), until))
            starts = [ts(hour + timedelta(seconds=WINDOW_S * j)) for j in range(n)]
            wpart = [f"\ts1-{first + j}\t{first + j}\t{starts[j]}\t{delivered}\t" for j in range(n)]
            dpart = [f"\ts1-{first + j}\t{starts[j]}\t" for j in range(n)]
            for d, dev in enumerate(devices):
                t = templates(d, hour)
                sid = uuid.uuid4()
                load.write("windows", [f"{dev}{wpart[j]}{sid}\t{t.windows[slot0 + j]}\n" for j in range(n)])
                load.write("detections", [f"{dev}{dpart[j]}{frag}" for j in range(n)
                                          for frag in t.detections[slot0 + j]])
            hour = end
    return load.rows


def load_rollups(dsn: str, devices: list[str], since: datetime, until: datetime,
                 templates: Templates) -> dict[str, int]:
    """``rollup_hourly`` and ``rollup_detections_hourly`` rows of every device for the whole
    hours in ``[since, until)``, from the same templates as the raw rows."""
    with Loader(dsn, {"rollup_hourly": ROLLUP_COPY, "rollup_detections_hourly": ROLLUP_DETECTION_COPY}) as load:
        hour = since
        while hour < until:
            x = hour.hour
            head = f"\t{ts(hour)}\t"
            full = f"{head}{PER_HOUR}\t{PER_HOUR * WINDOW_S:g}\t{ts(hour)}\t{ts(hour + timedelta(hours=1))}\t"
            hourly, dets = [], []
            for d, dev in enumerate(devices):
                t = templates(d, hour)
                hourly.append(f"{dev}{full}{t.rollups[x]}\n")
                dets.extend(f"{dev}{head}{frag}" for frag in t.rollup_detections[x])
            load.write("rollup_hourly", hourly)
            load.write("rollup_detections_hourly", dets)
            hour += timedelta(hours=1)
    return load.rows


def load_heartbeats(dsn: str, devices: list[str], since: datetime, until: datetime) -> dict[str, int]:
    """A heartbeat every 5 min of every device in ``[since, until)`` (one agent process running
    all along: its counters grow), a day of all devices after another; then ``device_latest``
    (what the heartbeats trigger keeps) from each device's newest one."""
    n = int((until - since).total_seconds() // HEARTBEAT_S)
    times = [since + timedelta(seconds=HEARTBEAT_S * j) for j in range(n)]
    tail = [f"\t{ts(t)}\t{ts(t + timedelta(seconds=20))}\t{HEARTBEAT_S * (j + 1):.0f}\t{30 * (j + 1)}\t{30 * (j + 1)}"
            f"\t0\t0\t0\t{j % 7}\t\\N\t{ts(t - timedelta(seconds=40))}\t{45 + (j % 20) / 2:g}\t0\t{{}}"
            f"\t{20 * 10**9 - 4096 * j}\t{32 * 10**9}\tt\t{180 * 10**6}\t{210 * 10**6}\t{AST_ID}\t{AST_HASH}"
            f"\t0.1.0\t{{}}\t0\t0\t0\t0\n" for j, t in enumerate(times)]
    by_day: dict[datetime, list[int]] = {}
    for j, t in enumerate(times):
        by_day.setdefault(day_start(t), []).append(j)
    with Loader(dsn, {"heartbeats": HEARTBEAT_COPY}) as load:
        for beats in by_day.values():
            for d, dev in enumerate(devices):
                load.write("heartbeats", [f"{dev}\t{d:08x}-0000-4000-8000-{j:012x}{tail[j]}" for j in beats])
    with psycopg.connect(dsn) as con, con.cursor() as cur:
        last = times[-1]
        cur.executemany("INSERT INTO device_latest (device, heartbeat_id, time, sync_time, uptime_s)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        [(dev, f"{d:08x}-0000-4000-8000-{n - 1:012x}", last, last + timedelta(seconds=20),
                          HEARTBEAT_S * n) for d, dev in enumerate(devices)])
    return {**load.rows, "device_latest": len(devices)}


def week_partitions(admin_dsn: str, since: datetime, until: datetime) -> int:
    """Replace the (empty) day partitions ``db init`` made by week partitions (Monday to Monday,
    UTC) covering ``[since, until]`` for every partitioned table; returns how many were created."""
    made = 0
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        for t in TABLES:
            for (part,) in con.execute("SELECT partition::text FROM soundscape_partitions(%s)", (t,)).fetchall():
                con.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(t), sql.SQL(part)))
                con.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(part)))
            week = day_start(since) - timedelta(days=day_start(since).weekday())
            while week <= until:
                con.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(f"{t}_w{week:%Y%m%d}"), sql.Identifier(t), sql.Literal(week),
                    sql.Literal(week + timedelta(days=7))))
                made += 1
                week += timedelta(days=7)
    return made


def add_reader(admin_dsn: str, create: bool) -> None:
    """The dashboards' read-only role (deploy/db.yml's soundscape_reader: SELECT on every table,
    read-only transactions); the queries are timed as this role, row-level security applying."""
    db = psycopg.conninfo.conninfo_to_dict(admin_dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        if create:
            con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(READER),
                                                                         sql.Literal(READER_PASSWORD)))
            con.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(READER)))
        con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(READER)))
        con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(READER)))
        con.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(READER)))


def table_figures(con: psycopg.Connection[Any], tables: tuple[str, ...]) -> dict[str, Any]:
    """Per table: bytes (all partitions, with indexes), index bytes, partitions."""
    out = {}
    for t in tables:
        # pg_partition_tree lists a partitioned table's tree, nothing for a plain table
        total, index, parts = con.execute(
            "WITH tree AS (SELECT relid, isleaf FROM pg_partition_tree(%(t)s) UNION ALL"
            " SELECT %(t)s::regclass, false WHERE NOT EXISTS (SELECT 1 FROM pg_partition_tree(%(t)s)))"
            " SELECT sum(pg_total_relation_size(relid)), sum(pg_indexes_size(relid)), count(*) FILTER (WHERE isleaf)"
            " FROM tree", {"t": t}).fetchone()
        out[t] = {"bytes": int(total), "index_bytes": int(index), "partitions": int(parts)}
    return out


def largest_partition(con: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """The partition of ``table`` holding most bytes: its name, rows (estimate), table and index bytes."""
    row = con.execute(
        "SELECT p.relid::text, c.reltuples::bigint, pg_relation_size(p.relid), pg_indexes_size(p.relid)"
        " FROM pg_partition_tree(%s) AS p JOIN pg_class AS c ON c.oid = p.relid WHERE p.isleaf"
        " ORDER BY pg_total_relation_size(p.relid) DESC LIMIT 1", (table,)).fetchone()
    return {"partition": row[0], "rows": int(row[1]), "table_bytes": int(row[2]), "index_bytes": int(row[3])}


class Clock:
    """The data set's time: ``end`` is when generation started (10 s grid), ``hour`` the start of
    its UTC hour; raw rows cover ``[raw_since, end)``, rollups the whole hours ``[since, hour)``,
    heartbeats ``[since, end)``."""

    def __init__(self, days: int, raw_hours: int) -> None:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        self.end = now - timedelta(seconds=now.second % int(WINDOW_S))
        self.hour = self.end.replace(minute=0, second=0)
        self.since = self.hour - timedelta(days=days)
        self.raw_since = self.hour - timedelta(hours=raw_hours)


def queries(clock: Clock, devices: list[str], repeats: int, raw_repeats: int) -> list[dict[str, Any]]:
    """The dashboard's queries, each with its parameters per repetition (varied), its source
    (rollup or raw) and whether it reads partitioned tables (then it is timed in both layouts)."""
    rng = random.Random(7)
    h = clock.hour
    # raw: the last 24 h ending somewhere in the current hour (inside the raw rows); rollups: the 24
    # whole hours ending j hours ago
    ends = [h + (clock.end - h) * (i / max(1, repeats)) for i in range(max(repeats, raw_repeats))]
    last24 = [{"since": h - timedelta(hours=24 + i % 24), "until": h - timedelta(hours=i % 24)} for i in range(repeats)]
    month = [{"device": rng.choice(devices), "since": clock.since, "until": h} for _ in range(repeats)]
    return [
        {"name": "laeq_24h_per_device", "source": "rollup", "partitioned": False,
         "what": "(a) LAeq of the last 24 h per device, energy mean of the hours",
         "sql": "SELECT device, 10 * log(sum(laeq_s * power(10, laeq_db / 10)) / nullif(sum(laeq_s), 0)) AS laeq_db"
                " FROM rollup_hourly WHERE hour >= %(since)s AND hour < %(until)s AND laeq_db IS NOT NULL"
                " GROUP BY device ORDER BY device", "params": last24},
        {"name": "laeq_24h_per_device", "source": "raw", "partitioned": True,
         "what": "(a) LAeq of the last 24 h per device, energy mean of the windows",
         "sql": "SELECT device, 10 * log(sum(duration_s * power(10, laeq_db / 10)) / nullif(sum(duration_s), 0))"
                " AS laeq_db FROM windows WHERE start_time >= %(since)s AND start_time < %(until)s"
                " AND laeq_db IS NOT NULL GROUP BY device ORDER BY device",
         "params": [{"since": e - timedelta(hours=24), "until": e} for e in ends[:raw_repeats]]},
        {"name": "top_species_per_hour_24h", "source": "rollup", "partitioned": False,
         "what": "(b) the fleet's 10 most detected BirdNET species per hour over the last 24 h",
         "sql": "SELECT hour, label, n FROM (SELECT hour, label, sum(detections) AS n, rank() OVER"
                " (PARTITION BY hour ORDER BY sum(detections) DESC) AS r FROM rollup_detections_hourly"
                " WHERE taxonomy = 'birdnet' AND hour >= %(since)s AND hour < %(until)s GROUP BY hour, label) AS t"
                " WHERE r <= 10 ORDER BY hour, r", "params": last24},
        {"name": "top_species_per_hour_24h", "source": "raw", "partitioned": True,
         "what": "(b) the same from the raw detections",
         "sql": "SELECT hour, label, n FROM (SELECT date_trunc('hour', start_time, 'UTC') AS hour, label,"
                " count(*) AS n, rank() OVER (PARTITION BY date_trunc('hour', start_time, 'UTC')"
                " ORDER BY count(*) DESC) AS r FROM detections WHERE taxonomy = 'birdnet'"
                " AND start_time >= %(since)s AND start_time < %(until)s GROUP BY 1, 2) AS t"
                " WHERE r <= 10 ORDER BY hour, r",
         "params": [{"since": e - timedelta(hours=24), "until": e} for e in ends[:raw_repeats]]},
        {"name": "device_status", "source": "device_latest + heartbeats", "partitioned": True,
         "what": "(c) SELECT * FROM device_status (every device)",
         "sql": "SELECT * FROM device_status", "params": [{}] * repeats},
        {"name": "device_status", "source": "device_latest + heartbeats, jit off", "partitioned": True, "jit": False,
         "what": "(c) the same, in a session with jit = off",
         "sql": "SELECT * FROM device_status", "params": [{}] * repeats},
        {"name": "device_month_hourly", "source": "rollup", "partitioned": False,
         "what": "(d) one device's month of hourly levels (noise_levels_hourly)",
         "sql": "SELECT * FROM noise_levels_hourly WHERE device = %(device)s AND hour >= %(since)s"
                " AND hour < %(until)s ORDER BY hour", "params": month},
    ]


def time_query(con: psycopg.Connection[Any], q: dict[str, Any]) -> dict[str, Any]:
    """Run ``q`` once untimed (caches), then once per parameter set; figures in seconds. Also its
    planning time and whether the plan is JIT-compiled (the server's default ``jit = on``
    compiles a plan whose estimated cost exceeds ``jit_above_cost``, 100,000: ~0.1 s here)."""
    if q.get("jit") is False:
        con.execute("SET jit = off")
    try:
        con.execute(q["sql"], q["params"][0]).fetchall()
        took, rows = [], 0
        for p in q["params"]:
            t0 = time.perf_counter()
            rows = len(con.execute(q["sql"], p).fetchall())
            took.append(time.perf_counter() - t0)
        plan = "\n".join(r[0] for r in con.execute("EXPLAIN (ANALYZE, SUMMARY ON) " + q["sql"],
                                                    q["params"][0]).fetchall())
    finally:
        con.execute("RESET jit")
    m = re.search(r"Planning Time: ([\d.]+) ms", plan)
    cost = re.search(r"\(cost=[\d.]+\.\.([\d.]+) ", plan)
    return {"repeats": len(took), "rows": rows, "p50_s": round(percentile(took, 50) or 0, 4),
            "p95_s": round(percentile(took, 95) or 0, 4), "max_s": round(max(took), 4),
            "planning_ms": float(m.group(1)) if m else None, "estimated_cost": float(cost.group(1)) if cost else None,
            "jit": "JIT:" in plan}


def time_report(dsn: str, clock: Clock, devices: list[str], repeats: int, jit: bool = True) -> dict[str, Any]:
    """(e) the report's own query (agent/report.py ``hourly_rollup``) for one device over 7 days,
    through its own read-only connection; skipped with the reason when it fails."""
    rng = random.Random(11)
    try:
        from agent import report

        took, rows = [], 0
        with report.read_only_connection(dsn if jit else psycopg.conninfo.make_conninfo(dsn, options="-c jit=off")
                                          ) as con:
            report.hourly_rollup(con, [devices[0]], clock.end - timedelta(days=7), clock.end)
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = report.hourly_rollup(con, [rng.choice(devices)], clock.end - timedelta(days=7), clock.end)
                took.append(time.perf_counter() - t0)
                rows = len(r.levels) + len(r.bands) + len(r.detections)
    except Exception as err:  # noqa: BLE001 - someone may be changing the report: say so, do not fail the benchmark
        return {"skipped": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"}
    return {"repeats": len(took), "rows": rows, "p50_s": round(percentile(took, 50) or 0, 4),
            "p95_s": round(percentile(took, 95) or 0, 4), "max_s": round(max(took), 4), "planning_ms": None}


def check_rollups(con: psycopg.Connection[Any], device: str, hour: datetime) -> dict[str, Any]:
    """The generated rollup row of one device-hour against the server's ``soundscape_rollup_of``
    and ``soundscape_detections_of`` on the raw rows: the largest differences."""
    cols = ("windows", "laeq_db", "la90_db", "lafmax_db", "aci")
    gen = con.execute(f"SELECT {', '.join(cols)} FROM rollup_hourly WHERE device = %s AND hour = %s",
                      (device, hour)).fetchone()
    fun = con.execute(f"SELECT {', '.join(cols)} FROM soundscape_rollup_of(%s, %s)", (device, hour)).fetchone()
    dets = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE g.detections = f.detections AND abs(g.max_score - f.max_score) < 1e-4)"
        " FROM soundscape_detections_of(%s, %s) AS f FULL JOIN (SELECT * FROM rollup_detections_hourly"
        " WHERE device = %s AND hour = %s) AS g USING (taxonomy, label)", (device, hour, device, hour)).fetchone()
    if gen is None or fun is None:
        return {"device": device, "hour": hour.isoformat(), "match": False, "missing": True}
    diff = {c: round(abs(float(a) - float(b)), 6) for c, a, b in zip(cols, gen, fun, strict=True)}
    return {"device": device, "hour": hour.isoformat(), "max_abs_diff": diff, "label_rows": dets[0],
            "label_rows_equal": dets[1], "match": max(diff.values()) < 1e-3 and dets[0] == dets[1]}


def prepare_layout(server: PgServer, name: str, width: str, clock: Clock, devices: list[str],
                   templates: Templates, rollups: bool, first: bool) -> tuple[str, dict[str, Any]]:
    """One database with the data set in ``width`` ("day" or "week") partitions; its figures."""
    admin = server.create_database(name)
    migrate(admin)
    fig: dict[str, Any] = {"database": name, "width": width, "seconds": {}}
    t0 = time.perf_counter()
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute("SELECT count(*) FROM soundscape_maintain()")
    if width == "day":
        fig["partitions_created"] = create_day_partitions(admin, clock.since, clock.end)
    else:
        fig["partitions_created"] = week_partitions(admin, clock.since, clock.end + timedelta(days=8))
    fig["seconds"]["partitions"] = round(time.perf_counter() - t0, 2)
    add_reader(admin, create=first)
    rows: dict[str, int] = {}
    t0 = time.perf_counter()
    rows.update(load_raw(admin, devices, clock.raw_since, clock.end, templates))
    fig["seconds"]["raw_copy"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    rows.update(load_heartbeats(admin, devices, clock.since, clock.end))
    fig["seconds"]["heartbeats_copy"] = round(time.perf_counter() - t0, 1)
    if rollups:
        t0 = time.perf_counter()
        rows.update(load_rollups(admin, devices, clock.since, clock.hour, templates))
        fig["seconds"]["rollups_copy"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with psycopg.connect(admin, autocommit=True) as con:
        # what autovacuum would have done: hint bits, visibility map, statistics
        con.execute("VACUUM (ANALYZE) windows, detections, heartbeats, rollup_hourly, rollup_detections_hourly,"
                    " device_latest")
        con.execute("CHECKPOINT")
    fig["seconds"]["vacuum_analyze_checkpoint"] = round(time.perf_counter() - t0, 1)
    fig["rows"] = rows
    with psycopg.connect(admin) as con:
        fig["tables"] = table_figures(con, (*TABLES, "rollup_hourly", "rollup_detections_hourly", "device_latest"))
        fig["largest_partition"] = {t: largest_partition(con, t) for t in ("windows", "detections", "heartbeats")}
    return admin, fig


def maintain_run(admin: str, clock: Clock) -> dict[str, Any]:
    """``soundscape_maintain()`` as the hourly timer runs it: the rollup watermark an hour before
    the end of the data set (as left by the previous hourly run), so the windows delivered since
    (minus the 15 min lag) are rolled up again."""
    with psycopg.connect(admin, autocommit=True) as con:
        con.execute("INSERT INTO rollup_state (name, rolled_until) VALUES ('hourly', %s)"
                    " ON CONFLICT (name) DO UPDATE SET rolled_until = EXCLUDED.rolled_until",
                    (clock.end - timedelta(hours=1),))
        t0 = time.perf_counter()
        actions = con.execute("SELECT action, relation, detail FROM soundscape_maintain()").fetchall()
        took = time.perf_counter() - t0
    rolled = [d for a, _, d in actions if a == "rolled up"]
    return {"seconds": round(took, 2), "rolled_up": rolled[0] if rolled else None,
            "created": sum(a == "created" for a, _, _ in actions)}


def retention_drop(admin: str, table: str) -> dict[str, Any]:
    """Detach and drop the oldest partition of ``table`` holding rows, as retention does; timed."""
    with psycopg.connect(admin, autocommit=True) as con:
        part, rows = con.execute(
            "SELECT p.partition::text, c.reltuples::bigint FROM soundscape_partitions(%s) AS p"
            " JOIN pg_class AS c ON c.oid = p.partition WHERE c.reltuples > 0 ORDER BY p.lower_bound LIMIT 1",
            (table,)).fetchone()
        t0 = time.perf_counter()
        con.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(table), sql.SQL(part)))
        con.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(part)))
        return {"partition": part, "rows": int(rows), "seconds": round(time.perf_counter() - t0, 3)}


def run_queries(args: argparse.Namespace) -> dict[str, Any]:
    """The query-latency phase: the data set in day partitions (and, with ``--widths day,week``,
    again in week partitions), the dashboard's queries timed as the read-only role, the hourly
    maintenance run, a short ingest into each layout and a retention drop."""
    widths = [w.strip() for w in args.widths.split(",") if w.strip()]
    if not widths or any(w not in ("day", "week") for w in widths):
        raise SystemExit("--widths: day, week or day,week")
    work = Path(tempfile.mkdtemp(prefix="fleet-q-", dir=args.queue_dir))
    server = PgServer(settings={**DURABLE, "max_connections": str(args.connections + 20)})
    devices = [f"fleet-{i:05d}" for i in range(args.query_devices)]
    clock = Clock(args.query_days, args.query_raw_hours)
    templates = Templates()
    layouts: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        server.start()
        for n, width in enumerate(widths):
            t_layout = t0 = time.perf_counter()
            # the rollup tables are not partitioned: loaded once, in the first layout, and queried there
            admin, fig = prepare_layout(server, f"fleet_{width}", width, clock, devices, templates,
                                        rollups=n == 0, first=n == 0)
            fig["seconds"]["prepare"] = round(time.perf_counter() - t0, 1)
            if n == 0:
                probe = clock.raw_since + timedelta(hours=1)
                with psycopg.connect(admin) as con:
                    fig["rollup_check"] = check_rollups(con, devices[-1], probe)
            fig["maintain"] = maintain_run(admin, clock)
            reader = server.dsn(f"fleet_{width}", user=READER, password=READER_PASSWORD)
            timed = {}
            with psycopg.connect(reader, prepare_threshold=None) as con:
                con.execute("SET TIME ZONE 'UTC'")
                for q in queries(clock, devices, args.query_repeats, args.query_raw_repeats):
                    if n > 0 and not q["partitioned"]:
                        continue
                    timed[f"{q['name']}/{q['source']}"] = {"what": q["what"], "source": q["source"],
                                                           **time_query(con, q)}
            timed["report_hourly_rollup_7d/rollup"] = {
                "what": "(e) agent/report.py hourly_rollup, one device, 7 days", "source": "rollup + unrolled raw",
                **time_report(reader, clock, devices, args.query_repeats)}
            timed["report_hourly_rollup_7d/rollup, jit off"] = {
                "what": "(e) the same, in a session with jit = off", "source": "rollup + unrolled raw, jit off",
                **time_report(reader, clock, devices, args.query_repeats, jit=False)}
            fig["queries"] = timed
            ingest_devices = [f"ingest-{width}-{i:04d}" for i in range(args.query_ingest_devices)]
            t0 = time.perf_counter()
            m = ingest_run(server, f"fleet_{width}", admin, ingest_devices, hours=args.query_ingest_hours, k=args.k,
                           connections=min(args.connections, len(ingest_devices)), batch_size=args.batch_size,
                           work=work)
            m.pop("bytes_after")
            fig["ingest"] = {k: m[k] for k in ("complete", "inserted", "wall_s", "rows_per_s", "commits",
                                                "commit_latency_s", "server_cpu_share")}
            fig["ingest"]["devices"], fig["ingest"]["hours_per_device"] = len(ingest_devices), args.query_ingest_hours
            fig["retention_drop"] = {t: retention_drop(admin, t) for t in ("heartbeats", "windows")}
            fig["seconds"]["ingest_and_drop"] = round(time.perf_counter() - t0, 1)
            fig["seconds"]["total"] = round(time.perf_counter() - t_layout, 1)
            layouts[width] = fig
            with psycopg.connect(server.dsn("postgres"), autocommit=True) as con:
                con.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(f"fleet_{width}")))
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return summarise_queries(args, clock, devices, layouts, widths, machine(server), time.perf_counter() - t_all)


TARGET_S = 1.0  # every dashboard query, p95


def dashboard_verdict(per_query: dict[str, dict[str, Any]]) -> bool:
    """Whether every dashboard query meets :data:`TARGET_S` at p95 as db.yml's reader role runs
    it: the rollup, device_status and report queries (not the raw-row comparisons), each in its
    ``jit off`` variant where one was timed (the role's sessions have ``jit = off``)."""
    return all(q.get("meets_target") for k, q in per_query.items()
               if q.get("source") != "raw" and "p95_s" in q and f"{k}, jit off" not in per_query)


def summarise_queries(args: argparse.Namespace, clock: Clock, devices: list[str], layouts: dict[str, Any],
                      widths: list[str], mach: dict[str, Any], wall: float) -> dict[str, Any]:
    first = layouts[widths[0]]
    rows = first["rows"]
    per_query = {}
    for key, q in first["queries"].items():
        entry = {k: q.get(k) for k in ("what", "source", "repeats", "rows", "p50_s", "p95_s", "max_s",
                                       "planning_ms", "estimated_cost", "jit", "skipped")
                 if q.get(k) is not None}
        if "p95_s" in q:
            entry["meets_target"] = q["p95_s"] < TARGET_S
        per_query[key] = entry
    common = {**git_commit(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": mach}
    queries_section = {
        **common,
        "parameters": {"devices": args.query_devices, "days": args.query_days, "raw_hours": args.query_raw_hours,
                       "repeats": args.query_repeats, "raw_repeats": args.query_raw_repeats, "layout": widths[0],
                       "server_settings": DURABLE, "role": f"{READER} (SELECT only, row-level security on)"},
        "wall_s": round(wall, 1),
        "data_set": {
            "end": clock.end.isoformat(), "raw_since": clock.raw_since.isoformat(), "since": clock.since.isoformat(),
            "generated": {
                "windows": f"{len(devices)} devices x every 10 s of [raw_since, end) (COPY)",
                "detections": "3 AST per window + 0-3 BirdNET (Poisson, dawn/dusk choruses)",
                "heartbeats": f"{len(devices)} devices x every 5 min of [since, end) (COPY)",
                "rollup_hourly": f"{len(devices)} devices x every whole hour of [since, end) (COPY, computed from"
                                 " the same values as the raw rows; the hours after the watermark recomputed by"
                                 " soundscape_maintain())",
                "rollup_detections_hourly": "one row per device, hour and label detected (COPY)",
            },
            "rows": rows,
            "tables": first["tables"],
            "detections_per_window": round(rows["detections"] / rows["windows"], 2) if rows.get("windows") else None,
            "labels_per_device_hour": round(rows["rollup_detections_hourly"] / rows["rollup_hourly"], 1)
            if rows.get("rollup_hourly") else None,
            "seconds": first["seconds"],
        },
        "rollup_check": first.get("rollup_check"),
        "maintain_hourly_run": first["maintain"],
        "queries": per_query,
        "target_p95_s": TARGET_S,
        "dashboard_queries_meet_target": dashboard_verdict(per_query),
    }
    width_section: dict[str, Any] = {**common, "widths": {}}
    for w, fig in layouts.items():
        width_section["widths"][w] = {
            "partitions": {t: fig["tables"][t]["partitions"] for t in TABLES},
            "partitions_created": fig["partitions_created"],
            "largest_partition": fig["largest_partition"],
            "index_bytes": {t: fig["tables"][t]["index_bytes"] for t in ("windows", "detections", "heartbeats")},
            "queries": {k: {x: q.get(x) for x in ("p50_s", "p95_s", "planning_ms", "estimated_cost", "jit", "skipped")
                            if q.get(x) is not None}
                        for k, q in fig["queries"].items()
                        if k.endswith("/raw") or k.startswith(("device_status", "report"))},
            "maintain_hourly_run": fig["maintain"],
            "ingest": fig["ingest"],
            "retention_drop": fig["retention_drop"],
            "seconds": fig["seconds"],
        }
    if {"day", "week"} <= layouts.keys():
        width_section["comparison"] = compare_widths(width_section["widths"], rows["windows"])
    return {"queries": queries_section, "partition_width": width_section}


TIE = 0.15  # day and week within 15 % of each other: a tie (repeated runs vary about that much)


def better(day: float | None, week: float | None, lower: bool = True) -> str | None:
    """"day", "week" or "tie" for a figure measured in both layouts (lower is better unless not ``lower``)."""
    if not day or not week:
        return None
    if abs(week - day) <= TIE * min(day, week):
        return "tie"
    return ("day" if day < week else "week") if lower else ("day" if day > week else "week")


def compare_widths(w: dict[str, Any], windows: int) -> dict[str, Any]:
    """Day against week: each raw-table query's p95 (and planning time, JIT), the hourly
    maintenance, the short ingest, the partitions' sizes, and which layout did better on each."""
    d, k = w["day"], w["week"]
    ratio = {}
    for name, q in d["queries"].items():
        other = k["queries"].get(name, {})
        if q.get("p95_s") and other.get("p95_s"):
            ratio[name] = {"p95_day_s": q["p95_s"], "p95_week_s": other["p95_s"],
                           "week_over_day": round(other["p95_s"] / q["p95_s"], 2),
                           "planning_ms_day": q.get("planning_ms"), "planning_ms_week": other.get("planning_ms"),
                           "jit_day": q.get("jit"), "jit_week": other.get("jit"),
                           "better": better(q["p95_s"], other["p95_s"])}
    # index bytes per device-day of raw windows + detections, from the day layout's raw rows
    idx = sum(d["index_bytes"][t] for t in ("windows", "detections"))
    per_device_day = idx / (windows / SLOTS)
    ingest = {x: w[x]["ingest"] for x in ("day", "week")}
    return {
        "queries": ratio,
        "maintain_hourly_run_s": {"day": d["maintain_hourly_run"]["seconds"],
                                  "week": k["maintain_hourly_run"]["seconds"],
                                  "better": better(d["maintain_hourly_run"]["seconds"],
                                                   k["maintain_hourly_run"]["seconds"])},
        "ingest_commit_p95_s": {"day": ingest["day"]["commit_latency_s"]["p95"],
                                "week": ingest["week"]["commit_latency_s"]["p95"],
                                "better": better(ingest["day"]["commit_latency_s"]["p95"],
                                                 ingest["week"]["commit_latency_s"]["p95"])},
        "ingest_rows_per_s": {"day": ingest["day"]["rows_per_s"], "week": ingest["week"]["rows_per_s"],
                              "better": better(ingest["day"]["rows_per_s"], ingest["week"]["rows_per_s"], lower=False)},
        # what one partition of windows + detections holds at 10,000 devices: its indexes' size
        "partition_index_bytes_10000_devices": {"day": round(per_device_day * 10_000),
                                                "week": round(per_device_day * 10_000 * 7)},
        "retention_granularity_days": {"day": 1, "week": 7},
        "tie_band": TIE,
    }


SECTIONS = ("full_fleet", "steady", "queries", "partition_width")  # fleet.json's keys besides the default ingest run's


def ingest_lines(r: dict[str, Any]) -> list[str]:
    lat = r["commit_latency_s"]
    lines = [
        f"Measured at commit `{(r['commit'] or '?')[:12]}`{' (dirty tree)' if r['dirty'] else ''} on "
        f"{r['measured_at']}, {r['machine']['cpus']} CPUs, PostgreSQL {r['machine']['postgresql']}.", "",
        "| devices | h/device | connections | batch | rows/s | windows/s | commit p50 / p95 / p99 (s) "
        "| server CPU | WAL bytes/row | wall (s) | complete |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
        f"| {r['parameters']['devices']} | {r['parameters']['hours_per_device']} | {r['parameters']['connections']} "
        f"| {r['parameters']['batch_size']} | {r['rows_per_s']} | {r['windows_per_s']} "
        f"| {lat['p50']} / {lat['p95']} / {lat['p99']} | {r['server_cpu_share']:.0%} of the machine "
        f"| {r['wal_bytes_per_row']} | {r['wall_s']} | {r['complete']} |", "",
        "Table + index bytes per device-day: "
        + ", ".join(f"{t} {b / 1e6:.1f} MB" for t, b in r["bytes_per_device_day"].items()), "",
        f"A fleet of {r['fleet']['devices']} devices needs {r['fleet']['steady_rows_per_s_needed']} rows/s at its "
        f"steady rate; this run reached {r['rows_per_s']} rows/s: headroom x{r['fleet']['headroom']}"
        + (f", backlog growth {r['fleet']['backlog_growth_rows_per_s']} rows/s."
           if r["fleet"].get("backlog_growth_rows_per_s") else "."), "",
    ]
    return lines


def fmt_s(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s")


def query_lines(q: dict[str, Any]) -> list[str]:
    d, p = q["data_set"], q["parameters"]
    lines = [
        f"Measured at commit `{(q['commit'] or '?')[:12]}`{' (dirty tree)' if q['dirty'] else ''} on "
        f"{q['measured_at']}, {q['machine']['cpus']} CPUs; {p['devices']} devices x {p['days']} days, raw rows for "
        f"the last {p['raw_hours']} h (+ the current hour), {p['layout']} partitions, as `{READER}`; wall "
        f"{q['wall_s']} s.", "",
        "| table | rows | bytes (with indexes) | partitions |", "|---|---:|---:|---:|",
    ]
    for t, f in d["tables"].items():
        if d["rows"].get(t) or f["bytes"] > 1 << 20:
            lines.append(f"| {t} | {d['rows'].get(t, 0):,} | {f['bytes'] / 1e9:.2f} GB | {f['partitions']} |")
    lines += ["", f"Detections per window {d['detections_per_window']}, labels per device-hour "
              f"{d['labels_per_device_hour']}. Generated rollups against the server's functions: "
              f"{'match' if (q.get('rollup_check') or {}).get('match') else 'MISMATCH'}. Hourly "
              f"`soundscape_maintain()`: {q['maintain_hourly_run']['seconds']} s "
              f"({q['maintain_hourly_run']['rolled_up']}).", "",
              f"| query | source | p50 | p95 | max | rows | JIT | < {q['target_p95_s']:g} s at p95 |",
              "|---|---|---:|---:|---:|---:|---|---|"]
    for x in q["queries"].values():
        if x.get("skipped"):
            lines.append(f"| {x['what']} | {x['source']} | skipped: {x['skipped']} | | | | | |")
            continue
        lines.append(f"| {x['what']} | {x['source']} | {fmt_s(x['p50_s'])} | {fmt_s(x['p95_s'])} "
                     f"| {fmt_s(x['max_s'])} | {x['rows']} | {({True: 'yes', False: 'no'}).get(x.get('jit'), '-')} "
                     f"| {'yes' if x['meets_target'] else 'no'} |")
    lines += ["", "Every dashboard query (rollups, device_status, the report) as db.yml's reader role runs it "
              "(`jit = off`; the rows with JIT are the server's default, for comparison) under the target at p95: "
              f"{'yes' if q['dashboard_queries_meet_target'] else 'no'}.", ""]
    return lines


def width_lines(w: dict[str, Any]) -> list[str]:
    widths = list(w["widths"])
    lines = ["| | " + " | ".join(widths) + " |", "|---|" + "---:|" * len(widths)]

    def row(label: str, get: Any) -> None:
        cells = []
        for x in widths:
            try:
                cells.append(get(w["widths"][x]))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("partitions per table (windows)", lambda f: str(f["partitions"]["windows"]))
    for k in w["widths"][widths[0]]["queries"]:
        row(f"{k} p95 (planning)", lambda f, k=k: f"{fmt_s(f['queries'][k]['p95_s'])} "
            f"({f['queries'][k].get('planning_ms', '-')} ms)")
    row("hourly soundscape_maintain()", lambda f: f"{f['maintain_hourly_run']['seconds']} s")
    row("ingest commit p50 / p95", lambda f: f"{fmt_s(f['ingest']['commit_latency_s']['p50'])} / "
        f"{fmt_s(f['ingest']['commit_latency_s']['p95'])}")
    row("ingest rows/s", lambda f: str(f["ingest"]["rows_per_s"]))
    row("largest windows partition: table / index",
        lambda f: f"{f['largest_partition']['windows']['table_bytes'] / 1e9:.2f}"
        f" / {f['largest_partition']['windows']['index_bytes'] / 1e9:.2f} GB")
    row("retention drop (heartbeats)", lambda f: f"{f['retention_drop']['heartbeats']['rows']:,} rows in "
        f"{fmt_s(f['retention_drop']['heartbeats']['seconds'])}")
    lines.append("")
    c = w.get("comparison")
    if c:
        hot = c["partition_index_bytes_10000_devices"]
        lines += [f"At 10,000 devices one partition of windows and detections holds {hot['day'] / 1e9:.1f} GB of "
                  f"indexes when a day wide, {hot['week'] / 1e9:.1f} GB when a week wide (once its week is full).", "",
                  "Better (p95, within " f"{c['tie_band']:.0%} a tie): "
                  + "; ".join(f"{name} {x['better']}" for name, x in c["queries"].items())
                  + f"; hourly maintenance {c['maintain_hourly_run_s']['better']}; ingest commit p95 "
                  f"{c['ingest_commit_p95_s']['better']}; ingest rows/s {c['ingest_rows_per_s']['better']}.", ""]
    return lines


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Fleet ingest and queries", "",
             "`benchmarks/fleet.py` (see benchmarks/README.md, \"Fleet ingest\" and \"Fleet queries\").", ""]
    if "rows_per_s" in r:
        lines += ["## Ingest", "", *ingest_lines(r)]
    if "full_fleet" in r:
        lines += ["## Ingest, the full fleet", "", *ingest_lines(r["full_fleet"])]
    if "steady" in r:
        from fleet_steady import steady_lines

        lines += ["## Steady load", "", *steady_lines(r["steady"])]
    if "queries" in r:
        lines += ["## Dashboard queries", "", *query_lines(r["queries"])]
    if "partition_width" in r:
        lines += ["## Partition width: day against week", "", *width_lines(r["partition_width"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--hours", type=float, default=1.0, help="hours of 10 s windows queued per device (default 1)")
    p.add_argument("--k", type=int, default=3, help="AST detections per window (default 3)")
    p.add_argument("--connections", type=int, default=32, help="devices syncing at once (default 32)")
    p.add_argument("--batch-size", type=int, default=500, help="windows per batch ([sync] batch_size, default 500)")
    p.add_argument("--fleet", type=int, default=10_000, help="fleet size the steady rate is computed for")
    p.add_argument("--store-as", choices=["full_fleet"], default=None,
                   help="keep this ingest run under that key of fleet.json (the 10,000-device run) instead of\n"
                        "the top-level keys")
    p.add_argument("--steady", metavar="INTERVALS", default=None,
                   help="the steady-load phase instead of the ingest: --devices syncing every INTERVAL s\n"
                        "(comma-separated list, e.g. 300,30), in real time, open loop (benchmarks/fleet_steady.py);\n"
                        "INTERVAL:CONNECTIONS runs that interval with its own --connections (e.g. 300,300:128)")
    p.add_argument("--steady-seconds", type=float, default=300.0,
                   help="longest observed span of a steady run (default 300 s; the run lasts one interval)")
    p.add_argument("--queries", action="store_true",
                   help="the query-latency phase instead of the ingest: a month of a fleet bulk-generated\n"
                        "(COPY), the dashboard's queries timed, day against week partitions")
    p.add_argument("--query-devices", type=int, default=1000, help="devices of the generated data set (default 1000)")
    p.add_argument("--query-days", type=int, default=30, help="days of rollups and heartbeats (default 30)")
    p.add_argument("--query-raw-hours", type=int, default=24,
                   help="hours of raw windows and detections before the current hour (default 24)")
    p.add_argument("--query-repeats", type=int, default=20, help="timed runs of each query (default 20)")
    p.add_argument("--query-raw-repeats", type=int, default=5,
                   help="timed runs of each query on the raw rows (default 5)")
    p.add_argument("--query-ingest-devices", type=int, default=200,
                   help="devices of the short ingest into each layout (default 200)")
    p.add_argument("--query-ingest-hours", type=float, default=0.25,
                   help="hours queued per device in that ingest (default 0.25)")
    p.add_argument("--widths", default="day,week", help="partition widths compared (default day,week)")
    p.add_argument("--queue-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                   help="where the device queues live (default /dev/shm: the devices' SD cards are not measured)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    args = p.parse_args(argv)
    path = args.out / "fleet.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    if args.steady:
        from fleet_steady import run_steady

        part = run_steady(args)
        result = {**existing, **part}
        ok = all(s["complete"] for s in part["steady"]["runs"])
    elif args.queries:
        part = run_queries(args)
        result = {**existing, **part}
        ok = all(x["ingest"]["complete"] for x in part["partition_width"]["widths"].values())
    else:
        run_result = run(args)
        ok = run_result["complete"]
        if args.store_as:
            result = {**existing, args.store_as: run_result}
        else:
            result = {**run_result, **{k: existing[k] for k in SECTIONS if k in existing}}
    if "queries" in result:  # the verdict is derived from the figures: kept current with its definition
        result["queries"]["dashboard_queries_meet_target"] = dashboard_verdict(result["queries"]["queries"])
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "fleet.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
