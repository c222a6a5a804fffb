"""Float reference interpreter: one small function per op, float64 numpy, stored values.

Reproduces the torch model (``run(graph, x)`` on a prepared float graph gives the torch
module's output); the integer interpreter is its quantized twin.
"""
from __future__ import annotations

import numpy as np

from medqk.convert import kernels
from medqk.convert.graph import Graph


def input_(op, x):
    return x


def conv2d(op, x):
    y = kernels.conv2d(x, op.weight, op.stride, op.padding, op.groups)
    return y if op.bias is None else y + op.bias[:, None, None]


def conv_transpose2d(op, x):
    y = kernels.conv_transpose2d(x, op.weight, op.stride, op.padding)
    return y if op.bias is None else y + op.bias[:, None, None]


def upsample(op, x):
    from medqk.convert.synapses import interp_matrix

    h, w = x.shape[2:]
    return kernels.separable(x, interp_matrix(h, h * op.factor), interp_matrix(w, w * op.factor))


def nisf(op, x):
    s = np.round(np.clip(x * op.in_scale, 0, op.levels))  # numpy rounds half to even, as torch does
    return s if op.integer_output else s / op.levels


def relu(op, x):
    return np.maximum(x, 0)


def sigmoid(op, x):
    return 1.0 / (1.0 + np.exp(-x * op.in_scale))


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


def maxpool2d(op, x):
    return kernels.maxpool2d(x, op.kernel, op.stride)


OPS = {
    "input": input_, "conv2d": conv2d, "conv_transpose2d": conv_transpose2d, "upsample": upsample,
    "nisf": nisf, "relu": relu, "sigmoid": sigmoid, "add": add, "mul": mul, "affine": affine,
    "batchnorm": batchnorm, "complement": complement, "group_sum": group_sum,
    "group_broadcast": group_broadcast, "concat": concat, "maxpool2d": maxpool2d,
}


def run(graph: Graph, x: np.ndarray, record: bool = False):
    """Evaluate ``graph`` on ``x`` [N, C, H, W]; returns the output, or (output, {name: tensor})."""
    values: dict[str, np.ndarray] = {}
    remaining = {n.name: len(graph.consumers(n.name)) for n in graph.nodes()}
    out_name = graph.output.name
    for node in graph.nodes():
        args = [values[i] for i in node.inputs] if node.inputs else [np.asarray(x, dtype=np.float64)]
        values[node.name] = OPS[node.op.type](node.op, *args)
        if not record:  # free tensors nobody needs any more
            for i in set(node.inputs):
                remaining[i] -= 1
                if remaining[i] == 0 and i != out_name:
                    del values[i]
    return (values[out_name], values) if record else values[out_name]
