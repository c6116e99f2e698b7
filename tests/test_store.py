"""The SQLite outbox on real files: round trips, atomicity, WAL, queue semantics, errors."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from agent.config import StoreConfig
from agent.errors import StoreError
from agent.records import Detection, ModelInfo, Status
from agent.store import SCHEMA_VERSION, Outbox, QueueStats
from tests.factories import T0, make_result, make_results


def outbox(tmp_path, name="queue.db") -> Outbox:
    return Outbox(StoreConfig(path=tmp_path / name))


def test_round_trip_is_exact_including_times_detections_and_model(tmp_path):
    cest = timezone(timedelta(hours=2))
    scaffold = ModelInfo("SCAFFOLD-random-weights-ast-tiny", "ab" * 32, "onnx", True)
    results = [
        make_result(0, k=5),
        # a tz-aware time in another zone: stored and read back as the same instant, in UTC
        make_result(1, start=datetime(2024, 5, 1, 6, 30, 10, 500001, tzinfo=cest), model=scaffold),
        make_result(2, status=Status.SKIPPED_BACKLOG, xruns=3),
        make_result(3, status=Status.FAILED),
        make_result(4, status=Status.DISABLED),
        make_result(5, k=0),  # classified, every label under min_score
    ]

    async def main():
        async with outbox(tmp_path) as ob:
            for r in results:
                assert await ob.put(r) is True
            return await ob.pending(100)

    got = asyncio.run(main())
    assert got == sorted(results, key=lambda r: r.start_time)
    by_key = {r.key: r for r in got}
    for r in got:
        assert r.start_time.utcoffset() == timedelta(0)
    assert by_key["s1-1"].start_time == datetime(2024, 5, 1, 4, 30, 10, 500001, tzinfo=timezone.utc)
    assert by_key["s1-1"].model == scaffold and by_key["s1-1"].model.is_scaffold is True
    assert [d.rank for d in by_key["s1-0"].detections] == [1, 2, 3, 4, 5]
    assert by_key["s1-2"].status is Status.SKIPPED_BACKLOG and by_key["s1-2"].model is None
    assert isinstance(by_key["s1-0"].levels.lzeq_series_db, tuple)
    assert by_key["s1-0"].levels.band_centres_hz == results[0].levels.band_centres_hz
    assert by_key["s1-4"].health.flags == ("mains_hum",) and by_key["s1-0"].indices == results[0].indices


def test_silence_levels_minus_infinity_and_nan_survive(tmp_path):
    r = replace(make_result(0),
                levels=replace(make_result(0).levels, lzeq_db=math.nan, lzeq_series_db=(-math.inf, 3.0, math.nan),
                               peak_dbfs=-math.inf, laeq_db=math.nan),
                indices=replace(make_result(0).indices, aci=math.nan))

    async def main():
        async with outbox(tmp_path) as ob:
            await ob.put(r)
            return (await ob.pending(1))[0]

    got = asyncio.run(main())
    assert math.isnan(got.levels.lzeq_db) and math.isnan(got.levels.laeq_db) and math.isnan(got.indices.aci)
    assert got.levels.peak_dbfs == -math.inf
    assert got.levels.lzeq_series_db[:2] == (-math.inf, 3.0) and math.isnan(got.levels.lzeq_series_db[2])


@pytest.mark.parametrize(
    "bad",
    [
        (Detection(1, "Speech", 0, 0.9), Detection(1, "Rain", 1, 0.5)),  # duplicate rank: primary key
        (Detection(1, "Speech", 0, 0.9), Detection(2, "Rain", 1, 1.5)),  # score > 1: CHECK constraint
    ],
    ids=["duplicate-rank", "score-out-of-range"],
)
def test_put_is_atomic_a_rejected_detection_rolls_back_the_window(tmp_path, bad):
    good = make_result(1)
    broken = replace(make_result(0), detections=bad)

    async def main():
        async with outbox(tmp_path) as ob:
            with pytest.raises(StoreError) as ei:
                await ob.put(broken)
            # the connection is not left inside a transaction: the next put works
            assert await ob.put(good) is True
            return ei.value, await ob.pending(10), await ob.stats()

    err, pending, stats = asyncio.run(main())
    assert str(tmp_path / "queue.db") in err.message and "s1-0" in err.message
    assert err.hint
    assert [r.key for r in pending] == ["s1-1"]
    assert stats.windows_total == 1
    with sqlite3.connect(tmp_path / "queue.db") as con:
        assert con.execute("SELECT count(*) FROM detections WHERE window_key = 's1-0'").fetchone()[0] == 0


def test_putting_an_existing_key_is_a_no_op_first_version_wins(tmp_path):
    first = make_result(0, k=2)
    second = make_result(0, k=5, xruns=9)  # same key, different content

    async def main():
        async with outbox(tmp_path) as ob:
            assert await ob.put(first) is True
            assert await ob.put(second) is False
            return await ob.pending(10), await ob.stats()

    pending, stats = asyncio.run(main())
    assert pending == [first]
    assert stats.windows_total == 1 and stats.xruns_total == 0


def test_wal_mode_schema_version_and_checkpoint_on_close(tmp_path):
    path = tmp_path / "sub" / "dir" / "queue.db"  # missing directories are created

    async def main():
        async with Outbox(StoreConfig(path=path)) as ob:
            await ob.put(make_result(0))
            assert path.with_name("queue.db-wal").exists()  # writes go to the WAL
        return ob

    asyncio.run(main())
    wal = path.with_name("queue.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # TRUNCATE checkpoint at close
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("SELECT count(*) FROM windows").fetchone()[0] == 1
    finally:
        con.close()


def test_pending_is_oldest_first_and_mark_synced_removes_from_queue(tmp_path):
    results = make_results(6)
    sync_time = datetime(2024, 5, 2, 0, 0, tzinfo=timezone.utc)

    async def main():
        async with outbox(tmp_path) as ob:
            for r in reversed(results):  # stored newest first
                await ob.put(r)
            first = await ob.pending(3)
            assert [r.key for r in first] == ["s1-0", "s1-1", "s1-2"]
            assert await ob.mark_synced([r.key for r in first], "11111111-1111-1111-1111-111111111111", sync_time) == 3
            assert await ob.mark_synced(["s1-0", "no-such-key"], "x", sync_time) == 0  # already / unknown
            stats = await ob.stats()
            assert stats == QueueStats(windows_total=6, unsynced=3, oldest_unsynced_start=results[3].start_time,
                                       skipped_total=0, xruns_total=0)
            assert [r.key for r in await ob.pending(10)] == ["s1-3", "s1-4", "s1-5"]
            await ob.mark_synced(["s1-3", "s1-4", "s1-5"], "22222222-2222-2222-2222-222222222222", sync_time)
            assert await ob.pending(10) == []
            return await ob.stats()

    stats = asyncio.run(main())
    assert stats.unsynced == 0 and stats.oldest_unsynced_start is None and stats.windows_total == 6
    with sqlite3.connect(tmp_path / "queue.db") as con:
        rows = con.execute("SELECT key, sync_id, synced_at FROM windows ORDER BY key").fetchall()
    assert rows[0] == ("s1-0", "11111111-1111-1111-1111-111111111111", "2024-05-02T00:00:00.000000+00:00")


def test_stats_count_skipped_windows_and_xruns(tmp_path):
    async def main():
        async with outbox(tmp_path) as ob:
            await ob.put(make_result(0, xruns=2))
            await ob.put(make_result(1, status=Status.SKIPPED_BACKLOG))
            await ob.put(make_result(2, status=Status.SKIPPED_BACKLOG, xruns=5))
            return await ob.stats()

    stats = asyncio.run(main())
    assert stats == QueueStats(windows_total=3, unsynced=3, oldest_unsynced_start=T0, skipped_total=2, xruns_total=7)
    assert stats.oldest_unsynced_start.tzinfo is not None


def test_reopen_after_close_keeps_windows_and_sync_marks(tmp_path):
    results = make_results(4)

    async def write():
        async with outbox(tmp_path) as ob:
            for r in results:
                await ob.put(r)
            await ob.mark_synced(["s1-0"], "33333333-3333-3333-3333-333333333333", T0)

    async def read():
        ob = outbox(tmp_path)
        await ob.open()
        try:
            return await ob.pending(10), await ob.stats()
        finally:
            await ob.close()
            await ob.close()  # twice is harmless

    asyncio.run(write())
    pending, stats = asyncio.run(read())
    assert pending == results[1:]
    assert stats.windows_total == 4 and stats.unsynced == 3


def test_many_concurrent_puts_are_serialised_without_loss(tmp_path):
    results = make_results(200)

    async def main():
        async with outbox(tmp_path) as ob:
            stored = await asyncio.gather(*(ob.put(r) for r in results))
            return stored, await ob.pending(1000)

    stored, pending = asyncio.run(main())
    assert all(stored) and pending == results


def test_unwritable_directory_raises_store_error_naming_path_and_hint(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file where the state directory should be")
    path = blocker / "state" / "queue.db"

    async def main():
        await Outbox(StoreConfig(path=path)).open()

    with pytest.raises(StoreError) as ei:
        asyncio.run(main())
    assert str(path) in ei.value.message
    assert "writable" in ei.value.hint
    assert ei.value.exit_code == 74


def test_corrupt_file_raises_store_error_telling_to_move_it_aside(tmp_path):
    path = tmp_path / "queue.db"
    path.write_bytes(b"this is not an SQLite database\n" * 200)

    async def main():
        await Outbox(StoreConfig(path=path)).open()

    with pytest.raises(StoreError) as ei:
        asyncio.run(main())
    assert str(path) in ei.value.message
    assert "damaged" in ei.value.hint and "aside" in ei.value.hint


def capped(tmp_path, mb: float) -> Outbox:
    return Outbox(StoreConfig(path=tmp_path / "queue.db", max_queue_mb=mb, reserve_mb=0))


def evicted_keys(db) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {k for (k,) in con.execute("SELECT key FROM evicted")}
    finally:
        con.close()


def test_at_the_hard_cap_synced_windows_go_first_and_no_unsynced_one_is_lost(tmp_path):
    """Eviction policy step 3 prefers synced windows: a queue at its cap (a real SQLITE_FULL
    from max_page_count) deletes what the server already has and keeps every unsynced window."""
    results = [make_result(i, k=5) for i in range(600)]

    async def main():
        async with capped(tmp_path, 0.25) as ob:
            for i, r in enumerate(results):
                assert await ob.put(r)
                if i % 50 == 49:  # the sync keeps up: everything stored so far reaches the server
                    await ob.mark_synced([x.key for x in results[:i + 1]], "7d8c6e5a-0000-4000-8000-000000000000",
                                         datetime.now(timezone.utc))
            return await ob.pending(1000), await ob.pressure(), await ob.stats()

    pending, pressure, stats = asyncio.run(main())
    assert stats.windows_total < len(results), "the cap was never reached: the test proves nothing"
    assert pressure.evicted_synced > 0 and pressure.full_recently and pressure.evicted_unsynced == 0
    assert [r.key for r in pending] == [r.key for r in results[600 - len(pending):]]  # the unsynced tail, intact
    assert evicted_keys(tmp_path / "queue.db") == set()
    assert pressure.queue_bytes <= pressure.max_queue_bytes


def test_past_the_hard_cap_the_oldest_unsynced_windows_are_evicted_counted_and_reported_as_a_gap(tmp_path):
    """With the server unreachable (nothing synced) the cap forces step 3: the oldest unsynced
    windows make room, each kept by key in `evicted`, one gap event per eviction for the server."""
    results = [make_result(i, k=5) for i in range(400)]

    async def main():
        async with capped(tmp_path, 0.5) as ob:
            for r in results:
                assert await ob.put(r), r.key  # every new window is stored
            return await ob.pending(1000), await ob.pending_events(1000), await ob.pressure()

    pending, events, pressure = asyncio.run(main())
    evicted = evicted_keys(tmp_path / "queue.db")
    kept = {r.key for r in pending}
    assert evicted and pressure.evicted_unsynced == len(evicted)
    assert kept | evicted == {r.key for r in results} and not kept & evicted  # every window accounted for
    oldest_kept = min(r.index for r in pending)
    assert all(int(k.split("-")[1]) < oldest_kept for k in evicted)  # oldest first
    gaps = [e for e in events if e.reason == "evicted_unsynced"]
    assert sum(g.windows for g in gaps) == len(evicted)
    assert (min(g.start_time for g in gaps) == T0
            and max(g.end_time for g in gaps) == T0 + timedelta(seconds=10 * oldest_kept))
    assert "queue full" in gaps[0].detail


def test_a_window_that_cannot_fit_even_in_an_empty_queue_raises_store_error_with_a_hint(tmp_path):
    from agent.records import Gap

    async def main():
        async with capped(tmp_path, 1) as ob:
            for i in range(60):  # unsynced events: nothing the policy may evict
                await ob.put_event(Gap(event_id=f"0b7e2f1c-0000-4000-8000-{i:012d}", device_id="moth",
                                       start_time=T0, end_time=T0, reason="capture_lost", detail="x" * 200))
            pages = await ob._submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0], "test")
            await ob._submit(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"), "test")
            with pytest.raises(StoreError) as ei:
                await ob.put(make_result(0, k=300))  # needs pages beyond the tables' root pages
            return ei.value, await ob.stats()

    err, stats = asyncio.run(main())
    assert "full" in err.message and "free space" in err.hint
    assert stats.windows_total == 0


def test_housekeeping_deletes_synced_windows_past_retention_and_keeps_the_rest(tmp_path):
    results = make_results(6)
    old = datetime.now(timezone.utc) - timedelta(days=8)

    async def main():
        async with Outbox(StoreConfig(path=tmp_path / "queue.db", keep_synced_days=7, min_free_mb=0)) as ob:
            for r in results:
                await ob.put(r)
            await ob.mark_synced([r.key for r in results[:2]], "7d8c6e5a-0000-4000-8000-000000000000", old)
            await ob.mark_synced([results[2].key], "7d8c6e5a-0000-4000-8000-000000000001", datetime.now(timezone.utc))
            deleted = await ob.housekeeping()
            return deleted, await ob.stats(), await ob.pending(100)

    deleted, stats, pending = asyncio.run(main())
    assert deleted == 2 and stats.windows_total == 4
    assert [r.key for r in pending] == [r.key for r in results[3:]]


def _files_size(tmp_path) -> int:
    return sum(p.stat().st_size for p in tmp_path.glob("queue.db*") if p.suffix not in (".lock", ".reserve"))


def test_housekeeping_below_min_free_deletes_every_synced_window_and_new_windows_reuse_their_pages(tmp_path):
    results = [make_result(i, k=5) for i in range(600)]

    async def main():
        # min_free_mb far above any real free space: the disk counts as low
        async with Outbox(StoreConfig(path=tmp_path / "queue.db", min_free_mb=1e6, reserve_mb=0)) as ob:
            for r in results[:300]:
                await ob.put(r)
            await ob.mark_synced([r.key for r in results[:250]], "7d8c6e5a-0000-4000-8000-000000000000",
                                 datetime.now(timezone.utc))
            deleted = await ob.housekeeping()
            size_after_eviction = _files_size(tmp_path)
            for r in results[300:500]:  # 200 new windows into the 250 freed
                await ob.put(r)
            return deleted, size_after_eviction, _files_size(tmp_path), await ob.pressure(), await ob.stats()

    deleted, after_eviction, after_refill, pressure, stats = asyncio.run(main())
    assert deleted == 250 and stats.windows_total == stats.unsynced == 250
    assert pressure.disk_low
    # on a low disk the queue keeps the pages it has and does not grow: no block is given back
    # for someone else to take, none is needed for the new windows
    assert after_refill <= after_eviction * 1.05


def test_housekeeping_with_space_to_spare_gives_the_pages_of_old_synced_windows_back(tmp_path):
    results = [make_result(i, k=5) for i in range(300)]
    old = datetime.now(timezone.utc) - timedelta(days=8)

    async def main():
        async with Outbox(StoreConfig(path=tmp_path / "queue.db", min_free_mb=0, reserve_mb=0)) as ob:
            for r in results:
                await ob.put(r)
            await ob.mark_synced([r.key for r in results[:250]], "7d8c6e5a-0000-4000-8000-000000000000", old)
            await ob._submit(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), "test")
            before = _files_size(tmp_path)
            deleted = await ob.housekeeping()
            return deleted, before, _files_size(tmp_path)

    deleted, before, after = asyncio.run(main())
    assert deleted == 250 and after < before / 2  # auto_vacuum=INCREMENTAL gave the pages back


@pytest.mark.parametrize("found", [0, 123_457, None, 500_000], ids=["empty", "truncated", "missing", "whole"])
def test_a_reserve_file_cut_short_is_made_anew_at_open_when_there_is_room(tmp_path, caplog, found):
    """``queue.db.reserve`` as a power cut may leave it (0 bytes: created, its size never on the
    disk; or cut short), missing, or whole, when the outbox opens on a filesystem with room: after
    the open it has exactly ``reserve_mb`` MB (``agent.store.db.MB`` = 10^6 bytes), allocated.
    A short one is replaced (logged at INFO), a whole one kept as it is."""
    from agent.store.db import MB

    reserve = tmp_path / "queue.db.reserve"
    if found is not None:
        with open(reserve, "wb") as f:
            f.write(b"\0" * found)
    before = reserve.stat() if found is not None else None

    async def main():
        async with Outbox(StoreConfig(path=tmp_path / "queue.db", reserve_mb=0.5, min_free_mb=0)):
            return reserve.stat()

    with caplog.at_level("INFO", logger="agent.store"):
        st = asyncio.run(main())
    assert st.st_size == int(0.5 * MB) == 500_000
    assert st.st_blocks * 512 >= st.st_size  # allocated, not a sparse file that would free nothing
    short = [r for r in caplog.records if "reserve file" in r.getMessage() and "making it anew" in r.getMessage()]
    if found is not None and found < 500_000:
        assert len(short) == 1 and short[0].levelname == "INFO", caplog.text
        assert f"has {found} of its 500000 bytes" in short[0].getMessage()
    else:
        assert not short, caplog.text
    if found == 500_000:
        assert (st.st_ino, st.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # left alone


def test_events_round_trip_and_are_marked_synced(tmp_path):
    from agent.records import ClockStep, Gap

    gap = Gap(event_id="0b7e2f1c-0000-4000-8000-000000000001", device_id="moth", start_time=T0,
              end_time=T0 + timedelta(seconds=42.5), reason="capture_lost", detail="arecord stopped")
    step = ClockStep(event_id="0b7e2f1c-0000-4000-8000-000000000002", device_id="moth",
                     detected_at=T0 + timedelta(hours=1), step_s=-3600.25, clock_synchronised=False)

    async def main():
        async with outbox(tmp_path) as ob:
            assert await ob.put_event(gap) and await ob.put_event(step)
            assert not await ob.put_event(gap)  # the id is the idempotency key
            got = await ob.pending_events(10)
            assert await ob.mark_events_synced([gap.event_id], datetime.now(timezone.utc)) == 1
            return got, await ob.pending_events(10)

    got, left = asyncio.run(main())
    assert got == [gap, step] and left == [step]


def test_schema_from_a_newer_agent_is_refused(tmp_path):
    path = tmp_path / "queue.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()

    async def main():
        await Outbox(StoreConfig(path=path)).open()

    with pytest.raises(StoreError) as ei:
        asyncio.run(main())
    assert "newer" in ei.value.hint and str(path) in ei.value.message


def test_a_second_opener_of_the_same_queue_is_refused_until_the_first_closes(tmp_path):
    # one connection per file, across processes too (the WAL-reset bug needs two)
    async def main():
        first = outbox(tmp_path)
        await first.open()
        await first.put(make_result(0))
        second = outbox(tmp_path)
        with pytest.raises(StoreError) as ei:
            await second.open()
        await first.close()
        await second.open()  # free again
        try:
            return ei.value, await second.pending(10)
        finally:
            await second.close()

    err, pending = asyncio.run(main())
    assert "in use" in err.message and str(tmp_path / "queue.db") in err.message
    assert "stop the running agent" in err.hint
    assert [r.key for r in pending] == ["s1-0"]


def test_using_a_closed_outbox_raises_store_error(tmp_path):
    async def main():
        ob = outbox(tmp_path)
        await ob.put(make_result(0))

    with pytest.raises(StoreError, match="not open"):
        asyncio.run(main())


def test_a_schema_1_queue_is_migrated_and_its_windows_kept(tmp_path):
    """A queue written by the first release (no indicators column) opens with this agent: the
    unsynced window is still there, with the levels it had and NaN / empty for the rest."""
    from agent.store.schema import _MIGRATIONS

    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(f"BEGIN; {_MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    con.execute(
        "INSERT INTO windows (key, device_id, window_index, start_time, duration_s, sample_rate, clock_synchronised,"
        " xruns, leq_db, leq_series_db, peak_dbfs, status, stored_at) VALUES"
        " ('old-0', 'moth', 0, '2024-05-01T04:30:00.000000+00:00', 10.0, 48000, 1, 0, 51.5, '[50.0, 53.0]', -20.0,"
        " 'disabled', '2024-05-01T04:30:10.000000+00:00')")
    con.close()

    async def main():
        async with Outbox(StoreConfig(path=path)) as ob:
            return await ob.pending(10), await ob.latest_calibration()

    (old,), calibration = asyncio.run(main())
    assert calibration is None
    assert old.key == "old-0" and old.levels.lzeq_db == 51.5 and old.levels.lzeq_series_db == (50.0, 53.0)
    assert math.isnan(old.levels.laeq_db) and old.levels.band_centres_hz == () and old.indices is None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2


def test_latest_calibration_is_the_newest_measurement(tmp_path):
    from tests.factories import CALIBRATION

    later = replace(CALIBRATION, offset_db=0.75, calibrated_at=CALIBRATION.calibrated_at + timedelta(days=30))

    async def main():
        async with outbox(tmp_path) as ob:
            assert await ob.latest_calibration() is None
            await ob.add_calibration(later, 1000.0, "alsa capture hw:1")
            await ob.add_calibration(CALIBRATION, 1000.0, "alsa capture hw:1")  # older, stored afterwards
            return await ob.latest_calibration()

    assert asyncio.run(main()) == later


def test_two_classifiers_per_window_round_trip_with_their_own_ranks_models_and_statuses(tmp_path):
    """AST and BirdNET both rank from 1; one may be skipped while the other ran (``partial``)."""
    from tests.factories import make_two_classifier_result

    results = [make_two_classifier_result(0), make_two_classifier_result(1, ast=Status.SKIPPED_BACKLOG),
               make_two_classifier_result(2, ast=Status.NOT_SCHEDULED)]

    async def main():
        async with Outbox(StoreConfig(path=tmp_path / "q.db")) as ob:
            for r in results:
                assert await ob.put(r)
            return await ob.pending(10)

    back = asyncio.run(main())
    assert back == results
    assert [r.status for r in back] == [Status.CLASSIFIED, Status.PARTIAL, Status.CLASSIFIED]
    both = back[0]
    assert [(d.taxonomy, d.rank) for d in both.detections] == [("audioset", 1), ("audioset", 2), ("audioset", 3),
                                                               ("birdnet", 1), ("birdnet", 2)]
    assert both.model_for("birdnet").backend == "litert" and both.detections[-1].offset_s == 3.0
    assert (back[1].model_for("audioset") is None
            and dict(back[1].classifier_status)["audioset"] is Status.SKIPPED_BACKLOG)


def test_a_schema_4_queue_keeps_its_detections_as_audioset_ones(tmp_path):
    """Schema 5 rebuilds the detections table (its key gains the taxonomy): an unsynced window
    queued before the upgrade keeps its labels and its model."""
    from agent.store.schema import _MIGRATIONS

    path = tmp_path / "old.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript("BEGIN; " + " ".join(_MIGRATIONS[:4]) + " PRAGMA user_version = 4; COMMIT;")
    con.execute(
        "INSERT INTO windows (key, device_id, window_index, start_time, duration_s, sample_rate, clock_synchronised,"
        " xruns, leq_db, leq_series_db, peak_dbfs, status, model_id, model_hash, model_backend, model_is_scaffold,"
        " stored_at) VALUES ('old-0', 'moth', 0, '2024-05-01T04:30:00.000000+00:00', 10.0, 48000, 1, 0, 51.5,"
        " '[50.0]', -20.0, 'classified', 'MIT/ast', 'ab', 'onnx', 0, '2024-05-01T04:30:10.000000+00:00')")
    con.execute("INSERT INTO detections VALUES ('old-0', 1, 'Speech', 0, 0.75), ('old-0', 2, 'Rain', 5, 0.25)")
    con.close()

    async def main():
        async with Outbox(StoreConfig(path=path)) as ob:
            return await ob.pending(10)

    (old,) = asyncio.run(main())
    assert [(d.taxonomy, d.rank, d.label, d.offset_s) for d in old.detections] == [
        ("audioset", 1, "Speech", None), ("audioset", 2, "Rain", None)]
    assert old.model.model_id == "MIT/ast" and old.model.taxonomy == "audioset"
