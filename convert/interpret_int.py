"""Integer reference interpreter: the golden model every integer backend (ONNX, Lava) must equal.

One small function per op; integer arithmetic only, with the rounding rules of ``fixed_point``.
Tensors are stored as int32 (states are saturated to 24 bits, spikes are 0..D); an op widens to
int64 where a product or a shift could leave 32 bits. Linear ops run through
``kernels.exact_int``, which uses float BLAS only where it provably returns the exact integer
result. ``evaluate`` is one op's whole semantics, saturation included; the Lava process models
run it too.
"""
from __future__ import annotations

import numpy as np

from medqk.convert import kernels
from medqk.convert.fixed_point import STATE_BITS, STATE_MAX, STATE_MIN, saturate, saturated_count, shift_round, shift_round_half_even
from medqk.convert.graph import Graph
# exact on integers: the float interpreter's functions compute these too
from medqk.convert.interpret_float import concat, group_broadcast, group_sum
from medqk.convert.synapses import interp_matrix_int


def input_(op, x):
    return x


def conv2d(op, x):
    if not x.any():  # no spike arrived: only the bias (event-driven, as on a chip)
        acc = np.zeros((x.shape[0], *op.out_shape([x.shape[1:]])), np.int64)
    else:
        acc = kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding, op.groups,
                                weight_sum=kernels.largest_weight_sum(op.weight_mantissa))
    # an int32 accumulator (|acc| < 2**24) stays int32, half the memory traffic, where
    # acc + bias + 2**(shift-1) surely fits; otherwise widen before requantizing in place
    if acc.dtype == np.int32 and not (0 < op.shift < 30 and np.abs(op.bias_acc).max(initial=0) < 1 << 29):
        acc = acc.astype(np.int64)
    return shift_round(acc, op.shift, offset=op.bias_acc[:, None, None].astype(acc.dtype), in_place=True)


def upsample(op, x):
    h, w = x.shape[2:]
    uh = interp_matrix_int(h, h * op.factor, op.frac_bits)
    uw = interp_matrix_int(w, w * op.factor, op.frac_bits)
    # every row of either matrix sums to 2**frac_bits (non-negative weights)
    z = kernels.exact_int(kernels.separable, x, uh, uw, weight_sum=1 << (2 * op.frac_bits))
    return shift_round(z, 2 * op.frac_bits, in_place=True)


def nisf(op, x):
    v = x if op.multiplier == 1 and op.shift > 0 else x.astype(np.int64) * op.multiplier
    return np.clip(shift_round_half_even(v, op.shift), 0, op.levels).astype(np.int32)


def sigmoid(op, x):
    return x  # the integer logits; probabilities are computed on the host (neurons.logits_to_probabilities)


def add(op, *xs):
    return sum(_rescaled(x, m, k) for x, m, k in zip(xs, op.multipliers, op.shifts))


def _rescaled(x, multiplier: int, shift: int):
    if multiplier == 1 and shift >= 0:  # a rounding right shift of a 24-bit state stays in int32
        return shift_round(x, shift) if shift else x
    return shift_round(x.astype(np.int64) * multiplier, shift, in_place=True)


def affine(op, x):
    return shift_round(x * op.multiplier[:, None, None], op.shift, offset=op.offset_int[:, None, None], in_place=True)


def mul(op, a, b):
    return np.multiply(a, b, dtype=np.int64)  # spike products are small; int64 keeps any product exact


def complement(op, x):
    return np.int32(op.one) - x


OPS = {
    "input": input_, "conv2d": conv2d, "upsample": upsample, "nisf": nisf, "sigmoid": sigmoid,
    "add": add, "mul": mul, "affine": affine, "complement": complement, "group_sum": group_sum,
    "group_broadcast": group_broadcast, "concat": concat,
}
#: ops whose result is saturated to the 24-bit state range (the others cannot leave it)
SATURATING = ("conv2d", "add", "affine")


def evaluate(op, *inputs: np.ndarray) -> tuple[np.ndarray, int]:
    """One op on its integer inputs: (the int32 result, how many values saturated).

    Results of saturating ops are clipped to the 24-bit state range. Any other op stays inside it
    in a valid graph (spikes, their products and sums); a result beyond it comes back as int64,
    unclipped, so that the caller can name the node."""
    y = OPS[op.type](op, *inputs)
    saturated = 0
    # two reductions decide; counting and clipping only run when something is out of range
    checked = op.type in SATURATING or y.dtype != np.int32
    if checked and y.size and (y.min() < STATE_MIN or y.max() > STATE_MAX):
        if op.type not in SATURATING:  # not in a valid graph: left wide, for the caller to refuse
            return y, 0
        saturated = saturated_count(y)
        y = saturate(y)
    return y.astype(np.int32, copy=False), saturated


def run(graph: Graph, x_int: np.ndarray, record: bool = False):
    """Evaluate a quantized graph on integer input [N, C, H, W] (``io.quantize_input``).

    Returns the integer output (int64), or with ``record`` (output, {name: tensor}, {name: saturated count}).
    """
    x_int = np.asarray(x_int)
    if x_int.dtype.kind not in "iu":
        raise TypeError(f"the integer interpreter takes integer input, got {x_int.dtype}")
    if saturated_count(x_int):
        raise ValueError(f"integer input beyond the {STATE_BITS}-bit state range ({x_int.min()}..{x_int.max()}); "
                         "io.quantize_input saturates it")
    values: dict[str, np.ndarray] = {}
    saturated: dict[str, int] = {}
    remaining = {n.name: len(graph.consumers(n.name)) for n in graph.nodes()}
    out_name = graph.output.name
    for node in graph.nodes():
        args = [values[i] for i in node.inputs] if node.inputs else [x_int]
        values[node.name], saturated[node.name] = evaluate(node.op, *args)
        if not record:
            for i in set(node.inputs):
                remaining[i] -= 1
                if remaining[i] == 0 and i != out_name:
                    del values[i]
    out = values[out_name].astype(np.int64)
    if not record:
        return out
    return out, values, {name: n for name, n in saturated.items() if graph[name].op.type in SATURATING}
