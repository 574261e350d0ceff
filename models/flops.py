"""FLOPs of an ONNX graph at concrete input shapes, counted from the graph itself.

Convention: 1 multiply-add = 2 FLOPs. The headline figure (`flops`) counts the multiply-adds
of Conv / ConvTranspose / MatMul / Gemm (and their integer / QLinear forms, so a quantised
graph counts the same work); attention's Q·Kᵀ and P·V are MatMuls and are included.
Elementwise work (activations, normalisation, pooling, softmax, adds) is counted separately
as `elementwise_flops` at one FLOP per output element (a few per element for softmax /
normalisation) and is *not* in the headline figure.

Shapes come from `onnx.shape_inference` with the graph inputs fixed to the given shapes
(`data_prop=True` resolves most Shape→Reshape chains); any tensor whose shape is still unknown
is measured by running the graph once in onnxruntime with that tensor as an extra output.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MAC_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MatMul", "MatMulInteger",
           "QLinearMatMul", "Gemm", "FusedMatMul"}
# FLOPs per output element for elementwise-ish ops (reported apart from the headline)
ELEMENTWISE = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "Clip": 1, "Sigmoid": 4, "Tanh": 4,
    "Erf": 4, "Exp": 1, "Sqrt": 1, "Pow": 1, "Max": 1, "Min": 1, "Neg": 1, "Abs": 1,
    "Softmax": 5, "LayerNormalization": 8, "BatchNormalization": 2, "Gelu": 8,
    "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceL2": 2,
}


@dataclass
class FlopReport:
    flops: int  # 2 × multiply-adds of the MAC ops
    macs: int
    elementwise_flops: int
    by_op: dict[str, int] = field(default_factory=dict)  # FLOPs per op type (MAC ops)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def to_dict(self) -> dict:
        return {**asdict(self), "gflops": self.gflops}


def _dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return dims


def _fix_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    model = copy.deepcopy(model)
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name not in shapes:
            raise ValueError(f"no shape given for graph input {inp.name!r}")
        dims = inp.type.tensor_type.shape.dim
        want = list(shapes[inp.name])
        if len(dims) != len(want):
            raise ValueError(f"input {inp.name!r} has rank {len(dims)}, shape given {want}")
        for d, v in zip(dims, want, strict=True):
            d.Clear()
            d.dim_value = int(v)
    return model


def _measured_shapes(model: onnx.ModelProto, names: list[str],
                     shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """Run the graph once in onnxruntime with `names` as extra outputs; their real shapes."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    del probe.graph.value_info[:]
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    feeds = {}
    for inp in sess.get_inputs():
        dtype = np.int64 if "int64" in inp.type else (
            np.int32 if "int32" in inp.type else np.float32)
        # ones: valid token ids / attention masks, finite images
        feeds[inp.name] = np.ones(shapes[inp.name], dtype=dtype)
    outs = sess.run(names, feeds)
    return {n: list(o.shape) for n, o in zip(names, outs, strict=True)}


def count_flops(model: str | Path | onnx.ModelProto,
                input_shapes: Mapping[str, tuple[int, ...]]) -> FlopReport:
    """FLOPs of one run of `model` with its inputs at `input_shapes` (see module docstring)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    fixed = _fix_inputs(model, input_shapes)
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        shapes[vi.name] = _dims(vi)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    for node in graph.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(numpy_helper.to_array(attr.t).shape)

    def needed(node: onnx.NodeProto) -> list[str]:
        if node.op_type in MAC_OPS:
            return [n for n in (*node.input[:2], node.output[0]) if n]
        if node.op_type in ELEMENTWISE:
            return [node.output[0]] if node.op_type[:6] != "Reduce" else [node.input[0]]
        return []

    missing = sorted({n for node in graph.node for n in needed(node) if shapes.get(n) is None})
    if missing:
        shapes.update(_measured_shapes(fixed, missing, input_shapes))

    macs, elementwise, by_op = 0, 0, {}
    for node in graph.node:
        op = node.op_type
        if op in MAC_OPS:
            n = _node_macs(node, shapes)
            macs += n
            by_op[op] = by_op.get(op, 0) + 2 * n
        elif op in ELEMENTWISE:
            ref = shapes[needed(node)[0]]
            elementwise += ELEMENTWISE[op] * int(np.prod(ref)) if ref is not None else 0
    return FlopReport(flops=2 * macs, macs=macs, elementwise_flops=elementwise, by_op=by_op,
                      input_shapes={k: list(v) for k, v in input_shapes.items()})


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int] | None]) -> int:
    op = node.op_type
    if op in ("QLinearConv", "QLinearMatMul"):  # x, x_scale, x_zp, w, w_scale, w_zp, ...
        a, b = shapes[node.input[0]], shapes[node.input[3]]
        op = "Conv" if op == "QLinearConv" else "MatMul"
    else:
        a, b = shapes[node.input[0]], shapes[node.input[1]]
    out = shapes[node.output[0]]
    if op in ("Conv", "ConvInteger"):  # out [N, Co, *s], w [Co, Ci/g, *k]
        return int(np.prod(out)) * int(np.prod(b[1:]))
    if op == "ConvTranspose":  # w [Ci, Co/g, *k]: each input value scatters to Co/g·k outputs
        return int(np.prod(a)) * int(np.prod(b[1:]))
    if op == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return int(np.prod(out)) * int(k)
    # MatMul family: out [..., M, N], K = last dim of A (A 1-D: its only dim)
    return int(np.prod(out)) * int(a[-1])
