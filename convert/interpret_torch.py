"""The integer graph in torch: differentiable, for integer-aware fine-tuning (``finetune``).

Values are the integer graph's *stored* integers, held in float tensors, and every op computes
what ``interpret_int`` computes: the same rounding shifts (half up), the same NISF (half to
even, clipped to 0..D), the same 24-bit saturation. Rounding is a straight-through estimator:
the forward pass rounds, the backward pass sees the identity (and NISF's clip, as the float
model's surrogate). In float64 every value of a converted MedQKFormer is an exact integer, so
the forward pass equals ``interpret_int`` bit for bit (tests/test_finetune.py); float32 is
exact on spike convolutions and close elsewhere, which is what training needs.

The quantized parameters (weight mantissas, bias accumulators, shifts, affine multipliers) come
from a ``parameters`` mapping: read from a quantized graph (``graph_parameters``), or computed
from a torch module's own weights on every forward pass so that gradients reach them
(``finetune.ModuleParameters``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medqk.convert import elementwise as ew
from medqk.convert import neurons
from medqk.convert import synapses as syn
from medqk.convert.fixed_point import STATE_MAX, STATE_MIN
from medqk.convert.graph import Graph
from medqk.convert.io import Input
from medqk.convert.op import FLOAT_ONLY, rule


class _ScaledRound(torch.autograd.Function):
    """``rounding(x * scale)`` forward; ``grad * scale`` backward (straight through the rounding).
    One function, not ``x + (round(x) - x).detach()``: two passes over a state instead of four,
    and nothing saved for the backward pass."""

    @staticmethod
    def forward(ctx, x, scale: float, half_up: bool):
        ctx.scale = scale
        y = x * scale if scale != 1.0 else x.clone()
        return torch.floor_(y.add_(0.5)) if half_up else torch.round_(y)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale if ctx.scale != 1.0 else grad, None, None


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2) forward, identity backward."""
    return _ScaledRound.apply(x, 1.0, True)


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    """torch.round (ties to even) forward, identity backward."""
    return _ScaledRound.apply(x, 1.0, False)


def shift_round(x: torch.Tensor, k: int) -> torch.Tensor:
    """``fixed_point.shift_round``: x / 2**k rounded half up (k > 0), x * 2**-k (k <= 0)."""
    return _ScaledRound.apply(x, 2.0**-k, True) if k > 0 else x * 2.0**-k


def saturate(x: torch.Tensor) -> torch.Tensor:
    """Clipped to the 24-bit state range (checked first: a state rarely leaves it, and a clamp
    costs a pass and a saved mask)."""
    peak = x.detach().abs().max()
    return torch.clamp(x, STATE_MIN, STATE_MAX) if peak > STATE_MAX else x


# -- one small function per op: (node's op, its parameters, inputs) -> output --------------------

def input_(op, p, x):
    return x


def conv2d(op, p, x):
    acc = F.conv2d(x, p["weight_mantissa"], p["bias_acc"], op.stride, op.padding, 1, op.groups)
    return saturate(shift_round(acc, p["shift"]))


def upsample(op, p, x):
    h, w = x.shape[2:]
    uh, uw = (torch.as_tensor(op.matrix_int(n), dtype=x.dtype) for n in (h, w))
    return shift_round(torch.einsum("ih,nchw,jw->ncij", uh, x, uw), 2 * op.frac_bits)


def nisf(op, p, x):
    if op.threshold is not None:  # a binary neuron: exact forward, no gradient (nothing to pass straight through)
        return (x >= op.threshold_int).to(x.dtype)
    v = x * float(op.multiplier) * 2.0**-op.shift
    return round_half_even(torch.clamp(v, 0, op.levels))


def output_activation(op, p, x):
    return x  # the integer logits, as in every integer backend


def add(op, p, *xs):
    return saturate(sum(shift_round(x * float(m), k) for x, m, k in zip(xs, op.multipliers, op.shifts)))


def affine(op, p, x):
    return saturate(shift_round(x * p["multiplier"][:, None, None] + p["offset_int"][:, None, None], p["shift"]))


def mul(op, p, a, b):
    return a * b


def complement(op, p, x):
    return op.one - x


def group_sum(op, p, x):
    n, c, h, w = x.shape
    return x.reshape(n, op.groups, c // op.groups, h, w).sum(dim=2)


def group_broadcast(op, p, x):
    return x.repeat_interleave(op.repeats, dim=1)


def concat(op, p, *xs):
    return torch.cat(xs, dim=1)


def channel_slice(op, p, x):
    return x[:, op.start:op.stop]


def maxpool2d(op, p, x):
    return F.max_pool2d(x, op.kernel, op.stride)



#: op class -> its integer semantics in torch
OPS = {
    Input: input_, syn.Conv2d: conv2d, syn.Upsample: upsample, syn.ConvTranspose2d: FLOAT_ONLY,
    neurons.NISF: nisf, neurons.Sigmoid: output_activation, neurons.Softmax: output_activation,
    neurons.ReLU: FLOAT_ONLY, ew.Add: add, ew.Mul: mul, ew.Affine: affine, ew.BatchNorm: FLOAT_ONLY,
    ew.Complement: complement, ew.GroupSum: group_sum, ew.GroupBroadcast: group_broadcast,
    ew.Concat: concat, ew.ChannelSlice: channel_slice, ew.MaxPool2d: maxpool2d,
}


def graph_parameters(qgraph: Graph, dtype=torch.float64) -> dict[str, dict]:
    """The quantized graph's own integer parameters, as ``run`` takes them."""
    params: dict[str, dict] = {}
    for node in qgraph.nodes():
        op = node.op
        if isinstance(op, syn.Conv2d):
            params[node.name] = {"weight_mantissa": torch.as_tensor(op.weight_mantissa, dtype=dtype),
                                 "bias_acc": torch.as_tensor(op.bias_acc, dtype=dtype), "shift": op.shift}
        elif isinstance(op, ew.Affine):
            params[node.name] = {"multiplier": torch.as_tensor(op.multiplier, dtype=dtype),
                                 "offset_int": torch.as_tensor(op.offset_int, dtype=dtype), "shift": op.shift}
    return params


def quantize_images(qgraph: Graph, images: torch.Tensor) -> torch.Tensor:
    """``io.quantize_input`` in torch: round half to even at the input's fraction bits, saturated."""
    return saturate(torch.round(images * 2.0**qgraph.input.tensor.frac_bits))


def run(qgraph: Graph, parameters: dict[str, dict], x_stored: torch.Tensor) -> torch.Tensor:
    """The integer graph's stored output (logits, for an output activation) on stored input."""
    values: dict[str, torch.Tensor] = {}
    remaining = {n.name: len(qgraph.consumers(n.name)) for n in qgraph.nodes()}
    for node in qgraph.nodes():
        args = [values[i] for i in node.inputs] if node.inputs else [x_stored]
        values[node.name] = rule(OPS, node.op, "integer semantics in torch")(node.op, parameters.get(node.name), *args)
        for i in set(node.inputs):
            remaining[i] -= 1
            if remaining[i] == 0:
                del values[i]
    return values[qgraph.output.name]


def output_probabilities(qgraph: Graph, stored: torch.Tensor) -> torch.Tensor:
    """The network output from the stored output, as ``neurons.output_values`` (host side)."""
    scale = neurons.output_scale(qgraph)
    activation = neurons.output_activation(qgraph)
    if activation == "sigmoid":
        return torch.sigmoid(stored * scale)
    return torch.softmax(stored * scale, dim=1) if activation == "softmax" else stored * scale


def forward(qgraph: Graph, parameters: dict[str, dict], images: torch.Tensor) -> torch.Tensor:
    """Float images [N, C, H, W] -> the integer graph's network output (probabilities or logits)."""
    return output_probabilities(qgraph, run(qgraph, parameters, quantize_images(qgraph, images)))


def exact_outputs(qgraph: Graph, images: np.ndarray) -> np.ndarray:
    """float32 network outputs of the integer graph computed here in float64 (equal to the integer
    interpreter's wherever every stored value stays below 2**53)."""
    with torch.no_grad():
        out = forward(qgraph, graph_parameters(qgraph), torch.as_tensor(np.asarray(images), dtype=torch.float64))
    return out.float().numpy()
