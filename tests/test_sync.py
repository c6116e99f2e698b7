"""Store-and-forward to a REAL PostgreSQL server (tests/pg.py): schema, idempotency, crashes,
unreachable servers, an INSERT-only role, backoff and prompt shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from agent.config import StoreConfig, SyncConfig
from agent.errors import SyncError
from agent.records import Status
from agent.store import Outbox
from agent.sync import Syncer, known_schema_version, migrate, redact_dsn, send_batch
from tests.factories import make_result, make_results
from tests.pg import ADMIN_PASSWORD, PgServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def sync_cfg(dsn: str, **kw) -> SyncConfig:
    base = dict(dsn=dsn, batch_size=3, connect_timeout_s=5, statement_timeout_s=10,
                interval_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.3, final_timeout_s=5)
    base.update(kw)
    return SyncConfig(**base)


def counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as con:
        w = con.execute("SELECT count(*) FROM windows").fetchone()[0]
        d = con.execute("SELECT count(*) FROM detections").fetchone()[0]
    return w, d


async def filled_outbox(tmp_path, results) -> Outbox:
    ob = Outbox(StoreConfig(path=tmp_path / "queue.db"))
    await ob.open()
    for r in results:
        await ob.put(r)
    return ob


def queue_and_sync_once(tmp_path, results, dsn: str) -> None:
    """Queue ``results`` in a fresh outbox and run one sync round to ``dsn``."""

    async def main():
        ob = await filled_outbox(tmp_path, results)
        try:
            await Syncer(sync_cfg(dsn), ob).sync_once()
        finally:
            await ob.close()

    asyncio.run(main())


def failed_sync_once(tmp_path, results, cfg: SyncConfig):
    """Fill an outbox with ``results``, expect ``sync_once`` to raise SyncError.

    Returns:
        (the SyncError, seconds sync_once took, the outbox's QueueStats afterwards).
    """

    async def main():
        ob = await filled_outbox(tmp_path, results)
        try:
            t = time.monotonic()
            with pytest.raises(SyncError) as ei:
                await Syncer(cfg, ob).sync_once()
            return ei.value, time.monotonic() - t, await ob.stats()
        finally:
            await ob.close()

    return asyncio.run(main())


@pytest.fixture
def silent_server():
    """127.0.0.1:<port> that completes TCP handshakes but never answers (a black-holed link)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


# ---------------------------------------------------------------------------------------------
# schema


def test_migrate_twice_gives_same_version_and_creates_tables_and_view(pg_dsn):
    v1 = migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as con:
        applied_1 = con.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
    v2 = migrate(pg_dsn)
    assert v1 == v2 == known_schema_version() >= 1
    with psycopg.connect(pg_dsn) as con:
        applied_2 = con.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
        rels = dict(con.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public'"
        ).fetchall())
    assert applied_1 == applied_2 and [v for v, _ in applied_2] == list(range(1, v1 + 1))
    # schema 10: the result tables are partitioned by time, with a default partition each
    for table in ("windows", "detections", "heartbeats", "gaps", "clock_steps"):
        assert rels[table] == "p" and rels[f"{table}_default"] == "r", table
    assert rels["schema_migrations"] == "r" and rels["rollup_hourly"] == "r"
    assert rels["detections_flat"] == "v" and rels["noise_levels_hourly"] == "v"
    assert "windows_device_start" in rels


def test_concurrent_db_init_runs_are_safe(pg_dsn):
    out, errors = [], []

    def run():
        try:
            out.append(migrate(pg_dsn))
        except Exception as e:  # pragma: no cover - the assertion shows it
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and out == [known_schema_version()] * 4
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == known_schema_version()


def test_detections_flat_keeps_the_prototype_layout(migrated_dsn, tmp_path):
    results = make_results(2, k=2)
    queue_and_sync_once(tmp_path, results, migrated_dsn)
    with psycopg.connect(migrated_dsn) as con:
        cur = con.execute("SELECT * FROM detections_flat ORDER BY window_key, rank")
        names = [c.name for c in cur.description]
        rows = cur.fetchall()
    assert names[:5] == ["label", "score", "device", "sync_id", "sync_time"]
    assert len(rows) == 4
    label, score, device, sync_id, sync_time = rows[0][:5]
    assert label == results[0].detections[0].label and device == "audiomoth-01"
    assert score == pytest.approx(results[0].detections[0].score, rel=1e-6)
    assert isinstance(sync_id, uuid.UUID) and sync_time.tzinfo is not None


def test_sync_without_schema_tells_to_run_db_init_and_keeps_the_outbox(pg_dsn, tmp_path):
    err, _, stats = failed_sync_once(tmp_path, make_results(2), sync_cfg(pg_dsn))
    assert "db init" in err.hint
    assert stats.unsynced == 2


# ---------------------------------------------------------------------------------------------
# delivery


def test_sync_once_delivers_every_window_once_and_marks_them(migrated_dsn, tmp_path):
    results = make_results(7, k=3)
    results[2] = make_result(2, status=Status.SKIPPED_BACKLOG)

    async def main():
        ob = await filled_outbox(tmp_path, results)
        try:
            syncer = Syncer(sync_cfg(migrated_dsn, batch_size=3), ob)
            sent = await syncer.sync_once()
            again = await syncer.sync_once()
            return sent, again, await ob.stats()
        finally:
            await ob.close()

    sent, again, stats = asyncio.run(main())
    assert sent == 7 and again == 0
    assert stats.unsynced == 0 and stats.windows_total == 7
    assert counts(migrated_dsn) == (7, 6 * 3)

    with sqlite3.connect(tmp_path / "queue.db") as con:
        local = {k: (sid, at) for k, sid, at in con.execute("SELECT key, sync_id, synced_at FROM windows")}
    with psycopg.connect(migrated_dsn) as con:
        server = con.execute(
            "SELECT window_key, device, window_index, start_time, duration_s, sample_rate, clock_synchronised,"
            " xruns, lzeq_db, lzeq_series_db, peak_dbfs, status, model_id, model_hash, model_backend,"
            " model_is_scaffold, sync_id, sync_time FROM windows ORDER BY window_index"
        ).fetchall()
    assert len({row[16] for row in server}) == 3  # three batches: 3 + 3 + 1
    for r, row in zip(results, server, strict=False):
        assert row[:8] == (r.key, r.device_id, r.index, r.start_time, r.duration_s, r.sample_rate,
                           r.clock_synchronised, r.xruns)
        assert row[8] == r.levels.lzeq_db and tuple(row[9]) == r.levels.lzeq_series_db
        assert row[11] == r.status.value
        if r.model:
            assert row[12:16] == (r.model.model_id, r.model.model_hash, r.model.backend, r.model.is_scaffold)
        else:
            assert row[12:16] == (None, None, None, None)
        # the local mark records the server's batch id and commit-transaction time
        sid, at = local[r.key]
        assert sid == str(row[16])
        assert at == row[17].astimezone(timezone.utc).isoformat(timespec="microseconds")


def test_indicator_views_give_every_family_without_knowing_the_layout(migrated_dsn, tmp_path):
    """One view per indicator family: levels, per-second series, bands, indices, mic health,
    each with its calibration provenance where it applies; values exactly as measured."""
    results = make_results(5, k=1)
    queue_and_sync_once(tmp_path, results, migrated_dsn)
    with psycopg.connect(migrated_dsn) as con:
        levels = con.execute("SELECT window_key, lzeq_db, laeq_db, lceq_db, lafmax_db, lafmin_db, lasmax_db,"
                             " la10_db, la50_db, la90_db, cal_offset_db, cal_sensitivity_dbv, cal_gain_db, cal_vadc,"
                             " cal_reference_db, cal_time FROM noise_levels ORDER BY start_time").fetchall()
        series = con.execute("SELECT window_key, interval_start, interval_s, laeq_db, lzeq_db FROM noise_levels_series"
                             " ORDER BY interval_start").fetchall()
        bands = con.execute("SELECT window_key, band_hz, leq_db FROM band_levels"
                            " ORDER BY window_key, band_hz").fetchall()
        indices = con.execute("SELECT window_key, aci, adi, aei, bi, ndsi, hf, ht FROM acoustic_indices"
                              " ORDER BY start_time").fetchall()
        health = con.execute("SELECT window_key, healthy, flags, clipping_ratio, dc_offset_fs, rms_dbfs, hum_share"
                             " FROM mic_health ORDER BY start_time").fetchall()
    for r, row in zip(results, levels, strict=True):
        lv, cal = r.levels, r.levels.calibration
        assert row[:10] == (r.key, lv.lzeq_db, lv.laeq_db, lv.lceq_db, lv.lafmax_db, lv.lafmin_db, lv.lasmax_db,
                            lv.la10_db, lv.la50_db, lv.la90_db)
        assert row[10:] == (cal.offset_db, cal.sensitivity_dbv, cal.gain_db, cal.vadc, cal.reference_db,
                            cal.calibrated_at)
    assert len(series) == 5 * 10
    first = [row for row in series if row[0] == results[1].key]
    assert [row[1] for row in first] == [results[1].start_time + timedelta(seconds=i) for i in range(10)]
    assert [row[3] for row in first] == list(results[1].levels.laeq_series_db) and first[0][2] == 1.0
    assert len(bands) == 5 * 8
    mine = [(b, v) for k, b, v in bands if k == results[2].key]
    assert [b for b, _ in mine] == list(results[2].levels.band_centres_hz)
    assert [v for _, v in mine] == pytest.approx(results[2].levels.band_leq_db, abs=1e-5)  # real[]: float32
    assert [row[1:] for row in indices] == [tuple(dataclasses.astuple(r.indices)) for r in results]
    assert [row[1] for row in health] == [True, True, True, True, False]
    assert health[4][2] == ["mains_hum"] and health[0][3:] == (0.0, 1e-4, -45.0, 0.01)


def test_replayed_batch_inserts_nothing(migrated_dsn):
    results = make_results(5, k=2)

    async def main():
        async with await psycopg.AsyncConnection.connect(migrated_dsn) as conn:
            first = await send_batch(conn, results, str(uuid.uuid4()))
            await conn.commit()
            second = await send_batch(conn, results, str(uuid.uuid4()))
            await conn.commit()
            return first, second

    first, second = asyncio.run(main())
    assert (first, second) == (5, 0)
    assert counts(migrated_dsn) == (5, 10)


def test_sync_killed_between_server_commit_and_local_mark_then_rerun_adds_no_row(migrated_dsn, tmp_path):
    results = make_results(6, k=4)

    async def fill():
        ob = await filled_outbox(tmp_path, results)
        await ob.close()

    asyncio.run(fill())
    env = {**os.environ, "SOUNDSCAPE_TEST_DSN": migrated_dsn,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "sync_kill_helper.py"), str(tmp_path / "queue.db")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "6"  # the batch was committed on the server ...
    assert counts(migrated_dsn) == (6, 24)
    with psycopg.connect(migrated_dsn) as con:
        killed_sync_ids = {r[0] for r in con.execute("SELECT DISTINCT sync_id FROM windows")}

    async def rerun():
        ob = Outbox(StoreConfig(path=tmp_path / "queue.db"))
        await ob.open()
        try:
            before = await ob.stats()  # ... but nothing was marked locally
            sent = await Syncer(sync_cfg(migrated_dsn, batch_size=4), ob).sync_once()
            return before, sent, await ob.stats()
        finally:
            await ob.close()

    before, sent, after = asyncio.run(rerun())
    assert before.unsynced == 6
    assert sent == 6 and after.unsynced == 0
    assert counts(migrated_dsn) == (6, 24)  # no duplicate, no extra row
    with psycopg.connect(migrated_dsn) as con:
        assert {r[0] for r in con.execute("SELECT DISTINCT sync_id FROM windows")} == killed_sync_ids


def test_insert_only_role_can_sync_and_replay(pg_server, migrated_dsn, tmp_path):
    role = f"device_{uuid.uuid4().hex[:8]}"
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_dsn)["dbname"]
    with psycopg.connect(migrated_dsn, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'device-pw'")
        con.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}')
        con.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        con.execute(f"GRANT INSERT ON windows, detections TO {role}")
        # row-level security (agent/sql/0004_device_rls.sql): the role writes this device's rows
        con.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, 'audiomoth-01')", (role,))
    device_dsn = pg_server.dsn(dbname, user=role, password="device-pw")
    with psycopg.connect(device_dsn) as con:  # premise: the role really cannot read the data
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("SELECT count(*) FROM windows")
    results = make_results(5, k=2)

    async def main():
        ob = await filled_outbox(tmp_path, results)
        try:
            sent = await Syncer(sync_cfg(device_dsn, batch_size=2), ob).sync_once()
            async with await psycopg.AsyncConnection.connect(device_dsn) as conn:
                replayed = await send_batch(conn, results, str(uuid.uuid4()))
                await conn.commit()
            return sent, replayed, await ob.stats()
        finally:
            await ob.close()

    sent, replayed, stats = asyncio.run(main())
    assert sent == 5 and replayed == 0 and stats.unsynced == 0
    assert counts(migrated_dsn) == (5, 10)


def test_refused_batch_is_rolled_back_on_the_server_and_stays_pending_locally(pg_server, migrated_dsn, tmp_path):
    role = f"half_{uuid.uuid4().hex[:8]}"
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_dsn)["dbname"]
    with psycopg.connect(migrated_dsn, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'half-pw'")
        con.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        con.execute(f"GRANT INSERT ON windows TO {role}")  # but not on detections
        con.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, 'audiomoth-01')", (role,))
    dsn = pg_server.dsn(dbname, user=role, password="half-pw")

    err, _, stats = failed_sync_once(tmp_path, make_results(3, k=2), sync_cfg(dsn))
    assert "refused" in err.message and "detections" in err.message and "INSERT" in err.hint
    assert "half-pw" not in str(err)
    assert counts(migrated_dsn) == (0, 0)  # the window rows of the batch were rolled back too
    assert stats.unsynced == 3  # nothing marked locally


def test_without_dsn_run_returns_at_once_and_sync_once_explains(tmp_path):
    async def main():
        ob = await filled_outbox(tmp_path, make_results(1))
        try:
            syncer = Syncer(SyncConfig(), ob)
            await asyncio.wait_for(syncer.run(asyncio.Event()), 1)
            assert await syncer.final() == 0
            with pytest.raises(SyncError, match="dsn"):
                await syncer.sync_once()
        finally:
            await ob.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# failures and timing


def test_unreachable_server_raises_sync_error_fast_and_loses_nothing(tmp_path):
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=admin password={ADMIN_PASSWORD} connect_timeout=3"

    err, elapsed, stats = failed_sync_once(tmp_path, make_results(4), sync_cfg(dsn, connect_timeout_s=3))
    assert elapsed < 3
    assert "127.0.0.1" in err.message and ADMIN_PASSWORD not in str(err)
    assert err.hint and err.exit_code == 75
    assert stats.unsynced == 4


def test_silent_server_cannot_hang_sync_past_the_connect_timeout(tmp_path, silent_server):
    dsn = f"postgresql://admin:{ADMIN_PASSWORD}@127.0.0.1:{silent_server}/x"

    err, elapsed, stats = failed_sync_once(tmp_path, make_results(2),
                                           sync_cfg(dsn, connect_timeout_s=2, statement_timeout_s=1))
    assert 0.5 < elapsed < 5.0  # bound: connect 2 s + statement 1 s
    assert ADMIN_PASSWORD not in str(err) and str(silent_server) in err.message
    assert stats.unsynced == 2


def test_run_backs_off_while_server_is_down_and_delivers_when_it_returns(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="agent.sync")
    server = PgServer()
    try:
        server.start()
        dsn = server.create_database()
        migrate(dsn)
        server.stop()

        async def main():
            ob = await filled_outbox(tmp_path, make_results(5))
            stop = asyncio.Event()
            task = asyncio.create_task(Syncer(sync_cfg(dsn, connect_timeout_s=2), ob).run(stop))
            try:
                deadline = time.monotonic() + 10
                while len([r for r in caplog.records if "retrying in" in r.getMessage()]) < 3:
                    assert time.monotonic() < deadline, "no retries logged"
                    assert not task.done()
                    await asyncio.sleep(0.02)
                assert (await ob.stats()).unsynced == 5
                await asyncio.to_thread(server.start)
                deadline = time.monotonic() + 15
                while (await ob.stats()).unsynced:
                    assert time.monotonic() < deadline, "not delivered after the server came back"
                    await asyncio.sleep(0.05)
                await ob.put(make_result(5))  # the loop keeps going at interval_s
                deadline = time.monotonic() + 5
                while (await ob.stats()).unsynced:
                    assert time.monotonic() < deadline, "later window not delivered"
                    await asyncio.sleep(0.05)
                stop.set()
                t = time.monotonic()
                await asyncio.wait_for(task, 2)
                return time.monotonic() - t
            finally:
                task.cancel()
                await ob.close()

        stop_latency = asyncio.run(main())
        assert stop_latency < 0.5
        assert counts(dsn) == (6, 6 * 3)
        delays = [float(m.group(1)) for r in caplog.records
                  if (m := re.search(r"sync failed \(.*\); retrying in ([0-9.]+) s", r.getMessage()))]
        assert len(delays) >= 3 and all(0.05 <= d <= 0.3 for d in delays)
        assert all(r.levelno == logging.WARNING for r in caplog.records if "retrying in" in r.getMessage())
        assert not any(ADMIN_PASSWORD in r.getMessage() for r in caplog.records)
    finally:
        server.cleanup()


def test_run_returns_promptly_on_stop_during_a_long_interval_and_a_hanging_connect(migrated_dsn, tmp_path,
                                                                                  silent_server):
    async def stop_after(syncer: Syncer, delay: float) -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(syncer.run(stop))
        await asyncio.sleep(delay)
        assert not task.done()
        stop.set()
        t = time.monotonic()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - t

    async def main():
        ob = await filled_outbox(tmp_path, make_results(3))
        try:
            # healthy server, next round in an hour
            idle = await stop_after(Syncer(sync_cfg(migrated_dsn, interval_s=3600), ob), 0.5)
            delivered = (await ob.stats()).unsynced == 0
            # a link that swallows packets: stop must not wait for the 60 s connect timeout
            hung_dsn = f"host=127.0.0.1 port={silent_server} dbname=x user=admin password=x"
            hung = await stop_after(Syncer(sync_cfg(hung_dsn, connect_timeout_s=60, statement_timeout_s=60), ob), 0.3)
            return idle, delivered, hung
        finally:
            await ob.close()

    idle, delivered, hung = asyncio.run(main())
    assert delivered
    assert idle < 0.5 and hung < 0.5


def test_final_is_bounded_and_swallows_errors(migrated_dsn, tmp_path, silent_server, caplog):
    caplog.set_level(logging.WARNING, logger="agent.sync")

    async def main():
        ob = await filled_outbox(tmp_path, make_results(3))
        try:
            hung_dsn = f"host=127.0.0.1 port={silent_server} dbname=x user=admin password=x"
            t = time.monotonic()
            lost = await Syncer(sync_cfg(hung_dsn, connect_timeout_s=60), ob).final(0.5)
            elapsed = time.monotonic() - t
            left = (await ob.stats()).unsynced
            sent = await Syncer(sync_cfg(migrated_dsn), ob).final()
            return lost, elapsed, left, sent, (await ob.stats()).unsynced
        finally:
            await ob.close()

    lost, elapsed, left, sent, left_after = asyncio.run(main())
    assert lost == 0 and elapsed < 2 and left == 3
    assert any("final sync" in r.getMessage() for r in caplog.records)
    assert sent == 3 and left_after == 0


# ---------------------------------------------------------------------------------------------
# helpers


def test_redact_dsn_never_shows_the_password():
    for dsn in (f"postgresql://dev:{ADMIN_PASSWORD}@db.example:6543/soundscape?sslmode=require",
                f"host=db.example port=6543 dbname=soundscape user=dev password={ADMIN_PASSWORD}"):
        red = redact_dsn(dsn)
        assert ADMIN_PASSWORD not in red
        assert "db.example" in red and "6543" in red and "password=***" in red
    assert redact_dsn(f"host=x password='{ADMIN_PASSWORD}") == "<invalid connection string>"


def test_backoff_grows_with_jitter_between_initial_and_max():
    cfg = SyncConfig(dsn="host=x", tls="off", backoff_initial_s=5, backoff_max_s=600)  # never connects
    s = Syncer(cfg, outbox=None)  # type: ignore[arg-type]
    assert s.backoff_delay(1) == 5
    third = [s.backoff_delay(3) for _ in range(200)]
    assert all(5 <= d <= 20 for d in third) and len(set(third)) > 100  # jittered
    late = [s.backoff_delay(50) for _ in range(200)]
    assert all(5 <= d <= 600 for d in late) and max(late) > 300


def test_detections_say_which_classifier_made_them_and_the_view_appends_their_columns(migrated_dsn, tmp_path):
    """AST and BirdNET detections of one window reach PostgreSQL with their taxonomy, model id
    and hash, chunk offset and the classifier's status; detections_flat keeps its first five
    columns and its model_id is the detection's own classifier's."""
    from tests.factories import BIRDNET_MODEL, MODEL, make_two_classifier_result

    results = [make_two_classifier_result(0), make_two_classifier_result(1, ast=Status.SKIPPED_BACKLOG)]
    queue_and_sync_once(tmp_path, results, migrated_dsn)
    with psycopg.connect(migrated_dsn) as con:
        cur = con.execute("SELECT * FROM detections_flat ORDER BY window_key, taxonomy, rank")
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, r, strict=False)) for r in cur.fetchall()]
        statuses = dict(con.execute("SELECT window_key, status FROM windows").fetchall())
    assert names[:5] == ["label", "score", "device", "sync_id", "sync_time"]
    assert names[-4:] == ["taxonomy", "model_hash", "offset_s", "classifier_status"]
    assert statuses == {"s1-0": "classified", "s1-1": "partial"}
    birds = [r for r in rows if r["taxonomy"] == "birdnet"]
    assert len(birds) == 4 and len(rows) == 4 + 3
    assert {r["model_id"] for r in birds} == {BIRDNET_MODEL.model_id}
    assert {r["model_id"] for r in rows if r["taxonomy"] == "audioset"} == {MODEL.model_id}
    assert [r["offset_s"] for r in birds[:2]] == [0.0, 3.0] and birds[0]["classifier_status"] == "classified"
    assert birds[0]["label"] == "Cranioleuca erythrops_Red-faced Spinetail" and birds[0]["rank"] == 1


def test_a_schema_5_database_keeps_its_detections_when_migrated(pg_dsn, tmp_path):
    """Rows delivered before migration 0006 become AudioSet detections of their window's model."""
    from agent.sync import _CREATE_MIGRATIONS_TABLE, _migrations

    with psycopg.connect(pg_dsn, autocommit=True) as con:  # a server as the previous release left it
        con.execute(_CREATE_MIGRATIONS_TABLE)
        for version, _name, sql in _migrations():
            if version <= 5:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        con.execute("INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                    " clock_synchronised, status, model_id, model_hash, model_is_scaffold, sync_id) VALUES"
                    " ('k-0', 'moth', 0, now(), 10, 48000, true, 'classified', 'MIT/ast', 'ab', false,"
                    " gen_random_uuid())")
        con.execute("INSERT INTO detections (window_key, rank, label, label_index, score) VALUES"
                    " ('k-0', 1, 'Speech', 0, 0.5)")
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as con:
        row = con.execute("SELECT taxonomy, model_id, model_hash, offset_s FROM detections_flat").fetchone()
    assert row == ("audioset", "MIT/ast", "ab", None)


def test_every_insert_names_exactly_its_tables_columns():
    """The named placeholders come from one column list per table; the row builders fill
    exactly those keys (a missing or extra key would be a silent NULL or a KeyError)."""
    from agent.records import Heartbeat
    from agent.sync import DETECTION_COLUMNS, HEARTBEAT_COLUMNS, WINDOW_COLUMNS, _detection_params, _window_params

    r = make_results(1, k=3)[0]
    assert set(_window_params(r, uuid.uuid4())) == {c for c, _ in WINDOW_COLUMNS}
    rows = _detection_params(r)
    assert len(rows) == 3 and all(set(row) == {c for c, _ in DETECTION_COLUMNS} for row in rows)
    # every heartbeat column is a Heartbeat field (device: device_id) and no field is left out
    fields = {f.name for f in dataclasses.fields(Heartbeat)}
    assert {c for c, _ in HEARTBEAT_COLUMNS} == (fields - {"device_id"}) | {"device"}


def test_lzeq_columns_and_the_deprecated_names_stay_equal(migrated_dsn, tmp_path):
    """Schema 7 renames leq_db/leq_series_db to lzeq_db/lzeq_series_db and keeps the old names
    readable for one version: this agent writes the new names, an agent of schema 6 the old
    ones; either way both names hold the same values, and the views read the new ones."""
    results = make_results(2, k=1)
    queue_and_sync_once(tmp_path, results[:1], migrated_dsn)
    with psycopg.connect(migrated_dsn, autocommit=True) as con:
        con.execute("INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                    " clock_synchronised, xruns, leq_db, leq_series_db, peak_dbfs, status, sync_id)"
                    " VALUES ('old-agent-0', 'moth-old', 0, now(), 10, 48000, true, 0, 51.5, '{50.5,52.5}', -20,"
                    " 'classified', gen_random_uuid())")
        rows = con.execute("SELECT window_key, lzeq_db, leq_db, lzeq_series_db, leq_series_db FROM windows"
                           " ORDER BY window_key").fetchall()
        view = dict(con.execute("SELECT window_key, lzeq_db FROM noise_levels").fetchall())
    new, old = rows[1], rows[0]
    assert old == ("old-agent-0", 51.5, 51.5, [50.5, 52.5], [50.5, 52.5])
    lv = results[0].levels
    assert new[0] == results[0].key and new[1] == new[2] == lv.lzeq_db
    assert tuple(new[3]) == tuple(new[4]) == lv.lzeq_series_db
    assert view == {"old-agent-0": 51.5, results[0].key: lv.lzeq_db}
