"""``soundscape-agent db maintain``: partitions ahead, retention, hourly rollups (schema 10).

The work is the server's own function ``soundscape_maintain()`` (agent/sql/0010_partitions.sql),
which the timer of deploy/db.yml also runs through psql; this module sets the retention
policy first when asked to and reports what the function did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import errors as pgerrors

from agent.errors import SyncError, UsageError
from agent.sync import redact_dsn

#: The partitioned tables and what their retention applies to.
TABLES = ("windows", "detections", "heartbeats", "gaps", "clock_steps")
_KEEP = re.compile(r"^(?P<table>[a-z_]+)=(?P<value>forever|\d+)$")


@dataclass(frozen=True)
class Action:
    """One thing ``soundscape_maintain()`` did: ``created``, ``rolled up``, ``dropped`` or ``deleted``."""

    action: str
    relation: str
    detail: str


def parse_keep(items: list[str]) -> dict[str, timedelta | None]:
    """``["windows=90", "gaps=forever"]`` -> {table: retention} (None: forever).

    Raises:
        UsageError: an item is not ``TABLE=DAYS`` or ``TABLE=forever`` with a partitioned table
            and at least one day.
    """
    keep: dict[str, timedelta | None] = {}
    for item in items:
        m = _KEEP.match(item.strip())
        if not m or m["table"] not in TABLES or m["value"] == "0":
            raise UsageError(f"--keep {item!r}: expected TABLE=DAYS or TABLE=forever",
                             f"TABLE is one of {', '.join(TABLES)}; DAYS a whole number >= 1, e.g. --keep windows=90")
        keep[m["table"]] = None if m["value"] == "forever" else timedelta(days=int(m["value"]))
    return keep


def maintain(dsn: str, keep: dict[str, timedelta | None] | None = None, *,
             connect_timeout_s: float = 10) -> list[Action]:
    """Set the retention of the tables in ``keep`` (if any), then run ``soundscape_maintain()``,
    in one transaction as the role of ``dsn`` (the database owner).

    Returns:
        What was done, in order (partitions created, device-hours rolled up, partitions dropped).

    Raises:
        SyncError: the server cannot be reached, has a schema older than 10 (hint: ``db init``),
            or refused (not the owner).
    """
    where = redact_dsn(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout_s))) as conn:
            for table, value in (keep or {}).items():
                conn.execute("UPDATE soundscape_partition_policy SET keep = %s WHERE table_name = %s", (value, table))
            rows = conn.execute("SELECT action, relation, detail FROM soundscape_maintain()").fetchall()
    except pgerrors.UndefinedTable:
        raise SyncError(f"{where} has no partitioned schema (schema version 10 or newer)",
                        "run 'soundscape-agent db init' against it as the database owner first") from None
    except pgerrors.UndefinedFunction:
        raise SyncError(f"{where} has no soundscape_maintain() (schema version 10 or newer)",
                        "run 'soundscape-agent db init' against it as the database owner first") from None
    except pgerrors.InsufficientPrivilege as err:
        raise SyncError(f"{where}: {err.diag.message_primary}",
                        "run 'db maintain' as the database owner (deploy/db.yml's soundscape_db_owner)") from None
    except psycopg.Error as err:
        raise SyncError(f"maintaining {where} failed: {str(err).strip()}",
                        "check the server log; rerun 'soundscape-agent db maintain' (it is idempotent)") from None
    return [Action(*r) for r in rows]


__all__ = ["TABLES", "Action", "maintain", "parse_keep"]
