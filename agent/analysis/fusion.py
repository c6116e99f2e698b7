"""Fuse the exported AST's self-attention into onnxruntime's ``MultiHeadAttention`` operator.

Why: optimum's ONNX export of AST spells each layer's self-attention out in standard operators
(per layer, for B=1, N=12 heads, S=1214 tokens, head size 64)::

    q, k, v = Add(MatMul(x, W), b)                          (B, S, 768) each
    q' = Mul(Transpose(Reshape(q, [B, S, N, 64]), 0213), √scale)     (B, N, S, 64)
    k' = Mul(Transpose(Reshape(k, [B, S, N, 64]), 0231), √scale)     (B, N, 64, S)
    v' = Transpose(Reshape(v, [B, S, N, 64]), 0213)                  (B, N, S, 64)
    out = Reshape(Transpose(MatMul(Softmax(MatMul(q', k')), v'), 0213), [B, S, 768])

``MatMul(q', k')`` and its ``Softmax`` are (B, N, S, S) float32 tensors: 12 × 1214² × 4 B =
70.7 MB each, and int8 dynamic quantisation adds an int32 copy, a float copy and a uint8 copy
of the scores per layer. onnxruntime's contrib operator ``com.microsoft.MultiHeadAttention``
(``onnxruntime/contrib_ops/cpu/bert/multihead_attention.cc``) takes ``q, k, v`` of shape
(B, S, N·H) and on the CPU runs MLAS FlashAttention (tiled by the L2 cache size, scores never
materialised) when there is no mask, bias or past state — as here. Measured on this machine
(full-size scaffold, one 10.24 s input, 1 intra-op thread, peak RSS of a bare onnxruntime
session): fp32 853 → 646 MB, int8 353 → 272 MB, and slightly faster (int8 0.80 → 0.69 s);
scores within 2e-6 (fp32 logits) of the unfused graph.

The rewrite: for every ``Softmax`` whose input and output match the chain above exactly (perms
``0213``/``0231``/``0213``/``0213``, constant scalar scales, a constant ``[.., N, H]`` head
split, one consumer each), the final ``Reshape`` is replaced by one ``MultiHeadAttention(q, k,
v)`` node (``num_heads`` = N, ``scale`` = the product of the two constant scales, 1/√64 for
AST) writing the same output tensor; the nodes left without a consumer are removed. Anything
that does not match exactly is left as it was and counted in :attr:`AttentionFusion.unfused`.
The export's verification against PyTorch (:func:`agent.analysis.export.export_model`) then
checks the fused graph's scores like any other.

Only on the CPU execution provider's float32 kernel; onnxruntime >= 1.31 (its Linux/aarch64
build falls back to cpuinfo's L2 size when ``sysconf(_SC_LEVEL2_CACHE_SIZE)`` gives 0 — glibc
has no cache sysconf on aarch64 — so FlashAttention also runs on a Raspberry Pi; older builds
take the unfused path inside the operator, which is *larger*: 443 MB measured here with
``ORT_DISABLE_FLASH_ATTENTION=1``). Pure graph surgery on an ``onnx.ModelProto``: no I/O,
nothing executed; ``onnx`` is imported only when :func:`fuse_attention` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelError

#: The fused operator and its domain (onnxruntime contrib operators, opset 1).
FUSED_OP = "MultiHeadAttention"
FUSED_DOMAIN = "com.microsoft"


@dataclass(frozen=True, slots=True)
class AttentionFusion:
    """What :func:`fuse_attention` did to one graph.

    Attributes:
        fused: attention blocks replaced by one ``MultiHeadAttention`` node each.
        unfused: ``Softmax`` nodes left (did not match the pattern exactly).
        num_heads: heads of the fused blocks (None when none was fused).
        scale: the softmax scale of the fused blocks (1/√head_size for AST; None when none).
        nodes_before, nodes_after: graph node counts.
    """

    fused: int
    unfused: int
    num_heads: int | None
    scale: float | None
    nodes_before: int
    nodes_after: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the export manifest)."""
        return {"op": f"{FUSED_DOMAIN}.{FUSED_OP}", "fused": self.fused, "unfused_softmax": self.unfused,
                "num_heads": self.num_heads, "scale": self.scale, "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after}


def fuse_attention(model: Any) -> AttentionFusion:
    """Replace each AST self-attention block of ``model`` by ``com.microsoft.MultiHeadAttention``.

    See the module docstring for the matched pattern and what it saves. Works in place.

    Args:
        model: ``onnx.ModelProto`` of an optimum AST export (fp32, before quantisation: the
            quantiser then quantises the projections around the fused node and leaves the
            float attention to the FlashAttention kernel).

    Returns:
        :class:`AttentionFusion`. A graph with no matching block is returned unchanged
        (``fused == 0``).

    Raises:
        ValueError: matched blocks disagree on the number of heads or the scale (not an AST
            export; nothing is changed then).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name: t for t in graph.initializer}

    def constant(name: str) -> Any:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def attribute(node: Any, key: str) -> Any:
        for a in node.attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        return None

    def only_consumer(name: str, op_type: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def split_heads(name: str, perm: list[int]) -> tuple[str, int, int] | None:
        """``name`` = Transpose(perm)(Reshape(x, Concat(.., N, H))) -> (x, N, H)."""
        transpose = producer.get(name)
        if transpose is None or transpose.op_type != "Transpose" or list(attribute(transpose, "perm") or []) != perm:
            return None
        reshape = producer.get(transpose.input[0])
        if reshape is None or reshape.op_type != "Reshape" or only_consumer(reshape.output[0], "Transpose") is None:
            return None
        shape = constant(reshape.input[1])
        if shape is None:
            concat = producer.get(reshape.input[1])
            if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
                return None
            parts = [constant(i) for i in concat.input[2:]]
            if any(p is None or p.size != 1 for p in parts):
                return None
            heads, size = (int(p.reshape(-1)[0]) for p in parts)
        elif shape.size == 4:
            heads, size = int(shape[2]), int(shape[3])
        else:
            return None
        return (reshape.input[0], heads, size) if heads > 0 and size > 0 else None

    def scaled(name: str) -> tuple[str, float] | None:
        """``name`` = Mul(x, scalar constant) -> (x, scalar)."""
        mul = producer.get(name)
        if mul is None or mul.op_type != "Mul" or only_consumer(mul.output[0], "MatMul") is None:
            return None
        factor = constant(mul.input[1])
        if factor is None or factor.size != 1:
            return None
        return mul.input[0], float(factor.reshape(-1)[0])

    n_softmax = sum(1 for n in graph.node if n.op_type == "Softmax")
    replacements: dict[int, Any] = {}
    found: list[tuple[int, float]] = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        if attribute(softmax, "axis") not in (-1, 3):
            continue
        scores = producer.get(softmax.input[0])
        if scores is None or scores.op_type != "MatMul" or only_consumer(scores.output[0], "Softmax") is None:
            continue
        q_scaled, k_scaled = scaled(scores.input[0]), scaled(scores.input[1])
        if q_scaled is None or k_scaled is None:
            continue
        q = split_heads(q_scaled[0], [0, 2, 1, 3])
        k = split_heads(k_scaled[0], [0, 2, 3, 1])
        context = only_consumer(softmax.output[0], "MatMul")
        if q is None or k is None or context is None or context.input[0] != softmax.output[0]:
            continue
        v = split_heads(context.input[1], [0, 2, 1, 3])
        merge = only_consumer(context.output[0], "Transpose")
        if v is None or merge is None or list(attribute(merge, "perm") or []) != [0, 2, 1, 3]:
            continue
        if not (q[1:] == k[1:] == v[1:]):
            continue
        final = [c for c in consumers.get(merge.output[0], []) if c.op_type == "Reshape"]
        others = [c for c in consumers.get(merge.output[0], []) if c.op_type not in ("Reshape", "Shape")]
        if len(final) != 1 or others:
            continue
        heads, scale = q[1], q_scaled[1] * k_scaled[1]
        found.append((heads, scale))
        replacements[id(final[0])] = helper.make_node(
            FUSED_OP, [q[0], k[0], v[0]], [final[0].output[0]], name=f"{softmax.name}/FusedMultiHeadAttention",
            domain=FUSED_DOMAIN, num_heads=heads, scale=scale)

    nodes_before = len(graph.node)
    if not replacements:
        return AttentionFusion(0, n_softmax, None, None, nodes_before, nodes_before)
    heads_set = {h for h, _ in found}
    scales = [s for _, s in found]
    if len(heads_set) != 1 or max(scales) - min(scales) > 1e-6 * max(abs(s) for s in scales):
        raise ValueError(f"attention blocks disagree: heads {sorted(heads_set)}, scales {min(scales)}..{max(scales)}")

    nodes = [replacements.get(id(n), n) for n in graph.node]
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(nodes):  # nodes are topologically sorted: one backward pass finds the dead
        if any(out in live for out in node.output):
            kept.append(node)
            live.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | set(initializers)
    stale = [vi for vi in graph.value_info if vi.name not in produced]
    for vi in stale:
        graph.value_info.remove(vi)
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used and t.name not in {o.name for o in graph.output}]
    for t in unused:
        graph.initializer.remove(t)
    # onnx shape inference does not know contrib operators: declare the fused outputs' type so the
    # quantiser can type the tensors downstream of them
    for node in replacements.values():
        graph.value_info.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    if not any(o.domain == FUSED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    n_left = sum(1 for n in graph.node if n.op_type == "Softmax")
    return AttentionFusion(len(replacements), n_left, heads_set.pop(), float(scales[0]), nodes_before, len(graph.node))


def fuse_attention_file(path: Path) -> AttentionFusion:
    """:func:`fuse_attention` on an ONNX file, rewritten in place when a block was fused.

    Used by ``model export`` (before quantisation) and ``model scaffold --onnx``.

    Args:
        path: an fp32 ONNX model of an AST export (single file, < 2 GB).

    Returns:
        :class:`AttentionFusion`.

    Raises:
        ModelError: ``onnx`` is not installed, the file cannot be read or written, or the
            matched blocks disagree (hint: export with ``--no-fuse-attention``).
    """
    try:
        import onnx

        model = onnx.load(str(path))
        fusion = fuse_attention(model)
        if fusion.fused:
            onnx.save(model, str(path))
    except (ImportError, ValueError, OSError) as e:
        raise ModelError(f"attention fusion of {path} failed: {type(e).__name__}: {e}",
                         "export with --no-fuse-attention") from e
    return fusion


__all__ = ["AttentionFusion", "FUSED_DOMAIN", "FUSED_OP", "fuse_attention", "fuse_attention_file"]
