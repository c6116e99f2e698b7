"""deploy/db.yml's parts for schema 10 (agent/sql/0010_partitions.sql) against the suite's real
PostgreSQL (tests/pg.py), no mocks:

- the retention: ``soundscape_db_retention_days`` becomes ``soundscape_partition_policy.keep``
  (days; null and tables left out: forever), only the tables whose value changes report
  ``changed``, a second run reports ``changed=0``, and a third run that leaves a table out puts
  it back to forever (its one change);
- the second play, for a database host that is this machine (``ansible_connection: local``):
  it renders ``soundscape-db-maintain.service`` and ``.timer`` into a temporary directory
  (``soundscape_db_maintain_unit_dir``) and, with ``soundscape_db_maintain_enable: false``,
  neither reloads systemd nor enables or starts anything: no systemctl runs on this machine.
  The units pass ``systemd-analyze verify`` and stay within a ``systemd-analyze security``
  exposure bound; the service's ExecStart command line, run with the test server's address and
  its superuser ``admin`` in place of peer authentication as ``postgres``, calls
  ``soundscape_maintain()`` as the owner (SET ROLE): the partitions it creates belong to the
  owner, not to the superuser that connected.

Needs agent/sql/0010_partitions.sql (schema 10), ``systemd-analyze`` (systemd 252 here) and
``psql`` at the path the unit names (/usr/bin/psql). systemd is never started or asked
anything: ``verify`` and ``security --offline`` read the files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.deploykit import EXAMPLE, REPO, changed_tasks, playbook, recap, tail, write_yaml
from tests.pg import ADMIN_PASSWORD, ADMIN_USER

pytestmark = pytest.mark.deploy

DB = "soundscape_maint"
OWNER = "soundscape_owner"  # the example inventory's soundscape_db_owner
DEVICE = ("maint-a", "maint-a-secret-pw")
DB_HOST = "db-maint"
UNITS = ("soundscape-db-maintain.service", "soundscape-db-maintain.timer")
PARTITIONED = ("clock_steps", "detections", "gaps", "heartbeats", "windows")
#: what the inventory asks for: every other table forever (null, or not named)
RETENTION = {"detections": 30, "heartbeats": 90, "gaps": None}
RETENTION_TASK = "Set how long each table keeps its partitions (soundscape_partition_policy.keep)"
MIGRATION = REPO / "agent" / "sql" / "0010_partitions.sql"
#: the exposure systemd-analyze security gives the service at most (measured: 0.2 with systemd 252)
EXPOSURE_MAX = 0.5


def require_schema_10() -> None:
    if not MIGRATION.is_file():
        pytest.fail(f"{MIGRATION.relative_to(REPO)} is not in the tree: the partition policy and "
                    "soundscape_maintain() come with it", pytrace=False)


def require_tools() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (Debian: apt-get install -y systemd)", pytrace=False)
    if not Path("/usr/bin/psql").is_file():
        pytest.fail("/usr/bin/psql is not installed (Debian: apt-get install -y postgresql-client)", pytrace=False)


def unit_settings(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every setting of a unit file, in order (no comments, no sections)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def item_states(proc: subprocess.CompletedProcess, task: str) -> dict[str, str]:
    """The per-item result of ``task`` in a playbook's output: ``{item label: ok|changed|skipping}``."""
    states, current = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("TASK ["):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif current == task:
            m = re.match(r"(ok|changed|skipping): \[[^\]]+\] => \(item=(.+)\)$", line)
            if m:
                states[m[2]] = m[1]
    return states


@pytest.fixture(scope="module")
def deployed(pg_server, vault_file, db_overrides, tmp_path_factory):
    """db.yml run twice with a device and a database host (this machine, units into a temporary
    directory, nothing enabled): (first run, second run, unit directory, run(retention))."""
    require_schema_10()
    tmp = tmp_path_factory.mktemp("maintain")
    units = tmp / "units"
    units.mkdir()
    inv = tmp / "inventory"
    shutil.copytree(EXAMPLE / "group_vars", inv / "group_vars")
    write_yaml(inv / "hosts.yml", {
        "soundscape_agents": {"hosts": {DEVICE[0]: {
            "soundscape_agent_device_id": DEVICE[0], "soundscape_agent_pg_password": DEVICE[1]}}},
        "soundscape_db": {"hosts": {DB_HOST: {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "ansible_become": False,
            "soundscape_db_maintain_unit_dir": str(units),
            "soundscape_db_maintain_enable": False}}},
    })

    def run(retention: dict[str, int | None]) -> subprocess.CompletedProcess:
        n = len(list(tmp.glob("db-*.log"))) + 1
        over = write_yaml(tmp / f"overrides-{n}.yml", {**db_overrides, "soundscape_db_name": DB,
                                                        "soundscape_db_retention_days": retention})
        proc = playbook("db.yml", "-i", inv / "hosts.yml", "--vault-password-file", vault_file, "-e", f"@{over}",
                        log=tmp / f"db-{n}.log", timeout=300)
        assert proc.returncode == 0, tail(proc)
        return proc

    first = run(RETENTION)
    second = run(RETENTION)
    return first, second, units, run


def policy_keep(pg_server) -> dict[str, float | None]:
    with psycopg.connect(pg_server.dsn(DB)) as admin:
        return dict(admin.execute("SELECT table_name, extract(epoch FROM keep) / 86400"
                                  " FROM soundscape_partition_policy").fetchall())


def test_retention_is_set_once_and_the_units_rendered_without_touching_systemd(deployed, pg_server):
    first, second, units, run = deployed
    for host in ("localhost", DB_HOST):
        assert recap(first)[host]["failed"] == 0
        assert recap(second)[host]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    # only the tables whose keep differs from the inventory's change, once
    assert item_states(first, RETENTION_TASK) == {
        "clock_steps: forever": "ok", "detections: 30 days": "changed", "gaps: forever": "ok",
        "heartbeats: 90 days": "changed", "windows: forever": "ok"}, tail(first)
    assert set(item_states(second, RETENTION_TASK).values()) == {"ok"}
    assert policy_keep(pg_server) == {"windows": None, "detections": 30, "heartbeats": 90, "gaps": None,
                                      "clock_steps": None}

    # the database host: both units in the unit directory, mode 0644; the timer task skipped
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    assert all((units / u).stat().st_mode & 0o777 == 0o644 for u in UNITS)
    assert recap(first)[DB_HOST]["changed"] == 1 and recap(first)[DB_HOST]["skipped"] == 1, tail(first)
    assert "TASK [Enable and start the timer]" in first.stdout
    assert not any(Path("/etc/systemd/system", u).exists() for u in UNITS)

    # heartbeats left out: back to forever, the one change of the run
    third = run({"detections": 30})
    assert changed_tasks(third) == [RETENTION_TASK], changed_tasks(third)
    assert [k for k, v in item_states(third, RETENTION_TASK).items() if v == "changed"] == ["heartbeats: forever"]
    assert policy_keep(pg_server) == {"windows": None, "detections": 30, "heartbeats": None, "gaps": None,
                                      "clock_steps": None}


def test_units_pass_systemd_analyze_verify_and_security(deployed):
    require_tools()
    units = deployed[2]
    service, timer = (units / u for u in UNITS)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(service), str(timer)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(service)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m[1]) <= EXPOSURE_MAX, proc.stdout

    settings = unit_settings(service)
    for expected in [("Type", "oneshot"), ("User", "postgres"), ("ProtectSystem", "strict"),
                     ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("PrivateNetwork", "yes"),
                     ("RestrictAddressFamilies", "AF_UNIX"), ("KillSignal", "SIGINT")]:
        assert expected in settings, expected
    # the server's shared memory is the postgres user's too: never removed when the unit stops
    assert "RemoveIPC" not in dict(settings)
    timer_settings = unit_settings(timer)
    for expected in [("OnCalendar", "hourly"), ("Persistent", "true"), ("WantedBy", "timers.target")]:
        assert expected in timer_settings, expected
    assert dict(timer_settings).get("RandomizedDelaySec")


def test_exec_start_calls_soundscape_maintain_as_the_owner(deployed, pg_server):
    """The unit's command line, as written, with the test server in place of the local socket
    and its superuser in place of peer authentication as postgres."""
    require_tools()
    units = deployed[2]
    settings = unit_settings(units / UNITS[0])
    argv = shlex.split(dict(settings)["ExecStart"])
    assert argv[:4] == ["/usr/bin/psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1"]
    assert argv[4:] == ["-d", DB, "-c", f"SET ROLE {OWNER}", "-c", "SELECT * FROM soundscape_maintain()"]
    unit_env = dict(kv.split("=", 1) for key, value in settings if key == "Environment" for kv in shlex.split(value))
    assert unit_env["PGHOST"] == "/var/run/postgresql" and unit_env["PGOPTIONS"].startswith("-c lock_timeout=")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(unit_env, PGHOST="127.0.0.1", PGPORT=str(pg_server.port), PGUSER=ADMIN_USER,
               PGPASSWORD=ADMIN_PASSWORD, PGSSLMODE="disable")

    # two more days ahead for heartbeats: this run creates two partitions
    with psycopg.connect(pg_server.dsn(DB), autocommit=True) as admin:
        admin.execute("UPDATE soundscape_partition_policy SET ahead_days = ahead_days + 2"
                      " WHERE table_name = 'heartbeats'")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^\s*action\s*\|\s*relation\s*\|\s*detail\s*$", proc.stdout, re.M), proc.stdout
    created = re.findall(r"^\s*created\s*\|\s*(heartbeats_p\d{8})\s*\|", proc.stdout, re.M)
    assert len(created) >= 2, proc.stdout  # 3 when a UTC midnight passed since db init
    assert re.search(r"^\s*rolled up\s*\|\s*rollup_hourly\s*\|", proc.stdout, re.M), proc.stdout

    with psycopg.connect(pg_server.dsn(DB)) as admin:
        owners = dict(admin.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_inherits AS i"
            " JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = ANY (%s::regclass[])",
            ([f"public.{t}" for t in PARTITIONED],)).fetchall())
    assert set(created) <= set(owners)
    assert {name: who for name, who in owners.items() if who != OWNER} == {}
