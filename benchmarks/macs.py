"""Multiply-accumulates counted from the model graphs the agent runs, not only from a formula.

- :func:`onnx_macs`: an exported AST (``model.onnx`` or ``model_quantized.onnx``) with its input
  fixed to (1, 1024, 128); shapes from onnxruntime's symbolic shape inference (it knows the
  ``com.microsoft`` operators the export fuses attention into). Counted: ``MatMul``,
  ``MatMulInteger``, ``Gemm``, ``Conv``, ``ConvInteger``, ``com.microsoft.MultiHeadAttention`` (scores and
  weighted sum: 2·B·N²·D) and ``com.microsoft.Attention``; element-wise work is not counted.
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


def onnx_macs(path: Path, frames: int = 1024, mel_bins: int = 128) -> dict:
    """MACs of one forward pass of an ONNX AST export on one (1, frames, mel_bins) input.

    Returns:
        ``{"total": MACs, "by_op": {op type: MACs}, "nodes": {op type: count}, "method": str}``.

    Raises:
        ValueError: a counted node's input shapes could not be inferred.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=True)
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for d, value in zip(dims, (1, frames, mel_bins)):
            d.ClearField("dim_param")
            d.dim_value = value
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
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
        if op in ("MatMul", "MatMulInteger"):
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            macs = _prod(a) * b[-1]  # (..., M, K) x (K, N): every output element sums K products
        elif op == "Gemm":
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            trans_b = any(att.name == "transB" and att.i for att in node.attribute)
            macs = _prod(a) * (b[0] if trans_b else b[-1])
        elif op in ("Conv", "ConvInteger"):
            w = shape(node.input[1], node)
            out = shape(node.output[0], node)
            macs = _prod(out) * _prod(w[1:])  # out elements × (in_c / groups) × kh × kw
        elif op in ("MultiHeadAttention", "Attention") and node.domain == "com.microsoft":
            q = shape(node.input[0], node)  # (B, N, D) for both operators' first input
            if op == "Attention":  # the fused operator also projects Q, K, V: (B, N, D_in) x (D_in, 3D)
                w = shape(node.input[1], node)
                macs = _prod(q) * w[-1] + 2 * q[0] * q[1] * q[1] * (w[-1] // 3)
            else:
                macs = 2 * q[0] * q[1] * q[1] * q[2]
        else:
            continue
        by_op[f"{node.domain + '.' if node.domain else ''}{op}"] += macs
        nodes[op] += 1
    return {"total": sum(by_op.values()), "by_op": dict(by_op), "nodes": dict(nodes),
            "method": f"onnx graph of {path.name}, input fixed to (1, {frames}, {mel_bins}), onnxruntime "
                      "SymbolicShapeInference; MatMul/MatMulInteger/Gemm/Conv/MultiHeadAttention counted"}


def tflite_macs(path: Path) -> dict:
    """MACs of one invocation of a TFLite model at batch 1 (BirdNET: one 3 s chunk).

    Returns:
        ``{"total", "by_op", "nodes", "not_counted": {op: count}, "method"}``.
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
        else:
            skipped[name] += 1
            continue
        by_op[name] += macs
        nodes[name] += 1
    return {"total": sum(by_op.values()), "by_op": dict(by_op), "nodes": dict(nodes), "not_counted": dict(skipped),
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
