"""Fault suite, security (issue 6, item 8): what a device may do on the central PostgreSQL, TLS,
and where the password may never appear. Real agent processes, real SQLite, real PostgreSQL
(tests/pg.py; one server with TLS made for this module), no mocks.

- Row-level security (agent/sql/0004_device_rls.sql) with exactly deploy/db.yml's grants
  (USAGE on schema public, INSERT on windows, detections, heartbeats, gaps, clock_steps, SELECT
  on schema_migrations, CONNECT revoked from PUBLIC; one ``device_roles`` row per device): two
  device roles A and B. Each device's own agent delivers its windows, detections and
  heartbeats. Then, as A, every forbidden write or read is tried once, each its own assertion
  with the server's exact answer; as admin, B's rows (and A's) are unchanged afterwards. An
  agent configured with B's device id but A's credentials is refused with a hint naming
  ``device_roles``, by ``sync --once`` (exit 75, queue intact) and by ``diagnose``.
- TLS: a CA and a server certificate (SAN DNS:localhost, IP:127.0.0.1) made by the test; the
  server admits TCP only over TLS. The agent with ``sslmode=verify-full`` delivers its windows
  while pg_stat_ssl shows its connection encrypted (caught while its INSERT waits on a lock the
  test holds). A CA that did not sign the server's certificate, a certificate for another host
  name, verify-full without sslrootcert and plain TCP each fail ``sync --once`` with exit 75,
  a one-line libpq reason and a hint, no traceback, the queue intact; ``diagnose --check
  postgres`` passes over TLS.
- The password, from a systemd credential (``${CREDENTIALS_DIRECTORY}/pg-password``) or a 0600
  file, never appears in /proc/<pid>/cmdline or /proc/<pid>/environ of the running agent and
  its arecord child, nor in the agent's -vv output, nor in ``diagnose`` (text and JSON), also
  with a wrong password; a group-readable password file is refused naming ``chmod 600``.

Figures: ``fault_results.record("security", ...)``, cumulated over this module's tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.sync import migrate
from tests.audio import PCM_NAME, RECORDINGS, real_audio_s16, write_alsa_file_pcm
from tests.faultkit import AGENT, ROOT, check_delivery, local_keys, unsynced_count
from tests.pg import ADMIN_PASSWORD, PgServer, PgServerUnavailable, provision_device
from tests.test_run import write_config

pytestmark = pytest.mark.faults

RLS_REFUSAL = 'refused: new row violates row-level security policy for table "{}"'
PRIVILEGE_REFUSAL = "refused: permission denied for table {}"

# Cumulated over the module's tests, recorded after each (the last record holds the totals).
TALLY = {"scenarios": 0, "attempts": 0, "refused": 0, "windows": 0, "lost": 0, "duplicated": 0,
         "password_places_checked": 0}


def _record(fault_results) -> None:
    fault_results.record(
        "security", cycles=TALLY["scenarios"], faults_injected=TALLY["attempts"], windows_sent=TALLY["windows"],
        lost=TALLY["lost"], duplicated=TALLY["duplicated"], worst_recovery_s=None,
        forbidden_attempts_refused=TALLY["refused"], tls="verify-full",
        password_places_checked=TALLY["password_places_checked"], password_leaks=0,
    )


# ---------------------------------------------------------------------------------------------
# certificates (cryptography; X.509 as RFC 5280, host names as libpq's verify-full checks them)


@dataclass(frozen=True)
class TestCA:
    """A certificate authority made by the test: its PEM certificate file and signing key."""

    __test__ = False  # not a test class, despite the name

    cert_path: Path
    cert: object  # cryptography.x509.Certificate
    key: object  # cryptography EC private key


def make_ca(path: Path, common_name: str, days: float = 2) -> TestCA:
    """A self-signed CA certificate (EC P-256, valid from 1 h ago for ``days`` days) written to ``path`` (PEM).

    Raises:
        OSError: ``path`` cannot be written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TestCA(path, cert, key)


def make_server_cert(ca: TestCA, cert_path: Path, key_path: Path, dns: list[str], ips: list[str],
                     days: float = 2) -> dt.datetime:
    """A TLS server certificate signed by ``ca``, subjectAltName ``dns`` + ``ips``, EC P-256,
    valid from 1 h ago for ``days`` days.

    Writes the certificate (PEM) to ``cert_path`` and its unencrypted PKCS#8 key to
    ``key_path`` (mode 0600). Returns its notAfter (UTC, whole seconds, as in the certificate).

    Raises:
        OSError: a file cannot be written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert.not_valid_after_utc


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write ``text`` (one line) to ``path`` with ``mode``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def device_dsn(port: int, dbname: str, user: str, host: str = "127.0.0.1", **extra: str) -> str:
    """A DSN as deploy renders it: no password (that comes from ``[sync] password_file``)."""
    return " ".join([f"host={host}", f"port={port}", f"dbname={dbname}", f"user={user}",
                     *(f"{k}={v}" for k, v in extra.items())])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any libpq ``PG*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The soundscape-agent CLI in a child process (``python -m agent.cli ARGS``), bounded in time (s)."""
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)




def attempt(conn: psycopg.Connection, statement: str, params: tuple = ()) -> str:
    """Run one statement as a device (autocommit connection): ``refused: <server message>`` or
    ``done: <command status>``. Counted in the module's tally as a forbidden attempt; refused
    when the server refused it or it changed no row (``INSERT 0 0``)."""
    TALLY["attempts"] += 1
    try:
        cur = conn.execute(statement, params)
    except psycopg.Error as err:
        TALLY["refused"] += 1
        return f"refused: {err.diag.message_primary}"
    if cur.statusmessage == "INSERT 0 0":
        TALLY["refused"] += 1
    return f"done: {cur.statusmessage}"


def rows_of(admin_dsn: str, device: str) -> dict[str, list]:
    """Every row of ``device`` in windows, detections, heartbeats, gaps and clock_steps, as JSON, in a stable order."""
    with psycopg.connect(admin_dsn) as con:
        return {
            "windows": [r[0] for r in con.execute(
                "SELECT to_jsonb(w) FROM windows w WHERE device = %s ORDER BY window_key", (device,))],
            "detections": [r[0] for r in con.execute(
                "SELECT to_jsonb(d) FROM detections d WHERE d.device = %s"
                " ORDER BY d.window_key, d.rank", (device,))],
            "heartbeats": [r[0] for r in con.execute(
                "SELECT to_jsonb(h) FROM heartbeats h WHERE device = %s ORDER BY heartbeat_id", (device,))],
            "gaps": [r[0] for r in con.execute(
                "SELECT to_jsonb(g) FROM gaps g WHERE device = %s ORDER BY event_id", (device,))],
            "clock_steps": [r[0] for r in con.execute(
                "SELECT to_jsonb(c) FROM clock_steps c WHERE device = %s ORDER BY event_id", (device,))],
        }


def agent_config(path: Path, *, device: str, dsn: str, password_file: str, store: Path, classify: Path | None,
                 capture: dict | None = None, window_s: float = 10.0, **sync: object) -> Path:
    """A config for the real agent: the bundled recordings (9 files, ~100 s) as fast as they go
    unless ``capture`` (not looped: a looped file repeats its start times);
    ``window_s`` s windows; the tiny ONNX model ``classify`` (queue large enough that no window
    is skipped) or no classifier."""
    classifier = ({"type": "onnx", "model": str(classify), "queue_size": 100} if classify is not None
                  else {"enabled": False})
    return write_config(
        path,
        agent={"device_id": device},
        capture=capture or {"type": "file", "path": str(RECORDINGS)},
        windows={"length_s": window_s},
        classifier=classifier,
        store={"path": str(store)},
        sync={"dsn": dsn, "password_file": password_file, "interval_s": 0.5, "connect_timeout_s": 10,
              "statement_timeout_s": 120, "backoff_initial_s": 0.5, "backoff_max_s": 2, "final_timeout_s": 60,
              **sync},
    )


# ---------------------------------------------------------------------------------------------
# row-level security


def test_a_device_role_writes_only_its_own_rows_and_reads_nothing(fault_dsn, fault_pg, tiny_model_dir, tmp_path,
                                                                 fault_results):
    """Roles A and B with db.yml's grants: each agent delivers its own rows; every write in B's
    name, every read, update and delete, and every way round the policy is refused for A."""
    tag = uuid.uuid4().hex[:8]
    role_a, role_b = f"sa_sec_a_{tag}", f"sa_sec_b_{tag}"
    dev_a, dev_b = "sec-a", "sec-b"
    pw_a, pw_b = f"pw-a-{uuid.uuid4().hex}", f"pw-b-{uuid.uuid4().hex}"
    provision_device(fault_dsn, role_a, pw_a, dev_a)
    provision_device(fault_dsn, role_b, pw_b, dev_b)
    dbname = conninfo_to_dict(fault_dsn)["dbname"]
    env = clean_env()

    # Each device's own agent delivers its windows (with detections) and heartbeats, as its role.
    configs, procs = {}, {}
    for dev, role, pw in ((dev_a, role_a, pw_a), (dev_b, role_b, pw_b)):
        configs[dev] = agent_config(
            tmp_path / f"{dev}.toml", device=dev, dsn=device_dsn(fault_pg.port, dbname, role),
            password_file=str(secret_file(tmp_path / f"{dev}-pg-password", pw)), store=tmp_path / f"{dev}.db",
            classify=tiny_model_dir)
        procs[dev] = subprocess.Popen([*AGENT, "-v", "run", "--config", str(configs[dev]), "--max-windows", "3"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    TALLY["scenarios"] += 2
    for dev, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{dev}: {err[-3000:]}"
        assert "done: 3 windows" in out, out
        d = check_delivery(tmp_path / f"{dev}.db", fault_dsn, dev)
        TALLY["windows"] += len(d.remote)
    before_a, before_b = rows_of(fault_dsn, dev_a), rows_of(fault_dsn, dev_b)
    assert len(before_b["windows"]) == 3 and len(before_b["detections"]) == 3 * 5 and before_b["heartbeats"]
    assert len(before_a["windows"]) == 3 and before_a["heartbeats"]
    b_key = before_b["windows"][0]["window_key"]
    a_key = before_a["windows"][0]["window_key"]

    a_dsn = fault_pg.dsn(dbname, user=role_a, password=pw_a)
    with psycopg.connect(a_dsn, autocommit=True) as a:
        # writing in B's name
        assert attempt(a, "INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                          " clock_synchronised, status, sync_id) VALUES ('forged-0', %s, 0, now(), 10, 48000, true,"
                          " 'disabled', gen_random_uuid())", (dev_b,)) == RLS_REFUSAL.format("windows")
        assert attempt(a, "INSERT INTO detections (window_key, rank, label, label_index, score)"
                          " VALUES (%s, 99, 'Speech', 0, 0.99)", (b_key,)) == RLS_REFUSAL.format("detections")
        assert attempt(a, "INSERT INTO detections (window_key, rank, label, label_index, score)"
                          " VALUES ('no-such-window', 1, 'Speech', 0, 0.99)") == RLS_REFUSAL.format("detections")
        assert attempt(a, "INSERT INTO heartbeats (heartbeat_id, device, time, uptime_s, windows, classified, skipped,"
                          " failed, xruns, queue_depth, clock_synchronised, agent_version) VALUES"
                          " (gen_random_uuid(), %s, now(), 1, 0, 0, 0, 0, 0, 0, true, 'forged')",
                       (dev_b,)) == RLS_REFUSAL.format("heartbeats")
        assert attempt(a, "INSERT INTO gaps (event_id, device, start_time, end_time, reason) VALUES"
                          " (gen_random_uuid(), %s, now(), now(), 'capture_lost')", (dev_b,)) == RLS_REFUSAL.format(
            "gaps")
        assert attempt(a, "INSERT INTO clock_steps (event_id, device, detected_at, step_s, clock_synchronised) VALUES"
                          " (gen_random_uuid(), %s, now(), 3600, true)", (dev_b,)) == RLS_REFUSAL.format("clock_steps")
        # a replay of B's window key, in B's name: refused although the row exists (checked first)
        assert attempt(a, "INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                          " clock_synchronised, status, sync_id) VALUES (%s, %s, 0, now(), 10, 48000, true,"
                          " 'disabled', gen_random_uuid()) ON CONFLICT DO NOTHING", (b_key, dev_b)) == \
            RLS_REFUSAL.format("windows")
        # B's window key in A's name: keys are scoped by device (schema 9), so this is a row of
        # A's own, beside B's and never mistaken for it (until schema 8 it took B's key and B's
        # window was then skipped as already there). Not a forbidden attempt: not tallied.
        a.execute("INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                  " clock_synchronised, status, sync_id) VALUES (%s, %s, 0, now(), 10, 48000, true,"
                  " 'disabled', gen_random_uuid()) ON CONFLICT DO NOTHING", (b_key, dev_a))
        # an upsert over B's window
        assert attempt(a, "INSERT INTO windows (window_key, device, window_index, start_time, duration_s, sample_rate,"
                          " clock_synchronised, status, sync_id) VALUES (%s, %s, 0, now(), 10, 48000, true,"
                          " 'disabled', gen_random_uuid())"
                          " ON CONFLICT (device, window_key, start_time) DO UPDATE SET leq_db = 0",
                       (b_key, dev_b)) == PRIVILEGE_REFUSAL.format("windows")
        # reading: B's rows, and its own
        assert attempt(a, "SELECT * FROM windows WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format("windows")
        assert attempt(a, "SELECT * FROM detections WHERE window_key = %s", (b_key,)) == PRIVILEGE_REFUSAL.format(
            "detections")
        assert attempt(a, "SELECT * FROM heartbeats WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format(
            "heartbeats")
        assert attempt(a, "SELECT * FROM gaps WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format("gaps")
        assert attempt(a, "SELECT * FROM windows WHERE device = %s", (dev_a,)) == PRIVILEGE_REFUSAL.format("windows")
        assert attempt(a, "SELECT * FROM detections_flat") == "refused: permission denied for view detections_flat"
        # updating: B's rows, and its own
        assert attempt(a, "UPDATE windows SET leq_db = 0 WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format(
            "windows")
        assert attempt(a, "UPDATE detections SET label = 'x' WHERE window_key = %s", (b_key,)) == \
            PRIVILEGE_REFUSAL.format("detections")
        assert attempt(a, "UPDATE heartbeats SET device = %s WHERE device = %s", (dev_a, dev_b)) == \
            PRIVILEGE_REFUSAL.format("heartbeats")
        assert attempt(a, "UPDATE windows SET device = %s WHERE window_key = %s", (dev_b, a_key)) == \
            PRIVILEGE_REFUSAL.format("windows")
        # deleting: B's rows, and its own
        assert attempt(a, "DELETE FROM windows WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format("windows")
        assert attempt(a, "DELETE FROM detections WHERE window_key = %s", (b_key,)) == PRIVILEGE_REFUSAL.format(
            "detections")
        assert attempt(a, "DELETE FROM heartbeats WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format(
            "heartbeats")
        assert attempt(a, "DELETE FROM clock_steps WHERE device = %s", (dev_b,)) == PRIVILEGE_REFUSAL.format(
            "clock_steps")
        assert attempt(a, "DELETE FROM windows WHERE device = %s", (dev_a,)) == PRIVILEGE_REFUSAL.format("windows")
        assert attempt(a, "TRUNCATE windows CASCADE") == PRIVILEGE_REFUSAL.format("windows")
        # getting round the policy: map itself to B, become B, switch the policy off or drop it
        assert attempt(a, "INSERT INTO device_roles (role_name, device) VALUES (current_user, %s)", (dev_b,)) == \
            PRIVILEGE_REFUSAL.format("device_roles")
        assert attempt(a, "SELECT * FROM device_roles") == PRIVILEGE_REFUSAL.format("device_roles")
        assert attempt(a, sql.SQL("SET ROLE {}").format(sql.Identifier(role_b)).as_string(a)) == \
            f'refused: permission denied to set role "{role_b}"'
        assert attempt(a, "ALTER TABLE windows DISABLE ROW LEVEL SECURITY") == "refused: must be owner of table windows"
        assert attempt(a, "DROP POLICY windows_insert_own_device ON windows") == \
            "refused: must be owner of relation windows"
    TALLY["scenarios"] += 1

    # As admin: B's rows and A's are exactly as their agents delivered them (plus A's own row
    # under B's key); nothing forged.
    assert rows_of(fault_dsn, dev_b) == before_b
    after_a = rows_of(fault_dsn, dev_a)
    assert [w["window_key"] for w in after_a["windows"] if w["window_key"] == b_key] == [b_key]
    assert {**after_a, "windows": [w for w in after_a["windows"] if w["window_key"] != b_key]} == before_a
    with psycopg.connect(fault_dsn) as con:
        assert con.execute("SELECT count(*) FROM windows WHERE window_key = 'forged-0'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM heartbeats WHERE agent_version = 'forged'").fetchone()[0] == 0

    # The real agent with B's device id but A's credentials: refused, with a hint naming
    # device_roles (sync --once: exit 75, queue intact; diagnose: the postgres check fails).
    forge_db = tmp_path / "forged.db"
    forged = agent_config(tmp_path / "forged.toml", device=dev_b, dsn=device_dsn(fault_pg.port, dbname, role_a),
                          password_file=str(tmp_path / f"{dev_a}-pg-password"), store=forge_db, classify=None)
    filled = cli("run", "--config", str(forged), "--max-windows", "2", "--dsn", "", env=env)
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert unsynced_count(forge_db) == 2
    TALLY["attempts"] += 2
    refused = cli("sync", "--once", "--config", str(forged), env=env)
    assert refused.returncode == 75, refused.stderr
    assert 'new row violates row-level security policy for table "windows"' in refused.stderr
    assert "device_roles" in refused.stderr and "Traceback" not in refused.stderr
    assert unsynced_count(forge_db) == 2
    TALLY["refused"] += 1
    diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(forged), env=env)
    (check,) = [c for c in json.loads(diag.stdout)["checks"] if c["name"] == "postgres"]
    assert diag.returncode == 2 and check["status"] == "fail", diag.stdout
    assert "row-level security" in check["detail"] and "device_roles" in check["hint"], check
    TALLY["refused"] += 1
    TALLY["scenarios"] += 1
    assert rows_of(fault_dsn, dev_b) == before_b
    assert pw_a not in refused.stderr + refused.stdout + diag.stdout + diag.stderr
    _record(fault_results)


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsSetup:
    """The module's TLS-only server and the test's CA files."""

    server: PgServer
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not
    home: Path  # an empty HOME for the agent: no ~/.postgresql/root.crt to fall back on
    not_after: dt.datetime  # the server certificate's (valid for 400 days: diagnose does not warn)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A PostgreSQL server with ssl = on, a certificate for localhost / 127.0.0.1 signed by a
    test CA (valid for 400 days), and pg_hba.conf hostssl only."""
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d / "ca.pem", "soundscape test CA", days=400)
    make_ca(d / "other-ca.pem", "some other CA")
    not_after = make_server_cert(ca, d / "server.crt", d / "server.key", dns=["localhost"], ips=["127.0.0.1"],
                                 days=400)
    home = d / "home"
    home.mkdir()
    try:
        server = PgServer(ssl_cert=d / "server.crt", ssl_key=d / "server.key")
    except PgServerUnavailable as err:
        pytest.fail(f"{err} (scripts/test.sh installs the postgresql package)", pytrace=False)
    try:
        server.start()
        yield TlsSetup(server, d / "ca.pem", d / "other-ca.pem", home, not_after)
    finally:
        server.cleanup()


def test_tls_verify_full_delivers_encrypted_and_refuses_what_it_cannot_verify(tls, tiny_model_dir, tmp_path,
                                                                              fault_results):
    """verify-full against a TLS-only server: the agent delivers over an encrypted connection;
    an unknown CA, a wrong host name, no sslrootcert and plain TCP are refused, queue intact."""
    admin_dsn = tls.server.create_database()
    migrate(admin_dsn)
    dbname = conninfo_to_dict(admin_dsn)["dbname"]
    role, dev, pw = f"sa_sec_tls_{uuid.uuid4().hex[:8]}", "sec-tls", f"pw-tls-{uuid.uuid4().hex}"
    provision_device(admin_dsn, role, pw, dev)
    pwfile = str(secret_file(tmp_path / "pg-password", pw))
    good = device_dsn(tls.server.port, dbname, role, host="localhost", sslmode="verify-full", sslrootcert=str(tls.ca))
    env = clean_env(HOME=str(tls.home))
    assert not (tls.home / ".postgresql").exists()

    # 1. The agent delivers over verify-full; its connection, caught while its INSERT waits on a
    #    lock the test holds, is encrypted according to the server (pg_stat_ssl).
    queue = tmp_path / "queue.db"
    cfg = agent_config(tmp_path / "agent.toml", device=dev, dsn=good, password_file=pwfile, store=queue,
                       classify=tiny_model_dir,
                       capture={"type": "file", "path": str(RECORDINGS), "realtime": True}, window_s=1.0)
    with psycopg.connect(admin_dsn) as locker, psycopg.connect(admin_dsn, autocommit=True) as watcher:
        locker.execute("LOCK TABLE windows IN SHARE ROW EXCLUSIVE MODE")  # blocks INSERT, not SELECT
        err_log = open(tmp_path / "agent.err", "w")
        proc = subprocess.Popen([*AGENT, "-v", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=err_log, env=env, cwd=ROOT)
        try:
            seen = None
            deadline = time.monotonic() + 240
            while seen is None and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "agent.err").read_text()[-3000:]
                seen = watcher.execute(
                    "SELECT s.ssl, s.version, a.application_name FROM pg_stat_activity a JOIN pg_stat_ssl s"
                    " USING (pid) WHERE a.usename = %s AND a.wait_event_type = 'Lock'", (role,)).fetchone()
                time.sleep(0.1)
            assert seen is not None, "the agent's INSERT never reached the server: " + (
                tmp_path / "agent.err").read_text()[-3000:]
            ssl_on, version, app = seen
            assert ssl_on is True and version in ("TLSv1.2", "TLSv1.3") and app == "soundscape-agent", seen
            locker.rollback()  # let the batch through
            deadline = time.monotonic() + 240
            while watcher.execute("SELECT count(*) FROM windows WHERE device = %s", (dev,)).fetchone()[0] < 3:
                assert time.monotonic() < deadline, (tmp_path / "agent.err").read_text()[-3000:]
                assert proc.poll() is None, (tmp_path / "agent.err").read_text()[-3000:]
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
            err_log.close()
    assert rc == 0, (tmp_path / "agent.err").read_text()[-3000:]
    d = check_delivery(queue, admin_dsn, dev)
    TALLY["windows"] += len(d.remote)
    TALLY["scenarios"] += 1

    # 2. What verify-full must refuse: each a one-line reason and a hint, exit 75, queue intact.
    queue2 = tmp_path / "queue2.db"
    cfg2 = agent_config(tmp_path / "agent2.toml", device=dev, dsn=good, password_file=pwfile, store=queue2,
                        classify=None)
    filled = cli("run", "--config", str(cfg2), "--max-windows", "2", "--dsn", "", env=env)
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert unsynced_count(queue2) == 2
    port = tls.server.port
    bad = {
        "a CA that did not sign the server's certificate": (
            device_dsn(port, dbname, role, host="localhost", sslmode="verify-full", sslrootcert=str(tls.other_ca)),
            "SSL error: certificate verify failed", "sslrootcert"),
        "a certificate for another host name": (
            # the device expects db.example.org; what answers at that address holds localhost's certificate
            device_dsn(port, dbname, role, host="db.example.org", hostaddr="127.0.0.1", sslmode="verify-full",
                       sslrootcert=str(tls.ca)),
            'server certificate for "localhost" (and 1 other name) does not match host name "db.example.org"',
            "subjectAltName"),
        "verify-full without sslrootcert": (
            device_dsn(port, dbname, role, host="localhost", sslmode="verify-full"),
            f'root certificate file "{tls.home}/.postgresql/root.crt" does not exist', "add sslrootcert="),
        "plain TCP to a TLS-only server": (
            device_dsn(port, dbname, role, host="localhost", sslmode="disable"),
            "no pg_hba.conf entry", "accepts only TLS"),
    }
    for case, (dsn, reason, hint) in bad.items():
        TALLY["attempts"] += 1
        r = cli("sync", "--once", "--config", str(cfg2), "--dsn", dsn, env=env, timeout=120)
        assert r.returncode == 75, (case, r.stderr)
        assert reason in r.stderr, (case, r.stderr)
        lines = r.stderr.splitlines()
        (i,) = [n for n, ln in enumerate(lines) if ln.startswith("soundscape-agent: error: ")]
        assert (lines[i].startswith("soundscape-agent: error: cannot connect to PostgreSQL at ")
                and reason in lines[i]), (case, r.stderr)  # the reason on one line
        assert lines[i + 1].startswith("  hint: ") and hint in lines[i + 1], (case, r.stderr)
        assert "Traceback" not in r.stderr and pw not in r.stderr + r.stdout, case
        assert unsynced_count(queue2) == 2, case
        TALLY["refused"] += 1
    TALLY["scenarios"] += len(bad)

    # 3. The right settings deliver what the refused attempts left queued; diagnose passes over TLS.
    ok = cli("sync", "--once", "--config", str(cfg2), env=env, timeout=120)
    assert ok.returncode == 0 and "synced 2 windows; 0 left" in ok.stdout, ok.stderr
    # same device, two queues: the server holds exactly both queues' windows, once each
    keys2, unsynced2, _ = local_keys(queue2)
    with psycopg.connect(admin_dsn) as con:
        remote = [k for (k,) in con.execute("SELECT window_key FROM windows WHERE device = %s", (dev,))]
    assert len(keys2) == 2 and not unsynced2
    assert sorted(remote) == sorted(d.local | keys2)
    TALLY["windows"] += 2
    diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(cfg2), env=env, timeout=120)
    assert diag.returncode == 0, diag.stdout + diag.stderr
    (check,) = [c for c in json.loads(diag.stdout)["checks"] if c["name"] == "postgres"]
    assert check["status"] == "ok" and check["value"]["insert"] is True, check
    assert "localhost" in check["value"]["server"]
    # TLS in use, the protocol, the server certificate's expiry (400 days away: no warning)
    tls_seen = check["value"]["tls"]
    assert tls_seen["in_use"] is True and tls_seen["protocol"] in ("TLSv1.2", "TLSv1.3"), check
    assert tls_seen["sslmode"] == "verify-full", check
    assert tls_seen["certificate_not_after"] == tls.not_after.isoformat(), check
    assert 399 < tls_seen["certificate_days_left"] <= 400, check
    assert f"over {tls_seen['protocol']}" in check["detail"] and tls.not_after.strftime("%Y-%m-%d") in check["detail"]
    TALLY["scenarios"] += 1
    _record(fault_results)


# ---------------------------------------------------------------------------------------------
# verified TLS required for every non-local host (issue 14, item 8)
#
# "Non-local" needs an address the test can reach that is neither a Unix socket nor loopback:
# this machine's own non-loopback address, where two more servers listen (tests/pg.py
# extra_addresses): one TLS-only with a certificate for that address (expiring in 10 days, so
# diagnose warns), one without TLS.


def non_loopback_address() -> str:
    """This machine's own non-loopback IPv4 address (``ip -4 addr``, else the default route's
    source address); the test fails when there is none."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = [f[f.index("inet") + 1].split("/")[0] for f in map(str.split, out.splitlines()) if "inet" in f]
    if not found:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect(("192.0.2.1", 9))  # UDP: no packet is sent, only a route chosen
                found = [s.getsockname()[0]]
            except OSError:
                pass
    found = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    if not found:
        pytest.fail("this machine has no non-loopback IPv4 address to stand for a remote PostgreSQL host",
                    pytrace=False)
    return found[0]


@dataclass(frozen=True)
class RemoteSetup:
    """Servers listening on this machine's non-loopback ``address`` (and on 127.0.0.1)."""

    address: str
    tls_server: PgServer  # TLS-only, certificate for ``address`` signed by ``ca``, expiring in 10 days
    plain_server: PgServer  # no TLS
    ca: Path
    not_after: dt.datetime  # the TLS server certificate's
    home: Path  # an empty HOME for the agent


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    address = non_loopback_address()
    ca = make_ca(d / "ca.pem", "soundscape remote test CA", days=400)
    not_after = make_server_cert(ca, d / "server.crt", d / "server.key", dns=["db.soundscape.test"], ips=[address],
                                 days=10)
    home = d / "home"
    home.mkdir()
    servers: list[PgServer] = []
    try:
        for tls_files in ({"ssl_cert": d / "server.crt", "ssl_key": d / "server.key"}, {}):
            servers.append(PgServer(extra_addresses=(address,), **tls_files))
            servers[-1].start()
        yield RemoteSetup(address, servers[0], servers[1], d / "ca.pem", not_after, home)
    except PgServerUnavailable as err:
        pytest.fail(f"{err} (scripts/test.sh installs the postgresql package)", pytrace=False)
    finally:
        for server in servers:
            server.cleanup()


@dataclass(frozen=True)
class RemoteDevice:
    """A migrated database on one of :class:`RemoteSetup`'s servers and a device role in it."""

    admin_dsn: str
    dbname: str
    role: str
    password: str
    password_file: str
    port: int


def remote_device(server: PgServer, tmp_path: Path, device: str) -> RemoteDevice:
    admin_dsn = server.create_database()
    migrate(admin_dsn)
    role, pw = f"sa_sec_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    provision_device(admin_dsn, role, pw, device)
    pwfile = str(secret_file(tmp_path / f"{role}-password", pw))
    return RemoteDevice(admin_dsn, conninfo_to_dict(admin_dsn)["dbname"], role, pw, pwfile, server.port)


def fill_queue(tmp_path: Path, name: str, device: str, password_file: str, env: dict[str, str]) -> Path:
    """A new outbox holding 2 unsynced windows of ``device`` (the agent run without a server)."""
    queue = tmp_path / f"{name}.db"
    cfg = agent_config(tmp_path / f"{name}-fill.toml", device=device, dsn="", password_file=password_file,
                       store=queue, classify=None)
    r = cli("run", "--config", str(cfg), "--max-windows", "2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert unsynced_count(queue) == 2
    return queue


def assert_tls_refusal(text: str, host: str, found: str) -> None:
    """The config error of the TLS rule: the host, the sslmode found and both fixes, no traceback."""
    assert f"host {host} is not local" in text, text
    assert found in text, text
    assert "sslmode=verify-full sslrootcert=" in text and '[sync] tls = "off"' in text, text
    assert "Traceback" not in text


def test_tls_a_non_local_host_without_verified_tls_is_refused_at_config_load(remote, tmp_path):
    """A non-local host with sslmode prefer (also libpq's default when the DSN has none), require,
    disable or allow, or no sslmode but PGSSLMODE=require: refused when the config is loaded
    (exit 78) by sync --once, run, db init, the demo and diagnose, naming the host, the sslmode
    found and both fixes; nothing reaches the server, the queue stays intact."""
    dev = "sec-remote-refused"
    d = remote_device(remote.plain_server, tmp_path, dev)
    env = clean_env(HOME=str(remote.home))
    queue = fill_queue(tmp_path, "refused", dev, d.password_file, env)
    host = remote.address
    cases = {
        "sslmode=prefer": (device_dsn(d.port, d.dbname, d.role, host=host, sslmode="prefer"), {},
                           "sslmode=prefer does not verify"),
        "sslmode=require": (device_dsn(d.port, d.dbname, d.role, host=host, sslmode="require"), {},
                            "sslmode=require does not verify"),
        "sslmode=disable": (device_dsn(d.port, d.dbname, d.role, host=host, sslmode="disable"), {},
                            "sslmode=disable does not verify"),
        "no sslmode: libpq's default": (device_dsn(d.port, d.dbname, d.role, host=host), {},
                                        "sslmode=prefer (libpq's default) does not verify"),
        "no sslmode, PGSSLMODE=require": (device_dsn(d.port, d.dbname, d.role, host=host), {"PGSSLMODE": "require"},
                                          "sslmode=require (from PGSSLMODE) does not verify"),
        "a URI with sslmode=allow": (f"postgresql://{d.role}@{host}:{d.port}/{d.dbname}?sslmode=allow", {},
                                     "sslmode=allow does not verify"),
    }
    for case, (dsn, extra_env, found) in cases.items():
        case_env = {**env, **extra_env}
        cfg = agent_config(tmp_path / "refused.toml", device=dev, dsn=dsn, password_file=d.password_file,
                           store=queue, classify=None)
        r = cli("sync", "--once", "--config", str(cfg), env=case_env, timeout=120)
        assert r.returncode == 78, (case, r.stderr)
        assert_tls_refusal(r.stderr, host, found)
        r = cli("sync", "--once", "--config", str(tmp_path / "refused-fill.toml"), "--dsn", dsn, env=case_env,
                timeout=120)
        assert r.returncode == 78, (case, r.stderr)
        assert_tls_refusal(r.stderr, host, found)
        assert unsynced_count(queue) == 2, case

    # every other command that takes a DSN, with libpq's default sslmode
    dsn, _, found = cases["no sslmode: libpq's default"]
    cfg = agent_config(tmp_path / "refused.toml", device=dev, dsn=dsn, password_file=d.password_file, store=queue,
                       classify=None)
    ran = cli("run", "--config", str(cfg), "--max-windows", "1", env=env, timeout=120)
    owner_dsn = make_conninfo(d.admin_dsn, host=host, sslmode="prefer")
    init = cli("db", "init", "--config", "/dev/null", "--dsn", owner_dsn, env=env, timeout=120)  # as db.yml runs it
    demo = cli("demo", "--state-dir", str(tmp_path / "demo"), env={**env, "SOUNDSCAPE_DSN": dsn}, timeout=120)
    for what, r, shown in (("run", ran, found), ("db init", init, "sslmode=prefer does not verify"),
                           ("demo", demo, found)):
        assert r.returncode == 78, (what, r.stdout, r.stderr)
        assert_tls_refusal(r.stderr, host, shown)
    assert ADMIN_PASSWORD not in init.stdout + init.stderr  # the owner's password, from the DSN
    diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(cfg), env=env, timeout=120)
    checks = {c["name"]: c for c in json.loads(diag.stdout)["checks"]}
    assert diag.returncode == 2 and checks["config"]["status"] == "fail", diag.stdout
    assert_tls_refusal(checks["config"]["detail"], host, found)
    assert checks["postgres"]["status"] == "fail" and "not checked" in checks["postgres"]["detail"]

    assert unsynced_count(queue) == 2
    with psycopg.connect(d.admin_dsn) as con:  # nothing was sent, nothing was created by the demo
        assert con.execute("SELECT count(*) FROM windows").fetchone()[0] == 0
    assert not (tmp_path / "demo").exists()


def test_tls_verified_to_a_non_local_host_syncs_and_diagnose_reports_protocol_and_expiry(remote, tmp_path):
    """sslmode=verify-full (and verify-ca) to the non-local TLS server: accepted, the windows
    delivered; diagnose reports TLS in use, the protocol and the certificate's expiry, and warns
    as it is within 30 days."""
    dev = "sec-remote-verified"
    d = remote_device(remote.tls_server, tmp_path, dev)
    env = clean_env(HOME=str(remote.home))
    queue = fill_queue(tmp_path, "verified", dev, d.password_file, env)
    full = device_dsn(d.port, d.dbname, d.role, host=remote.address, sslmode="verify-full", sslrootcert=str(remote.ca))
    cfg = agent_config(tmp_path / "verified.toml", device=dev, dsn=full, password_file=d.password_file, store=queue,
                       classify=None)
    ok = cli("sync", "--once", "--config", str(cfg), env=env, timeout=120)
    assert ok.returncode == 0 and "synced 2 windows; 0 left" in ok.stdout, ok.stderr
    check_delivery(queue, d.admin_dsn, dev)
    # verify-ca (the CA, not the host name): accepted too, and it connects (an empty round)
    ca_only = device_dsn(d.port, d.dbname, d.role, host=remote.address, sslmode="verify-ca", sslrootcert=str(remote.ca))
    ok = cli("sync", "--once", "--config", str(cfg), "--dsn", ca_only, env=env, timeout=120)
    assert ok.returncode == 0 and "synced 0 windows; 0 left" in ok.stdout, ok.stderr

    diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(cfg), env=env, timeout=120)
    (check,) = [c for c in json.loads(diag.stdout)["checks"] if c["name"] == "postgres"]
    assert diag.returncode == 1 and check["status"] == "warn", diag.stdout + diag.stderr
    seen = check["value"]["tls"]
    assert seen["in_use"] is True and seen["protocol"] in ("TLSv1.2", "TLSv1.3") and seen["sslmode"] == "verify-full"
    assert seen["certificate_not_after"] == remote.not_after.isoformat(), check
    assert 9 < seen["certificate_days_left"] <= 10, check
    assert check["threshold"] == {"certificate_days_left": 30}, check
    assert "renew" in check["hint"] and remote.not_after.strftime("%Y-%m-%d") in check["detail"], check
    assert check["value"]["insert"] is True and remote.address in check["value"]["server"]
    text = cli("diagnose", "--check", "postgres", "--config", str(cfg), env=env, timeout=120)
    assert text.returncode == 1 and f"over {seen['protocol']}" in text.stdout, text.stdout
    assert re.search(r"server certificate valid until \d{4}-\d\d-\d\d \d\d:\d\d UTC, expires in 9\.\d days",
                     text.stdout), text.stdout
    assert d.password not in diag.stdout + diag.stderr + text.stdout + text.stderr


def test_tls_off_lets_a_non_local_host_go_without_verification(remote, tmp_path):
    """[sync] tls = "off": a non-local host with sslmode=require (TLS, unverified) or disable (a
    server without TLS) is accepted and delivers; diagnose says whether TLS is in use."""
    env = clean_env(HOME=str(remote.home))
    for name, server, sslmode, in_use in (("off-require", remote.tls_server, "require", True),
                                          ("off-disable", remote.plain_server, "disable", False)):
        dev = f"sec-remote-{name}"
        d = remote_device(server, tmp_path, dev)
        queue = fill_queue(tmp_path, name, dev, d.password_file, env)
        dsn = device_dsn(d.port, d.dbname, d.role, host=remote.address, sslmode=sslmode)
        cfg = agent_config(tmp_path / f"{name}.toml", device=dev, dsn=dsn, password_file=d.password_file,
                           store=queue, classify=None, tls="off")
        ok = cli("sync", "--once", "--config", str(cfg), env=env, timeout=120)
        assert ok.returncode == 0 and "synced 2 windows; 0 left" in ok.stdout, (name, ok.stderr)
        check_delivery(queue, d.admin_dsn, dev)
        diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(cfg), env=env, timeout=120)
        (check,) = [c for c in json.loads(diag.stdout)["checks"] if c["name"] == "postgres"]
        seen = check["value"]["tls"]
        assert seen["in_use"] is in_use and seen["sslmode"] == sslmode, (name, check)
        if in_use:  # unverified, but the certificate is still read: within 30 days, a warning
            assert check["status"] == "warn" and seen["certificate_not_after"] == remote.not_after.isoformat()
        else:
            assert check["status"] == "ok" and diag.returncode == 0, (name, check)
            assert seen["protocol"] is None and seen["certificate_not_after"] is None
            assert "without TLS" in check["detail"], check


def test_tls_local_hosts_are_unaffected(remote, tmp_path):
    """The default rule leaves local hosts alone: 127.0.0.1 with sslmode=disable, localhost with
    libpq's default, the Unix socket, and 127.0.0.1 with sslmode=require on the TLS server."""
    env = clean_env(HOME=str(remote.home))
    plain = remote_device(remote.plain_server, tmp_path, "sec-local")
    queue = fill_queue(tmp_path, "local", "sec-local", plain.password_file, env)
    tls_dev = remote_device(remote.tls_server, tmp_path, "sec-local")
    cases = [
        (plain, device_dsn(plain.port, plain.dbname, plain.role, host="127.0.0.1", sslmode="disable"), 2),
        (plain, device_dsn(plain.port, plain.dbname, plain.role, host="localhost"), 0),
        (plain, device_dsn(plain.port, plain.dbname, plain.role, host=str(remote.plain_server.sockdir)), 0),
        (tls_dev, device_dsn(tls_dev.port, tls_dev.dbname, tls_dev.role, host="127.0.0.1", sslmode="require"), 0),
    ]
    for d, dsn, synced in cases:
        cfg = agent_config(tmp_path / "local.toml", device="sec-local", dsn=dsn, password_file=d.password_file,
                           store=queue, classify=None)
        ok = cli("sync", "--once", "--config", str(cfg), env=env, timeout=120)
        assert ok.returncode == 0 and f"synced {synced} windows; 0 left" in ok.stdout, (dsn, ok.stderr)
    check_delivery(queue, plain.admin_dsn, "sec-local")


# ---------------------------------------------------------------------------------------------
# the password


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/<pid>/stat's ppid field."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def test_the_password_never_shows_on_the_command_line_environment_logs_or_diagnose(
        fault_dsn, fault_pg, tmp_path, fault_results):
    """The password (systemd credential) is in no /proc cmdline or environ of the running agent
    and its arecord child, in no -vv log, diagnose output or outbox, also when wrong; a
    group-readable password file is refused naming chmod 600."""
    dbname = conninfo_to_dict(fault_dsn)["dbname"]
    role, dev, pw = f"sa_sec_pw_{uuid.uuid4().hex[:8]}", "sec-pw", f"pw-{uuid.uuid4().hex}"
    provision_device(fault_dsn, role, pw, dev)
    # the systemd credential form: LoadCredential= hands the service a 0400 copy in $CREDENTIALS_DIRECTORY
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    secret_file(creds / "pg-password", pw, mode=0o400)
    alsa_env = write_alsa_file_pcm(tmp_path, real_audio_s16(48000, 150))
    env = clean_env(CREDENTIALS_DIRECTORY=str(creds), **alsa_env)
    queue = tmp_path / "queue.db"
    cfg = agent_config(tmp_path / "agent.toml", device=dev, dsn=device_dsn(fault_pg.port, dbname, role),
                       password_file="${CREDENTIALS_DIRECTORY}/pg-password", store=queue, classify=None,
                       capture={"type": "arecord", "pcm": PCM_NAME, "sample_rate": 48000})
    assert pw not in cfg.read_text()
    secret = pw.encode()

    # 1. While the agent runs (and has synced): its and its children's command lines and environments.
    out_path, err_path = tmp_path / "agent.out", tmp_path / "agent.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([*AGENT, "-vv", "run", "--config", str(cfg)], stdout=out, stderr=err, env=env,
                                cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, err_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no window synced with an arecord child running:\n" + \
                    err_path.read_text()[-3000:]
                with psycopg.connect(fault_dsn) as con:
                    synced = con.execute("SELECT count(*) FROM windows WHERE device = %s", (dev,)).fetchone()[0]
                pids = _tree(proc.pid)
                cmdlines = {}
                for p in pids:
                    try:
                        cmdlines[p] = Path(f"/proc/{p}/cmdline").read_bytes()
                    except OSError:
                        pass
                if synced >= 2 and any(b"arecord" in c for c in cmdlines.values()):
                    break
                time.sleep(0.3)
            checked = 0
            for p in pids:
                try:
                    cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
                    environ = Path(f"/proc/{p}/environ").read_bytes()
                except OSError:
                    continue  # gone meanwhile
                assert secret not in cmdline, f"password on the command line of {cmdline!r}"
                assert secret not in environ, f"password in the environment of {cmdline!r}"
                checked += 2
            agent_env = Path(f"/proc/{proc.pid}/environ").read_bytes()
            assert f"CREDENTIALS_DIRECTORY={creds}".encode() in agent_env.split(b"\0")  # premise: systemd form
            assert checked >= 4, pids  # the agent and at least its arecord child
            TALLY["password_places_checked"] += checked
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
    logs = out_path.read_text() + err_path.read_text()
    assert rc == 0, logs[-3000:]
    assert " DEBUG " in logs and "synced" in logs  # premise: -vv logging, and the sync ran
    assert pw not in logs
    for f in tmp_path.glob("queue.db*"):  # nor in the outbox (and its WAL)
        assert secret not in f.read_bytes(), f
    d = check_delivery(queue, fault_dsn, dev)
    TALLY["windows"] += len(d.remote)
    TALLY["password_places_checked"] += 2
    TALLY["scenarios"] += 1

    # 2. diagnose, text and JSON (-vv): the postgres check passes; no password.
    for fmt in ((), ("--json",)):
        diag = cli("-vv", "diagnose", *fmt, "--check", "config", "--check", "postgres", "--config", str(cfg), env=env)
        assert diag.returncode == 0, diag.stdout + diag.stderr
        assert pw not in diag.stdout + diag.stderr
        TALLY["password_places_checked"] += 2
    assert {c["name"]: c["status"] for c in json.loads(diag.stdout)["checks"]} == {"config": "ok", "postgres": "ok"}
    TALLY["scenarios"] += 1

    # 3. A wrong password: refused by the server, and neither it nor the right one is echoed.
    wrong = f"wrong-{uuid.uuid4().hex}"
    wrong_creds = tmp_path / "wrong-credentials"
    wrong_creds.mkdir(mode=0o700)
    secret_file(wrong_creds / "pg-password", wrong, mode=0o400)
    wrong_env = {**env, "CREDENTIALS_DIRECTORY": str(wrong_creds)}
    TALLY["attempts"] += 3
    sync = cli("-vv", "sync", "--once", "--config", str(cfg), env=wrong_env, timeout=120)
    assert sync.returncode == 75 and "password authentication failed" in sync.stderr, sync.stderr
    assert "password_file" in sync.stderr and "Traceback" not in sync.stderr  # the hint
    ran = cli("-vv", "run", "--config", str(cfg), "--max-windows", "2", env=wrong_env)
    assert ran.returncode == 0 and "password authentication failed" in ran.stderr, ran.stderr[-3000:]
    diag = cli("-vv", "diagnose", "--check", "postgres", "--config", str(cfg), env=wrong_env, timeout=120)
    assert diag.returncode == 2 and "password authentication failed" in diag.stdout, diag.stdout
    for r in (sync, ran, diag):
        assert wrong not in r.stdout + r.stderr and pw not in r.stdout + r.stderr
        TALLY["password_places_checked"] += 2
    TALLY["refused"] += 3
    TALLY["scenarios"] += 1

    # 4. A password file readable by its group: refused, naming chmod 600, before any connection.
    loose = secret_file(tmp_path / "loose" / "pg-password", pw, mode=0o640)
    loose_cfg = agent_config(tmp_path / "loose.toml", device=dev, dsn=device_dsn(fault_pg.port, dbname, role),
                             password_file=str(loose), store=queue, classify=None)
    TALLY["attempts"] += 2
    refused = cli("sync", "--once", "--config", str(loose_cfg), env=env, timeout=120)
    assert refused.returncode == 78, refused.stderr
    assert f"{loose} is accessible to group or others (mode 0640)" in refused.stderr
    assert f"chmod 600 {loose}" in refused.stderr and pw not in refused.stderr + refused.stdout
    diag = cli("diagnose", "--json", "--check", "postgres", "--config", str(loose_cfg), env=env, timeout=120)
    (check,) = [c for c in json.loads(diag.stdout)["checks"] if c["name"] == "postgres"]
    assert diag.returncode == 2 and check["status"] == "fail" and "chmod 600" in check["hint"], check
    assert pw not in diag.stdout + diag.stderr
    TALLY["refused"] += 2
    TALLY["scenarios"] += 1
    _record(fault_results)
