"""What one device role can do to the central PostgreSQL (issue 14, items 4, 6 and 7), against the
suite's real server (tests/pg.py) provisioned by the real deploy/db.yml, no mocks.

Each device role has a connection limit, role-level timeouts and a temp_file_limit (db.yml);
every value a device sends has a size limit and ``sync_time`` is the server's (migration 0008);
large objects and CREATE on schema public are not PUBLIC's; EXECUTE on the row-level security
functions is the mapped roles' only; ``db init`` bounds its lock waits and takes a lock no device
can take. For each thing one device role might do, the tests show that another device still
syncs and a migration still goes through (or, against a device that switched its own timeouts
off, fails in bounded time naming that role). db.yml refuses two device ids that turn into one
role name.

The database ``soundscape_limits`` is made to look like one on a cluster upgraded from
PostgreSQL < 15 (schema public owned by the bootstrap superuser, CREATE granted to PUBLIC)
before db.yml runs on it. Its devices: ``lim-a``, ``lim-b`` (db.yml's default limits) and
``lim-c`` (a second db.yml run with 2 s timeouts, so that the server ending a stuck session
can be watched).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.deploykit import EXAMPLE, REPO, changed_tasks, playbook, recap, tail, write_yaml

pytestmark = pytest.mark.deploy

DB = "soundscape_limits"
DEVICES = {"lim-a": ("sa_lim_a", "lim-a-secret-pw"), "lim-b": ("sa_lim_b", "lim-b-secret-pw")}
SHORT = {"lim-c": ("sa_lim_c", "lim-c-secret-pw")}
READER_PW = "reader-secret-pw"
#: the database and the read-only role's password, for every db.yml run of this module
DB_VARS = {"soundscape_db_name": DB, "soundscape_db_reader_password": READER_PW}
#: db.yml's defaults for a device role (deploy/README.md, "Limits of a device role")
ROLE_SETTINGS = {"statement_timeout=120s", "lock_timeout=60s", "idle_in_transaction_session_timeout=300s",
                 "idle_session_timeout=900s", "temp_file_limit=64MB"}
#: a migration after the agent's own, as the next release's would be: it needs heartbeats' table lock
PROBE_SQL = "ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS limits_probe int;"

# ``db init`` in a process of its own (the way db.yml runs it), with one more migration than the
# agent ships when given its SQL: prints the version, or the SyncError and exits 3.
MIGRATE = """
import sys
import agent.sync as s
from agent.errors import SyncError
dsn, probe, lock_timeout_s, lock_wait_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
if probe:
    real = s._migrations()
    n = real[-1][0] + 1
    s._migrations = lambda: real + ((n, f"{n:04d}_limits_probe.sql", f"-- compatible-from: {n - 1}\\n{probe}"),)
try:
    print(s.migrate(dsn, lock_timeout_s=lock_timeout_s, lock_wait_s=lock_wait_s))
except SyncError as err:
    print(f"{err.message}; hint: {err.hint}", file=sys.stderr)
    sys.exit(3)
"""


# ------------------------------------------------------------------------------------ helpers


def run_db_yml(tmp: Path, vault_file: Path, db_overrides: dict, hosts: dict[str, dict], **extra: object):
    """db.yml with an inventory of ``hosts`` (host name -> host vars) and the example's group vars."""
    tmp.mkdir(parents=True, exist_ok=True)
    inv = tmp / "inventory"
    if not inv.exists():
        shutil.copytree(EXAMPLE / "group_vars", inv / "group_vars")
    write_yaml(inv / "hosts.yml", {"soundscape_agents": {"hosts": hosts}})
    over = write_yaml(tmp / "overrides.yml", {**db_overrides, **extra})
    n = len(list(tmp.glob("db-*.log")))
    return playbook("db.yml", "-i", inv / "hosts.yml", "--vault-password-file", vault_file, "-e", f"@{over}",
                    log=tmp / f"db-{n}.log", timeout=600)


def device_hosts(devices: dict[str, tuple[str, str]]) -> dict[str, dict]:
    return {dev: {"soundscape_agent_device_id": dev, "soundscape_agent_pg_password": pw}
            for dev, (_role, pw) in devices.items()}


@dataclasses.dataclass
class Limits:
    server: object
    owner_dsn: str
    admin_dsn: str

    def device_dsn(self, device: str) -> str:
        role, pw = {**DEVICES, **SHORT}[device]
        return self.server.dsn(DB, user=role, password=pw)


@pytest.fixture(scope="module")
def limits(pg_server, vault, vault_file, db_overrides, tmp_path_factory) -> Limits:
    """soundscape_limits as on an upgraded cluster, then db.yml (defaults) for lim-a and lim-b, twice."""
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(pg_server.dsn(DB), autocommit=True) as admin:  # PostgreSQL 14's public schema
        admin.execute("ALTER SCHEMA public OWNER TO admin")
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    tmp = tmp_path_factory.mktemp("limits")
    first = run_db_yml(tmp, vault_file, db_overrides, device_hosts(DEVICES), **DB_VARS)
    assert first.returncode == 0, tail(first)
    second = run_db_yml(tmp, vault_file, db_overrides, device_hosts(DEVICES), **DB_VARS)
    assert second.returncode == 0, tail(second)
    assert recap(second)["localhost"]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    owner = pg_server.dsn(DB, user="soundscape_owner", password=vault["vault_soundscape_db_owner_password"])
    return Limits(pg_server, owner, pg_server.dsn(DB))


@pytest.fixture(scope="module")
def short_timeouts(limits, vault_file, db_overrides, tmp_path_factory) -> Limits:
    """lim-c, provisioned by db.yml with 2 s statement, lock and idle-in-transaction timeouts."""
    proc = run_db_yml(tmp_path_factory.mktemp("limits-short"), vault_file, db_overrides, device_hosts(SHORT),
                      **DB_VARS, soundscape_db_device_statement_timeout="2s",
                      soundscape_db_device_lock_timeout="2s", soundscape_db_device_idle_in_transaction_timeout="2s")
    assert proc.returncode == 0, tail(proc)
    return limits


def start_migrate(dsn: str, probe: str = "", lock_timeout_s: float = 1, lock_wait_s: float = 6) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MIGRATE, dsn, probe, str(lock_timeout_s), str(lock_wait_s)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of ``proc``; killed after ``timeout`` s (exit code None)."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err


@pytest.fixture
def probe_cleanup(limits):
    """Removes the probe migration (and its column) after the test: the database at the agent's version."""
    yield
    from agent.sync import known_schema_version

    with psycopg.connect(limits.admin_dsn, autocommit=True) as admin:
        admin.execute("DELETE FROM schema_migrations WHERE version > %s", (known_schema_version(),))
        admin.execute("ALTER TABLE heartbeats DROP COLUMN IF EXISTS limits_probe")


def heartbeat(device: str, **kw):
    from agent.records import Heartbeat

    base = dict(heartbeat_id=str(uuid.uuid4()), device_id=device, time=datetime.now(timezone.utc), uptime_s=60.0,
                windows=6, classified=6, skipped=0, failed=0, xruns=0, queue_depth=0, oldest_unsynced_start=None,
                last_sync_at=None, cpu_temp_c=48.5, throttled=0, throttle_flags=(), disk_free_bytes=10**10,
                disk_total_bytes=3 * 10**10, clock_synchronised=True, rss_bytes=3 * 10**8, peak_rss_bytes=4 * 10**8,
                model_id=None, model_hash=None, agent_version="0.1.0")
    base.update(kw)
    return Heartbeat(**base)


def agent_sync(limits: Limits, device: str, tmp: Path, results=(), heartbeats=(), events=()) -> int:
    """One sync round of the real agent (Syncer over a fresh outbox) as ``device``'s role.

    Returns:
        windows delivered.

    Raises:
        SyncError: the round failed.
    """
    from agent.config import StoreConfig, SyncConfig
    from agent.store import Outbox
    from agent.sync import Syncer

    cfg = SyncConfig(dsn=limits.device_dsn(device), batch_size=50, connect_timeout_s=5, statement_timeout_s=10,
                     interval_s=1, backoff_initial_s=0.1, backoff_max_s=1, final_timeout_s=5)

    async def main() -> int:
        tmp.mkdir(parents=True, exist_ok=True)
        ob = Outbox(StoreConfig(path=tmp / f"queue-{uuid.uuid4().hex[:8]}.db"))
        await ob.open()
        try:
            for r in results:
                await ob.put(r)
            for h in heartbeats:
                await ob.put_heartbeat(h)
            for e in events:
                await ob.put_event(e)
            return await Syncer(cfg, ob).sync_once()
        finally:
            await ob.close()

    return asyncio.run(main())


def windows_of(device: str, n: int = 2):
    from tests.factories import make_results

    return make_results(n, device=device, stream=f"lim-{uuid.uuid4().hex[:8]}")


def server_rows(limits: Limits, sql: str, *args) -> list[tuple]:
    with psycopg.connect(limits.admin_dsn) as admin:
        return admin.execute(sql, args).fetchall()


HEARTBEAT_SQL = ("INSERT INTO heartbeats (heartbeat_id, device, time, uptime_s, windows, classified, skipped, failed,"
                 " xruns, queue_depth, clock_synchronised, agent_version{extra}) VALUES (gen_random_uuid(), %s, now(),"
                 " 1, 0, 0, 0, 0, 0, 0, true, 'forged'{values})")
WINDOW_SQL = ("INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
              " clock_synchronised, status, sync_id{extra}) VALUES (%s, %s, 0, now(), 10, 48000, true, 'disabled',"
              " gen_random_uuid(){values})")


# ------------------------------------------------------------------ db.yml's limits, the agent


def test_each_device_role_gets_its_limits_and_the_agent_still_syncs(limits, tmp_path):
    """Connection limit 5 and db.yml's defaults on the role; the agent's own statement_timeout
    still wins on its connections, and it delivers windows, events and heartbeats."""
    from agent.config import SyncConfig
    from agent.records import Gap
    from agent.sync import _connect, _params

    for _dev, (role, _pw) in DEVICES.items():
        ((limit, config),) = server_rows(limits, "SELECT rolconnlimit, rolconfig FROM pg_roles WHERE rolname = %s",
                                         role)
        assert limit == 5 and set(config) == ROLE_SETTINGS, (role, limit, config)

    now = datetime.now(timezone.utc)
    gap = Gap(event_id=str(uuid.uuid4()), device_id="lim-a", start_time=now, end_time=now, reason="capture_lost",
              detail="arecord: main:831: audio open error: No such device")
    assert agent_sync(limits, "lim-a", tmp_path, windows_of("lim-a", 3), [heartbeat("lim-a")], [gap]) == 3
    assert server_rows(limits, "SELECT count(*) FROM gaps WHERE device = 'lim-a'")[0][0] >= 1

    # a session that sets nothing gets the role's default; the agent's sets its own
    with psycopg.connect(limits.device_dsn("lim-a")) as plain:
        assert plain.execute("SHOW statement_timeout").fetchone()[0] == "2min"
    cfg = SyncConfig(dsn=limits.device_dsn("lim-a"), connect_timeout_s=5, statement_timeout_s=30)

    async def agent_timeout() -> str:
        conn = await _connect(cfg, _params(cfg.dsn), "lim-a")
        try:
            cur = await conn.execute("SHOW statement_timeout")
            return str((await cur.fetchone())[0])
        finally:
            await conn.close()

    assert asyncio.run(agent_timeout()) == "30s"


def test_an_agent_of_schema_9_is_told_to_upgrade_by_schema_10(limits, tmp_path, monkeypatch):
    """Migration 0008 declared itself compatible with agents of schema 6 and 7; 0010 (partitions:
    detections carry their window's start time) is compatible from 10 only: an agent that knows
    schema 9 is refused with the release to install, and sends nothing."""
    import agent.sync
    from agent.errors import SyncError

    monkeypatch.setattr(agent.sync, "known_schema_version", lambda: 9)
    with pytest.raises(SyncError) as refused:
        agent_sync(limits, "lim-b", tmp_path, windows_of("lim-b"), [heartbeat("lim-b")])
    assert "agents of schema 10 or newer only" in refused.value.message, refused.value


# ------------------------------------------------------------------------ item 4: exhaustion


def test_one_device_role_cannot_take_every_connection(limits, tmp_path):
    """A device opens sessions until refused: 5 (its limit); meanwhile another device syncs and
    the owner connects and runs db init."""
    from agent.sync import known_schema_version, migrate

    held, refusal = [], None
    try:
        for _ in range(20):
            try:
                held.append(psycopg.connect(limits.device_dsn("lim-a"), autocommit=True))
            except psycopg.OperationalError as err:
                refusal = str(err)
                break
        assert len(held) == 5 and refusal and 'too many connections for role "sa_lim_a"' in refusal, (len(held),
                                                                                                      refusal)
        assert agent_sync(limits, "lim-b", tmp_path, windows_of("lim-b"), [heartbeat("lim-b")]) == 2
        assert migrate(limits.owner_dsn) == known_schema_version()
    finally:
        for c in held:
            c.close()


def test_an_open_device_transaction_holds_up_neither_other_devices_nor_db_init(limits, tmp_path, probe_cleanup):
    """lim-a inserts a heartbeat and sits in its open transaction, its idle timeout switched off.
    db init's next migration (it needs the heartbeats table) waits at most 1 s per attempt, so
    lim-b's sync goes through meanwhile; after 6 s db init gives up naming sa_lim_a and the fix;
    once lim-a's transaction is gone it applies the migration."""
    a = psycopg.connect(limits.device_dsn("lim-a"))
    try:
        a.execute("SET idle_in_transaction_session_timeout = 0")  # what a hostile device can do
        a.execute(HEARTBEAT_SQL.format(extra="", values=""), ("lim-a",))
        t0 = time.monotonic()
        mig = start_migrate(limits.owner_dsn, PROBE_SQL, lock_timeout_s=1, lock_wait_s=6)
        time.sleep(2)  # db init is queued behind lim-a now
        t = time.monotonic()
        assert agent_sync(limits, "lim-b", tmp_path, windows_of("lim-b"), [heartbeat("lim-b")]) == 2
        assert time.monotonic() - t < 8
        code, out, err = finish(mig, 30)
        assert code == 3 and time.monotonic() - t0 < 20, (code, out, err)
        assert "waited 6 s for locks held by other sessions: sa_lim_a (pid" in err, err
        assert "pg_terminate_backend" in err and "Traceback" not in err
    finally:
        a.close()
    code, out, err = finish(start_migrate(limits.owner_dsn, PROBE_SQL), 30)
    assert code == 0, err
    assert server_rows(limits, "SELECT count(*) FROM information_schema.columns"
                               " WHERE table_name = 'heartbeats' AND column_name = 'limits_probe'") == [(1,)]


@pytest.mark.parametrize("stuck", ["idle in its transaction", "in a long statement"])
def test_the_server_ends_a_stuck_device_session_and_db_init_goes_through(short_timeouts, stuck, probe_cleanup):
    """lim-c (role timeouts 2 s) holds the heartbeats table in a transaction, idle or running a
    long statement: the server ends it, and db init, started meanwhile, applies its migration."""
    limits = short_timeouts
    c = psycopg.connect(limits.device_dsn("lim-c"))
    died: list[BaseException] = []

    def sleep() -> None:
        try:
            c.execute("SELECT pg_sleep(30)")
        except psycopg.Error as err:
            died.append(err)

    sleeper = threading.Thread(target=sleep)
    try:
        c.execute(HEARTBEAT_SQL.format(extra="", values=""), ("lim-c",))
        if stuck == "in a long statement":
            sleeper.start()
        t0 = time.monotonic()
        code, out, err = finish(start_migrate(limits.owner_dsn, PROBE_SQL, lock_timeout_s=1, lock_wait_s=20), 40)
        assert code == 0, (code, out, err)
        assert time.monotonic() - t0 < 15
        if stuck == "in a long statement":
            sleeper.join(10)
            assert died and isinstance(died[0], errors.QueryCanceled), died
            time.sleep(3)  # its transaction, aborted (locks released), now idle: ended after 2 s too
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            c.execute("SELECT 1")
    finally:
        if sleeper.is_alive():  # never close a connection another thread is waiting on
            c.cancel()
            sleeper.join(10)
        c.close()


def test_a_device_cannot_fill_the_disk_with_temporary_files(limits):
    """A sort spilling more than 64 MB to disk is stopped, and the device cannot lift the limit."""
    with psycopg.connect(limits.device_dsn("lim-a"), autocommit=True) as a:
        a.execute("SET work_mem = '64kB'")
        with pytest.raises(errors.ConfigurationLimitExceeded, match="temp_file_limit"):
            a.execute("SELECT count(*) FROM (SELECT g FROM generate_series(1, 3000000) AS g ORDER BY g DESC) AS s")
        with pytest.raises(errors.InsufficientPrivilege, match="temp_file_limit"):
            a.execute("SET temp_file_limit = -1")


def test_a_device_cannot_create_large_objects(limits):
    """Large objects live outside the tables (no row-level security, no size limit): refused."""
    with psycopg.connect(limits.device_dsn("lim-a"), autocommit=True) as a:
        for sql in ("SELECT lo_from_bytea(0, 'x')", "SELECT lo_creat(-1)", "SELECT lo_create(0)"):
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function lo_"):
                a.execute(sql)


def test_a_device_cannot_hold_up_db_init_with_the_migration_lock(limits, probe_cleanup):
    """lim-a holds the advisory lock key db init used and reads schema_migrations in an open
    transaction: db init applies its next migration at once anyway."""
    from agent.sync import MIGRATION_LOCK_KEY

    a = psycopg.connect(limits.device_dsn("lim-a"))
    try:
        a.execute("SET idle_in_transaction_session_timeout = 0")
        a.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        a.execute("SELECT max(version) FROM schema_migrations")
        t0 = time.monotonic()
        code, out, err = finish(start_migrate(limits.owner_dsn, PROBE_SQL), 30)
        assert code == 0 and time.monotonic() - t0 < 10, (code, out, err)
    finally:
        a.close()


@pytest.mark.parametrize(("table", "column", "sql", "value"), [
    ("gaps", "detail", "INSERT INTO gaps (event_id, device, start_time, end_time, reason, detail)"
                       " VALUES (gen_random_uuid(), %s, now(), now(), 'capture_lost', %s)", "x" * (96 << 20)),
    ("gaps", "reason", "INSERT INTO gaps (event_id, device, start_time, end_time, reason)"
                       " VALUES (gen_random_uuid(), %s, now(), now(), %s)", "r" * 100_000),
    ("heartbeats", "agent_version", HEARTBEAT_SQL.replace("'forged'", "%s").format(extra="", values=""), "v" * 10**6),
    ("heartbeats", "degraded", HEARTBEAT_SQL.format(extra=", degraded", values=", %s"), ["disk_low"] * 10_000),
    ("heartbeats", "throttle_flags", HEARTBEAT_SQL.format(extra=", throttle_flags", values=", %s"), ["t" * 10**5]),
    ("heartbeats", "model_id", HEARTBEAT_SQL.format(extra=", model_id", values=", %s"), "m" * 10**6),
    ("windows", "lzeq_series_db", WINDOW_SQL.format(extra=", lzeq_series_db", values=", %s"), [40.0] * 100_000),
    ("windows", "laeq_series_db", WINDOW_SQL.format(extra=", laeq_series_db", values=", %s"), [40.0] * 100_000),
    ("windows", "band_leq_db", WINDOW_SQL.format(extra=", band_leq_db", values=", %s::real[]"), [1.0] * 10_000),
    ("windows", "health_flags", WINDOW_SQL.format(extra=", health_flags", values=", %s"), ["silence"] * 10_000),
    ("windows", "classifier_status", WINDOW_SQL.format(extra=", classifier_status", values=", %s::jsonb"),
     '{"audioset": "' + "c" * 10**6 + '"}'),
    ("windows", "model_id", WINDOW_SQL.format(extra=", model_id", values=", %s"), "m" * 10**6),
    ("windows", "window_key", WINDOW_SQL.format(extra="", values=""), None),
    ("detections", "label", "INSERT INTO detections (device, window_key, start_time, rank, label, label_index, score)"
                            " VALUES ('lim-a', %s, now(), 1, %s, 0, 0.5)",
     "".join(uuid.uuid4().hex for _ in range(64))),
])
def test_an_oversized_value_is_refused(limits, table, column, sql, value):
    """One oversized value per column a device sends (the issue's 96 MB gaps.detail first):
    refused, naming the limit; nothing stored."""
    key = f"lim-{uuid.uuid4().hex}"
    with psycopg.connect(limits.device_dsn("lim-a")) as a:
        if table == "detections":
            a.execute(WINDOW_SQL.format(extra="", values=""), (key, "lim-a"))
            args: tuple = (key, value)
        elif table == "windows":
            args = ("k" * 1000, "lim-a") if column == "window_key" else (key, "lim-a", value)
        else:
            args = ("lim-a", value)
        with pytest.raises(errors.CheckViolation) as refused:
            a.execute(sql, args)
        assert refused.value.diag.constraint_name == f"{table}_{column}_size"


def test_the_largest_real_records_fit(limits, tmp_path):
    """What the agent can send at most: 60 s windows in 0.125 s intervals (480 values), 37 bands,
    every health flag, AST and BirdNET with all their labels' top-k at the longest real label, a
    model in a 4096-byte directory path; a heartbeat with every throttle and degraded flag; a gap
    with a long error message. All delivered."""
    from agent.ops import THROTTLE_BITS
    from agent.records import HEALTH_FLAGS, Detection, Gap, MicHealth, ModelInfo, Status
    from tests.factories import make_levels, make_result

    path = "/" + "/".join(["m" * 254] * 16)[: 4095 - 1]
    ast = ModelInfo(model_id=path, model_hash="ab" * 32, backend="onnx", is_scaffold=False)
    bird = ModelInfo(model_id="BirdNET-GLOBAL-6K-V2.4 (CC BY-NC-SA 4.0, non-commercial)", model_hash="cd" * 32,
                     backend="litert", is_scaffold=False, taxonomy="birdnet")
    longest = "Trochalopteron erythrocephalum_Chestnut-crowned Laughingthrush"  # BirdNET's longest label
    levels = dataclasses.replace(make_levels(), laeq_series_db=(35.0,) * 480, lzeq_series_db=(40.0,) * 480,
                                 band_centres_hz=tuple(10.0 * 10 ** (i / 10) for i in range(37)),
                                 band_leq_db=(20.0,) * 37)
    dets = tuple(Detection(rank=r + 1, label=f"AudioSet label {r}", label_index=r, score=0.5) for r in range(527))
    dets += tuple(Detection(rank=r + 1, label=longest, label_index=r, score=0.5, taxonomy="birdnet", offset_s=57.0)
                  for r in range(200))
    stream = f"lim-{uuid.uuid4().hex[:16]}"
    big = dataclasses.replace(
        make_result(10**9, device="lim-a", stream=stream), key=f"{stream}-{10**12:08d}", duration_s=60.0,
        levels=levels, detections=dets, models=(ast, bird),
        health=MicHealth(clipping_ratio=1.0, dc_offset_fs=0.5, rms_dbfs=0.0, hum_share=1.0, flags=HEALTH_FLAGS),
        classifier_status=(("audioset", Status.SKIPPED_BACKLOG), ("birdnet", Status.CLASSIFIED)))
    now = datetime.now(timezone.utc)
    gap = Gap(event_id=str(uuid.uuid4()), device_id="lim-a", start_time=now, end_time=now, reason="evicted_unsynced",
              detail="capture device lost: " + "arecord: pcm_read:2221: read error: No such device " * 60)
    hb = heartbeat("lim-a", throttle_flags=tuple(THROTTLE_BITS.values()), model_id=path, model_hash="ab" * 32,
                   degraded=("disk_low", "queue_full", "store_failed", "capture_lost", "sync_failing"))
    assert agent_sync(limits, "lim-a", tmp_path, [big], [hb], [gap]) == 1
    assert server_rows(limits, "SELECT count(*) FROM detections WHERE window_key = %s", big.key) == [(727,)]


# ------------------------------------------------------------------- item 6: server sync_time


def test_a_device_cannot_date_its_rows_into_the_future(limits, tmp_path):
    """lim-b sends sync_time 9999-01-01 on a heartbeat, a window, a gap and a clock step: the
    server stores its own time, and lim-b's next real heartbeat is the one device_status shows."""
    with psycopg.connect(limits.device_dsn("lim-b")) as b:
        b.execute(HEARTBEAT_SQL.format(extra=", sync_time", values=", '9999-01-01'"), ("lim-b",))
        b.execute(WINDOW_SQL.format(extra=", sync_time", values=", '9999-01-01'"), (f"lim-{uuid.uuid4().hex}", "lim-b"))
        b.execute("INSERT INTO gaps (event_id, device, start_time, end_time, reason, sync_time)"
                  " VALUES (gen_random_uuid(), 'lim-b', now(), now(), 'capture_lost', '9999-01-01')")
        b.execute("INSERT INTO clock_steps (event_id, device, detected_at, step_s, clock_synchronised, sync_time)"
                  " VALUES (gen_random_uuid(), 'lim-b', now(), 1, true, '9999-01-01')")
    real = heartbeat("lim-b", uptime_s=12345.0)
    agent_sync(limits, "lim-b", tmp_path, heartbeats=[real])
    assert server_rows(limits, "SELECT uptime_s FROM device_status WHERE device = 'lim-b'") == [(12345.0,)]
    for table in ("heartbeats", "windows", "gaps", "clock_steps"):
        assert server_rows(limits, f"SELECT count(*) FROM {table} WHERE sync_time > now()") == [(0,)], table


# ------------------------------------------------------------------ item 7: names and grants


def test_two_device_ids_that_make_the_same_role_name_are_refused(pg_server, vault_file, db_overrides, tmp_path):
    """Pi-01 and pi.01 would both be sa_pi_01: db.yml stops with both named, creating no role,
    even when the operator gave them the same password (what its old message asked for)."""
    hosts = {"pi-upper": {"soundscape_agent_device_id": "Pi-01", "soundscape_agent_pg_password": "same-pw"},
             "pi-dot": {"soundscape_agent_device_id": "pi.01", "soundscape_agent_pg_password": "same-pw"}}
    proc = run_db_yml(tmp_path, vault_file, db_overrides, hosts, soundscape_db_name="soundscape_limits_collide")
    assert proc.returncode != 0
    assert "devices Pi-01, pi.01 (inventory hosts pi-upper, pi-dot) would share the PostgreSQL role sa_pi_01" \
        in proc.stdout, tail(proc)
    assert "merge their rights" in proc.stdout
    with psycopg.connect(pg_server.dsn("postgres")) as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'sa_pi_01'").fetchone() == (0,)


def test_a_fleet_role_is_still_allowed_with_connections_for_each_device(pg_server, vault_file, db_overrides,
                                                                        tmp_path):
    """One role named on purpose for two devices: provisioned, 2 x 5 connections."""
    hosts = {f"fleet-{i}": {"soundscape_agent_device_id": f"fleet-{i}", "soundscape_agent_pg_user": "sa_limits_fleet",
                            "soundscape_agent_pg_password": "fleet-pw"} for i in (1, 2)}
    proc = run_db_yml(tmp_path, vault_file, db_overrides, hosts, soundscape_db_name="soundscape_limits_fleet")
    assert proc.returncode == 0, tail(proc)
    with psycopg.connect(pg_server.dsn("postgres")) as admin:
        assert admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'sa_limits_fleet'").fetchone() == (10,)


def test_a_device_cannot_create_tables_on_an_upgraded_cluster(limits):
    """Schema public kept CREATE for PUBLIC (PostgreSQL < 15): db.yml took it away."""
    with psycopg.connect(limits.device_dsn("lim-a"), autocommit=True) as a:
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema public"):
            a.execute("CREATE TABLE intruder (x text)")


def test_only_mapped_roles_may_call_the_row_level_security_functions(limits):
    """An analyst role (SELECT on windows) cannot call the SECURITY DEFINER functions; a role
    gets EXECUTE when mapped in device_roles and loses it with its last row; a mapping for a role
    that does not exist is refused."""
    tag = uuid.uuid4().hex[:8]
    analyst, mapped = f"lim_analyst_{tag}", f"lim_mapped_{tag}"
    with psycopg.connect(limits.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {analyst} LOGIN PASSWORD 'analyst-pw'")
        admin.execute(f"CREATE ROLE {mapped} LOGIN PASSWORD 'mapped-pw'")
        admin.execute(f"GRANT CONNECT ON DATABASE {DB} TO {analyst}")
        admin.execute(f"GRANT SELECT ON windows TO {analyst}")
    with psycopg.connect(limits.server.dsn(DB, user=analyst, password="analyst-pw"), autocommit=True) as an:
        assert an.execute("SELECT count(*) >= 0 FROM windows").fetchone() == (True,)
        for call in ("soundscape_may_write('sa_lim_a', 'lim-a')", "soundscape_may_write_window('sa_lim_a', 'k')"):
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function soundscape_may"):
                an.execute(f"SELECT {call}")

    def may_execute(role: str) -> bool:
        return server_rows(limits, "SELECT has_function_privilege(%s, 'soundscape_may_write(name, text)', 'EXECUTE')",
                           role)[0][0]

    with psycopg.connect(limits.owner_dsn, autocommit=True) as owner:
        assert may_execute("sa_lim_a") and not may_execute(mapped)
        assert _own_execute_entries(owner, "sa_lim_a") == 0  # db.yml: through the group role
        owner.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, 'lim-x'), (%s, 'lim-y')",
                      (mapped, mapped))
        assert may_execute(mapped)
        owner.execute("DELETE FROM device_roles WHERE role_name = %s AND device = 'lim-x'", (mapped,))
        assert may_execute(mapped)
        owner.execute("DELETE FROM device_roles WHERE role_name = %s", (mapped,))
        assert not may_execute(mapped)
        with pytest.raises(errors.UndefinedObject, match='device_roles: role "lim_nobody" does not exist'):
            owner.execute("INSERT INTO device_roles (role_name, device) VALUES ('lim_nobody', 'lim-z')")


def _own_execute_entries(con: psycopg.Connection, role: str) -> int:
    """ACL entries naming ``role`` itself on the row-level security functions."""
    return con.execute("SELECT count(*) FROM pg_proc AS f, aclexplode(f.proacl) AS a, pg_roles AS r"
                       " WHERE f.proname IN ('soundscape_may_write', 'soundscape_may_write_window',"
                       " 'soundscape_window_device') AND a.grantee = r.oid AND r.rolname = %s", (role,)).fetchone()[0]


def test_a_device_role_in_the_group_holds_execute_through_it_and_schema_11_moves_older_grants(pg_server, pg_dsn,
                                                                                               monkeypatch):
    """Each ACL entry on the row-level security functions is checked for every row a device
    inserts (at 10,000 device roles one entry each doubled a batch's server CPU,
    docs/performance.md). At schema 10 the device_roles trigger granted EXECUTE to every mapped
    role; migration 0011 takes that grant from each role that holds EXECUTE through the group
    (db.yml's layout) and keeps it for a role that has no other way to it, and from then on the
    trigger grants a group member nothing of its own. The devices sync before and after."""
    from agent.sync import _migrations, migrate, send_batch
    from tests.factories import make_results
    from tests.pg import grant_device_group, provision_role

    real = _migrations()
    monkeypatch.setattr("agent.sync._migrations", lambda: tuple(m for m in real if m[0] <= 10))
    assert migrate(pg_dsn) == 10
    db = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    tag = uuid.uuid4().hex[:6]
    member, alone, later = f"sa_member_{tag}", f"sa_alone_{tag}", f"sa_later_{tag}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        grant_device_group(admin, db)
        provision_role(admin, member, "pw", f"dev-member-{tag}")
        # a role mapped by hand, not in the group: it needs its own grant
        admin.execute(f"CREATE ROLE {alone} LOGIN PASSWORD 'pw' INHERIT")
        admin.execute(f"GRANT CONNECT ON DATABASE {db} TO {alone}")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {alone}")
        admin.execute(f"GRANT INSERT ON windows, detections, heartbeats, gaps, clock_steps TO {alone}")
        admin.execute(f"GRANT SELECT ON schema_migrations TO {alone}")
        admin.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, %s)", (alone, f"dev-alone-{tag}"))
        assert _own_execute_entries(admin, member) == 3  # the schema-10 trigger granted it anyway
        assert _own_execute_entries(admin, alone) == 3

    def deliver(role: str, device: str) -> int:
        async def go() -> int:
            async with await psycopg.AsyncConnection.connect(pg_server.dsn(db, user=role, password="pw")) as conn:
                n = await send_batch(conn, make_results(2, device=device, stream=uuid.uuid4().hex[:8]),
                                     str(uuid.uuid4()))
                await conn.commit()
                return n
        return asyncio.run(go())

    assert deliver(member, f"dev-member-{tag}") == 2
    monkeypatch.setattr("agent.sync._migrations", lambda: real)
    assert migrate(pg_dsn) == 11
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        assert _own_execute_entries(admin, member) == 0
        assert _own_execute_entries(admin, alone) == 3
        provision_role(admin, later, "pw", f"dev-later-{tag}")
        assert _own_execute_entries(admin, later) == 0
    for role, device in ((member, "member"), (alone, "alone"), (later, "later")):
        assert deliver(role, f"dev-{device}-{tag}") == 2, role


def test_the_reader_role_reads_every_table_and_view_and_writes_nothing(limits):
    """db.yml's soundscape_reader (dashboards, reports): SELECT on every table and view, rows of
    every device; read-only sessions; INSERT, UPDATE, DELETE, CREATE refused; a table the owner
    creates later (a new migration, partition or rollup) is readable without rerunning db.yml."""
    reader = limits.server.dsn(DB, user="soundscape_reader", password=READER_PW)
    with psycopg.connect(limits.device_dsn("lim-a")) as a:
        a.execute(WINDOW_SQL.format(extra="", values=""), (f"lim-r-{uuid.uuid4().hex}", "lim-a"))
    with psycopg.connect(reader, autocommit=True) as r:
        for view in ("windows", "detections", "heartbeats", "gaps", "clock_steps", "detections_flat",
                     "device_status", "noise_levels", "band_levels", "acoustic_indices"):
            r.execute(f"SELECT count(*) FROM {view}").fetchone()
        assert r.execute("SELECT count(*) FROM windows WHERE device = 'lim-a'").fetchone()[0] >= 1
        assert r.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert r.execute("SHOW jit").fetchone() == ("off",)  # device_status: 169 ms with JIT, 10 without
        for statement in ("INSERT INTO device_roles (role_name, device) VALUES ('x', 'y')",
                          "UPDATE windows SET xruns = 0", "DELETE FROM heartbeats",
                          "CREATE TABLE reader_intruder (x int)"):
            with pytest.raises((errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)):
                r.execute(statement)
            r.execute("SET default_transaction_read_only = off")  # the privileges hold on their own too
            with pytest.raises(errors.InsufficientPrivilege):
                r.execute(statement)
            r.execute("RESET default_transaction_read_only")
    with psycopg.connect(limits.owner_dsn, autocommit=True) as owner:
        owner.execute("CREATE TABLE IF NOT EXISTS rollup_probe (device text, n int)")
        owner.execute("INSERT INTO rollup_probe VALUES ('lim-a', 1)")
    try:
        with psycopg.connect(reader) as r:
            assert r.execute("SELECT n FROM rollup_probe").fetchall() == [(1,)]
    finally:
        with psycopg.connect(limits.owner_dsn, autocommit=True) as owner:
            owner.execute("DROP TABLE rollup_probe")
