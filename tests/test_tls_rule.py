"""``[sync] tls`` (issue 14, item 8): a PostgreSQL host that is not local needs verified TLS
(sslmode verify-full or verify-ca) unless the config says ``tls = "off"``, checked when the
config is loaded; and the certificate expiry ``diagnose`` reads from the server's DER
certificate. No server here: tests/test_faults_security.py runs the rule, every command that
takes a DSN and diagnose's TLS report against real servers, local and non-local."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from agent.config import SyncConfig, load_config, parse_config, tls_refusal
from agent.errors import EX_CONFIG, ConfigError
from agent.sync import certificate_not_after

FIXES = ('put sslmode=verify-full sslrootcert=<CA file> in the DSN, or set [sync] tls = "off" to connect '
         "without verified TLS")


@pytest.fixture(autouse=True)
def _no_libpq_environment(monkeypatch):
    for name in ("PGHOST", "PGHOSTADDR", "PGSSLMODE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)


def with_sslmode(dsn: str, sslmode: str) -> str:
    if not sslmode:
        return dsn
    if dsn.startswith("postgresql://"):
        return dsn + ("&" if "?" in dsn else "?") + f"sslmode={sslmode}"
    return f"{dsn} sslmode={sslmode}".strip()


LOCAL = [
    "",  # libpq's default: the Unix socket
    "dbname=soundscape user=agent",
    "host=/var/run/postgresql",
    "host=@pg-abstract-socket",
    "host=localhost",
    "host=LocalHost.",
    "host=127.0.0.1",
    "host=127.3.2.1",
    "host=::1",
    "host=::ffff:127.0.0.1",
    "host=localhost,/tmp,127.0.0.1",
    "host=db.example.org hostaddr=127.0.0.1",  # libpq connects to hostaddr: a tunnel's local end
    "postgresql://agent@[::1]:5432/soundscape",
    "postgresql:///soundscape?host=/run/postgresql",
]


@pytest.mark.parametrize("sslmode", ["", "disable", "allow", "prefer", "require", "verify-full"])
@pytest.mark.parametrize("dsn", LOCAL)
def test_a_local_host_takes_any_sslmode(dsn, sslmode):
    full = with_sslmode(dsn, sslmode)
    assert tls_refusal(full, {}) is None
    assert SyncConfig(dsn=full).tls == "verify"


@pytest.mark.parametrize(("dsn", "host", "found"), [
    ("host=db.example.org", "db.example.org", "sslmode=prefer (libpq's default)"),
    ("host=db.example.org port=5432 dbname=soundscape user=agent sslmode=prefer", "db.example.org", "sslmode=prefer"),
    ("host=192.0.2.10 sslmode=require", "192.0.2.10", "sslmode=require"),
    ("host=2001:db8::5 sslmode=disable", "2001:db8::5", "sslmode=disable"),
    ("host=db.example.org sslmode=allow", "db.example.org", "sslmode=allow"),
    ("host=localhost,db.example.org sslmode=require", "db.example.org", "sslmode=require"),
    ("host=localhost hostaddr=192.0.2.10 sslmode=disable", "localhost (192.0.2.10)", "sslmode=disable"),
    ("hostaddr=192.0.2.10", "192.0.2.10", "sslmode=prefer (libpq's default)"),
    ("host=localhost.example.org", "localhost.example.org", "sslmode=prefer (libpq's default)"),
    ("postgresql://agent:s3cret-pw@db.example.org:5432/soundscape?sslmode=require", "db.example.org",
     "sslmode=require"),
])
def test_a_non_local_host_without_verification_is_refused_naming_host_sslmode_and_both_fixes(dsn, host, found):
    message = tls_refusal(dsn, {})
    assert message == f"[sync] dsn: host {host} is not local and {found} does not verify the server: {FIXES}"
    with pytest.raises(ConfigError) as err:
        parse_config({"sync": {"dsn": dsn}}, "agent.toml")
    assert err.value.exit_code == EX_CONFIG == 78
    assert f"  sync: Value error, {message}" in str(err.value).splitlines()
    assert "s3cret-pw" not in str(err.value)


@pytest.mark.parametrize("sslmode", ["verify-full", "verify-ca"])
@pytest.mark.parametrize("dsn", ["host=db.example.org", "host=192.0.2.10,db.example.org port=5432,5433",
                                 "postgresql://agent@db.example.org/soundscape"])
def test_a_non_local_host_with_verification_is_accepted(dsn, sslmode):
    full = with_sslmode(dsn, sslmode) + ("" if dsn.startswith("postgresql") else " sslrootcert=/etc/ca.crt")
    assert tls_refusal(full, {}) is None
    assert SyncConfig(dsn=full).dsn == full


@pytest.mark.parametrize("sslmode", ["", "disable", "prefer", "require"])
def test_tls_off_accepts_any_sslmode_for_any_host(sslmode):
    dsn = with_sslmode("host=db.example.org", sslmode)
    assert SyncConfig(dsn=dsn, tls="off").tls == "off"
    cfg = parse_config({"sync": {"dsn": dsn, "tls": "off"}})
    assert cfg.sync.dsn == dsn
    with pytest.raises(ConfigError, match="sync.tls: Input should be 'verify' or 'off'"):
        parse_config({"sync": {"dsn": dsn, "tls": "no"}})


def test_the_environment_libpq_reads_counts():
    """libpq takes what the DSN lacks from PGHOST, PGHOSTADDR and PGSSLMODE; the DSN's own keys win."""
    assert "host db.example.org is not local" in tls_refusal("dbname=soundscape", {"PGHOST": "db.example.org"})
    assert "host localhost (192.0.2.1) is not local" in tls_refusal("host=localhost", {"PGHOSTADDR": "192.0.2.1"})
    assert tls_refusal("dbname=soundscape", {"PGHOST": "/run/postgresql"}) is None
    assert tls_refusal("host=db.example.org", {"PGSSLMODE": "verify-full"}) is None
    assert tls_refusal("host=db.example.org sslmode=verify-ca", {"PGSSLMODE": "disable"}) is None
    assert "sslmode=require (from PGSSLMODE) does not verify" in tls_refusal("host=db.example.org",
                                                                            {"PGSSLMODE": "require"})
    assert "sslmode=disable does not verify" in tls_refusal("host=db.example.org sslmode=disable",
                                                            {"PGSSLMODE": "verify-full"})


def test_the_config_is_checked_in_the_environment_it_is_loaded_in(monkeypatch, tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[sync]\ndsn = "host=db.example.org dbname=soundscape user=agent"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "sslmode=prefer (libpq's default) does not verify" in str(err.value) and err.value.exit_code == 78
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert load_config(path).sync.tls == "verify"
    monkeypatch.setenv("PGSSLMODE", "require")
    with pytest.raises(ValidationError, match=r"sslmode=require \(from PGSSLMODE\)"):
        SyncConfig(dsn="host=db.example.org")


def test_a_service_file_is_not_read_so_what_it_may_set_counts_as_remote_and_unverified():
    assert tls_refusal("service=central", {}) == (
        '[sync] dsn: host (not in the DSN) (service "central" may set hostaddr) is not local and sslmode (not in '
        f'the DSN; service "central" may set it) does not verify the server: {FIXES}')
    assert 'host db.example.org (service "central" may set hostaddr) is not local' in tls_refusal(
        "host=db.example.org", {"PGSERVICE": "central"})
    assert 'host 127.0.0.1 (service "central" may set hostaddr) is not local' in tls_refusal(
        "service=central host=127.0.0.1", {})
    assert tls_refusal("service=central host=db.example.org sslmode=verify-full", {}) is None
    assert tls_refusal("service=central host=db.example.org hostaddr=127.0.0.1", {}) is None


def test_the_refusal_is_never_cut_short_and_unparsable_dsns_are_left_to_the_connection():
    with pytest.raises(ConfigError) as err:
        parse_config({"sync": {"dsn": f"host={'a' * 250}.example.org sslmode={'x' * 200}"}})
    assert FIXES in str(err.value)  # the config loader cuts messages at 300 characters
    assert tls_refusal("host='unterminated", {}) is None
    assert SyncConfig(dsn="").tls == "verify"  # no DSN: nothing to check


def _certificate(not_after: dt.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.example.org")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("db.example.org")]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("not_after", [
    dt.datetime(2031, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc),  # UTCTime
    dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),  # UTCTime, last year of the 20xx window
    dt.datetime(2051, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),  # GeneralizedTime (RFC 5280: from 2050)
])
def test_the_certificate_expiry_is_read_from_der(not_after):
    assert certificate_not_after(_certificate(not_after)) == not_after


def test_a_damaged_certificate_is_a_value_error():
    der = _certificate(dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc))
    for bad in (b"", b"\x30", der[:40], b"\x04\x03abc"):
        with pytest.raises(ValueError):
            certificate_not_after(bad)
