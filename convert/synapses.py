"""Synapses: weighted connections (convolution, transposed convolution, fixed bilinear upsampling).

Float semantics act on the *stored* values of the input tensor (``real = stored * scale``): the
input's scale is folded into the weights by ``passes.fold_nisf_normalization``. Integer semantics
(after ``quantize``) use 8-bit weight mantissas ``m`` with a shared exponent ``e``
(``weight ~= m * 2**e``), an integer bias at the accumulator's scale, and a rounding shift:

    conv2d (int):   y = saturate(shift_round(conv(x, m) + bias_acc, shift), 24)
    upsample (int): y = shift_round(Uh @ x @ Uw.T, 2 * frac_bits)   (per channel)
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from medqk.convert.op import Op


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


@dataclasses.dataclass(eq=False)
class Conv2d(Op):
    """2-D convolution, NCHW. ``weight`` [O, I/groups, kh, kw]; zero padding; optional bias."""

    type: ClassVar[str] = "conv2d"
    synaptic: ClassVar[bool] = True
    QUANTIZED: ClassVar[tuple[str, ...]] = ("weight_mantissa", "weight_exponent", "bias_acc", "shift")

    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    weight_mantissa: np.ndarray | None = None
    weight_exponent: int | None = None
    bias_acc: np.ndarray | None = None
    shift: int | None = None

    def __post_init__(self):
        self.stride, self.padding = _pair(self.stride), _pair(self.padding)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    def dense_macs(self, in_shape) -> int:
        """Multiply-accumulates for a dense (real-valued) input: outputs x C_in/groups x kh x kw."""
        o, h, w = self.out_shape([in_shape])
        return o * h * w * int(np.prod(self.weight.shape[1:]))

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        if c != self.weight.shape[1] * self.groups:
            raise ValueError(f"conv2d expects {self.weight.shape[1] * self.groups} input channels, got {c}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


@dataclasses.dataclass(eq=False)
class ConvTranspose2d(Op):
    """Transposed convolution (U-Net baselines; float only). ``weight`` [I, O, kh, kw]."""

    type: ClassVar[str] = "conv_transpose2d"
    synaptic: ClassVar[bool] = True

    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self):
        self.stride, self.padding = _pair(self.stride), _pair(self.padding)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    def dense_macs(self, in_shape) -> int:
        """True multiply-accumulates: every input element reaches O x kh x kw outputs."""
        c, h, w = in_shape
        return c * h * w * int(np.prod(self.weight.shape[1:]))

    def out_shape(self, in_shapes):
        _, h, w = in_shapes[0]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.out_channels, (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)


@dataclasses.dataclass(eq=False)
class Upsample(Op):
    """Bilinear upsampling by an integer factor with align_corners=True: fixed synapses.

    Separable: ``y[c] = Uh @ x[c] @ Uw.T`` with the interpolation matrices of ``interp_matrix``.
    The integer form uses matrices whose rows sum to exactly ``2**frac_bits``.
    """

    type: ClassVar[str] = "upsample"
    synaptic: ClassVar[bool] = True
    QUANTIZED: ClassVar[tuple[str, ...]] = ("frac_bits",)

    factor: int = 2
    frac_bits: int | None = None

    def dense_macs(self, in_shape) -> int:
        """Multiply-accumulates of the separable form: 2 per output along H, then 2 per output along W."""
        c, h, w = in_shape
        return c * (h * self.factor) * w * 2 + c * (h * self.factor) * (w * self.factor) * 2

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        return (c, h * self.factor, w * self.factor)


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation with align_corners=True (torch's bilinear rule)."""
    m = np.zeros((n_out, n_in))
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def interp_matrix_int(n_in: int, n_out: int, frac_bits: int) -> np.ndarray:
    """``interp_matrix`` in integers at scale 2**-frac_bits; each row sums to exactly 2**frac_bits,
    so constant maps stay constant. The residue of rounding goes to the row's largest weight."""
    one = 1 << frac_bits
    m = np.round(interp_matrix(n_in, n_out) * one).astype(np.int64)
    rows = np.arange(n_out)
    m[rows, np.argmax(m, axis=1)] += one - m.sum(axis=1)
    return m


def _conv_axis_fan(n_in: int, n_out: int, k: int, stride: int, pad: int) -> np.ndarray:
    """For each input index i: how many outputs o have i inside their window (0 <= i + pad - o*stride < k)."""
    tap = np.arange(n_in)[:, None] + pad - np.arange(n_out)[None, :] * stride
    return ((tap >= 0) & (tap < k)).sum(axis=1)


def _transposed_axis_fan(n_in: int, n_out: int, k: int, stride: int, pad: int) -> np.ndarray:
    """For each input index i: how many taps a land inside the (cropped) output (0 <= i*stride + a - pad < n_out)."""
    pos = np.arange(n_in)[:, None] * stride + np.arange(k)[None, :] - pad
    return ((pos >= 0) & (pos < n_out)).sum(axis=1)


def fan_out(op: Op, in_shape: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact fan-out of a synaptic op: input element (c, i, j) reaches ``per_channel * fh[i] * fw[j]``
    outputs (zero padding and stride included). Upsampling counts its nonzero interpolation weights.
    The energy analyzer and the Lava counters both count synaptic operations with it."""
    c, h, w = in_shape
    _, ho, wo = op.out_shape([in_shape])
    if op.type == "conv2d":
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        return (op.out_channels // op.groups, _conv_axis_fan(h, ho, kh, sh, ph), _conv_axis_fan(w, wo, kw, sw, pw))
    if op.type == "conv_transpose2d":
        (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
        return (op.out_channels, _transposed_axis_fan(h, ho, kh, sh, ph), _transposed_axis_fan(w, wo, kw, sw, pw))
    if op.type == "upsample":
        return (1, np.count_nonzero(interp_matrix(h, ho), axis=0), np.count_nonzero(interp_matrix(w, wo), axis=0))
    raise ValueError(f"no fan-out rule for op {op.type}")
