"""The Ansible deployment (deploy/): lint, syntax, and real converges, each run twice.

- ``ansible-lint --profile production`` on deploy/ and ``ansible-playbook --syntax-check`` of
  site.yml and db.yml with the example inventory (vault included).
- db.yml against a real PostgreSQL (the session's throwaway server, tests/pg.py), twice: the
  second run reports ``changed=0``. Then the grants are tried for real as a device role: the
  agent's own batch insert works (and a replay inserts nothing), a batch in another device's
  name is refused by row-level security (device_roles maps each role to its device only);
  reading, updating, deleting, creating tables and temporary tables are refused, a role that
  db.yml did not create cannot connect, and ``soundscape-agent diagnose --check postgres``
  passes with the device's credentials.
- site.yml into a throwaway Debian Bookworm made by debootstrap (the Pi's OS minus the kernel:
  minbase plus python3, systemd and sudo, which Raspberry Pi OS Lite has), through Ansible's
  chroot connection, twice: the second run reports ``changed=0``. Then the chroot is inspected:
  user, venv and CLI, agent.toml (validated by the agent inside the chroot, model loaded),
  model files against the manifest, credential file, unit file and its enablement. With the
  credential placed where systemd's LoadCredential= would put it, the agent *inside the
  chroot* passes its PostgreSQL check against the provisioned database.
- the health gate on its own (tasks_from: health) in the chroot: passes on ok checks, fails on
  a warning unless the inventory accepts it, always fails on a failure, and names the hints.
- every example host's agent.toml renders and validates against the agent's strict schema.

systemd does not run in a chroot, so the converge uses ``soundscape_agent_manage_service:
false`` (no daemon-reload, start or restart); ``systemctl enable`` works offline and is tested.

Needs root (chroot, mount), ``debootstrap`` and network access to deb.debian.org and PyPI. The
debootstrap result is cached as a tarball in ``~/.cache/soundscape-agent/deploy-test``
(``$SOUNDSCAPE_DEPLOY_CACHE``); without it the test builds it (~1 min). CA certificates in the
host's /usr/local/share/ca-certificates (a TLS-intercepting proxy's) are copied into the
chroot, and pip there is pointed at the system bundle (``PIP_CERT``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tomllib
import uuid
from pathlib import Path

import pytest

from agent.analysis.hashing import sha256_file
from tests.deploykit import (
    BIN,
    DEPLOY,
    DEVICE,
    EXAMPLE,
    REPO,
    ROLE,
    ansible_env,
    changed_tasks,
    extract_tree,
    pip_environment,
    playbook,
    recap,
    remove_tree,
    require_pair,
    require_root_and_debootstrap,
    run,
    tail,
    write_yaml,
)
from tests.deploykit import device_inventory as kit_inventory

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def chroot(tmp_path_factory) -> Path:
    """A fresh Debian Bookworm root for this module, /proc mounted; unmounted and deleted after."""
    require_root_and_debootstrap("the deploy converge test (chroot, mount)")
    root = tmp_path_factory.mktemp("chroot") / "rootfs"
    try:
        extract_tree(root)
        # no service starts from package scripts inside the chroot
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        run(["mount", "-t", "proc", "proc", root / "proc"], timeout=60)
        yield root
    finally:
        remove_tree(root)


def in_chroot(root: Path, *cmd, user: str | None = None, timeout: float = 120, check: bool = True):
    prefix = ["sudo", "-u", user, "--"] if user else []
    return run(["chroot", root, *prefix, *cmd], timeout=timeout, check=check)


@pytest.fixture(scope="module")
def device_inventory(chroot, tmp_path_factory) -> Path:
    """The example inventory's vars, with DEVICE reached through the chroot connection."""
    return kit_inventory(tmp_path_factory.mktemp("inventory"), {
        "ansible_host": str(chroot), "ansible_connection": "community.general.chroot"})


@pytest.fixture(scope="module")
def device_overrides(model_export, db_overrides, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("device")
    return write_yaml(tmp / "overrides.yml", {
        **{k: v for k, v in db_overrides.items() if not k.startswith("soundscape_db_admin")},
        "soundscape_agent_model_dir": str(model_export),
        "soundscape_agent_model_allow_scaffold": True,
        "soundscape_agent_manage_service": False,  # no systemd in a chroot
        "soundscape_agent_build_dir": str(tmp / "build"),
        "soundscape_agent_pip_environment": pip_environment(),
    })


@pytest.fixture(scope="module")
def converged(device_inventory, device_overrides, vault_file, provisioned_db, tmp_path_factory):
    """site.yml run twice into the chroot: (first run, second run or None)."""
    tmp = tmp_path_factory.mktemp("site")
    args = ["site.yml", "-i", device_inventory, "--vault-password-file", vault_file, "-e", f"@{device_overrides}"]
    first = playbook(*args, log=tmp / "site-1.log", timeout=1200)
    second = playbook(*args, log=tmp / "site-2.log", timeout=900) if first.returncode == 0 else None
    return first, second


_require = require_pair


# ------------------------------------------------------------------------- lint and syntax


def test_ansible_lint_production_profile_is_clean(vault_file):
    proc = run([BIN / "ansible-lint", "--offline", "--profile", "production", "deploy/"], timeout=600, check=False,
               cwd=REPO, env=ansible_env(ANSIBLE_VAULT_PASSWORD_FILE=str(vault_file)))
    assert proc.returncode == 0, tail(proc)


@pytest.mark.parametrize("play", ["site.yml", "db.yml"])
def test_playbook_syntax_check(play, vault_file):
    proc = run([BIN / "ansible-playbook", "--syntax-check", play, "-i", EXAMPLE / "hosts.yml",
                "--vault-password-file", vault_file], timeout=120, check=False, cwd=DEPLOY, env=ansible_env())
    assert proc.returncode == 0, tail(proc)


def test_requirements_pin_every_core_dependency():
    """files/requirements.txt pins each [project] dependency exactly, inside its allowed range, with
    the package index's sha256 of its files; the role installs them with --require-hashes."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    text = (ROLE / "files" / "requirements.txt").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin, *hashes = line.split(" --hash=")
            req = Requirement(pin)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: not an exact pin"
            # the role installs with --require-hashes: every pin carries the index's sha256
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in hashes), \
                f"{pin}: no sha256 (--hash=sha256:...): run deploy/scripts/freeze_requirements.py"
            pins[canonicalize_name(req.name)] = spec.version
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, core):
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep} is not pinned: run deploy/scripts/freeze_requirements.py"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {dep}"
    assert "torch" not in pins and "soundscape-agent" not in pins
    assert "--require-hashes" in (ROLE / "tasks" / "venv.yml").read_text()


def test_every_example_host_gets_a_valid_config(vault_file, tmp_path):
    """agent.toml of each example host, rendered by the role's template, passes the agent's schema."""
    from agent.config import load_config

    play = write_yaml(tmp_path / "render.yml", [{
        "name": "Render agent.toml for every device",
        "hosts": "soundscape_agents",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [
            {"name": "Load the role's variables", "ansible.builtin.include_role": {
                "name": "soundscape_agent", "tasks_from": "validate", "public": True}},
            {"name": "Render", "ansible.builtin.template": {
                "src": str(ROLE / "templates" / "agent.toml.j2"),
                "dest": f"{tmp_path}/{{{{ inventory_hostname }}}}.toml", "mode": "0644"},
             "vars": {"soundscape_agent_model_name": "ast-int8"}},
        ],
    }])
    proc = run([BIN / "ansible-playbook", play, "-i", EXAMPLE / "hosts.yml", "--vault-password-file", vault_file,
                "-e", "soundscape_agent_model_dir=/nonexistent/ast-int8",
                "-e", "soundscape_agent_pg_ca_cert_src=/nonexistent/ca.crt"], timeout=300, check=False, cwd=DEPLOY,
               env=ansible_env(ANSIBLE_ROLES_PATH=str(DEPLOY / "roles")))
    assert proc.returncode == 0, tail(proc)
    configs = {h: load_config(tmp_path / f"{h}.toml") for h in ("pi-eth-01", "pi-eth-02", "pi-gsm-01")}
    raw = {h: tomllib.loads((tmp_path / f"{h}.toml").read_text()) for h in configs}
    for _host, cfg in configs.items():
        assert cfg.classifier.type == "onnx" and cfg.classifier.file_name == "model_quantized.onnx"
        assert str(cfg.classifier.model) == "/opt/soundscape-agent/models/ast-int8"
        assert cfg.capture.type == "alsa" and cfg.capture.device == "AudioMoth"
        assert str(cfg.store.path) == "/var/lib/soundscape-agent/queue.db"
        assert cfg.sync.password_file == "/run/credentials/soundscape-agent.service/soundscape-agent.pg-password"
        assert "password" not in cfg.sync.dsn
        assert "sslmode=verify-full" in cfg.sync.dsn and "dbname=soundscape" in cfg.sync.dsn
        assert "sslrootcert=/etc/soundscape-agent/pg-ca.crt" in cfg.sync.dsn
    assert configs["pi-eth-01"].agent.device_id == "audiomoth-eth-01"
    assert configs["pi-eth-01"].levels.calibration_offset_db == pytest.approx(-1.7)
    assert "user=sa_audiomoth_eth_01" in configs["pi-eth-01"].sync.dsn
    assert configs["pi-eth-01"].sync.link == "ethernet" and configs["pi-eth-01"].ops.heartbeat_interval_s == 300
    assert configs["pi-eth-02"].capture.pcm == "plughw:CARD=AudioMoth,DEV=0"
    # the sync interval: the link profile's unless the inventory sets one
    assert configs["pi-eth-02"].sync.interval_s == 300 and raw["pi-eth-02"]["sync"]["interval_s"] == 300
    assert configs["pi-eth-01"].sync.interval_s == 30 and "interval_s" not in raw["pi-eth-01"]["sync"]
    assert configs["pi-gsm-01"].sync.interval_s == 3600
    assert configs["pi-gsm-01"].sync.link == "gsm" and configs["pi-gsm-01"].ops.heartbeat_interval_s == 900
    assert "calibration_offset_db" not in raw["pi-gsm-01"].get("levels", {})  # undefined: key left out


# ------------------------------------------------------------------------------ PostgreSQL


def test_db_playbook_converges_then_changes_nothing(provisioned_db):
    first, second = _require(provisioned_db)
    assert recap(first)["localhost"]["changed"] > 0
    assert recap(second)["localhost"]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert recap(second)["localhost"]["failed"] == 0


def test_device_role_has_exactly_the_agent_privileges(provisioned_db, pg_server, vault, tmp_path):
    import psycopg
    from psycopg import errors

    from agent.sync import known_schema_version, send_batch
    from tests.factories import make_results

    _require(provisioned_db)
    password = vault["vault_soundscape_pg_passwords"][DEVICE]
    device_dsn = pg_server.dsn("soundscape", user="sa_audiomoth_eth_01", password=password)

    async def deliver(results) -> int:
        async with await psycopg.AsyncConnection.connect(device_dsn) as conn:
            n = await send_batch(conn, results, str(uuid.uuid4()))
            await conn.commit()
            return n

    batch = make_results(3, device="audiomoth-eth-01", stream=f"deploy-{uuid.uuid4().hex[:8]}")
    assert asyncio.run(deliver(batch)) == 3
    assert asyncio.run(deliver(batch)) == 0  # a replayed batch: ON CONFLICT DO NOTHING with INSERT only

    # Row-level security: db.yml mapped each role to its own device id, and to no other.
    with psycopg.connect(pg_server.dsn("soundscape")) as admin:
        mapped = set(admin.execute("SELECT role_name, device FROM device_roles").fetchall())
    assert mapped == {("sa_audiomoth_eth_01", "audiomoth-eth-01"), ("sa_audiomoth_eth_02", "audiomoth-eth-02"),
                      ("sa_audiomoth_gsm_01", "audiomoth-gsm-01")}
    foreign = make_results(1, device="audiomoth-eth-02", stream=f"deploy-{uuid.uuid4().hex[:8]}")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        asyncio.run(deliver(foreign))

    denied = [
        "SELECT count(*) FROM windows",
        "SELECT count(*) FROM detections",
        "SELECT count(*) FROM heartbeats",
        "UPDATE windows SET status = 'x'",
        "DELETE FROM detections",
        "CREATE TABLE intruder (x int)",
        "CREATE TEMP TABLE scratch (x int)",
        "INSERT INTO schema_migrations (version) VALUES (999)",
    ]
    with psycopg.connect(device_dsn, autocommit=True) as conn:
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        assert version == known_schema_version()
        for sql in denied:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql)

    # PUBLIC lost CONNECT: a login role db.yml did not provision cannot even connect.
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS deploy_outsider")
        admin.execute("CREATE ROLE deploy_outsider LOGIN PASSWORD 'outsider-pw'")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(pg_server.dsn("soundscape", user="deploy_outsider", password="outsider-pw")).close()

    # The agent's own probe (connect, schema version, INSERT into heartbeats rolled back), with
    # the DSN the role renders (no password) and the password from a 0600 file.
    secret = tmp_path / "pg-password"
    secret.write_text(password)
    secret.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname=soundscape user=sa_audiomoth_eth_01 sslmode=disable"
    cfg.write_text(f'[agent]\ndevice_id = "audiomoth-eth-01"\n[sync]\ndsn = "{dsn}"\npassword_file = "{secret}"\n')
    proc = run([BIN / "soundscape-agent", "diagnose", "--json", "--check", "postgres", "--config", cfg],
               timeout=120, check=False)
    assert proc.returncode == 0, tail(proc)
    report = json.loads(proc.stdout)
    assert [c["status"] for c in report["checks"] if c["name"] == "postgres"] == ["ok"], report


def _device_acl_entries(con) -> int:
    """ACL entries naming a mapped device role on the database, schema public, its relations and
    functions."""
    return con.execute("""
        SELECT count(*) FROM (
            SELECT (aclexplode(relacl)).grantee FROM pg_class
             WHERE relnamespace = 'public'::regnamespace AND relacl IS NOT NULL
            UNION ALL SELECT (aclexplode(datacl)).grantee FROM pg_database WHERE datname = current_database()
            UNION ALL SELECT (aclexplode(nspacl)).grantee FROM pg_namespace WHERE nspname = 'public'
            UNION ALL SELECT (aclexplode(proacl)).grantee FROM pg_proc
             WHERE pronamespace = 'public'::regnamespace AND proacl IS NOT NULL) AS a
        JOIN pg_roles AS r ON r.oid = a.grantee
        JOIN device_roles AS d ON d.role_name = r.rolname""").fetchone()[0]


def test_device_privileges_are_one_group_grant_and_an_older_layout_moves_over(
        provisioned_db, pg_server, db_overrides, vault_file, vault, tmp_path):
    """The device roles hold their privileges through the group role soundscape_device: one ACL
    entry per object whatever the fleet's size (one per device role stopped a fleet of a few
    thousand: an object's ACL lives in its catalogue row, which cannot grow past a page; on the
    row-level security functions, checked for every row inserted, it doubled a batch's CPU at
    10,000 roles). A database
    an older db.yml provisioned (grants to each device role) is moved over by the next run, and its
    devices deliver throughout."""
    import psycopg

    from agent.sync import send_batch
    from tests.factories import make_results

    _require(provisioned_db)
    roles = ["sa_audiomoth_eth_01", "sa_audiomoth_eth_02", "sa_audiomoth_gsm_01"]
    with psycopg.connect(pg_server.dsn("soundscape"), autocommit=True) as admin:
        assert _device_acl_entries(admin) == 0
        members = admin.execute(
            "SELECT r.rolname, r.rolinherit, r.rolcanlogin FROM pg_auth_members AS m"
            " JOIN pg_roles AS g ON g.oid = m.roleid JOIN pg_roles AS r ON r.oid = m.member"
            " WHERE g.rolname = 'soundscape_device' ORDER BY 1").fetchall()
        assert members == [(r, True, True) for r in roles]
        group = admin.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'soundscape_device'").fetchone()
        assert group == (False,)
        # what an older db.yml did: every grant to the device role itself
        admin.execute("GRANT CONNECT ON DATABASE soundscape TO sa_audiomoth_eth_01")
        admin.execute("GRANT USAGE ON SCHEMA public TO sa_audiomoth_eth_01")
        admin.execute("GRANT INSERT ON windows, detections, heartbeats, gaps, clock_steps TO sa_audiomoth_eth_01")
        admin.execute("GRANT SELECT ON schema_migrations TO sa_audiomoth_eth_01")
        admin.execute("GRANT EXECUTE ON FUNCTION soundscape_may_write(name, text), soundscape_may_write_window("
                      "name, text), soundscape_window_device(name, text) TO sa_audiomoth_eth_01")
        assert _device_acl_entries(admin) == 11

    extra = write_yaml(tmp_path / "overrides.yml", db_overrides)
    proc = playbook("db.yml", "-i", EXAMPLE / "hosts.yml", "--vault-password-file", vault_file, "-e", f"@{extra}",
                    log=tmp_path / "db.log", timeout=600)
    assert proc.returncode == 0, tail(proc)
    with psycopg.connect(pg_server.dsn("soundscape"), autocommit=True) as admin:
        assert _device_acl_entries(admin) == 0

    async def deliver() -> int:
        dsn = pg_server.dsn("soundscape", user=roles[0], password=vault["vault_soundscape_pg_passwords"][DEVICE])
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            batch = make_results(2, device="audiomoth-eth-01", stream=f"group-{uuid.uuid4().hex[:8]}")
            n = await send_batch(conn, batch, str(uuid.uuid4()))
            await conn.commit()
            return n

    assert asyncio.run(deliver()) == 2


# ------------------------------------------------------------------------- the device (chroot)


def test_role_converges_in_a_chroot_then_changes_nothing(converged):
    first, second = _require(converged)
    assert recap(first)[DEVICE]["changed"] > 0 and recap(first)[DEVICE]["failed"] == 0
    assert recap(second)[DEVICE]["changed"] == 0, f"changed on the second run: {changed_tasks(second)}"
    assert recap(second)[DEVICE]["failed"] == 0 and recap(second)[DEVICE]["unreachable"] == 0


def test_chroot_holds_the_installed_agent(converged, chroot, model_export, vault):
    _require(converged)
    # the service user, in audio
    ident = in_chroot(chroot, "id", "soundscape").stdout
    assert re.search(r"groups=.*\baudio\b", ident) and "gid=" in ident and "(soundscape)" in ident, ident
    shell = in_chroot(chroot, "getent", "passwd", "soundscape").stdout.strip().split(":")[-1]
    assert shell == "/usr/sbin/nologin"

    # the console script of the venv, on the chroot's own Python
    helped = in_chroot(chroot, "/opt/soundscape-agent/current/venv/bin/soundscape-agent", "--help")
    assert "diagnose" in helped.stdout
    in_chroot(chroot, "/opt/soundscape-agent/current/venv/bin/python", "-m", "pip", "check")

    # agent.toml: the agent validates it and loads the model from it, inside the chroot
    diag = in_chroot(chroot, "/opt/soundscape-agent/current/venv/bin/soundscape-agent", "diagnose", "--json",
                     "--check", "config", "--check", "model", "--config", "/etc/soundscape-agent/agent.toml",
                     user="soundscape", check=False, timeout=300)
    assert diag.returncode == 0, tail(diag)
    assert {c["name"]: c["status"] for c in json.loads(diag.stdout)["checks"]} == {"config": "ok", "model": "ok"}
    cfg = tomllib.loads((chroot / "etc/soundscape-agent/agent.toml").read_text())
    assert cfg["agent"]["device_id"] == "audiomoth-eth-01"
    assert cfg["levels"]["calibration_offset_db"] == pytest.approx(-1.7)
    model_dir = cfg["classifier"]["model"]
    assert re.fullmatch(rf"/opt/soundscape-agent/models/{re.escape(model_export.name)}-[0-9a-f]{{12}}", model_dir), cfg
    assert cfg["classifier"] == {"type": "onnx", "model": model_dir, "file_name": "model_quantized.onnx"}
    assert cfg["sync"]["link"] == "ethernet" and "password" not in cfg["sync"]["dsn"]
    assert cfg["sync"]["password_file"] == "/run/credentials/soundscape-agent.service/soundscape-agent.pg-password"
    assert cfg["ops"]["heartbeat_interval_s"] == 300

    # the release: current -> releases/<id>, its venv a link to venvs/<id>, agent.toml linked from /etc
    current = chroot / "opt/soundscape-agent/current"
    assert current.is_symlink() and re.fullmatch(r"releases/[0-9a-f]{12}", os.readlink(current))
    release = json.loads((current / "RELEASE.json").read_text())
    assert release["model"] == Path(model_dir).name and (current / ".complete").is_file()
    assert re.fullmatch(r"\.\./\.\./venvs/[0-9a-f]{12}", os.readlink(current / "venv"))
    assert (chroot / "etc/soundscape-agent/agent.toml").is_symlink()
    assert not (chroot / "opt/soundscape-agent/previous").exists()  # a first install has no previous release

    # the model: every shipped file matches the manifest; the unused fp32 ONNX stayed home
    manifest = json.loads((model_export / "manifest.json").read_text())
    dest = chroot / model_dir.lstrip("/")
    shipped = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "model_quantized.onnx" in shipped and "model.onnx" not in shipped and "manifest.json" in shipped
    for name in shipped:
        if name != "manifest.json":
            assert sha256_file(dest / name) == manifest["files"][name]["sha256"], name
    assert (dest / "manifest.json").read_bytes() == (model_export / "manifest.json").read_bytes()

    # the credential: root-only, exactly the vault's password
    cred = chroot / "etc/credstore/soundscape-agent.pg-password"
    st = cred.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600)
    assert (cred.parent.stat().st_mode & 0o7777) == 0o700
    assert cred.read_text() == vault["vault_soundscape_pg_passwords"][DEVICE]

    # the unit: the repository's file, enabled for boot
    unit = chroot / "etc/systemd/system/soundscape-agent.service"
    assert unit.read_bytes() == (REPO / "systemd/soundscape-agent.service").read_bytes()
    wants = chroot / "etc/systemd/system/multi-user.target.wants/soundscape-agent.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/soundscape-agent.service"

    # code and config belong to root: the service can read them, not change them
    for path in ("opt/soundscape-agent/current/venv/bin/soundscape-agent", "opt/soundscape-agent/current/agent.toml",
                 f"{model_dir.lstrip('/')}/model_quantized.onnx"):
        assert (chroot / path).stat().st_uid == 0, path


def test_agent_in_the_chroot_reaches_the_provisioned_database(converged, chroot):
    """The credential where LoadCredential= puts it; the device's own diagnose against the server."""
    _require(converged)
    creds = chroot / "run/credentials/soundscape-agent.service"
    creds.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chroot / "etc/credstore/soundscape-agent.pg-password", creds / "soundscape-agent.pg-password")
    uid = int(in_chroot(chroot, "id", "-u", "soundscape").stdout)
    for path, mode in ((creds, 0o500), (creds / "soundscape-agent.pg-password", 0o400)):
        os.chown(path, uid, 0)
        path.chmod(mode)
    try:
        proc = in_chroot(chroot, "/opt/soundscape-agent/current/venv/bin/soundscape-agent", "diagnose", "--json",
                         "--check", "postgres", "--config", "/etc/soundscape-agent/agent.toml",
                         user="soundscape", check=False, timeout=120)
        assert proc.returncode == 0, tail(proc)
        (check,) = [c for c in json.loads(proc.stdout)["checks"] if c["name"] == "postgres"]
        assert check["status"] == "ok" and check["value"]["insert"] is True, check
    finally:
        shutil.rmtree(chroot / "run/credentials", ignore_errors=True)


@pytest.mark.parametrize(("checks", "allow_warn", "passes", "expected", "extra"), [
    (["config", "model", "disk"], [], True, "is healthy (diagnose status ok)", {}),
    # no queue yet in the chroot: sqlite warns
    (["config", "sqlite"], [], False, "[WARN] sqlite", {}),
    (["config", "sqlite"], ["sqlite"], True, "accepted warnings: sqlite", {}),
    # no microphone in the chroot: capture fails, and a failure is never accepted
    (["capture", "sqlite"], ["capture", "sqlite"], False, "[FAIL] capture", {}),
    # healthy checks, but the unit is not active (no systemd runs in the chroot)
    (["config", "model"], [], False, "The service is not running (ActiveState=",
     {"soundscape_agent_manage_service": True}),
], ids=["ok", "warning", "accepted-warning", "failure", "service-not-running"])
def test_health_gate(converged, device_inventory, device_overrides, vault_file, tmp_path,
                     checks, allow_warn, passes, expected, extra):
    _require(converged)
    play = write_yaml(tmp_path / "gate.yml", [{
        "name": "Health gate", "hosts": "soundscape_agents", "become": True, "gather_facts": False,
        "tasks": [{"name": "Gate", "ansible.builtin.include_role": {"name": "soundscape_agent",
                                                                     "tasks_from": "health"}}],
    }])
    gate = write_yaml(tmp_path / "gate-vars.yml", {
        "soundscape_agent_health_gate": True, "soundscape_agent_health_checks": checks,
        "soundscape_agent_health_allow_warn": allow_warn,
        "soundscape_agent_health_retries": 1, "soundscape_agent_health_delay_s": 1, **extra,
    })
    proc = run([BIN / "ansible-playbook", play, "-i", device_inventory, "--vault-password-file", vault_file,
                "-e", f"@{device_overrides}", "-e", f"@{gate}"], timeout=300, check=False, cwd=DEPLOY,
               env=ansible_env(ANSIBLE_ROLES_PATH=str(DEPLOY / "roles")))
    assert (proc.returncode == 0) == passes, tail(proc)
    assert expected in proc.stdout, tail(proc)
    if not passes:
        assert "is not healthy" in proc.stdout, tail(proc)
    if expected.startswith(("[WARN]", "[FAIL]")):
        assert "hint: " in proc.stdout, tail(proc)
