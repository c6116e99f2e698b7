"""Builders for :class:`agent.records.WindowResult` in tests (no audio involved)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.records import Detection, Levels, ModelInfo, Status, WindowResult

T0 = datetime(2024, 5, 1, 4, 30, 0, 123456, tzinfo=timezone.utc)

MODEL = ModelInfo(
    model_id="MIT/ast-finetuned-audioset-10-10-0.4593",
    model_hash="9f" * 32,
    backend="torch",
    is_scaffold=False,
)

LABELS = ("Bird vocalization, bird call, bird song", "Wind noise (microphone)", "Speech", "Rain", "Insect")


def make_result(index: int = 0, *, device: str = "audiomoth-01", stream: str = "s1", k: int = 3,
                status: Status = Status.CLASSIFIED, start: datetime | None = None,
                model: ModelInfo | None = MODEL, xruns: int = 0) -> WindowResult:
    """Window ``index`` of a 10 s stream starting at ``T0``; ``k`` detections if classified."""
    classified = status is Status.CLASSIFIED
    dets = tuple(
        Detection(rank=r + 1, label=LABELS[r % len(LABELS)], label_index=100 + r, score=0.9 / (r + 1) - 0.0001 * index)
        for r in range(k)
    ) if classified else ()
    return WindowResult(
        key=f"{stream}-{index}",
        device_id=device,
        index=index,
        start_time=start or T0 + timedelta(seconds=10 * index),
        duration_s=10.0,
        sample_rate=48000,
        clock_synchronised=index % 2 == 0,
        xruns=xruns,
        levels=Levels(
            leq_db=41.25 + index / 7,
            leq_series_db=tuple(40.0 + i * 0.3 + index / 11 for i in range(10)),
            peak_dbfs=-12.5 - index / 13,
        ),
        status=status,
        detections=dets,
        model=model if classified else None,
    )


def make_results(n: int, **kw) -> list[WindowResult]:
    """``n`` consecutive windows (indices 0..n-1)."""
    return [make_result(i, **kw) for i in range(n)]
