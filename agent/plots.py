"""The figures of ``soundscape-agent report`` and of ``diagnose --spectrogram`` (matplotlib).

matplotlib is the ``report`` extra (``pip install 'soundscape-agent[report]'``): it is imported
inside the functions, never at the agent's start (a Raspberry Pi runs without it). Figures are
:class:`matplotlib.figure.Figure` objects drawn with the Agg canvas, without pyplot (no global
state, no display). Inputs are plain numpy arrays; times are ``datetime64`` in UTC without a
time zone, shown in the time zone the caller names.

Both spectrograms share :func:`draw_level_image` (a false-colour image of levels on two axes with
a dB colour bar): the capture spectrogram of ``diagnose`` (time in s, frequency in kHz) and the
report's long-term spectrogram (time of day, one-third-octave bands on a log frequency axis).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.errors import MissingExtraError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure

_F64 = npt.NDArray[np.float64]
_Times = npt.NDArray[np.datetime64]

#: What to install when matplotlib or pandas is missing.
REPORT_EXTRA_HINT = "pip install 'soundscape-agent[report]'  (pandas, matplotlib, pyarrow)"
#: Colour of cells without data (a missing hour is not silence).
NO_DATA_COLOUR = "#d9d9d9"
#: Figure width, inches (at :data:`DPI`: 1200 px, the report page's width).
WIDTH_IN = 12.0
DPI = 100


def require_matplotlib() -> None:
    """Check that matplotlib can be imported.

    Raises:
        MissingExtraError: it cannot (the ``report`` extra is not installed).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(f"matplotlib is not installed ({e})", REPORT_EXTRA_HINT) from None


def new_figure(height_in: float, width_in: float = WIDTH_IN) -> Figure:
    """An empty figure on the Agg canvas, ``width_in`` × ``height_in`` inches, constrained layout.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (RGBA, :data:`DPI` dots per inch)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


# ------------------------------------------------------------------------------ helpers


def date_numbers(times: _Times) -> _F64:
    """matplotlib date numbers (days since 1970-01-01 UTC, float64) of UTC ``datetime64`` times."""
    from matplotlib import dates as mdates

    return np.asarray(mdates.date2num(np.asarray(times, dtype="datetime64[us]")),  # type: ignore[no-untyped-call]
                      dtype=np.float64)


def time_axis(ax: Axes, tz: str) -> None:
    """Concise date ticks on ``ax``'s x axis, in time zone ``tz`` (IANA name)."""
    from matplotlib import dates as mdates

    locator = mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=12)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))  # type: ignore[no-untyped-call]
    ax.set_xlabel(f"time ({tz})")


def break_at_gaps(times: _Times, *series: _F64, max_step: np.timedelta64) -> tuple[_Times, list[_F64]]:
    """Insert a NaN point wherever consecutive ``times`` are more than ``max_step`` apart, so a
    line plot shows missing data as a gap instead of a straight line across it.

    Args:
        times: sorted, shape (n,).
        series: float arrays of shape (n,).
        max_step: the largest step still drawn as connected.

    Returns:
        (times, series) with one extra point in the middle of every gap.
    """
    t = np.asarray(times, dtype="datetime64[us]")
    if t.size < 2:
        return t, [np.asarray(s, dtype=np.float64) for s in series]
    steps = np.diff(t)
    where = np.nonzero(steps > max_step)[0] + 1
    mids = t[where - 1] + steps[where - 1] // 2
    out = [np.insert(np.asarray(s, dtype=np.float64), where, np.nan) for s in series]
    return np.insert(t, where, mids), out


def _edges(centres: _F64, log: bool) -> _F64:
    """Cell edges around sorted ``centres``: midpoints (geometric ones on a log axis); the outer
    edges mirror the nearest inner ones."""
    c = np.log(centres) if log else np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])
    return np.exp(e) if log else e


def third_octave_edges(centres_hz: _F64) -> _F64:
    """Band edges of one-third-octave bands with these nominal centres, Hz (geometric midpoints:
    ``f_c · 2^(±1/6)`` for a regular series). Shape (n + 1,)."""
    return _edges(np.asarray(centres_hz, dtype=np.float64), log=True)


def draw_level_image(fig: Figure, ax: Axes, x_edges: _F64, y_edges: _F64, level_db: _F64, *,
                     vmin: float, vmax: float, colour_label: str, cmap: str = "magma") -> Colorbar:
    """Draw ``level_db`` as a false-colour image with a colour bar beside ``ax``.

    NaN cells (no data) are drawn in :data:`NO_DATA_COLOUR`.

    Args:
        fig, ax: where to draw.
        x_edges: shape (n_x + 1,), increasing (e.g. seconds or matplotlib date numbers).
        y_edges: shape (n_y + 1,), increasing (e.g. Hz or kHz).
        level_db: shape (n_y, n_x), dB.
        vmin, vmax: the colour scale's limits, dB.
        colour_label: the colour bar's label (quantity and unit).
        cmap: a matplotlib colour map name.

    Returns:
        The colour bar.
    """
    import matplotlib

    colours = matplotlib.colormaps[cmap].with_extremes(bad=NO_DATA_COLOUR)
    z = np.ma.masked_invalid(np.asarray(level_db, dtype=np.float64))
    mesh = ax.pcolormesh(x_edges, y_edges, z, cmap=colours, vmin=vmin, vmax=vmax, shading="flat",
                         rasterized=True)
    bar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04)
    bar.set_label(colour_label)
    return bar


def _db_limits(level_db: _F64, range_db: float | None = None) -> tuple[float, float]:
    """Colour limits: the finite values' 1st and 99.5th percentiles (or top - range_db .. top)."""
    finite = np.asarray(level_db, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    if range_db is not None:
        top = float(finite.max())
        return top - range_db, top
    lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    return (lo, hi) if hi > lo else (lo - 1.0, lo + 1.0)


# ------------------------------------------------------------------------------ capture spectrogram


def stft_levels(samples: npt.NDArray[np.floating[Any]], sample_rate: int, nfft: int = 512
                ) -> tuple[_F64, _F64, _F64]:
    """Power spectral level of each frame and frequency bin, dBFS (a full-scale sine's bin ~ 0 dB).

    Hann window of ``nfft`` samples, hop ``nfft // 2``.

    Args:
        samples: shape (n,), full scale ±1, n >= nfft.
        sample_rate: Hz.
        nfft: frame length, samples.

    Returns:
        (frame start times, s, shape (m,); bin frequencies, Hz, shape (nfft // 2 + 1,);
        levels, dBFS, shape (nfft // 2 + 1, m)) with m = (n - nfft) // (nfft // 2) + 1.

    Raises:
        ValueError: fewer than ``nfft`` samples.
    """
    from agent.analysis.indices import periodic_window

    x = np.asarray(samples, dtype=np.float64)
    if x.size < nfft:
        raise ValueError(f"need at least {nfft} samples for a spectrogram, got {x.size}")
    hop = nfft // 2
    window = periodic_window("hann", nfft)
    frames = np.lib.stride_tricks.sliding_window_view(x, nfft)[::hop] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 / (np.sum(window) / 2) ** 2
    level = 10 * np.log10(np.maximum(power, 1e-30))
    starts = np.arange(level.shape[0], dtype=np.float64) * hop / sample_rate
    freqs = np.asarray(np.fft.rfftfreq(nfft, 1.0 / sample_rate), dtype=np.float64)
    return starts, freqs, np.asarray(level.T, dtype=np.float64)


def capture_spectrogram_figure(samples: npt.NDArray[np.floating[Any]], sample_rate: int, *,
                               device_id: str | None = None, captured_at: datetime | None = None,
                               laeq_db: float | None = None, nfft: int = 512, range_db: float = 80.0) -> Figure:
    """The spectrogram of a capture: time (s) across, frequency (kHz, linear, 0 to Nyquist) up,
    power spectral level per bin (dBFS) in colour from ``range_db`` below the loudest cell to it,
    with its colour bar; the title names the device, the capture time and the LAeq.

    Args:
        samples: shape (n,), float, full scale ±1, n >= nfft.
        sample_rate: Hz.
        device_id: ``[agent] device_id`` (None: not named).
        captured_at: the capture's first sample, timezone-aware (None: not named).
        laeq_db: the capture's LAeq, dB(A) re 20 µPa (None: not named).
        nfft, range_db: as :func:`stft_levels`; the colour scale's span, dB.

    Returns:
        A 10 × 4.5 inch figure: the spectrogram's axes and the colour bar's.

    Raises:
        ValueError: fewer than ``nfft`` samples.
        MissingExtraError: matplotlib is not installed.
    """
    starts, freqs, level = stft_levels(samples, sample_rate, nfft)
    hop_s = (nfft // 2) / sample_rate
    x_edges = np.append(starts, starts[-1] + hop_s) if starts.size else np.array([0.0, hop_s])
    bin_khz = sample_rate / nfft / 1000.0
    y_edges = np.append(freqs / 1000.0 - bin_khz / 2, freqs[-1] / 1000.0 + bin_khz / 2)
    fig = new_figure(4.5, 10.0)
    ax = fig.add_subplot()
    vmin, vmax = _db_limits(level, range_db)
    draw_level_image(fig, ax, x_edges, y_edges, level, vmin=vmin, vmax=vmax,
                     colour_label="power spectral level per bin, dBFS")
    ax.set_ylim(0.0, sample_rate / 2000.0)
    ax.set_xlabel("time, s")
    ax.set_ylabel("frequency, kHz")
    parts = [device_id or "capture"]
    if captured_at is not None:
        parts.append(f"captured {captured_at:%Y-%m-%d %H:%M:%S %Z}".strip())
    if laeq_db is not None and np.isfinite(laeq_db):
        parts.append(f"LAeq {laeq_db:.1f} dB(A)")
    parts.append(f"{len(samples) / sample_rate:g} s at {sample_rate} Hz")
    ax.set_title(" — ".join(parts))
    return fig


# ------------------------------------------------------------------------------ report figures


def levels_figure(series: Sequence[tuple[str, _Times, dict[str, _F64]]], *, tz: str, title: str,
                  max_step: np.timedelta64, ylabel: str = "level, dB(A) re 20 µPa",
                  xlim: tuple[np.datetime64, np.datetime64] | None = None) -> Figure:
    """Levels over time: one line per (series, quantity).

    Args:
        series: (name, times (UTC datetime64, sorted, shape (n,)), {quantity: values, shape (n,)}).
            With one series, lines are named by quantity; with several, by series name and
            quantity.
        tz: time zone of the axis.
        title: the figure's title.
        max_step: points further apart than this are not connected (:func:`break_at_gaps`); up to
            300 points per series are also drawn as markers.
        ylabel: the y axis's label.
        xlim: the time axis's limits, UTC datetime64 (default: what the data span).

    Returns:
        A 12 × 3.8 inch figure with one axes.
    """
    fig = new_figure(3.8)
    ax = fig.add_subplot()
    styles = {"LAFmax": dict(lw=0.9, alpha=0.8), "LAeq": dict(lw=1.4), "LA90": dict(lw=1.0, ls="--")}
    for name, times, values in series:
        names = list(values)
        t, ys = break_at_gaps(times, *(values[n] for n in names), max_step=max_step)
        x = date_numbers(t)
        marker = "o" if len(times) <= 300 else ""  # sparse points (a duty cycle) stay visible on their own
        for quantity, y in zip(names, ys, strict=True):
            label = quantity if len(series) == 1 else f"{name} {quantity}"
            ax.plot(x, y, label=label, marker=marker, ms=3.5, **styles.get(quantity, {}))  # type: ignore[arg-type]
    if xlim is not None:
        ax.set_xlim(*date_numbers(np.array(xlim)))
    time_axis(ax, tz)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", ncols=min(6, max(1, len(ax.lines))), fontsize="small")
    ax.set_title(title)
    return fig


def band_spectrogram_figure(t_edges: _Times, band_hz: _F64, level_db: _F64, *, tz: str, title: str) -> Figure:
    """The long-term spectrogram: one-third-octave band levels over time as a false-colour image,
    frequency on a log axis, a dB colour bar; cells without data grey.

    Args:
        t_edges: time cell edges, UTC datetime64, shape (n_t + 1,), increasing.
        band_hz: nominal band centres, Hz, shape (n_b,), increasing.
        level_db: Leq per band and time cell, dB re 20 µPa, shape (n_b, n_t) (NaN: no data).
        tz: time zone of the axis.
        title: the figure's title.

    Returns:
        A 12 × 4.2 inch figure: the image's axes and the colour bar's.
    """
    fig = new_figure(4.2)
    ax = fig.add_subplot()
    vmin, vmax = _db_limits(level_db)
    draw_level_image(fig, ax, date_numbers(t_edges), third_octave_edges(band_hz), level_db, vmin=vmin, vmax=vmax,
                     colour_label="band Leq, dB re 20 µPa", cmap="magma")
    ax.set_yscale("log")
    ax.set_ylabel("one-third-octave band, Hz")
    time_axis(ax, tz)
    ax.set_title(title)
    return fig


def detections_heatmap_figure(t_edges: _Times, labels: Sequence[str], counts: _F64, *, tz: str,
                              title: str) -> Figure:
    """Detections per hour and label as a heat map, the top label first (at the top).

    Args:
        t_edges: hour edges, UTC datetime64, shape (n_h + 1,).
        labels: row names, most detected first, shape (n_l,).
        counts: detections per label and hour, shape (n_l, n_h); 0 is drawn white.
        tz: time zone of the axis.
        title: the figure's title.

    Returns:
        A 12 × (1.6 + 0.22 n_l) inch figure: the heat map's axes and the colour bar's.
    """
    import matplotlib

    fig = new_figure(1.6 + 0.22 * max(len(labels), 3))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    z = np.ma.masked_less_equal(np.asarray(counts, dtype=np.float64), 0.0)
    mesh = ax.pcolormesh(date_numbers(t_edges), np.arange(len(labels) + 1), z, cmap=colours, vmin=0.5,
                         vmax=max(float(np.max(counts)) if np.size(counts) else 1.0, 1.0), shading="flat",
                         rasterized=True)
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels=list(labels), fontsize="small")
    ax.set_ylim(len(labels), 0)  # the top label at the top
    ax.grid(True, axis="x", alpha=0.3)
    fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04).set_label("detections per hour")
    time_axis(ax, tz)
    ax.set_title(title)
    return fig


def labels_by_device_figure(panels: Sequence[tuple[str, Sequence[str], Sequence[str], _F64]], *,
                            title: str) -> Figure:
    """Detections per label and device, one heat map panel per classifier.

    Args:
        panels: (panel title, labels (rows, most detected first), devices (columns),
            counts shape (n_labels, n_devices)).
        title: the figure's title.

    Returns:
        A 12-inch-wide figure with one axes per panel, side by side, each with its colour bar.
    """
    import matplotlib

    rows = max((len(p[1]) for p in panels), default=3)
    fig = new_figure(1.8 + 0.22 * max(rows, 3))
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for ax, (name, labels, devices, counts) in zip(axes, panels, strict=False):
        z = np.ma.masked_less_equal(np.asarray(counts, dtype=np.float64), 0.0)
        mesh = ax.pcolormesh(np.arange(len(devices) + 1), np.arange(len(labels) + 1), z, cmap=colours, vmin=0.5,
                             vmax=max(float(np.max(counts)) if np.size(counts) else 1.0, 1.0), shading="flat")
        ax.set_xticks(np.arange(len(devices)) + 0.5, labels=list(devices), fontsize="small")
        ax.set_yticks(np.arange(len(labels)) + 0.5, labels=list(labels), fontsize="small")
        ax.set_ylim(len(labels), 0)
        ax.set_title(name)
        fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.06).set_label("detections in the range")
    fig.suptitle(title)
    return fig


#: The report's acoustic indices: column, axis label.
INDICES = (("aci", "ACI (Pieretti et al. 2011)"), ("adi", "ADI (Villanueva-Rivera et al. 2011)"),
           ("ndsi", "NDSI (Kasten et al. 2012), −1 … 1"), ("bi", "BI (Boelman et al. 2007)"))


def indices_by_hour_figure(hours: npt.NDArray[np.int64], mean: dict[str, _F64], low: dict[str, _F64],
                           high: dict[str, _F64], *, tz: str, title: str) -> Figure:
    """Acoustic indices over the day: one panel per index of :data:`INDICES`, hour of day across,
    the mean of every window in that hour of day as a line, the lowest and highest hourly mean
    of a single day as a band.

    Args:
        hours: hour of day 0..23, shape (n,).
        mean, low, high: per index column, shape (n,) each.
        tz: the time zone the hours of day are in.
        title: the figure's title.

    Returns:
        A 12 × 5 inch figure with 2 × 2 axes.
    """
    fig = new_figure(5.0)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (name, label) in zip(axes, INDICES, strict=True):
        ax.fill_between(hours, low[name], high[name], alpha=0.25, step="mid", label="range of days")
        ax.plot(hours, mean[name], marker="o", ms=3, drawstyle="steps-mid", label="mean")
        ax.set_ylabel(label, fontsize="small")
        ax.set_xlim(-0.5, 23.5)
        ax.set_xticks(range(0, 24, 3))
        ax.grid(True, alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel(f"hour of day ({tz})")
    axes[0].legend(fontsize="small", loc="best")
    fig.suptitle(title)
    return fig


def health_figure(beats: _Times, queue_depth: _F64, oldest_age_h: _F64, cpu_temp_c: _F64, *,
                  gaps: Sequence[tuple[np.datetime64, np.datetime64, str]],
                  clock_steps: Sequence[tuple[np.datetime64, float]],
                  tz: str, title: str, xlim: tuple[np.datetime64, np.datetime64] | None = None) -> Figure:
    """Device health from its heartbeats, with gaps (shaded) and clock steps (dashed lines) marked
    on every panel's time axis.

    Args:
        beats: heartbeat times, UTC datetime64, sorted, shape (n,).
        queue_depth: windows not yet synced, shape (n,).
        oldest_age_h: age of the oldest unsynced window at the heartbeat, hours (0: none), shape (n,).
        cpu_temp_c: SoC temperature, °C (NaN: not available), shape (n,).
        gaps: (start, end, reason) per gap, UTC datetime64.
        clock_steps: (when, step in s) per clock step, UTC datetime64.
        tz: time zone of the axis.
        title: the figure's title.
        xlim: the time axis's limits (default: what the data span).

    Returns:
        A 12 × 6 inch figure with 3 axes sharing the time axis.
    """
    fig = new_figure(6.0)
    axes = fig.subplots(3, 1, sharex=True)
    x = date_numbers(beats)
    panels = ((queue_depth, "queue depth, windows"), (oldest_age_h, "oldest unsynced, h"),
              (cpu_temp_c, "CPU temperature, °C"))
    for ax, (values, label) in zip(axes, panels, strict=True):
        ax.plot(x, values, drawstyle="steps-post", lw=1.2, marker=".", ms=2)
        ax.set_ylabel(label, fontsize="small")
        ax.grid(True, alpha=0.3)
        for i, (start, end, reason) in enumerate(gaps):
            s, e = date_numbers(np.array([start, end]))
            ax.axvspan(s, max(e, s + 1 / 1440), color="tab:red", alpha=0.25,
                       label=f"gap ({reason})" if i == 0 or reason != gaps[i - 1][2] else None)
        for i, (when, step) in enumerate(clock_steps):
            at = float(date_numbers(np.array([when]))[0])
            ax.axvline(at, color="tab:purple", ls="--", lw=1.2, label="clock step" if i == 0 else None)
            if ax is axes[0]:
                ax.text(at, 1.01, f"{step:+.1f} s", transform=ax.get_xaxis_transform(), color="tab:purple",
                        fontsize="x-small", ha="center", va="bottom")
    if gaps or clock_steps:
        handles, labels = axes[0].get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axes[0].legend(unique.values(), unique.keys(), fontsize="small", loc="upper left")
    if xlim is not None:
        lo, hi = date_numbers(np.array(xlim))
        axes[-1].set_xlim(lo, hi)
    time_axis(axes[-1], tz)
    fig.suptitle(title)
    return fig


__all__ = ["DPI", "INDICES", "NO_DATA_COLOUR", "REPORT_EXTRA_HINT", "band_spectrogram_figure", "break_at_gaps",
           "capture_spectrogram_figure", "date_numbers", "detections_heatmap_figure", "draw_level_image",
           "health_figure", "indices_by_hour_figure", "labels_by_device_figure", "levels_figure", "new_figure",
           "png_bytes", "require_matplotlib", "stft_levels", "third_octave_edges", "time_axis"]
