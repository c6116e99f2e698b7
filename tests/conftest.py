"""Shared pytest fixtures. One clearly marked section per area; add new sections below."""

from __future__ import annotations

from pathlib import Path

import pytest

# The deployment tests' session fixtures (vault, model export, db.yml run): tests/deploykit.py.
pytest_plugins = ["tests.deploykit"]

# =============================================================================================
# PostgreSQL: a real throwaway server (tests/pg.py), one per test session.
# =============================================================================================
from tests.faultkit import running_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    """A running :class:`pg.PgServer` for the whole session; FAILS (never skips) without binaries."""
    yield from running_server()


@pytest.fixture
def pg_dsn(pg_server):
    """DSN (admin role, password auth over TCP) of a fresh, EMPTY database for this test."""
    return pg_server.create_database()


@pytest.fixture
def migrated_dsn(pg_dsn):
    """DSN of a fresh database with the agent's schema applied (``agent.sync.migrate``)."""
    from agent.sync import migrate

    migrate(pg_dsn)
    return pg_dsn


# =============================================================================================
# Models: AST scaffolds built from the real AudioSet config (random weights), once a session.
# =============================================================================================


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny AST scaffold (2 layers, real 527 labels) with its ONNX export. Read-only: copy to modify."""
    from agent.analysis.models import scaffold

    out = tmp_path_factory.mktemp("models") / "scaffold-tiny"
    scaffold(out, tiny=True, onnx=True)
    return out


@pytest.fixture(scope="session")
def tiny_16_model_dir(tmp_path_factory) -> Path:
    """A tiny AST 16-16 scaffold (strides 16: 8 × 64 = 512 patches) with its ONNX export. Read-only."""
    from agent.analysis.models import scaffold

    out = tmp_path_factory.mktemp("models") / "scaffold-tiny-16x16"
    scaffold(out, tiny=True, onnx=True, variant="16-16")
    return out


@pytest.fixture(scope="session")
def full_model_dir(tmp_path_factory) -> Path:
    """A full-size AST scaffold (exact architecture, 86.6 M parameters, ~2 s per 10 s window here)."""
    from agent.analysis.models import scaffold

    out = tmp_path_factory.mktemp("models") / "scaffold-full"
    scaffold(out, tiny=False)
    return out


# =============================================================================================
# Fault-injection suite (pytest -m faults): its own PostgreSQL server, the results file.
# =============================================================================================

from tests.faultkit import fault_dsn, fault_pg, fault_results  # noqa: E402,F401
