"""Integer reference interpreter: the golden model every integer backend (ONNX, Lava) must equal.

One small function per op; integer arithmetic only (int64 arrays throughout; the rounding rules
are those of ``fixed_point``). Linear ops run through ``kernels.exact_int``, which uses float64
BLAS only where it provably returns the exact integer result.
"""
from __future__ import annotations

import numpy as np

from medqk.convert import kernels
from medqk.convert.fixed_point import saturate, saturated_count, shift_round, shift_round_half_even
from medqk.convert.graph import Graph
# exact and dtype-preserving: the float interpreter's functions compute these on integers too
from medqk.convert.interpret_float import concat, group_broadcast, group_sum, mul
from medqk.convert.synapses import interp_matrix_int


def input_(op, x):
    return x


def conv2d(op, x):
    fan_in = op.weight_mantissa[0].size
    acc = kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding, op.groups, bound_terms=fan_in)
    return shift_round(acc + op.bias_acc[:, None, None], op.shift)


def upsample(op, x):
    h, w = x.shape[2:]
    uh = interp_matrix_int(h, h * op.factor, op.frac_bits)
    uw = interp_matrix_int(w, w * op.factor, op.frac_bits)
    # each output sums at most 2 x 2 inputs, each weighted by at most 2**frac_bits per axis
    z = kernels.exact_int(kernels.separable, x, uh, uw, bound_terms=4 << op.frac_bits)
    return shift_round(z, 2 * op.frac_bits)


def nisf(op, x):
    return np.clip(shift_round_half_even(x * op.multiplier, op.shift), 0, op.levels)


def sigmoid(op, x):
    return x  # the integer logits; probabilities are computed on the host (neurons.logits_to_probabilities)


def add(op, *xs):
    return sum(shift_round(x * m, k) for x, m, k in zip(xs, op.multipliers, op.shifts))


def affine(op, x):
    return shift_round(x * op.multiplier[:, None, None] + op.offset_int[:, None, None], op.shift)


def complement(op, x):
    return np.int64(op.one) - x


OPS = {
    "input": input_, "conv2d": conv2d, "upsample": upsample, "nisf": nisf, "sigmoid": sigmoid,
    "add": add, "mul": mul, "affine": affine, "complement": complement, "group_sum": group_sum,
    "group_broadcast": group_broadcast, "concat": concat,
}
#: ops whose result is saturated to the 24-bit state range (the others cannot leave it)
SATURATING = ("conv2d", "add", "affine")


def run(graph: Graph, x_int: np.ndarray, record: bool = False):
    """Evaluate a quantized graph on integer input [N, C, H, W] (``io.quantize_input``).

    Returns the integer output, or with ``record`` (output, {name: tensor}, {name: saturated count}).
    """
    x_int = np.asarray(x_int)
    if x_int.dtype.kind not in "iu":
        raise TypeError(f"the integer interpreter takes integer input, got {x_int.dtype}")
    values: dict[str, np.ndarray] = {}
    saturated: dict[str, int] = {}
    remaining = {n.name: len(graph.consumers(n.name)) for n in graph.nodes()}
    out_name = graph.output.name
    for node in graph.nodes():
        args = [values[i] for i in node.inputs] if node.inputs else [x_int.astype(np.int64)]
        y = OPS[node.op.type](node.op, *args)
        if node.op.type in SATURATING:
            if record:
                saturated[node.name] = saturated_count(y)
            y = saturate(y)
        values[node.name] = y
        if not record:
            for i in set(node.inputs):
                remaining[i] -= 1
                if remaining[i] == 0 and i != out_name:
                    del values[i]
    return (values[out_name], values, saturated) if record else values[out_name]
