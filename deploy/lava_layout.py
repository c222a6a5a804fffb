"""How medqk's integer tensors and weights take the form Lava's library processes expect (numpy only).

- Layout: medqk computes NCHW; Lava's ``Conv`` and every process of the library graph hold one
  image as (X, Y, C) = (W, H, C). ``to_whc`` / ``from_whc`` convert.
- Convolution: Lava's ``Conv`` *convolves* (``scipy.signal.convolve2d`` flips the kernel) and keeps
  weights as (C_out, kx, ky, C_in/groups); torch and medqk cross-correlate with [O, I/g, kh, kw].
  ``lava_conv_weight`` flips and transposes; stride and padding swap to (x, y).
- Dendritic sums: Lava's fixed-point ``Conv`` wraps its sum modulo 2**24. A synapse whose input
  could drive a sum past ``kernels.DENDRITE_MAX`` receives the input as digit planes
  (``kernels.dendritic_plane_bits``): the planes are concatenated along C (plane-major) and the
  ``Conv`` runs with ``planes * groups`` groups and its kernel tiled once per plane, so that every
  output channel sums one plane only; the neuron behind it recombines the planes
  (``combine_planes``) exactly, in 64-bit integers.
- Groups: Lava's Conv models keep ``groups`` in an int8 Var, so a convolution with more than 127
  groups (planes included) runs with fewer, each merging several of its groups into one
  block-diagonal kernel (``lava_conv_groups``).
"""
from __future__ import annotations

import numpy as np

from medqk.convert import kernels


def to_whc(x: np.ndarray) -> np.ndarray:
    """[1, C, H, W] or [C, H, W] -> (W, H, C)."""
    x = np.asarray(x)
    return (x[0] if x.ndim == 4 else x).transpose(2, 1, 0)


def from_whc(y: np.ndarray) -> np.ndarray:
    """(W, H, C) -> [1, C, H, W]."""
    return np.asarray(y).transpose(2, 1, 0)[None]


#: Lava's Conv models hold ``groups`` in an int8 Var: more groups wrap to a negative number
MAX_CONV_GROUPS = 127


def lava_conv_groups(groups: int, planes: int = 1) -> int:
    """The groups of the Lava ``Conv`` for a convolution of ``groups`` groups on ``planes`` digit
    planes: ``planes * g`` with ``g`` the largest divisor of ``groups`` that keeps it within
    ``MAX_CONV_GROUPS``; ``lava_conv_weight`` merges ``groups / g`` groups into one."""
    return planes * max(g for g in range(1, groups + 1) if groups % g == 0 and planes * g <= MAX_CONV_GROUPS)


def lava_conv_weight(weight: np.ndarray, planes: int = 1, groups: int = 1) -> np.ndarray:
    """medqk's [O, I/groups, kh, kw] cross-correlation kernel as Lava ``Conv`` weights
    (planes * O, kx, ky, I/g) for ``lava_conv_groups`` = planes * g groups: flipped for Lava's
    convolution, each merged group's kernel block-diagonal (zeros where an output does not read an
    input), tiled once per digit plane."""
    w = np.asarray(weight)
    merged = groups // (lava_conv_groups(groups, planes) // planes)
    if merged > 1:
        o, width = w.shape[:2]
        block = np.zeros((o, width * merged, *w.shape[2:]), w.dtype)
        slot = (np.arange(o) // (o // groups)) % merged  # the output's group within its merged group
        for k in range(merged):
            block[slot == k, k * width:(k + 1) * width] = w[slot == k]
        w = block
    w = w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)
    return np.ascontiguousarray(np.tile(w, (planes, 1, 1, 1)), dtype=np.int32)


def xy(pair) -> tuple[int, int]:
    """An (h, w) stride or padding as Lava's (x, y)."""
    return int(pair[1]), int(pair[0])


def split_planes(x_whc: np.ndarray, bits: int | None, peak: int) -> np.ndarray:
    """(W, H, C) -> (W, H, P * C): the digit planes of ``x`` (``kernels.digit_planes``) along C,
    plane-major; ``bits`` None: ``x`` itself."""
    if bits is None:
        return np.asarray(x_whc, np.int32)
    planes = kernels.digit_planes(np.asarray(x_whc), bits, peak, dtype=np.int32)
    return np.concatenate(list(planes), axis=-1)


def combine_planes(acc_whc: np.ndarray, bits: int | None, planes: int) -> np.ndarray:
    """(W, H, P * O) dendritic sums of the digit planes -> (W, H, O) int64 sums of the whole input:
    ``sum_p acc_p * 2**(bits * p)``."""
    acc = np.asarray(acc_whc, np.int64)
    if bits is None:
        return acc
    parts = np.split(acc, planes, axis=-1)
    total = parts[-1].copy()
    for part in reversed(parts[:-1]):  # Horner: total * 2**bits + plane
        total <<= bits
        total += part
    return total
