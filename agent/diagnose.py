"""``soundscape-agent diagnose``: one-shot health checks of a device, safe while the service runs.

A registry of checks (:data:`CHECKS`), each a function of a shared :class:`Context` returning a
:class:`CheckResult` (name, status ``ok``/``warn``/``fail``, value, threshold, hint), run one
after the other, each bounded by its own timeout. The report is a table or one JSON document;
the exit status is 0 when every check is ok, 1 when any warns, 2 when any fails.

Safe beside the running agent: the queue is opened read-only (``mode=ro``: no lock, no write,
no checkpoint: SQLite 3.40's WAL-reset bug needs two *writers*); the capture device is
tried once and, if the service holds it (ALSA: "Device or resource busy"), the service's own
latest window health from the queue is reported instead; PostgreSQL's insert privilege is
checked inside a transaction that is rolled back.

=========  ==============================================================================
check      what, and when it warns / fails
=========  ==============================================================================
config     the TOML file parses and validates (fail: every invalid key with its rule)
capture    the device is found and a ``[ops] test_capture_s`` capture gives level, clipping,
           DC and silence (fail: missing device, digital silence; warn: clipping, DC, hum)
model      loads through the run path, one timed inference on the test capture, estimated
           real-time factor = inference time / hop (warn: RTF >= 0.8: windows will be skipped)
sqlite     ``PRAGMA quick_check``, queue depth, oldest unsynced window, damaged queue files
           the agent moved aside (fail: damaged file; warn: oldest unsynced older than
           ``[ops] queue_warn_age_s``, damaged files kept beside the queue, no queue yet)
postgres   connect, schema version, INSERT privilege in a rolled-back transaction, TLS in use,
           its protocol and the server certificate's expiry (fail: any of the first three;
           warn: the certificate expires within 30 days, or its expiry cannot be read; ok with
           "not configured" when ``[sync] dsn`` is empty)
clock      the kernel's NTP status, ``adjtimex`` (warn: not synchronised)
disk       free space on the queue's filesystem (warn / fail below ``[ops] disk_warn_free_mb``
           / ``disk_fail_free_mb``)
cpu        SoC temperature and Raspberry Pi throttling/under-voltage (warn: temperature >=
           ``[ops] cpu_temp_warn_c``, throttling now or since boot; fail: under-voltage now);
           "not available" (ok) on hosts without a thermal zone or Pi firmware
=========  ==============================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from agent.errors import AgentError
from agent.records import Calibration

log = logging.getLogger("agent.diagnose")

CheckStatus = Literal["ok", "warn", "fail"]
_RANK = {"ok": 0, "warn": 1, "fail": 2}
#: Exit status of ``diagnose`` per worst check status.
EXIT_CODES = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome.

    Attributes:
        name: the check (a key of :data:`CHECKS`).
        status: ``ok``, ``warn`` or ``fail``.
        value: what was measured (JSON-ready: number, string, dict or None).
        threshold: the limit it was held to (same units), or None.
        hint: what to do about a warning or failure (None when ok).
        detail: one human sentence on what was found.
        seconds: how long the check took, s.
    """

    name: str
    status: CheckStatus
    value: Any = None
    threshold: Any = None
    hint: str | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Context:
    """What the checks share: the config path, the parsed config (None when invalid) and the
    test capture (samples, rate) once the capture check has made it."""

    config_path: Path | None
    config: Any = None
    config_error: AgentError | None = None
    capture: tuple[npt.NDArray[np.float32], int] | None = None
    capture_from_service: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Check:
    """A registered check: its function, timeout (s), and whether it needs a valid config (if
    so and the config is invalid, it is reported failed without running)."""

    name: str
    run: Callable[[Context], CheckResult]
    timeout_s: float
    needs_config: bool = False


CHECKS: dict[str, Check] = {}


def check(name: str, timeout_s: float, needs_config: bool = False
          ) -> Callable[[Callable[[Context], CheckResult]], Callable[[Context], CheckResult]]:
    """Register a check function under ``name`` with its timeout, s (decorator)."""

    def register(fn: Callable[[Context], CheckResult]) -> Callable[[Context], CheckResult]:
        CHECKS[name] = Check(name, fn, timeout_s, needs_config)
        return fn

    return register


# ------------------------------------------------------------------------------ the checks


@check("config", timeout_s=10)
def check_config(ctx: Context) -> CheckResult:
    """The config file loads and validates."""
    from agent.config import load_config

    try:
        ctx.config = load_config(ctx.config_path)
    except AgentError as err:
        ctx.config_error = err
        return CheckResult("config", "fail", value=str(ctx.config_path), hint=err.hint, detail=err.message)
    where = str(ctx.config_path) if ctx.config_path else "built-in defaults"
    return CheckResult("config", "ok", value=where, detail=f"configuration valid ({where})")


def _latest_window_health(store_path: str) -> dict[str, Any] | None:
    """The newest window's health from the queue (read-only), or None."""
    from agent.store import inspect_queue

    path = Path(store_path)
    return inspect_queue(path).latest_health if path.exists() else None


@check("capture", timeout_s=30, needs_config=True)
def check_capture(ctx: Context) -> CheckResult:
    """The device is there and delivers sound with sane level, clipping, DC."""
    from agent.analysis.health import assess_health
    from agent.capture import record

    cfg = ctx.config
    seconds = cfg.ops.test_capture_s
    devices: list[str] | None = None
    if cfg.capture.type in ("alsa", "arecord"):
        from agent.capture import list_capture_devices

        try:  # what `arecord -l` enumerates, for the report (the PCM may be a plugin name)
            devices = [str(d) for d in list_capture_devices()]
        except AgentError:
            devices = None
    ctx.extras["capture_started_at"] = datetime.now(timezone.utc)
    try:
        samples, rate = asyncio.run(record(cfg.capture, seconds))
    except AgentError as err:
        if "busy" in err.message.lower():
            latest = _latest_window_health(cfg.store.path)
            if latest is None:
                return CheckResult("capture", "warn",
                                   hint="wait for the service's first window, then run diagnose again",
                                   detail="the device is in use (by the service?) and the queue has no window yet")
            ctx.capture_from_service = True
            flags = latest.get("flags") or []
            status: CheckStatus = "fail" if "silence" in flags else ("warn" if flags else "ok")
            return CheckResult("capture", status, value=latest, threshold=None,
                               hint=None if status == "ok" else _health_hint(flags),
                               detail=f"device held by the running service; its latest window "
                                      f"({latest['start_time']}): RMS {latest.get('rms_dbfs', float('nan')):.1f} dBFS, "
                                      f"flags {flags or 'none'}")
        return CheckResult("capture", "fail",
                           value=getattr(cfg.capture, "pcm", None) or getattr(cfg.capture, "device", None)
                           or getattr(cfg.capture, "path", None), hint=err.hint, detail=err.message)
    ctx.capture = (samples, rate)
    health = assess_health(samples, rate, cfg.health)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    value = {"devices": devices, "seconds": round(len(samples) / rate, 3), "sample_rate": rate,
             "rms_dbfs": round(health.rms_dbfs, 1),
             "peak_dbfs": round(20 * math.log10(peak), 1) if peak > 0 else None,
             "clipping_ratio": health.clipping_ratio, "dc_offset_fs": round(health.dc_offset_fs, 5),
             "hum_share": round(health.hum_share, 3), "flags": list(health.flags)}
    threshold = {"max_clipping_ratio": cfg.health.max_clipping_ratio, "max_dc_offset_fs": cfg.health.max_dc_offset_fs,
                 "silence_dbfs": cfg.health.silence_dbfs, "max_hum_share": cfg.health.max_hum_share}
    flags = list(health.flags)
    status = "fail" if "silence" in flags else ("warn" if flags else "ok")
    return CheckResult("capture", status, value=value, threshold=threshold,
                       hint=None if status == "ok" else _health_hint(flags),
                       detail=f"{value['seconds']:g} s at {rate} Hz: RMS {value['rms_dbfs']} dBFS, "
                              f"flags {', '.join(flags) or 'none'}")


def _health_hint(flags: list[str]) -> str:
    hints = {
        "silence": "digital silence: the microphone delivers zeros or a constant: check the USB cable, "
                   "the AudioMoth's USB microphone firmware and its gain switch",
        "clipping": "the signal clips: lower the AudioMoth gain or [levels] gain setting",
        "dc_offset": "a DC offset: check the microphone chain (AudioMoth firmware removes DC)",
        "mains_hum": "mains hum: move the cable away from power supplies, use a ferrite or a USB isolator",
    }
    return "; ".join(hints[f] for f in flags if f in hints) or "see the flags"


#: Share of the hop the configured classifiers may use together before ``diagnose`` warns:
#: the rest is headroom for acoustics, SQLite, sync and thermal throttling.
MAX_REAL_TIME_FACTOR = 0.8


def _keep_up_hint(timed: list[dict[str, Any]], hop: float) -> str:
    """What to change so that the classifiers keep up, from their measured seconds per window."""
    budget = MAX_REAL_TIME_FACTOR * hop
    tips = []
    ast = next((t for t in timed if t["taxonomy"] == "audioset"), None)
    if ast is not None:
        room = budget - sum(t["inference_s"] / t["every_n_windows"] for t in timed if t is not ast)
        n = math.ceil(ast["inference_s"] / room) if room > 0 else None
        if ast["backend"] != "onnx" or "16-16" not in ast["model_id"]:
            tips.append("use the int8 ONNX export of AST 16-16 (`soundscape-agent model export --model "
                        "MIT/ast-finetuned-audioset-16-16-0.442 --out DIR`, [classifier] type = \"onnx\", file_name = "
                        "\"model_quantized.onnx\"): 2.7x less compute than 10-10")
        if n is not None and n > ast["every_n_windows"]:
            tips.append(f"or classify AudioSet labels on one window in {n} ([classifier] every_n_windows = {n})")
    if any(t["taxonomy"] == "birdnet" for t in timed):
        tips.append("give BirdNET a thread of its own ([birdnet] threads) only if a core is idle")
    tips.append("or lengthen the hop ([windows] length_s / hop_s)")
    return "; ".join(tips)


@check("model", timeout_s=240, needs_config=True)
def check_model(ctx: Context) -> CheckResult:
    """Every configured classifier loads through the run path and is timed on one window;
    whether they keep up together with the hop (the sum of their seconds per window, each
    divided by its ``every_n_windows``, against :data:`MAX_REAL_TIME_FACTOR` of the hop)."""
    cfg = ctx.config
    if not cfg.classifier.enabled and not cfg.birdnet.enabled:
        return CheckResult("model", "ok", value=None, detail="classification disabled ([classifier] enabled = false, "
                                                             "[birdnet] enabled = false)")
    from agent.pipeline import load_classifier_slots

    t0 = time.perf_counter()
    try:
        loaded = [(slot.classifier, slot.every_n_windows)
                  for slot in load_classifier_slots(cfg.classifier, cfg.birdnet)]
    except AgentError as err:
        return CheckResult("model", "fail", value=cfg.classifier.model, hint=err.hint, detail=err.message)
    load_s = time.perf_counter() - t0
    length = cfg.windows.length_s
    hop = cfg.windows.hop_s or length
    if ctx.capture is not None:
        samples, rate = ctx.capture
        n = int(length * rate)
        x = np.resize(samples, n).astype(np.float32) if samples.size else np.zeros(n, np.float32)
        source = "the test capture"
    else:
        rate = 48000
        x = np.zeros(int(length * rate), np.float32)
        source = "silence (no test capture was made)"
    timed = []
    for clf, every_n in loaded:
        clf.classify(x, rate)  # the first call allocates: time the second, as the service runs
        t0 = time.perf_counter()
        clf.classify(x, rate)
        infer_s = time.perf_counter() - t0
        info = clf.info
        timed.append({"taxonomy": clf.taxonomy, "model_id": info.model_id, "model_hash": info.model_hash[:16],
                      "backend": info.backend, "is_scaffold": info.is_scaffold, "inference_s": round(infer_s, 3),
                      "every_n_windows": every_n, "real_time_factor": round(infer_s / (hop * every_n), 3)})
    rtf = sum(t["inference_s"] / t["every_n_windows"] for t in timed) / hop
    keeps_up = rtf < MAX_REAL_TIME_FACTOR
    first = timed[0]
    value = {**{k: first[k] for k in ("model_id", "model_hash", "backend", "is_scaffold")},
             "load_s": round(load_s, 2), "inference_s": first["inference_s"], "window_s": length, "hop_s": hop,
             "real_time_factor": round(rtf, 3), "keeps_up": keeps_up, "classifiers": timed}
    parts = []
    for t in timed:
        scaffold = " (SCAFFOLD test model: random weights, labels meaningless)" if t["is_scaffold"] else ""
        duty = f", one window in {t['every_n_windows']}" if t["every_n_windows"] > 1 else ""
        parts.append(f"{t['taxonomy']}: {t['backend']} model {t['model_id']}{scaffold} {t['inference_s']:.2f} s "
                     f"a {length:g} s window{duty}")
    verdict = ("keeps up with" if keeps_up else "does NOT keep up with")
    return CheckResult(
        "model", "ok" if keeps_up else "warn", value=value, threshold={"max_real_time_factor": MAX_REAL_TIME_FACTOR},
        hint=None if keeps_up else ("windows would be stored without labels (skipped_backlog): "
                                    + _keep_up_hint(timed, hop)),
        detail=f"loaded in {load_s:.1f} s; on {source}: " + "; ".join(parts)
               + f"; together real-time factor {rtf:.2f}: this device {verdict} a {hop:g} s hop")


@check("sqlite", timeout_s=60, needs_config=True)
def check_sqlite(ctx: Context) -> CheckResult:
    """Queue integrity (read-only quick_check), depth, oldest unsynced window, damaged queue
    files moved aside."""
    cfg = ctx.config
    path = Path(cfg.store.path)
    if not path.exists():
        return CheckResult("sqlite", "warn", value=str(path), hint="start the agent once: it creates the queue",
                           detail=f"no queue file at {path} yet")
    from agent.store import damaged_queues, inspect_queue

    try:
        found = inspect_queue(path)
    except sqlite3.Error as err:
        if _read_only_dir(path.parent):
            return CheckResult(
                "sqlite", "fail", value=str(path),
                detail=f"the queue {path} cannot be opened: its directory {path.parent} is read-only ({err})",
                hint=f"the queue itself is not damaged: remount the filesystem holding {path.parent} read-write "
                     "(mount -o remount,rw) or make the directory writable; until then the agent cannot store "
                     "windows (it exits 74)")
        return CheckResult("sqlite", "fail", value=str(path), detail=f"the queue {path} cannot be read: {err}",
                           hint=f"the queue file is damaged or not a queue: restart the agent (systemctl restart "
                                f"soundscape-agent): its start moves {path} and its -wal/-shm files aside as "
                                f"{path.name}.damaged-<UTC time> (kept) and starts a fresh queue; windows not yet "
                                "synced from it do not reach the server")
    if found.stats is None:
        return CheckResult("sqlite", "fail", value={"quick_check": found.quick_check},
                           detail=f"quick_check found damage in {path}",
                           hint=f"stop the agent, copy {path} for analysis, move it aside and start again")
    depth, oldest = found.stats.unsynced, found.stats.oldest_unsynced_start
    age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest is not None else None
    beat = found.latest_heartbeat or {}
    degraded = list(beat.get("degraded") or [])
    moved = [{"name": p.name, "bytes": _file_size(p), "moved_at": t.isoformat(timespec="seconds")}
             for p, t in damaged_queues(path)]
    value = {"path": str(path), "quick_check": "ok", "unsynced": depth,
             "oldest_unsynced_age_s": round(age, 1) if age is not None else None,
             "evicted_unsynced": found.evicted_unsynced, "set_aside": found.stats.set_aside, "degraded": degraded,
             "degraded_reported_at": beat.get("time") if degraded else None, "damaged_files": moved}
    moved_note = (f"{len(moved)} damaged queue file(s) moved aside and kept beside it: "
                  + ", ".join(f"{m['name']} ({m['bytes']} bytes)" for m in moved)) if moved else ""
    limit = cfg.ops.queue_warn_age_s
    if degraded:
        # what the running agent said in its newest heartbeat
        return CheckResult("sqlite", "warn", value=value,
                           detail=f"the agent reported itself degraded ({', '.join(degraded)}) at {beat.get('time')}; "
                                  f"{found.evicted_unsynced} windows evicted unsynced so far"
                                  + (f"; {found.stats.set_aside} rows refused by the server set aside"
                                     if found.stats.set_aside else "")
                                  + (f"; {moved_note}" if moved else ""),
                           hint=_degraded_hint(degraded + (["damaged_files"] if moved else [])))
    if found.stats.set_aside:
        return CheckResult("sqlite", "warn", value=value,
                           detail=f"{found.stats.set_aside} rows the server refused for good are set aside in the "
                                  f"queue (kept, not sent); {depth} windows waiting",
                           hint=_degraded_hint(["set_aside"]))
    if moved:
        return CheckResult("sqlite", "warn", value=value, detail=f"queue intact, {depth} windows waiting; {moved_note}",
                           hint=_degraded_hint(["damaged_files"]))
    if found.evicted_unsynced:
        return CheckResult("sqlite", "warn", value=value,
                           detail=f"{found.evicted_unsynced} windows were evicted before they were synced (queue at "
                                  "its hard cap or disk full); the server has them as gaps",
                           hint="keep the link up or raise [store] max_queue_mb; free space on the queue's disk")
    if age is not None and age > limit:
        return CheckResult("sqlite", "warn", value=value, threshold={"queue_warn_age_s": limit},
                           hint="windows are not leaving the device: see the postgres check and the journal",
                           detail=f"{depth} windows wait; the oldest is {age / 3600:.1f} h old")
    return CheckResult("sqlite", "ok", value=value, threshold={"queue_warn_age_s": limit},
                       detail=f"queue intact, {depth} windows waiting")


def _degraded_hint(reasons: list[str]) -> str:
    hints = {
        "disk_low": "free space on the queue's filesystem (synced windows are being deleted)",
        "queue_full": "the queue hit [store] max_queue_mb or the disk is full: restore the link so it drains",
        "store_failed": "windows could not be stored: see the disk check and the journal",
        "capture_lost": "the microphone is gone: check its USB cable (the agent keeps retrying)",
        "sync_failing": "the server is not taking data: see the postgres check",
        "queue_replaced": "the queue file was damaged: the agent moved it aside and started a fresh one (the server "
                          "has a queue_replaced gap saying what it held)",
        "set_aside": "the server refused some rows for good while taking the rest (a server constraint or "
                     "row-level security: the journal has each row and the server's message); they are kept in the "
                     "queue: fix the server side (e.g. device_roles for an old device_id), then restart the agent, "
                     "which offers them once more",
        "damaged_files": "the damaged queue files are kept for inspection: copy them off the device (sqlite3 FILE "
                         "'.recover' may still give their unsynced windows), then delete them to free space; a "
                         "damaged queue can mean a failing SD card or power cuts (dmesg, the supply)",
    }
    return "; ".join(hints.get(r, r) for r in reasons)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _read_only_dir(directory: Path) -> bool:
    """True when ``directory`` cannot be written: a read-only mount (``ST_RDONLY``, which
    stops root too) or no write permission for this user. SQLite then cannot open a WAL queue
    even read-only (it must create the ``-shm`` file)."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY) or not os.access(directory, os.W_OK)
    except OSError:
        return False


#: The postgres check warns when the server's TLS certificate expires within this many days.
CERT_WARN_DAYS = 30


@check("postgres", timeout_s=60, needs_config=True)
def check_postgres(ctx: Context) -> CheckResult:
    """Connect, schema version, INSERT privilege (rolled back)."""
    cfg = ctx.config
    if not cfg.sync.dsn.strip():
        return CheckResult("postgres", "ok", value=None, detail="sync not configured ([sync] dsn is empty): "
                                                                "results stay on the device")
    from agent.sync import probe_server

    try:
        where, version, tls = asyncio.run(probe_server(cfg.sync, cfg.agent.device_id))
    except AgentError as err:
        return CheckResult("postgres", "fail", value=None, hint=err.hint, detail=err.message)
    value = {"server": where, "schema_version": version, "insert": True, "tls": tls}
    status: CheckStatus = "ok"
    hint = None
    days = tls["certificate_days_left"]
    if not tls["in_use"]:
        over = f"without TLS (sslmode={tls['sslmode']})"
    else:
        over = f"over {tls['protocol'] or 'TLS'} (sslmode={tls['sslmode']}"
        if tls["certificate_not_after"] is not None and days is not None:
            until = datetime.fromisoformat(tls["certificate_not_after"]).strftime("%Y-%m-%d %H:%M")
            left = f"expires in {math.floor(days * 10) / 10:.1f} days" if days >= 0 else "EXPIRED"
            over += f"; server certificate valid until {until} UTC, {left})"
            if days < CERT_WARN_DAYS:
                status = "warn"
                hint = ("renew the server's certificate (a new one from the same CA needs no change on the "
                        "devices) before it expires: from then on verify-full refuses the connection and results "
                        "stay queued on every device")
        else:
            status = "warn"
            over += f"; server certificate expiry unknown: {tls['certificate_error']})"
            hint = "check the server certificate's expiry on the server (openssl x509 -enddate -noout -in <file>)"
    return CheckResult("postgres", status, value=value, hint=hint,
                       threshold={"certificate_days_left": CERT_WARN_DAYS} if tls["in_use"] else None,
                       detail=f"connected to {where} {over}, schema version {version}, INSERT allowed "
                              f"(probe rolled back)")


@check("clock", timeout_s=5)
def check_clock(ctx: Context) -> CheckResult:
    """The kernel says the clock is NTP-synchronised."""
    from agent.ops import clock_state

    synced, error = clock_state()
    if error is not None:
        return CheckResult("clock", "fail", value=None, threshold=True,
                           hint="the agent cannot tell whether its timestamps are right: run it where adjtimex "
                                "is allowed (systemd: no ProtectClock=yes; SystemCallFilter= allowing adjtimex "
                                "and clock_adjtime, as the shipped unit does)",
                           detail=f"the clock's synchronisation state cannot be read ({error})")
    if synced:
        return CheckResult("clock", "ok", value=True, detail="system clock NTP-synchronised")
    return CheckResult("clock", "warn", value=False, threshold=True,
                       hint="window timestamps may be off: enable systemd-timesyncd or chrony and check the "
                            "network; windows record clock_synchronised = false meanwhile",
                       detail="the kernel reports the clock as not synchronised (adjtimex TIME_ERROR)")


@check("disk", timeout_s=5, needs_config=True)
def check_disk(ctx: Context) -> CheckResult:
    """Free space on the queue's filesystem."""
    from agent.ops import disk_free_bytes

    cfg = ctx.config
    usage = disk_free_bytes(cfg.store.path)
    if usage is None:
        return CheckResult("disk", "fail", value=cfg.store.path, detail="free space cannot be read",
                           hint=f"check that {Path(cfg.store.path).parent} exists and is readable")
    free_mb, total_mb = usage[0] / 1e6, usage[1] / 1e6
    value = {"path": str(Path(cfg.store.path).parent), "free_mb": round(free_mb, 1), "total_mb": round(total_mb, 1)}
    threshold = {"warn_below_mb": cfg.ops.disk_warn_free_mb, "fail_below_mb": cfg.ops.disk_fail_free_mb}
    hint = "free space on the SD card / disk holding the queue (old logs: journalctl --vacuum-size=50M)"
    if free_mb < cfg.ops.disk_fail_free_mb:
        return CheckResult("disk", "fail", value=value, threshold=threshold, hint=hint,
                           detail=f"only {free_mb:.1f} MB free: the queue cannot grow")
    if free_mb < cfg.ops.disk_warn_free_mb:
        return CheckResult("disk", "warn", value=value, threshold=threshold, hint=hint,
                           detail=f"{free_mb:.0f} MB free")
    return CheckResult("disk", "ok", value=value, threshold=threshold, detail=f"{free_mb:.0f} MB free")


@check("cpu", timeout_s=10)
def check_cpu(ctx: Context) -> CheckResult:
    """SoC temperature, throttling, under-voltage."""
    from agent.ops import cpu_temperature_c, throttle_flags, throttled_state

    limit = ctx.config.ops.cpu_temp_warn_c if ctx.config is not None else 80.0
    temp = cpu_temperature_c()
    state = throttled_state()
    flags = throttle_flags(state)
    value = {"temperature_c": temp, "throttled": hex(state) if state is not None else None, "flags": list(flags)}
    threshold = {"cpu_temp_warn_c": limit}
    if temp is None and state is None:
        return CheckResult("cpu", "ok", value=value, threshold=threshold,
                           detail="not available on this host (no thermal zone, not a Raspberry Pi)")
    if "under_voltage" in flags:
        return CheckResult("cpu", "fail", value=value, threshold=threshold,
                           hint="under-voltage now: use the official 5.1 V 3 A supply and a short, thick USB-C "
                                "cable; brown-outs corrupt SD cards", detail="the Pi reports under-voltage now")
    if flags or (temp is not None and temp >= limit):
        return CheckResult("cpu", "warn", value=value, threshold=threshold,
                           hint="add a heatsink or case ventilation; check the supply if under-voltage occurred",
                           detail=f"temperature {temp} °C, throttling flags {', '.join(flags) or 'none'}")
    return CheckResult("cpu", "ok", value=value, threshold=threshold,
                       detail=f"temperature {temp if temp is not None else 'n/a'} °C, no throttling")


# ------------------------------------------------------------------------------ spectrogram


def spectrogram_png(samples: npt.NDArray[np.floating[Any]], sample_rate: int, path: Path, nfft: int = 512,
                    range_db: float = 80.0, *, device_id: str | None = None, captured_at: datetime | None = None,
                    laeq_db: float | None = None) -> tuple[int, int]:
    """Write the PNG spectrogram of a capture, drawn like the report's figures
    (:func:`agent.plots.capture_spectrogram_figure`): time (s) across, frequency (kHz) up, power
    spectral level per bin (dBFS, Hann window of ``nfft`` samples, hop ``nfft // 2``) in colour
    from ``range_db`` below the loudest cell up to it, a dB colour bar, and the device, the
    capture time and its LAeq in the title.

    Without matplotlib (the ``report`` extra, which a Pi need not have) it writes the bare
    grayscale image instead (:func:`bare_spectrogram_png`: no axes, no scale) and logs a warning
    naming the extra.

    Args:
        samples: float32/float64, shape (n,), full scale ±1, n >= nfft.
        sample_rate: Hz.
        path: the PNG file to write.
        nfft, range_db: frame length, samples; the colour scale's span, dB.
        device_id, captured_at, laeq_db: for the title (each left out when None).

    Returns:
        (width, height) of the PNG written, pixels.

    Raises:
        ValueError: fewer than ``nfft`` samples.
        OSError: the file cannot be written.
    """
    from agent import plots
    from agent.errors import MissingExtraError

    try:
        plots.require_matplotlib()
    except MissingExtraError as err:
        log.warning("%s: the spectrogram is the bare image, without axes or scale (%s)", err.message, err.hint)
        return bare_spectrogram_png(samples, sample_rate, path, nfft, range_db)
    fig = plots.capture_spectrogram_figure(samples, sample_rate, device_id=device_id, captured_at=captured_at,
                                           laeq_db=laeq_db, nfft=nfft, range_db=range_db)
    png = plots.png_bytes(fig)
    Path(path).write_bytes(png)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # IHDR width, height


def bare_spectrogram_png(samples: npt.NDArray[np.floating[Any]], sample_rate: int, path: Path, nfft: int = 512,
                         range_db: float = 80.0) -> tuple[int, int]:
    """Write the bare grayscale PNG spectrogram of a capture, one pixel per frame and bin (time left
    to right, 0 Hz to Nyquist bottom to top; white = the loudest cell, black = ``range_db`` below
    it or quieter), with the standard library only (zlib; PNG 1.2: signature, IHDR 8-bit
    grayscale, IDAT, IEND): what ``diagnose --spectrogram`` writes without matplotlib.

    Args:
        samples: float32/float64, shape (n,), full scale ±1, n >= nfft.
        sample_rate: Hz (only for the caller's axis; the image spans 0 .. Nyquist).
        path: the PNG file to write.

    Returns:
        (width, height) in pixels: (number of frames, nfft // 2 + 1).

    Raises:
        ValueError: fewer than ``nfft`` samples.
        OSError: the file cannot be written.
    """
    import struct
    import zlib

    from agent.plots import stft_levels

    _, _, level = stft_levels(samples, sample_rate, nfft)
    top = float(level.max())
    pixels = np.clip((level - (top - range_db)) / range_db * 255.0, 0, 255).astype(np.uint8)[::-1]  # 0 Hz at bottom
    height, width = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
    return width, height


def _stored_calibration(store_path: str) -> Calibration | None:
    """The latest calibration ``calibrate`` kept in the queue (read-only, like the sqlite check),
    or None (no queue, none measured, unreadable)."""
    path = Path(store_path)
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            row = con.execute("SELECT measured_at, reference_db, offset_db, sensitivity_dbv, gain_db, vadc"
                              " FROM calibrations ORDER BY measured_at DESC, id DESC LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    measured_at, reference_db, offset_db, sensitivity, gain, vadc = row
    return Calibration(sensitivity_dbv=float(sensitivity), gain_db=float(gain), vadc=float(vadc),
                       offset_db=float(offset_db),
                       calibrated_at=datetime.fromisoformat(measured_at).astimezone(timezone.utc),
                       reference_db=float(reference_db))


def _capture_laeq(ctx: Context, samples: npt.NDArray[np.float32], rate: int) -> float | None:
    """The test capture's LAeq, dB(A), with the calibration ``run`` would apply; None if it
    cannot be computed."""
    from agent.analysis.acoustics import choose_calibration
    from agent.analysis.levels import compute_levels

    try:
        calibration, _ = choose_calibration(ctx.config.levels, _stored_calibration(ctx.config.store.path))
        return float(compute_levels(samples, rate, ctx.config.levels, calibration).laeq_db)
    except (ValueError, AttributeError) as err:
        log.debug("no LAeq for the spectrogram's title: %s", err)
        return None


# ------------------------------------------------------------------------------ running


class _Box(TypedDict, total=False):
    """What a check's thread hands back: its result, or the exception it raised."""

    result: CheckResult
    error: BaseException


def _run_bounded(chk: Check, ctx: Context) -> CheckResult:
    """Run one check in a daemon thread; a check past its timeout fails (the thread is left)."""
    if chk.needs_config and ctx.config is None:
        return CheckResult(chk.name, "fail", hint="fix the configuration first (see the config check)",
                           detail="not checked: the configuration is invalid")
    box: _Box = {}

    def target() -> None:
        try:
            box["result"] = chk.run(ctx)
        except BaseException as err:  # noqa: BLE001 - reported as the check's failure
            box["error"] = err

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, name=f"diagnose-{chk.name}", daemon=True)
    thread.start()
    thread.join(chk.timeout_s)
    elapsed = round(time.perf_counter() - t0, 3)
    if thread.is_alive():
        return CheckResult(chk.name, "fail", threshold={"timeout_s": chk.timeout_s}, seconds=elapsed,
                           detail=f"did not finish within {chk.timeout_s:g} s",
                           hint="something hangs: a device, the network or the disk; see the journal")
    if "error" in box:
        err = box["error"]
        log.debug("check %s raised", chk.name, exc_info=err)
        return CheckResult(chk.name, "fail", seconds=elapsed, detail=f"{type(err).__name__}: {err}",
                           hint="unexpected error: report it with `soundscape-agent -v diagnose`")
    result = box["result"]
    assert isinstance(result, CheckResult)
    return CheckResult(**{**asdict(result), "seconds": elapsed})


def run_checks(config_path: Path | None, names: list[str] | None = None,
               spectrogram: Path | None = None) -> tuple[list[CheckResult], str | None]:
    """Run the named checks (default all, in :data:`CHECKS` order; ``config`` always runs first).

    Args:
        config_path: the TOML file (None: the default path or built-in defaults).
        names: checks to run (None: all).
        spectrogram: write a PNG spectrogram of the test capture here (:func:`spectrogram_png`: axes,
            dB colour bar, device, capture time and LAeq in the title), when the capture check made one.

    Returns:
        (the results in run order, the config's ``device_id`` or None when the config is invalid).

    Raises:
        ValueError: an unknown check name.
    """
    chosen = list(CHECKS) if not names else list(dict.fromkeys(["config", *names]))
    unknown = [n for n in chosen if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    ctx = Context(config_path=config_path)
    results = []
    for name in chosen:
        results.append(_run_bounded(CHECKS[name], ctx))
    if spectrogram is not None and ctx.capture is not None:
        samples, rate = ctx.capture
        width, height = spectrogram_png(samples, rate, spectrogram, device_id=ctx.config.agent.device_id,
                                        captured_at=ctx.extras.get("capture_started_at"),
                                        laeq_db=_capture_laeq(ctx, samples, rate))
        log.info("spectrogram of the test capture: %s (%d x %d px, 0-%d Hz)", spectrogram, width, height, rate // 2)
    if names and "config" not in names:
        results = [r for r in results if r.name != "config" or r.status != "ok"]
    return results, (ctx.config.agent.device_id if ctx.config is not None else None)


def overall(results: list[CheckResult]) -> CheckStatus:
    """The worst status (``ok`` for no results)."""
    return max((r.status for r in results), key=_RANK.__getitem__, default="ok")


def report_json(results: list[CheckResult], device_id: str | None) -> str:
    """One JSON document: device, time, overall status and one object per check."""
    return json.dumps({
        "device_id": device_id, "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": overall(results), "checks": [asdict(r) for r in results],
    }, indent=2, default=str)


def report_table(results: list[CheckResult]) -> str:
    """A readable table: check, status, detail; hints under failing and warning checks."""
    width = max((len(r.name) for r in results), default=5)
    lines = [f"{'check':<{width}}  status  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status.upper():<6}  {r.detail}")
        if r.hint and r.status != "ok":
            lines.append(f"{'':<{width}}          hint: {r.hint}")
    lines.append(f"overall: {overall(results).upper()}")
    return "\n".join(lines)


__all__ = ["CHECKS", "Check", "CheckResult", "Context", "EXIT_CODES", "check", "overall", "report_json",
           "report_table", "run_checks", "bare_spectrogram_png", "spectrogram_png"]
