"""Element-wise and channel-structure ops.

Float semantics on stored values; integer semantics after ``quantize`` (all exact except where a
rounding shift is named; ``requant(v, M, k) = shift_round(v * M, k)``):

    add         y = sum_i coefficients[i] * x_i         | int: saturate(sum_i requant(x_i, M_i, k_i))
    mul         y = a * b                               | int: a * b (spike products, exact)
    affine      y = scale[c] * x + offset[c]            | int: saturate(shift_round(x * m[c] + b[c], k))
    batchnorm   (float only; folded away by passes.fold_batchnorm)
    complement  y = one - x   (one = 1/scale: D - s for spikes) | int: one - x
    group_sum   y[:, g] = sum over channels g*C/G .. (g+1)*C/G - 1
    group_broadcast  y = repeat each channel ``repeats`` times (channel-wise, consecutive)
    concat      along channels
    channel_slice  y = x[start:stop] along channels (chunk, split, slicing)
    maxpool2d   y = max over each window            | int: the same max (exact; on spike maps it
                                                      commutes with the neuron, which is monotone)
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.op import Op


@dataclasses.dataclass(eq=False)
class Add(Op):
    type: ClassVar[str] = "add"
    arity: ClassVar[int | None] = None
    QUANTIZED: ClassVar[tuple[str, ...]] = ("multipliers", "shifts")

    coefficients: tuple[float, ...] = (1.0, 1.0)
    multipliers: tuple[int, ...] | None = None
    shifts: tuple[int, ...] | None = None

    def out_shape(self, in_shapes):
        if len(set(map(tuple, in_shapes))) != 1:
            raise ValueError(f"add needs inputs of one shape, got {in_shapes}")
        return tuple(in_shapes[0])


@dataclasses.dataclass(eq=False)
class Mul(Op):
    type: ClassVar[str] = "mul"
    arity: ClassVar[int | None] = 2

    def out_shape(self, in_shapes):
        if tuple(in_shapes[0]) != tuple(in_shapes[1]):
            raise ValueError(f"mul needs inputs of one shape, got {in_shapes}")
        return tuple(in_shapes[0])


@dataclasses.dataclass(eq=False)
class Affine(Op):
    """Per-channel ``scale * x + offset`` (a BatchNorm that follows a sum, unfolded)."""

    type: ClassVar[str] = "affine"
    QUANTIZED: ClassVar[tuple[str, ...]] = ("multiplier", "offset_int", "shift")

    scale: np.ndarray
    offset: np.ndarray
    multiplier: np.ndarray | None = None
    offset_int: np.ndarray | None = None
    shift: int | None = None


@dataclasses.dataclass(eq=False)
class BatchNorm(Op):
    """Inference BatchNorm2d as traced; ``passes.fold_batchnorm`` turns it into a conv or affine."""

    type: ClassVar[str] = "batchnorm"

    mean: np.ndarray
    var: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    eps: float = 1e-5

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        scale = self.weight / np.sqrt(self.var + self.eps)
        return scale, self.bias - self.mean * scale


@dataclasses.dataclass(eq=False)
class Complement(Op):
    """``one - x``: the inactivated spikes 1 - s/D of SDQK; ``one`` is D once spikes are integers."""

    type: ClassVar[str] = "complement"

    one: float = 1.0


@dataclasses.dataclass(eq=False)
class GroupSum(Op):
    """Sum over consecutive channel groups: [C, H, W] -> [groups, H, W] (SDQK's per-head sum)."""

    type: ClassVar[str] = "group_sum"

    groups: int = 4

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        if c % self.groups:
            raise ValueError(f"group_sum: {c} channels do not split into {self.groups} groups")
        return (self.groups, h, w)


@dataclasses.dataclass(eq=False)
class GroupBroadcast(Op):
    """Repeat each channel ``repeats`` times consecutively: [G, H, W] -> [G*repeats, H, W]."""

    type: ClassVar[str] = "group_broadcast"

    repeats: int = 1

    def out_shape(self, in_shapes):
        g, h, w = in_shapes[0]
        return (g * self.repeats, h, w)


@dataclasses.dataclass(eq=False)
class Concat(Op):
    """Concatenation along channels."""

    type: ClassVar[str] = "concat"
    arity: ClassVar[int | None] = None

    def out_shape(self, in_shapes):
        if len({tuple(s[1:]) for s in in_shapes}) != 1:
            raise ValueError(f"concat needs inputs of one spatial size, got {in_shapes}")
        return (sum(s[0] for s in in_shapes),) + tuple(in_shapes[0][1:])


@dataclasses.dataclass(eq=False)
class ChannelSlice(Op):
    """Channels ``start`` .. ``stop - 1`` of the input (``torch.chunk``, ``torch.split``, ``x[:, a:b]``)."""

    type: ClassVar[str] = "channel_slice"

    start: int = 0
    stop: int = 1

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        if not 0 <= self.start < self.stop <= c:
            raise ValueError(f"channel_slice {self.start}:{self.stop} is outside the input's {c} channels")
        return (self.stop - self.start, h, w)


@dataclasses.dataclass(eq=False)
class MaxPool2d(Op):
    """Max pooling, square window, no padding (ANN baselines; spike maps of spiking networks)."""

    type: ClassVar[str] = "maxpool2d"

    kernel: int = 2
    stride: int = 2

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        return (c, (h - self.kernel) // self.stride + 1, (w - self.kernel) // self.stride + 1)
