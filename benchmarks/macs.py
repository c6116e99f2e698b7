"""Multiply-accumulates counted from the model graphs the agent runs, not only from a formula.

- :func:`onnx_macs`: an exported AST (``model.onnx`` or ``model_quantized.onnx``) with its input
  fixed to (1, 1024, 128); shapes from onnxruntime's symbolic shape inference (it knows the
  ``com.microsoft`` operators the export fuses attention into). Counted: ``MatMul``,
  ``MatMulInteger``, onnxruntime's fused int8 ``DynamicQuantizeMatMul`` and
  ``MatMulIntegerToFloat``, ``Gemm``, ``Conv``, ``ConvInteger``,
  ``com.microsoft.MultiHeadAttention`` (scores and weighted sum: 2·B·N²·D) and
  ``com.microsoft.Attention``; element-wise work is not counted; a graph holding a
  multiply-accumulate operator the counter does not model is refused, not under-counted.
- :func:`tflite_macs`: BirdNET's TFLite graph through LiteRT's op list and tensor shapes:
  ``CONV_2D`` (output elements × kh × kw × in_c), ``DEPTHWISE_CONV_2D`` (output elements ×
  kh × kw), ``FULLY_CONNECTED`` (output elements × in), ``BATCH_MATMUL``; other ops are listed
  as not counted.

Usage: ``python benchmarks/macs.py onnx FILE`` or ``python benchmarks/macs.py tflite FILE``
(prints JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


#: Operators whose MACs :func:`onnx_macs` counts (op type → how):
#: - matrix products ``(..., M, K) x (K, N)``: every output element sums K products. The
#:   exported int8 graph has ``MatMulInteger``; onnxruntime's optimiser (at session load,
#:   ``graph_optimization_level`` "extended"/"all") fuses it with its quantisation into
#:   ``com.microsoft.DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``: the same products.
MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "FusedMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
CONV_OPS = frozenset({"Conv", "ConvInteger"})
ATTENTION_OPS = frozenset({"MultiHeadAttention", "Attention"})
#: Operators that do multiply-accumulate work this counter does not model: a graph holding one
#: is refused (ValueError) instead of being under-counted.
UNSUPPORTED_OPS = frozenset({
    "Einsum", "ConvTranspose", "QLinearMatMul", "QLinearConv", "QGemm", "QAttention", "GemmFastGelu",
    "MatMulNBits", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention", "LSTM", "GRU", "RNN",
    "NhwcConv", "FusedConv", "DecoderMaskedMultiHeadAttention", "LongformerAttention",
})


def _infer_shapes(model):
    """onnxruntime's symbolic shape inference, taught the two fused int8 matrix products (same
    output shape as a MatMul, float32), raising instead of writing ``sym_shape_infer_temp.onnx``
    into the working directory as ``SymbolicShapeInference.infer_shapes`` does on failure."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class _Inference(SymbolicShapeInference):
        def __init__(self, *args):
            super().__init__(*args)
            for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
                self.dispatcher_[op] = lambda node: self._compute_matmul_shape(node, onnx.TensorProto.FLOAT)

    inference = _Inference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    inference._preprocess(model)  # noqa: SLF001 - the body of SymbolicShapeInference.infer_shapes
    complete = False
    while inference.run_:
        complete = inference._infer_impl()  # noqa: SLF001
    inference._update_output_from_vi()  # noqa: SLF001
    if not complete:
        raise ValueError("onnxruntime's symbolic shape inference could not infer every shape of the graph")
    return inference.out_mp_


def onnx_macs(path: Path, frames: int = 1024, mel_bins: int = 128) -> dict:
    """MACs of one forward pass of an ONNX AST export on one (1, frames, mel_bins) input.

    The graph's input is fixed to that shape and every shape inferred (onnxruntime's symbolic
    shape inference, which knows the ``com.microsoft`` operators). Counted per node:

    - :data:`MATMUL_OPS`: ``prod(A) × N`` for A (..., M, K) and B (..., K, N);
    - ``Gemm``: ``prod(A) × N`` (``transB`` read);
    - :data:`CONV_OPS`: output elements × (in channels / groups) × kernel elements;
    - ``com.microsoft.MultiHeadAttention``: Q·Kᵀ and the weighted sum of V, ``2·B·S·S_kv·D``
      (Q (B, S, D) and K (B, S_kv, D); packed QKV (B, S, heads, 3, head size) too);
    - ``com.microsoft.Attention``: its Q, K, V projection ``prod(X) × 3D`` plus ``2·B·S²·D``.

    Element-wise work (LayerNorm, GELU, Softmax inside the attention, residual adds,
    quantise/dequantise) is not counted, as FlopCounterMode does not count it either.

    Returns:
        ``{"total": MACs, "by_op": {op: MACs}, "nodes": {op: count}, "method": str}``.

    Raises:
        ValueError: shapes could not be inferred, or the graph holds an operator of
            :data:`UNSUPPORTED_OPS`.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    unsupported = sorted({n.op_type for n in model.graph.node if n.op_type in UNSUPPORTED_OPS}
                         | {f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain == "com.microsoft.nchwc"})
    if unsupported:
        raise ValueError(f"{path.name} holds operators this counter does not model: {', '.join(unsupported)}")
    initializers = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        for d, value in zip(dims, (1, frames, mel_bins), strict=False):
            d.ClearField("dim_param")
            d.dim_value = value
    model = _infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    def shape(name: str, node) -> list[int]:
        if name not in shapes:
            raise ValueError(f"no inferred shape for {name!r}, input of {node.op_type} {node.name}")
        return shapes[name]

    by_op: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for node in model.graph.node:
        op = node.op_type
        if op in MATMUL_OPS:
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            macs = _prod(a) * b[-1]
        elif op == "Gemm":
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            trans_b = any(att.name == "transB" and att.i for att in node.attribute)
            m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
            macs = m * k * (b[0] if trans_b else b[1])
        elif op in CONV_OPS:
            w = shape(node.input[1], node)
            macs = _prod(shape(node.output[0], node)) * _prod(w[1:])  # out elements × in_c/groups × kernel
        elif op in ATTENTION_OPS and node.domain == "com.microsoft":
            q = shape(node.input[0], node)
            if op == "Attention":  # also projects Q, K, V: (B, S, D_in) x (D_in, 3D)
                w = shape(node.input[1], node)
                macs = _prod(q) * w[-1] + 2 * q[0] * q[1] * q[1] * (w[-1] // 3)
            elif len(q) == 5:  # packed QKV: (B, S, heads, 3, head size)
                macs = 2 * q[0] * q[1] * q[1] * q[2] * q[4]
            else:
                k = shape(node.input[1], node) if len(node.input) > 1 and node.input[1] else q
                s_kv = k[1] if len(k) == 3 else k[2]  # K (B, S_kv, D) or (B, heads, S_kv, head size)
                macs = 2 * q[0] * q[1] * s_kv * q[2]
        else:
            continue
        by_op[f"{node.domain + '.' if node.domain else ''}{op}"] += macs
        nodes[op] += 1
    return {"total": sum(by_op.values()), "by_op": dict(by_op), "nodes": dict(nodes),
            "method": f"onnx graph of {path.name}, input fixed to (1, {frames}, {mel_bins}), onnxruntime "
                      "SymbolicShapeInference; MatMul, MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat, "
                      "Gemm, Conv, ConvInteger, MultiHeadAttention, Attention counted"}


def tflite_macs(path: Path) -> dict:
    """MACs of one invocation of a TFLite model at batch 1 (BirdNET: one 3 s chunk).

    ``total`` counts the layers (convolutions, fully connected, batched products);
    ``fft_estimate`` the front end's ``RFFT2D`` nodes, which are not multiply-accumulate layers:
    ≈ 2·n·log2(n) real multiply-adds per n-point frame (a radix-2 FFT's n/2·log2(n) complex
    ones); ``total_with_fft`` both.

    Returns:
        ``{"total", "fft_estimate", "total_with_fft", "by_op", "nodes", "not_counted": {op: count},
        "method"}``.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without XNNPACK: the delegate would swallow the convolutions into opaque DELEGATE nodes
    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros([int(d) for d in inp["shape"]], dtype=inp["dtype"]))
    interp.invoke()  # dynamic shapes (the spectrogram front end) are only known after a run
    tensors = {t["index"]: [int(d) for d in t["shape"]] for t in interp.get_tensor_details()}
    by_op: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    fft: Counter[str] = Counter()
    for op in interp._get_ops_details():  # noqa: SLF001 - LiteRT's only per-op listing
        name, ins, outs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        out = tensors[outs[0]]
        if name == "CONV_2D":
            w = tensors[ins[1]]  # (out_c, kh, kw, in_c)
            macs = _prod(out) * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            w = tensors[ins[1]]  # (1, kh, kw, out_c)
            macs = _prod(out) * w[1] * w[2]
        elif name == "FULLY_CONNECTED":
            w = tensors[ins[1]]  # (out, in)
            macs = _prod(out) * w[-1]
        elif name == "BATCH_MATMUL":
            a = tensors[ins[0]]
            macs = _prod(out) * a[-1]
        elif name == "RFFT2D":
            frames_in = tensors[ins[0]]
            n = frames_in[-1]
            fft[f"RFFT2D {n}-point x {_prod(frames_in[:-1])}"] += 2 * _prod(frames_in[:-1]) * n * int(math.log2(n))
            skipped[name] += 1
            continue
        else:
            skipped[name] += 1
            continue
        by_op[name] += macs
        nodes[name] += 1
    total = sum(by_op.values())
    return {"total": total, "fft_estimate": sum(fft.values()), "total_with_fft": total + sum(fft.values()),
            "fft_by_node": dict(fft), "by_op": dict(by_op), "nodes": dict(nodes), "not_counted": dict(skipped),
            "method": f"LiteRT op list of {path.name} at batch 1 with tensor shapes; CONV_2D, DEPTHWISE_CONV_2D, "
                      "FULLY_CONNECTED, BATCH_MATMUL counted"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="MACs of one inference, counted from the model graph")
    p.add_argument("kind", choices=("onnx", "tflite"))
    p.add_argument("file", type=Path)
    args = p.parse_args(argv)
    print(json.dumps(onnx_macs(args.file) if args.kind == "onnx" else tflite_macs(args.file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
