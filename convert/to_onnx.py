"""Lower the spike-graph IR to ONNX: a float model and an integer model bit-exact with the interpreter.

``float_model(graph, meta)`` lowers the prepared *float* graph (not the torch module: the IR is the
single source of what every backend runs). Input ``image`` float32 [N, C, H, W], output
``probabilities`` [N, 1, H, W]; batch, height and width are dynamic (the upsampling is a ``Resize``
with ``scales``, linear, ``align_corners``, which is torch's bilinear rule at any size). NISF is
``Round(Clip(x * in_scale, 0, D))``; ONNX ``Round`` rounds half to even, as torch does.

``int_model(qgraph, meta)`` lowers the quantized graph. Input ``image_int`` int64 [N, C, H, W] (the
host's ``io.quantize_input``), output ``logits`` int64 (the integer logits of the final sigmoid;
probabilities are computed on the host by ``neurons.logits_to_probabilities``). H and W are fixed:
the integer upsampling matrices depend on the size. Every value equals ``interpret_int``'s, bit for
bit, because every op is chosen to be exact in onnxruntime's CPU kernels:

- Activations travel as **float64** holding integers. float64 represents every integer below 2**53
  exactly, and every intermediate here stays far below (24-bit states times 24-bit multipliers
  < 2**48; convolution accumulators < 2**42; upsampling sums < 2**48), so Add, Sub, Mul, MatMul,
  Floor and Round return the exact integer results whatever the order of evaluation. Multiplying
  by 2**-k is exact too, so ``shift_round(v, k) = Floor((v + 2**(k-1)) * 2**-k)`` and the NISF's
  round-half-even shift is ``Round(v * 2**-k)`` (ONNX ``Round`` is half-to-even). int64 would be
  exact as well, but ONNX ``Div`` truncates toward zero, ``BitShift`` is unsigned-only, and neither
  vectorises in onnxruntime.
- **Convolutions** run as float32 ``Conv``: the only ``Conv`` onnxruntime's CPU provider has
  (float64 is refused). float32 is exact while every partial sum is an integer of magnitude at
  most 2**24, i.e. while ``max|x| * max_o sum|w_o|`` <= 2**24 (``S`` below; weights are 8-bit
  mantissas). Spike maps (0..D) always satisfy it. A 24-bit state does not, so it is split into
  digit planes of ``b`` bits (``(2**b - 1) * S <= 2**24``), each plane convolved exactly in
  float32 and the results recombined in float64. ``ConvInteger`` (int32 accumulation) is exact too,
  but was 4-5x slower than float32 ``Conv`` in onnxruntime 1.32 on this machine's CPU.
- Bias, rounding shift and 24-bit saturation follow in float64 (``Clip`` with scalar bounds).
- Upsampling is ``Uh @ x @ Uw.T`` with the integer matrices of ``synapses.interp_matrix_int``, as
  float64 ``MatMul`` (exact: sums < 2**48), then the rounding shift.

Both models carry the converted model's provenance in ``metadata_props`` (preprocessing, NISF
levels, widths, source checkpoint sha256, medqk version); the integer model also its input
fractional bits and logit scale, so it can be used without the rest of the converted model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medqk.convert.fixed_point import STATE_BITS
from medqk.convert.graph import SPIKE, Graph, Node
from medqk.convert.synapses import interp_matrix_int

#: ONNX operator set of both models
OPSET = 17
#: IR version 8 is what opset 17 came with; every onnxruntime since 1.13 loads it
IR_VERSION = 8
FLOAT_FILE = "model.onnx"
INT_FILE = "model-int.onnx"
FLOAT_INPUT, FLOAT_OUTPUT = "image", "probabilities"
INT_INPUT, INT_OUTPUT = "image_int", "logits"
#: float32 holds every integer of magnitude up to this exactly
FLOAT32_EXACT = 2**24
STATE_MIN, STATE_MAX = -(1 << (STATE_BITS - 1)), (1 << (STATE_BITS - 1)) - 1


class _Builder:
    """Collects ONNX nodes and initializers; names each op after the IR node it lowers."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[tuple, str] = {}
        self._casts: dict[tuple[str, int], str] = {}
        self.node_name = ""
        self._count = 0

    def const(self, value, dtype=None) -> str:
        """An initializer; scalars are shared by dtype and value."""
        array = np.asarray(value, dtype=dtype or self.dtype)
        key = (array.dtype.str, array.item()) if array.ndim == 0 else None
        if key in self._constants:
            return self._constants[key]
        name = f"{self.node_name}/const{len(self.initializers)}" if key is None else f"const/{array.dtype}/{array.item()!r}"
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._constants[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self._count += 1
        out = out or f"{self.node_name}/{op_type}{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def cast(self, name: str, to: int) -> str:
        """``name`` cast to ONNX type ``to``, once per tensor and type."""
        if (name, to) not in self._casts:
            self._casts[(name, to)] = self.op("Cast", [name], to=to)
        return self._casts[(name, to)]

    def scaled(self, x: str, factor) -> str:
        """x * factor, skipping the multiplication by one."""
        return x if np.all(np.asarray(factor) == 1) else self.op("Mul", [x, self.const(factor)])


def _per_channel(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1, 1)


# -- ops with one lowering for both models (structure only, any dtype) -----------------------

def group_sum(b: _Builder, node: Node, x: str) -> str:
    size = node.tensor.shape[0] and len(node.inputs) and None  # placeholder removed below
    raise NotImplementedError


def _group_sum(b: _Builder, node: Node, x: str, in_channels: int) -> str:
    groups = node.op.groups
    split = b.const(np.full(groups, in_channels // groups), np.int64)
    parts = [f"{node.name}/part{g}" for g in range(groups)]
    b.nodes.append(helper.make_node("Split", [x, split], parts, name=f"{node.name}/split", axis=1))
    sums = [b.op("ReduceSum", [p, b.const(np.array([1]), np.int64)], keepdims=1) for p in parts]
    return b.op("Concat", sums, axis=1)


def group_broadcast(b: _Builder, node: Node, x: str) -> str:
    groups = node.tensor.shape[0] // node.op.repeats
    indices = b.const(np.repeat(np.arange(groups), node.op.repeats), np.int64)
    return b.op("Gather", [x, indices], axis=1)


def concat(b: _Builder, node: Node, *xs: str) -> str:
    return b.op("Concat", list(xs), axis=1)


def mul(b: _Builder, node: Node, x: str, y: str) -> str:
    return b.op("Mul", [x, y])


def complement(b: _Builder, node: Node, x: str) -> str:
    return b.op("Sub", [b.const(node.op.one), x])
