"""Float reference interpreter: one small function per op, float64 numpy, stored values.

Reproduces the torch model (``run(graph, x)`` on a prepared float graph gives the torch
module's output); the integer interpreter is its quantized twin.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from medqk.convert import elementwise as ew
from medqk.convert import kernels, neurons
from medqk.convert import synapses as syn
from medqk.convert.graph import Graph, Node
from medqk.convert.io import Input
from medqk.convert.op import rule


def input_(op, x):
    return x


def conv2d(op, x):
    y = kernels.conv2d(x, op.weight, op.stride, op.padding, op.groups)
    return y if op.bias is None else y + op.bias[:, None, None]


def conv_transpose2d(op, x):
    y = kernels.conv_transpose2d(x, op.weight, op.stride, op.padding)
    return y if op.bias is None else y + op.bias[:, None, None]


def upsample(op, x):
    """Exact interpolation weights; with ``op.frac_bits`` set, the integer graph's rounded ones
    (``convert/sensitivity.py`` measures what their rounding costs)."""
    h, w = x.shape[2:]
    if op.frac_bits is None:
        return kernels.separable(x, op.matrix(h), op.matrix(w))
    one = 2.0**op.frac_bits
    return kernels.separable(x, op.matrix_int(h) / one, op.matrix_int(w) / one)


def nisf(op, x):
    v = x * op.in_scale
    if op.threshold is not None:
        s = (v >= op.threshold).astype(np.float64)
    else:
        s = np.round(np.clip(v, 0, op.levels))  # numpy rounds half to even, as torch does
    return s if op.integer_output else s * op.spike_scale


def relu(op, x):
    return np.maximum(x, 0)


def sigmoid(op, x):
    return 1.0 / (1.0 + np.exp(-x * op.in_scale))


def softmax(op, x):
    return neurons.softmax(x * op.in_scale)


def add(op, *xs):
    return sum(c * x for c, x in zip(op.coefficients, xs))


def mul(op, a, b):
    return a * b


def affine(op, x):
    return x * op.scale[:, None, None] + op.offset[:, None, None]


def batchnorm(op, x):
    scale, offset = op.scale_offset()
    return x * scale[:, None, None] + offset[:, None, None]


def complement(op, x):
    return op.one - x


def group_sum(op, x):
    n, c, h, w = x.shape
    return x.reshape(n, op.groups, c // op.groups, h, w).sum(axis=2)


def group_broadcast(op, x):
    return np.repeat(x, op.repeats, axis=1)


def concat(op, *xs):
    return np.concatenate(xs, axis=1)


def channel_slice(op, x):
    return x[:, op.start:op.stop]


def maxpool2d(op, x):
    return kernels.maxpool2d(x, op.kernel, op.stride)


#: op class -> its float semantics
OPS = {
    Input: input_, syn.Conv2d: conv2d, syn.ConvTranspose2d: conv_transpose2d, syn.Upsample: upsample,
    neurons.NISF: nisf, neurons.ReLU: relu, neurons.Sigmoid: sigmoid, neurons.Softmax: softmax,
    ew.Add: add, ew.Mul: mul, ew.Affine: affine, ew.BatchNorm: batchnorm, ew.Complement: complement,
    ew.GroupSum: group_sum, ew.GroupBroadcast: group_broadcast, ew.Concat: concat,
    ew.ChannelSlice: channel_slice, ew.MaxPool2d: maxpool2d,
}


def run(graph: Graph, x: np.ndarray, record: bool = False,
        round_result: Callable[[Node, np.ndarray], np.ndarray] | None = None):
    """Evaluate ``graph`` on ``x`` [N, C, H, W]; returns the output, or (output, {name: tensor}).

    ``round_result(node, value)``, when given, replaces each node's result before its consumers
    read it (``convert/sensitivity.py`` puts the integer graph's state rounding back this way)."""
    values: dict[str, np.ndarray] = {}
    remaining = {n.name: len(graph.consumers(n.name)) for n in graph.nodes()}
    out_name = graph.output.name
    for node in graph.nodes():
        args = [values[i] for i in node.inputs] if node.inputs else [np.asarray(x, dtype=np.float64)]
        values[node.name] = rule(OPS, node.op, "float semantics")(node.op, *args)
        if round_result is not None:
            values[node.name] = round_result(node, values[node.name])
        if not record:  # free tensors nobody needs any more
            for i in set(node.inputs):
                remaining[i] -= 1
                if remaining[i] == 0 and i != out_name:
                    del values[i]
    return (values[out_name], values) if record else values[out_name]
