"""The page of ``soundscape-agent report``: one self-contained HTML file (figures as base64 PNG).

Built from :class:`agent.report.ReportData` and the tables of :func:`agent.report.build_tables`
(nothing here reads the database): a header, the fleet (summary table, LAeq of every device,
detections per label and device), one section per device with the figures of
:data:`DEVICE_FIGURES` (a sentence instead where there are no data) and its tables, and how the
numbers are made. Figures come from :mod:`agent.plots`; matplotlib and pandas are imported inside
the functions. Docs: docs/reports.md#the-page.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.report import RAW_MAX_SPAN, TAXONOMIES, ReportData, format_time

if TYPE_CHECKING:
    import pandas as pd

#: Figures per device, in page order (a figure without data is replaced by a note).
DEVICE_FIGURES = ("levels", "spectrogram", "detections-audioset", "detections-birdnet", "indices", "health")
#: Longest raw-window grid drawn as a spectrogram; beyond it, windows are energy-averaged per cell.
MAX_GRID_COLUMNS = 3000


def display_label(label: str, taxonomy: str) -> str:
    """A label as the page shows it: BirdNET's ``Scientific name_Common name`` as the common name."""
    if taxonomy == "birdnet" and "_" in label:
        return label.split("_", 1)[1]
    return label


def _utc64(values: Any) -> npt.NDArray[np.datetime64]:
    """pandas UTC times as numpy ``datetime64[us]`` without a zone (what :mod:`agent.plots` takes)."""
    import pandas as pd

    return np.asarray(pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None).to_numpy(),
                      dtype="datetime64[us]")


@dataclass(frozen=True)
class PageFigure:
    """One figure of the page: its key (:data:`DEVICE_FIGURES` or ``fleet-*``), caption and PNG."""

    key: str
    caption: str
    png: bytes


def _span(data: ReportData) -> tuple[np.datetime64, np.datetime64]:
    lv = data.rollup.levels
    lo, hi = _utc64([lv["first_start"].min(), lv["last_end"].max()])
    return lo, hi


def _xlim(data: ReportData) -> tuple[np.datetime64, np.datetime64]:
    """The time axes' limits: the first to the last hour's edges (hourly), or the first window's
    start to the last one's end (every window)."""
    if data.resolution == "hour":
        edges = _hour_edges(data)
        return edges[0], edges[-1]
    return _span(data)


def _plot_times(data: ReportData, times: Any) -> npt.NDArray[np.datetime64]:
    """Where a level is drawn: the middle of its hour (hourly), or the window's start."""
    t = _utc64(times)
    return t + np.timedelta64(30, "m") if data.resolution == "hour" else t


def _hour_edges(data: ReportData) -> npt.NDArray[np.datetime64]:
    """Edges of every UTC hour from the data's first to its last, shape (n_hours + 1,)."""
    lv = data.rollup.levels
    first, last = _utc64([lv["hour"].min(), lv["hour"].max()])
    return np.arange(first, last + np.timedelta64(2, "h"), np.timedelta64(1, "h")).astype("datetime64[us]")


def _time_grid(times: npt.NDArray[np.datetime64], step: np.timedelta64, lo: np.datetime64, n: int
               ) -> npt.NDArray[np.int64]:
    return np.clip(((times - lo) // step).astype(np.int64), 0, n - 1)


def _spectrogram_grid(data: ReportData, bands: pd.DataFrame
                      ) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(time edges, band centres, energy-mean level per band and time cell (NaN: no data)) of one
    device's band levels on a regular time grid: the hours, or (raw windows) the median step
    between windows, widened so there are at most :data:`MAX_GRID_COLUMNS` cells."""
    times = _utc64(bands["time"])
    centres = np.unique(bands["band_hz"].to_numpy(dtype=np.float64))
    if data.resolution == "hour":
        edges = _hour_edges(data)
        step = np.timedelta64(1, "h").astype("timedelta64[us]")
    else:
        starts = np.unique(times)
        lo, hi = _span(data)
        median = np.median(np.diff(starts).astype(np.int64)) if starts.size > 1 else 10_000_000
        step_us = max(int(median), int((hi - lo).astype(np.int64) // MAX_GRID_COLUMNS) + 1, 1)
        step = np.timedelta64(step_us, "us")
        edges = np.arange(lo, hi + step, step)
    n = edges.size - 1
    col = _time_grid(times, step, edges[0], n)
    row = np.searchsorted(centres, bands["band_hz"].to_numpy(dtype=np.float64))
    power = np.zeros((centres.size, n))
    count = np.zeros((centres.size, n))
    np.add.at(power, (row, col), 10.0 ** (bands["leq_db"].to_numpy(dtype=np.float64) / 10.0))
    np.add.at(count, (row, col), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.where(count > 0, 10.0 * np.log10(power / np.maximum(count, 1)), np.nan)
    return edges, centres, level


def _device_figures(data: ReportData, tables: dict[str, pd.DataFrame], device: str) -> list[PageFigure | str]:
    """The figures of one device in :data:`DEVICE_FIGURES` order; a note (str) where there is no data."""
    from agent import plots

    tz, out = data.request.tz, list[PageFigure | str]()
    hourly = data.resolution == "hour"
    res = "hourly" if hourly else "every window"
    lv = tables["levels"][tables["levels"]["device"] == device]
    max_step = np.timedelta64(90, "m") if hourly else _max_window_step(lv)
    fig = plots.levels_figure(
        [(device, _plot_times(data, lv["time"]), {"LAFmax": lv["lafmax_db"].to_numpy(float),
                                                  "LAeq": lv["laeq_db"].to_numpy(float),
                                                  "LA90": lv["la90_db"].to_numpy(float)})],
        tz=tz, title=f"{device}: LAeq, LA90 and LAFmax ({res})", max_step=max_step, xlim=_xlim(data))
    out.append(PageFigure("levels", f"{device}: LAeq (energy mean), LA90 (10th percentile of the hour's "
                                    f"LAeq series) and LAFmax (maximum), {res}.", plots.png_bytes(fig)))
    bands = tables["bands"][tables["bands"]["device"] == device]
    if bands.empty:
        out.append(f"{device}: no one-third-octave band levels in the range (windows of an agent before schema 2).")
    else:
        edges, centres, level = _spectrogram_grid(data, bands)
        fig = plots.band_spectrogram_figure(edges, centres, level, tz=tz,
                                            title=f"{device}: one-third-octave band levels ({res})")
        out.append(PageFigure("spectrogram", f"{device}: long-term spectrogram, band Leq (energy mean per "
                                             f"{'hour' if hourly else 'cell'}); grey: no data.", plots.png_bytes(fig)))
    for taxonomy, name in TAXONOMIES:
        out.append(_heatmap(data, tables, device, taxonomy, name))
    out.append(_indices_figure(tables, device, tz))
    out.append(_health_figure(data, tables, device))
    return out


def _max_window_step(lv: pd.DataFrame) -> np.timedelta64:
    """Raw windows further apart than 1.5 × the usual step (at least 1.5 × a window) are not joined."""
    t = _utc64(lv["time"])
    usual = int(np.median(np.diff(t).astype(np.int64))) if t.size > 1 else 0
    longest = int(float(lv["seconds"].max() if len(lv) else 10.0) * 1e6)
    return np.timedelta64(int(1.5 * max(usual, longest)), "us")


def _heatmap(data: ReportData, tables: dict[str, pd.DataFrame], device: str, taxonomy: str, name: str
             ) -> PageFigure | str:
    from agent import plots

    labels = tables["labels"]
    top = labels[(labels["device"] == device) & (labels["taxonomy"] == taxonomy)].head(data.request.top_labels)
    if top.empty:
        return f"{device}: no {name} detections in the range."
    det = tables["detections_hourly"]
    det = det[(det["device"] == device) & (det["taxonomy"] == taxonomy)]
    edges = _hour_edges(data)
    rows = {label: i for i, label in enumerate(top["label"])}
    det = det[det["label"].isin(rows)]
    counts = np.zeros((len(rows), edges.size - 1))
    col = _time_grid(_utc64(det["time"]), np.timedelta64(1, "h"), edges[0], edges.size - 1)
    np.add.at(counts, (det["label"].map(rows).to_numpy(dtype=np.int64), col), det["detections"].to_numpy(float))
    scaffold = bool(top["scaffold"].any())
    warn = " — SCAFFOLD model (random weights): labels meaningless" if scaffold else ""
    fig = plots.detections_heatmap_figure(edges, [display_label(x, taxonomy) for x in top["label"]], counts,
                                          tz=data.request.tz,
                                          title=f"{device}: {name} detections per hour, top {len(rows)} labels{warn}")
    return PageFigure(f"detections-{taxonomy}", f"{device}: {name} detections per hour and label (most detected "
                                                f"first){warn}.", plots.png_bytes(fig))


def _indices_figure(tables: dict[str, pd.DataFrame], device: str, tz: str) -> PageFigure | str:
    from agent import plots

    ix = tables["indices_by_hour_of_day"]
    ix = ix[ix["device"] == device] if len(ix) else ix
    names = [n for n, _ in plots.INDICES]
    if ix.empty or ix[names].isna().all().all():
        return f"{device}: no acoustic indices in the range."
    fig = plots.indices_by_hour_figure(
        ix["hour_of_day"].to_numpy(np.int64), {n: ix[n].to_numpy(float) for n in names},
        {n: ix[f"{n}_low"].to_numpy(float) for n in names}, {n: ix[f"{n}_high"].to_numpy(float) for n in names},
        tz=tz, title=f"{device}: acoustic indices by hour of day")
    return PageFigure("indices", f"{device}: ACI, ADI, NDSI and BI by hour of day ({tz}): mean of the windows, "
                                 "and the range of the single days' hourly means.", plots.png_bytes(fig))


def _health_figure(data: ReportData, tables: dict[str, pd.DataFrame], device: str) -> PageFigure | str:
    from agent import plots

    b = tables["heartbeats"][tables["heartbeats"]["device"] == device]
    g = tables["gaps"][tables["gaps"]["device"] == device]
    c = tables["clock_steps"][tables["clock_steps"]["device"] == device]
    if b.empty and g.empty and c.empty:
        return f"{device}: no heartbeats, gaps or clock steps in the range."
    gaps = list(zip(_utc64(g["start_time"]), _utc64(g["end_time"]), g["reason"], strict=True))
    steps = list(zip(_utc64(c["detected_at"]), c["step_s"].astype(float), strict=True))
    fig = plots.health_figure(_utc64(b["time"]), b["queue_depth"].to_numpy(float),
                              b["oldest_unsynced_age_s"].to_numpy(float) / 3600, b["cpu_temp_c"].to_numpy(float),
                              gaps=gaps, clock_steps=steps, tz=data.request.tz,
                              title=f"{device}: health (heartbeats), {_count(len(g), 'gap')}, "
                                    f"{_count(len(c), 'clock step')}",
                              xlim=_xlim(data))
    return PageFigure("health", f"{device}: queue depth, age of the oldest unsynced window and CPU temperature "
                                "from the heartbeats; gaps shaded red, clock steps dashed.", plots.png_bytes(fig))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fleet_figures(data: ReportData, tables: dict[str, pd.DataFrame]) -> list[PageFigure]:
    from agent import plots

    hourly = data.resolution == "hour"
    lv = tables["levels"]
    series = []
    steps = []
    for device in data.devices:
        d = lv[lv["device"] == device]
        series.append((device, _plot_times(data, d["time"]), {"LAeq": d["laeq_db"].to_numpy(float)}))
        steps.append(np.timedelta64(90, "m") if hourly else _max_window_step(d))
    fig = plots.levels_figure(series, tz=data.request.tz, max_step=max(steps), xlim=_xlim(data),
                              title=f"Fleet: LAeq per device ({'hourly' if hourly else 'every window'})")
    out = [PageFigure("fleet-levels", "LAeq of every device over the range.", plots.png_bytes(fig))]
    labels = tables["labels"]
    panels = []
    for taxonomy, name in TAXONOMIES:
        sel = labels[labels["taxonomy"] == taxonomy]
        if sel.empty:
            continue
        totals = sel.groupby("label")["detections"].sum().sort_values(ascending=False, kind="stable")
        top = list(totals.index[: data.request.top_labels])
        counts = (sel[sel["label"].isin(top)].pivot_table(index="label", columns="device", values="detections",
                                                           aggfunc="sum", fill_value=0)
                  .reindex(index=top, columns=list(data.devices), fill_value=0))
        scaffold = " — SCAFFOLD model: labels meaningless" if bool(sel["scaffold"].any()) else ""
        panels.append((name + scaffold, [display_label(x, taxonomy) for x in top], list(data.devices),
                       counts.to_numpy(dtype=float)))
    if panels:
        fig = plots.labels_by_device_figure(panels, title="Fleet: detections per label and device (top labels)")
        out.append(PageFigure("fleet-labels", "Detections per label and device over the range, per classifier.",
                              plots.png_bytes(fig)))
    return out


def _cell(value: Any, column: str, tz: str) -> str:
    """One table cell's text: times in ``tz``, dB to 0.1, scores to 0.01, hours to 0.01."""
    import pandas as pd

    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, pd.Timestamp | datetime):
        return format_time(value, tz)
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        digits = 2 if column.endswith(("_h", "score")) else 1
        return f"{float(value):.{digits}f}"
    return str(value)


def _table_html(df: pd.DataFrame, columns: dict[str, str], tz: str, css: str, key: str | None = None) -> str:
    """An HTML table of ``df``'s ``columns`` (name → heading); each cell carries ``data-col``, each
    row ``data-key`` (the value of column ``key``) for machine reading."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = []
    for row in df.to_dict("records"):
        attr = f' data-key="{html.escape(str(row[key]))}"' if key else ""
        cells = "".join(f'<td data-col="{c}">{html.escape(_cell(row[c], c, tz))}</td>' for c in columns)
        body.append(f"<tr{attr}>{cells}</tr>")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


SUMMARY_COLUMNS = {
    "device": "device", "windows": "windows", "audio_h": "audio, h", "first_window": "first window",
    "last_window_end": "last window end", "laeq_db": "LAeq, dB(A)", "la90_db": "LA90, dB(A)",
    "lafmax_db": "LAFmax, dB(A)", "detections_audioset": "AST detections", "detections_birdnet": "BirdNET detections",
    "gaps": "gaps", "gap_h": "gap time, h", "clock_steps": "clock steps", "heartbeats": "heartbeats",
    "max_queue_depth": "max queue depth", "max_cpu_temp_c": "max CPU, °C",
}


def _figure_html(fig: PageFigure | str, device: str | None) -> str:
    """A figure (or a note) of ``device``, or of the fleet when ``device`` is None."""
    scope = 'data-scope="fleet"' if device is None else f'data-device="{html.escape(device)}"'
    if isinstance(fig, str):
        return f'<p class="note" {scope}>{html.escape(fig)}</p>'
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure class="plot" {scope} data-figure="{fig.key}">'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(fig.caption)}">'
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")


_CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:20px auto;max-width:1240px;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #444;padding-bottom:4px;margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.85em}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}
td[data-col=device],td[data-col=label],td[data-col=reason],td[data-col=detail],td[data-col=taxonomy]{text-align:left}
figure{margin:10px 0 18px}figure img{width:100%;max-width:1200px;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}.note{color:#666;font-style:italic}.meta{color:#444;font-size:.9em}
.method li{margin:4px 0}
"""


def _method_html(data: ReportData) -> str:
    raw = f"every window (data span ≤ {RAW_MAX_SPAN.total_seconds() / 3600:g} h)"
    return ("<h2 id=\"method\">How the numbers are made</h2><ul class=\"method\">"
            f"<li>Resolution: {'hourly aggregates' if data.resolution == 'hour' else raw}. Hours are UTC hours, "
            f"shown in {html.escape(data.request.tz)}.</li>"
            "<li>LAeq and band levels of an hour or of the range: energy mean weighted by window duration, "
            "10·lg(Σ tᵢ·10<sup>Lᵢ/10</sup> / Σ tᵢ) (the equivalent continuous level, IEC 61672-1 / ISO 1996-1).</li>"
            "<li>LA90 of an hour: the level exceeded 90 % of the hour, the 10th percentile of its windows' "
            "short-interval LAeq series (the server's rollup, soundscape_rollup_of); of the range: the hours' LA90 "
            "averaged, weighted by their windows. At window resolution: each window's own LA90.</li>"
            "<li>LAFmax: the maximum. Acoustic indices: arithmetic mean of the windows.</li>"
            "<li>Detections: stored detections (each classifier's top-k per window above its threshold) counted "
            "per hour, classifier and label, with the highest score.</li></ul>")


def render_html(data: ReportData, tables: dict[str, pd.DataFrame]) -> str:
    """The self-contained page: header, fleet (summary table, fleet figures), one section per
    device (its :data:`DEVICE_FIGURES`, label, gap and clock-step tables), the method.

    Figures are ``<figure class="plot" data-device=… data-figure=…>`` (``data-scope="fleet"`` for
    the fleet's) with a base64 PNG; table cells carry ``data-col``, rows of the summary and label
    tables ``data-key`` (the device, the label).

    Raises:
        MissingExtraError: matplotlib is missing.
    """
    from agent import plots

    plots.require_matplotlib()
    tz = data.request.tz
    since, until = (html.escape(format_time(t, tz)) for t in (data.request.since, data.request.until))
    n = len(data.devices)
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Soundscape report {since} – '
             f"{until}</title><style>{_CSS}</style></head><body>",
             "<h1>Soundscape report</h1>",
             f'<p class="meta">Range {since} to {until} (windows starting in it); {n} device{"s" if n != 1 else ""}; '
             f"{'hourly aggregates' if data.resolution == 'hour' else 'every window'}; source "
             f"<code>{html.escape(data.source)}</code>; made {html.escape(format_time(data.generated_at, tz))} by "
             "soundscape-agent report.</p>",
             "<p>" + " · ".join(f'<a href="#device-{html.escape(d)}">{html.escape(d)}</a>' for d in data.devices)
             + ' · <a href="#method">method</a></p>',
             '<h2 id="fleet">Fleet</h2>',
             _table_html(tables["summary"], SUMMARY_COLUMNS, tz, "summary", key="device")]
    parts += [_figure_html(f, None) for f in _fleet_figures(data, tables)]
    for device in data.devices:
        parts.append(f'<h2 id="device-{html.escape(device)}">Device {html.escape(device)}</h2>')
        parts += [_figure_html(f, device) for f in _device_figures(data, tables, device)]
        parts.append(_device_tables_html(data, tables, device))
    parts.append(_method_html(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def _device_tables_html(data: ReportData, tables: dict[str, pd.DataFrame], device: str) -> str:
    tz, out = data.request.tz, []
    labels = tables["labels"]
    for taxonomy, name in TAXONOMIES:
        sel = labels[(labels["device"] == device) & (labels["taxonomy"] == taxonomy)]
        if sel.empty:
            continue
        out.append(f"<h3>{html.escape(name)} detections by label (top {data.request.top_labels} of {len(sel)})</h3>")
        out.append(_table_html(sel.head(data.request.top_labels), {"label": "label", "detections": "detections",
                                                                   "max_score": "max score"},
                               tz, f"labels labels-{taxonomy}", key="label"))
    gaps = tables["gaps"][tables["gaps"]["device"] == device]
    if len(gaps):
        out.append("<h3>Gaps</h3>")
        out.append(_table_html(gaps, {"start_time": "start", "end_time": "end", "duration_s": "duration, s",
                                      "reason": "reason", "windows": "windows lost", "detail": "detail"},
                               tz, "gaps"))
    steps = tables["clock_steps"][tables["clock_steps"]["device"] == device]
    if len(steps):
        out.append("<h3>Clock steps</h3>")
        out.append(_table_html(steps, {"detected_at": "detected", "step_s": "step, s",
                                       "clock_synchronised": "NTP synchronised after"}, tz, "clock-steps"))
    return "\n".join(out)


__all__ = ["DEVICE_FIGURES", "MAX_GRID_COLUMNS", "PageFigure", "display_label", "render_html"]
