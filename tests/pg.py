"""A throwaway PostgreSQL cluster for the tests: real ``initdb`` + ``pg_ctl``, no mocks.

The server binaries come from ``$PG_BINDIR``, ``pg_config --bindir`` or
``/usr/lib/postgresql/<newest>/bin`` (Debian's layout). PostgreSQL refuses to run as root,
so when the tests run as root the cluster belongs to the ``postgres`` OS user and every
server command runs through ``runuser -u postgres --``.

TLS: ``PgServer(ssl_cert=..., ssl_key=...)`` starts the server with ``ssl = on`` and that
certificate, and admits TCP clients only over TLS (``hostssl`` lines; a plain connection is
refused with "no pg_hba.conf entry ... no encryption").
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-secret-pw"


class PgServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found on this machine."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PgServerUnavailable: none found (install Debian's ``postgresql`` package).
    """
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass

    def version_key(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    for c in candidates:
        d = Path(c)
        if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    raise PgServerUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{candidates or ['$PG_BINDIR', 'pg_config --bindir', '/usr/lib/postgresql/*/bin']}; "
        "install them (Debian: apt-get install -y postgresql) or set PG_BINDIR"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:<free port>.

    The bootstrap superuser is ``admin`` / ``admin-secret-pw``; TCP connections use
    scram-sha-256 passwords, the Unix socket (in the cluster's directory) trusts local users.
    ``fsync=off``: durability of test data is irrelevant, speed is not.

    With ``ssl_cert`` and ``ssl_key`` the server runs with ``ssl = on`` and that certificate
    (copied into the cluster directory, the key mode 0600 and owned by the server's OS user, as
    PostgreSQL requires: documentation, "Secure TCP/IP Connections with SSL"), and pg_hba.conf
    admits TCP connections only as ``hostssl`` (scram-sha-256): plain TCP is refused. :meth:`dsn`
    then adds ``sslmode=require`` (encrypted, certificate not verified: good enough for the tests'
    own admin connections; a test of verification builds its own DSN with ``sslmode=verify-full``).

    With ``extra_addresses`` (IP addresses of this machine, e.g. its own non-loopback address)
    the server also listens there, and pg_hba.conf admits TCP clients from each of them as it
    does from 127.0.0.1 (``hostssl`` on a TLS server): a "non-local" server for the tests.

    Args:
        bindir: server binaries (default :func:`find_bindir`).
        ssl_cert: PEM server certificate (chain) file, or None for a server without TLS.
        ssl_key: PEM private key of ``ssl_cert`` (unencrypted); required with ``ssl_cert``.
        extra_addresses: more addresses to listen on (default: 127.0.0.1 only).
        settings: more server settings (``-c name=value``), e.g. ``{"fsync": "on",
            "synchronous_commit": "on", "full_page_writes": "on"}`` for a production-like
            durability (benchmarks/fleet.py); they override the defaults above.

    Raises:
        PgServerUnavailable: no server binaries.
        ValueError: only one of ``ssl_cert`` and ``ssl_key`` given.
        RuntimeError: initdb or start failed (the message holds the server log's tail).
    """

    def __init__(self, bindir: Path | None = None, *, ssl_cert: Path | None = None,
                 ssl_key: Path | None = None, extra_addresses: tuple[str, ...] = (),
                 settings: dict[str, str] | None = None) -> None:
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("PgServer: give both ssl_cert and ssl_key, or neither")
        self.tls = ssl_cert is not None
        self.extra_addresses = tuple(extra_addresses)
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        self.bindir = bindir or find_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="soundscape-pg-"))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.running = False
        self._as_postgres = os.geteuid() == 0
        self._db_counter = 0
        self.sockdir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (self.base, self.sockdir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.datadir), "-U", ADMIN_USER, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                "--no-sync",
            )
            if self.tls:
                self._install_tls(Path(ssl_cert), Path(ssl_key))
            if self.extra_addresses:
                kind = "hostssl" if self.tls else "host"
                with open(self.datadir / "pg_hba.conf", "a") as hba:
                    for address in self.extra_addresses:
                        prefix = 128 if ":" in address else 32
                        hba.write(f"{kind}  all  all  {address}/{prefix}  scram-sha-256\n")
        except BaseException:
            self.cleanup()
            raise
        pwfile.unlink()

    def _install_tls(self, cert: Path, key: Path) -> None:
        """Copy the certificate and key into the cluster; pg_hba.conf: hostssl only."""
        tls = self.base / "tls"
        tls.mkdir()
        self.ssl_cert_file = tls / "server.crt"
        self.ssl_key_file = tls / "server.key"
        shutil.copyfile(cert, self.ssl_cert_file)
        shutil.copyfile(key, self.ssl_key_file)
        self.ssl_cert_file.chmod(0o644)
        self.ssl_key_file.chmod(0o600)  # the server refuses a key readable by others
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (tls, self.ssl_cert_file, self.ssl_key_file):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        hba = (
            "# tests/pg.py, TLS server: local socket trusted, TCP only over TLS\n"
            "local    all  all                trust\n"
            "hostssl  all  all  127.0.0.1/32  scram-sha-256\n"
            "hostssl  all  all  ::1/128       scram-sha-256\n"
        )
        (self.datadir / "pg_hba.conf").write_text(hba)

    def _run(self, exe: str, *args: str, timeout: float = 60) -> str:
        cmd = [str(self.bindir / exe), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.base, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log_tail = ""
            if self.logfile.exists():
                log_tail = "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log_tail}"
            )
        return proc.stdout

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it accepts connections."""
        if self.running:
            return
        listen = ",".join(("127.0.0.1", *self.extra_addresses))
        opts = f"-p {self.port} -k {self.sockdir} -c listen_addresses={listen}" + "".join(
            f" -c {name}={value}" for name, value in self.settings.items())
        if self.tls:
            opts += f" -c ssl=on -c ssl_cert_file={self.ssl_cert_file} -c ssl_key_file={self.ssl_key_file}"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", opts, "-w", "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        """Stop the server (``-m fast``: disconnect clients) and wait until it is down."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def dsn(self, dbname: str = "postgres", user: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> str:
        """A libpq key/value DSN for ``dbname`` over TCP on 127.0.0.1 (``sslmode=require`` on a TLS server)."""
        extra = {"sslmode": "require"} if self.tls else {}
        return make_conninfo(host="127.0.0.1", port=self.port, dbname=dbname, user=user, password=password, **extra)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh name if ``name`` is None) and return its DSN."""
        if name is None:
            self._db_counter += 1
            name = f"test_{os.getpid()}_{self._db_counter}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def cleanup(self) -> None:
        """Stop the server if running and delete the cluster directory."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ---------------------------------------------------------------------------------------------
# provisioning exactly as deploy/db.yml does

# deploy/db.yml's soundscape_db_device_insert_tables: every table the agent inserts into
DEVICE_INSERT_TABLES = ("windows", "detections", "heartbeats", "gaps", "clock_steps")


#: deploy/db.yml's soundscape_db_device_group_role default: the NOLOGIN role holding the devices' grants
DEVICE_GROUP_ROLE = "soundscape_device"


def grant_device_group(con: psycopg.Connection, db: str) -> None:
    """The device group role (created if the cluster has none) and its grants in database ``db``, as
    deploy/db.yml gives them: CONNECT and TEMPORARY revoked from PUBLIC, CONNECT to the group;
    USAGE on schema public; INSERT on :data:`DEVICE_INSERT_TABLES`; SELECT on schema_migrations;
    EXECUTE on the row-level security functions.
    ``con``: the database's owner or a superuser, autocommit."""
    group = sql.Identifier(DEVICE_GROUP_ROLE)
    con.execute(sql.SQL("DO $$ BEGIN CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                        "NOINHERIT; EXCEPTION WHEN duplicate_object THEN NULL; END $$").format(group))
    con.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), group))
    con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(group))
    con.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(
        sql.SQL(", ").join(map(sql.Identifier, DEVICE_INSERT_TABLES)), group))
    con.execute(sql.SQL("GRANT SELECT ON schema_migrations TO {}").format(group))
    _rls_execute(con, "GRANT", "TO", DEVICE_GROUP_ROLE)


def _rls_execute(con: psycopg.Connection, verb: str, word: str, role: str) -> None:
    """GRANT/REVOKE EXECUTE on the row-level security functions the schema has (0008, 0009)."""
    rows = con.execute("SELECT p.oid::regprocedure::text FROM pg_proc AS p WHERE p.pronamespace = "
                       "'public'::regnamespace AND p.proname IN ('soundscape_may_write', "
                       "'soundscape_may_write_window', 'soundscape_window_device')").fetchall()
    if rows:
        con.execute(sql.SQL("{} EXECUTE ON FUNCTION {} {} {}").format(
            sql.SQL(verb), sql.SQL(", ").join(sql.SQL(r[0]) for r in rows), sql.SQL(word), sql.Identifier(role)))


def provision_device(admin_dsn: str, role: str, password: str, device: str) -> None:
    """Create a device LOGIN role as deploy/db.yml does and map it to ``device``: the group role's
    grants (:func:`grant_device_group`), then :func:`provision_role`.

    Raises:
        psycopg.Error: the server refused (e.g. the role exists already).
    """
    db = conninfo_to_dict(admin_dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        grant_device_group(con, db)
        provision_role(con, role, password, device)


def provision_role(con: psycopg.Connection, role: str, password: str, device: str) -> None:
    """One device LOGIN role as deploy/db.yml makes it, in a database whose group grants are given
    (:func:`grant_device_group`): NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT, a
    member of the group (it holds the group's privileges; current_user stays the device's role),
    and one device_roles row (role, device). The group holds EXECUTE on the row-level security
    functions, so the device_roles trigger grants the role nothing of its own (agent/sql 0011).
    ``con``: the database's owner or a superuser, autocommit.

    Raises:
        psycopg.Error: the server refused (e.g. the role exists already).
    """
    con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                        " INHERIT").format(sql.Identifier(role), sql.Literal(password)))
    con.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(DEVICE_GROUP_ROLE), sql.Identifier(role)))
    con.execute("INSERT INTO device_roles (role_name, device) VALUES (%s, %s)", (role, device))
