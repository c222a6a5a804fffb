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

from medqk.convert import elementwise as ew
from medqk.convert import kernels, neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import STATE_BITS, STATE_MAX, STATE_MIN, saturate, saturated_count, shift_round, shift_round_half_even
from medqk.convert.graph import Graph
# exact on integers: the float interpreter's functions compute these too
from medqk.convert.interpret_float import channel_slice, concat, group_broadcast, group_sum, maxpool2d
from medqk.convert.io import Input
from medqk.convert.op import FLOAT_ONLY, rule

#: why the float-only ops have no integer form


def input_(op, x):
    return x


def conv2d(op, x):
    if not x.any():  # no spike arrived: only the bias (event-driven, as on a chip)
        acc = np.zeros((x.shape[0], *op.out_shape([x.shape[1:]])), np.int64)
    else:
        acc = kernels.exact_int(kernels.conv2d, x, op.weight_mantissa, op.stride, op.padding, op.groups,
                                weight_sum=kernels.largest_weight_sum(op.weight_mantissa))
    return conv2d_requantize(op, acc)


def conv2d_requantize(op, acc):
    """A convolution's dendritic sums [N, O, H, W] -> its output before saturation: bias and rounding
    shift (the Lava lowering's neuron side of a ``Conv`` process)."""
    # an int32 accumulator (|acc| < 2**24) stays int32, half the memory traffic, where
    # acc + bias + 2**(shift-1) surely fits; otherwise widen before requantizing in place
    if acc.dtype == np.int32 and not (0 < op.shift < 30 and np.abs(op.bias_acc).max(initial=0) < 1 << 29):
        acc = acc.astype(np.int64)
    return shift_round(acc, op.shift, offset=op.bias_acc[:, None, None].astype(acc.dtype), in_place=True)


def upsample(op, x):
    h, w = x.shape[2:]
    uh, uw = op.matrix_int(h), op.matrix_int(w)
    # every row of either matrix sums to 2**frac_bits (non-negative weights)
    z = kernels.exact_int(kernels.separable, x, uh, uw, weight_sum=1 << (2 * op.frac_bits))
    return shift_round(z, 2 * op.frac_bits, in_place=True)


def nisf(op, x):
    if op.threshold is not None:
        return (x >= op.threshold_int).astype(np.int32)
    v = x if op.multiplier == 1 and op.shift > 0 else x.astype(np.int64) * op.multiplier
    return np.clip(shift_round_half_even(v, op.shift), 0, op.levels).astype(np.int32)


def output_activation(op, x):
    return x  # the integer logits; probabilities are computed on the host (neurons.output_values)


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


#: op class -> its integer semantics
OPS = {
    Input: input_, syn.Conv2d: conv2d, syn.Upsample: upsample, syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: nisf, neurons.Sigmoid: output_activation, neurons.Softmax: output_activation,
    neurons.ReLU: FLOAT_ONLY, ew.Add: add, ew.Mul: mul, ew.Affine: affine, ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: complement, ew.GroupSum: group_sum, ew.GroupBroadcast: group_broadcast,
    ew.Concat: concat, ew.ChannelSlice: channel_slice, ew.MaxPool2d: maxpool2d,
}
#: ops whose result is saturated to the 24-bit state range (the others cannot leave it)
SATURATING = (syn.Conv2d, ew.Add, ew.Affine)


def evaluate(op, *inputs: np.ndarray) -> tuple[np.ndarray, int]:
    """One op on its integer inputs: (the int32 result, how many values saturated).

    Results of saturating ops are clipped to the 24-bit state range. Any other op stays inside it
    in a valid graph (spikes, their products and sums); a result beyond it comes back as int64,
    unclipped, so that the caller can name the node."""
    y = rule(OPS, op, "integer semantics")(op, *inputs)
    saturating = isinstance(op, SATURATING)
    saturated = 0
    # two reductions decide; counting and clipping only run when something is out of range
    checked = saturating or y.dtype != np.int32
    if checked and y.size and (y.min() < STATE_MIN or y.max() > STATE_MAX):
        if not saturating:  # not in a valid graph: left wide, for the caller to refuse
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
    return out, values, {name: n for name, n in saturated.items() if isinstance(graph[name].op, SATURATING)}
