"""``soundscape-agent report``, end to end against a real PostgreSQL seeded through the sync code.

Three days of a duty-cycled fleet (two devices, one 10 s window every 10 minutes, AST and BirdNET
detections, heartbeats, gaps and clock steps) are delivered with the agent's own
``agent.sync.send_batch`` / ``send_heartbeats`` / ``send_events`` into a schema made by
``agent.sync.migrate``, with a rollup refresh (``soundscape_maintain()``) between two deliveries:
days 1 and 3 are read from the server's hourly rollups, day 2's hours (sent windows after the
refresh) are computed by the server's rollup functions. The report reads it through a role that
has SELECT only. The page is opened in headless Chromium (Debian's ``chromium``;
scripts/bootstrap.sh installs it): every figure must be decoded and laid out by the browser and
be drawn in its screenshot; the numbers in its tables and exports (LAeq as an energy mean, LA90
as the 10th percentile of the hour's LAeq series, LAFmax, bands, detections) must equal numpy
computed here from the delivered windows; the CSV and Parquet exports must hold as many rows as
SQL counts. A second database of the same fleet whose raw rows retention dropped is reported
from the rollups alone. Errors (empty range, unknown device, missing extra, a schema without
rollups) give one clear message, their exit code and no file. ``diagnose --spectrogram`` draws
axes and a dB colour bar (the CLI path is in tests/test_diagnose.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image as PIL  # Pillow comes with matplotlib: the report extra (scripts/bootstrap.sh installs it)
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.records import (
    AcousticIndices,
    Calibration,
    ClockStep,
    Detection,
    Gap,
    Heartbeat,
    Levels,
    MicHealth,
    Status,
    WindowResult,
)
from agent.report import TABLES
from agent.report_page import DEVICE_FIGURES
from tests.factories import BIRDNET_MODEL, MODEL
from tests.test_run import agent

DEVICES = ("moth-a", "moth-b")
START = datetime(2024, 5, 1, tzinfo=timezone.utc)
DAYS = 3
STEP = timedelta(minutes=10)
BANDS_HZ = (25.0, 31.5, 40.0, 50.0, 63.0, 80.0, 100.0, 125.0, 160.0, 200.0, 250.0, 315.0, 400.0, 500.0, 630.0,
            800.0, 1000.0, 1250.0, 1600.0, 2000.0, 2500.0, 3150.0, 4000.0, 5000.0, 6300.0, 8000.0, 10000.0,
            12500.0, 16000.0)
AUDIOSET = ("Bird vocalization, bird call, bird song", "Vehicle", "Wind noise (microphone)", "Rain", "Insect",
            "Speech", "Silence")
SPECIES = ("Turdus merula_Eurasian Blackbird", "Erithacus rubecula_European Robin",
           "Fringilla coelebs_Common Chaffinch", "Phylloscopus collybita_Common Chiffchaff",
           "Sylvia atricapilla_Eurasian Blackcap")
CALIBRATION = Calibration(sensitivity_dbv=-38.0, gain_db=30.0, vadc=3.3)
#: Windows missing on purpose: (device, start, end, reason, windows lost).
GAPS = (("moth-a", datetime(2024, 5, 2, 13, 5, tzinfo=timezone.utc), datetime(2024, 5, 2, 15, 35, tzinfo=timezone.utc),
         "capture_lost", 0),
        ("moth-b", datetime(2024, 5, 3, 9, 0, tzinfo=timezone.utc), datetime(2024, 5, 3, 9, 41, tzinfo=timezone.utc),
         "evicted_unsynced", 4))
CLOCK_STEPS = (("moth-a", datetime(2024, 5, 2, 3, 0, 7, tzinfo=timezone.utc), 1.8),
               ("moth-b", datetime(2024, 5, 3, 2, 15, 3, tzinfo=timezone.utc), -2.4))
RANGE = ("2024-05-01", "2024-05-04")


# ------------------------------------------------------------------------------ the fleet's data


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-(((h - centre) / width) ** 2))


def _window(device: str, i: int, t: datetime, rng: np.random.Generator) -> WindowResult:
    """One 10 s window of ``device`` at ``t``: a diurnal traffic level, a dawn chorus, noise."""
    d = DEVICES.index(device)
    h = t.hour + t.minute / 60
    traffic = 36 + 6 * d + 9 * _bump(h, 8, 2.5) + 7 * _bump(h, 17.5, 2.5)
    chorus = 14 * _bump(h, 5.5, 1.2) + 6 * _bump(h, 20.5, 1.0)
    laeq = 10 * math.log10(10 ** (traffic / 10) + 10 ** ((28 + chorus) / 10)) + rng.normal(0, 2.0)
    bands = tuple(traffic - 3.5 * math.log2(f / 100) * (f > 100)
                  + (28 + chorus - traffic) * _bump(math.log2(f / 4000), 0, 0.9) + rng.normal(0, 1.0)
                  for f in BANDS_HZ)
    levels = Levels(
        lzeq_db=laeq + 7, laeq_db=laeq, lceq_db=laeq + 4, lafmax_db=laeq + 5 + rng.exponential(4), lafmin_db=laeq - 9,
        lasmax_db=laeq + 3, la10_db=laeq + 2, la50_db=laeq - 2, la90_db=laeq - 5 - rng.uniform(0, 3),
        laeq_series_db=tuple(laeq + rng.normal(0, 1) for _ in range(10)),
        lzeq_series_db=tuple(laeq + 7 + rng.normal(0, 1) for _ in range(10)),
        peak_dbfs=-20 + rng.normal(0, 2), band_centres_hz=BANDS_HZ, band_leq_db=bands, calibration=CALIBRATION)
    birds = chorus / 14
    indices = AcousticIndices(aci=140 + 30 * birds + rng.normal(0, 3), adi=1.4 + 0.9 * birds + rng.normal(0, 0.05),
                              aei=0.5, bi=2 + 12 * birds + rng.normal(0, 0.5),
                              ndsi=float(np.clip(-0.6 + 1.3 * birds + rng.normal(0, 0.05), -1, 1)), hf=0.7, ht=0.9)
    scores = {"Bird vocalization, bird call, bird song": 0.1 + 0.8 * birds, "Vehicle": (traffic - 36) / 20,
              "Wind noise (microphone)": 0.3 * rng.random(), "Rain": 0.7 if t.day == 2 and 10 <= h < 16 else 0.02,
              "Insect": 0.5 * _bump(h, 22, 1.5), "Speech": 0.25 * _bump(h, 13, 3), "Silence": 0.4 * _bump(h, 2, 2)}
    ranked = sorted(scores.items(), key=lambda kv: (-(kv[1] + 0.05 * rng.random()), kv[0]))[:3]
    dets = [Detection(rank=r + 1, label=label, label_index=AUDIOSET.index(label), score=float(np.clip(s, 0.001, 0.99)))
            for r, (label, s) in enumerate(ranked)]
    if birds > 0.15:
        pick = rng.choice(len(SPECIES), size=1 + int(birds > 0.5), replace=False)
        dets += [Detection(rank=r + 1, label=SPECIES[k], label_index=2000 + int(k), score=0.3 + 0.6 * birds - 0.1 * r,
                           taxonomy="birdnet", offset_s=3.0 * r) for r, k in enumerate(sorted(pick))]
    return WindowResult(
        key=f"s-{device}-{i}", device_id=device, index=i, start_time=t, duration_s=10.0, sample_rate=48000,
        clock_synchronised=True, xruns=0, levels=levels, indices=indices,
        health=MicHealth(clipping_ratio=0.0, dc_offset_fs=1e-4, rms_dbfs=-50.0, hum_share=0.01),
        status=Status.CLASSIFIED, detections=tuple(dets), models=(MODEL, BIRDNET_MODEL),
        classifier_status=(("audioset", Status.CLASSIFIED), ("birdnet", Status.CLASSIFIED)))


def _in_gap(device: str, t: datetime) -> bool:
    return any(g[0] == device and g[1] <= t < g[2] for g in GAPS)


def fleet_results() -> list[WindowResult]:
    rng = np.random.default_rng(15)
    out = []
    for d, device in enumerate(DEVICES):
        for i in range(DAYS * 24 * 6):
            t = START + i * STEP + timedelta(minutes=2 * d, seconds=7)
            if not _in_gap(device, t):
                out.append(_window(device, i, t, rng))
    return out


def fleet_heartbeats() -> list[Heartbeat]:
    beats = []
    for d, device in enumerate(DEVICES):
        for i in range(DAYS * 24 * 3):
            t = START + timedelta(minutes=20 * i + 1 + d)
            backlog = device == "moth-b" and datetime(2024, 5, 2, 10, tzinfo=timezone.utc) <= t < datetime(
                2024, 5, 2, 14, tzinfo=timezone.utc)
            outage = datetime(2024, 5, 2, 10, tzinfo=timezone.utc)
            depth = int((t - outage).total_seconds() // 600) if backlog else 0
            h = t.hour + t.minute / 60
            beats.append(Heartbeat(
                heartbeat_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device}/{i}")), device_id=device, time=t,
                uptime_s=1200.0 * i + 60, windows=2 * i, classified=2 * i, skipped=0, failed=0, xruns=0,
                queue_depth=depth, oldest_unsynced_start=outage if depth else None,
                last_sync_at=t, cpu_temp_c=47.0 + 3 * d + 9 * _bump(h, 14, 4), throttled=0, throttle_flags=(),
                disk_free_bytes=10**10, disk_total_bytes=3 * 10**10, clock_synchronised=True, rss_bytes=4 * 10**8,
                peak_rss_bytes=5 * 10**8, model_id=MODEL.model_id, model_hash=MODEL.model_hash, agent_version="0.1.0",
                degraded=("sync_failing",) if backlog else ()))
    return beats


def fleet_events() -> list[Gap | ClockStep]:
    events: list[Gap | ClockStep] = [
        Gap(event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"gap/{g[0]}/{g[1]}")), device_id=g[0], start_time=g[1],
            end_time=g[2], reason=g[3], detail="seeded by tests/test_report.py", windows=g[4]) for g in GAPS]
    events += [ClockStep(event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"step/{c[0]}/{c[1]}")), device_id=c[0],
                         detected_at=c[1], step_s=c[2], clock_synchronised=True) for c in CLOCK_STEPS]
    return events


async def _deliver(dsn: str, results: list[WindowResult], *, health: bool = True) -> None:
    """Through the agent's own sync functions, in batches of 200 windows as a device would (and,
    with ``health``, the fleet's heartbeats, gaps and clock steps)."""
    from agent.sync import send_batch, send_events, send_heartbeats

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for i in range(0, len(results), 200):
            await send_batch(conn, results[i:i + 200], str(uuid.uuid4()))
            await conn.commit()
        if health:
            await send_heartbeats(conn, fleet_heartbeats())
            await send_events(conn, fleet_events())
            await conn.commit()


#: Delivered after the rollup refresh: every other window of this day (its hours then hold rolled
#: up rows that miss windows: the report must compute them from the raw rows instead).
LATE_DAY = datetime(2024, 5, 2, tzinfo=timezone.utc)


def _late(r: WindowResult) -> bool:
    return LATE_DAY <= r.start_time < LATE_DAY + timedelta(days=1) and r.index % 2 == 1


def _maintain(admin_dsn: str, keep: str | None = None) -> None:
    """``soundscape_maintain()`` as the owner (``db maintain``), after setting every table's
    retention to ``keep`` if given."""
    with psycopg.connect(admin_dsn) as con:
        if keep:
            con.execute("UPDATE soundscape_partition_policy SET keep = %s::interval", (keep,))
        con.execute("SELECT count(*) FROM soundscape_maintain()")


def _reader_dsn(admin_dsn: str) -> str:
    """A LOGIN role with SELECT only (what a ``soundscape_reader`` has)."""
    db = conninfo_to_dict(admin_dsn)["dbname"]
    role, password = f"report_reader_{db}", "reader-secret-pw"  # roles are the cluster's: one per database
    with psycopg.connect(admin_dsn, autocommit=True) as con:
        con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
            sql.Identifier(role), sql.Literal(password)))
        con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(role)))
        con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        con.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    return make_conninfo(admin_dsn, user=role, password=password)


@dataclass(frozen=True)
class Fleet:
    admin: str
    reader: str


@pytest.fixture(scope="module")
def fleet(pg_server) -> Fleet:
    """The fleet's database in the state a server is in between two rollup refreshes: days 1 and
    3 rolled up (``rollup_hourly``), day 2 rolled up and then sent more windows (its hours listed
    by ``soundscape_unrolled_hours()``, their rolled-up rows stale)."""
    from agent.sync import migrate

    admin = pg_server.create_database()
    migrate(admin)
    with psycopg.connect(admin, autocommit=True) as con:  # no lag: what was delivered before a refresh is rolled up
        con.execute(sql.SQL("ALTER DATABASE {} SET soundscape.rollup_lag = '0'").format(
            sql.Identifier(conninfo_to_dict(admin)["dbname"])))
    results = fleet_results()
    asyncio.run(_deliver(admin, [r for r in results if not _late(r)]))
    _maintain(admin)
    asyncio.run(_deliver(admin, [r for r in results if _late(r)], health=False))
    return Fleet(admin=admin, reader=_reader_dsn(admin))


@pytest.fixture(scope="module")
def retained(pg_server) -> Fleet:
    """The same fleet after ``db maintain`` with a retention of one day: every raw row (dated
    2024) dropped, the hourly rollups kept."""
    from agent.sync import migrate

    admin = pg_server.create_database()
    migrate(admin)
    asyncio.run(_deliver(admin, fleet_results()))
    _maintain(admin, keep="1 day")
    return Fleet(admin=admin, reader=_reader_dsn(admin))


# ------------------------------------------------------------------------------ expected, from the seeded rows


@dataclass(frozen=True)
class Hour:
    """One device-hour computed here with numpy from the WindowResults the fleet delivered."""

    windows: int
    seconds: float
    laeq_db: float     # energy mean weighted by duration
    la90_db: float     # 10th percentile (linear interpolation, as percentile_cont) of the LAeq series
    lafmax_db: float
    aci: float
    bands: dict[float, float]                           # band centre -> energy mean (stored as real)
    detections: dict[tuple[str, str], tuple[int, float]]  # (taxonomy, label) -> (rows, max score)


def _energy(levels, weights) -> float:
    lv, w = np.asarray(levels, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    return float(10 * np.log10(np.sum(w * 10 ** (lv / 10)) / np.sum(w)))


def expected_hours(results: list[WindowResult]) -> dict[tuple[str, datetime], Hour]:
    groups: dict[tuple[str, datetime], list[WindowResult]] = {}
    for r in results:
        groups.setdefault((r.device_id, r.start_time.replace(minute=0, second=0, microsecond=0)), []).append(r)
    out = {}
    for key, ws in groups.items():
        durations = [w.duration_s for w in ws]
        bands = {}
        for b, centre in enumerate(BANDS_HZ):  # stored as real: float32 values
            bands[centre] = _energy([np.float32(w.levels.band_leq_db[b]) for w in ws], durations)
        dets: dict[tuple[str, str], tuple[int, float]] = {}
        for w in ws:
            for d in w.detections:
                n, top = dets.get((d.taxonomy, d.label), (0, 0.0))
                dets[(d.taxonomy, d.label)] = (n + 1, max(top, float(np.float32(d.score))))
        out[key] = Hour(windows=len(ws), seconds=float(sum(durations)),
                        laeq_db=_energy([w.levels.laeq_db for w in ws], durations),
                        la90_db=float(np.percentile(np.concatenate([w.levels.laeq_series_db for w in ws]), 10)),
                        lafmax_db=max(w.levels.lafmax_db for w in ws),
                        aci=float(np.mean([w.indices.aci for w in ws])), bands=bands, detections=dets)
    return out


def _in_range(results: list[WindowResult], since: datetime, until: datetime, device: str | None = None
              ) -> list[WindowResult]:
    return [r for r in results if since <= r.start_time < until and device in (None, r.device_id)]


def assert_hourly_tables_equal(out_dir: Path, fmt: str, hours: dict[tuple[str, datetime], Hour]) -> None:
    """The exported hourly tables (levels, bands, detections_hourly) hold exactly ``hours``."""
    import pandas as pd

    def read(table: str) -> pd.DataFrame:
        path = out_dir / f"{table}.{fmt}"
        df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, parse_dates=["time"])
        return df.assign(time=[t.to_pydatetime() for t in pd.to_datetime(df["time"], utc=True)])

    levels = read("levels")
    assert sorted(zip(levels["device"], levels["time"], strict=True)) == sorted(hours)
    for row in levels.itertuples():
        want = hours[(row.device, row.time)]
        assert (row.windows, row.seconds) == (want.windows, want.seconds), (row.device, row.time)
        assert row.laeq_db == pytest.approx(want.laeq_db, abs=1e-9)
        assert row.la90_db == pytest.approx(want.la90_db, abs=1e-9)
        assert row.lafmax_db == pytest.approx(want.lafmax_db, abs=1e-9)
    bands = read("bands")
    assert len(bands) == sum(len(h.bands) for h in hours.values())
    for row in bands.itertuples():
        assert row.leq_db == pytest.approx(hours[(row.device, row.time)].bands[row.band_hz], abs=1e-4)
    det = read("detections_hourly")
    assert len(det) == sum(len(h.detections) for h in hours.values())
    for row in det.itertuples():
        n, top = hours[(row.device, row.time)].detections[(row.taxonomy, row.label)]
        assert (row.detections, row.max_score) == (n, pytest.approx(top, abs=1e-6))


def _sql(dsn: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        con.execute("SET TIME ZONE 'UTC'")
        return con.execute(query, params).fetchall()


def report(fleet: Fleet, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    r = agent("report", "--dsn", fleet.reader, *args, env=env, timeout=180)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r


# ------------------------------------------------------------------------------ reading the page


class Page(HTMLParser):
    """The report's figures (scope, key, PNG bytes) and tables (class -> rows of {data-col: text})."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: list[tuple[str, str, bytes]] = []
        self.notes: list[str] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._figure: tuple[str, str] | None = None
        self._table: str | None = None
        self._col: str | None = None
        self._note = False
        self._body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._figure = (a.get("data-device") or a.get("data-scope"), a["data-figure"])
        elif tag == "img" and self._figure:
            head, data = a["src"].split(",", 1)
            assert head == "data:image/png;base64"
            self.figures.append((*self._figure, base64.b64decode(data)))
        elif tag == "table":
            self._table = a["class"]
            self.tables[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._table and self._body:
            self.tables[self._table].append({})
        elif tag == "td" and self._table:
            self._col = a["data-col"]
        elif tag == "p" and "note" in (a.get("class") or ""):
            self._note = True

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "table":
            self._table = None
        elif tag == "tbody":
            self._body = False
        elif tag == "td":
            self._col = None
        elif tag == "p":
            self._note = False

    def handle_data(self, data):
        if self._col and self._table and self.tables[self._table]:
            row = self.tables[self._table][-1]
            row[self._col] = row.get(self._col, "") + data
        if self._note:
            self.notes.append(data)


def drawn(png_or_image) -> tuple[int, int]:
    """(pixels in colour — channel spread > 40 —, distinct colours): axes, ticks and text are
    grey, so a figure whose data were not drawn has (almost) no coloured pixel."""
    img = png_or_image if isinstance(png_or_image, PIL.Image) else PIL.open(io.BytesIO(png_or_image))
    a = np.asarray(img.convert("RGB"), dtype=np.int32)
    coloured = int(((a.max(axis=2) - a.min(axis=2)) > 40).sum())
    return coloured, len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]))


def assert_drawn(png_or_image, what: str) -> None:
    coloured, distinct = drawn(png_or_image)
    assert coloured >= 1500 and distinct >= 64, f"{what} looks blank: {coloured} coloured pixels, {distinct} colours"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed (Debian package chromium; scripts/bootstrap.sh installs it)"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120)


#: Appended to a copy of the page: where Chromium laid out each figure, and whether it decoded it.
LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const rows = [...document.querySelectorAll('figure.plot img')].map(img => {
    const f = img.closest('figure'), r = img.getBoundingClientRect();
    return [f.dataset.device || f.dataset.scope, f.dataset.figure, img.naturalWidth, img.naturalHeight,
            Math.round(r.left + scrollX), Math.round(r.top + scrollY), Math.round(r.width),
            Math.round(r.height)].join(',');
  });
  const pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = rows.join(';') + '|' + document.documentElement.scrollHeight;
  document.body.appendChild(pre);
});
</script>"""


def browser_layout(tmp_path: Path, page: Path) -> tuple[list[tuple[str, str, int, int, int, int, int, int]], int]:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    r = chromium(tmp_path, "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="layout">([^<]*)\|(\d+)</pre>', r.stdout)
    assert m, f"no layout from Chromium: {r.stderr[-2000:]}"
    rows = [tuple(x.split(",")) for x in m[1].split(";") if x]
    return [(s, k, *map(int, rest)) for s, k, *rest in rows], int(m[2])


# ------------------------------------------------------------------------------ the tests


def test_html_report_of_three_days_two_devices(tmp_path, fleet):
    out = tmp_path / "report.html"
    r = report(fleet, "--since", RANGE[0], "--until", RANGE[1], "--out", str(out))
    assert r.returncode == 0, r.stderr
    windows = _sql(fleet.admin, "SELECT count(*) FROM windows")[0][0]
    assert f"report: {windows} windows of 2 device(s) (moth-a, moth-b), hourly" in r.stdout
    page = Page(out.read_text(encoding="utf-8"))

    # every figure is there, in order, and drawn; a blank figure would fail the same check
    keys = [(scope, key) for scope, key, _ in page.figures]
    assert keys == [("fleet", "fleet-levels"), ("fleet", "fleet-labels"),
                    *[(d, k) for d in DEVICES for k in DEVICE_FIGURES]], keys
    assert page.notes == []
    for scope, key, png in page.figures:
        assert_drawn(png, f"{scope}/{key}")
    from agent import plots

    blank = plots.new_figure(3.8)
    blank.add_subplot().set_title("no data drawn")
    with pytest.raises(AssertionError, match="looks blank"):
        assert_drawn(plots.png_bytes(blank), "control: axes without data")

    # the numbers: computed here with numpy from the windows the fleet delivered
    since, until = (datetime.fromisoformat(t).replace(tzinfo=timezone.utc) for t in RANGE)
    summary = {row["device"]: row for row in page.tables["summary"]}
    assert sorted(summary) == list(DEVICES)
    for device in DEVICES:
        ws = _in_range(fleet_results(), since, until, device)
        hours = [h for (d, _), h in expected_hours(ws).items() if d == device]
        laeq = [w.levels.laeq_db for w in ws]
        row = summary[device]
        assert int(row["windows"]) == len(ws)
        assert float(row["laeq_db"]) == pytest.approx(_energy(laeq, [w.duration_s for w in ws]), abs=0.051)
        assert abs(float(np.mean(laeq)) - _energy(laeq, [w.duration_s for w in ws])) > 0.3  # the energy mean is checked
        la90 = np.average([h.la90_db for h in hours], weights=[h.windows for h in hours])
        assert float(row["la90_db"]) == pytest.approx(la90, abs=0.051)
        assert float(row["lafmax_db"]) == pytest.approx(max(w.levels.lafmax_db for w in ws), abs=0.051)
        for taxonomy in ("audioset", "birdnet"):
            n = sum(d.taxonomy == taxonomy for w in ws for d in w.detections)
            assert int(row[f"detections_{taxonomy}"]) == n > 0

    # the browser decodes and lays out every figure, and draws it in its screenshot
    layout, height = browser_layout(tmp_path, out)
    assert [(s, k) for s, k, *_ in layout] == keys
    shot = tmp_path / "screenshot.png"
    r = chromium(tmp_path, f"--screenshot={shot}", f"--window-size=1400,{height}", out.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    image = PIL.open(shot).convert("RGB")
    assert image.size == (1400, height)
    assert drawn(image)[1] > 1000  # not a uniform page
    for scope, key, nat_w, nat_h, left, top, width, h in layout:
        assert nat_w == 1200 and nat_h > 200 and width > 1000, (scope, key, nat_w, width)
        assert_drawn(image.crop((left, top, left + width, top + h)), f"screenshot of {scope}/{key}")


def _label_rows(text: str, device: str, taxonomy: str) -> list[dict[str, str]]:
    """The label table of ``device`` and ``taxonomy`` from the page (tables follow their device's heading)."""
    section = text.split(f'<h2 id="device-{device}">', 1)[1].split("<h2 ", 1)[0]
    return Page(section).tables.get(f"labels labels-{taxonomy}", [])


def test_label_tables_equal_sql(tmp_path, fleet):
    out = tmp_path / "report.html"
    r = report(fleet, "--since", RANGE[0], "--until", RANGE[1], "--out", str(out), "--top", "4")
    assert r.returncode == 0, r.stderr
    text = out.read_text(encoding="utf-8")
    for device in DEVICES:
        for taxonomy in ("audioset", "birdnet"):
            want = _sql(fleet.admin, """
                SELECT label, count(*), max(score) FROM detections_flat WHERE device = %s AND taxonomy = %s
                GROUP BY label ORDER BY count(*) DESC, label LIMIT 4""", device, taxonomy)
            rows = _label_rows(text, device, taxonomy)
            assert [(x["label"], int(x["detections"]), float(x["max_score"])) for x in rows] == [
                (label, n, pytest.approx(score, abs=0.0051)) for label, n, score in want]


def test_short_range_plots_every_window_and_exports_them(tmp_path, fleet):
    args = ("--device", "moth-a", "--since", "2024-05-02T04:00", "--until", "2024-05-02T10:00")
    out = tmp_path / "short.html"
    r = report(fleet, *args, "--out", str(out))
    assert r.returncode == 0 and "every window" in r.stdout, r.stdout + r.stderr
    page = Page(out.read_text(encoding="utf-8"))
    assert [(s, k) for s, k, _ in page.figures] == [("fleet", "fleet-levels"), ("fleet", "fleet-labels"),
                                                     *[("moth-a", k) for k in DEVICE_FIGURES]]
    for scope, key, png in page.figures:
        assert_drawn(png, f"{scope}/{key}")
    r = report(fleet, *args, "--out", str(tmp_path / "short"), "--format", "csv")
    assert r.returncode == 0, r.stderr
    import pandas as pd

    levels = pd.read_csv(tmp_path / "short" / "levels.csv")
    n = _sql(fleet.admin, "SELECT count(*) FROM windows WHERE device = 'moth-a' AND start_time >= %s "
                          "AND start_time < %s", datetime(2024, 5, 2, 4, tzinfo=timezone.utc),
             datetime(2024, 5, 2, 10, tzinfo=timezone.utc))[0][0]
    assert len(levels) == n == 36 and set(levels["windows"]) == {1}
    assert len(pd.read_csv(tmp_path / "short" / "bands.csv")) == n * len(BANDS_HZ)


#: Rows each exported table must have: SQL over the seeded database, computed independently.
COUNTS = {
    "summary": "SELECT count(DISTINCT device) FROM windows WHERE {r}",
    "levels": "SELECT count(*) FROM (SELECT DISTINCT device, date_trunc('hour', start_time) FROM windows "
              "WHERE {r}) s",
    "bands": "SELECT count(*) FROM (SELECT DISTINCT device, date_trunc('hour', start_time), band_hz "
             "FROM band_levels WHERE {r}) s",
    "indices_by_hour_of_day": "SELECT count(*) FROM (SELECT DISTINCT device, extract(hour FROM start_time) "
                              "FROM windows WHERE {r}) s",
    "detections_hourly": "SELECT count(*) FROM (SELECT DISTINCT device, date_trunc('hour', start_time), taxonomy, "
                         "label FROM detections_flat WHERE {r}) s",
    "labels": "SELECT count(*) FROM (SELECT DISTINCT device, taxonomy, label FROM detections_flat WHERE {r}) s",
    "heartbeats": "SELECT count(*) FROM heartbeats WHERE time >= %(since)s AND time < %(until)s",
    "gaps": "SELECT count(*) FROM gaps WHERE start_time < %(until)s AND end_time >= %(since)s",
    "clock_steps": "SELECT count(*) FROM clock_steps WHERE detected_at >= %(since)s AND detected_at < %(until)s",
}


def test_csv_and_parquet_exports_hold_the_rows_sql_counts(tmp_path, fleet):
    import pandas as pd

    since, until = (datetime.fromisoformat(t).replace(tzinfo=timezone.utc) for t in RANGE)
    for fmt in ("csv", "parquet"):
        r = report(fleet, "--since", RANGE[0], "--until", RANGE[1], "--out", str(tmp_path / fmt), "--format", fmt)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(f"{t}.{fmt}" for t in TABLES)
    with psycopg.connect(fleet.admin) as con:
        con.execute("SET TIME ZONE 'UTC'")
        want = {t: con.execute(q.replace("{r}", "start_time >= %(since)s AND start_time < %(until)s"),
                               {"since": since, "until": until}).fetchone()[0] for t, q in COUNTS.items()}
    assert want["gaps"] == 2 and want["clock_steps"] == 2 and want["summary"] == 2
    for table in TABLES:
        csv = pd.read_csv(tmp_path / "csv" / f"{table}.csv")
        parquet = pd.read_parquet(tmp_path / "parquet" / f"{table}.parquet")
        assert len(csv) == len(parquet) == want[table], table
    assert str(pd.read_parquet(tmp_path / "parquet" / "levels.parquet")["time"].dtype) == "datetime64[us, UTC]"
    # the hourly levels, bands and detections: computed here with numpy from the delivered windows
    hours = expected_hours(_in_range(fleet_results(), since, until))
    for fmt in ("csv", "parquet"):
        assert_hourly_tables_equal(tmp_path / fmt, fmt, hours)
    # the hourly LAeq is the energy mean of the hour's windows, not their arithmetic mean
    hourly = pd.read_parquet(tmp_path / "parquet" / "levels.parquet")
    arithmetic = {(d, pd.Timestamp(h)): a for d, h, a in _sql(fleet.admin, """
        SELECT device, date_trunc('hour', start_time), avg(laeq_db) FROM windows GROUP BY 1, 2""")}
    assert sum(abs(row.laeq_db - arithmetic[(row.device, row.time)]) > 0.1 for row in hourly.itertuples()
               ) > len(hourly) // 2


def test_hours_rolled_up_come_from_the_rollups_and_hours_sent_windows_since_are_recomputed(tmp_path, fleet):
    """The fixture's server: days 1 and 3 rolled up, day 2 rolled up with half its windows and
    sent the other half since (stale rows in rollup_hourly). The report equals numpy either way."""
    hours = expected_hours(fleet_results())
    rolled = {(d, h): (n, la90) for d, h, n, la90 in _sql(fleet.admin,
                                                          "SELECT device, hour, windows, la90_db FROM rollup_hourly")}
    unrolled = set(_sql(fleet.admin, "SELECT device, hour FROM soundscape_unrolled_hours()"))
    late = set(expected_hours([r for r in fleet_results() if _late(r)]))
    assert unrolled == late and len(late) > 40 and set(rolled) == set(hours)
    for key, h in hours.items():
        n, la90 = rolled[key]
        if key in late:
            assert n < h.windows  # stale: reading it would miss the late windows
        else:
            assert n == h.windows and la90 == pytest.approx(h.la90_db, abs=1e-9)
    # a range that starts and ends within hours: those hours whole
    r = report(fleet, "--since", "2024-05-01T22:30", "--until", "2024-05-02T01:10", "--resolution", "hour",
               "--out", str(tmp_path / "csv"), "--format", "csv")
    assert r.returncode == 0, r.stderr
    first, last = datetime(2024, 5, 1, 22, tzinfo=timezone.utc), datetime(2024, 5, 2, 2, tzinfo=timezone.utc)
    assert_hourly_tables_equal(tmp_path / "csv", "csv", {k: h for k, h in hours.items() if first <= k[1] < last})


def test_empty_range_and_unknown_device_fail_clearly(tmp_path, fleet):
    out = tmp_path / "report.html"
    r = report(fleet, "--since", "2023-01-01", "--until", "2023-01-02", "--out", str(out))
    assert r.returncode == 66 and r.stderr.count("error:") == 1, r.stderr
    assert "no windows between 2023-01-01 00:00 UTC and 2023-01-02 00:00 UTC" in r.stderr
    assert re.search(r"moth-a: \d+ windows from 2024-05-01 00:00 UTC to 2024-05-03 23:5\d UTC", r.stderr), r.stderr
    r = report(fleet, "--device", "moth-z", "--since", RANGE[0], "--until", RANGE[1], "--out", str(out))
    assert r.returncode == 66 and "unknown device 'moth-z'" in r.stderr and "known devices: moth-a, moth-b" in r.stderr
    r = report(fleet, "--device", "moth-b", "--since", "2024-06-01", "--until", "2024-06-02", "--out",
               str(tmp_path / "csv"), "--format", "csv")
    assert r.returncode == 66 and "no windows of 'moth-b' between 2024-06-01 00:00 UTC" in r.stderr
    r = report(fleet, "--since", RANGE[1], "--until", RANGE[0], "--out", str(out))
    assert r.returncode == 64 and "empty range" in r.stderr
    r = report(fleet, "--since", "yesterday-ish", "--out", str(out))
    assert r.returncode == 64 and "cannot read the time 'yesterday-ish'" in r.stderr
    r = report(fleet, "--since", RANGE[0], "--out", str(tmp_path / "no-such-dir" / "report.html"))
    assert r.returncode == 73 and "does not exist" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no page, no directory, no temporary file


def test_a_range_whose_raw_rows_retention_dropped_is_reported_from_the_rollups(tmp_path, retained):
    results = fleet_results()
    assert _sql(retained.admin, "SELECT (SELECT count(*) FROM windows), (SELECT count(*) FROM detections),"
                                " (SELECT count(*) FROM heartbeats), (SELECT count(*) FROM rollup_hourly)")[0] == (
        0, 0, 0, len(expected_hours(results)))
    since, until = (datetime.fromisoformat(t).replace(tzinfo=timezone.utc) for t in RANGE)
    r = report(retained, "--since", RANGE[0], "--until", RANGE[1], "--out", str(tmp_path / "csv"), "--format", "csv")
    assert r.returncode == 0 and "), hourly: wrote" in r.stdout, r.stdout + r.stderr
    assert_hourly_tables_equal(tmp_path / "csv", "csv", expected_hours(_in_range(results, since, until)))

    out = tmp_path / "report.html"
    r = report(retained, "--since", RANGE[0], "--until", RANGE[1], "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = Page(out.read_text(encoding="utf-8"))
    summary = {row["device"]: row for row in page.tables["summary"]}
    for device in DEVICES:
        ws = _in_range(results, since, until, device)
        assert int(summary[device]["windows"]) == len(ws)
        assert float(summary[device]["laeq_db"]) == pytest.approx(
            _energy([w.levels.laeq_db for w in ws], [w.duration_s for w in ws]), abs=0.051)
        assert int(summary[device]["detections_birdnet"]) == sum(d.taxonomy == "birdnet" for w in ws
                                                                 for d in w.detections) > 0
    assert [(s, k) for s, k, _ in page.figures] == [
        ("fleet", "fleet-levels"), ("fleet", "fleet-labels"),
        *[(d, k) for d in DEVICES for k in DEVICE_FIGURES if k != "health"]]  # the heartbeats are gone too
    for scope, key, png in page.figures:
        assert_drawn(png, f"{scope}/{key}")

    # a short range is hourly when its raw windows are gone; every window is refused, saying why
    short = ("--device", "moth-a", "--since", "2024-05-02T04:00", "--until", "2024-05-02T10:00")
    r = report(retained, *short, "--out", str(tmp_path / "short"), "--format", "csv")
    assert r.returncode == 0 and "), hourly: wrote" in r.stdout, r.stdout + r.stderr
    r = report(retained, *short, "--resolution", "window", "--out", str(tmp_path / "short.html"))
    assert r.returncode == 66 and "only 0 of the 36 windows" in r.stderr and "retention" in r.stderr, r.stderr
    # what the database holds, for the error messages: from the rollups
    r = report(retained, "--since", "2023-01-01", "--until", "2023-01-02", "--out", str(tmp_path / "empty.html"))
    n = sum(w.device_id == "moth-a" for w in results)
    assert r.returncode == 66 and f"moth-a: {n} windows from 2024-05-01 00:00 UTC to 2024-05-03 23:50 UTC" in r.stderr
    r = report(retained, "--device", "moth-z", "--since", RANGE[0], "--out", str(tmp_path / "z.html"))
    assert r.returncode == 66 and "known devices: moth-a, moth-b" in r.stderr, r.stderr


def test_a_server_without_rollups_is_told_to_run_db_init(tmp_path, pg_server, monkeypatch):
    import agent.sync as sync_module

    admin = pg_server.create_database()
    real = sync_module._migrations()
    monkeypatch.setattr(sync_module, "_migrations", lambda: tuple(m for m in real if m[0] <= 9))
    assert sync_module.migrate(admin) == 9
    r = agent("report", "--dsn", admin, "--since", RANGE[0], "--until", RANGE[1], "--out", str(tmp_path / "r.html"))
    assert r.returncode == 75 and "schema version 9" in r.stderr and "soundscape-agent db init" in r.stderr, r.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_role_can_only_read_and_a_role_without_select_is_told_what_to_grant(tmp_path, fleet):
    with psycopg.connect(fleet.reader) as con, pytest.raises(psycopg.errors.InsufficientPrivilege):
        con.execute("DELETE FROM clock_steps")
    role = f"no_select_{os.getpid()}"
    with psycopg.connect(fleet.admin, autocommit=True) as con:
        con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-no-select'").format(sql.Identifier(role)))
        con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(conninfo_to_dict(fleet.admin)["dbname"]), sql.Identifier(role)))
    out = tmp_path / "report.html"
    r = agent("report", "--dsn", make_conninfo(fleet.admin, user=role, password="pw-no-select"),
              "--since", RANGE[0], "--until", RANGE[1], "--out", str(out))
    assert r.returncode == 75 and "may not read" in r.stderr and "GRANT SELECT" in r.stderr, r.stderr
    assert "pw-no-select" not in r.stderr + r.stdout and not out.exists()
    r = agent("report", "--dsn", "host=db.example.org dbname=soundscape user=reader sslmode=require",
              "--since", RANGE[0], "--out", str(out))  # refused before any connection is tried
    assert r.returncode == 64 and "is not local" in r.stderr and "--tls off" in r.stderr, r.stderr


def test_missing_report_extra_names_the_extra(tmp_path, fleet):
    blocked = tmp_path / "blocked" / "pandas"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("No module named \'pandas\' (blocked by the test)")\n')
    out = tmp_path / "report.html"
    r = report(fleet, "--since", RANGE[0], "--until", RANGE[1], "--out", str(out),
               env={"PYTHONPATH": str(tmp_path / "blocked")})
    assert r.returncode == 69 and r.stderr.count("error:") == 1, r.stderr
    assert "needs pandas" in r.stderr and "pip install 'soundscape-agent[report]'" in r.stderr
    assert not out.exists()


def test_diagnose_spectrogram_has_axes_and_a_colour_bar(tmp_path):
    import soundfile as sf

    from agent.diagnose import bare_spectrogram_png, spectrogram_png
    from agent.plots import capture_spectrogram_figure
    from tests.audio import RECORDINGS

    samples, rate = sf.read(RECORDINGS / "spinetail_20180919_160000.wav", dtype="float32", frames=2 * 44100)
    when = datetime(2018, 9, 19, 16, 0, 0, tzinfo=timezone.utc)
    width, height = spectrogram_png(samples, rate, tmp_path / "capture.png", device_id="moth-spec",
                                    captured_at=when, laeq_db=51.23)
    bare = bare_spectrogram_png(samples, rate, tmp_path / "bare.png")
    assert bare == ((2 * rate - 512) // 256 + 1, 257)
    image = PIL.open(tmp_path / "capture.png")
    assert image.size == (width, height) and width > bare[0] and height > bare[1]
    assert_drawn(image, "the capture spectrogram")
    assert drawn(PIL.open(tmp_path / "bare.png"))[0] == 0  # the bare image is grey only: the same check fails
    # without matplotlib (a Pi without the report extra) diagnose still writes the bare image
    blocked = tmp_path / "blocked" / "matplotlib"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("No module named \'matplotlib\' (blocked)")\n')
    script = ("import sys, soundfile as sf; from agent.diagnose import spectrogram_png; "
              "x, r = sf.read(sys.argv[1], dtype='float32', frames=2 * 44100); "
              "print(spectrogram_png(x, r, sys.argv[2], device_id='moth-spec'))")
    r = subprocess.run([sys.executable, "-c", script, str(RECORDINGS / "spinetail_20180919_160000.wav"),
                        str(tmp_path / "no-mpl.png")],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "blocked")})
    assert r.returncode == 0 and r.stdout.strip() == str(bare), r.stderr
    assert "soundscape-agent[report]" in r.stderr and (tmp_path / "no-mpl.png").read_bytes() == (
        tmp_path / "bare.png").read_bytes()
    fig = capture_spectrogram_figure(samples, rate, device_id="moth-spec", captured_at=when, laeq_db=51.23)
    spec, bar = fig.axes
    assert spec.get_xlabel() == "time, s" and spec.get_ylabel() == "frequency, kHz"
    assert spec.get_ylim() == (0.0, rate / 2000) and "dB" in bar.get_ylabel()
    title = spec.get_title()
    assert "moth-spec" in title and "2018-09-19 16:00:00 UTC" in title and "LAeq 51.2 dB(A)" in title
