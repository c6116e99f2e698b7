"""Compute per window, counted two ways, and the Raspberry Pi 4 ESTIMATE built on it.

MACs (multiply-accumulates) of one AST forward pass, i.e. of one 10 s window:

- **analytically** from the model's ``config.json`` (:func:`ast_macs`): AST is a ViT-B/16 on
  a 128 × 1024 log-mel "image" cut into 16 × 16 patches with stride 10 in both axes, so
  ``f = (128 − 16) / 10 + 1 = 12`` by ``t = (1024 − 16) / 10 + 1 = 101`` = 1212 patches, plus
  the CLS and distillation tokens: N = 1214 tokens of width d = 768, 12 layers, MLP width 3072.
  Per layer: Q, K, V and output projections 4·N·d², MLP 2·N·d·d_ff, attention scores and
  weighted sum 2·N²·d; plus the patch embedding (1212 · 256 · 768) and the classifier (768 · 527);
- **measured** by running the model once under ``torch.utils.flop_counter.FlopCounterMode``
  with eager attention (so the attention products are counted as ``bmm``), FLOPs / 2
  (:func:`measured_macs`; needs torch, run in the main virtualenv).

The Raspberry Pi 4 numbers are an ESTIMATE: MACs per window divided by throughputs that were
*measured elsewhere on a Pi 4* and published (:data:`PI4_REFERENCES`), each converted to
MAC/s with the MACs of the model it was measured on. No Pi 4 was used here.

Usage: ``python benchmarks/estimate.py --model DIR`` prints a model's MACs as JSON (run.py calls
it); ``python benchmarks/estimate.py --from benchmarks/results/results.json [--write]`` recomputes
the Pi 4 ESTIMATE per variant (``pi4_by_variant``) from a results file without re-running the
benchmark (``--write``: into the file, and ``results.md`` re-rendered).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


def vit_macs(*, patches: int, extra_tokens: int, patch_inputs: int, hidden: int, intermediate: int,
             layers: int, n_labels: int) -> dict[str, int]:
    """MACs of one forward pass of a ViT encoder with a linear classifier on pooled tokens.

    Args:
        patches: number of patches (tokens from the input).
        extra_tokens: tokens added to them (CLS, distillation).
        patch_inputs: values per patch (channels × patch height × patch width).
        hidden: token width d.
        intermediate: MLP width d_ff.
        layers: encoder layers.
        n_labels: classifier outputs.

    Returns:
        ``{"patch_embedding", "projections", "mlp", "attention", "classifier", "total"}``, in MACs.
        Element-wise work (LayerNorm, GELU, softmax, residual adds) is not counted: it is O(N·d)
        per layer, under 0.5 % of the total here.
    """
    n = patches + extra_tokens
    parts = {
        "patch_embedding": patches * patch_inputs * hidden,
        "projections": layers * 4 * n * hidden * hidden,
        "mlp": layers * 2 * n * hidden * intermediate,
        "attention": layers * 2 * n * n * hidden,
        "classifier": hidden * n_labels,
    }
    parts["total"] = sum(parts.values())
    return parts


def ast_macs(config: dict) -> dict:
    """Analytic MACs of one AST forward pass from its ``config.json`` (see module docstring).

    Returns:
        ``{"tokens", "patches", "formula", "parts": {...}, "total"}``.
    """
    patch = int(config.get("patch_size", 16))
    f_dim = (int(config["num_mel_bins"]) - patch) // int(config["frequency_stride"]) + 1
    t_dim = (int(config["max_length"]) - patch) // int(config["time_stride"]) + 1
    patches = f_dim * t_dim
    d, d_ff, layers = int(config["hidden_size"]), int(config["intermediate_size"]), int(config["num_hidden_layers"])
    n_labels = len(config["id2label"])
    parts = vit_macs(patches=patches, extra_tokens=2, patch_inputs=patch * patch, hidden=d,
                     intermediate=d_ff, layers=layers, n_labels=n_labels)
    n = patches + 2
    return {
        "patches": patches, "patch_grid": [f_dim, t_dim], "tokens": n, "hidden": d, "intermediate": d_ff,
        "layers": layers, "n_labels": n_labels,
        "formula": (f"L·(4·N·d² + 2·N·d·d_ff + 2·N²·d) + P·p²·d + d·labels with L={layers}, N={n} "
                    f"(P={f_dim}×{t_dim}={patches} patches + 2), d={d}, d_ff={d_ff}, p={patch}, labels={n_labels}"),
        "parts": parts, "total": parts["total"],
    }


def measured_macs(model_dir: Path) -> dict:
    """MACs of one forward pass of the model in ``model_dir``, counted by torch.

    Runs ``ASTForAudioClassification`` (eager attention) on a (1, 1024, 128) zero input under
    ``FlopCounterMode`` and halves its FLOP count (torch counts a multiply-add as 2 FLOPs).

    Returns:
        ``{"total": MACs, "by_op": {aten op: MACs}}``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ASTForAudioClassification

    model = ASTForAudioClassification.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_values=torch.zeros(1, int(model.config.max_length), int(model.config.num_mel_bins)))
    by_op = {str(k): int(v) // 2 for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()) // 2, "by_op": by_op,
            "method": "torch.utils.flop_counter.FlopCounterMode, eager attention, FLOPs / 2"}


# ------------------------------------------------------------------------------ Pi 4


NCNN_URL = "https://github.com/Tencent/ncnn/blob/master/benchmark/README.md"
NCNN_SECTION = "Raspberry Pi 4 Model B Broadcom BCM2711B0, Cortex-A72 (ARMv8) (1.8GHz x 4)"

#: ViT-B/32 at 384 × 384 (ncnn's benchmark/models/vision_transformer.param: 32×32 patches,
#: 145 tokens, 12 layers, d 768, MLP 3072, 1000 classes).
VIT_B32_384_MACS = vit_macs(patches=144, extra_tokens=1, patch_inputs=32 * 32 * 3, hidden=768,
                            intermediate=3072, layers=12, n_labels=1000)["total"]
#: ResNet-50 at 224 × 224: 4.1 G multiply-adds (torchvision's model table: 4.09 "GFLOPS",
#: counted as multiply-adds; He et al. 2016, Table 1: 3.8 × 10⁹).
RESNET50_MACS = 4.09e9


@dataclass(frozen=True)
class PiReference:
    """A throughput measured on a Raspberry Pi 4 and published.

    Attributes:
        name: what was measured.
        precision: ``fp32`` or ``int8``.
        threads: threads used.
        ms: published mean latency per inference, ms.
        macs: MACs of that model per inference.
        source: where it is published.
    """

    name: str
    precision: str
    threads: int
    ms: float
    macs: float
    source: str

    @property
    def gmac_per_s(self) -> float:
        """Throughput, G MAC/s."""
        return self.macs / (self.ms / 1000.0) / 1e9


_SRC = f"Tencent/ncnn benchncnn, {NCNN_URL}, section \"{NCNN_SECTION}\""
#: Published Pi 4 (Cortex-A72 @ 1.8 GHz, 4 cores) latencies, ncnn benchncnn (fp32 NEON, and
#: ncnn's int8 kernels). ViT-B/32: a transformer with the same layer shapes as AST but 145
#: tokens instead of 1214 (lower arithmetic intensity: a pessimistic basis); ResNet-50:
#: convolutions lowered to large GEMMs (an optimistic basis for AST's large GEMMs).
PI4_REFERENCES: tuple[PiReference, ...] = (
    PiReference("ViT-B/32 384x384 (vision_transformer)", "fp32", 1, 6605.73, VIT_B32_384_MACS, _SRC),
    PiReference("ViT-B/32 384x384 (vision_transformer)", "fp32", 4, 1909.21, VIT_B32_384_MACS, _SRC),
    PiReference("ResNet-50 224x224 (resnet50)", "fp32", 1, 534.11, RESNET50_MACS, _SRC),
    PiReference("ResNet-50 224x224 (resnet50)", "fp32", 4, 262.83, RESNET50_MACS, _SRC),
    PiReference("ResNet-50 224x224 (resnet50_int8)", "int8", 1, 423.96, RESNET50_MACS, _SRC),
    PiReference("ResNet-50 224x224 (resnet50_int8)", "int8", 4, 196.65, RESNET50_MACS, _SRC),
)


def _ref(name_part: str, precision: str, threads: int) -> PiReference:
    return next(r for r in PI4_REFERENCES
                if name_part in r.name and r.precision == precision and r.threads == threads)


def pi4_rate(precision: str, threads: int) -> tuple[float, float]:
    """(pessimistic, optimistic) Raspberry Pi 4 throughput, G MAC/s, for a transformer or CNN
    at ``precision`` on ``threads`` threads (see :func:`pi4_estimate` for the basis)."""

    def rate(name: str, prec: str) -> float:
        if threads in (1, 4):
            return _ref(name, prec, threads).gmac_per_s
        one, four = _ref(name, prec, 1).gmac_per_s, _ref(name, prec, 4).gmac_per_s
        return one + (four - one) * (threads - 1) / 3

    vit, r50, r50_8 = rate("ViT", "fp32"), rate("resnet50)", "fp32"), rate("resnet50_int8", "int8")
    return (vit, r50) if precision == "fp32" else (vit * r50_8 / r50, r50_8)


def pi4_estimate(macs_per_window: float, window_s: float = 10.0) -> dict:
    """ESTIMATED seconds per window and real-time factor of AST on a Raspberry Pi 4.

    For 1, 3 and 4 inference threads (torch backend default 1; onnx backend default "all cores
    but one" = 3 on a Pi 4; 4 = every core):

    - fp32: optimistic = MACs / ResNet-50 fp32 rate, pessimistic = MACs / ViT-B/32 fp32 rate;
    - int8: optimistic = MACs / ResNet-50 int8 rate; pessimistic = MACs / (ViT-B/32 fp32 rate ×
      the int8/fp32 speed-up ncnn measured for ResNet-50 at that thread count). The Cortex-A72 is
      ARMv8.0: no SDOT/UDOT dot-product instructions, so int8 gains little over fp32
      (1.26× on 1 thread, 1.34× on 4 in the ResNet-50 figures);
    - 3 threads were not published: each rate is interpolated linearly between the 1- and
      4-thread ones (an assumption, said so in the row).

    Args:
        macs_per_window: MACs of one window (one AST pass for a 10 s window).
        window_s: window length, s.

    Returns:
        a JSON-able dict with the basis, the arithmetic and the estimates (all marked ESTIMATE).
    """
    rows = []
    for threads in (1, 3, 4):
        for precision in ("fp32", "int8"):
            slow, fast = pi4_rate(precision, threads)
            t_fast = macs_per_window / (fast * 1e9)
            t_slow = macs_per_window / (slow * 1e9)
            rows.append({
                "precision": precision, "threads": threads,
                "interpolated": threads not in (1, 4),
                "gmac_per_s_range": [round(slow, 2), round(fast, 2)],
                "seconds_per_window_range": [round(t_fast, 1), round(t_slow, 1)],
                "rtf_range": [round(t_fast / window_s, 2), round(t_slow / window_s, 2)],
                "max_coverage_range": [round(min(1.0, window_s / t_slow), 2), round(min(1.0, window_s / t_fast), 2)],
                "arithmetic": (f"{macs_per_window / 1e9:.1f} GMAC / {fast:.2f} GMAC/s = {t_fast:.1f} s … "
                               f"{macs_per_window / 1e9:.1f} GMAC / {slow:.2f} GMAC/s = {t_slow:.1f} s"),
            })
    return {
        "label": "ESTIMATE (not measured on a Pi 4)",
        "device": "Raspberry Pi 4 Model B: Broadcom BCM2711, 4 × Cortex-A72 (ARMv8.0-A, NEON, no dot-product "
                  "instructions) at 1.5 GHz (BCM2711B0 boards) or 1.8 GHz (BCM2711C0 and later firmware)",
        "macs_per_window": macs_per_window,
        "references": [{**asdict(r), "gmac_per_s": round(r.gmac_per_s, 2)} for r in PI4_REFERENCES],
        "reference_macs_note": (f"ViT-B/32 384x384 MACs computed here with the same formula: "
                                f"{VIT_B32_384_MACS / 1e9:.2f} G (145 tokens); ResNet-50: {RESNET50_MACS / 1e9:.2f} G "
                                "(torchvision model table; He et al. 2016 give 3.8 G)"),
        "clock_note": "the references ran at 1.8 GHz; a 1.5 GHz board is ~1.2× slower than these estimates",
        "rows": rows,
    }


# ------------------------------------------------------------------------------ per variant

#: EfficientNet-B0 on the same Pi 4, ncnn benchncnn (same section as :data:`PI4_REFERENCES`):
#: 129.73 ms on 1 thread, 74.19 ms on 4; 0.39 G multiply-adds (Tan & Le, "EfficientNet", ICML
#: 2019, Table 2). BirdNET V2.4 is an EfficientNet-style CNN of nearly the same size (0.40 GMAC
#: per 3 s chunk, counted from its graph): a cross-check of the range, not a bound.
EFFICIENTNET_B0_MACS = 0.39e9
EFFICIENTNET_B0_PI4_MS = {1: 129.73, 4: 74.19}
#: The same networks, one thread, on an x86 core (ncnn benchncnn, section "AMD Ryzen
#: Threadripper 3970X (Zen2 3.7 GHz ~ 4.5 GHz x 32)") and on the Pi 4 (1.8 GHz): the Pi took
#: this many times longer, ms / ms. Used to carry this machine's measured acoustics (numpy and
#: scipy filters, FFTs: not MAC-counted) over to a Pi 4.
NCNN_X86_VS_PI4_1_THREAD_MS: dict[str, tuple[float, float]] = {
    "squeezenet": (11.78, 73.96), "mobilenet": (21.68, 124.32), "mobilenet_v2": (14.82, 93.48),
    "mobilenet_v3": (12.15, 72.81), "shufflenet": (14.12, 47.51), "shufflenet_v2": (26.06, 42.12),
    "mnasnet": (14.14, 83.98), "proxylessnasnet": (16.61, 98.78), "efficientnet_b0": (22.93, 129.73),
    "regnety_400m": (18.56, 105.70), "blazeface": (6.21, 12.65), "googlenet": (58.49, 235.94),
    "resnet18": (61.40, 191.10), "alexnet": (50.92, 139.40), "vgg16": (217.87, 1071.85),
    "resnet50": (128.21, 534.11), "squeezenet_ssd": (114.47, 179.30), "mobilenet_ssd": (51.77, 251.00),
    "mobilenet_yolo": (125.83, 558.80), "mobilenetv2_yolov3": (57.65, 306.52), "yolov4-tiny": (85.79, 372.99),
}
#: The target of the recommended Pi configuration: its estimated real-time factor, upper bound.
RECOMMENDED_MAX_RTF = 0.5
#: The recommended Pi configuration: AST variant, its duty cycle (``[classifier]
#: every_n_windows``) and inference threads (the onnx backend's default on a Pi 4: all cores but one).
RECOMMENDED = {"ast_variant": "16-16", "every_n_windows": 3, "ast_threads": 3, "birdnet_threads": 1}
#: Relative difference within which the three MAC counts of a variant (ONNX graph, torch
#: FlopCounterMode, formula) must agree. They agree exactly on both variants; the tolerance
#: is there so that a count that ever drifts is named, not silently averaged.
MAC_AGREEMENT_REL_TOL = 1e-3
#: Benchmark rows (results["variants"]) measuring each AST model alone on this machine.
AST_ROWS = {"ast-10-10-fp32": "onnx-fp32", "ast-10-10-int8": "onnx-int8",
            "ast-16-16-fp32": "onnx-fp32-16x16", "ast-16-16-int8": "onnx-int8-16x16"}


def mac_agreement(entry: dict, rel_tol: float = MAC_AGREEMENT_REL_TOL) -> dict:
    """Whether the counts of one AST variant agree: ``entry`` holds ``graph`` (per ONNX file),
    ``measured`` (FlopCounterMode) and ``analytic`` (formula), as ``macs_per_window_by_variant``.

    Returns:
        ``{"counts": {name: MACs}, "max_rel_diff", "tolerance_rel", "agree"}``.
    """
    counts = {f"graph {name}": g["total"] for name, g in entry.get("graph", {}).items()}
    counts["torch FlopCounterMode"] = entry["measured"]["total"]
    counts["formula"] = entry["analytic"]["total"]
    ref = entry["analytic"]["total"]
    worst = max(abs(v - ref) / ref for v in counts.values())
    return {"counts": counts, "max_rel_diff": worst, "tolerance_rel": rel_tol, "agree": worst <= rel_tol}


def _model_row(gmac: float, precision: str, threads: int, window_s: float) -> dict:
    slow, fast = pi4_rate(precision, threads)
    lo, hi = gmac / fast, gmac / slow
    return {"threads": threads, "interpolated": threads not in (1, 4),
            "gmac_per_s_range": [round(slow, 2), round(fast, 2)],
            "seconds_per_window_range": [round(lo, 3), round(hi, 3)],
            "rtf_range": [round(lo / window_s, 3), round(hi / window_s, 3)],
            "arithmetic": f"{gmac:.2f} GMAC / {fast:.2f} … {slow:.2f} GMAC/s = {lo:.2f} … {hi:.2f} s"}


def implied_slowdown(ast_gmac: dict[str, float], x86_cpu_s_per_window: dict[str, float],
                     window_s: float = 10.0) -> dict:
    """How many times longer a Pi 4 core takes than this machine's core, as the AST estimate
    implies it: the ESTIMATED Pi 4 seconds per window on 1 thread (:func:`pi4_rate`) ÷ the CPU
    seconds this machine measured for the same model per window (1 inference thread).

    The fp32 pairs are the basis when measured: like the acoustics (numpy/scipy float filters
    and FFTs) they run float arithmetic on both machines, whereas this machine's int8 runs on
    AVX-512 VNNI dot-product instructions the Cortex-A72 lacks, which inflates the int8 ratio.
    The int8 pairs are the basis only when no fp32 row was measured; all pairs are listed.

    Args:
        ast_gmac: G MAC per window per AST variant (``{"10-10": 130.5, "16-16": 48.6}``).
        x86_cpu_s_per_window: measured CPU-s per window of the classifier alone, keyed
            ``ast-<variant>-<precision>``.

    Returns:
        ``{"pairs": {key: {...}}, "basis": "fp32" | "int8", "range": [lo, hi], "method"}``, or
        ``{}`` when nothing was measured.
    """
    pairs = {}
    for key, here in sorted(x86_cpu_s_per_window.items()):
        variant, precision = key.removeprefix("ast-").rsplit("-", 1)  # "ast-16-16-int8" -> "16-16", "int8"
        if variant not in ast_gmac or not here or here <= 0:
            continue
        lo, hi = _model_row(ast_gmac[variant], precision, 1, window_s)["seconds_per_window_range"]
        pairs[key] = {"x86_cpu_s_per_window": round(here, 4), "pi4_s_per_window_1_thread": [lo, hi],
                      "slowdown": [round(lo / here, 2), round(hi / here, 2)]}
    if not pairs:
        return {}
    basis = "fp32" if any(k.endswith("fp32") for k in pairs) else "int8"
    used = [p["slowdown"] for k, p in pairs.items() if k.endswith(basis)]
    return {"pairs": pairs, "basis": basis, "range": [min(u[0] for u in used), max(u[1] for u in used)],
            "method": (f"ESTIMATED Pi 4 s per window on 1 thread ÷ this machine's measured CPU-s per window of the "
                       "same AST model alone on 1 thread; "
                       f"range over the {basis} pairs ({', '.join(k for k in pairs if k.endswith(basis))}): "
                       + ("float work on both machines, like the acoustics (the int8 pairs also reflect this "
                          "machine's VNNI, which the Cortex-A72 lacks)" if basis == "fp32" else
                          "no fp32 model was measured (int8 on this machine uses VNNI, which the Cortex-A72 lacks: "
                          "a larger slowdown than float work would see)"))}


def pi4_by_variant(ast_gmac: dict[str, float], birdnet_gmac_per_chunk: float, acoustics_cpu_s_per_audio_s: float,
                   window_s: float = 10.0, recommended: dict | None = None, *,
                   x86_cpu_s_per_window: dict[str, float] | None = None,
                   birdnet_x86_cpu_s_per_window: float | None = None) -> dict:
    """ESTIMATED Pi 4 cost of each classifier variant, of the acoustics, and of the
    recommended configuration (AST on one window in N + BirdNET on every window + acoustics).

    Args:
        ast_gmac: G MAC per window of each AST variant, counted from its exported graph
            (``{"10-10": 130.5, "16-16": 48.6}``).
        birdnet_gmac_per_chunk: G MAC of one BirdNET invocation (3 s), from its TFLite graph.
        acoustics_cpu_s_per_audio_s: this machine's measured CPU time of the per-window
            acoustics (levels, bands, indices, health) per second of audio.
        window_s: window length, s (BirdNET: ``len(chunk_starts)`` chunks per window).
        recommended: :data:`RECOMMENDED` or a variation of it.
        x86_cpu_s_per_window: this machine's measured CPU-s per window of each AST model alone
            (``ast-<variant>-<precision>``), for the x86 → Cortex-A72 slowdown the acoustics are
            scaled by (:func:`implied_slowdown`); without it, ncnn's published one-thread
            x86-vs-Pi 4 ratios are used instead (and said so).
        birdnet_x86_cpu_s_per_window: BirdNET's measured CPU-s per window here (1 thread): the
            same slowdown applied to it is given beside its MAC-based estimate, as a check of
            how far the slowdown carries over to other work.

    Returns:
        ``{"ast-<v>-int8" | "ast-<v>-fp32" | "birdnet" | "acoustics" | "pi4-recommended":
        {"gmac_per_window", "seconds_per_window_range", "rtf_3_threads_range", "references", …}}``
        (ranges [optimistic, pessimistic]; ``seconds_per_window_range`` at the thread count the
        entry names).
    """
    from agent.analysis.birdnet import SAMPLE_RATE, chunk_starts

    rec = {**RECOMMENDED, **(recommended or {})}
    chunks = len(chunk_starts(int(window_s * SAMPLE_RATE)))
    refs = [f"{r.name} {r.precision} {r.threads} thread(s): {r.gmac_per_s:.2f} GMAC/s ({r.source})"
            for r in PI4_REFERENCES]
    method = ("GMAC per window ÷ published Pi 4 throughput (the references of pi4_estimate): optimistic ResNet-50 "
              "(large GEMMs), pessimistic ViT-B/32 (int8: × ncnn's ResNet-50 int8/fp32 speed-up); 3 threads "
              "interpolated linearly between the published 1 and 4")
    out: dict = {"label": "ESTIMATE (not measured on a Pi 4)", "window_s": window_s, "method": method}
    for variant, gmac in ast_gmac.items():
        for precision in ("int8", "fp32"):
            one, three = _model_row(gmac, precision, 1, window_s), _model_row(gmac, precision, 3, window_s)
            out[f"ast-{variant}-{precision}"] = {
                "gmac_per_window": round(gmac, 3), "precision": precision, "threads": 3,
                "seconds_per_window_range": three["seconds_per_window_range"],
                "rtf_3_threads_range": three["rtf_range"], "rtf_1_thread_range": one["rtf_range"],
                "arithmetic": three["arithmetic"], "references": refs}
    bn_gmac = birdnet_gmac_per_chunk * chunks
    one, three = _model_row(bn_gmac, "fp32", 1, window_s), _model_row(bn_gmac, "fp32", 3, window_s)
    effnet = {t: EFFICIENTNET_B0_MACS / (ms / 1000) / 1e9 for t, ms in EFFICIENTNET_B0_PI4_MS.items()}
    effnet_s = bn_gmac / effnet[1]
    inside = one["seconds_per_window_range"][0] <= effnet_s <= one["seconds_per_window_range"][1]
    out["birdnet"] = {
        "gmac_per_window": round(bn_gmac, 3), "gmac_per_chunk": round(birdnet_gmac_per_chunk, 4),
        "chunks_per_window": chunks, "precision": "fp32 (TFLite)", "threads": 1,
        "seconds_per_window_range": one["seconds_per_window_range"],
        "seconds_per_window_range_3_threads": three["seconds_per_window_range"],
        "rtf_1_thread_range": one["rtf_range"], "rtf_3_threads_range": three["rtf_range"],
        "threads_as_configured": 1, "arithmetic": one["arithmetic"], "arithmetic_3_threads": three["arithmetic"],
        "cross_check": (f"EfficientNet-B0 (0.39 GMAC, same family) on the Pi 4, ncnn: {effnet[1]:.2f} GMAC/s on 1 "
                        f"thread → {effnet_s:.2f} s per {window_s:g} s window, "
                        + ("inside the range" if inside else "OUTSIDE the range")),
        "references": refs + [f"efficientnet_b0 fp32 1 thread: {EFFICIENTNET_B0_PI4_MS[1]} ms ({_SRC})"]}
    ratios = [pi / x86 for x86, pi in NCNN_X86_VS_PI4_1_THREAD_MS.values()]
    ncnn_range = [round(min(ratios), 2), round(max(ratios), 2)]
    slowdown = implied_slowdown(ast_gmac, x86_cpu_s_per_window or {}, window_s)
    ac = acoustics_cpu_s_per_audio_s
    ncnn_note = (f"ncnn benchncnn one-thread ratios, Pi 4 vs Threadripper 3970X, {len(ratios)} networks: "
                 f"{ncnn_range[0]}–{ncnn_range[1]}×")
    # Basis: ncnn's published times of the same networks on one x86 core and one Pi 4 core. The
    # slowdown the AST estimate implies (its pessimistic Pi GEMM rate against onnxruntime's
    # AVX-512 GEMMs here) is given as a cross-check only: applied to BirdNET it predicts ~4x the
    # MAC-based time, so it does not carry over to work that is not large GEMMs.
    lo_r, hi_r = ncnn_range
    how = f"this machine's CPU time per audio second × {ncnn_note}"
    cross = (f"with the x86 → Cortex-A72 slowdown the AST estimate implies instead ({slowdown['method']}): RTF "
             f"{ac * slowdown['range'][0]:.3f}–{ac * slowdown['range'][1]:.3f}" if slowdown else "")
    if slowdown and birdnet_x86_cpu_s_per_window:
        b = birdnet_x86_cpu_s_per_window
        out["birdnet"]["x86_scaled_cross_check"] = (
            f"BirdNET measured here {b:.3f} CPU-s per window (1 thread) × the AST-implied slowdown "
            f"{slowdown['range'][0]:.1f}–{slowdown['range'][1]:.1f}× = {b * slowdown['range'][0]:.2f}–"
            f"{b * slowdown['range'][1]:.2f} s per window (the MAC-based estimate above: "
            f"{one['seconds_per_window_range'][0]}–{one['seconds_per_window_range'][1]} s)")
    out["acoustics"] = {
        "cpu_s_per_audio_s_here": round(ac, 5), "slowdown_range": [round(lo_r, 2), round(hi_r, 2)],
        "slowdown": slowdown or None, "ncnn_slowdown_range": ncnn_range,
        "seconds_per_window_range": [round(ac * window_s * lo_r, 3), round(ac * window_s * hi_r, 3)],
        "rtf_range": [round(ac * lo_r, 3), round(ac * hi_r, 3)], "rtf_3_threads_range": [round(ac * lo_r, 3),
                                                                                       round(ac * hi_r, 3)],
        "threads": 1, "method": how + "; the acoustics are single-threaded numpy/scipy filters and FFTs, not "
        "MAC-counted, so they take the same time with 3 inference threads", "cross_check": cross,
        "references": [f"{_SRC}; ncnn benchncnn section "
                       "\"AMD Ryzen Threadripper 3970X (Zen2 3.7 GHz ~ 4.5 GHz x 32)\""]}
    variant, every_n = rec["ast_variant"], int(rec["every_n_windows"])
    ast_three = _model_row(ast_gmac[variant], "int8", rec["ast_threads"], window_s)
    bn_row = _model_row(bn_gmac, "fp32", rec["birdnet_threads"], window_s)
    parts = {
        f"ast-{variant}-int8, {rec['ast_threads']} threads, one window in {every_n}":
            [round(v / every_n, 3) for v in ast_three["rtf_range"]],
        f"birdnet, {rec['birdnet_threads']} thread(s), every window": bn_row["rtf_range"],
        "acoustics, 1 thread, every window": out["acoustics"]["rtf_range"],
    }
    lo = round(sum(v[0] for v in parts.values()), 3)
    hi = round(sum(v[1] for v in parts.values()), 3)
    mapv = 0.442 if variant == "16-16" else 0.4593
    out["pi4-recommended"] = {
        "config": {"classifier": {"type": "onnx", "model": f"export of MIT/ast-finetuned-audioset-{variant}-{mapv}",
                                  "file_name": "model_quantized.onnx", "threads": rec["ast_threads"],
                                  "every_n_windows": every_n},
                   "birdnet": {"enabled": True, "threads": rec["birdnet_threads"]}, "windows": {"length_s": window_s}},
        "ast_variant": variant, "every_n_windows": every_n,
        "gmac_per_window": round(ast_gmac[variant] / every_n + bn_gmac, 3),
        "parts_rtf_range": parts, "rtf_3_threads_range": [lo, hi],
        "seconds_per_window_range": [round(lo * window_s, 2), round(hi * window_s, 2)],
        "combination": "sum of each part's wall time per window at its own thread count, as if they ran one "
                       "after another (they share the 4 cores: the sum is the conservative case)",
        "target_max_rtf": RECOMMENDED_MAX_RTF, "meets_target": hi <= RECOMMENDED_MAX_RTF,
        "references": "as for its parts",
    }
    return out


def x86_cpu_s_per_window(results: dict) -> dict[str, float]:
    """This machine's CPU-s per window of each AST model alone, from a results file: measured
    directly (``components_cpu``: the classifier alone on one thread, median over the benchmark
    windows, ``components.py``) when present; otherwise its benchmark row's CPU-s per analysed
    audio-s minus the acoustics' (``acoustics_cost``), × the window length. Models not measured
    are left out."""
    parts = (results.get("components_cpu") or {}).get("parts") or {}
    direct = {k: p["cpu_s_per_window"] for k, p in parts.items() if k in AST_ROWS}
    if direct:
        return direct
    window_s = results.get("pi4_by_variant", {}).get("window_s", 10.0)
    ac = results["acoustics_cost"]["cpu_s_per_audio_s"]
    out = {}
    for key, row in AST_ROWS.items():
        v = results["variants"].get(row)
        if v and v.get("cpu_s_per_audio_s"):
            out[key] = (v["cpu_s_per_audio_s"] - ac) * window_s
    return out


def pi4_by_variant_from_results(results: dict, recommended: dict | None = None) -> dict:
    """:func:`pi4_by_variant` from a benchmark's ``results.json`` (no re-run): the graph MAC
    counts (``macs_per_window_by_variant``, ``birdnet_macs_per_chunk``), the measured acoustics
    (``acoustics_cost``) and the AST rows of ``variants``. BirdNET's count includes its
    front end's FFTs when present (``total_with_fft``)."""
    ast_gmac = {v: m["graph"]["model.onnx"]["total"] / 1e9 for v, m in results["macs_per_window_by_variant"].items()}
    bn = results["birdnet_macs_per_chunk"]
    parts = (results.get("components_cpu") or {}).get("parts") or {}
    return pi4_by_variant(ast_gmac, bn.get("total_with_fft", bn["total"]) / 1e9,
                          results["acoustics_cost"]["cpu_s_per_audio_s"], 10.0, recommended,
                          x86_cpu_s_per_window=x86_cpu_s_per_window(results),
                          birdnet_x86_cpu_s_per_window=(parts.get("birdnet") or {}).get("cpu_s_per_window"))


def main(argv: list[str] | None = None) -> int:
    """``--model DIR``: print the analytic and measured MACs of one window as JSON.
    ``--from RESULTS``: recompute ``pi4_by_variant`` (and the MAC agreement) from a results
    file without re-running the benchmark; print it, or with ``--write`` store it in the file
    and re-render ``results.md`` beside it."""
    p = argparse.ArgumentParser(description="MACs of one AST window (analytic and measured); the Pi 4 ESTIMATE "
                                            "per variant from a results file")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", type=Path, help="an AST model directory: print its analytic and measured MACs")
    g.add_argument("--from", dest="results", type=Path, help="a benchmark results.json: recompute pi4_by_variant")
    p.add_argument("--every-n-windows", type=int, default=RECOMMENDED["every_n_windows"],
                   help=f"the recommended configuration's AST duty cycle (default {RECOMMENDED['every_n_windows']})")
    p.add_argument("--write", action="store_true", help="with --from: update the file and its results.md")
    args = p.parse_args(argv)
    if args.model:
        config = json.loads((args.model / "config.json").read_text())
        print(json.dumps({"analytic": ast_macs(config), "measured": measured_macs(args.model)}))
        return 0
    results = json.loads(args.results.read_text())
    for entry in results["macs_per_window_by_variant"].values():
        entry["agreement"] = mac_agreement(entry)
    results["pi4_by_variant"] = pi4_by_variant_from_results(results, {"every_n_windows": args.every_n_windows})
    if args.write:
        import report

        args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.results.parent / "results.md").write_text(report.render(results))
        print(f"updated {args.results} and {args.results.parent / 'results.md'}", file=sys.stderr)
    print(json.dumps(results["pi4_by_variant"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
