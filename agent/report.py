"""``soundscape-agent report``: what the fleet heard, as a page people look at or as tables.

Reads the central PostgreSQL (read-only: a role with SELECT only suffices; every statement runs
in a ``READ ONLY`` transaction that is rolled back) and writes either one self-contained HTML
page (figures embedded as base64 PNG; tables of the numbers) or the same tables as CSV or
Parquet files. Docs: docs/reports.md.

Data flow: :func:`hourly_rollup` (levels, bands, indices and detections per device and UTC hour:
the rows of the server's hourly rollups, schema 10, with the hours not rolled up yet computed by
the server's own rollup functions; the report aggregates nothing else in SQL) →
:func:`fetch_windows` (the raw windows, when the data span at most :data:`RAW_MAX_SPAN` and are
still on the server) and
:func:`fetch_health` (heartbeats, gaps, clock steps) → :func:`build_tables` (pandas, every
table the page shows and the exports hold) → :func:`agent.report_page.render_html` (figures from
:mod:`agent.plots`) or :func:`write_tables`.

Aggregation (docs/reports.md#aggregation; the server's definitions, agent/sql/0010_partitions.sql):
levels and band levels are energy means weighted by window duration,
``10·lg(Σ tᵢ·10^(Lᵢ/10) / Σ tᵢ)`` (the time-average, or equivalent continuous, sound level of
IEC 61672-1:2013, 3.9, as ISO 1996-1:2016 and ISO 1996-2:2017 use it); LA90 of an hour is the
10th percentile of the hour's short-interval LAeq series (of a range: the mean of its hours',
weighted by their windows); LAFmax the maximum; acoustic indices the arithmetic mean;
detections are counted (rows) with the highest score, per classifier (taxonomy) and label.
Windows are reported by whole UTC hours: every hour overlapping the requested range.

pandas and matplotlib (the ``report`` extra) are imported inside the functions only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from agent.errors import MissingExtraError, NoDataError, OutputError, SyncError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

#: Up to this span of data the report plots every window; beyond it, hourly aggregates.
RAW_MAX_SPAN = timedelta(hours=48)
#: Classifiers (``detections.taxonomy``) and how the report names them, in report order.
TAXONOMIES = (("audioset", "AST (AudioSet)"), ("birdnet", "BirdNET"))
#: The install hint when pandas, matplotlib or pyarrow is missing.
EXTRA_HINT = "pip install 'soundscape-agent[report]'  (pandas, matplotlib, pyarrow)"
#: Output formats: one HTML page, or one file per table in a directory.
FORMATS = ("html", "csv", "parquet")
#: The tables of :func:`build_tables`, in export order.
TABLES = ("summary", "levels", "bands", "indices_by_hour_of_day", "detections_hourly", "labels", "heartbeats",
          "gaps", "clock_steps")

Resolution = Literal["hour", "window"]
Format = Literal["html", "csv", "parquet"]


# ------------------------------------------------------------------------------ the request


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """What to report on.

    Attributes:
        since, until: the range, timezone-aware: the windows of every UTC hour overlapping
            ``[since, until)`` (whole hours: the server's rollups are hourly); heartbeats and
            clock steps in it, gaps overlapping it.
        devices: device ids (``[agent] device_id``); empty: every device with windows in the range.
        tz: IANA time zone of the page's time axes, hours of day and table times (default UTC).
        resolution: ``auto`` (every window when the data span at most :data:`RAW_MAX_SPAN`,
            else hourly), ``hour`` or ``window``.
        top_labels: labels per classifier in the heat maps and the page's label tables.

    Raises:
        UsageError: a naive time, ``since >= until``, an unknown time zone or resolution,
            ``top_labels < 1``.
    """

    since: datetime
    until: datetime
    devices: tuple[str, ...] = ()
    tz: str = "UTC"
    resolution: Literal["auto", "hour", "window"] = "auto"
    top_labels: int = 15

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise UsageError("the report's --since and --until must be timezone-aware")
        if self.since >= self.until:
            raise UsageError(f"empty range: --since {self.since.isoformat()} is not before --until "
                             f"{self.until.isoformat()}", "give --until later than --since")
        zone(self.tz)
        if self.resolution not in ("auto", "hour", "window"):
            raise UsageError(f"unknown resolution {self.resolution!r}", "auto, hour or window")
        if self.top_labels < 1:
            raise UsageError(f"--top must be >= 1, got {self.top_labels}")


def zone(name: str) -> Any:
    """The :class:`zoneinfo.ZoneInfo` named ``name``.

    Raises:
        UsageError: no such time zone.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown time zone {name!r}", "an IANA name such as UTC or Europe/Paris") from None


def parse_time(text: str, tz: str = "UTC", *, now: datetime | None = None) -> datetime:
    """A command-line time: ``now``, an ISO 8601 date (``2024-05-01``: its midnight) or date and
    time (``2024-05-01T04:30``, ``2024-05-01 04:30:00+02:00``, ``…Z``). Without an offset it is
    in ``tz``.

    Returns:
        A timezone-aware datetime.

    Raises:
        UsageError: the text is none of these, or ``tz`` is unknown.
    """
    tzinfo = zone(tz)
    value = text.strip()
    if value.lower() == "now":
        return now or datetime.now(timezone.utc)
    try:
        parsed = (datetime.combine(date.fromisoformat(value), datetime.min.time()) if len(value) == 10
                  else datetime.fromisoformat(value))
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}",
                         "use an ISO 8601 date or date and time, e.g. 2024-05-01 or 2024-05-01T04:30+02:00, "
                         "or now") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tzinfo)


def require_extra(fmt: str) -> None:
    """Check that what ``fmt`` needs of the ``report`` extra imports: pandas always, matplotlib
    for ``html``, pyarrow for ``parquet``.

    Raises:
        MissingExtraError: a package is missing (the message names it, the hint the extra).
        UsageError: an unknown format.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}", f"one of {', '.join(FORMATS)}")
    needed = ["pandas"] + (["matplotlib"] if fmt == "html" else []) + (["pyarrow"] if fmt == "parquet" else [])
    for name in needed:
        try:
            __import__(name)
        except ImportError as e:
            raise MissingExtraError(f"the report ({fmt}) needs {name}, which is not installed ({e})",
                                    EXTRA_HINT) from None


# ------------------------------------------------------------------------------ reading the server


def _scrubbed(err: BaseException, dsn: str) -> str:
    """The error's first line, without the DSN's password."""
    from psycopg.conninfo import conninfo_to_dict

    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:  # noqa: BLE001 - an unparsable DSN: nothing to scrub by key
        password = ""
    return text.replace(password, "***") if password else text


@contextmanager
def read_only_connection(dsn: str, connect_timeout_s: float = 10.0,
                         statement_timeout_s: float = 300.0) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose every statement runs in one ``READ ONLY``, ``REPEATABLE READ``
    transaction (one snapshot; rolled back at the end), with the session time zone UTC and a
    statement timeout. Nothing is written.

    Raises:
        SyncError: the server cannot be reached or refuses the connection (the message names
            the server, without the password).
    """
    import psycopg

    from agent.sync import redact_dsn

    try:
        conn = psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout_s)), autocommit=False)
    except psycopg.Error as e:
        raise SyncError(f"cannot connect to PostgreSQL {redact_dsn(dsn)}: {_scrubbed(e, dsn)}",
                        "check --dsn (host, database, user, password, sslmode) and that the server runs") from None
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for every query
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(f"SET statement_timeout = {int(statement_timeout_s * 1000)}")
        yield conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def _frame(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], times: Sequence[str] = ()
           ) -> pd.DataFrame:
    """Run ``query``; its rows as a DataFrame with the query's column names; ``times`` columns as
    ``datetime64[us, UTC]`` (also when there are no rows).

    Raises:
        SyncError: the server refused the query (the message says which privilege or object).
    """
    import pandas as pd
    import psycopg

    try:
        cur = conn.execute(query, params)
        rows = cur.fetchall()
        columns = [d.name for d in (cur.description or [])]
    except psycopg.errors.InsufficientPrivilege as e:
        raise SyncError(f"the role may not read what the report needs: {str(e).strip().splitlines()[0]}",
                        "grant SELECT on the soundscape tables and views to it (a read-only role such as "
                        "soundscape_reader: GRANT SELECT ON ALL TABLES IN SCHEMA public)") from None
    except psycopg.errors.UndefinedTable as e:
        raise SyncError(f"no soundscape schema on this database: {str(e).strip().splitlines()[0]}",
                        "point --dsn at the database the agents sync to (created by `soundscape-agent db init`)"
                        ) from None
    except psycopg.Error as e:
        raise SyncError(f"the report's query failed: {str(e).strip().splitlines()[0]}",
                        "check the server's log; the range may be too long for the statement timeout") from None
    df = pd.DataFrame.from_records(rows, columns=columns)
    for name in times:
        df[name] = pd.to_datetime(df[name], utc=True).astype("datetime64[us, UTC]")
    return df


def _device_filter(devices: Sequence[str], column: str = "device") -> str:
    return f"{column} = ANY(%(devices)s)" if devices else "true"


def _params(devices: Sequence[str], since: datetime, until: datetime) -> dict[str, Any]:
    return {"devices": list(devices), "since": since, "until": until}


#: The oldest central schema whose hourly rollups the report reads (agent/sql/0010_partitions.sql).
ROLLUP_SCHEMA = 10


def whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """``[since, until)`` widened to whole UTC hours: the start of the UTC hour holding ``since``
    and the end of the one holding the last instant before ``until`` (the report's windows are
    those of every UTC hour overlapping the range; the server's rollups are by whole hours)."""
    first = since.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    last = until.astimezone(timezone.utc)
    floor = last.replace(minute=0, second=0, microsecond=0)
    return first, floor if floor == last else floor + timedelta(hours=1)


def _require_rollups(conn: psycopg.Connection[Any]) -> None:
    """SyncError unless the server's schema (``max(version)`` of ``schema_migrations``) has the
    hourly rollups (:data:`ROLLUP_SCHEMA` or newer)."""
    import pandas as pd

    version = _frame(conn, "SELECT max(version) AS version FROM schema_migrations", {})["version"].iloc[0]
    if pd.isna(version) or int(version) < ROLLUP_SCHEMA:
        have = "no migration" if pd.isna(version) else f"schema version {int(version)}"
        raise SyncError(f"the server has {have}: the report reads the hourly rollups of schema version "
                        f"{ROLLUP_SCHEMA} or newer",
                        "run 'soundscape-agent db init' against it as the database owner (after upgrading the "
                        "fleet's agents: deploy/README.md, \"Partitions, retention and rollups\")")


def _device_hours(table: str, function: str, devices: Sequence[str]) -> str:
    """SQL of the rows of ``table`` (``rollup_hourly`` or ``rollup_detections_hourly``) for the
    devices and the hours in ``[%(first_hour)s, %(until)s)``, except the device-hours not rolled up
    (yet, or not since new windows came: the pairs ``%(unrolled_device)s``, ``%(unrolled_hour)s``
    of ``soundscape_unrolled_hours()``), which ``function`` (the server's ``soundscape_rollup_of``
    / ``soundscape_detections_of``, what the rollup refresh stores) computes from the raw rows."""
    return f"""
        WITH unrolled AS MATERIALIZED (
            SELECT * FROM unnest(%(unrolled_device)s::text[], %(unrolled_hour)s::timestamptz[]) AS u (device, hour))
        SELECT r.* FROM {table} AS r
        WHERE {_device_filter(devices, "r.device")} AND r.hour >= %(first_hour)s AND r.hour < %(until)s
          AND NOT EXISTS (SELECT 1 FROM unrolled AS u WHERE u.device = r.device AND u.hour = r.hour)
        UNION ALL
        SELECT x.* FROM unrolled AS u, LATERAL {function}(u.device, u.hour) AS x"""


@dataclass(frozen=True)
class Rollup:
    """Per device and UTC hour, as :func:`hourly_rollup` returns it (pandas DataFrames): the rows
    of the server's rollups (``rollup_hourly``, ``rollup_detections_hourly``, schema 10).

    Attributes:
        levels: one row per (device, hour) with windows: ``device`` str, ``hour`` datetime64[us, UTC]
            (start of the UTC hour), ``windows`` int (the weight of the hour's means), ``seconds``
            float (audio, s), ``first_start`` and ``last_end`` datetime64[us, UTC] (the first
            window's start, the last one's end), ``laeq_db`` float (energy mean, dB(A)), ``laeq_s``
            float (seconds of windows with an LAeq: the weight to combine hours' LAeq),
            ``la90_db`` float (10th percentile of the hour's short-interval LAeq series),
            ``lafmax_db`` float (max), ``aci``, ``adi``, ``aei``, ``bi``, ``ndsi``, ``hf``, ``ht``
            float (means over the windows with a value).
        bands: one row per (device, hour, band): ``device``, ``hour``, ``band_hz`` float (nominal
            centre), ``leq_db`` float (energy mean, dB re 20 µPa).
        detections: one row per (device, hour, taxonomy, label): ``device``, ``hour``,
            ``taxonomy`` str, ``label`` str, ``detections`` int (rows), ``max_score`` float,
            ``scaffold`` bool (any from a random-weight scaffold model).
    """

    levels: pd.DataFrame
    bands: pd.DataFrame
    detections: pd.DataFrame


def hourly_rollup(conn: psycopg.Connection[Any], devices: Sequence[str], since: datetime, until: datetime
                  ) -> Rollup:
    """The hourly aggregates of the range, as the server defines them: the rows of its rollup
    tables ``rollup_hourly`` and ``rollup_detections_hourly`` (schema 10), except for the
    device-hours that received windows since the last rollup refresh
    (``soundscape_unrolled_hours()``), which the server's own ``soundscape_rollup_of`` /
    ``soundscape_detections_of`` compute from the raw rows. The report is thus exact whether or
    not ``db maintain`` ran lately, and covers hours whose raw rows retention dropped. The report
    aggregates nothing else in SQL; the columns of :class:`Rollup` are the contract.

    Args:
        conn: a (read-only) connection, session time zone UTC.
        devices: device ids; empty: all.
        since, until: every UTC hour overlapping ``[since, until)``, whole (:func:`whole_hours`).

    Returns:
        A :class:`Rollup`, rows sorted by device and hour (and band, taxonomy, label).

    Raises:
        SyncError: the server refused a query, or its schema is older than :data:`ROLLUP_SCHEMA`
            (the hint: ``soundscape-agent db init``).
    """
    import pandas as pd

    _require_rollups(conn)
    first_hour, _ = whole_hours(since, until)
    params: dict[str, Any] = {**_params(devices, since, until), "first_hour": first_hour}
    # once for both queries: the function reads the range's windows delivered since the last refresh
    unrolled = _frame(conn, f"""
        SELECT u.device, u.hour FROM soundscape_unrolled_hours(%(first_hour)s, %(until)s) AS u
        WHERE {_device_filter(devices, "u.device")}""", params)
    params.update(unrolled_device=[str(d) for d in unrolled["device"]],
                  unrolled_hour=[pd.Timestamp(t).to_pydatetime() for t in unrolled["hour"]])
    hours = _frame(conn, f"""
        SELECT h.device, h.hour, h.windows, h.duration_s AS seconds, h.first_start, h.last_end, h.laeq_db,
               h.laeq_s, h.la90_db, h.lafmax_db, h.aci, h.adi, h.aei, h.bi, h.ndsi, h.hf, h.ht,
               h.band_centres_hz::float8[] AS band_hz, h.band_leq_db::float8[] AS leq_db
        FROM ({_device_hours("rollup_hourly", "soundscape_rollup_of", devices)}) AS h
        ORDER BY h.device, h.hour""", params, times=("hour", "first_start", "last_end"))
    floats = ["seconds", "laeq_db", "laeq_s", "la90_db", "lafmax_db", "aci", "adi", "aei", "bi", "ndsi", "hf", "ht"]
    levels = hours.drop(columns=["band_hz", "leq_db"]).astype({name: float for name in floats})
    with_bands = hours.loc[hours["band_hz"].notna(), ["device", "hour", "band_hz", "leq_db"]]
    bands = (with_bands.explode(["band_hz", "leq_db"], ignore_index=True) if len(with_bands)
             else pd.DataFrame({"device": pd.Series(dtype=str), "hour": pd.Series(dtype="datetime64[us, UTC]"),
                                "band_hz": pd.Series(dtype=float), "leq_db": pd.Series(dtype=float)}))
    bands = bands.astype({"band_hz": float, "leq_db": float})
    bands = bands[np.isfinite(bands["leq_db"])].sort_values(["device", "hour", "band_hz"], ignore_index=True)
    detections = _frame(conn, f"""
        SELECT d.device, d.hour, d.taxonomy, d.label, d.detections, d.max_score::float8 AS max_score, d.scaffold
        FROM ({_device_hours("rollup_detections_hourly", "soundscape_detections_of", devices)}) AS d
        ORDER BY 1, 2, 3, 4""", params, times=("hour",))
    return Rollup(levels=levels, bands=bands, detections=detections)


def fetch_windows(conn: psycopg.Connection[Any], devices: Sequence[str], since: datetime, until: datetime
                  ) -> pd.DataFrame:
    """Every window of the range (for short spans), from the raw ``windows`` (none where retention
    dropped them): ``device``, ``start_time`` datetime64[us, UTC], ``duration_s``, ``laeq_db``,
    ``la90_db``, ``lafmax_db`` float, ``band_centres_hz`` and ``band_leq_db`` (lists of float, or
    None), sorted by device and time.

    Raises:
        SyncError: the server refused the query.
    """
    return _frame(conn, f"""
        SELECT device, start_time, duration_s, laeq_db, la90_db, lafmax_db, band_centres_hz, band_leq_db
        FROM windows
        WHERE {_device_filter(devices)} AND start_time >= %(since)s AND start_time < %(until)s
        ORDER BY device, start_time""", _params(devices, since, until), times=("start_time",))


@dataclass(frozen=True)
class Health:
    """The devices' own reports in the range (pandas DataFrames, sorted by device and time).

    Attributes:
        heartbeats: ``device``, ``time``, ``queue_depth`` int, ``oldest_unsynced_start`` (NaT: queue
            empty), ``cpu_temp_c`` float (NaN: no thermal zone).
        gaps: those overlapping the range: ``device``, ``start_time``, ``end_time``, ``reason``,
            ``windows`` int, ``detail`` str.
        clock_steps: ``device``, ``detected_at``, ``step_s`` float, ``clock_synchronised`` bool.
    """

    heartbeats: pd.DataFrame
    gaps: pd.DataFrame
    clock_steps: pd.DataFrame


def fetch_health(conn: psycopg.Connection[Any], devices: Sequence[str], since: datetime, until: datetime
                 ) -> Health:
    """Heartbeats (taken in the range), gaps (overlapping it) and clock steps (detected in it).

    Raises:
        SyncError: the server refused a query.
    """
    params = _params(devices, since, until)
    who = _device_filter(devices)
    beats = _frame(conn, f"""
        SELECT device, time, queue_depth, oldest_unsynced_start, cpu_temp_c::float8 AS cpu_temp_c
        FROM heartbeats WHERE {who} AND time >= %(since)s AND time < %(until)s
        ORDER BY device, time""", params, times=("time", "oldest_unsynced_start"))
    gaps = _frame(conn, f"""
        SELECT device, start_time, end_time, reason, windows, detail
        FROM gaps WHERE {who} AND start_time < %(until)s AND end_time >= %(since)s
        ORDER BY device, start_time""", params, times=("start_time", "end_time"))
    steps = _frame(conn, f"""
        SELECT device, detected_at, step_s, clock_synchronised
        FROM clock_steps WHERE {who} AND detected_at >= %(since)s AND detected_at < %(until)s
        ORDER BY device, detected_at""", params, times=("detected_at",))
    return Health(heartbeats=beats, gaps=gaps, clock_steps=steps)


def device_inventory(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """Every device with windows on the server, also those whose raw windows retention dropped
    (their hours are in ``rollup_hourly``): ``device``, ``windows``, ``first_start``, ``last_end``
    (for error messages: what exists). Counted from the rollup rows, and from the raw windows
    for the device-hours not rolled up (``soundscape_unrolled_hours()``).

    Raises:
        SyncError: the server refused the query.
    """
    return _frame(conn, """
        WITH unrolled AS MATERIALIZED (SELECT u.device, u.hour FROM soundscape_unrolled_hours() AS u)
        SELECT h.device, sum(h.windows)::bigint AS windows, min(h.first_start) AS first_start,
               max(h.last_end) AS last_end
        FROM (SELECT r.device, r.windows, r.first_start, r.last_end FROM rollup_hourly AS r
              WHERE NOT EXISTS (SELECT 1 FROM unrolled AS u WHERE u.device = r.device AND u.hour = r.hour)
              UNION ALL
              SELECT w.device, 1, w.start_time, w.start_time + w.duration_s * interval '1 second'
              FROM unrolled AS u
              JOIN windows AS w ON w.device = u.device AND w.start_time >= u.hour
                               AND w.start_time < u.hour + interval '1 hour') AS h
        GROUP BY h.device ORDER BY h.device""", {}, times=("first_start", "last_end"))


# ------------------------------------------------------------------------------ loading


@dataclass
class ReportData:
    """Everything one report shows: the request, the chosen resolution, the devices (sorted),
    the hourly rollup, the raw windows (``resolution == "window"`` only, else None), the health
    rows, the redacted source and when it was made."""

    request: ReportRequest
    resolution: Resolution
    devices: tuple[str, ...]
    rollup: Rollup
    windows: pd.DataFrame | None
    health: Health
    source: str
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def format_time(t: Any, tz: str) -> str:
    """A time for messages and the page's tables: ``YYYY-MM-DD HH:MM <tz>`` in time zone ``tz``
    (a naive time is taken as UTC; NaT gives ``—``)."""
    import pandas as pd

    ts = pd.Timestamp(t)
    if ts is pd.NaT:
        return "—"
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return f"{ts.tz_convert(tz):%Y-%m-%d %H:%M} {tz}"


def _what_exists(inventory: pd.DataFrame, tz: str) -> str:
    if inventory.empty:
        return "the database holds no windows at all"
    return "the database holds: " + "; ".join(
        f"{r.device}: {r.windows} windows from {format_time(r.first_start, tz)} to {format_time(r.last_end, tz)}"
        for r in inventory.itertuples())


def _check_selection(conn: psycopg.Connection[Any], request: ReportRequest, found: Sequence[str]) -> None:
    """NoDataError unless every requested device (or, without ``--device``, some device) has
    windows in the range; the message names the range, the devices and what exists."""
    missing = [d for d in request.devices if d not in found]
    if found and not missing:
        return
    tz = request.tz
    span = f"between {format_time(request.since, tz)} and {format_time(request.until, tz)}"
    inventory = device_inventory(conn)
    known = set(inventory["device"])
    unknown = [d for d in missing if d not in known]
    if unknown:
        raise NoDataError(f"unknown device{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                          "no windows of it on the server",
                          f"known devices: {', '.join(sorted(known)) or 'none'}")
    if missing:
        raise NoDataError(f"no windows of {', '.join(map(repr, missing))} {span}",
                          _what_exists(inventory[inventory["device"].isin(missing)], tz))
    raise NoDataError(f"no windows {span}", _what_exists(inventory, tz))


def choose_resolution(request: ReportRequest, levels: pd.DataFrame) -> Resolution:
    """``request.resolution`` unless ``auto``: then ``window`` when the data found span at most
    :data:`RAW_MAX_SPAN` (first window's start to last one's end), else ``hour``."""
    if request.resolution != "auto":
        return request.resolution
    span = levels["last_end"].max() - levels["first_start"].min()
    return "window" if span <= RAW_MAX_SPAN else "hour"


def load_report(dsn: str, request: ReportRequest, *, connect_timeout_s: float = 10.0) -> ReportData:
    """Read what the report shows, in one read-only transaction (one snapshot).

    The windows are those of every UTC hour overlapping the range, whole (:func:`whole_hours`).
    With ``resolution="auto"`` the report is hourly also when the range's raw windows were
    dropped by retention (only the hourly rollups remain).

    Raises:
        NoDataError: no windows in the range (of a requested device), an unknown device, or
            ``resolution="window"`` where retention dropped raw windows of the range.
        SyncError: the server cannot be reached or refused a query.
        MissingExtraError: pandas is not installed.
    """
    from agent.sync import redact_dsn

    require_extra("csv")
    with read_only_connection(dsn, connect_timeout_s) as conn:
        rollup = hourly_rollup(conn, request.devices, request.since, request.until)
        found = sorted(set(rollup.levels["device"]))
        _check_selection(conn, request, found)
        devices = tuple(found)
        resolution = choose_resolution(request, rollup.levels)
        windows = None
        if resolution == "window":
            windows = fetch_windows(conn, devices, *whole_hours(request.since, request.until))
            rolled = int(rollup.levels["windows"].sum())
            if len(windows) < rolled:  # raw windows dropped by retention: only the hourly rollups remain
                if request.resolution == "window":
                    raise NoDataError(
                        f"only {len(windows)} of the {rolled} windows of the range are still on the server: "
                        "retention dropped the others (soundscape_partition_policy), their hourly rollups remain",
                        "use --resolution hour (or auto)")
                resolution, windows = "hour", None
        health = fetch_health(conn, devices, request.since, request.until)
    return ReportData(request=request, resolution=resolution, devices=devices, rollup=rollup, windows=windows,
                      health=health, source=redact_dsn(dsn))


# ------------------------------------------------------------------------------ the tables


def energy_mean(levels_db: npt.ArrayLike, weights: npt.ArrayLike) -> float:
    """``10·lg(Σ wᵢ·10^(Lᵢ/10) / Σ wᵢ)`` over the finite levels with positive weight (NaN if none).

    Args:
        levels_db: dB, shape (n,).
        weights: e.g. durations, s, shape (n,).
    """
    lv = np.asarray(levels_db, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(lv) & np.isfinite(w) & (w > 0)
    if not ok.any():
        return float("nan")
    ref = float(lv[ok].max())
    return ref + 10.0 * float(np.log10(np.sum(w[ok] * 10.0 ** ((lv[ok] - ref) / 10.0)) / np.sum(w[ok])))


def weighted_mean(values: npt.ArrayLike, counts: npt.ArrayLike) -> float:
    """``Σ nᵢ·xᵢ / Σ nᵢ`` over the finite values with positive count (NaN if none)."""
    x = np.asarray(values, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    ok = np.isfinite(x) & (n > 0)
    return float(np.sum(x[ok] * n[ok]) / np.sum(n[ok])) if ok.any() else float("nan")


def _summary(data: ReportData) -> pd.DataFrame:
    """One row per device: the range's windows, audio hours, first and last window, LAeq (energy
    mean of the hours, weighted by their seconds with an LAeq: exactly the windows' energy mean),
    LA90 (mean of the hours' LA90, weighted by their windows), LAFmax (max), detections per
    classifier, gaps, clock steps, heartbeats, the largest queue depth and CPU temperature."""
    import pandas as pd

    lv, det, h = data.rollup.levels, data.rollup.detections, data.health
    rows = []
    for device in data.devices:
        d = lv[lv["device"] == device]
        gaps = h.gaps[h.gaps["device"] == device]
        beats = h.heartbeats[h.heartbeats["device"] == device]
        since, until = pd.Timestamp(data.request.since), pd.Timestamp(data.request.until)
        gap_s = ((gaps["end_time"].clip(upper=until) - gaps["start_time"].clip(lower=since)).dt.total_seconds().sum()
                 if len(gaps) else 0.0)
        row: dict[str, Any] = {
            "device": device, "windows": int(d["windows"].sum()), "audio_h": float(d["seconds"].sum()) / 3600,
            "first_window": d["first_start"].min(), "last_window_end": d["last_end"].max(),
            "laeq_db": energy_mean(d["laeq_db"], d["laeq_s"]), "la90_db": weighted_mean(d["la90_db"], d["windows"]),
            "lafmax_db": float(d["lafmax_db"].max()),
        }
        for taxonomy, _ in TAXONOMIES:
            sel = det[(det["device"] == device) & (det["taxonomy"] == taxonomy)]
            row[f"detections_{taxonomy}"] = int(sel["detections"].sum())
        row.update(gaps=len(gaps), gap_h=float(gap_s) / 3600,
                   clock_steps=int((h.clock_steps["device"] == device).sum()), heartbeats=len(beats),
                   max_queue_depth=int(beats["queue_depth"].max()) if len(beats) else None,
                   max_cpu_temp_c=float(beats["cpu_temp_c"].max()) if len(beats) else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows).astype({"max_queue_depth": "Int64"})


def _levels(data: ReportData) -> pd.DataFrame:
    """Levels at the report's resolution: ``device``, ``time`` (hour or window start, UTC),
    ``seconds``, ``windows``, ``laeq_db``, ``la90_db``, ``lafmax_db``."""
    import pandas as pd

    cols = ["device", "time", "seconds", "windows", "laeq_db", "la90_db", "lafmax_db"]
    if data.windows is not None:
        w = data.windows
        return pd.DataFrame({"device": w["device"], "time": w["start_time"], "seconds": w["duration_s"],
                             "windows": 1, "laeq_db": w["laeq_db"], "la90_db": w["la90_db"],
                             "lafmax_db": w["lafmax_db"]})[cols].astype({"laeq_db": float, "la90_db": float,
                                                                          "lafmax_db": float})
    lv = data.rollup.levels.rename(columns={"hour": "time"})
    return lv[cols].astype({"laeq_db": float, "la90_db": float, "lafmax_db": float}).reset_index(drop=True)


def _bands(data: ReportData) -> pd.DataFrame:
    """Band levels at the report's resolution, long: ``device``, ``time``, ``band_hz``, ``leq_db``."""
    import pandas as pd

    if data.windows is None:
        return data.rollup.bands.rename(columns={"hour": "time"})[["device", "time", "band_hz", "leq_db"]]
    w = data.windows[data.windows["band_centres_hz"].notna()]
    if w.empty:
        return pd.DataFrame({"device": pd.Series(dtype=str), "time": pd.Series(dtype="datetime64[us, UTC]"),
                             "band_hz": pd.Series(dtype=float), "leq_db": pd.Series(dtype=float)})
    long = pd.DataFrame({"device": w["device"], "time": w["start_time"], "band_hz": w["band_centres_hz"],
                         "leq_db": w["band_leq_db"]}).explode(["band_hz", "leq_db"], ignore_index=True)
    long = long.astype({"band_hz": float, "leq_db": float})
    return long[np.isfinite(long["leq_db"])].reset_index(drop=True)


def _indices_by_hour(data: ReportData) -> pd.DataFrame:
    """Per device and hour of day (in the report's time zone): ``windows`` and, per index of
    :data:`agent.plots.INDICES` (aci, adi, ndsi, bi), the mean of the hourly means weighted by
    their windows (``<index>``) and the lowest and highest hourly mean (``<index>_low``,
    ``<index>_high``)."""
    import pandas as pd

    lv = data.rollup.levels.copy()
    lv["hour_of_day"] = lv["hour"].dt.tz_convert(data.request.tz).dt.hour
    rows = []
    for (device, hour), g in lv.groupby(["device", "hour_of_day"], sort=True):
        row: dict[str, Any] = {"device": device, "hour_of_day": int(hour), "windows": int(g["windows"].sum())}
        for name in ("aci", "adi", "ndsi", "bi"):
            x = g[name].astype(float)
            row[name] = weighted_mean(x, g["windows"])
            row[f"{name}_low"], row[f"{name}_high"] = float(x.min()), float(x.max())
        rows.append(row)
    return pd.DataFrame(rows)


def _labels(data: ReportData) -> pd.DataFrame:
    """Per device, classifier and label over the range: ``detections``, ``max_score``, ``scaffold``,
    most detected first."""
    import pandas as pd

    det = data.rollup.detections
    if det.empty:
        return pd.DataFrame(columns=["device", "taxonomy", "label", "detections", "max_score", "scaffold"])
    out = (det.groupby(["device", "taxonomy", "label"], as_index=False)
           .agg(detections=("detections", "sum"), max_score=("max_score", "max"), scaffold=("scaffold", "any")))
    return out.sort_values(["device", "taxonomy", "detections", "label"], ascending=[True, True, False, True],
                           ignore_index=True)


def _heartbeats(data: ReportData) -> pd.DataFrame:
    """``device``, ``time``, ``queue_depth``, ``oldest_unsynced_age_s`` (0 when the queue was empty),
    ``cpu_temp_c``."""
    import pandas as pd

    b = data.health.heartbeats
    age = (b["time"] - b["oldest_unsynced_start"]).dt.total_seconds().clip(lower=0).fillna(0.0)
    return pd.DataFrame({"device": b["device"], "time": b["time"], "queue_depth": b["queue_depth"],
                         "oldest_unsynced_age_s": age, "cpu_temp_c": b["cpu_temp_c"].astype(float)})


def build_tables(data: ReportData) -> dict[str, pd.DataFrame]:
    """Every table of the report (:data:`TABLES`), as the page shows them and the exports hold
    them; times are ``datetime64[us, UTC]``.

    ``summary`` one row per device; ``levels`` and ``bands`` at the report's resolution (hour
    or window); ``indices_by_hour_of_day``; ``detections_hourly`` (device, UTC hour, taxonomy,
    label: detections, max score); ``labels`` (the same over the range); ``heartbeats``;
    ``gaps`` (with ``duration_s``); ``clock_steps``.
    """
    det = data.rollup.detections.rename(columns={"hour": "time"})
    gaps = data.health.gaps.copy()
    gaps.insert(3, "duration_s", (gaps["end_time"] - gaps["start_time"]).dt.total_seconds())
    return {
        "summary": _summary(data),
        "levels": _levels(data),
        "bands": _bands(data),
        "indices_by_hour_of_day": _indices_by_hour(data),
        "detections_hourly": det[["device", "time", "taxonomy", "label", "detections", "max_score", "scaffold"]],
        "labels": _labels(data),
        "heartbeats": _heartbeats(data),
        "gaps": gaps,
        "clock_steps": data.health.clock_steps,
    }


# ------------------------------------------------------------------------------ writing


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds (nothing is
    left behind when it fails).

    Raises:
        OutputError: the directory cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        tmp.open("xb").close()  # the umask's permissions, as the file it replaces
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}",
                          "choose an --out in an existing, writable directory") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}", "check the free space and permissions there"
                          ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path, fmt: Literal["csv", "parquet"]) -> list[Path]:
    """Write each table to ``out_dir/<name>.<fmt>`` (the directory is created; files of the same
    names are replaced). CSV: UTF-8, a header line, times in ISO 8601 with their UTC offset.
    Parquet: pyarrow, times as ``timestamp[us, tz=UTC]``.

    Returns:
        The files written, in :data:`TABLES` order.

    Raises:
        OutputError: the directory or a file cannot be written.
        MissingExtraError: pyarrow is missing (parquet).
    """
    require_extra(fmt)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the directory {out_dir}: {e.strerror or e}",
                          "choose a writable --out directory") from None
    written = []
    for name in TABLES:
        path = out_dir / f"{name}.{fmt}"
        with _replacing(path) as tmp:
            if fmt == "csv":
                tables[name].to_csv(tmp, index=False)
            else:
                tables[name].to_parquet(tmp, index=False, engine="pyarrow")
        written.append(path)
    return written


def check_output(out: Path, fmt: str) -> None:
    """Before any work: ``out`` can be written — for ``html`` a file (not a directory) in an
    existing writable directory; for ``csv`` / ``parquet`` a directory (not a file) whose nearest
    existing ancestor is writable.

    Raises:
        OutputError: it cannot (the message says why).
    """
    if fmt == "html":
        if out.is_dir():
            raise OutputError(f"--out {out} is a directory", "name the HTML file to write, e.g. report.html")
        where = out.parent
        if not where.is_dir():
            raise OutputError(f"cannot write {out}: the directory {where} does not exist", "create it first")
    else:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file; --format {fmt} writes one file per table into a directory",
                              "name a directory (it is created)")
        where = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: {where} is not writable", "choose another --out")


@dataclass(frozen=True)
class ReportOutcome:
    """What :func:`make_report` wrote: the paths, the devices, the resolution, the windows."""

    paths: list[Path]
    devices: tuple[str, ...]
    resolution: Resolution
    windows: int


def make_report(dsn: str, request: ReportRequest, out: Path, fmt: Format = "html", *,
                connect_timeout_s: float = 10.0) -> ReportOutcome:
    """Read the server and write the report: ``out`` is the HTML file (``html``) or the directory
    of one file per table (``csv``, ``parquet``). Nothing is written when anything fails.

    Raises:
        UsageError: an unknown format.
        MissingExtraError: the ``report`` extra (or the part ``fmt`` needs) is missing.
        NoDataError: no windows in the range, or an unknown device.
        SyncError: the server cannot be reached or refused a query.
        OutputError: ``out`` cannot be written.
    """
    require_extra(fmt)
    check_output(out, fmt)
    data = load_report(dsn, request, connect_timeout_s=connect_timeout_s)
    tables = build_tables(data)
    windows = int(tables["summary"]["windows"].sum())
    if fmt == "html":
        from agent.report_page import render_html

        page = render_html(data, tables)
        with _replacing(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return ReportOutcome([out], data.devices, data.resolution, windows)
    return ReportOutcome(write_tables(tables, out, fmt), data.devices, data.resolution, windows)


__all__ = ["EXTRA_HINT", "FORMATS", "Health", "RAW_MAX_SPAN", "ROLLUP_SCHEMA", "ReportData", "ReportOutcome",
           "ReportRequest", "Rollup", "TABLES", "TAXONOMIES", "build_tables", "check_output", "choose_resolution",
           "device_inventory", "energy_mean", "fetch_health", "fetch_windows", "format_time", "hourly_rollup",
           "load_report", "make_report", "parse_time", "read_only_connection", "require_extra",
           "weighted_mean", "whole_hours", "write_tables", "zone"]
