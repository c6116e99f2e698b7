"""Store-and-forward: deliver the outbox's windows to the central PostgreSQL (psycopg 3).

Delivery is *at least once* from the device and *exactly once* in the database: every row
carries the device-generated ``window_key`` as its primary key and every insert is
``ON CONFLICT DO NOTHING``, so a batch replayed after a lost acknowledgement (network drop,
power cut or kill between the server commit and the local mark) inserts nothing new. Local
rows are marked synced only after the server's COMMIT has returned.

Schema management is :func:`migrate` (``soundscape-agent db init``): versioned SQL files in
``agent/sql/NNNN_name.sql``, each applied once, in its own transaction, holding a lock on
``schema_migrations`` that device roles cannot take (bounded by ``lock_timeout``). The device
itself may use an INSERT-only role (see :func:`send_batch`).

All database I/O here is asyncio (``psycopg.AsyncConnection``) except :func:`migrate`, a
one-shot command; SQLite work happens on the :class:`~agent.store.Outbox` thread. The
connection string's password is never logged: see :func:`redact_dsn`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import json
import logging
import math
import re
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypedDict, cast

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.config import SyncConfig, read_password
from agent.errors import AgentError, StoreError, SyncError
from agent.ops import backoff_delay
from agent.records import ClockStep, Gap, Heartbeat, Status, WindowResult
from agent.store import Outbox, nan_to_none

log = logging.getLogger("agent.sync")

#: Key of the transaction-level advisory lock serialising the creation of ``schema_migrations``
#: in an empty database (migrations themselves lock that table).
MIGRATION_LOCK_KEY = 7_370_636_117_110_100  # arbitrary constant, unique to this project

_MIGRATION_FILE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     int PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# The compatibility floor of each applied migration (its "-- compatible-from: N" header): the
# oldest agent schema version that still syncs to a server with it. Added by every `db init`
# since schema 6, before the numbered migrations, so any server newer than an agent has it.
_ADD_COMPATIBILITY_FLOOR = """
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS compatible_from int;
COMMENT ON COLUMN schema_migrations.compatible_from IS
    'Oldest agent schema version that can still sync to a server with this migration (NULL: this version).'
"""

#: ``-- compatible-from: N`` in a migration's header: agents that know schema N or newer can
#: still sync once it is applied (it only adds nullable or defaulted columns, tables, views).
_COMPATIBLE_FROM = re.compile(r"^-- compatible-from: (\d+)\s*$", re.M)

# One column list per table, in insert order: (column, SQL type the parameter is cast to, or "").
# Each INSERT is built from its list with named placeholders, and the row builders below return
# a dict with exactly these keys (tests/test_sync.py checks that they match).
WINDOW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("window_key", ""), ("device", ""), ("window_index", ""), ("start_time", ""), ("duration_s", ""),
    ("sample_rate", ""), ("clock_synchronised", ""), ("xruns", ""),
    ("lzeq_db", ""), ("lzeq_series_db", "double precision[]"), ("peak_dbfs", ""), ("status", ""),
    ("model_id", ""), ("model_hash", ""), ("model_backend", ""), ("model_is_scaffold", ""), ("sync_id", "uuid"),
    ("laeq_db", ""), ("lceq_db", ""), ("lafmax_db", ""), ("lafmin_db", ""), ("lasmax_db", ""),
    ("la10_db", ""), ("la50_db", ""), ("la90_db", ""), ("laeq_series_db", "double precision[]"),
    ("band_centres_hz", "real[]"), ("band_leq_db", "real[]"),
    ("aci", ""), ("adi", ""), ("aei", ""), ("bi", ""), ("ndsi", ""), ("hf", ""), ("ht", ""),
    ("clipping_ratio", ""), ("dc_offset_fs", ""), ("rms_dbfs", ""), ("hum_share", ""), ("health_flags", "text[]"),
    ("cal_offset_db", ""), ("cal_sensitivity_dbv", ""), ("cal_gain_db", ""), ("cal_vadc", ""),
    ("cal_reference_db", ""), ("cal_time", ""),
    ("classifier_status", "jsonb"),
)
DETECTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("device", ""), ("window_key", ""), ("taxonomy", ""), ("rank", ""), ("label", ""), ("label_index", ""),
    ("score", ""), ("offset_s", ""), ("model_id", ""), ("model_hash", ""), ("model_is_scaffold", ""),
    ("start_time", ""),
)
#: The oldest server schema this agent writes to: 9 (detections without start_time, the
#: partition key of schema 10), so that the fleet can be upgraded before the database.
OLDEST_SERVER_SCHEMA = 9
#: The first server schema whose detections carry ``start_time`` (0010_partitions.sql).
DETECTION_START_TIME_SCHEMA = 10
HEARTBEAT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("heartbeat_id", "uuid"), ("device", ""), ("time", ""), ("uptime_s", ""), ("windows", ""), ("classified", ""),
    ("skipped", ""), ("failed", ""), ("xruns", ""), ("queue_depth", ""), ("oldest_unsynced_start", ""),
    ("last_sync_at", ""), ("cpu_temp_c", ""), ("throttled", ""), ("throttle_flags", "text[]"),
    ("disk_free_bytes", ""), ("disk_total_bytes", ""), ("clock_synchronised", ""), ("rss_bytes", ""),
    ("peak_rss_bytes", ""), ("model_id", ""), ("model_hash", ""), ("agent_version", ""), ("degraded", "text[]"),
    ("evicted_unsynced", ""), ("evicted_synced", ""), ("dropped_windows", ""), ("set_aside", ""),
)
GAP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"), ("device", ""), ("start_time", ""), ("end_time", ""), ("reason", ""), ("detail", ""),
    ("windows", ""),
)
CLOCK_STEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"), ("device", ""), ("detected_at", ""), ("step_s", ""), ("clock_synchronised", ""),
)


def insert_statement(table: str, columns: Sequence[tuple[str, str]]) -> str:
    """``INSERT INTO table (...) VALUES (%(col)s::cast, ...) ON CONFLICT DO NOTHING``.

    Target-less ``ON CONFLICT DO NOTHING`` swallows a row whose key is already on the server (a
    replayed batch) and needs only the INSERT privilege: ``ON CONFLICT (window_key) DO NOTHING``
    would also need SELECT on the conflict columns, which an INSERT-only device role does not
    have. No RETURNING either (it needs SELECT): new rows are counted with the cursor's rowcount.
    """
    names = ", ".join(name for name, _ in columns)
    values = ", ".join(f"%({name})s" + (f"::{cast}" if cast else "") for name, cast in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT DO NOTHING"


_INSERT_WINDOW = insert_statement("windows", WINDOW_COLUMNS)
_INSERT_DETECTION = insert_statement("detections", DETECTION_COLUMNS)
# schema 9: the same rows; psycopg binds only the named parameters a statement uses
_INSERT_DETECTION_9 = insert_statement("detections", [c for c in DETECTION_COLUMNS if c[0] != "start_time"])
_INSERT_HEARTBEAT = insert_statement("heartbeats", HEARTBEAT_COLUMNS)
_INSERT_GAP = insert_statement("gaps", GAP_COLUMNS)
_INSERT_CLOCK_STEP = insert_statement("clock_steps", CLOCK_STEP_COLUMNS)


# ---------------------------------------------------------------------------------------------
# DSN helpers


def redact_dsn(dsn: str) -> str:
    """The connection string with its password replaced by ``***``, safe to log.

    Args:
        dsn: a libpq key/value string or ``postgresql://`` URI.

    Returns:
        A key/value conninfo string (``host=db.example port=5432 password=*** ...``), or
        ``<invalid connection string>`` if it cannot be parsed (the text itself is never
        echoed then, as it may hold a password).
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def _params(dsn: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.Error:
        raise SyncError(
            "[sync] dsn is not a valid libpq connection string",
            "use 'host=... port=5432 dbname=... user=... password=...' or "
            "'postgresql://user:password@host:5432/dbname'",
        ) from None


def _where(params: dict[str, str]) -> str:
    """``user@host:port/dbname`` of a parsed DSN (no password), for messages."""
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "?"
    user = params.get("user")
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def _scrub(text: str, params: dict[str, str]) -> str:
    """A driver message on one line, without the password should it ever contain it."""
    pw = params.get("password")
    text = " ".join(text.split())  # libpq messages span lines; ours are one line
    return text.replace(pw, "***") if pw else text


def _connect_hint(err_text: str) -> str:
    """What to do about a failed connection, from libpq's message (already scrubbed).

    Covers TLS verification (``sslmode=verify-full``: unknown CA, host name not in the
    certificate, no ``sslrootcert``), pg_hba.conf refusals (plain TCP to a TLS-only server),
    authentication, a missing database and timeouts. The texts matched are libpq's
    (fe-secure-openssl.c, fe-connect.c; OpenSSL's "certificate verify failed") and the
    server's (auth.c), as tests/test_faults_security.py sees them (libpq 18, PostgreSQL 15).

    Args:
        err_text: the driver's message, one line, without the password.

    Returns:
        One hint line (never empty).
    """
    low = err_text.lower()
    if "certificate verify failed" in low:
        return ("the server's certificate was not issued by the CA in sslrootcert (or it has expired or is not yet "
                "valid: check this device's clock): point sslrootcert in [sync] dsn at the CA that signed the "
                "server's certificate")
    if "does not match host name" in low:
        return ("host= in [sync] dsn must be a name or address the server's certificate lists (subjectAltName): "
                "use that name, or reissue the certificate for the name the devices connect to")
    if "root certificate file" in low and "does not exist" in low:
        return ("sslmode=verify-full needs the CA that signed the server's certificate: add sslrootcert=<CA file> "
                "to [sync] dsn (deploy: soundscape_agent_pg_ca_cert_src installs /etc/soundscape-agent/pg-ca.crt)")
    if "root certificate" in low or "sslrootcert" in low:
        return "sslrootcert in [sync] dsn must name a readable PEM file holding the server's CA certificate"
    if "server does not support ssl" in low:
        return ("the server has no TLS: enable ssl on the server (ssl = on with a certificate); do not lower "
                "sslmode on an untrusted network")
    if "no pg_hba.conf entry" in low and "no encryption" in low:
        return ("the server accepts only TLS connections: set sslmode=verify-full and sslrootcert=<CA file> "
                "in [sync] dsn")
    if "no pg_hba.conf entry" in low:
        return ("the server's pg_hba.conf admits no connection for this user, database and address: add a "
                "hostssl line for them on the server")
    if "password authentication failed" in low or "no password supplied" in low:
        return ("check the user in [sync] dsn and the password in [sync] password_file (or the DSN), and "
                "pg_hba.conf on the server")
    if "permission denied for database" in low:
        return "grant CONNECT on the database to this role (deploy/db.yml does for every device role)"
    if "does not exist" in low and "database" in low:
        return "create the database on the server, then run 'soundscape-agent db init'"
    if "timeout" in low or "timed out" in low:
        return "the server did not answer in time: check the network link; raise [sync] connect_timeout_s on slow links"
    return (
        "check that the server is running and reachable from this device and that [sync] dsn "
        "is right; results stay in the local outbox and are retried"
    )


def _server_hint(err: BaseException) -> str:
    """What to do about a statement the server refused (a batch, heartbeats, diagnose's probe).

    A row-level security refusal (``new row violates row-level security policy``, SQLSTATE
    42501 like a missing privilege; agent/sql/0004_device_rls.sql) means the role is not mapped
    to the row's device id in ``device_roles``.

    Args:
        err: the psycopg exception.

    Returns:
        One hint line (never empty).
    """
    if isinstance(err, pgerrors.InsufficientPrivilege) and "row-level security" in str(err):
        return ("this database role may not write rows of this device id (row-level security): as the database "
                "owner, INSERT INTO device_roles (role_name, device) VALUES ('<user in [sync] dsn>', "
                "'<[agent] device_id>'), which deploy/db.yml does for every device of the inventory; windows "
                "queued under an earlier device_id need a row of their own")
    if isinstance(err, pgerrors.InsufficientPrivilege):
        return ("grant the device role USAGE on the schema and INSERT on windows, detections, heartbeats, gaps "
                "and clock_steps (deploy/db.yml does)")
    if isinstance(err, pgerrors.QueryCanceled):
        return "the batch exceeded statement_timeout: lower [sync] batch_size or raise statement_timeout_s"
    if isinstance(err, (pgerrors.UndefinedTable, pgerrors.UndefinedColumn)):
        return "the server schema is missing or old: run 'soundscape-agent db init'"
    return "results stay in the local outbox and are retried; check the server log"


def _first(row: tuple[Any, ...] | None) -> Any:
    """Column 0 of the row that a single-row query (an aggregate, ``now()``) always returns;
    psycopg's ``fetchone()`` is typed for queries that may return none."""
    return cast(tuple[Any, ...], row)[0]


def _connect_timeout_arg(seconds: float) -> int:
    # libpq takes whole seconds and treats 1 as 2; never pass 0 (= wait forever).
    return max(2, math.ceil(seconds))


# ---------------------------------------------------------------------------------------------
# the server's TLS certificate (diagnose)


#: PostgreSQL's SSLRequest: length 8, code 1234.5679 (protocol documentation, "SSL Session Encryption").
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
#: Bound on reading the server's certificate over a separate connection, s.
CERT_PROBE_TIMEOUT_S = 15.0


def _der_element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length, pos = der[pos], der[pos + 1], pos + 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4 or pos + n > len(der):
            raise ValueError("bad DER length")
        length, pos = int.from_bytes(der[pos:pos + n], "big"), pos + n
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def certificate_not_after(der: bytes) -> datetime:
    """The notAfter of a DER X.509 certificate (RFC 5280 4.1: Certificate → tbsCertificate →
    [version], serialNumber, signature, issuer, validity → notBefore, notAfter), UTC.

    Raises:
        ValueError: not a DER certificate.
    """
    tag, pos, _ = _der_element(der, 0)  # Certificate
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, pos, _ = _der_element(der, pos)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    if der[pos] == 0xA0:  # [0] EXPLICIT version
        pos = _der_element(der, pos)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _der_element(der, pos)[2]
    tag, pos, _ = _der_element(der, pos)  # validity
    if tag != 0x30:
        raise ValueError("no validity in the certificate")
    pos = _der_element(der, pos)[2]  # notBefore
    tag, start, end = _der_element(der, pos)
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("bad notAfter in the certificate")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)


def _server_certificate(address: str, port: int, server_name: str | None, timeout_s: float) -> tuple[bytes, str]:
    """The server's certificate (DER) and the TLS protocol, over a connection of its own.

    libpq does not hand out the peer certificate, so this opens one more TCP connection to the
    address libpq used, sends PostgreSQL's SSLRequest, completes a TLS handshake (ALPN
    ``postgresql``, SNI ``server_name``) and closes it before any startup packet: the server
    logs nothing and no session starts. Nothing is verified here (libpq verified the real
    connection); only the certificate is read. Bounded by ``timeout_s`` in all.

    Raises:
        OSError: connect, handshake or timeout failure, or the server declines TLS.
    """
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((address, port), timeout=timeout_s) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        sock.sendall(_SSL_REQUEST)
        answer = sock.recv(1)
        if answer != b"S":
            raise OSError(f"the server answered {answer!r} to SSLRequest instead of S")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["postgresql"])
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            protocol = tls.version() or ""
            try:  # close_notify both ways (reading the server's session tickets): no reset in the server's log
                tls.unwrap()
            except (OSError, ValueError):
                pass
    if not der:
        raise OSError("the server sent no certificate")
    return der, protocol


class TlsReport(TypedDict):
    """The TLS of :func:`probe_server`'s connection, as ``diagnose`` reports it."""

    in_use: bool  # libpq's PQsslInUse
    sslmode: str | None  # the sslmode libpq used (DSN, PGSSLMODE or its default)
    protocol: str | None  # TLSv1.2, TLSv1.3 (the server's pg_stat_ssl for this connection)
    cipher: str | None
    certificate_not_after: str | None  # the server certificate's notAfter, ISO 8601 UTC
    certificate_days_left: float | None  # days from now to notAfter (negative: expired)
    certificate_error: str | None  # why the certificate could not be read


async def _tls_report(conn: psycopg.AsyncConnection, cfg: SyncConfig) -> TlsReport:
    """TLS in use, protocol, cipher (the server's ``pg_stat_ssl`` row of this connection) and
    the server certificate's expiry (:func:`_server_certificate`, to the address libpq used)."""
    info = conn.pgconn.info or []
    modes = [o.val.decode() for o in info if o.keyword == b"sslmode" and o.val is not None]
    report: TlsReport = {"in_use": bool(conn.pgconn.ssl_in_use), "sslmode": modes[0] if modes else None,
                         "protocol": None, "cipher": None, "certificate_not_after": None,
                         "certificate_days_left": None, "certificate_error": None}
    if not report["in_use"]:
        return report
    try:
        cur = await conn.execute("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        row = await cur.fetchone()
        if row:
            report["protocol"], report["cipher"] = row[0], row[1]
    except psycopg.Error:
        pass  # e.g. behind a pooler: the probe connection's protocol below instead
    finally:
        await conn.rollback()
    host = address = conn.info.host
    try:
        address = conn.info.hostaddr or host  # the address libpq connected to (libpq 12 or later)
    except psycopg.NotSupportedError:
        pass
    server_name = None if host.startswith(("/", "@")) else host
    timeout_s = min(CERT_PROBE_TIMEOUT_S, cast(float, cfg.connect_timeout_s))
    try:
        der, protocol = await asyncio.wait_for(
            asyncio.to_thread(_server_certificate, address, conn.info.port, server_name, timeout_s),
            timeout=timeout_s + 1)
        not_after = certificate_not_after(der)
    except (OSError, TimeoutError, ValueError) as err:
        report["certificate_error"] = str(err) or type(err).__name__
        return report
    report["protocol"] = report["protocol"] or protocol
    report["certificate_not_after"] = not_after.isoformat()
    days = (not_after - datetime.now(timezone.utc)).total_seconds() / 86400
    report["certificate_days_left"] = math.floor(days * 1000) / 1000  # never rounded up past the expiry
    return report


# ---------------------------------------------------------------------------------------------
# migrations


@functools.cache
def _migrations() -> tuple[tuple[int, str, str], ...]:
    """``(version, file name, sql)`` of every ``agent/sql/NNNN_*.sql``, by version."""
    folder = importlib.resources.files("agent").joinpath("sql")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"agent/sql migrations must be numbered 0001, 0002, ... without gaps: {versions}")
    for version, name, sql in found:
        floor = compatible_from(sql, version)
        if not 1 <= floor <= version:
            raise RuntimeError(f"agent/sql/{name}: compatible-from {floor} must be between 1 and {version}")
    return tuple(found)


def compatible_from(sql: str, version: int) -> int:
    """The compatibility floor a migration declares (``-- compatible-from: N``), else ``version``
    (nothing declared: only agents that know this migration may sync)."""
    m = _COMPATIBLE_FROM.search(sql)
    return int(m.group(1)) if m else version


def known_schema_version() -> int:
    """The newest server schema version this agent ships migrations for (int >= 1)."""
    return _migrations()[-1][0]


def migrate(dsn: str, connect_timeout_s: float = 10, *, lock_timeout_s: float = 5, lock_wait_s: float = 60) -> int:
    """Create or upgrade the central schema (``soundscape-agent db init``). Idempotent.

    Each pending ``agent/sql/NNNN_*.sql`` runs in its own transaction holding a SHARE ROW
    EXCLUSIVE lock on ``schema_migrations``: it conflicts with itself, so concurrent runs queue
    up and each version is applied exactly once (a second run changes nothing), but not with
    ACCESS SHARE, the only lock a device role can take on that table (it may only SELECT it;
    LOCK TABLE in any other mode needs UPDATE, DELETE or TRUNCATE). So no device can hold
    ``db init`` up, as one could with the advisory lock ``MIGRATION_LOCK_KEY`` of earlier
    releases (any role may take an advisory lock); that lock now only serialises creating
    ``schema_migrations`` in an empty database. ``schema_migrations`` is readable by PUBLIC so
    that an INSERT-only device role can check the version, and records each migration's
    compatibility floor (``compatible_from``, from its ``-- compatible-from: N`` header), which
    lets agents that do not know it yet keep syncing.

    Every lock is awaited at most ``lock_timeout_s`` (the server's ``lock_timeout``): an ALTER
    TABLE waiting behind another session's open transaction would otherwise hold every
    device's insert into that table in the queue behind it. A transaction that timed out is
    rolled back (nothing of it applied) and retried until ``lock_wait_s`` have passed.

    Args:
        dsn: libpq string or URI of a role allowed to create tables (the database owner).
        connect_timeout_s: bound on establishing the connection, s.
        lock_timeout_s: bound on each lock wait, s (devices' inserts wait at most this long
            behind a migration that waits for a lock itself).
        lock_wait_s: how long to keep retrying a migration whose locks are held, s.

    Returns:
        The schema version now in the database (the highest applied version).

    Raises:
        SyncError: the server is unreachable or refused a statement (e.g. no CREATE
            privilege), or other sessions held the locks a migration needs for ``lock_wait_s``
            (the message names their roles and process ids); the message names the server
            (never the password).
    """
    params = _params(dsn)
    where = _where(params)
    try:
        conn = psycopg.connect(dsn, connect_timeout=_connect_timeout_arg(connect_timeout_s), autocommit=True)
    except psycopg.Error as err:
        text = _scrub(str(err), params)
        raise SyncError(f"cannot connect to PostgreSQL at {where}: {text}", _connect_hint(text)) from None

    def holders() -> str:
        """``role (pid N)`` of the other sessions holding table or advisory locks in this database."""
        rows = conn.execute(
            "SELECT DISTINCT coalesce(a.usename::text, '?'), l.pid FROM pg_locks AS l"
            " LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.granted AND l.pid <> pg_backend_pid() AND l.locktype IN ('relation', 'advisory')"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY 2 LIMIT 10").fetchall()
        return ", ".join(f"{user} (pid {pid})" for user, pid in rows) or "none any more"

    def locked(what: str, work: Callable[[], bool]) -> bool:
        """``work()`` in a transaction, retried while a lock it needs is not available."""
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                with conn.transaction():
                    return work()
            except pgerrors.LockNotAvailable:
                if time.monotonic() >= deadline:
                    held = holders()
                    raise SyncError(
                        f"migrating the schema at {where} failed: {what} waited {lock_wait_s:g} s for locks held by "
                        f"other sessions: {held}",
                        "a session holds a lock in an open transaction (a device role's session idle in a "
                        "transaction is ended by its idle_in_transaction_session_timeout, set by deploy/db.yml): "
                        "rerun 'soundscape-agent db init' later, or end it now as a superuser with "
                        "SELECT pg_terminate_backend(<pid>); nothing of the migration was applied, and devices "
                        "kept syncing meanwhile") from None
                log.warning("PostgreSQL %s: %s waits for locks held by %s; retrying for up to %g s", where, what,
                            holders(), lock_wait_s)
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def exists() -> bool:
        return bool(_first(conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()))

    def bootstrap() -> bool:
        created = False
        if not exists():  # an empty database: serialise the creation with concurrent runs
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            if not exists():
                conn.execute(_CREATE_MIGRATIONS_TABLE)
                conn.execute("GRANT SELECT ON schema_migrations TO PUBLIC")
                created = True
        conn.execute("LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE")
        has_floor = _first(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass"
            " AND attname = 'compatible_from' AND NOT attisdropped)").fetchone())
        if not has_floor:  # ALTER TABLE only when needed: it would wait for every reader of the table
            conn.execute(_ADD_COMPATIBILITY_FLOOR)
        for version, _, sql in _migrations():  # floors of migrations applied before 6 had the column
            conn.execute("UPDATE schema_migrations SET compatible_from = %s"
                         " WHERE version = %s AND compatible_from IS NULL",
                         (compatible_from(sql, version), version))
        return created

    def apply(version: int, sql: str) -> bool:
        conn.execute("LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE")
        if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
            return False
        conn.execute(sql)  # no parameters: several statements are allowed
        conn.execute("INSERT INTO schema_migrations (version, applied_at, compatible_from)"
                     " VALUES (%s, now(), %s)", (version, compatible_from(sql, version)))
        return True

    try:
        with conn:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{max(1, round(lock_timeout_s * 1000))}ms",))
            locked("preparing schema_migrations", bootstrap)
            for version, name, sql in _migrations():
                if locked(f"migration {name}", functools.partial(apply, version, sql)):
                    log.info("PostgreSQL %s: applied migration %s", where, name)
            current = _first(conn.execute("SELECT max(version) FROM schema_migrations").fetchone())
    except psycopg.Error as err:
        text = _scrub(str(err), params)
        hint = (
            "run 'soundscape-agent db init' as the database owner or a role with CREATE on the schema"
            if isinstance(err, pgerrors.InsufficientPrivilege)
            else "check the server log; nothing of the failed migration was applied"
        )
        raise SyncError(f"migrating the schema at {where} failed: {text}", hint) from None
    if current > known_schema_version():
        log.warning("PostgreSQL %s has schema version %d, newer than this agent's %d", where, current,
                    known_schema_version())
    return int(current)


# ---------------------------------------------------------------------------------------------
# one batch


def _window_params(r: WindowResult, sync_id: uuid.UUID) -> dict[str, Any]:
    """The :data:`WINDOW_COLUMNS` values of one window (NaN becomes NULL)."""
    m, lv, ix, h = r.model, r.levels, r.indices, r.health
    cal = lv.calibration
    row: dict[str, Any] = {
        "window_key": r.key, "device": r.device_id, "window_index": int(r.index), "start_time": r.start_time,
        "duration_s": float(r.duration_s), "sample_rate": int(r.sample_rate),
        "clock_synchronised": bool(r.clock_synchronised), "xruns": int(r.xruns),
        "lzeq_db": float(lv.lzeq_db), "lzeq_series_db": [float(v) for v in lv.lzeq_series_db],
        "peak_dbfs": float(lv.peak_dbfs), "status": Status(r.status).value,
        "model_id": m.model_id if m else None, "model_hash": m.model_hash if m else None,
        "model_backend": m.backend if m else None, "model_is_scaffold": bool(m.is_scaffold) if m else None,
        "sync_id": sync_id,
        "laeq_series_db": [float(v) for v in lv.laeq_series_db],
        "band_centres_hz": [float(v) for v in lv.band_centres_hz] if lv.band_centres_hz else None,
        "band_leq_db": [float(v) for v in lv.band_leq_db] if lv.band_centres_hz else None,
        "health_flags": list(h.flags) if h else None,
        "cal_offset_db": float(cal.offset_db), "cal_sensitivity_dbv": float(cal.sensitivity_dbv),
        "cal_gain_db": float(cal.gain_db), "cal_vadc": float(cal.vadc),
        "cal_reference_db": None if cal.reference_db is None else float(cal.reference_db),
        "cal_time": cal.calibrated_at,
        "classifier_status": (json.dumps({t: st.value for t, st in r.classifier_status})
                              if r.classifier_status else None),
    }
    for name in ("laeq_db", "lceq_db", "lafmax_db", "lafmin_db", "lasmax_db", "la10_db", "la50_db", "la90_db"):
        row[name] = nan_to_none(getattr(lv, name))
    for name in ("aci", "adi", "aei", "bi", "ndsi", "hf", "ht"):
        row[name] = nan_to_none(getattr(ix, name)) if ix else None
    for name in ("clipping_ratio", "dc_offset_fs", "rms_dbfs", "hum_share"):
        row[name] = nan_to_none(getattr(h, name)) if h else None
    return row


def _detection_params(r: WindowResult) -> list[dict[str, Any]]:
    """The :data:`DETECTION_COLUMNS` rows of one window: each detection with its classifier's model."""
    rows = []
    for d in r.detections:
        m = r.model_for(d.taxonomy)
        rows.append({"device": r.device_id, "window_key": r.key, "start_time": r.start_time,
                     "taxonomy": d.taxonomy, "rank": int(d.rank),
                     "label": d.label, "label_index": int(d.label_index), "score": float(d.score),
                     "offset_s": d.offset_s,
                     "model_id": m.model_id if m else None, "model_hash": m.model_hash if m else None,
                     "model_is_scaffold": m.is_scaffold if m else None})
    return rows


def _heartbeat_params(h: Heartbeat) -> dict[str, Any]:
    """The :data:`HEARTBEAT_COLUMNS` values of one heartbeat."""
    row: dict[str, Any] = {name: getattr(h, name) for name, _ in HEARTBEAT_COLUMNS
                           if name not in ("device", "throttle_flags", "degraded")}
    row.update(device=h.device_id, throttle_flags=list(h.throttle_flags), degraded=list(h.degraded))
    return row


async def send_batch(conn: psycopg.AsyncConnection, results: Sequence[WindowResult], sync_id: str,
                     server_schema: int | None = None) -> int:
    """Insert a batch of windows and their detections in the connection's current transaction.

    Nothing is committed here: the caller commits (``await conn.commit()``), then marks the
    windows synced locally. Rows whose ``window_key`` is already on the server are skipped
    (target-less ``ON CONFLICT DO NOTHING``; works for a role with only INSERT), so replaying
    a batch inserts nothing new. ``sync_time`` is the server's ``now()``: the transaction's
    start time, the same for the whole batch.

    Args:
        conn: an open connection NOT in autocommit mode (the batch must be one transaction).
        results: the windows, any order, at most a few thousand (one round trip per pipeline).
        sync_id: UUID text identifying this batch; stored in every new window row.
        server_schema: the server's schema version (``_check_schema``); None: this agent's.
            Below :data:`DETECTION_START_TIME_SCHEMA`, detections are sent without ``start_time``.

    Returns:
        Number of window rows newly inserted (0 for a replayed batch).

    Raises:
        ValueError: ``conn`` is in autocommit mode, or ``sync_id`` is not a UUID.
        psycopg.Error: the server refused the batch (the transaction is then failed: roll back).
    """
    _require_transaction(conn, "a batch")
    sid = uuid.UUID(str(sync_id))
    if not results:
        return 0
    windows = [_window_params(r, sid) for r in results]
    detections = [row for r in results for row in _detection_params(r)]
    inserted = await _insert_rows(conn, "a batch", [(_INSERT_WINDOW, windows)])
    legacy = server_schema is not None and server_schema < DETECTION_START_TIME_SCHEMA
    await _insert_rows(conn, "a batch", [(_INSERT_DETECTION_9 if legacy else _INSERT_DETECTION, detections)])
    return inserted


def _require_transaction(conn: psycopg.AsyncConnection, what: str) -> None:
    """ValueError unless ``conn`` has autocommit off: a delivery must be one transaction."""
    if conn.autocommit:
        raise ValueError(f"sending {what} needs a connection with autocommit off: a delivery is one transaction")


async def _insert_rows(conn: psycopg.AsyncConnection, what: str,
                       statements: Sequence[tuple[str, list[dict[str, Any]]]]) -> int:
    """``executemany`` each (INSERT, rows) in the connection's current transaction; returns
    the rows newly inserted. The caller commits.

    Raises:
        ValueError: ``conn`` is in autocommit mode (a delivery must be one transaction).
        psycopg.Error: the server refused them.
    """
    _require_transaction(conn, what)
    inserted = 0
    async with conn.cursor() as cur:
        for sql, rows in statements:
            if rows:
                await cur.executemany(sql, rows)
                inserted += max(cur.rowcount, 0)
    return inserted


async def send_heartbeats(conn: psycopg.AsyncConnection, heartbeats: Sequence[Heartbeat]) -> int:
    """Insert heartbeats in the connection's current transaction (the caller commits).

    Like :func:`send_batch`: target-less ``ON CONFLICT DO NOTHING`` on the device-made
    ``heartbeat_id``, so a replay inserts nothing and an INSERT-only role suffices.

    Returns:
        Rows newly inserted.

    Raises:
        ValueError: ``conn`` is in autocommit mode.
        psycopg.Error: the server refused them.
    """
    rows = [_heartbeat_params(h) for h in heartbeats]
    return await _insert_rows(conn, "heartbeats", [(_INSERT_HEARTBEAT, rows)])


async def send_events(conn: psycopg.AsyncConnection, events: Sequence[Gap | ClockStep]) -> int:
    """Insert gaps and clock steps in the connection's current transaction (the caller commits).

    Like :func:`send_batch`: target-less ``ON CONFLICT DO NOTHING`` on the device-made
    ``event_id``, so a replay inserts nothing and an INSERT-only role suffices.

    Returns:
        Rows newly inserted.

    Raises:
        ValueError: ``conn`` is in autocommit mode.
        psycopg.Error: the server refused them.
    """
    gaps = [{"event_id": g.event_id, "device": g.device_id, "start_time": g.start_time, "end_time": g.end_time,
             "reason": g.reason, "detail": g.detail, "windows": int(g.windows)}
            for g in events if isinstance(g, Gap)]
    steps = [{"event_id": c.event_id, "device": c.device_id, "detected_at": c.detected_at,
              "step_s": float(c.step_s), "clock_synchronised": bool(c.clock_synchronised)}
             for c in events if isinstance(c, ClockStep)]
    return await _insert_rows(conn, "events", [(_INSERT_GAP, gaps), (_INSERT_CLOCK_STEP, steps)])


def _drop_tracebacks(err: BaseException | None) -> None:
    """Clear the tracebacks of ``err`` and of the exceptions it was raised from or during.

    psycopg (3.3) does not close a connection attempt that timed out or was cancelled: the
    half-open libpq connection, and its socket, stay referenced from the frames of the
    error's traceback until the cyclic garbage collector runs (the asyncio task holding the
    error is in a reference cycle), i.e. for seconds to minutes, beside the next attempt.
    Clearing the tracebacks frees it, and closes the socket, at once.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        err = err.__cause__ or err.__context__


class _ConnectExtras(TypedDict, total=False):
    """Connection parameters :func:`_connect` adds to the DSN's."""

    password: str
    application_name: str


async def _connect(cfg: SyncConfig, params: dict[str, str], where: str,
                   application_name: str = "soundscape-agent") -> psycopg.AsyncConnection:
    """An async connection (autocommit off) with the configured timeouts and password file."""
    # both set from the link profile by SyncConfig's validator (never None after validation)
    connect_s, statement_s = cast(float, cfg.connect_timeout_s), cast(float, cfg.statement_timeout_s)
    statement_ms = int(statement_s * 1000)
    options = f"-c statement_timeout={statement_ms}"
    if params.get("options"):
        options = f"{params['options']} {options}"
    extra: _ConnectExtras = {}
    if cfg.password_file:
        extra["password"] = read_password(cfg.password_file)
    if "application_name" not in params:
        extra["application_name"] = application_name
    bound = connect_s + statement_s
    try:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                cfg.dsn,
                connect_timeout=_connect_timeout_arg(connect_s),
                options=options,
                autocommit=False,
                **extra,
            ),
            timeout=bound,
        )
    except TimeoutError as err:
        _drop_tracebacks(err)  # closes the abandoned attempt's socket now (see _drop_tracebacks)
        raise SyncError(
            f"cannot connect to PostgreSQL at {where}: no answer within {bound:g} s",
            _connect_hint("timeout"),
        ) from None
    except psycopg.Error as err:
        text = _scrub(str(err), params)
        _drop_tracebacks(err)  # e.g. "connection timeout expired": the attempt's socket is still open
        raise SyncError(f"cannot connect to PostgreSQL at {where}: {text}", _connect_hint(text)) from None
    except asyncio.CancelledError as err:  # stop requested mid-connect: close the attempt now too
        _drop_tracebacks(err)
        raise


async def _check_schema(conn: psycopg.AsyncConnection, params: dict[str, str], where: str) -> int:
    """The server's schema version; SyncError unless this agent can write to it.

    Accepted: the version this agent knows or an older one down to :data:`OLDEST_SERVER_SCHEMA`
    (the fleet is upgraded before the database), or a newer one whose every unknown migration
    declares a compatibility floor (``schema_migrations.compatible_from``) at or below it
    (additive migrations: ``db.yml`` may run before the fleet is upgraded). Refused: a schema
    older than :data:`OLDEST_SERVER_SCHEMA`, or a newer one that is incompatible; the hint names
    both versions.
    """
    known = known_schema_version()
    try:
        cur = await conn.execute("SELECT max(version) FROM schema_migrations")
        row = await cur.fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        floor = version
        if version > known:
            try:
                cur = await conn.execute(
                    "SELECT max(coalesce(compatible_from, version)) FROM schema_migrations WHERE version > %s",
                    (known,))
                floor = int(_first(await cur.fetchone()))
            except pgerrors.UndefinedColumn:  # no floors recorded: incompatible
                await conn.rollback()
        await conn.rollback()  # read only; each batch gets a transaction of its own
    except pgerrors.UndefinedTable:
        raise SyncError(
            f"PostgreSQL {where} has no soundscape schema (table schema_migrations is missing)",
            "run 'soundscape-agent db init' against this database as its owner",
        ) from None
    except pgerrors.InsufficientPrivilege as err:
        raise SyncError(
            f"PostgreSQL {where}: cannot read schema_migrations: {_scrub(str(err), params)}",
            "GRANT SELECT ON schema_migrations TO the device role ('db init' grants it to PUBLIC)",
        ) from None
    except psycopg.Error as err:
        text = _scrub(str(err), params)
        raise SyncError(f"PostgreSQL {where}: reading the schema version failed: {text}", _server_hint(err)) from None
    if version < OLDEST_SERVER_SCHEMA:
        raise SyncError(
            f"PostgreSQL {where} has schema version {version}, this agent needs {OLDEST_SERVER_SCHEMA} or newer",
            "run 'soundscape-agent db init' against this database as its owner",
        )
    if floor > known:
        raise SyncError(
            f"PostgreSQL {where} has schema version {version}, newer than this agent knows ({known}) and "
            f"incompatible with it (agents of schema {floor} or newer only)",
            f"upgrade soundscape-agent on this device to a release with schema {floor} or newer "
            f"(or run its 'db init' if the server was rolled back)",
        )
    if version > known:
        _log_newer_once(where, version, known, floor)
    return version


_newer_logged: set[tuple[str, int]] = set()


def _log_newer_once(where: str, version: int, known: int, floor: int) -> None:
    if (where, version) not in _newer_logged:
        _newer_logged.add((where, version))
        log.warning("PostgreSQL %s has schema version %d, newer than this agent's %d but compatible with it "
                    "(agents of schema %d or newer): syncing; upgrade soundscape-agent when you can",
                    where, version, known, floor)


async def probe_server(cfg: SyncConfig, device_id: str) -> tuple[str, int, TlsReport]:
    """Check the server as the sync would use it, changing nothing (``diagnose``).

    Connects exactly as :class:`Syncer` does (DSN, timeouts, ``password_file``), checks the
    schema version, and inserts one heartbeat row for ``device_id`` in a transaction that is
    rolled back, which proves the INSERT privilege (and, with row-level security, that this
    device may write its own rows). Then reports the connection's TLS (:class:`TlsReport`):
    whether it is in use, the protocol, and the server certificate's expiry.

    Returns:
        (``user@host:port/dbname``, schema version, TLS report).

    Raises:
        SyncError: no DSN, unreachable, wrong schema version, or the insert was refused; the
            hint says what to do.
        ConfigError: ``password_file`` is unusable.
    """
    if not cfg.dsn.strip():
        raise SyncError("no PostgreSQL server configured ([sync] dsn is empty)", "set [sync] dsn to sync results")
    params = _params(cfg.dsn)
    where = _where(params)
    conn = await _connect(cfg, params, where, application_name="soundscape-agent diagnose")
    try:
        version = await _check_schema(conn, params, where)
        try:
            await conn.execute(
                "INSERT INTO heartbeats (heartbeat_id, device, time, uptime_s, windows, classified, skipped,"
                " failed, xruns, queue_depth, clock_synchronised, agent_version)"
                " VALUES (%s, %s, now(), 0, 0, 0, 0, 0, 0, 0, false, 'diagnose-probe')",
                (str(uuid.uuid4()), device_id))
        except psycopg.Error as err:
            raise SyncError(f"PostgreSQL {where} refused a test insert: {_scrub(str(err), params)}",
                            _server_hint(err)) from None
        finally:
            await conn.rollback()
        tls = await _tls_report(conn, cfg)
    finally:
        await conn.close()
    return where, version, tls


# ---------------------------------------------------------------------------------------------
# the syncer


#: SQLSTATE classes and codes of a refusal that replaying the same rows cannot cure: data
#: exceptions (22), integrity constraints (23: CHECK, NOT NULL, foreign key), program limits
#: (54: e.g. an index row too large) and 42501 (row-level security, or a missing privilege:
#: then every row is refused, and nothing is set aside). PostgreSQL, Appendix A "Error Codes".
_PERMANENT_CLASSES = ("22", "23", "54")
_PERMANENT_CODES = ("42501",)


class _Refused(SyncError):
    """The server refused rows with an error that replaying the same rows cannot cure."""


def _permanent(err: psycopg.Error) -> bool:
    """True if ``err`` refuses the rows themselves (see :data:`_PERMANENT_CLASSES`)."""
    state = err.sqlstate or ""
    return state[:2] in _PERMANENT_CLASSES or state in _PERMANENT_CODES


@dataclass(frozen=True)
class _Kind:
    """One kind of queued record :meth:`Syncer.sync_once` delivers.

    Attributes:
        table: the outbox table (for :meth:`~agent.store.Outbox.set_aside`).
        fetch: the oldest pending records, at most n.
        send: insert records in the connection's transaction with a sync id; rows newly inserted.
        mark: mark records synced locally with the sync id and the server's time; rows marked.
        ident: a record's key.
    """

    table: str
    fetch: Callable[[int], Awaitable[Sequence[Any]]]
    send: Callable[[psycopg.AsyncConnection, Sequence[Any], str], Awaitable[int]]
    mark: Callable[[Sequence[Any], str, datetime], Awaitable[int]]
    ident: Callable[[Any], str]


def _kinds(ob: Outbox, server_schema: int) -> tuple[_Kind, _Kind, _Kind]:
    """Windows, then events (gaps, clock steps), then heartbeats: data first."""
    return (
        _Kind("windows", ob.pending, lambda conn, rs, sid: send_batch(conn, rs, sid, server_schema),
              lambda rs, sid, t: ob.mark_synced([r.key for r in rs], sid, t), lambda r: str(r.key)),
        _Kind("events", ob.pending_events, lambda conn, rs, sid: send_events(conn, rs),
              lambda rs, sid, t: ob.mark_events_synced([r.event_id for r in rs], t), lambda r: str(r.event_id)),
        _Kind("heartbeats", ob.pending_heartbeats, lambda conn, rs, sid: send_heartbeats(conn, rs),
              lambda rs, sid, t: ob.mark_heartbeats_synced([r.heartbeat_id for r in rs], t),
              lambda r: str(r.heartbeat_id)),
    )


class Syncer:
    """Moves windows from the :class:`~agent.store.Outbox` to PostgreSQL, batch by batch.

    Args:
        cfg: the ``[sync]`` section (dsn, batch size, timeouts, interval, backoff). An empty
            ``dsn`` means "keep results local": :meth:`run` then returns at once.
        outbox: an open outbox shared with the pipeline (its calls are serialised on its
            own thread, so sharing is safe).
    """

    def __init__(self, cfg: SyncConfig, outbox: Outbox) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._lock = asyncio.Lock()  # one round at a time (run() vs final())
        #: consecutive failed rounds of :meth:`run` (0 after a successful one)
        self.failures = 0

    @property
    def enabled(self) -> bool:
        """False when no DSN is configured."""
        return bool(self._cfg.dsn.strip())

    def backoff_delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failed round (>= 1).

        Exponential backoff with jitter: uniform between ``backoff_initial_s`` and
        ``min(backoff_max_s, backoff_initial_s * 2**(failures - 1))``.
        """
        return backoff_delay(failures, self._cfg.backoff_initial_s, self._cfg.backoff_max_s)

    @staticmethod
    async def _commit_bounded(conn: psycopg.AsyncConnection, send: Callable[[], Awaitable[int]], what: str,
                              bound: float, where: str, params: dict[str, str]) -> tuple[int, datetime]:
        """Await ``send()`` (inserts in the connection's transaction), read the server's ``now()``
        (the transaction start: the rows' sync_time default), COMMIT; all within ``bound`` s.

        Returns:
            (rows newly inserted, server commit-transaction time).

        Raises:
            SyncError: too slow, or the server refused; the message names ``what``.
        """

        async def work() -> tuple[int, datetime]:
            inserted = await send()
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
            await conn.commit()
            return inserted, _first(row)

        try:
            return await asyncio.wait_for(work(), timeout=bound)
        except TimeoutError:
            raise SyncError(f"PostgreSQL {where}: {what} did not complete within {bound:g} s",
                            "slow link: lower [sync] batch_size or raise statement_timeout_s") from None
        except psycopg.Error as err:
            text = _scrub(str(err), params)
            if isinstance(err, psycopg.OperationalError) and err.sqlstate is None:
                # no SQLSTATE: the connection broke (reset, server gone), nothing was refused
                raise SyncError(f"PostgreSQL {where}: the connection was lost during {what}: {text}",
                                _connect_hint("")) from None
            kind = _Refused if _permanent(err) else SyncError
            raise kind(f"PostgreSQL {where} refused {what}: {text}", _server_hint(err)) from None

    async def _commit(self, conn: psycopg.AsyncConnection, kind: _Kind, records: Sequence[Any], bound: float,
                      where: str, params: dict[str, str]) -> tuple[int, int]:
        """Send ``records`` in one transaction, COMMIT, then (only then) mark them synced locally.

        Returns:
            (rows newly inserted on the server, records newly marked locally).

        Raises:
            _Refused: the server refused them for good (the transaction is rolled back).
            SyncError, StoreError: as :meth:`sync_once`.
        """
        sync_id = str(uuid.uuid4())
        try:
            inserted, sync_time = await self._commit_bounded(
                conn, functools.partial(kind.send, conn, records, sync_id), f"{len(records)} {kind.table}",
                bound, where, params)
        except _Refused:
            await conn.rollback()
            raise
        marked = await kind.mark(records, sync_id, sync_time)
        log.debug("%s %s: %d sent, %d new on the server", kind.table, sync_id, len(records), inserted)
        return inserted, marked

    async def _deliver(self, conn: psycopg.AsyncConnection, kind: _Kind, records: Sequence[Any], bound: float,
                       where: str, params: dict[str, str]) -> tuple[int, int, int]:
        """Deliver a batch; when the server refuses it for good, deliver what it accepts and set
        aside the rows it refuses on their own, so that one bad row never wedges the queue.

        A row is set aside only if another row of the batch was accepted: when every row is
        refused the fault is the role or the schema, not the rows, and the batch stays pending.
        The refused rows are found by halving (``O(k log n)`` transactions for ``k`` bad rows).

        Returns:
            (records delivered, rows newly inserted, records newly marked).

        Raises:
            SyncError: as :meth:`sync_once` (every row refused included).
            StoreError: the outbox cannot be written.
        """
        try:
            inserted, marked = await self._commit(conn, kind, records, bound, where, params)
            return len(records), inserted, marked
        except _Refused as first:
            if len(records) == 1:
                raise
            accepted, inserted, marked, refused = await self._isolate(conn, kind, records, bound, where, params)
            if not accepted:
                raise first from None
        for record, err in refused:
            log.error("the server refused %s %s for good while accepting the rows beside it: %s; it is set aside "
                      "in the queue (kept, counted in heartbeats and by diagnose); hint: fix the server side, then "
                      "restart the agent, which offers it once more", kind.table.rstrip("s"), kind.ident(record),
                      err.message)
            await self._outbox.set_aside(kind.table, [kind.ident(record)], err.message)
        return accepted, inserted, marked

    async def _isolate(self, conn: psycopg.AsyncConnection, kind: _Kind, records: Sequence[Any], bound: float,
                       where: str, params: dict[str, str]) -> tuple[int, int, int, list[tuple[Any, _Refused]]]:
        """``records`` were refused together: commit each half the server accepts, halve the
        others down to single rows. Returns (accepted, inserted, marked, [(refused row, why)])."""
        accepted = inserted = marked = 0
        refused: list[tuple[Any, _Refused]] = []
        mid = len(records) // 2
        for part in (records[:mid], records[mid:]):
            try:
                new, done = await self._commit(conn, kind, part, bound, where, params)
            except _Refused as err:
                if len(part) == 1:
                    refused.append((part[0], err))
                    continue
                a, n, m, r = await self._isolate(conn, kind, part, bound, where, params)
                accepted, inserted, marked, refused = accepted + a, inserted + n, marked + m, refused + r
            else:
                accepted, inserted, marked = accepted + len(part), inserted + new, marked + done
        return accepted, inserted, marked, refused

    async def sync_once(self) -> int:
        """Deliver every pending window, batch after batch, over one connection.

        Per batch: ``outbox.pending(batch_size)`` -> :func:`send_batch` -> COMMIT ->
        ``outbox.mark_synced(keys, sync_id, server time)``. Stops when the outbox has no more
        pending windows (a short batch ends the round). Then the pending events (gaps, clock
        steps: :func:`send_events`) and heartbeats (:func:`send_heartbeats`) the same way: data
        first. A row the server refuses for good while accepting the rows beside it is set
        aside in the outbox (:meth:`_deliver`), and the round goes on.

        Returns:
            Number of windows delivered and marked synced in this round (replayed ones
            included; they were on the server already).

        Raises:
            SyncError: no DSN, server unreachable or too slow (connect bound
                ``connect_timeout_s + statement_timeout_s``; the same bound per batch),
                unknown schema version, or the server refused every row of a batch. Windows of
                a failed batch stay pending; earlier batches of the round stay delivered.
            StoreError: the outbox cannot be read or written.
        """
        if not self.enabled:
            raise SyncError("no PostgreSQL server configured ([sync] dsn is empty)", "set [sync] dsn to sync results")
        cfg = self._cfg
        params = _params(cfg.dsn)
        where = _where(params)
        # set from the link profile by SyncConfig's validator (never None after validation)
        batch_size = int(cast(int, cfg.batch_size))
        bound = cast(float, cfg.statement_timeout_s) + cast(float, cfg.connect_timeout_s)
        async with self._lock:
            conn = await _connect(cfg, params, where)
            delivered = inserted_total = 0
            try:
                try:
                    version = await asyncio.wait_for(_check_schema(conn, params, where), timeout=bound)
                except TimeoutError:
                    raise SyncError(f"PostgreSQL {where} did not answer within {bound:g} s",
                                    _connect_hint("timeout")) from None
                for kind in _kinds(self._outbox, version):
                    while records := await kind.fetch(batch_size):
                        sent, inserted, marked = await self._deliver(conn, kind, records, bound, where, params)
                        if kind.table == "windows":
                            delivered += sent
                            inserted_total += inserted
                        if len(records) < batch_size or marked == 0:
                            break
            finally:
                await conn.close()
        if delivered:
            log.info(
                "synced %d windows to %s (%d new, %d already there)",
                delivered, where, inserted_total, delivered - inserted_total,
            )
        return delivered

    async def run(self, stop: asyncio.Event) -> None:
        """Sync every ``interval_s`` until ``stop`` is set; back off after failures.

        A failed round (server down, refused batch, outbox error) is logged at WARNING with
        the delay before the next attempt (``sync failed (...); retrying in 7.3 s``), the
        delay growing per :meth:`backoff_delay`. Returns promptly once ``stop`` is set, also
        in the middle of a round (which is cancelled; its uncommitted batch is rolled back by
        the server and stays pending). Returns at once if no DSN is configured.

        Args:
            stop: set it to end the loop.

        Raises:
            Nothing for server, network or outbox errors (they are logged and retried).
        """
        if not self.enabled:
            log.info("sync disabled ([sync] dsn is empty): results are kept in the local outbox")
            return
        self.failures = 0
        while not stop.is_set():
            round_task = asyncio.ensure_future(self.sync_once())
            stop_task = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({round_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # stop set, or run() itself cancelled: abandon the round (its open
                # transaction is rolled back by the server; its windows stay pending).
                stop_task.cancel()
                if not round_task.done():
                    round_task.cancel()
                    await asyncio.gather(round_task, return_exceptions=True)
            if round_task.cancelled():
                return
            try:
                round_task.result()
                self.failures = 0
                delay = self._cfg.interval_s
            except AgentError as err:
                self.failures += 1
                delay = self.backoff_delay(self.failures)
                log.warning("sync failed (%s%s); retrying in %.1f s", err.message,
                            f"; hint: {err.hint}" if err.hint else "", delay)
            except Exception as err:  # a bug: keep the agent recording, but say so loudly
                self.failures += 1
                delay = self.backoff_delay(self.failures)
                log.error("sync failed unexpectedly (%r); retrying in %.1f s", err, delay, exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def final(self, timeout_s: float | None = None) -> int:
        """One last bounded sync attempt at shutdown; never raises for sync problems.

        Args:
            timeout_s: bound, s (default ``cfg.final_timeout_s``; 0 skips the attempt).

        Returns:
            Windows delivered (0 if disabled, skipped, failed or timed out; the rest stays in
            the outbox for the next start).

        Note:
            If the bound expires while a statement is executing, psycopg first asks the
            server to cancel it (up to ~10 s on a dead link) before the attempt ends.
        """
        timeout = self._cfg.final_timeout_s if timeout_s is None else timeout_s
        if not self.enabled or timeout <= 0:
            return 0
        try:
            delivered = await asyncio.wait_for(self.sync_once(), timeout=timeout)
        except TimeoutError:
            log.warning("final sync did not finish within %g s; pending windows stay in the outbox", timeout)
        except (SyncError, StoreError) as err:
            log.warning("final sync failed (%s%s); pending windows stay in the outbox", err.message,
                        f"; hint: {err.hint}" if err.hint else "")
        except Exception as err:
            log.error("final sync failed unexpectedly (%r)", err, exc_info=True)
        else:
            log.info("final sync: %d windows delivered, the outbox is empty", delivered)
            return delivered
        return 0


__all__ = ["MIGRATION_LOCK_KEY", "OLDEST_SERVER_SCHEMA", "Syncer", "TlsReport", "certificate_not_after",
           "compatible_from", "known_schema_version", "migrate", "redact_dsn",
           "send_batch", "send_events", "send_heartbeats"]
