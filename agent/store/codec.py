"""The outbox's row <-> record codec: :class:`~agent.records.WindowResult`, events and
heartbeats to SQLite column values and JSON documents, and back. Pure functions, no I/O.

Timestamps are ISO-8601 UTC text with microseconds (``2024-05-01T12:00:00.000000+00:00``), so
text order is time order; they are read back as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from agent.records import (
    AcousticIndices,
    Calibration,
    ClockStep,
    Detection,
    Gap,
    Levels,
    MicHealth,
    ModelInfo,
    Status,
    WindowResult,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a record class (a dataclass)

#: The ``windows`` columns :func:`_window_row` fills (then ``stored_at``) and
#: :func:`_result_from_row` reads, in this order. ``leq_db`` / ``leq_series_db`` hold LZeq
#: (``Levels.lzeq_db``): PostgreSQL renamed them (schema 7), the local queue keeps the names
#: on purpose, so that the release the Ansible role rolls back to can still read the queue.
_WINDOW_COLUMNS = (
    "key, device_id, window_index, start_time, duration_s, sample_rate, clock_synchronised,"
    " xruns, leq_db, leq_series_db, peak_dbfs, status, model_id, model_hash, model_backend,"
    " model_is_scaffold, indicators, models, classifier_status"
)


def _to_text(t: datetime) -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()} cannot be stored: records hold UTC times")
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _from_text(s: str) -> datetime:
    return datetime.fromisoformat(s).astimezone(timezone.utc)


def nan_to_none(x: float) -> float | None:
    """A measured value for a database column: NaN (undefined, e.g. an index of digital
    silence) becomes NULL (``None``), which SQL aggregates (avg, percentiles) skip and read
    back as NaN here; SQLite would turn NaN into NULL on its own, PostgreSQL would keep a NaN
    that poisons aggregates. Used by the outbox and by the sync."""
    x = float(x)
    return None if math.isnan(x) else x


def _unreal(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _plain(value: Any) -> Any:
    """A record field as JSON: tuples as lists, datetimes as ISO text."""
    if isinstance(value, datetime):
        return _to_text(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _record_json(record: Any) -> str:
    """A frozen record (:class:`Heartbeat`, :class:`Gap`, :class:`ClockStep`) as one JSON
    object: field names as keys, datetimes as ISO text, tuples as lists."""
    return json.dumps({f.name: _plain(getattr(record, f.name)) for f in dataclasses.fields(record)}, allow_nan=False)


def _record_from_json(cls: type[T], payload: str) -> T:
    """The inverse of :func:`_record_json`. Keys the record does not have are ignored and
    fields missing from the document take their defaults (a payload queued by an older or
    newer agent still reads)."""
    hints = typing.get_type_hints(cls)
    doc = json.loads(payload)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        value, hint = doc[f.name], hints[f.name]
        if value is not None and (hint is datetime or datetime in typing.get_args(hint)):
            value = _from_text(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


#: Event records queued in the ``events`` table, by kind.
EVENT_KINDS: dict[str, type] = {"gap": Gap, "clock_step": ClockStep}


def _event_kind(event: Gap | ClockStep) -> str:
    for kind, cls in EVENT_KINDS.items():
        if isinstance(event, cls):
            return kind
    raise TypeError(f"not an event record: {type(event).__name__}")


def _indicators_json(r: WindowResult) -> str:
    """Everything of a window's analysis beyond the schema-1 columns, as one JSON document:
    ``{"levels": {...}, "calibration": {...}, "indices": {...} | null, "health": {...} | null}``
    (field names as in :mod:`agent.records`; NaN / ±inf as JSON's NaN / Infinity tokens)."""
    lv = r.levels
    levels = {f.name: _plain(getattr(lv, f.name)) for f in dataclasses.fields(Levels)
              if f.name not in ("lzeq_db", "lzeq_series_db", "peak_dbfs", "calibration")}
    doc = {
        "levels": levels,
        "calibration": {f.name: _plain(getattr(lv.calibration, f.name)) for f in dataclasses.fields(Calibration)},
        "indices": None if r.indices is None else dataclasses.asdict(r.indices),
        "health": None if r.health is None else {f.name: _plain(getattr(r.health, f.name))
                                                  for f in dataclasses.fields(MicHealth)},
    }
    return json.dumps(doc, allow_nan=True, separators=(",", ":"))


def _levels_from(
    doc: dict[str, Any] | None, lzeq_db: float, lzeq_series: tuple[float, ...], peak_dbfs: float
) -> Levels:
    """:class:`Levels` from the schema-1 columns and the ``indicators`` document (None for a
    window stored by schema 1: its other indicators were never computed, so NaN / empty)."""
    nan = math.nan
    if doc is None:
        return Levels(lzeq_db=lzeq_db, laeq_db=nan, lceq_db=nan, lafmax_db=nan, lafmin_db=nan, lasmax_db=nan,
                      la10_db=nan, la50_db=nan, la90_db=nan, laeq_series_db=(), lzeq_series_db=lzeq_series,
                      peak_dbfs=peak_dbfs, band_centres_hz=(), band_leq_db=(),
                      calibration=Calibration(sensitivity_dbv=nan, gain_db=nan, vadc=nan))
    cal = dict(doc["calibration"])
    if cal.get("calibrated_at") is not None:
        cal["calibrated_at"] = _from_text(cal["calibrated_at"])
    # the other Levels fields by name (floats, and tuples of floats for the series and bands)
    values: dict[str, Any] = {k: tuple(float(x) for x in v) if isinstance(v, list) else float(v)
                              for k, v in doc["levels"].items()}
    return Levels(lzeq_db=lzeq_db, lzeq_series_db=lzeq_series, peak_dbfs=peak_dbfs,
                  calibration=Calibration(**cal), **values)


def _window_row(r: WindowResult, stored_at: str) -> tuple[Any, ...]:
    m = r.model
    return (
        r.key,
        r.device_id,
        int(r.index),
        _to_text(r.start_time),
        float(r.duration_s),
        int(r.sample_rate),
        int(bool(r.clock_synchronised)),
        int(r.xruns),
        nan_to_none(r.levels.lzeq_db),
        # allow_nan: json writes NaN / Infinity tokens, which json.loads reads back.
        json.dumps([float(v) for v in r.levels.lzeq_series_db], allow_nan=True),
        nan_to_none(r.levels.peak_dbfs),
        Status(r.status).value,
        m.model_id if m else None,
        m.model_hash if m else None,
        m.backend if m else None,
        int(bool(m.is_scaffold)) if m else None,
        _indicators_json(r),
        json.dumps([dataclasses.asdict(mi) for mi in r.models]),
        json.dumps({t: Status(st).value for t, st in r.classifier_status}),
        stored_at,
    )


def _result_from_row(row: tuple[Any, ...], detections: tuple[Detection, ...]) -> WindowResult:
    (key, device_id, index, start_time, duration_s, sample_rate, clock_sync, xruns, leq_db,
     leq_series, peak_dbfs, status, model_id, model_hash, model_backend, model_is_scaffold, indicators,
     models_json, classifier_status_json) = row
    if models_json is not None:  # schema 5
        models = tuple(ModelInfo(**m) for m in json.loads(models_json))
    elif model_id is not None:
        models = (ModelInfo(model_id=model_id, model_hash=model_hash, backend=model_backend,
                            is_scaffold=bool(model_is_scaffold)),)
    else:
        models = ()
    classifier_status = tuple((t, Status(v)) for t, v in json.loads(classifier_status_json or "{}").items())
    order = {t: i for i, (t, _) in enumerate(classifier_status)}
    detections = tuple(sorted(detections, key=lambda d: (order.get(d.taxonomy, len(order)), d.rank)))
    doc = json.loads(indicators) if indicators is not None else None
    health = None
    if doc is not None and doc.get("health") is not None:
        h = doc["health"]
        health = MicHealth(**{**h, "flags": tuple(h["flags"])})
    return WindowResult(
        key=key,
        device_id=device_id,
        index=int(index),
        start_time=_from_text(start_time),
        duration_s=float(duration_s),
        sample_rate=int(sample_rate),
        clock_synchronised=bool(clock_sync),
        xruns=int(xruns),
        levels=_levels_from(doc, _unreal(leq_db), tuple(float(v) for v in json.loads(leq_series)),
                            _unreal(peak_dbfs)),
        status=Status(status),
        detections=detections,
        models=models,
        indices=AcousticIndices(**doc["indices"]) if doc is not None and doc.get("indices") is not None else None,
        health=health,
        classifier_status=classifier_status,
    )
