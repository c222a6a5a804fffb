"""Synapses: weighted connections (convolution, transposed convolution, fixed upsampling synapses).

``nn.Linear`` over channels is traced as a 1x1 convolution and ``AvgPool2d`` as a depthwise
convolution with fixed weights 1/k^2 (``trace``); they are those synapses in every backend.

Float semantics act on the *stored* values of the input tensor (``real = stored * scale``): the
input's scale is folded into the weights by ``passes.fold_nisf_normalization``. Integer semantics
(after ``quantize``) use 8-bit weight mantissas ``m`` with a shared exponent ``e``
(``weight ~= m * 2**e``), an integer bias at the accumulator's scale, and a rounding shift:

    conv2d (int):   y = saturate(shift_round(conv(x, m) + bias_acc, shift), 24)
    upsample (int): y = shift_round(Uh @ x @ Uw.T, 2 * frac_bits)   (per channel; bilinear or nearest)
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
    """Upsampling by an integer factor: fixed synapses. ``mode`` "bilinear" (align_corners=True)
    or "nearest" (each input pixel copied to a factor x factor block, exact in integers).

    Separable: ``y[c] = Uh @ x[c] @ Uw.T`` with the interpolation matrices of ``interp_matrix``.
    The integer form uses matrices whose rows sum to exactly ``2**frac_bits``.
    """

    type: ClassVar[str] = "upsample"
    synaptic: ClassVar[bool] = True
    QUANTIZED: ClassVar[tuple[str, ...]] = ("frac_bits",)

    factor: int = 2
    frac_bits: int | None = None
    mode: str = "bilinear"

    @property
    def taps(self) -> int:
        """Inputs per output along one axis."""
        return 2 if self.mode == "bilinear" else 1

    def matrix(self, n_in: int) -> np.ndarray:
        return interp_matrix(n_in, n_in * self.factor, self.mode)

    def matrix_int(self, n_in: int) -> np.ndarray:
        return interp_matrix_int(n_in, n_in * self.factor, self.frac_bits, self.mode)

    def dense_macs(self, in_shape) -> int:
        """Multiply-accumulates of the separable form: ``taps`` per output along H, then along W
        (nearest: a copy, 1 per output and axis)."""
        c, h, w = in_shape
        return c * (h * self.factor) * w * self.taps + c * (h * self.factor) * (w * self.factor) * self.taps

    def out_shape(self, in_shapes):
        c, h, w = in_shapes[0]
        return (c, h * self.factor, w * self.factor)


def interp_matrix(n_in: int, n_out: int, mode: str = "bilinear") -> np.ndarray:
    """[n_out, n_in] linear interpolation with align_corners=True (torch's bilinear rule), or
    torch's nearest rule (output o reads input floor(o * n_in / n_out))."""
    m = np.zeros((n_out, n_in))
    if mode == "nearest":
        m[np.arange(n_out), np.arange(n_out) * n_in // n_out] = 1.0
        return m
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def interp_matrix_int(n_in: int, n_out: int, frac_bits: int, mode: str = "bilinear") -> np.ndarray:
    """``interp_matrix`` in integers at scale 2**-frac_bits; each row sums to exactly 2**frac_bits,
    so constant maps stay constant. The residue of rounding goes to the row's largest weight."""
    one = 1 << frac_bits
    m = np.round(interp_matrix(n_in, n_out, mode) * one).astype(np.int64)
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


def _conv_fan_out(op: Conv2d, in_shape, out_shape):
    (_, h, w), (_, ho, wo) = in_shape, out_shape
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    return (op.out_channels // op.groups, _conv_axis_fan(h, ho, kh, sh, ph), _conv_axis_fan(w, wo, kw, sw, pw))


def _transposed_fan_out(op: ConvTranspose2d, in_shape, out_shape):
    (_, h, w), (_, ho, wo) = in_shape, out_shape
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    return (op.out_channels, _transposed_axis_fan(h, ho, kh, sh, ph), _transposed_axis_fan(w, wo, kw, sw, pw))


def _upsample_fan_out(op: Upsample, in_shape, out_shape):
    _, h, w = in_shape
    return (1, np.count_nonzero(op.matrix(h), axis=0), np.count_nonzero(op.matrix(w), axis=0))


#: synaptic op class -> its exact fan-out rule
FAN_OUT = {Conv2d: _conv_fan_out, ConvTranspose2d: _transposed_fan_out, Upsample: _upsample_fan_out}


def fan_out(op: Op, in_shape: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact fan-out of a synaptic op: input element (c, i, j) reaches ``per_channel * fh[i] * fw[j]``
    outputs (zero padding and stride included). Upsampling counts its nonzero interpolation weights.
    The energy analyzer and the Lava counters both count synaptic operations with it."""
    if type(op) not in FAN_OUT:
        raise ValueError(f"no fan-out rule for op {op.type}")
    return FAN_OUT[type(op)](op, in_shape, op.out_shape([in_shape]))
