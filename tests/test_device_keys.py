"""Keys scoped by device and rows the server refuses for good (issue 14, item 5), against the
suite's real PostgreSQL (tests/pg.py) with deploy/db.yml's grants (tests.pg.provision_device),
real SQLite outboxes and the real Syncer; no mocks.

- Another device that learned a device's stream id inserts that device's future window keys in
  its own name: the victim's windows (with and without detections), events and heartbeats all
  arrive under the victim's device, and the intruder's rows stay the intruder's.
- A row the server refuses for good (here a CHECK constraint the owner added) while it accepts
  the rows beside it is set aside in the outbox (kept, counted), everything after it flows, the
  next heartbeat reports it, ``diagnose`` shows it; the next start offers it once more.
- When every row is refused (the role is not mapped to the device) nothing is set aside.
- A database of schema 8 holding detections keeps them through the migration, and an agent of
  schema 8 (detections without a device column) keeps syncing to schema 9.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

import agent.sync as sync_module
from agent.config import OpsConfig, StoreConfig, load_config
from agent.errors import SyncError
from agent.pipeline import build_pipeline
from agent.records import Gap
from agent.store import Outbox
from agent.supervise import Heartbeats
from agent.sync import Syncer, migrate, send_batch
from tests.audio import RECORDINGS
from tests.factories import make_result, make_results
from tests.pg import provision_device
from tests.test_run import agent, write_config
from tests.test_sync import sync_cfg

VICTIM, INTRUDER = "dev-victim", "dev-intruder"


def provision(pg_server, dsn: str, *devices: str) -> dict[str, str]:
    """A device role per device (db.yml's grants); returns device -> its DSN."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    out = {}
    for device in devices:
        role = f"sa_{device.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        provision_device(dsn, role, "device-pw", device)
        out[device] = pg_server.dsn(dbname, user=role, password="device-pw")
    return out


def gap(device: str) -> Gap:
    t = datetime(2026, 6, 1, 5, tzinfo=timezone.utc)
    return Gap(event_id=str(uuid.uuid4()), device_id=device, start_time=t, end_time=t, reason="capture_lost",
               detail="test", windows=0)


def server_rows(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute(sql, args).fetchall()


def test_another_device_cannot_take_a_devices_window_keys(pg_server, migrated_dsn, tmp_path):
    dsns = provision(pg_server, migrated_dsn, VICTIM, INTRUDER)
    victim = [make_result(i, device=VICTIM, stream="s1", k=0 if i % 2 else 2) for i in range(6)]
    # The intruder pre-inserts the victim's future keys (stream s1, windows 0-5) in its own name.
    forged = [make_result(i, device=INTRUDER, stream="s1", k=2) for i in range(6)]

    async def main():
        async with await psycopg.AsyncConnection.connect(dsns[INTRUDER]) as conn:
            assert await send_batch(conn, forged, str(uuid.uuid4())) == 6
            await conn.commit()
        async with Outbox(StoreConfig(path=tmp_path / "victim.db")) as ob:
            for r in victim:
                await ob.put(r)
            await ob.put_event(gap(VICTIM))
            sent = await Syncer(sync_cfg(dsns[VICTIM]), ob).sync_once()
            return sent, await ob.stats()

    sent, stats = asyncio.run(main())
    assert sent == 6 and stats.unsynced == 0 and stats.set_aside == 0
    rows = server_rows(migrated_dsn, "SELECT device, window_key, window_index FROM windows ORDER BY device, window_key")
    assert [(d, k) for d, k, _ in rows if d == VICTIM] == [(VICTIM, f"s1-{i}") for i in range(6)], rows
    assert len([r for r in rows if r[0] == INTRUDER]) == 6
    dets = dict(server_rows(migrated_dsn, "SELECT device, count(*) FROM detections GROUP BY device"))
    assert dets == {VICTIM: 6, INTRUDER: 12}  # the victim's windows 0, 2, 4 have 2 detections each
    # the view joins each detection to its own device's window
    assert server_rows(migrated_dsn, "SELECT count(*) FROM detections_flat WHERE device = %s", VICTIM) == [(6,)]
    assert server_rows(migrated_dsn, "SELECT count(*) FROM gaps WHERE device = %s", VICTIM) == [(1,)]


def set_aside_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT key, refused FROM windows WHERE refused_at IS NOT NULL").fetchall()
    finally:
        con.close()


def test_a_row_the_server_refuses_for_good_is_set_aside_and_everything_after_it_flows(pg_server, migrated_dsn,
                                                                                       tmp_path):
    """A server rule the third window breaks; batches of 3, so the bad row sits in the first
    batch beside good ones. Windows, events and heartbeats after it are delivered; the window
    is kept locally with the server's message, counted in the next heartbeat and by diagnose,
    and offered again (and delivered, once the rule is gone) at the next start."""
    device = "dev-refused"
    dsn = provision(pg_server, migrated_dsn, device)[device]
    with psycopg.connect(migrated_dsn, autocommit=True) as con:
        con.execute("ALTER TABLE windows ADD CONSTRAINT test_no_window_2 CHECK (window_index <> 2) NOT VALID")
    db = tmp_path / "queue.db"
    cfg_path = write_config(
        tmp_path / "agent.toml", agent={"device_id": device},
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_000000.wav")},
        classifier={"enabled": False}, store={"path": str(db)}, sync={"dsn": dsn},
        ops={"heartbeat_interval_s": 60})
    results = make_results(7, device=device, k=2)

    async def first_start():
        async with Outbox(StoreConfig(path=db), device_id=device) as ob:
            for r in results:
                await ob.put(r)
            await ob.put_event(gap(device))
            sent = await Syncer(sync_cfg(dsn, batch_size=3), ob).sync_once()
            return sent, await ob.stats()

    sent, stats = asyncio.run(first_start())
    assert sent == 6 and stats.unsynced == 0 and stats.set_aside == 1, stats
    assert [k for k, _ in set_aside_rows(db)] == ["s1-2"]
    assert "test_no_window_2" in set_aside_rows(db)[0][1]
    windows = [k for (k,) in server_rows(migrated_dsn, "SELECT window_key FROM windows ORDER BY window_index")]
    assert windows == [f"s1-{i}" for i in (0, 1, 3, 4, 5, 6)]
    assert server_rows(migrated_dsn, "SELECT count(*) FROM gaps WHERE device = %s", device) == [(1,)]

    # diagnose (read-only, beside a stopped agent) shows it
    d = agent("diagnose", "--check", "sqlite", "--json", "--config", str(cfg_path))
    check = next(c for c in json.loads(d.stdout)["checks"] if c["name"] == "sqlite")
    assert check["status"] == "warn" and check["value"]["set_aside"] == 1, check
    assert "refused" in check["detail"] and "restart the agent" in check["hint"], check

    # The next start (the real pipeline's outbox open) offers it once more: the rule is still
    # there, so it is set aside again beside the next new window (a row refused alone is never
    # set aside: it might be the role, not the row), and the heartbeat reports it to the server.
    async def second_start(drop_rule: bool, new_window: int):
        if drop_rule:
            with psycopg.connect(migrated_dsn, autocommit=True) as con:
                con.execute("ALTER TABLE windows DROP CONSTRAINT test_no_window_2")
        cfg = load_config(cfg_path)
        async with build_pipeline(cfg) as pipeline:
            await pipeline.outbox.put(make_result(new_window, device=device, k=2))
            syncer = Syncer(cfg.sync, pipeline.outbox)
            await syncer.sync_once()
            beat = await Heartbeats(pipeline, OpsConfig(heartbeat_interval_s=60)).take()
            await syncer.sync_once()
            return beat, await pipeline.outbox.stats()

    beat, stats = asyncio.run(second_start(drop_rule=False, new_window=7))
    assert beat.set_aside == 1 and "set_aside" in beat.degraded and stats.set_aside == 1
    assert server_rows(migrated_dsn, "SELECT set_aside, degraded FROM heartbeats WHERE device = %s", device) \
        == [(1, ["set_aside"])]
    assert server_rows(migrated_dsn, "SELECT set_aside FROM device_status WHERE device = %s", device) == [(1,)]

    beat, stats = asyncio.run(second_start(drop_rule=True, new_window=8))  # the server fixed, then a restart
    assert stats.set_aside == 0 and stats.unsynced == 0 and set_aside_rows(db) == []
    assert server_rows(migrated_dsn, "SELECT count(*) FROM windows WHERE device = %s", device) == [(9,)]


def test_when_every_row_is_refused_nothing_is_set_aside(pg_server, migrated_dsn, tmp_path):
    """The role is mapped to another device id (a renamed device): every row is refused, so the
    fault is the mapping, not the rows: the round fails with the hint, the queue is untouched."""
    dsn = provision(pg_server, migrated_dsn, "dev-old-name")["dev-old-name"]

    async def main():
        async with Outbox(StoreConfig(path=tmp_path / "queue.db")) as ob:
            for r in make_results(5, device="dev-new-name", k=1):
                await ob.put(r)
            with pytest.raises(SyncError) as ei:
                await Syncer(sync_cfg(dsn, batch_size=5), ob).sync_once()
            return ei.value, await ob.stats()

    err, stats = asyncio.run(main())
    assert "row-level security" in err.message and "device_roles" in err.hint
    assert stats.unsynced == 5 and stats.set_aside == 0
    assert server_rows(migrated_dsn, "SELECT count(*) FROM windows") == [(0,)]


def test_schema_8_detections_survive_the_migration_and_schema_8_agents_keep_syncing(pg_server, pg_dsn,
                                                                                    monkeypatch):
    real = sync_module._migrations()
    monkeypatch.setattr(sync_module, "_migrations", lambda: tuple(m for m in real if m[0] <= 8))
    assert migrate(pg_dsn) == 8
    device = "dev-schema8"
    dsn = provision(pg_server, pg_dsn, device)[device]
    # What an agent of schema 8 sends: detections without a device column.
    old_detection = sync_module.insert_statement(
        "detections", [c for c in sync_module.DETECTION_COLUMNS if c[0] not in ("device", "start_time")])

    def old_agent_sends(conn_dsn: str, results) -> None:
        with psycopg.connect(conn_dsn) as conn:
            conn.execute("SET search_path = public")
            for r in results:
                row = sync_module._window_params(r, uuid.uuid4())
                conn.execute(sync_module.insert_statement("windows", sync_module.WINDOW_COLUMNS), row)
                for det in sync_module._detection_params(r):
                    det.pop("device")
                    det.pop("start_time")
                    conn.execute(old_detection, det)

    old_agent_sends(dsn, make_results(3, device=device, k=2))
    # to schema 9 (schema 10 partitions the tables and refuses agents of schema 9 and older)
    monkeypatch.setattr(sync_module, "_migrations", lambda: tuple(m for m in real if m[0] <= 9))
    assert migrate(pg_dsn) == 9
    assert server_rows(pg_dsn, "SELECT device, count(*) FROM detections GROUP BY device") == [(device, 6)]
    # an agent still at schema 8 after the server went to 9: its detections get their device
    old_agent_sends(dsn, [make_result(i, device=device, k=2) for i in (3, 4)])
    assert server_rows(pg_dsn, "SELECT device, count(*) FROM detections GROUP BY device") == [(device, 10)]
    assert server_rows(pg_dsn, "SELECT count(*) FROM detections_flat WHERE device = %s", device) == [(10,)]
    pk = server_rows(pg_dsn, "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
                             " WHERE contype = 'p' AND conrelid::regclass::text IN"
                             " ('windows', 'detections', 'heartbeats', 'gaps', 'clock_steps') ORDER BY 1")
    assert all(definition.startswith("PRIMARY KEY (device, ") for _, definition in pk) and len(pk) == 5, pk
