"""Fleet benchmark, steady load: a fleet at its steady rate, in real time, open loop.

Each of ``devices`` devices syncs once per ``interval`` seconds (the agent's ``[sync] interval_s``)
at its own phase, carrying what it recorded since its last sync (``interval / 10`` windows of 10 s,
``k`` detections each, a heartbeat every 300 s), through the agent's real ``Syncer`` (connect,
schema check, batch, COMMIT, mark locally), with its own role. Sync rounds are started on
schedule whether or not the earlier ones have finished (open loop: a server that cannot keep up
shows as rounds starting late and a growing number of rounds outstanding, which in the field is
the devices' queues growing). ``connections`` bounds the rounds in progress (the server's
``max_connections``; a round waiting for a slot counts as late).

The run lasts one interval (at most ``seconds``): every device of the fleet syncs once, so the
measured span is one steady round of the whole fleet. The clients run on the same machine as
the server: their CPU is reported beside the server's.

Docs: benchmarks/README.md, "Fleet steady load"; results: the ``steady`` section of fleet.json.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fleet as base

from agent.config import StoreConfig, SyncConfig
from agent.store import Outbox
from tests.pg import PgServer

#: a round counts as on time when it starts within this many seconds of its schedule
ON_TIME_S = 1.0


def _heartbeats_per_round(interval: float, index: int) -> int:
    """Heartbeats the round of device ``index`` carries: ``interval / 300`` on average, spread
    evenly over the devices (a device's 5-minute heartbeat falls in some rounds and not others)."""
    share = interval / base.HEARTBEAT_S
    return int((index + 1) * share) - int(index * share)


async def _rounds(server: PgServer, dbname: str, queues: dict[str, Path], roles: dict[str, str], rate: float,
                  connections: int, batch_size: int) -> dict[str, Any]:
    """Start each device's round at ``t0 + j / rate`` (open loop); per round: due, started,
    finished (loop seconds), windows delivered; the rounds outstanding sampled every second."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(connections)
    latencies: list[tuple[int, float]] = []
    rounds: list[tuple[float, float, float, int]] = []
    failures: list[str] = []
    order = list(queues)
    random.Random(7).shuffle(order)
    t0 = loop.time() + 1.0
    done = asyncio.Event()

    async def device(dev: str, due: float) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        async with sem:
            started = loop.time()
            cfg = SyncConfig(dsn=server.dsn(dbname, user=roles[dev], password=base.PASSWORD), link="ethernet",
                             batch_size=batch_size, tls="off")
            try:
                async with Outbox(StoreConfig(path=queues[dev], reserve_mb=0)) as ob:
                    syncer = base.TimedSyncer(cfg, ob)
                    syncer.latencies = latencies
                    n = await syncer.sync_once()
            except Exception as err:  # counted and reported: a failed round is a finding, not a crash
                failures.append(f"{dev}: {err}")
                n = 0
        rounds.append((due - t0, started - t0, loop.time() - t0, n))

    outstanding: list[tuple[float, int]] = []

    async def sampler() -> None:
        while not done.is_set():
            now = loop.time() - t0
            due = min(len(order), max(0, int(now * rate) + 1))
            outstanding.append((round(now, 1), due - len(rounds)))
            try:
                await asyncio.wait_for(done.wait(), timeout=1.0)
            except TimeoutError:
                pass

    sample = asyncio.ensure_future(sampler())
    await asyncio.gather(*(device(d, t0 + j / rate) for j, d in enumerate(order)))
    done.set()
    await sample
    return {"rounds": rounds, "latencies": latencies, "outstanding": outstanding, "failures": failures}


def steady_run(server: PgServer, dbname: str, admin: str, *, devices: int, interval: float, seconds: float,
               k: int, connections: int, batch_size: int, work: Path) -> dict[str, Any]:
    """One steady round of a fleet of ``devices`` syncing every ``interval`` s, observed for
    ``min(interval, seconds)`` s (the devices whose round falls in that span); the measurements."""
    span = min(interval, seconds)
    rate = devices / interval  # rounds per second of the whole fleet
    n = max(1, round(rate * span))
    names = [f"steady{int(interval)}-{i:05d}" for i in range(n)]
    t = time.perf_counter()
    roles = base.provision(admin, names)
    provision_s = time.perf_counter() - t
    windows = max(1, round(interval / base.WINDOW_S))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(seconds=windows * base.WINDOW_S)
    base.create_day_partitions(admin, start, now + timedelta(seconds=span + 60))
    templates: dict[int, Path] = {}
    queues: dict[str, Path] = {}
    beats_total = 0
    for i, dev in enumerate(names):
        beats = _heartbeats_per_round(interval, i)
        beats_total += beats
        if beats not in templates:
            templates[beats] = work / f"steady-template-{int(interval)}-{beats}.db"
            asyncio.run(base.fill_template(templates[beats], windows, beats, k, start))
        queues[dev] = work / f"{dev}.db"
        base.device_queue(templates[beats], queues[dev], dev)
    before = base.server_figures(admin)
    cpu0, client0, wall0 = base.postgres_cpu_s(server), time.process_time(), time.perf_counter()
    r = asyncio.run(_rounds(server, dbname, queues, roles, rate, connections, batch_size))
    wall = time.perf_counter() - wall0
    cpu1, client1 = base.postgres_cpu_s(server), time.process_time()
    after = base.server_figures(admin)
    for q in (*templates.values(), *queues.values()):
        q.unlink(missing_ok=True)
    inserted = {tb: after["rows"][tb] - before["rows"][tb] for tb in base.TABLES}
    rounds = sorted(r["rounds"])
    late = [started - due for due, started, _, _ in rounds]
    took = [finished - started for _, started, finished, _ in rounds]
    quarter = max(1, len(rounds) // 4)
    measured = rounds[-1][2] if rounds else wall  # first due .. last finished
    window_lat = [s for w, s in r["latencies"] if w == windows] or [s for _, s in r["latencies"]]
    outstanding = r["outstanding"]
    third = max(1, len(outstanding) // 3)
    return {
        "parameters": {"fleet_devices": devices, "interval_s": interval, "span_s": span, "k": k,
                       "connections": connections, "batch_size": batch_size},
        "devices_synced": n, "provision_s": round(provision_s, 2),
        "per_round": {"windows": windows, "detections": windows * k, "heartbeats_mean": round(beats_total / n, 3)},
        "rounds_per_s_needed": round(rate, 2),
        "rounds_per_s_reached": round(len(rounds) / measured, 2) if measured else None,
        "rows_per_s_needed": round(rate * (windows * (1 + k) + beats_total / n), 1),
        "rows_per_s": round(sum(inserted.values()) / measured, 1) if measured else None,
        "inserted": inserted,
        "complete": (inserted["windows"], inserted["detections"], inserted["heartbeats"])
        == (windows * n, windows * k * n, beats_total) and not r["failures"],
        "failures": len(r["failures"]), "failure_examples": r["failures"][:3],
        "commit_latency_s": base.latency_quantiles(window_lat),
        "round_s": base.latency_quantiles(took),
        "start_lateness_s": {"first_quarter": base.latency_quantiles(late[:quarter]),
                             "last_quarter": base.latency_quantiles(late[-quarter:]),
                             "max": round(max(late), 3) if late else None},
        "on_time_share": round(sum(x <= ON_TIME_S for x in late) / len(late), 4) if late else None,
        "outstanding_rounds": {"first_third_mean": round(statistics.fmean(c for _, c in outstanding[:third]), 1),
                               "last_third_mean": round(statistics.fmean(c for _, c in outstanding[-third:]), 1),
                               "max": max(c for _, c in outstanding)} if outstanding else None,
        "drain_s": round(rounds[-1][2] - rounds[-1][0], 2) if rounds else None,
        "wall_s": round(wall, 2),
        "server_cpu_share": round((cpu1 - cpu0) / wall / (os.cpu_count() or 1), 3),
        "client_cpu_share": round((client1 - client0) / wall / (os.cpu_count() or 1), 3),
        # what one round costs: the server's connection (fork, authentication), schema check, batches, commits
        "server_cpu_ms_per_round": round((cpu1 - cpu0) / max(1, len(rounds)) * 1000, 2),
        "client_cpu_ms_per_round": round((client1 - client0) / max(1, len(rounds)) * 1000, 2),
        "wal_bytes_per_row": round(base.wal_bytes_between(before["lsn"], after["lsn"])
                                   / max(1, sum(inserted.values()))),
    }


def sustained(s: dict[str, Any]) -> bool:
    """The steady target: complete, p95 commit < 1 s, rounds starting on time at the end as at the
    start (p95 lateness of the last quarter under ``ON_TIME_S``) and no growing backlog (rounds
    outstanding in the last third no more than in the first third, plus one)."""
    o = s["outstanding_rounds"] or {"first_third_mean": 0, "last_third_mean": 0}
    p95 = s["commit_latency_s"]["p95"]
    late = s["start_lateness_s"]["last_quarter"]["p95"]
    return bool(s["complete"] and p95 is not None and p95 < 1.0 and late is not None and late < ON_TIME_S
                and o["last_third_mean"] <= o["first_third_mean"] + 1)


def parse_runs(spec: str, connections: int) -> list[tuple[float, int]]:
    """``--steady``'s list, ``INTERVAL[:CONNECTIONS],...`` (e.g. ``300,300:128,60``), as
    (interval s, connections) pairs; ``connections`` where a run names none.

    Raises:
        SystemExit: an item is not a positive interval with an optional positive connection count.
    """
    runs = []
    for item in spec.split(","):
        interval, _, conns = item.partition(":")
        try:
            run = (float(interval), int(conns) if conns else connections)
        except ValueError:
            run = (0.0, 0)
        if run[0] <= 0 or run[1] <= 0:
            raise SystemExit(f"fleet.py: --steady item {item!r} is not INTERVAL[:CONNECTIONS] "
                             "(seconds > 0, connections > 0), e.g. --steady 300,300:128,60")
        runs.append(run)
    return runs


def run_steady(args: Any) -> dict[str, Any]:
    """The ``--steady`` runs, one per interval, each in a fresh cluster; fleet.json's ``steady``."""
    runs = []
    for interval, connections in parse_runs(args.steady, args.connections):
        work = Path(tempfile.mkdtemp(prefix="fleet-steady-", dir=args.queue_dir))
        server = PgServer(settings={**base.DURABLE, "max_connections": str(connections + 20)})
        try:
            server.start()
            admin = server.create_database("fleet")
            base.migrate(admin)
            s = steady_run(server, "fleet", admin, devices=args.devices, interval=interval,
                           seconds=args.steady_seconds, k=args.k, connections=connections,
                           batch_size=args.batch_size, work=work)
        finally:
            server.cleanup()
            shutil.rmtree(work, ignore_errors=True)
        s["sustained"] = sustained(s)
        runs.append(s)
    return {"steady": {**base.git_commit(), "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "machine": base.machine(server), "server_settings": base.DURABLE, "runs": runs}}


def steady_lines(st: dict[str, Any]) -> list[str]:
    lines = [
        f"Measured at commit `{(st['commit'] or '?')[:12]}`{' (dirty tree)' if st['dirty'] else ''} on "
        f"{st['measured_at']}, {st['machine']['cpus']} CPUs, PostgreSQL {st['machine']['postgresql']}; "
        "clients and server on the same machine.", "",
        "| fleet | interval (s) | connections | devices synced | rows/round | rounds/s needed / reached "
        "| rows/s needed / reached "
        "| commit p50 / p95 / p99 | round p95 | late p95 first / last quarter | outstanding first / last third "
        "(max) | server CPU (ms/round) | client CPU (ms/round) | sustained |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|---|---|---:|---:|---|",
    ]
    for s in st["runs"]:
        p, pr, lat, late, o = (s["parameters"], s["per_round"], s["commit_latency_s"], s["start_lateness_s"],
                               s["outstanding_rounds"] or {})
        incomplete = "" if s["complete"] else f" (incomplete: {s['failures']} failed rounds)"
        rows_round = pr["windows"] + pr["detections"] + pr["heartbeats_mean"]
        lines.append(
            f"| {p['fleet_devices']:,} | {p['interval_s']:g} | {p['connections']} | {s['devices_synced']:,} "
            f"| {rows_round:g} "
            f"| {s['rounds_per_s_needed']} / {s['rounds_per_s_reached']} "
            f"| {s['rows_per_s_needed']} / {s['rows_per_s']} "
            f"| {base.fmt_s(lat['p50'])} / {base.fmt_s(lat['p95'])} / {base.fmt_s(lat['p99'])} "
            f"| {base.fmt_s(s['round_s']['p95'])} "
            f"| {base.fmt_s(late['first_quarter']['p95'])} / {base.fmt_s(late['last_quarter']['p95'])} "
            f"| {o.get('first_third_mean')} / {o.get('last_third_mean')} ({o.get('max')}) "
            f"| {s['server_cpu_share']:.0%} ({s['server_cpu_ms_per_round']}) "
            f"| {s['client_cpu_share']:.0%} ({s['client_cpu_ms_per_round']}) "
            f"| {'yes' if s['sustained'] else 'no'}{incomplete} |")
    lines += ["", "Sustained: every round delivered, commit p95 < 1 s, rounds of the last quarter starting "
              f"within {ON_TIME_S:g} s of their schedule at p95, and no more rounds outstanding at the end than "
              "at the start.", ""]
    return lines
