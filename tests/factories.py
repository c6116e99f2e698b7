"""Builders for :class:`agent.records.WindowResult` in tests (no audio involved)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.records import AcousticIndices, Calibration, Detection, Levels, MicHealth, ModelInfo, Status, WindowResult

T0 = datetime(2024, 5, 1, 4, 30, 0, 123456, tzinfo=timezone.utc)

MODEL = ModelInfo(
    model_id="MIT/ast-finetuned-audioset-10-10-0.4593",
    model_hash="9f" * 32,
    backend="torch",
    is_scaffold=False,
)

LABELS = ("Bird vocalization, bird call, bird song", "Wind noise (microphone)", "Speech", "Rain", "Insect")


CALIBRATION = Calibration(sensitivity_dbv=-38.0, gain_db=44.3, vadc=3.3, offset_db=-1.25,
                          calibrated_at=datetime(2024, 4, 30, 9, 0, tzinfo=timezone.utc), reference_db=94.0)
BANDS_HZ = (25.0, 31.5, 40.0, 50.0, 63.0, 80.0, 100.0, 125.0)


def make_levels(index: int = 0, calibration: Calibration = CALIBRATION) -> Levels:
    """Distinct, plausible levels for window ``index``."""
    lz = 41.25 + index / 7
    return Levels(
        lzeq_db=lz, laeq_db=lz - 6.5, lceq_db=lz - 1.0, lafmax_db=lz + 3.0, lafmin_db=lz - 12.0,
        lasmax_db=lz + 1.0, la10_db=lz - 4.0, la50_db=lz - 7.0, la90_db=lz - 10.0,
        laeq_series_db=tuple(34.0 + i * 0.3 + index / 11 for i in range(10)),
        lzeq_series_db=tuple(40.0 + i * 0.3 + index / 11 for i in range(10)),
        peak_dbfs=-12.5 - index / 13,
        band_centres_hz=BANDS_HZ, band_leq_db=tuple(20.0 + i + index / 17 for i in range(len(BANDS_HZ))),
        calibration=calibration,
    )


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
        levels=make_levels(index),
        indices=AcousticIndices(aci=1500.0 + index, adi=2.1, aei=0.4, bi=5.5 + index / 3, ndsi=0.25,
                                hf=0.8, ht=0.95),
        health=MicHealth(clipping_ratio=0.0, dc_offset_fs=1e-4, rms_dbfs=-45.0 + index / 9, hum_share=0.01,
                         flags=("mains_hum",) if index % 5 == 4 else ()),
        status=status,
        detections=dets,
        models=(model,) if classified and model is not None else (),
        classifier_status=(("audioset", status),) if status is not Status.DISABLED else (),
    )


def make_results(n: int, **kw) -> list[WindowResult]:
    """``n`` consecutive windows (indices 0..n-1)."""
    return [make_result(i, **kw) for i in range(n)]


BIRDNET_MODEL = ModelInfo(
    model_id="BirdNET-GLOBAL-6K-V2.4 (CC BY-NC-SA 4.0, non-commercial)", model_hash="b1" * 32, backend="litert",
    is_scaffold=False, taxonomy="birdnet",
)
SPECIES = ("Cranioleuca erythrops_Red-faced Spinetail", "Cranioleuca curtata_Ash-browed Spinetail")


def make_two_classifier_result(index: int = 0, *, ast: Status = Status.CLASSIFIED,
                               birdnet: Status = Status.CLASSIFIED, **kw) -> WindowResult:
    """Window ``index`` seen by AST (``ast`` status, 3 AudioSet labels if classified) and by
    BirdNET (``birdnet`` status, 2 species with their chunk offsets if classified)."""
    from dataclasses import replace

    from agent.records import overall_status

    base = make_result(index, status=Status.CLASSIFIED, **kw)
    dets = base.detections if ast is Status.CLASSIFIED else ()
    if birdnet is Status.CLASSIFIED:
        dets += tuple(Detection(rank=r + 1, label=SPECIES[r], label_index=1500 + r, score=0.8 - 0.3 * r,
                                taxonomy="birdnet", offset_s=3.0 * r) for r in range(2))
    models = tuple(m for m, s in ((MODEL, ast), (BIRDNET_MODEL, birdnet)) if s is Status.CLASSIFIED)
    return replace(base, status=overall_status([ast, birdnet]), detections=dets, models=models,
                   classifier_status=(("audioset", ast), ("birdnet", birdnet)))
