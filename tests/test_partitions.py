"""The partitioned central schema (agent/sql/0010_partitions.sql, issue 15 part 1) against the
suite's real PostgreSQL, with device roles as deploy/db.yml grants them (tests.pg), real SQLite
outboxes and the real Syncer; no mocks.

- A database of schema 9 holding a device's rows is migrated in place while another device
  keeps syncing through it: nothing is lost or duplicated, the old rows are read through the new
  tables (their legacy partition), the syncing device's queue drains, and the agent of this
  release wrote to schema 9 before and to schema 10 after.
- ``soundscape-agent db maintain`` rolls up each device-hour (LAeq as an energy mean, LA90,
  LAFmax, detections per label) equal to the same figures computed here from the raw rows,
  gives rows waiting in a default partition their day's partition, and with a retention drops
  whole partitions while the rollups stay.
"""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

import agent.sync as sync_module
from agent.config import StoreConfig
from agent.errors import SyncError
from agent.store import Outbox
from agent.sync import Syncer, migrate
from tests.factories import make_result, make_results
from tests.test_device_keys import provision, server_rows
from tests.test_run import agent
from tests.test_sync import sync_cfg

OLD, LIVE = "dev-before", "dev-during"


def partitions(dsn: str, table: str) -> list[str]:
    return [r[0] for r in server_rows(
        dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
             " WHERE i.inhparent = %s::regclass ORDER BY 1", table)]


def test_the_schema_9_database_is_partitioned_in_place_while_a_device_keeps_syncing(pg_server, pg_dsn, tmp_path,
                                                                                     monkeypatch):
    real = sync_module._migrations()
    monkeypatch.setattr(sync_module, "_migrations", lambda: tuple(m for m in real if m[0] <= 9))
    assert migrate(pg_dsn) == 9
    dsns = provision(pg_server, pg_dsn, OLD, LIVE)
    # the rows a schema-9 database holds: this release's agent syncing to it (server schema 9)
    old = make_results(40, device=OLD, k=2)

    async def fill_old():
        async with Outbox(StoreConfig(path=tmp_path / "old.db")) as ob:
            for r in old:
                await ob.put(r)
            return await Syncer(sync_cfg(dsns[OLD]), ob).sync_once()

    assert asyncio.run(fill_old()) == 40
    monkeypatch.setattr(sync_module, "_migrations", lambda: real)  # this release's migrations from now on

    # LIVE records a window every 20 ms (dated now, so that after the migration they go to
    # daily partitions) and syncs after each, before, during and after the migration.
    migrated, delivering = threading.Event(), threading.Event()
    failed_rounds: list[str] = []
    start = datetime.now(timezone.utc).replace(microsecond=0)

    async def live_device():
        async with Outbox(StoreConfig(path=tmp_path / "live.db")) as ob:
            syncer = Syncer(sync_cfg(dsns[LIVE]), ob)
            i, after = 0, 0
            while after < 15:
                await ob.put(make_result(i, device=LIVE, k=3, start=start + timedelta(seconds=10 * i)))
                i += 1
                try:
                    if await syncer.sync_once() and i >= 3:
                        delivering.set()
                except SyncError as err:
                    # the migration holds the tables' locks, or committed between the round's
                    # schema check (9) and its batch (refused whole): the round is retried
                    failed_rounds.append(err.message)
                if migrated.is_set():
                    after += 1
                await asyncio.sleep(0.02)
            await syncer.sync_once()
            return i, await ob.stats()

    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(live=asyncio.run(live_device())))
    thread.start()
    try:
        assert delivering.wait(60)
        assert migrate(pg_dsn, lock_wait_s=60) == len(real)
    finally:
        migrated.set()
        thread.join(120)
    live_count, stats = result["live"]
    assert stats.unsynced == 0 and stats.set_aside == 0, stats

    # nothing lost, nothing twice: every window once per device, each detection once
    counts = dict(server_rows(pg_dsn, "SELECT device, count(*) FROM windows GROUP BY device"))
    assert counts == {OLD: 40, LIVE: live_count}, (counts, failed_rounds)
    assert server_rows(pg_dsn, "SELECT count(*) FROM (SELECT device, start_time FROM windows"
                               " GROUP BY 1, 2 HAVING count(*) > 1) AS d") == [(0,)]
    dets = dict(server_rows(pg_dsn, "SELECT device, count(*) FROM detections GROUP BY device"))
    assert dets == {OLD: 80, LIVE: 3 * live_count}
    # the old rows are the legacy partition (until tomorrow, UTC), read through the new table
    assert server_rows(pg_dsn, "SELECT DISTINCT tableoid::regclass::text FROM windows WHERE device = %s", OLD) \
        == [("windows_legacy",)]
    tomorrow = (start + timedelta(days=1)).strftime("%Y%m%d")
    assert set(partitions(pg_dsn, "windows")) >= {"windows_legacy", "windows_default", f"windows_p{tomorrow}"}
    # the live device delivered before the migration and after it
    before, after = server_rows(
        pg_dsn, "SELECT count(*) FILTER (WHERE w.sync_time < m.applied_at), count(*) FILTER (WHERE w.sync_time >"
                " m.applied_at) FROM windows AS w, schema_migrations AS m WHERE m.version = 10 AND w.device = %s",
        LIVE)[0]
    assert before >= 1 and after >= 10, (before, after, failed_rounds)
    # the views still read everything (re-created against the partitioned tables)
    assert server_rows(pg_dsn, "SELECT count(*) FROM detections_flat WHERE device = %s", OLD) == [(80,)]
    assert server_rows(pg_dsn, "SELECT device FROM device_status ORDER BY 1") == []  # no heartbeats sent
    # a device role still cannot write another device's rows nor touch a partition directly
    with psycopg.connect(dsns[LIVE]) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO windows_default (window_key) VALUES ('x')")


def energy_mean(levels: list[float]) -> float:
    return 10 * math.log10(sum(10 ** (v / 10) for v in levels) / len(levels))


def test_db_maintain_rolls_up_each_hour_and_drops_whole_partitions_past_the_retention(pg_server, migrated_dsn,
                                                                                        tmp_path):
    device = "dev-rollup"
    dsn = provision(pg_server, migrated_dsn, device)[device]
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    recent = today - timedelta(days=3) + timedelta(hours=5)   # no partition yet: the default one
    ancient = today - timedelta(days=40) + timedelta(hours=5)  # older than the retention set below
    rows = ([make_result(i, device=device, k=2, start=recent + timedelta(seconds=10 * i)) for i in range(30)]
            + [make_result(100 + i, device=device, k=1, start=ancient + timedelta(seconds=10 * i)) for i in range(6)])

    async def deliver():
        async with Outbox(StoreConfig(path=tmp_path / "q.db")) as ob:
            for r in rows:
                await ob.put(r)
            return await Syncer(sync_cfg(dsn), ob).sync_once()

    assert asyncio.run(deliver()) == 36
    assert server_rows(migrated_dsn, "SELECT tableoid::regclass::text, count(*) FROM windows GROUP BY 1") \
        == [("windows_default", 36)]

    out = agent("db", "maintain", "--config", "/dev/null", "--dsn", migrated_dsn, "--keep", "windows=30",
                "--keep", "detections=30")
    assert out.returncode == 0, out.stderr
    day = "windows_p" + recent.strftime("%Y%m%d")
    assert f"created: {day} (rows moved from windows_default)" in out.stdout, out.stdout
    assert "deleted: windows_default (6 rows older than 30 days)" in out.stdout, out.stdout
    assert server_rows(migrated_dsn, "SELECT tableoid::regclass::text, count(*) FROM windows GROUP BY 1") \
        == [(day, 30)]

    # the rollups equal the raw rows' figures, for the recent hour and for the dropped one
    laeq = [r.levels.laeq_db for r in rows[:30]]
    series = sorted(v for r in rows[:30] for v in r.levels.laeq_series_db)
    hour = recent.replace(minute=0)
    got = server_rows(migrated_dsn, "SELECT windows, laeq_db, la90_db, lafmax_db FROM noise_levels_hourly"
                                    " WHERE device = %s AND hour = %s", device, hour)
    assert len(got) == 1 and got[0][0] == 30
    assert got[0][1] == pytest.approx(energy_mean(laeq), abs=1e-9)
    assert got[0][2] == pytest.approx(float(np.percentile(series, 10)), abs=1e-9)  # linear, as percentile_cont
    assert got[0][3] == pytest.approx(max(r.levels.lafmax_db for r in rows[:30]), abs=1e-9)
    labels = {}
    for r in rows[:30]:
        for d in r.detections:
            labels[d.label] = labels.get(d.label, 0) + 1
    assert dict(server_rows(migrated_dsn, "SELECT label, detections FROM detections_hourly"
                                          " WHERE device = %s AND hour = %s", device, hour)) == labels
    assert server_rows(migrated_dsn, "SELECT windows FROM noise_levels_hourly WHERE device = %s AND hour = %s",
                       device, ancient.replace(minute=0)) == [(6,)]

    # a shorter retention drops the whole day partition; the rollups stay
    out = agent("db", "maintain", "--config", "/dev/null", "--dsn", migrated_dsn, "--keep", "windows=2")
    assert out.returncode == 0 and f"dropped: {day}" in out.stdout, out.stdout + out.stderr
    assert day not in partitions(migrated_dsn, "windows")
    assert server_rows(migrated_dsn, "SELECT count(*) FROM windows") == [(0,)]
    assert server_rows(migrated_dsn, "SELECT count(*) FROM noise_levels_hourly WHERE device = %s", device) == [(2,)]
    # a late window of that hour (its raw rows are gone): the hour's rollup is not replaced by it
    late = make_result(29, device=device, stream="late", k=1, start=recent + timedelta(seconds=295))

    async def deliver_late():
        async with Outbox(StoreConfig(path=tmp_path / "late.db")) as ob:
            await ob.put(late)
            return await Syncer(sync_cfg(dsn), ob).sync_once()

    assert asyncio.run(deliver_late()) == 1
    out = agent("db", "maintain", "--config", "/dev/null", "--dsn", migrated_dsn)
    assert out.returncode == 0 and "deleted: windows_default (1 rows older than 2 days)" in out.stdout, out.stdout
    assert server_rows(migrated_dsn, "SELECT windows FROM noise_levels_hourly WHERE device = %s AND hour = %s",
                       device, hour) == [(30,)]
    # partitions ahead: today and the 7 days after it, for every table
    for table in ("windows", "detections", "heartbeats", "gaps", "clock_steps"):
        names = partitions(migrated_dsn, table)
        assert all(f"{table}_p{(today + timedelta(days=d)).strftime('%Y%m%d')}" in names for d in range(8)), names


def test_db_maintain_says_what_is_wrong_with_its_arguments_and_the_database(pg_dsn):
    bad = agent("db", "maintain", "--config", "/dev/null", "--dsn", pg_dsn, "--keep", "windows=0")
    assert bad.returncode == 64 and "--keep 'windows=0'" in bad.stderr and "Traceback" not in bad.stderr
    empty = agent("db", "maintain", "--config", "/dev/null", "--dsn", pg_dsn)
    assert empty.returncode == 75 and "db init" in empty.stderr and "Traceback" not in empty.stderr
